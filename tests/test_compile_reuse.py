"""What one compile shares with the next (engine/compiler/reuse.py): an unchanged policy gets the same selectors,
RE2 set and semantic tasks back, and every input a selector depends on (the catalog, the date, the settings, the
Python rankers, the examples) still takes effect the moment it changes."""

from __future__ import annotations

import datetime
import threading
from pathlib import Path

import pytest

from engine.api import Engine, compile_policy, compile_source
from engine.compiler import reuse
from engine.diagnostics import PolicyError
from tests.reuse_kit import CATALOG, POLICY, policy_folder
from tests.semantic_kit import BagOfWords


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return policy_folder(tmp_path)


def test_an_unchanged_policy_gets_the_same_selectors_and_set_back(folder: Path) -> None:
    first, second = compile_policy(folder), compile_policy(folder)
    assert first is not second
    assert [r.selector for r in first.rules] == [r.selector for r in second.rules]
    assert all(a.selector is b.selector for a, b in zip(first.rules, second.rules, strict=True))
    assert first.matcher is second.matcher


def test_an_edited_rule_gets_a_new_selector_and_the_others_stay(folder: Path) -> None:
    first = compile_policy(folder)
    (folder / "main.route").write_text(POLICY.replace("otherwise prefer cheapest", "otherwise use cheap-b"))
    second = compile_policy(folder)
    assert first.rules[0].selector is second.rules[0].selector
    assert first.rules[2].selector is not second.rules[2].selector
    assert Engine(second).decide("hello").model == "cheap-b"
    assert Engine(first).decide("hello").model == "cheap-a"  # the old policy is untouched


def test_a_catalog_edit_takes_effect(folder: Path) -> None:
    assert Engine(compile_policy(folder)).decide("hello").model == "cheap-a"
    (folder / "catalog.yaml").write_text(CATALOG.replace("{input: 1.00, output: 2.00}", "{input: 0.10, output: 0.20}"))
    policy = compile_policy(folder)
    assert Engine(policy).decide("hello").model == "cheap-b"
    assert Engine(policy).decide("def parse(): stack trace").model == "cheap-b"


def test_the_date_takes_effect(folder: Path) -> None:
    (folder / "catalog.yaml").write_text(
        CATALOG.replace("    latency_ms: 600\n", "    latency_ms: 600\n    deprecation_date: 2030-01-01\n")
    )
    before = compile_policy(folder, today=datetime.date(2029, 12, 31))
    after = compile_policy(folder, today=datetime.date(2030, 1, 1))
    assert Engine(before).decide("hello").model == "cheap-a"
    assert Engine(after).decide("hello").model == "cheap-b"  # `prefer` never ranks a retired model
    assert Engine(compile_policy(folder, today=datetime.date(2029, 12, 31))).decide("hello").model == "cheap-a"


def test_a_setting_edit_reaches_the_selectors(folder: Path) -> None:
    policy = POLICY.replace("prefer fastest", "prefer healthiest")
    (folder / "main.route").write_text(policy)
    first = compile_policy(folder)
    (folder / "main.route").write_text("set health.window = 90s\n" + policy)
    second = compile_policy(folder)
    assert first.rules[1].selector is not second.rules[1].selector
    assert first.settings["health.window"] != second.settings["health.window"] == 90


def test_a_new_ranker_under_the_same_name_is_the_one_called(folder: Path) -> None:
    (folder / "main.route").write_text('catalog "catalog.yaml"\notherwise prefer custom(pick)\n')
    likes_a = compile_policy(folder, rankers={"pick": lambda req, m: 1.0 if m.name == "cheap-a" else 0.0})
    likes_b = compile_policy(folder, rankers={"pick": lambda req, m: 1.0 if m.name == "cheap-b" else 0.0})
    assert Engine(likes_a).decide("hi").model == "cheap-a"
    assert Engine(likes_b).decide("hi").model == "cheap-b"


SEMANTIC = """\
catalog "catalog.yaml"
task code = like "examples.txt" >= 0.6
task chat = like ["weather today"] >= 0.6
when similarity(code) > 0 or similarity(chat) > 0 prefer score(3 * similarity(code) + capability(CODING))
otherwise use cheap-a
"""


def test_semantic_tasks_are_shared_until_their_examples_change(folder: Path) -> None:
    embedder = BagOfWords()
    (folder / "main.route").write_text(SEMANTIC)
    (folder / "examples.txt").write_text("python function\nstack trace\n")
    first = compile_policy(folder, embedder=embedder)
    second = compile_policy(folder, embedder=embedder)
    assert first.semantic["code"] is second.semantic["code"]
    assert first.rules[0].selector is second.rules[0].selector
    (folder / "examples.txt").write_text("contract lawyer\n")
    third = compile_policy(folder, embedder=embedder)
    assert third.semantic["code"] is not first.semantic["code"]
    assert third.semantic["code"].examples == ("contract lawyer",)
    assert third.semantic["chat"] is first.semantic["chat"]
    near = Engine(third).decide("contract clause").nearest
    assert [(s.task, s.example) for s in near if s.task == "code"] == [("code", "contract lawyer")]
    # another embedder never gets the first one's vectors
    other = compile_policy(folder, embedder=BagOfWords())
    assert other.semantic["code"] is not third.semantic["code"]


def test_the_same_example_text_in_two_files_keeps_each_files_name(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ex.txt").write_text("\n\npython function\n")
        (tmp_path / name / "main.route").write_text('task code = like "ex.txt"\notherwise use gpt-4o-mini\n')
    a = compile_policy(tmp_path / "a", embedder=BagOfWords())
    b = compile_policy(tmp_path / "b", embedder=BagOfWords())
    spans = a.semantic["code"].spans[0], b.semantic["code"].spans[0]
    assert [s.line for s in spans] == [3, 3]
    assert spans[0].file != spans[1].file and spans[0].file.endswith("ex.txt")


def test_the_same_bad_pattern_twice_is_reported_at_each_place() -> None:
    text = 'task a = /x(?=y)/\ntask b = "x",   /x(?=y)/\notherwise use gpt-4o-mini\n'
    for _ in range(2):  # the second compile answers from the check memo
        with pytest.raises(PolicyError) as err:
            compile_source(text, "p.route")
        found = [(d.code, d.span.line, d.span.col) for d in err.value.diagnostics if d.span]
        assert found == [("E501", 1, 12), ("E501", 2, 19)]


def test_compiles_in_threads_share_safely(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    other = tmp_path_factory.mktemp("other")
    (other / "catalog.yaml").write_text(CATALOG.replace("{input: 1.00, output: 2.00}", "{input: 0.10, output: 0.20}"))
    (other / "main.route").write_text(POLICY)
    reuse.forget()
    wrong: list[str] = []

    def work(root: Path, want: str) -> None:
        for _ in range(30):
            got = Engine(compile_policy(root)).decide("hello").model
            if got != want:
                wrong.append(f"{root.name}: {got}")

    threads = [threading.Thread(target=work, args=(r, w)) for r, w in [(folder, "cheap-a"), (other, "cheap-b")] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_the_memos_stay_small(folder: Path) -> None:
    reuse.forget()
    for k in range(reuse.SELECTOR_CACHES_KEPT + 5):
        compile_policy(folder, today=datetime.date(2020, 1, 1) + datetime.timedelta(days=k))
    assert len(reuse._selectors.items) == reuse.SELECTOR_CACHES_KEPT


def test_forget_makes_the_next_compile_a_first_one(folder: Path) -> None:
    from engine.language.fastparse import parse_fast

    first = compile_policy(folder)
    reuse.forget()
    second = compile_policy(folder)
    assert first.rules[0].selector == second.rules[0].selector
    assert first.rules[0].selector is not second.rules[0].selector
    assert first.rules[0].node is not second.rules[0].node  # the file was parsed again
    assert first.matcher is not second.matcher
    assert parse_fast(POLICY, "x.route") == parse_fast(POLICY, "x.route")


def test_the_lru_keeps_the_newest_and_nothing_from_a_failed_build() -> None:
    from providers.catalog.memo import Lru

    memo: Lru[int] = Lru(2)
    assert memo.get("a", lambda: 1) == 1 and memo.get("b", lambda: 2) == 2
    assert memo.get("a", lambda: 99) == 1  # kept, and now the most recent
    memo.put("c", 3)
    assert memo.peek("b") is None and memo.peek("a") == 1 and len(memo) == 2

    def broken() -> int:
        raise ValueError("no")

    with pytest.raises(ValueError):
        memo.get("d", broken)
    assert memo.peek("d") is None and len(memo) == 2
    assert memo.get("a", lambda: 5, lambda held: held > 1) == 5  # a value the caller rejects is built again


def test_forget_embeds_the_examples_again(folder: Path) -> None:
    embedder = BagOfWords()
    (folder / "main.route").write_text(SEMANTIC)
    (folder / "examples.txt").write_text("python function\nstack trace\n")
    compile_policy(folder, embedder=embedder)
    compile_policy(folder, embedder=embedder)
    once = len(embedder.embedded)
    assert once == 3  # two examples and one, each embedded once over two compiles
    reuse.forget()
    compile_policy(folder, embedder=embedder)
    assert len(embedder.embedded) == 2 * once
