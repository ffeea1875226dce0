"""The failover plan a decision carries (engine/runtime/plan.py): what follows the chosen model for each action
shape, `set failover.depth`, stand-ins, the all-open probe, and that the ranked part agrees with brute force.
Execution walking the plan against a real loopback server is tested in tests/test_failover.py."""

from __future__ import annotations

import datetime
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cheapest import catalogs

from engine import Engine, NoRouteError
from engine.runtime.state import CircuitConfig, MemoryStore
from providers.catalog.models import Catalog

OPEN_AFTER_ONE = CircuitConfig(failures=1, window=60.0, cooldown=30.0)


def plan_of(engine: Engine, prompt: str = "hi", **attrs: object) -> list[tuple[str, str]]:
    return [(s.model, s.role) for s in engine.decide(prompt, **attrs).plan]


def test_prefer_plan_is_the_ranking_then_the_fallbacks(write_policy) -> None:
    engine = Engine.load(write_policy('catalog "catalog.yaml"\notherwise prefer cheapest fallback alpha-large\n'))
    d = engine.decide("hi")
    assert [(s.model, s.role) for s in d.plan] == [
        ("local-free", "chosen"),
        ("delta-tiny", "ranked"),
        ("gamma-flash", "ranked"),
        ("alpha-large", "fallback"),
    ]
    assert [s.reason for s in d.plan][:3] == ["rank 1 by cheapest", "rank 2 by cheapest", "rank 3 by cheapest"]
    assert d.chain == [s.model for s in d.plan]
    assert d.fallbacks == ["alpha-large"]  # the listed fallbacks keep their meaning


def test_ranked_entries_pass_every_constraint(write_policy) -> None:
    engine = Engine.load(
        write_policy('catalog "catalog.yaml"\notherwise prefer capability(CODING) where cost < $0.01\n')
    )
    # the cost limit rules out alpha-large (CODING 9, $0.015); tools rule out beta-chat and local-free
    assert plan_of(engine, tools=True) == [
        ("beta-coder", "chosen"),
        ("gamma-long", "ranked"),
        ("alpha-mini", "ranked"),
    ]


@pytest.mark.parametrize(("depth", "expected"), [(0, ["local-free", "alpha-large"]), (4, 6)])
def test_failover_depth_bounds_the_ranked_entries(write_policy, depth: int, expected) -> None:
    src = f'catalog "catalog.yaml"\nset failover.depth = {depth}\notherwise prefer cheapest fallback alpha-large\n'
    chain = Engine.load(write_policy(src)).decide("hi").chain
    assert chain == expected if isinstance(expected, list) else len(chain) == expected


def test_balance_plan_follows_the_rotation(write_policy) -> None:
    src = (
        'catalog "catalog.yaml"\n'
        "otherwise balance round_robin [alpha-mini, beta-chat, gamma-flash] fallback delta-tiny\n"
    )
    engine = Engine.load(write_policy(src))
    chains = [engine.decide("hi").chain for _ in range(3)]
    assert chains == [
        ["alpha-mini", "beta-chat", "gamma-flash", "delta-tiny"],
        ["beta-chat", "gamma-flash", "alpha-mini", "delta-tiny"],
        ["gamma-flash", "alpha-mini", "beta-chat", "delta-tiny"],
    ]


def test_balance_least_busy_plan_orders_by_in_flight(write_policy) -> None:
    store = MemoryStore()
    engine = Engine.load(
        write_policy('catalog "catalog.yaml"\notherwise balance least_busy [alpha-mini, beta-chat, gamma-flash]\n'),
        state=store,
    )
    store.add_in_flight("alpha-mini", 3)
    store.add_in_flight("beta-chat", 1)
    assert engine.decide("hi").chain == ["gamma-flash", "beta-chat", "alpha-mini"]


def test_split_plan_follows_the_weights(write_policy) -> None:
    src = 'catalog "catalog.yaml"\notherwise split 10% alpha-mini, 60% beta-chat, 30% gamma-flash\n'
    engine = Engine.load(write_policy(src))
    for user in ("u1", "u2", "u3", "u4"):
        d = engine.decide("hi", user=user)
        rest = [m for m in ["beta-chat", "gamma-flash", "alpha-mini"] if m != d.model]
        assert d.chain == [d.model, *rest]
        assert d.plan[1].reason.startswith("next by weight")


def test_group_plan_is_the_group_then_the_fallbacks(write_policy) -> None:
    src = 'catalog "catalog.yaml"\notherwise race [alpha-mini, beta-chat] fallback gamma-flash, alpha-mini\n'
    d = Engine.load(write_policy(src)).decide("hi")
    assert [(s.model, s.role) for s in d.plan] == [
        ("alpha-mini", "group"),
        ("beta-chat", "group"),
        ("gamma-flash", "fallback"),
    ]


def test_a_fallback_stands_in_when_the_request_rules_the_rule_out(write_policy) -> None:
    src = 'catalog "catalog.yaml"\notherwise use beta-chat fallback delta-tiny, alpha-mini, gamma-flash\n'
    d = Engine.load(write_policy(src)).decide("hi", tools=True)
    assert d.model == "alpha-mini" and d.chain == ["alpha-mini", "gamma-flash"]
    note = "fallback alpha-mini stands in for beta-chat: no tools support (request has tools)"
    assert d.plan[0].reason == note
    assert d.report().note == note
    assert note in d.explain()


def test_no_stand_in_when_where_leaves_no_model(write_policy) -> None:
    src = 'catalog "catalog.yaml"\nwhen tools use beta-chat where supports vision fallback alpha-mini\n'
    with pytest.raises(NoRouteError) as info:
        Engine.load(write_policy(src)).decide("hi", tools=True)
    assert not info.value.unavailable


def _open(store: MemoryStore, *models: str) -> None:
    for m in models:
        store.record(m, "p", "fail", OPEN_AFTER_ONE)


def test_every_circuit_open_probes_the_one_opened_longest_ago(write_policy) -> None:
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0], wall=lambda: now[0])
    src = 'catalog "catalog.yaml"\notherwise use alpha-mini fallback beta-coder\n'
    engine = Engine.load(write_policy(src), state=store)
    _open(store, "beta-coder")
    now[0] += 5
    _open(store, "alpha-mini")
    d = engine.decide("hi")
    assert d.probe == "beta-coder" == d.model
    assert [(s.model, s.role) for s in d.plan] == [("beta-coder", "probe"), ("alpha-mini", "chosen")]
    assert "opened longest ago" in d.plan[0].reason
    assert d.report().model == "beta-coder" and "half-open probe" in (d.report().note or "")


def test_every_circuit_open_with_fail_raises_no_route_with_retry_after(write_policy) -> None:
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0], wall=lambda: now[0])
    src = 'catalog "catalog.yaml"\nset circuit.when_all_open = fail\notherwise use alpha-mini fallback beta-coder\n'
    engine = Engine.load(write_policy(src), state=store)
    _open(store, "alpha-mini", "beta-coder")
    with pytest.raises(NoRouteError) as info:
        engine.decide("hi")
    err = info.value
    assert err.unavailable == {"alpha-mini", "beta-coder"}
    assert err.retry_after == 30.0  # the injected clock has not moved since the circuits opened
    now[0] += 12
    with pytest.raises(NoRouteError) as info:
        engine.decide("hi")
    assert info.value.retry_after == 18.0
    assert "open circuit" in str(err)


def test_an_open_circuit_on_one_rule_lets_a_later_rule_decide(write_policy) -> None:
    """Probing happens only when no rule can route: a healthy later rule wins over probing an earlier one."""
    store = MemoryStore()
    src = 'catalog "catalog.yaml"\nwhen tier == "pro" use alpha-mini\notherwise use beta-chat\n'
    engine = Engine.load(write_policy(src), state=store)
    _open(store, "alpha-mini")
    d = engine.decide("hi", tier="pro")
    assert (d.model, d.probe) == ("beta-chat", None)


def test_pinned_plan_is_the_named_model(write_policy) -> None:
    src = 'catalog "catalog.yaml"\nset overrides = true\notherwise use alpha-mini fallback beta-chat\n'
    d = Engine.load(write_policy(src)).pin("gamma-flash", "hi")
    assert [(s.model, s.role, s.reason) for s in d.plan] == [("gamma-flash", "chosen", "named by the request")]
    assert d.report().plan == d.plan


def test_explain_json_carries_the_plan(write_policy) -> None:
    d = Engine.load(write_policy('catalog "catalog.yaml"\notherwise prefer fastest fallback beta-coder\n')).decide("hi")
    data = json.loads(d.to_json())
    assert [s["model"] for s in data["plan"]] == d.chain
    assert set(data["plan"][0]) == {"model", "provider", "role", "reason"}


# ---- the ranked part of a plan agrees with brute force --------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    catalogs(),
    st.integers(0, 5000),
    st.booleans(),
    st.integers(0, 5),
    st.sampled_from(
        [
            "prefer cheapest",
            "prefer cheapest then capability(REASONING)",
            "prefer capability(REASONING) then cheapest",
            "prefer fastest then cheapest",
        ]
    ),
)
def test_ranked_plan_matches_brute_force(catalog: Catalog, tokens: int, tools: bool, depth: int, action: str) -> None:
    engine = Engine.from_source(f"set failover.depth = {depth}\notherwise {action}\n", catalog=catalog)
    viable = [m for m in catalog.models.values() if m.context >= tokens and (not tools or "tools" in m.supports)]
    if not viable:
        return
    keys = {
        "cheapest": lambda m: tokens * m.input_price + 500 * m.output_price,
        "capability(REASONING)": lambda m: -m.capabilities["REASONING"],
        "fastest": lambda m: m.latency_ms,
    }
    order = [keys[r] for r in action.removeprefix("prefer ").split(" then ")]
    ranked = sorted(viable, key=lambda m: (*(k(m) for k in order), m.name))
    assert engine.decide("", tokens=tokens, tools=tools).chain == [m.name for m in ranked[: depth + 1]]


def test_decide_does_not_read_provider_keys(monkeypatch) -> None:
    """A provider without a key is skipped at execution, never at decide(): `modelroute test` gives the same
    answers on every machine."""
    engine = Engine.load(today=datetime.date(2026, 12, 6))
    keys = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GROQ_API_KEY", "DEEPSEEK_API_KEY")
    prompts = ["hi", "write a python function that parses dates", "translate this to French: bonjour"]
    for key in keys:
        monkeypatch.setenv(key, "sk-test")
    with_keys = [engine.decide(p).chain for p in prompts]
    for key in keys:
        monkeypatch.delenv(key)
    assert [engine.decide(p).chain for p in prompts] == with_keys


def test_consensus_that_needs_agreement_has_no_fallbacks_in_its_plan(write_policy) -> None:
    src = (
        'catalog "catalog.yaml"\n'
        "otherwise consensus [alpha-mini, beta-chat, gamma-flash] min_agreement 2 fallback delta-tiny\n"
    )
    d = Engine.load(write_policy(src)).decide("hi")
    assert d.min_agreement == 2
    assert d.chain == ["alpha-mini", "beta-chat", "gamma-flash"]
    assert d.fallbacks == ["delta-tiny"]  # listed, as written; the plan says what execution will try
