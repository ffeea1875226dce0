"""Semantic tasks at decide time: policies with `like` examples and a bag-of-words test embedder (exact cosines) in,
the decisions, the request's vector (computed lazily, at most once), explain, `modelroute test` expectations and
coverage, and hot reload of example files out."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

from engine.api import Engine
from engine.runtime.policy import Request
from engine.tools.render import render_html, render_markdown
from engine.tools.testing import compile_with_tests, run_tests
from tests.semantic_kit import BagOfWords, best, cosine

CATALOG = Path(__file__).parent / "fixtures" / "policies" / "catalog.yaml"
EXPLAIN = Path(__file__).parent / "golden" / "explain"
CODE = ["write a python function that parses dates", "why does this stack trace happen"]
LEGAL = ["review this contract clause", "ask a lawyer about this clause"]

POLICY = f"""\
catalog "{CATALOG}"
task code = "stack trace", like ["{CODE[0]}", "{CODE[1]}"] >= 0.6
task legal = like ["{LEGAL[0]}", "{LEGAL[1]}"]
when tier == "free" use delta-tiny
when task is code use beta-coder
when similarity(legal) >= 0.5 use alpha-large
otherwise use alpha-mini
"""


@pytest.fixture
def embedder() -> BagOfWords:
    return BagOfWords()


@pytest.fixture
def engine(embedder: BagOfWords) -> Engine:
    return Engine.from_source(POLICY, file="semantic.route", embedder=embedder)


def test_examples_are_embedded_at_compile_time(engine: Engine, embedder: BagOfWords) -> None:
    assert sorted(embedder.embedded) == sorted(CODE + LEGAL)
    assert engine.embedder is embedder and engine.policy.embedder is embedder
    assert list(engine.policy.semantic) == ["code", "legal"]


def test_meaning_decides_with_exact_cosines(engine: Engine, embedder: BagOfWords) -> None:
    prompt = "a python function for dates please"
    d = engine.decide(prompt)
    assert d.model == "beta-coder" and d.tasks == ["code"]
    index, score = best(prompt, CODE)
    near = {x.task: x for x in d.nearest}
    assert (near["code"].index, near["code"].example) == (index, CODE[index])
    assert math.isclose(near["code"].score, score, abs_tol=1e-6) and near["code"].hit
    assert math.isclose(score, cosine(prompt, CODE[0])) and score >= 0.6
    assert embedder.embedded[-1] == prompt and len(embedder.calls) == 3  # the examples, then the request once


def test_a_pattern_decides_without_embedding(engine: Engine, embedder: BagOfWords) -> None:
    calls = len(embedder.calls)
    d = engine.decide("here is a stack trace for you")
    assert d.model == "beta-coder" and d.tasks == ["code"]
    assert d.vector is None and d.nearest == [] and len(embedder.calls) == calls


def test_the_vector_is_computed_lazily_and_once(engine: Engine, embedder: BagOfWords) -> None:
    calls = len(embedder.calls)
    assert engine.decide("a contract", tier="free").vector is None  # decided before any semantic rule
    assert len(embedder.calls) == calls
    d = engine.decide("the lawyer reads a contract clause")  # task is code (no), then similarity(legal)
    assert d.model == "alpha-large" and len(embedder.calls) == calls + 1
    vector = d.vector
    assert vector is not None and str(vector.dtype) == "float32"
    assert math.isclose(float((vector * vector).sum()), 1.0, rel_tol=1e-5)
    assert d.tasks == ["legal"]  # detected by meaning, once the vector exists
    d.explain()  # explain reuses the request's vector
    assert len(embedder.calls) == calls + 1


def test_nothing_similar_goes_on(engine: Engine) -> None:
    d = engine.decide("what is the weather today")
    assert d.model == "alpha-mini" and d.tasks == []
    assert [(x.task, x.score, x.hit) for x in d.nearest] == [("code", 0.0, False), ("legal", 0.0, False)]


def _big_policy(rules: int) -> str:
    """Enough attribute-guarded rules before the semantic one that the rule index walks its streams."""
    head = "".join(f'when team == "t{i}" use delta-tiny\n' for i in range(rules))
    return POLICY.replace('when tier == "free" use delta-tiny\n', head)


@pytest.mark.parametrize("rules", [2, 200], ids=["small-index", "streams"])
def test_the_index_never_skips_a_task_true_by_meaning(rules: int, embedder: BagOfWords) -> None:
    engine = Engine.from_source(_big_policy(rules), file="semantic.route", embedder=embedder)
    assert (engine.policy.index.small is not None) == (rules == 2)
    prompt = "python function parse dates"  # no pattern of code matches; close in meaning
    assert engine.policy.matcher is not None and not engine.policy.matcher.scan(prompt)
    d = engine.decide(prompt)
    assert d.model == "beta-coder" and d.report().model == "beta-coder"
    assert engine.decide("stack trace", team="t1").model == "delta-tiny"
    assert engine.decide("contract clause lawyer", team="nobody").model == "alpha-large"
    assert engine.decide("not task", team="nobody").model == "alpha-mini"


def test_not_task_is_semantic(embedder: BagOfWords) -> None:
    engine = Engine.from_source(
        f'catalog "{CATALOG}"\ntask code = "stack trace", like ["{CODE[0]}"] >= 0.6\n'
        "when not task is code use alpha-mini\notherwise use beta-coder\n",
        embedder=embedder,
    )
    assert engine.decide("hello there").model == "alpha-mini"
    assert engine.decide("python function to parse dates").model == "beta-coder"
    assert engine.decide("a stack trace").model == "beta-coder"


def test_similarity_in_a_score(embedder: BagOfWords) -> None:
    engine = Engine.from_source(
        f'catalog "{CATALOG}"\ntask code = like ["{CODE[0]}"]\n'
        "otherwise prefer score(10 * similarity(code) + capability(CODING))\n",
        embedder=embedder,
    )
    prompt = "python function"
    d = engine.decide(prompt)
    shown = d.candidates[0].scores[0]
    expected = cosine(prompt, CODE[0])
    assert f"(10 x similarity(code) {expected:.3f})" in shown
    plain = Engine.from_source(f'catalog "{CATALOG}"\notherwise prefer capability(CODING)\n')
    assert d.model == plain.decide(prompt).model  # the similarity adds the same to every model


def test_similarity_is_zero_without_a_request(engine: Engine) -> None:
    from engine.runtime.semantic import semantic_hit, similarity_of

    task = engine.policy.semantic["code"]
    assert similarity_of(None, task) == 0.0 and semantic_hit(None, task) is False
    req = Request("python function", 3, {}, False, False, 500.0)
    assert math.isclose(similarity_of(req, task), cosine("python function", CODE[0]), abs_tol=1e-6)


def test_the_embedded_text_is_cut(engine: Engine, embedder: BagOfWords) -> None:
    from engine.runtime.embedder import HEAD_CHARS, TAIL_CHARS, task_text

    prompt = "python " * 2000
    engine.decide(prompt)
    assert embedder.embedded[-1] == task_text(prompt) and len(embedder.embedded[-1]) == HEAD_CHARS + TAIL_CHARS + 1


# ---- explain ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "prompt"),
    [("semantic_by_meaning", "the lawyer reads a contract clause"), ("semantic_by_pattern", "a stack trace")],
)
def test_explain_golden(name: str, prompt: str, engine: Engine, golden, mask_explain) -> None:
    text = engine.decide(prompt).explain()
    golden(EXPLAIN / f"{name}.txt", mask_explain(text).replace(str(CATALOG), "catalog.yaml"))


def test_explain_json_markdown_and_html(engine: Engine) -> None:
    report = engine.decide("the lawyer reads a contract clause").report()
    data = report.model_dump(mode="json")
    by_task = {s["task"]: s for s in data["semantic"]}
    _, score = best("the lawyer reads a contract clause", LEGAL)
    assert by_task["legal"]["matched_by"] == "meaning" and math.isclose(by_task["legal"]["score"], score, abs_tol=1e-6)
    assert by_task["legal"]["threshold"] == 0.75 and by_task["legal"]["example"] in LEGAL
    assert by_task["code"]["matched_by"] == "no" and data["tasks"] == ["legal"]
    assert "similar" in render_markdown(report) and "nearest example" in render_html(report)


# ---- modelroute test -------------------------------------------------------------------------------------------


def test_expectations_and_coverage(tmp_path: Path, embedder: BagOfWords) -> None:
    (tmp_path / "main.route").write_text(
        POLICY
        + 'test "semantic" {\n'
        + f'  expect "python function for dates" -> beta-coder task code nearest code "{CODE[0]}"\n'
        + '  expect "a clause for my lawyer" -> alpha-large\n'
        + '  expect "hello" -> alpha-mini task legal\n'
        + f'  expect "python function" -> beta-coder nearest code "{CODE[1]}"\n'
        + "}\n"
    )
    policy, _ = compile_with_tests(tmp_path / "main.route", embedder=embedder)
    result = run_tests(policy)
    assert [c.passed for c in result.cases] == [True, True, False, False]
    assert result.cases[2].problems[0].startswith("expected task legal, detected []")
    assert result.cases[3].problems[0].startswith(f'expected nearest example of code "{CODE[1]}", got "{CODE[0]}"')
    cov = result.coverage
    assert cov.examples == 4
    # "hello" shares no word with any example: every cosine is 0 and the first example of each task is the nearest
    assert [(x, where) for x, _, where in cov.unused_examples] == [(CODE[1], "task code")]
    assert result.to_dict(coverage=True)["coverage"]["examples"]["exercised"] == 3


# ---- hot reload of example files ---------------------------------------------------------------------------------


def _wait(cond, what: str, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.mark.parametrize("poll", [False, True], ids=["notify", "poll"])
def test_example_files_are_watched(tmp_path: Path, embedder: BagOfWords, poll: bool) -> None:
    examples = tmp_path / "examples" / "legal.txt"
    examples.parent.mkdir()
    examples.write_text("review this contract clause\n")
    (tmp_path / "main.route").write_text(
        f'catalog "{CATALOG}"\ntask legal = like "examples/legal.txt" >= 0.9\n'
        "when task is legal use alpha-large\notherwise use alpha-mini\n"
    )
    engine = Engine.load(tmp_path / "main.route", embedder=embedder, watch=True, poll=poll)
    try:
        assert engine.decide("a poem").model == "alpha-mini"
        version = engine.version
        tmp = examples.with_name(".legal.txt.tmp")  # an atomic save: write a temporary file, rename it over
        tmp.write_text("# legal\nreview this contract clause\nwrite a poem\n")
        os.replace(tmp, examples)
        _wait(lambda: engine.decide("a poem").model == "alpha-large", "the new example to load")
        assert engine.version != version
        good = engine.version
        examples.write_text("# nothing but a comment\n")  # a broken example file: the last good policy serves
        _wait(lambda: engine.last_error is not None, "the empty example file to be rejected")
        assert engine.last_error.codes == ["E205"] and engine.version == good
        assert engine.decide("a poem").model == "alpha-large"
        examples.write_text("write a poem\n")
        _wait(lambda: engine.last_error is None and engine.version != good, "recovery")
        assert engine.decide("a contract clause").model == "alpha-mini"
    finally:
        engine.stop()


# ---- the default embedder (one smoke test; the integration tests are tests/test_embedder.py) --------------------


def test_default_embedder_smoke(tmp_path: Path) -> None:
    pytest.importorskip("wordllama")
    engine = Engine.from_source(
        f'catalog "{CATALOG}"\ntask code = like ["write a python function that parses dates"] >= 0.5\n'
        "when task is code use beta-coder\notherwise use alpha-mini\n"
    )
    assert engine.embedder is not None
    assert engine.decide("write a python function to parse a date string").model == "beta-coder"
    assert engine.decide("What's the weather today?").model == "alpha-mini"


def test_cli_test_coverage_lists_examples_never_nearest(
    tmp_path: Path, embedder: BagOfWords, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from engine.cli.app import main

    monkeypatch.setattr("engine.compiler.semantic.default_embedder", lambda: embedder)  # the CLI's default
    (tmp_path / "main.route").write_text(
        POLICY + f'test "t" {{\n  expect "python function" -> beta-coder task code nearest code "{CODE[0]}"\n}}\n'
    )
    done = CliRunner().invoke(main, ["test", str(tmp_path / "main.route"), "--coverage"])
    assert done.exit_code == 0, done.output
    assert "2/4 examples were the nearest to some prompt" in done.output
    assert f'"{CODE[1]}"  (task code)' in done.output and f'"{LEGAL[1]}"  (task legal)' in done.output
