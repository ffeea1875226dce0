"""The rule index (engine/runtime/index.py, guards from engine/compiler/guards.py) never leaves out a rule whose
condition holds: for generated policies of many rules and generated requests, every rule whose condition is true
is among the index's candidates. Also: the threshold streams against brute force, and which guard each
condition shape gets."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_differential import CATALOG_PATH, LONG, attr_dicts, conditions, policy_sources, prompts

from engine import Engine
from engine.compiler import codegen
from engine.compiler.guards import both
from engine.language import nodes as n
from engine.language.load import load_source
from engine.runtime.index import (
    BIG,
    BUILTIN,
    Eq,
    Missing,
    NoPattern,
    NotIn,
    PatternHit,
    Range,
    RangeFamily,
    Truthy,
)
from engine.runtime.policy import MISSING
from engine.runtime.traced import cond_value as _cond_value
from providers.catalog.loader import load_catalog

CATALOG = load_catalog(CATALOG_PATH)


def drain(stream, start: int = -1) -> list[int]:
    """Every rule index a stream gives, in order."""
    if type(stream) is tuple:
        return [r for r in stream if r > start]
    out, i = [], start
    while (i := stream.after(i)) != BIG:
        out.append(i)
    return out


def candidates(engine: Engine, prompt: str, attrs: dict) -> set[int]:
    """Every rule the index names for this request (after the scan, as if every rule were reached)."""
    policy = engine.policy
    req = engine.request(prompt, **attrs)
    streams: list = []
    heads: list[int] = []
    policy.index.start(req.attrs, req.tokens, streams, heads)
    if policy.matcher is not None:
        policy.index.scanned(policy.matcher.hits(req.text), streams, heads)
    assert heads == [s[0] if type(s) is tuple else s.after(-1) for s in streams]
    return {r for s in streams for r in drain(s)}


def holds(engine: Engine, prompt: str, attrs: dict) -> set[int]:
    """The rules whose condition holds, each evaluated in full by the traced evaluator."""
    policy = engine.policy
    req = engine.request(prompt, **attrs)
    matched = policy.matcher.scan(req.text) if policy.matcher else 0
    return {
        r.index
        for r in policy.rules
        if _cond_value(r, r.node.cond, matched, req.tokens, req.attrs, None, 0, policy, req.text)
    }


class Loose:
    """Equal to a string, but hashed otherwise: a dict lookup of the string would miss it."""

    def __init__(self, text: str):
        self.text = text

    def __eq__(self, other: object) -> bool:
        return self.text == other

    def __ne__(self, other: object) -> bool:
        return self.text != other

    def __hash__(self) -> int:
        return 7

    def __repr__(self) -> str:
        return f"Loose({self.text!r})"


extra_attrs = st.tuples(
    attr_dicts, st.sampled_from([None, Loose("pro"), Loose("free")]), st.sampled_from([None, math.nan, 2.5])
).map(lambda t: {**t[0], **({"tier": t[1]} if t[1] is not None else {}), **({"n": t[2]} if t[2] is not None else {})})


@st.composite
def many_rules(draw: st.DrawFn) -> str:
    lines = ['model fast = "zeta-fast"', 'task t0 = "alpha", /be+ta/', 'task t1 = "code"']
    for _ in range(draw(st.integers(5, 30))):
        lines.append(f"when {draw(conditions(['t0', 't1']))} use beta-mid")
    return "\n".join(lines) + "\n"


@settings(
    max_examples=2000 if LONG else 150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(text=many_rules(), requests=st.lists(st.tuples(prompts, extra_attrs), min_size=1, max_size=5))
def test_every_rule_that_holds_is_a_candidate(text: str, requests) -> None:
    engine = Engine.from_source(text, file="many.route", catalog=CATALOG)
    for prompt, attrs in requests:
        missed = holds(engine, prompt, attrs) - candidates(engine, prompt, attrs)
        assert not missed, f"rules {sorted(missed)} hold but the index left them out\n{text}\n{prompt!r} {attrs}"


# ---- thresholds against brute force ----------------------------------------------------------------------

OPS = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


def fires(op: str, holds_: bool, threshold, v) -> bool:
    if v is MISSING:
        true = False
    else:
        try:
            true = OPS[op](v, threshold)
        except TypeError:
            true = False
    return true if holds_ else not true


@pytest.mark.parametrize("seed", range(40))
def test_threshold_streams_match_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    strings = seed % 4 == 3
    pool = ["a", "b", "bb", "c", "q"] if strings else [0, 1, 1.5, 2, 3, 3, 7, 10, True]
    values = [*pool, MISSING, "zz", 2.5, -1, 11, math.nan, None, (1,)]
    for _ in range(20):
        op, holds_ = rng.choice(list(OPS)), rng.random() < 0.5
        entries = [(rng.randrange(60), rng.choice(pool)) for _ in range(rng.randint(1, 40))]
        fam = RangeFamily(op, holds_, list(entries))
        for v in values:
            want = sorted({r for r, t in entries if fires(op, holds_, t, v)})
            s = fam.stream(v)
            got = [] if s is None else drain(s)
            comparable = type(v) is str if strings else type(v) in (int, float, bool)
            if v is MISSING or comparable:  # exact (NaN included); other values may fire more than they need
                assert sorted(set(got)) == want, (op, holds_, entries, v)
            else:
                assert set(want) <= set(got), (op, holds_, entries, v)
            assert got == sorted(got)
            for start in range(-1, 61, 7):  # resuming anywhere gives the rest in order
                if s is not None:
                    assert drain(s, start) == [r for r in got if r > start]


# ---- the guard of each condition shape ---------------------------------------------------------------------

SPAN = n.Span("f", 1, 1, 1, 1)


def cond(text: str) -> n.Cond:
    body = load_source(f'task t = "x", /y/\nwhen {text} use beta-mid\n', "g.route").body
    rule = next(s for s in body if isinstance(s, n.Rule))
    assert rule.cond is not None
    return rule.cond


class _Gen:
    def __init__(self, c: n.Cond):
        self.task_masks = {"t": 0b110}
        self.pattern_of = {id(x.pattern): 0 for x in n.walk_cond(c) if isinstance(x, n.TaskMatch)}


def keys(text: str):
    c = cond(text)
    g = codegen.guard(c, _Gen(c))
    return None if g is None else g.keys


def test_guards_of_every_shape() -> None:
    assert keys('task ~ "kw"') == {PatternHit(0)}
    assert keys("task is t") == {PatternHit(1), PatternHit(2)}
    assert keys('tier == "x"') == {Eq("tier", "x")}
    assert keys('tier in ["a", "b"]') == {Eq("tier", "a"), Eq("tier", "b")}
    assert keys('user.plan == "p"') == {Eq("user.plan", "p")}
    assert keys("tokens > 30k") == {Range(BUILTIN, ">", 30_000.0, True)}
    assert keys("max_tokens < 100") == {Range("max_tokens", "<", 100.0, True)}
    assert keys("tokens") == {Range(BUILTIN, ">", 0, True)}
    assert keys("tools") == {Truthy("tools", True)}
    assert keys("not tools") == {Truthy("tools", False)}
    assert keys('tier != "free"') == {NotIn("tier", frozenset({"free"}))}
    assert keys('not tier != "free"') == {Eq("tier", "free"), Missing("tier")}
    assert keys('not tier == "free"') == {NotIn("tier", frozenset({"free"}))}
    assert keys("not tokens > 10") == {Range(BUILTIN, ">", 10.0, False)}
    assert keys('not task ~ "kw"') == {NoPattern(frozenset({0}))}
    # `or` across kinds and attributes: a union; `and`: the most selective operand
    assert keys('task ~ "kw" or tokens > 5') == {PatternHit(0), Range(BUILTIN, ">", 5.0, True)}
    assert keys('tier == "v" or user.plan == "p"') == {Eq("tier", "v"), Eq("user.plan", "p")}
    assert keys('not task ~ "kw" and tokens > 5') == {Range(BUILTIN, ">", 5.0, True)}
    assert keys('tier == "a" and task ~ "kw"') == {PatternHit(0)}
    assert keys('(u.plan in ["a", "b"] and rg == 3) or (o.t == "t" and task ~ "kw")') == {
        Eq("rg", 3.0),
        PatternHit(0),
    }
    # De Morgan: not (a and b) = not a or not b
    assert keys('not (tier == "a" and tokens > 5)') == {
        NotIn("tier", frozenset({"a"})),
        Range(BUILTIN, ">", 5.0, False),
    }
    assert keys('tier == "a" or not tools') == {Eq("tier", "a"), Truthy("tools", False)}


def test_pos_and_neg_guards_swap_under_not() -> None:
    c = cond('tier == "a"')
    pos, neg = both(c, _Gen(c))
    c2 = cond('not tier == "a"')
    assert both(c2, _Gen(c2)) == (neg, pos)


# ---- the two walks: bitmasks for small policies, streams for the rest ----------------------------------------


@settings(
    max_examples=1000 if LONG else 150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(text=policy_sources(), requests=st.lists(st.tuples(prompts, extra_attrs), min_size=1, max_size=5))
def test_small_policy_walk_agrees_with_the_streams(text: str, requests) -> None:
    from engine.runtime import evaluate

    engine = Engine.from_source(text, file="small.route", catalog=CATALOG)
    for prompt, attrs in requests:
        req = engine.request(prompt, **attrs)
        a, b = evaluate.decide(engine.policy, req), evaluate._decide_streams(engine.policy, req)
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert (a[0].index, a[1].name, a[2], a[5]) == (b[0].index, b[1].name, b[2], b[5]), text


def test_small_policies_get_bitmasks_and_big_ones_streams() -> None:
    small = Engine.from_source('when tier == "a" or tokens > 5 use beta-mid\notherwise use gamma\n', catalog=CATALOG)
    assert small.policy.index.small is not None
    big = Engine.from_source("".join(f'when tier == "t{i}" use beta-mid\n' for i in range(100)), catalog=CATALOG)
    assert big.policy.index.small is None
    negated = Engine.from_source('when not task ~ "x" use beta-mid\n', catalog=CATALOG)
    assert negated.policy.index.small is None
