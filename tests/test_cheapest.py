"""`prefer cheapest` (price groups, threshold walk, dominant-group shortcut) agrees with brute force."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine import Engine
from providers.catalog.models import Catalog, ModelSpec

PRICES = st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0, 1.0, 2.5, 10.0])


@st.composite
def catalogs(draw):
    n = draw(st.integers(1, 14))
    specs = []
    for i in range(n):
        specs.append(
            ModelSpec(
                name=f"m{i:02d}",
                provider="p",
                id=f"m{i:02d}",
                aliases=(),
                context=draw(st.sampled_from([1000, 10**6])),
                max_output=None,
                input_price=draw(PRICES) / 1e6,
                output_price=draw(PRICES) / 1e6,
                latency_ms=draw(st.sampled_from([100.0, 500.0])),
                capabilities={"REASONING": draw(st.integers(1, 10))},
                supports=frozenset(draw(st.sets(st.just("tools")))),  # tests/test_plan.py filters on tools
                deprecation_date=None,
                source=None,
            )
        )
    return Catalog.from_models(specs)


@settings(max_examples=300, deadline=None)
@given(
    catalogs(),
    st.integers(0, 5000),
    st.sampled_from([None, 1, 16, 500, 4000]),
    st.sampled_from(["prefer cheapest", "prefer cheapest then capability(REASONING)"]),
)
def test_cheapest_matches_brute_force(catalog: Catalog, tokens: int, max_tokens: int | None, action: str) -> None:
    engine = Engine.from_source(f"otherwise {action}\n", catalog=catalog)
    attrs = {"tokens": tokens} | ({"max_tokens": max_tokens} if max_tokens else {})
    out = max_tokens or 500
    viable = [m for m in catalog.models.values() if m.context >= tokens]
    if not viable:
        return
    then_reasoning = "then" in action

    def key(m: ModelSpec) -> tuple:
        cost = tokens * m.input_price + out * m.output_price
        return (cost, -m.capabilities["REASONING"], m.name) if then_reasoning else (cost, m.name)

    assert engine.decide("", **attrs).model == min(viable, key=key).name


# ---- rankings that depend on the request, precomputed as tiers (selectors.TieredPrefer) ---------------------

ACTIONS = [
    "prefer capability(REASONING) then cheapest",
    "prefer capability(REASONING) then cheapest then fastest",
    "prefer fastest then cheapest",
    "prefer least_busy",
    "prefer least_busy then capability(REASONING)",
    "prefer least_busy then fastest",
    "prefer capability(REASONING) then least_busy",
    "prefer capability(REASONING) then least_busy then cheapest",
    "prefer cheapest then least_busy",
    "prefer least_busy then cheapest",
]


@settings(max_examples=400, deadline=None)
@given(
    catalogs(),
    st.integers(0, 5000),
    st.sampled_from([None, 16, 4000]),
    st.sampled_from(ACTIONS),
    st.lists(st.tuples(st.integers(0, 13), st.integers(-1, 3)), max_size=10),
    st.booleans(),
    st.integers(0, 4),
    st.sampled_from([{}, {"m00": 50.0, "m03": 900.0}]),
)
def test_tiered_rankings_match_brute_force(
    catalog: Catalog,
    tokens: int,
    max_tokens: int | None,
    action: str,
    busy: list[tuple[int, int]],
    tools: bool,
    depth: int,
    measured: dict[str, float],
) -> None:
    """pick() and the plan's ranked models agree with sorting every viable model by the full key, with in-flight
    counts (some below zero: they count as zero) and, sometimes, measured latencies that reorder `fastest`."""
    from engine.runtime.state import MemoryStore

    store = MemoryStore()
    counts: dict[str, int] = {}
    for i, n in busy:
        name = f"m{i:02d}"
        if name in catalog.models:
            counts[name] = counts.get(name, 0) + n
    store.latency_ms = lambda: measured  # type: ignore[method-assign]
    store.in_flight = lambda m: counts.get(m, 0)  # type: ignore[method-assign]
    engine = Engine.from_source(f"set failover.depth = {depth}\notherwise {action}\n", catalog=catalog, state=store)
    out = max_tokens or 500
    viable = [m for m in catalog.models.values() if m.context >= tokens and (not tools or "tools" in m.supports)]
    keys = {
        "cheapest": lambda m: tokens * m.input_price + out * m.output_price,
        "capability(REASONING)": lambda m: -m.capabilities["REASONING"],
        "fastest": lambda m: measured.get(m.name, m.latency_ms),
        "least_busy": lambda m: max(0, counts.get(m.name, 0)),
    }
    order = [keys[r] for r in action.removeprefix("prefer ").split(" then ")]
    ranked = sorted(viable, key=lambda m: (*(k(m) for k in order), m.name))
    attrs = {"tokens": tokens, "tools": tools} | ({"max_tokens": max_tokens} if max_tokens else {})
    if not ranked:
        return
    d = engine.decide("", **attrs)
    assert d.model == ranked[0].name
    assert d.chain == [m.name for m in ranked[: depth + 1]]
