"""Differential test: for generated valid policies and requests, the compiled engine and the simple
reference interpreter in tests/reference.py agree on every decision: the model, the deciding rule's line, the
fallbacks, and NoRouteError (engine) vs None (reference).

Bounded by default (200 policies, several requests each); `MODELROUTE_FUZZ=long` runs 5,000 policies.
The catalog is tests/fixtures/hardening/catalog.yaml: 6 invented models with ties (two models with equal
prices), tiny context windows (40 and 100 tokens, so short prompts already hit the context constraint) and a
model with no CODING score.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference_decide

from engine import Engine, NoRouteError
from engine.language.load import load_source
from providers.catalog.loader import load_catalog

HERE = Path(__file__).resolve().parent
HARDENING = HERE / "fixtures" / "hardening"
CATALOG_PATH = HARDENING / "catalog.yaml"
LONG = os.environ.get("MODELROUTE_FUZZ") == "long"

# ---- vocabulary --------------------------------------------------------------------------------------------

REGEXES = [
    "/alpha/",
    "/be+ta/",
    "/^gamma/m",
    "/delta$/",
    "/ALPHA/c",
    "/al.ha/s",
    "/al.ha/",
    "/(alpha|beta) gamma/",
    r"/\bcode\b/",
    "/x{2,3}/",
    "/^beta/",
    "/points$/m",
    "/key\\s+points/",
    "/[0-9]+/",
    "/g.*a/",
    "/Gamma/ci",
]
PHRASES = ['"alpha"', '"key points"', '"beta gamma"', '"tl;dr"', '"code"', '"x"', '"Delta"', '"points"']
PATTERNS = REGEXES + PHRASES
PROMPT_WORDS = [
    "alpha",
    "ALPHA",
    "Alpha",
    "beta",
    "beeta",
    "gamma",
    "Gamma",
    "delta",
    "code",
    "codes",
    "key",
    "points",
    "Key  Points",
    "tl;dr",
    "TL;DR",
    "xx",
    "xxx",
    "x",
    "al\nha",
    "alpha\n",
    "keypoints",
    "betagamma",
    "42",
    "the",
    "please",
    "summary",
    "-",
]
SEPARATORS = [" ", " ", "  ", "\n", "\t", ", ", "", "\r\n"]
MODELS = [
    "alpha-small",
    "beta-mid",
    "gamma-pro",
    "delta-cheap",
    "epsilon-long",
    "zeta-fast",
    "alpha",
    "gamma",
    "fast",
]  # catalog names, catalog aliases and the policy alias `fast`
RANKINGS = [
    "capability(REASONING)",
    "capability(CODING)",
    "capability(CREATIVITY)",
    "cheapest",
    "fastest",
    "healthiest",
    # linear scores: capability points, cost (per request), price, latency, context, tokens, request attributes
    "score(capability(REASONING))",
    "score(3 * capability(REASONING) + 2 * capability(CODING) - 100 * cost)",
    "score(-1 * cost)",
    "score(capability(CREATIVITY) - 0.001 * latency)",
    "score(0.5 * capability(CODING) - price + 0.000001 * context)",
    "score(capability(CODING) - 1000 * cost + n + 2 * tokens)",
    "score(score * 2 - latency * 0.01)",
]
#: Python: rankers (prefer custom(NAME)) and function terms (the FUNCTIONS and RANKERS below); only policies made
#: with `python=True` use them (other tests compile the generated policies without functions)
PY_RANKINGS = [
    "custom(cheap)",
    "custom(fit)",
    "custom(flaky)",
    "score(capability(CODING) + wordy())",
    "score(capability(REASONING) - 2 * flaky())",
]
#: `prefer ... among [...]`: only the listed models (names, aliases, repeats)
AMONG = [
    "[alpha-small, beta-mid]",
    "[gamma, delta-cheap, fast]",
    "[epsilon-long]",
    "[beta-mid, beta-mid, zeta-fast, alpha]",
    '["gamma-pro", epsilon-long, delta-cheap]',
]
CONSTRAINTS = [
    "latency <= 1s",
    "latency < 800ms",
    "latency > 500ms",
    "latency >= 2s",
    "price <= $1/1M",
    "price < $2/1M",
    "price >= $0.5/1M",
    "price == $0.1/1M",
    "cost <= $0.001",
    "cost < $0.0005",
    "cost > $0.0003",
    "context >= 10k",
    "context > 100",
    "context <= 8k",
    "capability(CODING) >= 6",
    "capability(CREATIVITY) > 5",
    "capability(REASONING) == 6",
    "capability(CODING) < 7",
    "provider in [acme, globex]",
    "provider in [initech]",
    "supports tools",
    "supports vision",
    "supports json",
    # limits the request sets: a bare name on the right is a request attribute, read in the metric's unit
    "latency <= max_latency",
    "latency > max_latency",
    "cost <= max_cost",
    "price < max_price",
    "price == max_price",
    "context >= min_context",
    "capability(CODING) >= min_coding",
    "capability(REASONING) < n",
]
ATTR_ATOMS = [
    'tier == "free"',
    'tier == "pro"',
    'tier != "pro"',
    'tier in ["pro", "enterprise"]',
    "tier",
    'tier == ""',
    "tools",
    "tools == true",
    "tools != false",
    "images",
    "n > 3",
    "n <= 2",
    "n == 5",
    "n in [1, 2, 3]",
    'n == "5"',
    "tier > 5",
    "n >= 1k",
    "tokens > 20",
    "tokens <= 50",
    "tokens >= 100",
    "tokens in [1, 2, 3]",
    "tokens",
    'user.plan == "pro"',
    "user.plan",
    "max_tokens > 1000",
    # thresholds of every kind on tokens and attributes (the index sorts them), negated forms via `not`
    "score >= 3",
    "score < 7.5",
    "score > 2",
    "score <= 3",
    "tokens < 30",
    "tokens > 100",
    "tokens != 50",
    "tokens == 25",
    "n != 3",
    'tier != "free"',
    'tier > "m"',
    'tier <= "free"',
    'user.plan in ["pro", "team"]',
    'user.plan != "free"',
    "user.n > 2",
    "user.n <= 1",
    "max_tokens <= 800",
    "max_tokens >= 2000",
]


# ---- Python functions and rankers: deterministic, so the engine (one call per request) and the reference (a call
# on every read) agree; `flaky` raises on some requests and returns text on others, `flaky` the ranker raises for
# some models


def _flaky(request: Any) -> Any:
    if request.tokens % 3 == 0:
        raise ValueError("every third token count")
    return "text" if request.tokens % 7 == 1 else request.tokens % 5


def _flaky_rank(request: Any, model: Any) -> float:
    if len(request.text) % 2 and model.name.startswith("g"):
        raise RuntimeError("odd prompt")
    return float(len(model.name) % 3)


FUNCTIONS = {
    "wordy": lambda r: len(r.text.split()),
    "even": lambda r: r.tokens % 2 == 0,
    "flaky": _flaky,
    "tiered": lambda r: r.attrs.get("tier") == "pro",
}
RANKERS = {
    "cheap": lambda r, m: -m.input_price * 1e6,
    "fit": lambda r, m: float(m.context > r.tokens * 10) + (m.capability("CODING") or 0) / 10,
    "flaky": _flaky_rank,
}
PY_ATOMS = [
    "wordy() > 3",
    "wordy() == 0",
    "even()",
    "not even()",
    "flaky() >= 2",
    "flaky() in [1, 2]",
    "flaky()",
    "tiered() and n > 1",
]


def _counts_wired() -> bool:
    """Whether decide() derives the request counts (messages, turns, words) a policy reads (engine/api.py builds
    the Request): the generated conditions use them once it does."""
    engine = Engine.from_source(
        "when words == 2 use beta-mid\n", file="probe.route", catalog=load_catalog(CATALOG_PATH)
    )
    try:
        return engine.decide("two words").model == "beta-mid"
    except NoRouteError:
        return False


if _counts_wired():
    ATTR_ATOMS += ["words > 3", "words <= 10", "words == 0", "messages == 1", "turns >= 2", "not turns", "words"]


def _compound(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    def wrap(c: str) -> str:
        return f"({c})" if (" and " in c or " or " in c) else c

    return st.one_of(
        st.lists(children, min_size=2, max_size=3).map(lambda cs: " and ".join(wrap(c) for c in cs)),
        st.lists(children, min_size=2, max_size=3).map(lambda cs: " or ".join(wrap(c) for c in cs)),
        children.map(lambda c: f"not {wrap(c) if c.startswith('not') else '(' + c + ')'}"),
        children.map(lambda c: f"({c})"),
    )


def conditions(task_names: list[str], python: bool = False) -> st.SearchStrategy[str]:
    """Conditions over the attributes, patterns and tasks; with `python`, calls of FUNCTIONS too."""
    attr_atoms = ATTR_ATOMS + PY_ATOMS if python else ATTR_ATOMS
    atoms = [st.sampled_from(attr_atoms), st.sampled_from(PATTERNS).map(lambda p: f"task ~ {p}")]
    if task_names:
        atoms.append(st.sampled_from(task_names).map(lambda t: f"task is {t}"))
    return st.recursive(st.one_of(*atoms), _compound, max_leaves=5)


@st.composite
def actions(draw: st.DrawFn, python: bool = False) -> str:
    if draw(st.booleans()):
        text = f"use {draw(st.sampled_from(MODELS))}"
    else:
        ranks = draw(st.lists(st.sampled_from(RANKINGS + PY_RANKINGS if python else RANKINGS), min_size=1, max_size=3))
        text = "prefer " + " then ".join(ranks)
        if draw(st.integers(0, 3)) == 0:
            text += " among " + draw(st.sampled_from(AMONG))
    where = draw(st.lists(st.sampled_from(CONSTRAINTS), max_size=3))
    if where:
        text += " where " + " and ".join(where)
    fallbacks = draw(st.lists(st.sampled_from(MODELS), max_size=3))
    if fallbacks:
        text += " fallback " + ", ".join(fallbacks)
    return text + draw(st.sampled_from(["", "", "", " cache 10m", " cache off"]))  # caching: no effect on the route


@st.composite
def policy_sources(draw: st.DrawFn, python: bool = False) -> str:
    """A valid policy over the hardening catalog: tasks, an alias, 1-8 rules, maybe `otherwise`; with `python`,
    calls of FUNCTIONS and RANKERS too."""
    lines = ["# generated", 'model fast = "zeta-fast"']
    if draw(st.integers(0, 3)) == 0:
        lines.append(f"set failover.depth = {draw(st.integers(0, 4))}")
    ntasks = draw(st.integers(0, 3))
    names = [f"t{i}" for i in range(ntasks)]
    for name in names:
        pats = draw(st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3))
        lines.append(f"task {name} = " + ", ".join(pats))
    for _ in range(draw(st.integers(1, 8))):
        rule = f"when {draw(conditions(names, python))} {draw(actions(python))}"
        if draw(st.integers(0, 9)) == 0:  # now and then a rule spread over lines
            rule = rule.replace(" prefer ", "\n    prefer ").replace(" use ", "\n    use ")
        lines.append(rule)
    if draw(st.booleans()):
        lines.append(f"otherwise {draw(actions(python))}")
    return "\n".join(lines) + "\n"


prompts = st.builds(
    lambda words, seps, pad: "".join(w + s for w, s in zip(words, seps, strict=False)) + pad,
    st.lists(st.sampled_from(PROMPT_WORDS), max_size=12),
    st.lists(st.sampled_from(SEPARATORS), min_size=12, max_size=12),
    st.sampled_from(["", "", "p" * 90, "lorem ipsum " * 20, "z" * 398, "y" * 401, "w" * 4000]),
)

_UNSET = object()
attr_dicts = st.fixed_dictionaries(
    {
        "tier": st.sampled_from([_UNSET, "free", "pro", "enterprise", "", 5]),
        "tools": st.sampled_from([_UNSET, True, False]),
        "images": st.sampled_from([_UNSET, True, False]),
        "n": st.sampled_from([_UNSET, 0, 1, 2, 3, 5, 7, 1000, "5", 2.5, math.nan]),
        "max_tokens": st.sampled_from([_UNSET, 1, 800, 2000]),
        "user": st.sampled_from(
            [_UNSET, {"plan": "pro"}, {"plan": "free"}, {}, {"plan": "team", "n": 3}, {"n": 1}, {"n": "x"}]
        ),
        "score": st.sampled_from([_UNSET, 0, 3, 7.5, 10, "3", math.nan, True]),
        "max_latency": st.sampled_from([_UNSET, 500, 800, "1s", "1.5s", "0.01m", "2000", "fast", True, None]),
        "max_cost": st.sampled_from([_UNSET, 0.0001, 0.001, "$0.0005", "$1", "0.00003", "cheap", -1]),
        "max_price": st.sampled_from([_UNSET, 0.1, 1, "$1/1M", "$0.0005/1k", "$2/M", "2", [1], math.inf]),
        "min_context": st.sampled_from([_UNSET, 100, "8k", "1M", "16000", "big", 40.0]),
        "min_coding": st.sampled_from([_UNSET, 6, 7, "7", 9.5, "high", False]),
    }
).map(lambda d: {k: v for k, v in d.items() if v is not _UNSET})


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(CATALOG_PATH)


def engine_result(engine: Engine, prompt: str, attrs: dict) -> tuple[str, int, list[str], list[str]] | None:
    try:
        d = engine.decide(prompt, **attrs)
    except NoRouteError:
        return None
    return d.model, d.rule.line, list(d.fallbacks), d.chain


def check_agree(text: str, catalog, requests: list[tuple[str, dict]]) -> None:
    engine = Engine.from_source(text, file="generated.route", catalog=catalog, functions=FUNCTIONS, rankers=RANKERS)
    body = load_source(text, "generated.route").body
    for prompt, attrs in requests:
        want = reference_decide(body, catalog, prompt, attrs, FUNCTIONS, RANKERS)
        got = engine_result(engine, prompt, attrs)
        assert got == want, f"engine {got} != reference {want}\npolicy:\n{text}\nprompt={prompt!r}\nattrs={attrs}"
        if got is not None:  # the traced evaluation (explain) must name the same model, rule and plan
            report = engine.decide(prompt, **attrs).report()
            assert report.rule is not None
            assert (report.model, report.rule.line) == got[:2]
            assert [step.model for step in report.plan] == got[3]


@settings(
    max_examples=5000 if LONG else 200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(text=policy_sources(python=True), requests=st.lists(st.tuples(prompts, attr_dicts), min_size=1, max_size=6))
def test_engine_agrees_with_reference(catalog, text, requests):
    check_agree(text, catalog, requests)


# ---- a few fixed cases that pin the reference itself to the README -------------------------------------------

FIXED = [
    # (policy, prompt, attrs, expected (model, line, fallbacks, plan) or None)
    ('when task ~ "key points" use beta-mid\n', "the Key \n Points are", {}, ("beta-mid", 1, [], ["beta-mid"])),
    ('when task ~ "key points" use beta-mid\n', "keypoints", {}, None),
    (
        'when not tier == "free" use beta-mid\n',
        "hi",
        {},
        ("beta-mid", 1, [], ["beta-mid"]),
    ),  # missing: comparison false
    ("when tier > 5 use beta-mid\notherwise use gamma\n", "hi", {"tier": "pro"}, ("gamma-pro", 2, [], ["gamma-pro"])),
    (
        "when tokens > 20 prefer cheapest\n",
        "q" * 200,
        {},
        ("delta-cheap", 1, [], ["delta-cheap", "epsilon-long", "beta-mid"]),
    ),  # 50 tokens: alpha too small
    (
        "when tokens > 20 prefer cheapest then fastest\n",
        "q" * 100,
        {},
        ("alpha-small", 1, [], ["alpha-small", "delta-cheap", "epsilon-long"]),
    ),  # tie -> faster
    (
        "otherwise prefer capability(CODING) where supports vision fallback alpha, delta-cheap, gamma\n",
        "hi",
        {"images": True},
        ("gamma-pro", 1, ["delta-cheap"], ["gamma-pro", "zeta-fast", "delta-cheap"]),  # a ranked model is once
    ),
    (  # failover.depth 0: the chosen model, then only the listed fallbacks
        "set failover.depth = 0\nwhen tokens > 20 prefer cheapest fallback gamma\n",
        "q" * 200,
        {},
        ("delta-cheap", 2, ["gamma-pro"], ["delta-cheap", "gamma-pro"]),
    ),
    (  # the request rules beta-mid out (images): the first fallback that can serve it stands in
        "otherwise use beta-mid fallback alpha, delta-cheap, gamma\n",
        "hi",
        {"images": True},
        ("delta-cheap", 1, ["gamma-pro"], ["delta-cheap", "gamma-pro"]),
    ),
    # the rule's `where` leaves no model at all: no fallback stands in
    ("otherwise use beta-mid where supports vision fallback gamma\n", "hi", {"images": True}, None),
    ("otherwise use alpha-small\n", "q" * 200, {}, None),  # hard constraint: context 40 < 50 tokens
    ("when task ~ /delta$/ use beta-mid\n", "delta\n", {}, None),  # RE2 `$` without m: end of text only
    ("when task ~ /ALPHA/c use beta-mid\n", "alpha", {}, None),
    # Python: a function's value in a condition; a failing call makes its condition false; a ranker, higher first
    ("when wordy() > 2 use beta-mid\notherwise use gamma\n", "a b c", {}, ("beta-mid", 1, [], ["beta-mid"])),
    ("when flaky() or not flaky() use beta-mid\n", "abcdefghijkl", {}, ("beta-mid", 1, [], ["beta-mid"])),
    (
        "otherwise prefer custom(cheap) among [gamma-pro, delta-cheap, beta-mid]\n",
        "hi",
        {},
        ("delta-cheap", 1, [], ["delta-cheap", "beta-mid", "gamma-pro"]),
    ),
]


@pytest.mark.parametrize(("text", "prompt", "attrs", "expected"), FIXED)
def test_fixed_cases(catalog, text, prompt, attrs, expected):
    body = load_source(text, "fixed.route").body
    assert reference_decide(body, catalog, prompt, attrs, FUNCTIONS, RANKERS) == expected
    engine = Engine.from_source(text, file="fixed.route", catalog=catalog, functions=FUNCTIONS, rankers=RANKERS)
    assert engine_result(engine, prompt, attrs) == expected
