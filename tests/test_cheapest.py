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
