"""The routing vocabulary of issue 17, language side: `prefer ... among [...]`, `where` limits read from request
attributes, request counts (messages, turns, words), durations in minutes and hours, `score(...)`, `prefer
healthiest` and `balance weighted`, `split ... as "experiment"`, and `provider:model` names.

The data cases are in tests/cases/vocabulary.yaml and the golden diagnostics in tests/golden/diagnostics; these
tests cover what a case file cannot say: parsing (both parsers), formatting, units, the state store's success
rates, chance, explain text and the request counts.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from engine import Engine, NoRouteError, PolicyError, compile_source
from engine.api import RequestError
from engine.language import nodes as n
from engine.language.fastparse import parse_fast
from engine.language.fmt import format_source
from engine.language.parse import parse
from engine.runtime.messages import request_counts
from engine.runtime.reserved import reserved
from engine.runtime.state import CircuitConfig, MemoryStore, Outcome
from engine.runtime.units import request_value
from providers.catalog.loader import load_catalog

CATALOG = load_catalog(Path(__file__).parent / "fixtures" / "policies" / "catalog.yaml")


def engine(text: str, **kwargs) -> Engine:
    return Engine.from_source(text, file="policy.route", catalog=CATALOG, **kwargs)


def codes(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        compile_source(text, "policy.route", catalog=CATALOG)
    return info.value.codes


# ---- syntax -------------------------------------------------------------------------------------------------


FORMS = [
    "otherwise prefer cheapest among [alpha, beta-coder]",
    'otherwise prefer capability(CODING) then cheapest among [a, "b"] where latency <= max_latency fallback c',
    "otherwise prefer healthiest",
    "otherwise prefer score(3 * capability(REASONING) + 2 * capability(CODING) - 100 * cost)",
    "otherwise prefer score(-1 * cost + turns * 2 - latency) then healthiest among [a, b]",
    "otherwise prefer score(+cost - 2.5k * latency + a-b + user.n * 3 + tokens) where cost <= max_cost",
    'otherwise prefer score(capability(CODING)) then score(-price) among ["gpt-4o"] fallback x',
    "otherwise balance weighted [a, b, c]",
    'otherwise split 50% a, 50% b as "prompt-v2"',
    "when words > 50 and turns >= 3 or messages < 2 use openai:gpt-4o",
    "set health.window = 5m\nset deadline = 1.5h",
]


@pytest.mark.parametrize("text", FORMS)
def test_both_parsers_agree_and_the_formatter_keeps_the_meaning(text: str) -> None:
    source = text + "\n"
    lark = parse(source, "p.route", fast=False)
    fast = parse_fast(source, "p.route")
    assert fast is None or fast == lark.body
    if text.startswith("otherwise prefer"):
        assert fast is not None  # the fast parser reads every prefer form
    out = format_source(source, "p.route")
    assert format_source(out, "p.route") == out


def test_score_terms_and_signs() -> None:
    rule = parse("otherwise prefer score(-2 * cost + capability(CODING) * 3 - turns + latency)\n").body[0]
    assert isinstance(rule, n.Rule)
    terms = [(t.coef, t.factor, t.name) for t in rule.action.rankings[0].terms]
    assert terms == [
        (-2.0, "cost", None),
        (3.0, "capability", "CODING"),
        (-1.0, "attr", "turns"),
        (1.0, "latency", None),
    ]


def test_formatter_writes_score_and_signs_canonically() -> None:
    out = format_source("otherwise prefer score( - 100*cost+3 * capability( CODING ))\n")
    assert out == "otherwise prefer score(-100 * cost + 3 * capability(CODING))\n"


def test_action_words_stay_attribute_names_in_conditions() -> None:
    body = parse("when score >= 3 and healthiest and among use a\n").body
    fast = parse_fast("when score >= 3 and healthiest and among use a\n", "<string>")
    assert fast == body


def test_durations_in_minutes_and_hours() -> None:
    rule = parse("set health.window = 5m\nset deadline = 1.5h\nset timeout = 90s\n").body
    assert [s.value.value for s in rule] == [300.0, 5400.0, 90.0]  # type: ignore[union-attr]
    assert parse("when tokens > 5M use a\n").body[0].cond.right.value == 5e6  # type: ignore[union-attr]


# ---- limits from the request --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "want"),
    [
        ("duration", 800, 0.8),
        ("duration", "2s", 2.0),
        ("duration", "1m", 60.0),
        ("duration", "800", 0.8),
        ("duration", "fast", None),
        ("duration", True, None),
        ("duration", math.nan, None),
        ("money", 0.01, 0.01),
        ("money", "$0.01", 0.01),
        ("money", "2s", None),
        ("price", 3, 3e-6),
        ("price", "$3/1M", 3e-6),
        ("price", "$0.003/1k", 3e-6),
        ("price", "$3/0", None),
        ("count", "200k", 200_000.0),
        ("count", 7, 7.0),
        ("count", [7], None),
    ],
)
def test_request_values_are_read_in_the_metrics_unit(kind: str, value: object, want: float | None) -> None:
    got = request_value(kind, value)
    assert got == pytest.approx(want) if want is not None else got is None


def test_a_limit_that_does_not_apply_is_explained() -> None:
    e = engine("otherwise prefer capability(CODING) where latency <= max_latency\n")
    d = e.decide("hi", max_latency="soon")
    assert d.model == "beta-coder"
    assert "`where latency <= max_latency` does not apply: max_latency is 'soon', not a duration" in d.explain()
    d = e.decide("hi", max_latency=1000)
    assert d.model == "beta-coder" and "does not apply" not in d.explain()
    assert e.decide("hi", max_latency=500).model == "gamma-flash"


def test_a_request_limit_keeps_fallbacks_from_standing_in_when_it_leaves_no_model() -> None:
    e = engine("otherwise use beta-chat where cost <= max_cost fallback gamma-flash\n")
    assert e.decide("hi").model == "beta-chat"
    with pytest.raises(NoRouteError):
        e.decide("hi", max_cost="$0.0000001", tools=True)  # the rule's own limit leaves no model: no stand-in
    d = e.decide("hi", max_cost=1, tools=True)  # the request rules beta-chat out: the fallback stands in
    assert d.chain == ["gamma-flash"]


def test_plan_alternatives_respect_request_limits() -> None:
    e = engine("otherwise prefer capability(REASONING) where latency < max_latency\n")
    assert e.decide("hi", max_latency="1s").chain == ["beta-coder", "alpha-mini", "gamma-flash"]


# ---- request counts -----------------------------------------------------------------------------------------


def test_request_counts() -> None:
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "the second  question"},
    ]
    assert request_counts("the second  question", msgs) == {"messages": 4, "turns": 2, "words": 3}
    assert request_counts("one two") == {"messages": 1, "turns": 1, "words": 2}
    assert request_counts("", None, ["words"]) == {"words": 0}


def test_request_counts_are_reserved_and_read_only_when_the_policy_reads_them() -> None:
    for name in ("messages", "turns", "words"):
        assert reserved(name)
    assert engine("when words > 3 use alpha-mini\notherwise use beta-chat\n").policy.counts == {"words"}
    assert engine("otherwise prefer score(turns - cost) where context >= messages\n").policy.counts == {
        "turns",
        "messages",
    }
    assert engine("otherwise use beta-chat\n").policy.counts == frozenset()


# ---- scores -------------------------------------------------------------------------------------------------


def test_score_static_part_is_computed_at_compile_time() -> None:
    e = engine("otherwise prefer score(3 * capability(REASONING) + 2 * capability(CODING) - 0.001 * latency)\n")
    rank = e.policy.rules[0].selector.rankings[0]
    assert rank.static["alpha-large"] == pytest.approx(3 * 10 + 2 * 9 - 3.0)  # type: ignore[attr-defined]
    assert e.policy.rules[0].selector.ordered  # no request-dependent term: the pool is sorted once


def test_explain_shows_each_models_score_and_terms() -> None:
    d = engine("otherwise prefer score(capability(CODING) - 1000 * cost + bonus)\n").decide("hello", bonus=2)
    text = d.explain()
    assert "ranked by score(capability(CODING) - 1000 * cost + bonus)" in text
    assert "score 10.998 = +10 (1 x CODING 10) -1.002 (-1000 x cost $0.001002) +2 (1 x bonus 2)" in text
    assert "score 6 = +4 (1 x CODING 4) +0 (-1000 x cost $0) +2 (1 x bonus 2)" in text


def test_unknown_score_terms_are_errors() -> None:
    assert codes("otherwise prefer score(capability(CODING) - latncy)\n") == ["E311"]
    assert codes("otherwise prefer score(cheapest)\n") == ["E311"]
    assert codes("otherwise prefer score(capability(CODNG))\n") == ["E302"]


# ---- health -------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_success_rates_over_the_window() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    cfg = CircuitConfig(failures=100)
    store.record("a", "p", "fail", cfg)
    clock.now += 100
    outcomes: tuple[Outcome, ...] = ("ok", "ok", "fail", "ok", "neutral", "cancelled")
    for outcome in outcomes:
        store.record("b", "p", outcome, cfg)
    assert store.success_rates(300) == {"a": 0.0, "b": 0.75}
    clock.now += 250  # a's failure is now 350 s old
    assert store.success_rates(300) == {"b": 0.75}


def test_healthiest_ranks_by_success_then_latency_then_name() -> None:
    e = engine("otherwise prefer healthiest among [alpha-mini, beta-chat, delta-tiny, gamma-flash]\n")
    cfg = CircuitConfig(failures=100)
    assert e.decide("hi").chain == ["delta-tiny", "gamma-flash", "beta-chat"]  # unknown health: by latency
    for outcome in ("ok", "fail"):
        e.state.record("delta-tiny", "deltaio", outcome, cfg)  # type: ignore[attr-defined]
    e.state.record("gamma-flash", "gammalabs", "ok", cfg)  # type: ignore[attr-defined]
    d = e.decide("hi")
    assert d.chain == ["gamma-flash", "beta-chat", "alpha-mini"]
    assert "success 50.0% in 5m" in d.explain()


class NoHealthStore(MemoryStore):
    """A store that keeps no success rates (as RedisStore until it implements success_rates)."""

    success_rates = None  # type: ignore[assignment]


def test_unknown_health_is_neutral() -> None:
    e = engine("otherwise prefer healthiest among [alpha-mini, beta-chat]\n", state=NoHealthStore())
    assert e.decide("hi").model == "beta-chat"  # all unknown: by latency


def test_balance_weighted_picks_by_health_weight() -> None:
    e = engine(
        "set health.success_weight = 1\nset health.latency_weight = 0\n"
        "otherwise balance weighted [alpha-mini, beta-chat]\n"
    )
    cfg = CircuitConfig(failures=100)
    for i in range(4):
        e.state.record("beta-chat", "betacorp", "ok" if i == 0 else "fail", cfg)  # type: ignore[attr-defined]
    random.seed(7)
    picks = [e.decide("hi").model for _ in range(2000)]
    share = picks.count("alpha-mini") / len(picks)
    assert 0.75 < share < 0.85  # weights 1.0 and 0.25
    assert "picked by balance weighted" in e.decide("hi").plan[0].reason


def test_health_settings_are_checked() -> None:
    assert codes("set health.window = 5\notherwise use alpha-mini\n") == ["E400"]
    assert codes("set health.window = 0s\notherwise use alpha-mini\n") == ["E401"]
    assert codes("otherwise balance weighed [alpha-mini, beta-chat]\n") == ["E307"]
    policy = engine("set health.success_weight = 0.5\notherwise use alpha-mini\n").policy
    assert policy.settings["health.success_weight"] == 0.5


# ---- experiments ---------------------------------------------------------------------------------------------


def test_split_names_its_experiment() -> None:
    e = engine('otherwise split 50% alpha-mini, 50% beta-chat as "prompt-v2"\n')
    d = e.decide("hi", user="u1")
    sel = e.policy.rules[0].selector
    exp = sel.experiment_for(e.policy.models[d.model])
    assert exp is not None and exp.name == "prompt-v2" and exp.variant == d.model
    assert f'experiment "prompt-v2" variant {d.model}' in d.explain()
    assert codes('otherwise split 50% alpha-mini, 50% beta-chat as " "\n') == ["E405"]


# ---- provider:model -----------------------------------------------------------------------------------------


def test_provider_qualified_names_resolve_name_alias_then_id() -> None:
    e = engine(
        "when r == 1 use acme:alpha-large\nwhen r == 2 use acme:gpt-4o-mini\nwhen r == 3 use acme:alpha-large-2025-01\n"
        "otherwise use betacorp:beta-chat\n"
    )
    assert [e.decide("hi", r=r).model for r in (1, 2, 3, 4)] == [
        "alpha-large",
        "alpha-mini",
        "alpha-large",
        "beta-chat",
    ]
    assert codes("otherwise use betacorp:alpha-large\n") == ["E312"]  # alpha-large is acme's
    assert codes("otherwise use acme:brand-new\n") == ["E312"]
    assert codes("otherwise use nobody:brand-new\n") == ["E305"]


def test_adhoc_models() -> None:
    e = engine(
        "set adhoc_models = true\n"
        "when r == 1 prefer cheapest among [acme:brand-new, beta-chat]\n"
        "when r == 2 prefer capability(CODING)\n"
        "otherwise use acme:brand-new fallback beta-chat\n"
    )
    d = e.decide("hi", r=1)
    assert d.model == "beta-chat"
    rejected = {c.model: c.reason for c in d.candidates if c.status == "rejected"}
    assert rejected == {"acme:brand-new": "price unknown (not in the catalog): cost-ranked choices skip it"}
    assert "acme:brand-new" not in [c.model for c in e.decide("hi", r=2).candidates]  # only where named
    d = e.decide("hi", r=3)
    assert (d.model, d.model_id, d.provider) == ("acme:brand-new", "brand-new", "acme")
    assert "price unknown" in d.plan[0].reason


def test_request_counts_route_end_to_end_and_cannot_be_spoofed() -> None:
    e = engine("when turns >= 2 use alpha-large\nwhen words > 3 use beta-coder\notherwise use beta-chat\n")
    assert e.decide("one two three four").model == "beta-coder"
    with pytest.raises(RequestError, match="`words` is counted from the request itself"):
        e.decide("one two", words=10)  # the caller cannot set a count, and is told so
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert e.decide(messages=msgs).model == "alpha-large"
    with pytest.raises(RequestError, match="`turns`"):
        e.decide("x", turns=5)
    with pytest.raises(RequestError, match="pin_model"):
        e.decide("x", model="alpha-large")  # decide() does not pin: model= is no attribute either


# ---- review of issue 17: regressions ------------------------------------------------------------------------


def _ref(text: str, prompt: str, **attrs) -> str | None:
    """The reference interpreter's model (tests/reference.py) for a policy over the fixture catalog."""
    from reference import reference_decide

    from engine.language.load import load_source

    got = reference_decide(load_source(text, "policy.route").body, CATALOG, prompt, attrs)
    return got[0] if got is not None else None


def test_rules_ranking_the_same_list_keep_their_own_pools() -> None:
    rules = [
        'when tier == "g" prefer healthiest among [acme:alpha-next, alpha-mini]\n',
        'when tier == "b" prefer cheapest among [acme:alpha-next, alpha-mini]\n',
    ]
    for order in (rules, rules[::-1]):
        e = engine("set adhoc_models = true\n" + "".join(order) + "otherwise use local-free\n")
        cheap = e.decide("hi", tier="b")
        assert cheap.chain == ["alpha-mini"]  # the ad-hoc model's price is unknown: cheapest skips it
        assert [c.status for c in cheap.candidates if c.model == "acme:alpha-next"] == ["rejected"]
        assert e.decide("hi", tier="g").chain == ["alpha-mini", "acme:alpha-next"]  # healthiest keeps it (last)


def test_unknown_latency_weighs_and_ranks_without_nan() -> None:
    e = engine(
        "set adhoc_models = true\n"
        'when tier == "w" balance weighted [acme:alpha-next, alpha-mini]\n'
        'when tier == "h" prefer healthiest among [acme:b, acme:a]\n'
        "otherwise use local-free\n"
    )
    picks = {e.decide("hi", tier="w").model for _ in range(200)}
    assert picks == {"acme:alpha-next", "alpha-mini"}  # no ValueError: every weight is finite
    d = e.decide("hi", tier="h")
    assert d.chain == ["acme:a", "acme:b"]  # equal health, both latencies unknown: by name
    text = d.explain()
    assert "nan" not in text and "latency unknown" in text
    assert [s.reason.split(";")[0] for s in d.plan] == ["rank 1 by healthiest", "rank 2 by healthiest"]


@pytest.mark.parametrize("huge", [10**400, "1" + "0" * 400, float("inf")])
def test_a_limit_too_large_for_a_float_sets_no_limit(huge) -> None:
    text = "otherwise prefer cheapest where latency <= max_latency and context >= min_ctx\n"
    d = engine(text).decide("hi", max_latency=huge, min_ctx=huge)
    assert d.model == _ref(text, "hi", max_latency=huge, min_ctx=huge) == "local-free"
    assert "`where latency <= max_latency` does not apply" in d.explain()
    assert request_value("count", 10**400) is None and request_value("duration", "9" * 400 + "s") is None


def test_any_real_number_is_a_limit() -> None:
    from decimal import Decimal
    from fractions import Fraction

    for value in (Decimal("1000"), Fraction(1000), 1000.0):
        assert request_value("duration", value) == 1.0
    text = "otherwise prefer capability(CODING) where latency <= max_latency\n"
    assert engine(text).decide("hi", max_latency=Decimal("500")).model == _ref(text, "hi", max_latency=500)


@pytest.mark.parametrize("a", [1e17, -1e17, 1e308, -1e308, 10**300])
def test_a_score_ranks_by_the_terms_that_differ_between_models(a) -> None:
    text = 'when tier == "b" prefer score(10 * a + 1 * capability(CODING)) then cheapest\notherwise use local-free\n'
    d = engine(text).decide("hi", tier="b", a=a)
    assert d.model == _ref(text, "hi", tier="b", a=a) == "beta-coder"  # CODING 10: the attribute adds alike
    ranked = [c.model for c in d.candidates if c.status != "rejected"]
    assert ranked[: len(d.chain)] == d.chain  # explain's order is the decision's
    assert "score unknown" not in d.explain() and "ranked by 10 (the terms that differ between models)" in d.explain()


def test_a_stand_in_is_not_an_experiment_variant() -> None:
    e = engine('otherwise split 50% beta-chat, 50% delta-tiny as "e" fallback alpha-mini\n')
    d = e.decide("hi", tools=True)  # neither variant has tools: the fallback stands in
    assert d.model == "alpha-mini" and d.experiment is None
    experiment = e.decide("hi").experiment
    assert experiment is not None and experiment.name == "e"


@pytest.mark.parametrize("limit", ["where latency <= max_latency", "where latency <= 1s"])
def test_a_stand_in_respects_the_rules_limits(limit: str) -> None:
    text = f"otherwise prefer cheapest among [beta-coder, alpha-mini] {limit} fallback alpha-large, gamma-flash\n"
    big = "word " * 120000  # longer than beta-coder's and alpha-mini's context
    d = engine(text).decide(big, max_latency=1000)
    assert d.model == _ref(text, big, max_latency=1000) == "gamma-flash"  # alpha-large (3000ms) is over the limit
    # when no fallback passes the limits, the first that can serve the request still stands in
    text = "otherwise prefer cheapest among [beta-coder, alpha-mini] where latency <= 1s fallback alpha-large\n"
    assert engine(text).decide(big).model == _ref(text, big) == "alpha-large"


def test_an_adhoc_context_is_unknown() -> None:
    e = engine(
        "set adhoc_models = true\n"
        'when tier == "s" prefer score(1 * context) among [acme:alpha-next, alpha-mini]\n'
        'when tier == "w" prefer capability(CODING) among [acme:alpha-next, alpha-mini] where context >= 100k\n'
        'when tier == "r" prefer capability(CODING) among [acme:alpha-next, alpha-mini] where context >= min_ctx\n'
        "otherwise prefer capability(CODING) among [acme:alpha-next, alpha-mini]\n"
    )
    for tier in "swr":
        d = e.decide("hi", tier=tier, min_ctx=1000)
        assert d.chain == ["alpha-mini"], tier
        assert "1e+09" not in d.explain() and "context unknown (not in the catalog)" in d.explain()
    assert e.decide("hi", tier="x").chain == ["alpha-mini", "acme:alpha-next"]  # nothing needs its context


def test_health_weights_and_interval_are_checked() -> None:
    assert codes("set health.success_weight = 0\nset health.latency_weight = 0\notherwise use alpha-mini\n") == ["E401"]
    assert codes("set health.interval = 999ms\notherwise use alpha-mini\n") == ["E401"]
    engine("set health.interval = 1s\nset health.latency_weight = 0\notherwise use alpha-mini\n")


def test_graph_prints_plain_coefficients() -> None:
    e = engine("otherwise prefer score(0.000000001 * context - 0.5 * cost)\n")
    label = e.policy.rules[0].selector.rankings[0].label
    assert label == "score(0.000000001 * context - 0.5 * cost)"
    assert "(0.000000001 x context " in e.decide("hi").explain()
    engine(f"otherwise prefer {label}\n")  # what graph prints is a policy again


@pytest.mark.parametrize("name", ["words", "turns", "model"])
def test_a_derived_count_or_model_is_no_attribute_anywhere(name: str) -> None:
    import click

    from engine.cli.common import parse_attr

    with pytest.raises(click.BadParameter, match=f"`{name}`"):
        parse_attr(f"{name}=10")
    with pytest.raises(RequestError, match=f"`{name}`"):
        engine("otherwise use alpha-mini\n").decide("hi", **{name: 10})  # type: ignore[arg-type]
    test = f'otherwise use alpha-mini\ntest "t" {{\n  expect "hi" with {name}=10 -> alpha-mini\n}}\n'
    assert codes(test) == ["E401"]


def test_a_huge_value_that_sets_no_limit_is_shown_cut_short() -> None:
    e = engine("otherwise prefer cheapest where latency <= max_latency\n")
    reason = e.decide("hi", max_latency="9" * 400).plan[0].reason
    assert "does not apply: max_latency is '999" in reason and "..." in reason and len(reason) < 200
