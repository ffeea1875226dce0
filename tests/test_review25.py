"""Review of the reuse across compiles (engine/compiler/reuse.py, the fast parser's statement reuse, the memoised
pattern checks, example files, example matrices and parsed catalogs): equal-looking inputs that must differ, edits
compared with a fresh compile, threads, and the memos' size over many edits."""

from __future__ import annotations

import datetime
import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.api import Engine, compile_policy
from engine.compiler import reuse
from engine.language.fastparse import parse_fast
from engine.language.parse import parse
from providers.catalog import litellm
from providers.catalog.litellm import load_litellm
from providers.catalog.loader import load_catalog
from tests.reuse_kit import CATALOG, POLICY, policy_folder
from tests.semantic_kit import BagOfWords


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return policy_folder(tmp_path)


def fresh(root: Path, **kw: Any) -> Any:
    """A compile with every memo forgotten first: what the policy means on its own."""
    reuse.forget()
    return compile_policy(root, **kw)


# --- Python rankers and functions: each compile makes new wrappers, which log a first failure once per version --


def test_a_failing_ranker_is_logged_again_by_a_new_policy_version(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by review: the `prefer custom(pick)` selector was shared with the earlier compile with its Ranker
    wrapper, whose `logged` flag was already set, so the edited policy (a new version) never logged the ranker's
    failure. A policy that calls Python functions or rankers now never shares selectors between compiles."""

    def pick(req: Any, m: Any) -> float:
        raise RuntimeError("boom")

    reuse.forget()
    (folder / "main.route").write_text('catalog "catalog.yaml"\notherwise prefer custom(pick)\n')
    first = compile_policy(folder, rankers={"pick": pick})
    with caplog.at_level(logging.WARNING):
        Engine(first).decide("hi")
    assert any("pick" in r.getMessage() for r in caplog.records)
    caplog.clear()
    (folder / "main.route").write_text(
        'catalog "catalog.yaml"\nwhen tier == "x" use cheap-b\notherwise prefer custom(pick)\n'
    )
    second = compile_policy(folder, rankers={"pick": pick})
    assert second.version != first.version
    with caplog.at_level(logging.WARNING):
        Engine(second).decide("hi")
    assert any("pick" in r.getMessage() for r in caplog.records), "a new policy version logs the failure again"


def test_a_failing_score_function_is_logged_again_by_a_new_policy_version(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by review (same cause): a `score(... + f())` term kept the Function wrapper of the first compile."""

    def boost(req: Any) -> float:
        raise RuntimeError("boom")

    reuse.forget()
    text = 'catalog "catalog.yaml"\notherwise prefer score(capability(CODING) + boost())\n'
    (folder / "main.route").write_text(text)
    first = compile_policy(folder, functions={"boost": boost})
    with caplog.at_level(logging.WARNING):
        Engine(first).decide("hi")
    assert any("boost" in r.getMessage() for r in caplog.records)
    caplog.clear()
    (folder / "main.route").write_text(text.replace("otherwise", 'when tier == "x" use cheap-b\notherwise'))
    second = compile_policy(folder, functions={"boost": boost})
    with caplog.at_level(logging.WARNING):
        Engine(second).decide("hi")
    assert any("boost" in r.getMessage() for r in caplog.records), "a new policy version logs the failure again"


def test_a_ranker_replaced_by_another_function_with_the_same_name_and_code(folder: Path) -> None:
    (folder / "main.route").write_text('catalog "catalog.yaml"\notherwise prefer custom(pick)\n')

    def make(favourite: str) -> Any:
        def pick(req: Any, m: Any) -> float:
            return 1.0 if m.name == favourite else 0.0

        return pick

    for want in ["cheap-a", "cheap-b", "cheap-a", "cheap-b"]:
        assert Engine(compile_policy(folder, rankers={"pick": make(want)})).decide("hi").model == want


# --- parsed catalogs: kept by file name and content ------------------------------------------------------------

LITELLM_A = {
    "model-x": {
        "mode": "chat",
        "litellm_provider": "openai",
        "input_cost_per_token": 1e-6,
        "output_cost_per_token": 2e-6,
        "max_input_tokens": 128000,
    },
}


def test_a_litellm_file_changed_during_its_import_is_not_kept_under_the_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: load_litellm digested the file, then import_litellm read it again, so a write in between
    (an editor or a deploy replacing the file while a reload runs) kept the NEW catalog under the OLD content's
    digest. Now each file is read once and the text parsed is the text that keys the memo."""
    reuse.forget()
    prices = tmp_path / "prices.json"
    old = json.dumps(LITELLM_A)
    new = old.replace("1e-06", "5e-06")
    prices.write_text(old)
    real = litellm.import_litellm
    writes = [new]

    def racing(path: Any, overlay: Any = None, **given: Any) -> Any:
        if writes:
            prices.write_text(writes.pop())
        return real(path, overlay, **given)

    monkeypatch.setattr(litellm, "import_litellm", racing)
    during = load_litellm(prices)
    assert during.models["model-x"].input_price in (
        pytest.approx(1e-6),
        pytest.approx(5e-6),
    )  # either content is a fair answer here
    prices.write_text(old)  # the file holds the old content again
    after = load_litellm(prices)
    assert after.models["model-x"].input_price == pytest.approx(1e-6), "the catalog of the file's content now"


def test_a_catalog_rewritten_with_other_content_of_the_same_size(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CATALOG)
    assert load_catalog(path).models["cheap-a"].context == 128_000
    path.write_text(CATALOG.replace("128k", "256k", 1))
    assert load_catalog(path).models["cheap-a"].context == 256_000
    path.write_text(CATALOG)
    assert load_catalog(path).models["cheap-a"].context == 128_000


def test_a_symlinked_catalog_swapped_to_another_target(folder: Path) -> None:
    (folder / "one.yaml").write_text(CATALOG)
    (folder / "two.yaml").write_text(CATALOG.replace("{input: 1.00, output: 2.00}", "{input: 0.10, output: 0.20}"))
    link = folder / "catalog.yaml"
    link.unlink()
    link.symlink_to("one.yaml")
    assert Engine(compile_policy(folder)).decide("hello").model == "cheap-a"
    link.unlink()
    link.symlink_to("two.yaml")
    assert Engine(compile_policy(folder)).decide("hello").model == "cheap-b"
    link.unlink()
    link.symlink_to("one.yaml")
    assert Engine(compile_policy(folder)).decide("hello").model == "cheap-a"


def test_a_catalog_with_an_overlay_edited(folder: Path) -> None:
    (folder / "over.yaml").write_text(
        "models:\n  cheap-b:\n    provider: betacorp\n    context: 128k\n"
        "    price: {input: 0.10, output: 0.20}\n    latency_ms: 400\n"
    )
    (folder / "main.route").write_text(
        POLICY.replace('catalog "catalog.yaml"', 'catalog "catalog.yaml" overlay "over.yaml"')
    )
    assert Engine(compile_policy(folder)).decide("hello").model == "cheap-b"
    (folder / "over.yaml").write_text(
        (folder / "over.yaml").read_text().replace("0.10", "9.10").replace("0.20", "9.20")
    )
    assert Engine(compile_policy(folder)).decide("hello").model == "cheap-a"


# --- memory over many edits --------------------------------------------------------------------------------------


def test_the_shared_selector_cache_does_not_grow_with_every_edit() -> None:
    """Found by review: the selector cache a compile shared with the next kept every pool, order and selector any
    earlier compile built, up to 50,000 keys. Editing one `where price < X` threshold adds four keys
    per edit that no rule uses any more. Measured over LiteLLM's catalog (2,762 chat models): 200 such edits keep
    67 MB alive (0.33 MB per edit; `reuse.forget()` gives it back), so the cap was reached after ~12,500 edits at
    ~4 GB. Now a compile's cache starts from the last one's and keeps only what it used or built."""
    from engine.api import compile_source

    reuse.forget()
    base = 'when tier == "pro" prefer fastest\notherwise prefer cheapest where price < {p}\n'
    for i in range(300):
        compile_source(base.format(p=f"${i / 100 + 0.01:.2f}/1M"), "grow.route")
    sizes = [len(held[1]) for held in reuse._selectors.items.values()]
    assert max(sizes) < 200, f"the shared selector cache holds {sizes} keys after 300 edits of one rule"


# --- the fast parser, a statement at a time, against lark ------------------------------------------------------

PIECES = [
    'model fast = "gpt-4o-mini"\n',
    'when tier == "pro" use fast\n',
    'when tier == "pro"\n  use fast\n',
    'when tier == "pro" and\nmodel == 1 use fast\n',
    "when a\n\twhen b use fast\n",
    'task code = /def \\w+/, "stack trace"\n',
    'task code = "x\nwhen a use b"\n',
    "task code = /x\nwhen a use b/\n",
    "# when a use b\n",
    "  # comment\n\n",
    "otherwise use fast\r\n",
    "when tokens > 5k use fast # c\r\n",
    '\twhen tier == "x"\tuse fast\n',
    "limit 60 rpm\n",
    "limit 60 rpm per key\n",
    "set health.window = 90s\n",
    'when tier == "pro" use fast\nfallback a\n',
    "otherwise prefer cheapest where price < $1/1M\n  fallback fast\n",
    'include "x.route"\n',
    'test "t" {\n  when x use y\n}\n',
    'when tier ==\n"pro" use fast\n',
    'when tier == "pro" use\nfast\n',
    "when x use y\ntask is code\n",
    "when (a\nor b) use fast\n",
    "\ufeffotherwise use fast\n",
    "when a use b\\\nwhen c use d\n",
]


def outcome(text: str, file: str, fast: bool) -> Any:
    from engine.diagnostics import PolicyError

    try:
        return parse(text, file, fast=fast).body
    except PolicyError as err:
        return [(d.code, d.message, d.span) for d in err.diagnostics]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.sampled_from(PIECES), min_size=1, max_size=7), min_size=1, max_size=5))
def test_a_sequence_of_texts_in_one_file_reads_as_lark_reads_each(texts: list[list[str]]) -> None:
    for pieces in texts:
        text = "".join(pieces)
        assert outcome(text, "fuzz25.route", True) == outcome(text, "fuzz25.route", False), text


def test_the_same_piece_at_the_same_line_after_a_line_of_another_length() -> None:
    first = '# short\nwhen tier == "pro" use fast\notherwise use fast\n'
    second = '# a much longer first line, columns unchanged below\nwhen tier == "pro" use fast\notherwise use fast\n'
    for text in (first, second, first):
        got = parse_fast(text, "len25.route")
        assert got == parse(text, "len25.route", fast=False).body


def test_a_bom_and_crlf_file_through_the_loader(tmp_path: Path) -> None:
    text = POLICY.replace("\n", "\r\n")
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    for body in (text, "\ufeff" + text, text.replace("  ", "\t"), "\ufeff" + text):
        (tmp_path / "main.route").write_bytes(body.encode())
        got = compile_policy(tmp_path)
        want = fresh(tmp_path)
        assert [r.node for r in got.rules] == [r.node for r in want.rules]
        assert Engine(got).decide("def f(): stack trace").model == Engine(want).decide("def f(): stack trace").model


# --- reloads after real file edits, against a fresh compile -------------------------------------------------------

MAIN = """\
catalog "catalog.yaml"
include "rules.route"
task code = like "examples.txt" >= 0.5, "stack trace"
otherwise prefer cheapest
"""
RULES = [
    'when tier == "pro" prefer fastest\n',
    'when tier == "pro" use cheap-a\n',
    "when task is code prefer capability(CODING)\n",
    "when task is code use cheap-a\n",
    'when tier == "pro" prefer cheapest where latency < 0.5s\n',
]
EXAMPLES = ["python function\n", "legal contract\n", "python funktion\n", "weather today\n"]
CATALOGS = [
    CATALOG,
    CATALOG.replace("{input: 1.00, output: 2.00}", "{input: 0.10, output: 0.20}"),
    CATALOG.replace("latency_ms: 400", "latency_ms: 900"),
    CATALOG.replace("CODING: 9", "CODING: 1"),
]
REQUESTS = [("hello", None), ("python function please", None), ("hello", "pro"), ("legal contract", "pro")]


def decisions(engine: Engine) -> list[str]:
    return [engine.decide(text, tier=tier).model for text, tier in REQUESTS]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["rules", "examples", "catalog", "rename"]), st.integers(0, 3)), max_size=8))
def test_reloads_after_edits_decide_as_a_fresh_compile(edits: list[tuple[str, int]]) -> None:
    import tempfile

    embedder = BagOfWords()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "catalog.yaml").write_text(CATALOG)
        (root / "main.route").write_text(MAIN)
        (root / "rules.route").write_text(RULES[0])
        (root / "examples.txt").write_text(EXAMPLES[0])
        engine = Engine.load(root, watch=False, embedder=embedder)
        for what, k in edits:
            if what == "rules":
                (root / "rules.route").write_text(RULES[k] + RULES[(k + 1) % len(RULES)])
            elif what == "examples":
                (root / "examples.txt").write_text(EXAMPLES[k])
            elif what == "catalog":
                (root / "catalog.yaml").write_text(CATALOGS[k])
            else:  # a whole file replaced by a rename, as editors and deploys do
                (root / "new.tmp").write_text(RULES[k])
                (root / "new.tmp").rename(root / "rules.route")
            assert engine.reload()
            got = decisions(engine)
            reuse.forget()
            want = decisions(Engine(compile_policy(root, embedder=embedder)))
            assert got == want, (what, k)


def test_an_example_file_edited_to_the_same_length(folder: Path) -> None:
    embedder = BagOfWords()
    (folder / "main.route").write_text(MAIN.replace('include "rules.route"\n', "when task is code use cheap-b\n"))
    (folder / "examples.txt").write_text("python function\n")
    engine = Engine.load(folder, watch=False, embedder=embedder)
    assert engine.decide("python function").model == "cheap-b"
    (folder / "examples.txt").write_text("weather update\n")  # as long as "python function\n"
    assert engine.reload()
    assert engine.decide("python function").model == "cheap-a"
    assert engine.decide("weather update").model == "cheap-b"


def test_the_same_include_text_in_two_folders_keeps_each_files_name(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "catalog.yaml").write_text(CATALOG)
        (tmp_path / name / "main.route").write_text(
            'catalog "catalog.yaml"\ninclude "r.route"\notherwise use cheap-a\n'
        )
        (tmp_path / name / "r.route").write_text('when tier == "pro" use cheap-b\n')
    a, b = compile_policy(tmp_path / "a"), compile_policy(tmp_path / "b")
    assert a.rules[0].node.span.file != b.rules[0].node.span.file
    assert "a" in Path(a.rules[0].node.span.file).parts and "b" in Path(b.rules[0].node.span.file).parts


def test_compiles_in_threads_with_different_dates_settings_and_rankers(folder: Path) -> None:
    (folder / "catalog.yaml").write_text(
        CATALOG.replace("    latency_ms: 600\n", "    latency_ms: 600\n    deprecation_date: 2030-01-01\n")
    )
    (folder / "main.route").write_text(
        'catalog "catalog.yaml"\nwhen tier == "r" prefer custom(pick)\notherwise prefer cheapest\n'
    )
    wrong: list[str] = []

    def likes(name: str) -> Any:
        return lambda req, m: 1.0 if m.name == name else 0.0

    # cheap-a retires on 2030-01-01: `prefer` never ranks it after that, whatever the ranker says
    cases = [
        (datetime.date(2029, 1, 1), "cheap-a", ("cheap-a", "cheap-a")),
        (datetime.date(2031, 1, 1), "cheap-b", ("cheap-b", "cheap-b")),
        (datetime.date(2029, 1, 1), "cheap-b", ("cheap-b", "cheap-a")),
        (datetime.date(2031, 1, 1), "cheap-a", ("cheap-b", "cheap-b")),
    ]

    def work(today: datetime.date, fav: str, want: tuple[str, str]) -> None:
        for _ in range(15):
            engine = Engine(compile_policy(folder, today=today, rankers={"pick": likes(fav)}))
            got = (engine.decide("hi", tier="r").model, engine.decide("hi").model)
            if got != want:
                wrong.append(f"{today} {fav}: {got}")

    threads = [threading.Thread(target=work, args=c) for c in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


ALIASED = """\
catalog "catalog.yaml"
set adhoc_models = true
model fast = "{fast}"
when tier == "pro" use fast fallback cheap-b
when tier == "team" prefer cheapest among [fast, cheap-b]
when tier == "adhoc" use "acme:tiny"
otherwise prefer fastest fallback fast
"""


@pytest.mark.parametrize("sequence", [["cheap-a", "cheap-b", "cheap-a"], ["acme:tiny", "cheap-a", "acme:tiny"]])
def test_an_alias_repointed_between_compiles(folder: Path, sequence: list[str]) -> None:
    requests = [("hi", "pro"), ("hi", "team"), ("hi", "adhoc"), ("hi", None)]
    for fast in sequence:
        (folder / "main.route").write_text(ALIASED.format(fast=fast))
        got = [Engine(compile_policy(folder)).decide(t, tier=tier) for t, tier in requests]
        want = [Engine(fresh(folder)).decide(t, tier=tier) for t, tier in requests]
        assert [(d.model, d.fallbacks) for d in got] == [(d.model, d.fallbacks) for d in want]


def test_parses_of_one_file_name_in_threads_read_as_lark(folder: Path) -> None:
    body = POLICY.replace('catalog "catalog.yaml"\n', "")  # statements the fast parser reads
    texts = [body, "# moved\n" + body, body.replace("pro", "team"), body.replace("\n", "\r\n")]
    wants = [parse(t, "thr25.route", fast=False).body for t in texts]
    wrong: list[int] = []

    def work(k: int) -> None:
        for i in range(200):
            j = (k + i) % len(texts)
            if parse_fast(texts[j], "thr25.route") != wants[j]:
                wrong.append(j)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
