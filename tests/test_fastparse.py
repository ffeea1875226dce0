"""The fast parser (engine/language/fastparse.py) agrees with the lark grammar: whenever it returns statements, the
lark parser accepts the same text and gives equal statements (nodes, spans, values, rule texts). It may give up
on anything; it must never disagree. Checked over generated policies with comments and odd whitespace, mutated
policies, random token soup, and every .route file in the repository."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lark.lexer import PatternStr
from test_differential import LONG, policy_sources
from test_fuzz import GRAMMARISH, _seeds, mutate, mutations

from engine.diagnostics import PolicyError
from engine.language import nodes as n
from engine.language.fastparse import GRAMMAR_WORDS, parse_fast
from engine.language.fastparse_lex import TooDeep
from engine.language.nodes import Rule
from engine.language.parse import _parser, parse

REPO = Path(__file__).resolve().parent.parent
FUZZ = settings(
    max_examples=3000 if LONG else 300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def agree(text: str) -> bool:
    """Assert that the fast parser, when it reads `text`, gives what lark gives; True when it read it."""
    try:
        quick = parse_fast(text, "f.route")
    except TooDeep:  # nested past MAX_NESTING: lark's path says so too
        with pytest.raises(PolicyError) as info:
            parse(text, "f.route", fast=False)
        assert "E107" in info.value.codes
        return False
    if quick is None:
        return False
    try:
        lark = parse(text, "f.route", fast=False).body
    except PolicyError as err:
        raise AssertionError(f"the fast parser read text lark rejects ({err.codes}):\n{text}") from None
    assert quick == lark, f"fast parser and lark disagree on:\n{text}"
    return True


def test_grammar_words_are_the_grammars_keywords() -> None:
    name = re.compile(r"[A-Za-z_][A-Za-z0-9_]*([.:\-][A-Za-z0-9_]+)*\Z")
    words = {t.pattern.value for t in _parser().terminals if isinstance(t.pattern, PatternStr)}
    assert {w for w in words if name.match(w)} == GRAMMAR_WORDS


SEPARATORS = [" ", "  ", "\n", "\n\n", "\t", " # a comment\n", "\r\n", "\n    ", " # and ( or ) when\n  "]


@st.composite
def spaced(draw: st.DrawFn) -> str:
    """A generated policy (tests/test_differential.py) with its spaces and line breaks replaced by other
    whitespace and comments (outside strings and regexes)."""
    text = draw(policy_sources())
    parts = re.split(r'("(?:[^"\\\n]|\\.)*"|/(?:[^/\\\n]|\\.)+/[a-z]*|[ \n]+)', text)
    out = []
    for part in parts:
        if (part and part.strip() == "" and " " in part) or part == "\n":
            out.append(draw(st.sampled_from(SEPARATORS)))
        else:
            out.append(part)
    return "".join(out)


@FUZZ
@given(text=spaced())
def test_generated_policies_with_comments(text: str) -> None:
    agree(text)


@FUZZ
@given(text=policy_sources(), ops=mutations)
def test_mutated_generated_policies(text: str, ops) -> None:
    agree(mutate(text, ops))


@FUZZ
@given(seed=st.sampled_from(_seeds()), ops=mutations)
def test_mutated_seed_policies(seed: str, ops) -> None:
    agree(mutate(seed, ops))


@FUZZ
@given(parts=st.lists(GRAMMARISH, max_size=40))
def test_token_soup(parts: list[str]) -> None:
    agree(" ".join(parts))


@pytest.mark.parametrize("path", sorted(REPO.glob("**/*.route")), ids=lambda p: str(p.relative_to(REPO)))
def test_every_policy_file(path: Path) -> None:
    agree(path.read_text(encoding="utf-8").lstrip("\ufeff"))


def test_it_reads_most_generated_policies() -> None:
    """The fast path is the one taken: it reads the usual statement forms (else the checks above prove little)."""
    rng = random.Random(5)
    shapes = [
        'task ~ "kw{i}"',
        'tier == "x{i}" or task ~ /k{i}\\b/',
        'not (tokens > {i}k and user.plan in [a, "b", 3]) or score <= 2.5',
        "tools and max_tokens < {i}",
        "task is t0",
    ]
    actions = [
        "use gpt-4o-mini",
        'prefer capability(CODING) then cheapest where latency <= 2s and price < $3/1M fallback a, "b"',
        "prefer least_busy where provider in [openai] and supports tools and cost <= $0.05",
        "prefer fastest where capability(REASONING) >= 6 and context >= 1M",
        "use gpt-4o cache 10m",
        "prefer cheapest fallback a cache off",
    ]
    read = 0
    for _ in range(200):
        lines = ['task t0 = "x", /y/i', 'model m = "gpt-4o"', f"limit {rng.randint(1, 99)}k tpm per key  # tokens"]
        for i in range(rng.randint(1, 8)):
            lines.append(f"when {rng.choice(shapes).format(i=i)} {rng.choice(actions)}  # rule {i}")
        lines.append("otherwise use m")
        read += agree("\n".join(lines) + "\n")
    assert read == 200


@pytest.mark.parametrize(
    ("text", "reads"),
    [
        ("limit 60 rpm per key\nlimit 100k tpm # c\n  per user\notherwise use m\n", True),
        ("limit 1.5M  tpm\n", True),
        ("limit 60 rpm per model\n", False),  # a grammar word as a name: lark decides
        ("limit 5m rpm\n", False),  # a duration: lark reports it
        ("limit 5 per key\n", False),
        ("limit 5 rpm per\n", False),
    ],
)
def test_limit_statements(text: str, reads: bool) -> None:
    assert agree(text) is reads


@pytest.mark.parametrize(
    ("text", "reads"),
    [
        ('include "tasks.route"\notherwise use m\n', True),
        ('include "a \\"b\\".route"  # quoted\ninclude "c.route"\n', True),
        ("include tasks.route\n", False),
        ("include\n", False),
        ('include "a" "b"\n', False),
    ],
)
def test_include_statements(text: str, reads: bool) -> None:
    """The bundled main.route starts with `include "tasks.route"`: before the fast parser read include, every
    compile of the bundled policy went through lark (about 6 ms of its 11)."""
    assert agree(text) is reads


def test_the_bundled_policy_is_read_by_the_fast_parser() -> None:
    from engine.language.fastparse import parse_fast
    from engine.language.load import bundled_policy_dir

    for path in sorted(bundled_policy_dir().glob("*.route")):
        if not path.name.endswith("_test.route"):
            assert parse_fast(path.read_text(encoding="utf-8"), str(path)) is not None, path


@pytest.mark.parametrize(
    ("text", "reads"),
    [
        ("when a use b cache 10m\notherwise use m\n", True),
        ("otherwise prefer cheapest where latency < 2s fallback a, b # c\n  cache off\n", True),
        ("when cache == 1 use b cache 0s\n", True),  # a name in a condition; the compiler rejects `0s`
        ('when a use b cache "x"\n', True),
        ("when a use b cache\n", False),
        ("when a use b cache [10m]\n", False),
        ("when a use b cache 10m fallback c\n", False),  # `cache` comes last: lark reports it
        ("when a use cache\n", False),  # a grammar word as a model name: lark decides
        ("when a balance round_robin [b, c] cache 1h\n", False),
    ],
)
def test_cache_clauses(text: str, reads: bool) -> None:
    assert agree(text) is reads


def test_spans_and_texts_of_a_rule_spread_over_lines() -> None:
    text = 'when (tier == "a" # c\n  or not (task ~ /x/))\n    and tokens > 3k\n  use m  # end\notherwise use m\n'
    assert agree(text)
    rule = parse(text).body[0]
    assert isinstance(rule, Rule) and rule.text == 'when (tier == "a" or not (task ~ /x/)) and tokens > 3k use m'


def big_policy() -> str:
    """More than two chunks' worth (both parsers cut big files at statement starts), with comments and rules
    spread over lines."""
    rules = []
    for i in range(3000):
        cond = f'tier == "t{i}" # rule {i}\n    and not (task ~ "k{i}" or tokens > {i}k)'
        rules.append(f"when {cond}\n  use m{i % 3}  # end")
    return 'model m0 = "a"\nmodel m1 = "b"\nmodel m2 = "c"\n' + "\n".join(rules) + "\notherwise use m0\n"


def test_big_files_read_in_pieces_agree_with_one_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.language import fastparse
    from engine.language import parse as parse_module

    text = big_policy()
    assert len(text) > 2 * parse_module.CHUNK_CHARS
    pieces = parse(text, "f.route").body  # the fast parser, a statement at a time
    lark_pieces = parse(text, "f.route", fast=False).body  # lark, in pieces
    monkeypatch.setattr(fastparse, "MEMO_CHARS", 0)  # no reuse: every statement read again
    monkeypatch.setattr(parse_module, "CHUNK_CHARS", 10**9)
    assert pieces == lark_pieces == parse(text, "f.route", fast=False).body == parse(text, "f.route").body


# --- reuse of unchanged statements (fastparse.parse_fast keeps the last text's statements per file) -------------

EDITABLE = """\
model fast = "gpt-4o-mini"   # a comment
task code = /def \\w+/, "stack trace"

when task is code
    prefer capability(CODING)   # spread over lines
when tier == "pro" use gpt-4o
otherwise use fast
"""


def _fast(text: str, file: str) -> tuple[n.Stmt, ...]:
    got = parse_fast(text, file)
    assert got is not None
    assert got == parse(text, file, fast=False).body  # always what lark reads
    return got


def test_an_edit_reads_only_the_statements_it_changed() -> None:
    first = _fast(EDITABLE, "reuse1.route")
    edited = _fast(EDITABLE.replace('tier == "pro"', 'tier == "team"'), "reuse1.route")
    assert [a is b for a, b in zip(first, edited, strict=True)] == [True, True, True, False, True]
    again = _fast(EDITABLE, "reuse1.route")
    assert again[3] == first[3] and again[3] is not edited[3]


def test_a_line_added_above_moves_every_span() -> None:
    first = _fast(EDITABLE, "reuse2.route")
    moved = _fast("# a new first line\n" + EDITABLE, "reuse2.route")
    assert [s.span.line for s in moved] == [s.span.line + 1 for s in first]
    assert not any(a is b for a, b in zip(first, moved, strict=True))
    # a comment added at the end of a statement changes only that piece
    commented = _fast(EDITABLE.replace("use gpt-4o\n", "use gpt-4o  # pro\n"), "reuse2.route")
    assert commented[4].span == first[4].span


def test_the_same_text_in_two_files_keeps_each_files_name() -> None:
    a, b = _fast(EDITABLE, "dir_a/p.route"), _fast(EDITABLE, "dir_b/p.route")
    assert {s.span.file for s in a} == {"dir_a/p.route"} and {s.span.file for s in b} == {"dir_b/p.route"}


def test_text_the_fast_parser_gives_up_on_does_not_disturb_the_reuse() -> None:
    first = _fast(EDITABLE, "reuse3.route")
    assert parse_fast(EDITABLE + "when ??? use x\n", "reuse3.route") is None
    assert parse(EDITABLE + "budget daily $5\n", "reuse3.route").body[:5] == first
    assert _fast(EDITABLE, "reuse3.route") == first


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["insert", "delete", "edit", "comment"]), min_size=1, max_size=8), st.randoms())
def test_any_sequence_of_edits_reads_as_lark_reads_it(ops: list[str], rnd: Any) -> None:
    lines = EDITABLE.splitlines(keepends=True)
    for op in ops:
        k = rnd.randrange(len(lines) + 1)
        if op == "insert":
            lines.insert(k, rnd.choice(["when tokens > 5k use fast\n", "\n", "# note\n", 'model m2 = "gpt-4o"\n']))
        elif op == "delete" and len(lines) > 1:
            del lines[min(k, len(lines) - 1)]
        elif op == "edit" and lines:
            i = min(k, len(lines) - 1)
            lines[i] = lines[i].replace("fast", "quick").replace("gpt-4o", "claude-3-5-haiku")
        elif op == "comment" and lines:
            i = min(k, len(lines) - 1)
            lines[i] = lines[i].rstrip("\n") + "  # c\n"
        text = "".join(lines)
        got = parse_fast(text, "seq.route")
        if got is not None:
            assert got == parse(text, "seq.route", fast=False).body


def test_the_statements_kept_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.language import fastparse

    monkeypatch.setattr(fastparse, "MEMO_TOTAL_CHARS", 3 * len(EDITABLE))
    fastparse.forget()
    for k in range(10):
        _fast(EDITABLE, f"bounded{k}.route")
    assert len(fastparse._last) == 3 and fastparse._last_chars[0] == 3 * len(EDITABLE)
    assert list(fastparse._last) == ["bounded7.route", "bounded8.route", "bounded9.route"]
    _fast(EDITABLE + "# more\n", "bounded9.route")  # a new text of a kept file replaces its old one
    assert list(fastparse._last) == ["bounded8.route", "bounded9.route"]  # the oldest went to make room
    assert fastparse._last_chars[0] == 2 * len(EDITABLE) + len("# more\n")
    fastparse.forget()
    assert fastparse._last_chars[0] == 0
