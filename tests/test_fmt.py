"""`modelroute fmt` (engine/fmt.py): canonical layout, comments kept, idempotent, meaning unchanged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.api import compile_source
from engine.language.fmt import WIDTH, compare_modules, format_source, layout, rule_texts, strip_positions
from engine.language.parse import parse

REPO = Path(__file__).resolve().parent.parent


def _compiled_view(policy) -> tuple:
    """What a CompiledPolicy decides with, minus positions: rule conditions, selectors, tasks, settings."""
    rules = []
    for r in policy.rules:
        sel = dataclasses.replace(r.selector, key="")  # the state key is file:line
        rules.append((strip_positions(r.node), sel, r.needs_scan))  # texts: compared by compare_modules
    return (
        tuple(rules),
        dict(policy.tasks),
        policy.pattern_text,
        dict(policy.settings) if policy.settings else None,
        [(b.period, b.limit, b.per) for b in policy.budgets],
        policy.unguarded,
        policy.pattern_rules,
    )


# ---- examples ------------------------------------------------------------------------------------------------

MESSY = """   # leading comment


catalog   "models.yaml"   # trailing on catalog
model fast="gamma-flash"
model verylongname = "alpha-mini"   # alias
task a = "x", # inside
   /y/  # tr
task bb=/z/c
{long_rule}
when tier in [ "a","b" ]
  # own line inside
  use fast
set circuit.failures = 5   budget daily $5 per user
test "n" {   # header
  expect "p" with tier="pro", x=3 -> fast by rule 2 fallback fast # e1

  # before second
 expect "q" -> no route }  # after
otherwise use fast
# end comment
""".replace(
    "{long_rule}",
    'when (tier == "x" or not b) and task ~ /q/ prefer capability( CODING ) then cheapest '
    'where price <= $5/1M and supports tools fallback fast, "alpha-mini" # t',
)

EXPECTED = """# leading comment

catalog "models.yaml"  # trailing on catalog
model fast         = "gamma-flash"
model verylongname = "alpha-mini"  # alias
# inside
task a  = "x", /y/  # tr
task bb = /z/c
when (tier == "x" or not b) and task ~ /q/
    prefer capability(CODING) then cheapest
    where price <= $5/1M and supports tools
    fallback fast, "alpha-mini"  # t
# own line inside
when tier in ["a", "b"] use fast
set circuit.failures = 5
budget daily $5 per user
test "n" {  # header
  expect "p" with tier="pro", x=3 -> fast by rule 2 fallback fast  # e1

  # before second
  expect "q" -> no route
}  # after
otherwise use fast
# end comment
"""


def test_canonical_layout_keeps_every_comment() -> None:
    out = format_source(MESSY)
    assert out == EXPECTED
    for comment in (
        "# leading comment",
        "# trailing on catalog",
        "# alias",
        "# inside",
        "# tr",
        "# t",
        "# own line inside",
        "# header",
        "# e1",
        "# before second",
        "# after",
        "# end comment",
    ):
        assert out.count(comment + "\n") + out.count(comment + " ") >= 1, comment


def test_idempotent_on_examples() -> None:
    for text in (MESSY, EXPECTED, *(p.read_text() for p in (REPO / "policies").glob("*.route"))):
        once = format_source(text)
        assert format_source(once) == once


def test_long_rules_wrap_by_clause_then_condition() -> None:
    long_cond = " or ".join(f'tier == "plan-number-{i}"' for i in range(6))
    src = (
        f"when {long_cond} prefer capability(CODING) then cheapest where latency <= 2s and price <= $5/1M "
        "and context >= 100k fallback alpha-mini, beta-chat, gamma-flash\n"
    )
    out = format_source(src)
    lines = out.splitlines()
    assert lines[0].startswith('when tier == "plan-number-0"')
    assert all(line.startswith("    or ") for line in lines[1:6])
    assert any(line.startswith("    prefer ") for line in lines)
    assert all(len(line) <= WIDTH for line in lines), out
    assert format_source(out) == out


def test_task_patterns_fill_under_the_first() -> None:
    pats = ", ".join(f'"phrase number {i}"' for i in range(12))
    out = format_source(f"task t = {pats}\n")
    first, *rest = out.splitlines()
    assert first.startswith('task t = "phrase number 0",')
    assert rest and all(line.startswith(" " * len("task t = ") + '"') for line in rest)
    assert all(len(line) <= WIDTH for line in out.splitlines())


def test_empty_and_comment_only_files() -> None:
    assert format_source("") == ""
    assert format_source("\n\n  # just a note   \n\n") == "# just a note\n"


# ---- property: generated policies -------------------------------------------------------------------------

PATTERNS = ["/implement/", "/a\\/b/i", '"key points"']
MODELS = ["alpha-large", "alpha-mini", "beta-coder", "beta-chat", "gamma-long", "gamma-flash", "delta-tiny"]
CAPS = ["REASONING", "CODING", "CREATIVITY"]
ws = st.sampled_from([" ", "  ", "\n  ", "\t", " \n\n "])
comment = st.sampled_from(["# note", "#tight", "# a # b", '# when use "x"'])


def _sp(draw) -> str:
    """Whitespace between tokens, sometimes with a trailing comment before the line break."""
    gap = draw(ws)
    if "\n" in gap and draw(st.booleans()):
        return " " + draw(comment) + gap
    return gap


@st.composite
def conditions(draw, depth: int = 0) -> str:
    atoms = [
        lambda: f"tokens {draw(st.sampled_from(['>', '<=', '==']))} {draw(st.sampled_from(['30k', '1M', '500']))}",
        lambda: f'tier == "{draw(st.sampled_from(["free", "pro", "a b"]))}"',
        lambda: 'tier in ["pro", "enterprise"]',
        lambda: f"task is {draw(st.sampled_from(['code', 'summary']))}",
        lambda: "task ~ " + draw(st.sampled_from(PATTERNS)),
        lambda: draw(st.sampled_from(["tools", "user.plan", "images"])),
    ]
    if depth < 2 and draw(st.integers(0, 3)) == 0:
        op = draw(st.sampled_from(["and", "or"]))
        parts = draw(st.lists(conditions(depth + 1), min_size=2, max_size=3))
        inner = f"{_sp(draw)}{op}{_sp(draw)}".join(parts)
        return f"({inner})" if draw(st.booleans()) else inner
    text = draw(st.sampled_from(atoms))()
    return f"not {text}" if draw(st.integers(0, 4)) == 0 else text


@st.composite
def actions(draw) -> str:
    kind = draw(st.sampled_from(["use", "prefer", "prefer", "race"]))
    if kind == "use":
        m = draw(st.sampled_from(MODELS))
        sel = f"use{_sp(draw)}{m if draw(st.booleans()) else chr(34) + m + chr(34)}"
    elif kind == "race":
        sel = "race [" + ", ".join(draw(st.lists(st.sampled_from(MODELS), min_size=2, max_size=3, unique=True))) + "]"
    else:
        ranks = draw(
            st.lists(
                st.sampled_from([*(f"capability( {c} )" for c in CAPS), "cheapest", "fastest"]), min_size=1, max_size=3
            )
        )
        sel = "prefer " + f"{_sp(draw)}then{_sp(draw)}".join(ranks)
    where = draw(
        st.lists(
            st.sampled_from(
                [
                    "latency <= 2s",
                    "price <= $5/1M",
                    "context >= 100k",
                    "cost <= $0.05",
                    "capability(CODING) >= 5",
                    "supports tools",
                    'provider in ["acme", "betacorp"]',
                ]
            ),
            max_size=3,
            unique=True,
        )
    )
    if where:
        sel += f"{_sp(draw)}where " + f"{_sp(draw)}and ".join(where)
    fallbacks = draw(st.lists(st.sampled_from(MODELS), max_size=3, unique=True))
    if fallbacks:
        sel += f"{_sp(draw)}fallback " + ",".join(fallbacks)
    cache = draw(st.sampled_from([None, None, "10m", "90s", "off"]))
    if cache is not None:
        sel += f"{_sp(draw)}cache{_sp(draw)}{cache}"
    return sel


@st.composite
def policies(draw) -> str:
    out = []
    if draw(st.booleans()):
        out.append(draw(comment) + "\n")
    out.append('task code = /implement/, "debug"' + draw(st.sampled_from(["\n", " # tasks\n", "\n\n"])))
    out.append(f'task summary{draw(ws)}={draw(ws)}"summarize",{_sp(draw)}/tl;dr/\n')
    if draw(st.booleans()):
        out.append('model fast = "gamma-flash"\n')
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.integers(0, 3)) == 0:
            out.append(draw(comment) + "\n" + draw(st.sampled_from(["", "\n"])))
        end = draw(st.sampled_from(["\n", " # r\n", "\n\n"]))
        out.append(f"when{_sp(draw)}{draw(conditions())}{_sp(draw)}{draw(actions())}{end}")
    if draw(st.booleans()):
        model = draw(st.sampled_from(MODELS))
        out.append(f'test "t" {{ expect "implement it" with tier="pro" -> {model}{_sp(draw)}}}\n')
    out.append(f"otherwise{_sp(draw)}{draw(actions())}\n")
    if draw(st.booleans()):
        out.append(draw(comment))
    return "".join(out)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies())
def test_property_idempotent_and_same_meaning(fixture_catalog, text: str) -> None:
    once = format_source(text)
    assert format_source(once) == once, "fmt is not idempotent"
    assert layout(once) == once
    assert compare_modules(parse(text), parse(once)) is None
    assert rule_texts(parse(text)) == rule_texts(parse(once))
    # every comment survives, in order
    assert [c for c in _comments(text)] == [c for c in _comments(once)]
    # the compiled decision structure is the same
    before, after = compile_source(text, catalog=fixture_catalog), compile_source(once, catalog=fixture_catalog)
    assert _compiled_view(before) == _compiled_view(after)
    assert all(
        len(line) <= WIDTH
        for line in once.splitlines()
        if "where" not in line
        and "fallback" not in line
        and not line.startswith(("when", "    or", "    and", "test", "  expect", "#"))
    )


def _comments(text: str) -> list[str]:
    from engine.language.fmt import parse_with_comments

    return [str(c).rstrip() for c in parse_with_comments(text)[1]]


# ---- the command --------------------------------------------------------------------------------------------


def test_cli_check_diff_write(cli, tmp_path: Path) -> None:
    pol = tmp_path / "p"
    pol.mkdir()
    messy, clean = pol / "main.route", pol / "clean.route"
    messy.write_text("otherwise   use  alpha-mini # x\n")
    clean.write_text("otherwise use alpha-mini\n")
    r = cli("fmt", "--check", "p")
    assert r.returncode == 1 and "would reformat p/main.route" in r.stdout and "Traceback" not in r.stderr
    r = cli("fmt", "--diff", "p/main.route")
    assert r.returncode == 0 and "-otherwise   use  alpha-mini # x" in r.stdout
    assert "+otherwise use alpha-mini  # x" in r.stdout
    assert messy.read_text() == "otherwise   use  alpha-mini # x\n"  # --diff writes nothing
    r = cli("fmt", "p")
    assert r.returncode == 0 and "formatted p/main.route" in r.stdout
    assert messy.read_text() == "otherwise use alpha-mini  # x\n"
    assert cli("fmt", "--check", "p").returncode == 0


def test_cli_never_rewrites_a_file_that_does_not_parse(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.route"
    bad.write_text("when tier = 'x' use   a\n")
    r = cli("fmt", "bad.route")
    assert r.returncode == 1
    assert "error[E" in r.stderr and "left unchanged" in r.stderr and "Traceback" not in r.stderr + r.stdout
    assert bad.read_text() == "when tier = 'x' use   a\n"


def test_cli_stdin_and_usage_errors(cli) -> None:
    r = cli("fmt", "-", input="otherwise   use x\n")
    assert r.returncode == 0 and r.stdout == "otherwise use x\n"
    r = cli("fmt", "missing.route")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = cli("fmt", "--help")
    assert r.returncode == 0 and "Examples" in r.stdout


@pytest.mark.parametrize(
    "src",
    [
        "when a use b fallback c, d # x\n",
        'model m = "x"\nmodel mm = y\n',
        "when a use b fallback c  cache   10m # x\notherwise prefer cheapest where latency<2s\n  cache off\n",
    ],
)
def test_small_cases_round_trip(src: str) -> None:
    out = format_source(src)
    assert format_source(out) == out
    assert compare_modules(parse(src), parse(out)) is None


def test_cache_clause_is_spaced_and_wraps_with_its_action() -> None:
    assert format_source("when a use b  cache\n 10m  # ttl\n") == "when a use b cache 10m  # ttl\n"
    long_cond = " or ".join(f'tier == "plan-number-{i}"' for i in range(3))
    out = format_source(f"when {long_cond} prefer cheapest where latency <= 2s fallback alpha-mini cache off\n")
    assert out.splitlines()[-1] == "    prefer cheapest where latency <= 2s fallback alpha-mini cache off", out
    assert format_source(out) == out
