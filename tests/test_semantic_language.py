"""Semantic tasks, language side: `.route` text with `like` examples and `similarity(...)` in, the AST both parsers
give (equal, with spans) and every compile diagnostic (positions, hints, all in one run) out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.api import Engine, compile_source
from engine.diagnostics import PolicyError
from engine.language import nodes as n
from engine.language.fastparse import GRAMMAR_WORDS, parse_fast
from engine.language.parse import parse
from engine.runtime.embedder import EXTRA_HINT, EmbedderUnavailable
from engine.runtime.semantic import DEFAULT_THRESHOLD
from tests.semantic_kit import BagOfWords
from tests.test_diagnostics import assert_well_formed

SOURCES = [
    'task code = like ["write a python function that parses dates", "why does this stack trace happen"] >= 0.75',
    'task legal = like "examples/legal.txt" >= 0.7\n',
    'task code = /```\\w+/, "stack trace", like ["a", "b"] >= 0.8',
    'task code = like ["a"], /x/i, "y"',
    "task code = like [] >= 70%",
    'task code = like [ "a" ,\n  "b" ]  # two\n',
    "when similarity(code) >= 0.6 prefer capability(CODING)",
    "when not (similarity(code) < 0.2 and task is code) use gpt-4o",
    "when x prefer score(2 * similarity(code) + capability(CODING) - similarity(legal) * 3)",
    "when similarity(code) use gpt-4o",
    'when similarity in ["a"] use gpt-4o',
]


@pytest.mark.parametrize("source", SOURCES)
def test_both_parsers_agree(source: str) -> None:
    slow = parse(source, "p.route", fast=False).body
    quick = parse_fast(source, "p.route")
    assert quick is not None, "the fast parser reads every semantic form"
    assert quick == slow


def test_like_nodes_and_spans() -> None:
    (task,) = parse('task code = "stack trace", like ["write a function", "fix \\"this\\""] >= 80%', "p.route").body
    assert isinstance(task, n.TaskDecl) and [p.source for p in task.patterns] == ["stack trace"]
    (like,) = task.likes
    assert [e.text for e in like.examples] == ["write a function", 'fix "this"']
    assert like.file is None and like.op == ">=" and like.threshold is not None
    assert (like.threshold.kind, like.threshold.value) == ("percent", 0.8)
    assert (like.span.col, like.span.end_col) == (28, 76)  # `like` to the end of the threshold
    assert (like.source_span.col, like.examples[0].span.col) == (33, 34)
    (file_task,) = parse('task legal = like "ex/legal.txt"', "p.route").body
    assert isinstance(file_task, n.TaskDecl) and file_task.likes[0].file == "ex/legal.txt"
    assert file_task.likes[0].threshold is None and file_task.patterns == ()


def test_similarity_operand_and_score_factor() -> None:
    rule = parse("when similarity(code) >= 0.6 prefer score(2 * similarity(legal))", "p.route").body[0]
    assert isinstance(rule, n.Rule) and isinstance(rule.cond, n.Compare)
    left = rule.cond.left
    assert (left.name, left.task, left.call, left.builtin) == ("similarity", "code", False, False)
    assert left.task_span is not None and (left.task_span.col, left.task_span.end_col) == (17, 21)
    (term,) = rule.action.rankings[0].terms
    assert (term.coef, term.factor, term.name, term.call) == (2.0, "similarity", "legal", "similarity")


def test_like_and_nearest_are_keywords_only_where_needed() -> None:
    assert {"like", "nearest"} <= GRAMMAR_WORDS and "similarity" not in GRAMMAR_WORDS
    policy = compile_source(
        'task like = "x"\nmodel nearest = gpt-4o\nwhen similarity > 3 and like == "y" use nearest\n'
        "when task is like use nearest\notherwise prefer score(similarity)\n"
    )
    assert not policy.semantic and policy.embedder is None
    assert Engine(policy).decide("hi", similarity=4, like="y").model == "gpt-4o"


def test_default_threshold_and_percent_threshold() -> None:
    policy = compile_source(
        'task a = like ["python function"]\ntask b = like ["python"] >= 50%\notherwise use gpt-4o',
        embedder=BagOfWords(),
    )
    assert policy.semantic["a"].threshold == DEFAULT_THRESHOLD == 0.75
    assert policy.semantic["b"].threshold == 0.5


def _errors(text: str, monkeypatch: pytest.MonkeyPatch | None = None, **kw) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        compile_source(text, "policy.route", **kw)
    assert_well_formed(info.value)
    return info.value


def test_unknown_similarity_task_suggests_a_name() -> None:
    err = _errors(
        'task code = like ["a python function"]\nwhen similarity(cod) > 0.5 use gpt-4o', embedder=BagOfWords()
    )
    (d,) = err.diagnostics
    assert d.code == "E301" and d.hint == "did you mean code?" and (d.span.line, d.span.col) == (2, 17)


def test_another_function_with_an_argument_is_unknown() -> None:
    err = _errors(
        'task code = like ["a python function"]\nwhen similarty(code) > 0.5 use gpt-4o\n'
        "otherwise prefer score(foo(code))",
        embedder=BagOfWords(),
    )
    assert err.codes == ["E313", "E313"]
    assert "did you mean similarity?" in (err.diagnostics[0].hint or "")


def test_similarity_compares_with_a_number() -> None:
    err = _errors('task code = like ["a python function"]\nwhen similarity(code) > "high" use gpt-4o')
    assert err.codes == ["E400"] and "similarity(code)" in err.diagnostics[0].message


def test_no_embedder_is_reported_at_the_first_like_with_the_other_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable():
        raise EmbedderUnavailable(f"semantic tasks (`like`) need an embedder: {EXTRA_HINT}")

    monkeypatch.setattr("engine.compiler.semantic.default_embedder", unavailable)
    err = _errors(
        'task code = "stack trace", like ["a python function"]\ntask legal = like ["a contract"]\n'
        "when task is code use no-such-model\notherwise use gpt-4o"
    )
    assert sorted(err.codes) == ["E300", "E320"]
    d = next(d for d in err.diagnostics if d.code == "E320")
    assert (d.span.line, d.span.col) == (1, 28)
    assert EXTRA_HINT in (d.hint or "") and "Engine.load(embedder=...)" in (d.hint or "")


def test_a_failing_embedder_is_a_diagnostic_not_a_crash() -> None:
    def broken(texts: list[str]) -> list[list[float]]:
        return [[1.0, 0.0]]  # one vector, whatever the number of texts

    err = _errors('task code = like ["a", "b"]\notherwise use gpt-4o', embedder=broken)
    assert err.codes == ["E321"] and "shape" in err.diagnostics[0].message


def test_expect_task_and_nearest_are_checked_at_compile_time() -> None:
    err = _errors(
        'task code = like ["a python function"]\ntask words = "hello"\notherwise use gpt-4o\n'
        'test "t" {\n  expect "x" -> gpt-4o task cod\n  expect "x" -> gpt-4o nearest words "hello"\n'
        '  expect "x" -> gpt-4o nearest code "a python functio"\n}',
        embedder=BagOfWords(),
    )
    assert err.codes == ["E301", "E319", "E322"]
    assert err.diagnostics[2].hint == "did you mean a python function?"


def test_cache_semantic_is_a_fraction() -> None:
    for good, value in (("0.95", 0.95), ("95%", 0.95), ("1", 1.0)):
        assert compile_source(f"set cache.semantic = {good}\notherwise use gpt-4o").settings["cache.semantic"] == value
    assert compile_source("otherwise use gpt-4o").settings["cache.semantic"] is None
    assert _errors("set cache.semantic = 1.5\notherwise use gpt-4o").codes == ["E401"]
    assert _errors("set cache.semantic = 2s\notherwise use gpt-4o").codes == ["E400"]


def test_example_file_relative_to_the_policy_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rules" / "examples").mkdir(parents=True)
    (tmp_path / "rules" / "examples" / "legal.txt").write_text(
        "# legal requests\n\n  review this contract clause  \nask a lawyer\n", encoding="utf-8"
    )
    (tmp_path / "rules" / "legal.route").write_text('task legal = like "examples/legal.txt" >= 0.5\n')
    (tmp_path / "main.route").write_text('include "rules/legal.route"\nwhen task is legal use gpt-4o\n')
    monkeypatch.chdir(tmp_path)
    policy = Engine.load(tmp_path / "main.route", embedder=BagOfWords()).policy
    task = policy.semantic["legal"]
    assert task.examples == ("review this contract clause", "ask a lawyer")
    assert [(s.line, s.col) for s in task.spans] == [(3, 3), (4, 1)]
    assert task.file == "rules/examples/legal.txt" and task.file in policy.files


def test_a_policy_without_like_never_imports_numpy() -> None:
    code = (
        "import sys\nfrom engine.api import Engine, compile_source\n"
        "p = compile_source('task code = \"stack trace\"\\nwhen task is code use gpt-4o\\notherwise use gpt-4o-mini')\n"
        "e = Engine(p)\nd = e.decide('a stack trace')\nassert d.model == 'gpt-4o' and d.vector is None\n"
        "assert e.embedder is None\n"
        "bad = [m for m in ('numpy', 'wordllama') if m in sys.modules]\nassert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_fmt_keeps_like_and_similarity() -> None:
    from engine.language.fmt import format_source

    text = (
        'task code   =   "stack trace",like [ "write a python function" , "b" ]>=0.8\n'
        "when similarity( code ) >= 0.6 prefer score(2*similarity(code)+capability(CODING))\n"
        'test "t" {\nexpect "x" -> gpt-4o task code,code nearest code "b"\n}\n'
    )
    assert format_source(text, "p.route") == (
        'task code = "stack trace", like ["write a python function", "b"] >= 0.8\n'
        "when similarity(code) >= 0.6 prefer score(2 * similarity(code) + capability(CODING))\n"
        'test "t" {\n  expect "x" -> gpt-4o task code, code nearest code "b"\n}\n'
    )


def test_lint_knows_a_semantic_task_may_hold_without_its_patterns() -> None:
    from engine.tools.lint import lint

    policy = compile_source(
        'task code = "stack trace", like ["a python function"]\ntask unused = like ["a poem"]\n'
        'task scored = like ["a contract"]\n'
        'when task is code and not task ~ "stack trace" use gpt-4o\n'
        "when similarity(code) > 0.5 and similarity(scored) < 0.2 use gpt-4o\n"
        "otherwise prefer score(similarity(scored) + capability(CODING))\n",
        embedder=BagOfWords(),
    )
    found = {(d.code, d.span.line if d.span else 0) for d in lint(policy)}
    assert ("W106", 2) in found and not any(line in (3, 4, 5) for _, line in found)


def test_fmt_puts_a_long_list_of_examples_one_per_line() -> None:
    from engine.language.fmt import WIDTH, format_source

    examples = ", ".join(f'"an example request number {i} about one topic"' for i in range(3))
    out = format_source(f'task code = "stack trace", like [{examples}] >= 0.8\n')
    assert out.splitlines() == [
        'task code = "stack trace",',
        '            like ["an example request number 0 about one topic",',
        '                  "an example request number 1 about one topic",',
        '                  "an example request number 2 about one topic"] >= 0.8',
    ]
    assert all(len(line) <= WIDTH for line in out.splitlines()) and format_source(out) == out
    assert parse(out).body[0] == parse(out, fast=False).body[0]


def test_unreadable_example_file_names_its_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 au lait\n")
    (tmp_path / "main.route").write_text(
        'task a = like "bad.txt"\ntask b = like "missing/b.txt"\notherwise use gpt-4o\n'
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PolicyError) as info:
        Engine.load(tmp_path / "main.route", embedder=BagOfWords())
    assert_well_formed(info.value)
    first, second = info.value.diagnostics
    assert first.code == "E204" and first.message.endswith("bad.txt of task `a` cannot be read: not valid UTF-8")
    assert second.code == "E204" and second.message.endswith("missing/b.txt of task `b` does not exist")


def test_the_semantic_cache_without_an_embedder_is_reported_at_its_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable():
        raise EmbedderUnavailable(f"semantic tasks (`like`) need an embedder: {EXTRA_HINT}")

    monkeypatch.setattr("engine.compiler.semantic.default_embedder", unavailable)
    err = _errors("set cache.ttl = 1h\nset cache.semantic = 0.95\notherwise use gpt-4o")
    assert err.codes == ["E320"]
    d = err.diagnostics[0]
    assert d.span is not None and d.span.line == 2 and "cache.semantic" in d.message and EXTRA_HINT in (d.hint or "")
    assert compile_source("set cache.semantic = 0.95\notherwise use gpt-4o", embedder=BagOfWords()).embedder


def test_more_examples_than_decide_can_afford_is_an_error_at_the_like(tmp_path: Path) -> None:
    from engine import compile_policy
    from engine.compiler.semantic import MAX_EXAMPLES

    (tmp_path / "many.txt").write_text("\n".join(f"example {i}" for i in range(MAX_EXAMPLES + 1)), encoding="utf-8")
    (tmp_path / "main.route").write_text('task t = like "many.txt"\notherwise use gpt-4o\n', encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        compile_policy(tmp_path / "main.route", embedder=BagOfWords())
    assert_well_formed(info.value)
    (d,) = info.value.diagnostics
    assert d.code == "E323" and d.span is not None and (d.span.line, d.span.col) == (1, 15)  # the file name
    assert f"{MAX_EXAMPLES + 1:,} examples" in d.message and "--coverage" in (d.hint or "")


def test_a_long_example_is_embedded_cut_like_a_request() -> None:
    from engine.runtime.embedder import HEAD_CHARS, TAIL_CHARS

    seen: list[int] = []

    def embed(texts: list[str]) -> list[list[float]]:
        seen.extend(len(t) for t in texts)
        return [[1.0, 0.0] for _ in texts]

    long = "word " * 60_000  # 300 KB on one line: embedded whole, such examples stalled the compile
    policy = compile_source(f'task t = like ["{long}"]\notherwise use gpt-4o\n', embedder=embed)
    assert seen and max(seen) <= HEAD_CHARS + TAIL_CHARS + 1
    assert policy.semantic["t"].examples == (long,)  # shown whole; only its vector is of the cut
