"""Review of issue 19 (task detection by meaning): policies with `like` examples, `similarity(X)`, example files, the
default WordLlama embedder, explain, `modelroute test` and the CLI without the `semantic` extra, attacked as a policy
author, a Python caller and an attacker, in; what held and the bugs found (each fixed, its test kept) out."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("numpy", reason="the semantic extra is not installed (pip install -e '.[semantic]')")

from engine.api import Engine
from engine.diagnostics import PolicyError
from engine.runtime.decision import NoRouteError
from engine.runtime.embedder import HEAD_CHARS, TAIL_CHARS
from tests.semantic_kit import BagOfWords, cosine

ROOT = Path(__file__).resolve().parents[1]
CATALOG = ROOT / "tests" / "fixtures" / "policies" / "catalog.yaml"
CODE = ["write a python function that parses dates", "why does this stack trace happen"]
POLICY = f"""\
catalog "{CATALOG}"
task code = "stack trace", like ["{CODE[0]}", "{CODE[1]}"] >= 0.6
when task is code use beta-coder
otherwise use alpha-mini
"""


def file_policy(ref: str) -> str:
    rules = "when task is code use beta-coder\notherwise use alpha-mini\n"
    return f'catalog "{CATALOG}"\ntask code = like "{ref}" >= 0.5\n' + rules


class Counting:
    """Wraps an embedder: records how many characters each call embedded."""

    def __init__(self, inner: Callable[[list[str]], Any]) -> None:
        self.inner = inner
        self.calls: list[list[int]] = []

    def __call__(self, texts: list[str]) -> Any:
        self.calls.append([len(t) for t in texts])
        return self.inner(texts)


class Armed(BagOfWords):
    """The bag of words at compile time; once `armed`, `then` rewrites (or replaces) its answer."""

    def __init__(self, then: Callable[[list[list[float]]], Any]) -> None:
        super().__init__()
        self.armed = False
        self.then = then

    def __call__(self, texts: list[str]) -> Any:
        rows = super().__call__(texts)
        return self.then(rows) if self.armed else rows


def armed_engine(then: Callable[[list[list[float]]], Any]) -> Engine:
    embedder = Armed(then)
    engine = Engine.from_source(POLICY, file="p.route", embedder=embedder)
    embedder.armed = True
    return engine


# --- the cut bounds the work, whatever the prompt --------------------------------------------------------------

HOSTILE = {
    "10 MB of one letter": "x" * 10_000_000,
    "5M two-character words": "a " * 5_000_000,
    "only punctuation": "!?.,;:" * 2_000,
    "emoji and accents": "é😀" * 100_000,
    "zero-width spaces": "\u200b" * 50_000,
    "special token text": "<s>" * 100_000,
}


@pytest.mark.parametrize("prompt", HOSTILE.values(), ids=HOSTILE.keys())
def test_the_cut_bounds_what_is_embedded_for_any_prompt(prompt: str) -> None:
    counting = Counting(BagOfWords())
    engine = Engine.from_source(POLICY, file="p.route", embedder=counting)
    counting.calls.clear()
    try:
        assert engine.decide(prompt).model in ("alpha-mini", "beta-coder")
    except NoRouteError:  # 10 MB fits no model's context: the rules were still tried
        pass
    assert counting.calls == [[HEAD_CHARS + 1 + TAIL_CHARS]]  # one call, one text: head, newline, tail


@pytest.mark.parametrize("prompt", HOSTILE.values(), ids=HOSTILE.keys())
def test_the_default_embedder_takes_any_prompt(prompt: str) -> None:
    engine = Engine.from_source(POLICY, file="p.route")
    d = engine.decide(prompt[:200_000])
    assert d.vector is not None and all(math.isfinite(n.score) for n in d.nearest)


def test_the_per_word_cache_is_safe_under_concurrent_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.runtime.embedder as embedder_module

    engine = Engine.from_source(POLICY, file="p.route")
    prompts = [f"write a python function number {i} that parses dates, word{i}x{i % 7}" for i in range(300)]

    def signature(prompt: str) -> tuple[str, tuple[float, ...]]:
        d = engine.decide(prompt)
        return d.model, tuple(round(n.score, 5) for n in d.nearest)

    expected = [signature(p) for p in prompts]
    monkeypatch.setattr(embedder_module, "PIECE_CACHE", 40)  # the cache starts over all the time, under the threads
    got: list[Any] = [None] * len(prompts)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(k, len(prompts), 4):
                got[i] = signature(prompts[i])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and got == expected


# --- an embedder that misbehaves ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [lambda rows: rows[0], lambda rows: rows + rows, lambda rows: [[] for _ in rows], lambda rows: "nonsense"],
    ids=["one vector", "too many", "empty vectors", "a string"],
)
def test_a_wrong_shape_at_compile_time_is_e321(answer: Callable[[list[list[float]]], Any]) -> None:
    embedder = Armed(answer)
    embedder.armed = True
    with pytest.raises(PolicyError) as err:
        Engine.from_source(POLICY, file="p.route", embedder=embedder)
    assert "E321" in str(err.value) and "p.route:2:" in str(err.value)


FAILING = {
    "raises": lambda rows: (_ for _ in ()).throw(RuntimeError("model server down")),
    "NaN": lambda rows: [[float("nan")] * len(r) for r in rows],
    "another dimension": lambda rows: [r[:8] for r in rows],
    "a string": lambda rows: "nonsense",
}


@pytest.mark.parametrize("answer", FAILING.values(), ids=FAILING.keys())
def test_an_embedder_failing_at_request_time_never_fails_decide(
    answer: Callable[[list[list[float]]], Any], caplog: pytest.LogCaptureFixture
) -> None:
    engine = armed_engine(answer)
    with caplog.at_level("WARNING", logger="modelroute.semantic"):
        for _ in range(3):
            d = engine.decide("write a python function that parses dates")  # an example, word for word
            assert d.model == "alpha-mini" and d.tasks == [] and d.vector is None and d.nearest == []
    warnings = [r.getMessage() for r in caplog.records if r.name == "modelroute.semantic"]
    assert len(warnings) == 1 and "the embedder failed" in warnings[0] and "matmul" not in warnings[0]
    assert engine.decide("a stack trace").model == "beta-coder"  # a pattern match embeds nothing


def similar_lines(text: str) -> list[str]:
    """Explain's `similar` section: one line per semantic task."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("similar"))
    out = []
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        out.append(line.strip())
    return out


def test_a_failed_similarity_makes_every_comparison_false_and_explain_says_why() -> None:
    policy = POLICY.replace("when task is code", "when similarity(code) < 0.1 or similarity(code) >= 0.1")
    embedder = Armed(FAILING["another dimension"])
    engine = Engine.from_source(policy, file="p.route", embedder=embedder)
    embedder.armed = True
    d = engine.decide("anything at all")
    assert d.model == "alpha-mini"
    assert similar_lines(d.explain())[0] == "code  (no similarity: the embedder failed, see the log) not detected"
    (similar,) = json.loads(d.report().model_dump_json())["semantic"]  # what `explain --json` prints
    assert similar == {"task": "code", "example": "", "index": -1, "score": None, "threshold": 0.6, "matched_by": "no"}


def test_explain_quotes_examples_and_shows_no_text_to_compare() -> None:
    engine = Engine.from_source(POSITIONS, file="p.route", embedder=BagOfWords())
    lines = similar_lines(engine.decide("say hi to python").explain())
    assert 'nearest example 1 "say \\"hi\\" to python"' in lines[0]
    assert similar_lines(engine.decide("").explain()) == [
        "code  0.000 <  0.8  not detected, no text to compare",
        "chat  0.000 <  0.75 not detected, no text to compare",
    ]


def test_a_request_vector_of_another_dimension_is_an_error_naming_the_embedder(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = armed_engine(lambda rows: [r[:8] for r in rows])
    with caplog.at_level("WARNING", logger="modelroute.semantic"):
        assert engine.decide("a python function for dates").model == "alpha-mini"
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "modelroute.semantic"]
    assert "embedder" in warning and "8 numbers" in warning and "task `code`" in warning and "matmul" not in warning


def test_nan_example_vectors_are_e321() -> None:
    embedder = Armed(lambda rows: [[float("nan")] * len(r) for r in rows])
    embedder.armed = True
    with pytest.raises(PolicyError, match="E321"):
        Engine.from_source(POLICY, file="p.route", embedder=embedder)


def test_a_nan_request_vector_never_leaks_nan_similarities() -> None:
    engine = armed_engine(lambda rows: [[float("nan")] * len(r) for r in rows])
    d = engine.decide("a python function for dates")
    assert all(math.isfinite(n.score) for n in d.nearest)
    assert "nan" not in " ".join(similar_lines(d.explain()))


# --- example files -------------------------------------------------------------------------------------------------


def test_crlf_duplicates_and_10k_lines_in_an_example_file(tmp_path: Path) -> None:
    lines = [f"python function number {i}" for i in range(10_000)]
    (tmp_path / "ex.txt").write_bytes(("\r\n".join(lines + lines[:5]) + "\r\n").encode())
    (tmp_path / "main.route").write_text(file_policy("ex.txt"))
    embedder = BagOfWords()
    engine = Engine.load(str(tmp_path / "main.route"), embedder=embedder)
    task = engine.policy.semantic["code"]
    assert len(task.examples) == 10_005 and not any("\r" in e for e in task.examples)
    assert len(embedder.embedded) == 10_000  # a duplicate is embedded once
    assert task.spans[10_004].line == 10_005


def test_a_byte_order_mark_does_not_turn_a_comment_into_an_example(tmp_path: Path) -> None:
    (tmp_path / "ex.txt").write_bytes("\ufeff# the examples\npython function\n".encode())
    (tmp_path / "main.route").write_text(file_policy("ex.txt"))
    engine = Engine.load(str(tmp_path / "main.route"), embedder=BagOfWords())
    assert engine.policy.semantic["code"].examples == ("python function",)


def test_a_directory_instead_of_a_file_is_e204(tmp_path: Path) -> None:
    (tmp_path / "ex").mkdir()
    (tmp_path / "main.route").write_text(file_policy("ex"))
    with pytest.raises(PolicyError) as err:
        Engine.load(str(tmp_path / "main.route"), embedder=BagOfWords())
    assert "E204" in str(err.value) and "main.route:2:18" in str(err.value)


def test_a_file_outside_the_policy_directory_is_read_as_an_include_is(tmp_path: Path) -> None:
    (tmp_path / "pol").mkdir()
    (tmp_path / "outside.txt").write_text("python function\n")
    (tmp_path / "pol" / "main.route").write_text(file_policy("../outside.txt"))
    engine = Engine.load(str(tmp_path / "pol" / "main.route"), embedder=BagOfWords())
    assert engine.policy.semantic["code"].examples == ("python function",)


def test_a_symlink_swapped_between_reloads(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("python function\n")
    (tmp_path / "b.txt").write_text("contract lawyer\n")
    os.symlink("a.txt", tmp_path / "ex.txt")
    (tmp_path / "main.route").write_text(file_policy("ex.txt"))
    engine = Engine.load(str(tmp_path / "main.route"), embedder=BagOfWords())
    assert engine.decide("contract lawyer").model == "alpha-mini"
    os.remove(tmp_path / "ex.txt")
    os.symlink("b.txt", tmp_path / "ex.txt")
    assert engine.reload() and engine.decide("contract lawyer").model == "beta-coder"
    os.remove(tmp_path / "ex.txt")
    os.symlink("missing.txt", tmp_path / "ex.txt")
    assert not engine.reload() and engine.last_error is not None and "E204" in str(engine.last_error)
    assert engine.decide("contract lawyer").model == "beta-coder"  # the last good policy keeps deciding


# --- like and similarity() in every position, and fmt ------------------------------------------------------------

POSITIONS = """\
catalog "CATALOG"
task code = like ["say \\"hi\\" to python", "back\\\\slash function", "unicode é 😀 dates", "tab\\there"] >= 80%
task chat = /hello/, like ["python dates"]
when not (task is code or similarity(code) < 0.1) and not task is chat use beta-coder
when (task is chat and similarity(code) >= 0.1) or similarity(chat) > 0.9
    prefer score(-1 * similarity(code) + 2 * similarity(chat))
otherwise use alpha-mini
""".replace("CATALOG", str(CATALOG))


def test_like_and_similarity_in_every_position_and_fmt_round_trips(cli: Callable[..., Any], tmp_path: Path) -> None:
    formatted = cli("fmt", "-", input=POSITIONS)
    assert formatted.returncode == 0 and "Traceback" not in formatted.stderr
    again = cli("fmt", "-", input=formatted.stdout)
    assert again.stdout == formatted.stdout
    before = Engine.from_source(POSITIONS, file="p.route", embedder=BagOfWords())
    after = Engine.from_source(formatted.stdout, file="p.route", embedder=BagOfWords())
    examples = before.policy.semantic["code"].examples
    assert examples == ('say "hi" to python', "back\\slash function", "unicode é 😀 dates", "tab\there")
    assert after.policy.semantic["code"].examples == examples
    cases = {
        "python dates": "alpha-large",  # chat by meaning, similarity(code) 0.71: the score rule
        "hello there": "alpha-mini",  # chat by its pattern, similar to nothing
        "python function dates parse": "beta-coder",  # neither task, similarity(code) 0.5
        "nothing known": "alpha-mini",  # a zero vector: similarity 0 everywhere
    }
    for prompt, model in cases.items():
        assert before.decide(prompt).model == after.decide(prompt).model == model, prompt
    assert math.isclose(cosine("python function dates parse", examples[1]), 0.5)


# --- explain, `modelroute test`, and the CLI ---------------------------------------------------------------------


def test_explain_json_semantic_by_pattern_and_by_meaning_is_stable(cli: Callable[..., Any]) -> None:
    outs = []
    for prompt in ["review this contract clause for legal risks", "Is this non-compete agreement enforceable?"]:
        runs = [cli("explain", "-p", str(ROOT / "policies"), prompt, "--json") for _ in range(2)]
        assert all(r.returncode == 0 for r in runs), runs[0].stderr
        first, second = (json.loads(r.stdout) for r in runs)
        first.pop("elapsed_us"), second.pop("elapsed_us")
        assert first == second  # the same report every run
        outs.append({s["task"]: s for s in first["semantic"]})
    assert outs[0]["legal"]["matched_by"] == "pattern"
    assert all(set(s) == {"task", "example", "index", "score", "threshold", "matched_by"} for s in outs[0].values())
    assert {s["matched_by"] for s in outs[1].values()} <= {"pattern", "meaning", "no"}


def test_coverage_without_semantic_tasks(cli: Callable[..., Any], tmp_path: Path) -> None:
    (tmp_path / "main.route").write_text(
        f'catalog "{CATALOG}"\ntask code = "stack trace"\nwhen task is code use beta-coder\notherwise use alpha-mini\n'
        'test "t" {\n  expect "a stack trace" -> beta-coder task code\n}\n'
    )
    proc = cli("test", "--coverage", str(tmp_path))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr + proc.stdout
    assert "1 passed" in proc.stdout


def test_the_bundled_policy_with_the_cli(cli: Callable[..., Any]) -> None:
    policies = str(ROOT / "policies")
    for args in (("check", "--strict", policies), ("test", policies), ("explain", "-p", policies, "hello")):
        proc = cli(*args)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (args, proc.stderr)


NO_EXTRA = (
    "import sys; sys.modules['wordllama'] = None; from engine.cli import main; sys.argv[0] = 'modelroute'; main()"
)


@pytest.mark.parametrize("command", ["check", "test", "explain"])
def test_without_the_extra_the_cli_names_it_and_exits_1(command: str) -> None:
    args = [command, "policies/"] if command != "explain" else [command, "-p", "policies/", "hello"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", NO_EXTRA, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout + proc.stderr
    assert "E320" in out and "pip install 'modelroute[semantic]'" in out and "Traceback" not in out


def test_a_zero_vector_matches_nothing_even_at_threshold_0() -> None:
    source = POLICY.replace(">= 0.6", ">= 0")
    engine = Engine.from_source(source, file="p.route", embedder=BagOfWords())
    assert engine.decide("").tasks == [] and engine.decide("nothing known here").model == "alpha-mini"


def test_a_similarity_compared_with_a_number_above_1_is_reported(cli: Callable[..., Any], tmp_path: Path) -> None:
    source = POLICY.replace("when task is code", "when similarity(code) >= 50")
    (tmp_path / "main.route").write_text(source)
    proc = cli("check", "--strict", str(tmp_path))
    assert proc.returncode == 1 and "similarity" in proc.stdout + proc.stderr
    assert "E407" in proc.stdout + proc.stderr and "did you mean 0.5 or 50%?" in proc.stdout + proc.stderr
    for fine in ("0", "1", "0.5", "100%"):
        Engine.from_source(
            POLICY.replace("task is code", f"similarity(code) < {fine}"), file="p.route", embedder=BagOfWords()
        )


def test_expect_nearest_with_escapes_and_e322(cli: Callable[..., Any], tmp_path: Path) -> None:
    tests = (
        'test "t" {\n  expect "say hi to python" -> beta-coder nearest code "say \\"hi\\" to python"\n'
        '  expect "hello" -> alpha-large\n}\n'
    )
    (tmp_path / "main.route").write_text(POSITIONS + tests)
    proc = cli("test", "--coverage", str(tmp_path))
    assert proc.returncode == 0 and "2 passed" in proc.stdout and "Traceback" not in proc.stderr, proc.stdout
    assert "examples never the nearest" in proc.stdout
    bad = POSITIONS + tests.replace('nearest code "say', 'nearest code "not an example, say')
    (tmp_path / "main.route").write_text(bad)
    proc = cli("test", str(tmp_path))
    assert proc.returncode == 1 and "E322" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


# --- the semantic cache ----------------------------------------------------------------------------------------------


def test_a_nan_vector_finds_nothing_in_the_semantic_index() -> None:
    import numpy as np

    from providers.execution.semantic_cache import SemanticIndex

    index, embedder = SemanticIndex(), object()
    index.add("scope", embedder, np.array([1.0, 0.0, 0.0], dtype=np.float32), "key-a", 1e18, 0.0)
    assert index.nearest("scope", embedder, np.array([0.0, 1.0, 0.0], dtype=np.float32), 0.9, 1.0) is None
    assert index.nearest("scope", embedder, np.full(3, np.nan, dtype=np.float32), 0.9, 1.0) is None


def test_a_nan_embedding_never_serves_another_requests_answer(fake_server: Any) -> None:
    pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
    from providers.execution.cache import ResponseCache
    from tests.engines import engine_for
    from tests.fakeserver import Reply

    def nan_for_weather(texts: list[str]) -> Any:
        return [[float("nan")] * 3 if "weather" in t else [1.0, 0.0, 0.0] for t in texts]

    policy = "set cache.ttl = 1h\nset cache.semantic = 0.95\nset retry.attempts = 0\notherwise use alpha-mini\n"
    engine = engine_for(fake_server, policy)
    engine.executor.cache = ResponseCache(embedder=nan_for_weather)
    try:
        fake_server.default = Reply(text="def parse(): ...")
        engine.complete("write a python function", temperature=0)
        fake_server.default = Reply(text="sunny")
        answer = engine.complete("what is the weather today", temperature=0)
        assert answer.attempts != []  # asked upstream, not served the python answer
    finally:
        engine.close()


def test_a_failed_similarity_makes_not_equal_false_too_and_reports_no_score() -> None:
    def embed(texts: list[str]) -> list[list[float]]:
        if texts == ["boom"]:
            raise RuntimeError("the embedding service is down")
        return [[1.0, 0.0] if "code" in t else [0.0, 1.0] for t in texts]

    engine = Engine.from_source(
        'task code = like ["code please"] >= 0.5\nwhen similarity(code) != 0.3 use gpt-4o\notherwise use gpt-4o-mini\n',
        embedder=embed,
    )
    assert engine.decide("write code").model == "gpt-4o"
    d = engine.decide("boom")
    assert d.model == "gpt-4o-mini"  # NaN != 0.3 would be true: a failed similarity is like a missing value
    (similar,) = d.model_dump()["semantic"]
    assert similar["score"] is None and similar["index"] == -1 and similar["matched_by"] == "no"
