"""Pins and engine options from Python (engine/runtime/caller_pin.py, engine/options.py): `complete(model=...,
fallback=[...])` against the loopback fake upstream (no `set overrides` needed, hard constraints still apply, an
unknown model is a PinError with did-you-mean), unknown keyword arguments of Engine.load() / from_source() /
Engine() refused with the valid ones named, and `functions=` / `rankers=` checked and kept read-only."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from engine import Engine, PinError
from engine.options import EXECUTION_OPTIONS
from providers.execution import Executor, RoutingError
from tests.engines import Engines, outcomes
from tests.fakeserver import FakeServer, Fault, Reply

POLICY = """
set retry.attempts = 0
otherwise use alpha-mini fallback beta-chat
"""
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


@pytest.fixture
def make(fake_server: FakeServer) -> Iterator[Engines]:
    engines = Engines(fake_server, default=POLICY)
    yield engines
    engines.close()


def test_model_pins_without_overrides_and_falls_back(make, fake_server: FakeServer) -> None:
    engine = make()
    c = engine.complete("hello", model="gamma-flash")
    assert c.model == "gamma-flash" and fake_server.last().model == engine.policy.models["gamma-flash"].spec.id
    assert c.decision.rule.index == -1 and "named by the caller" in c.decision.rule.text
    fake_server.always("beta-coder", Fault.server_error(503))
    c = engine.complete("hello", model="beta-coder", fallback=["alpha-large"])
    assert outcomes(c) == [("beta-coder", "ServerError"), ("alpha-large", "ok")]
    assert [(s.model, s.role) for s in c.decision.plan] == [("beta-coder", "chosen"), ("alpha-large", "fallback")]


def test_an_alias_pins_its_model(make) -> None:
    assert make().complete("hello", model="gpt-4o-mini").model == "alpha-mini"


def test_an_unknown_model_is_an_error_with_did_you_mean(make, fake_server: FakeServer) -> None:
    engine = make()
    with pytest.raises(PinError, match="did you mean beta-chat") as info:
        engine.complete("hello", model="beta-chatt")
    assert isinstance(info.value, ValueError) and info.value.code == "model_not_found"
    with pytest.raises(PinError, match="no-such-model"):
        engine.complete("hello", model="alpha-mini", fallback=["no-such-model"])
    assert fake_server.requests == []


def test_hard_constraints_still_apply(make, fake_server: FakeServer) -> None:
    engine = make()
    with pytest.raises(PinError) as info:  # beta-chat has no tools support
        engine.complete("hello", model="beta-chat", tools=TOOLS)
    assert info.value.code == "model_unsuitable" and "tools" in str(info.value)
    c = engine.complete("hello", model="beta-chat", fallback=["alpha-mini"], tools=TOOLS)
    assert c.model == "alpha-mini" and "beta-chat skipped" in c.decision.plan[0].reason
    assert all(r.model != engine.policy.models["beta-chat"].spec.id for r in fake_server.requests)


def test_pins_on_every_path(make, fake_server: FakeServer) -> None:
    import asyncio

    engine = make()
    fake_server.default = Reply(text="p q", chunks=2)
    assert engine.stream("x", model="gamma-flash").decision.model == "gamma-flash"

    async def run() -> tuple[str, str]:
        c = await engine.acomplete("x", model="beta-chat")
        s = engine.astream("x", model="alpha-large")
        async for _ in s:
            pass
        await engine.aclose()
        return c.model, s.decision.model

    assert asyncio.run(run()) == ("beta-chat", "alpha-large")


def test_fallback_needs_a_model_and_a_list(make) -> None:
    engine = make()
    with pytest.raises(TypeError, match="needs model="):
        engine.complete("x", fallback=["beta-chat"])
    with pytest.raises(TypeError, match="list of model names"):
        engine.complete("x", model="alpha-mini", fallback="beta-chat")


def test_an_open_circuit_is_skipped_not_refused(make, fake_server: FakeServer) -> None:
    engine = make("set circuit.failures = 1\nset retry.attempts = 0\notherwise use alpha-mini\n")
    fake_server.script("gamma-flash", Fault.server_error(500))
    with pytest.raises(RoutingError):
        engine.complete("x", model="gamma-flash")
    c = engine.complete("x", model="gamma-flash", fallback=["alpha-large"])
    assert outcomes(c) == [("gamma-flash", "CircuitOpen"), ("alpha-large", "ok")]


# ---- keyword arguments -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["load", "from_source", "init"])
def test_unknown_keyword_arguments_are_refused(where: str) -> None:
    build = {
        "load": lambda **kw: Engine.load(**kw),
        "from_source": lambda **kw: Engine.from_source("otherwise use gpt-5-mini", **kw),
        "init": lambda **kw: Engine(Engine.from_source("otherwise use gpt-5-mini").policy, **kw),
    }[where]
    with pytest.raises(TypeError) as info:
        build(custom_router=lambda request: "gpt-5")
    text = str(info.value)
    assert "unexpected keyword argument 'custom_router'" in text and "functions=" in text
    assert "valid keyword arguments:" in text and "api_keys" in text and "today" in text
    with pytest.raises(TypeError, match="did you mean api_keys"):
        build(api_key={"openai": "k"})


def test_the_execution_options_are_the_executors() -> None:
    params = inspect.signature(Executor.__init__).parameters
    accepted = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY} - {"budgets"}
    assert set(EXECUTION_OPTIONS) == accepted


def test_functions_and_rankers_are_checked_and_kept() -> None:
    def complexity(request: object) -> float:
        return 1.0

    engine = Engine.from_source(
        "otherwise use gpt-5-mini", functions={"complexity": complexity}, rankers={"mine": lambda r, m: 0.5}
    )
    assert dict(engine.functions) == {"complexity": complexity} and list(engine.rankers) == ["mine"]
    with pytest.raises(TypeError):
        engine.functions["other"] = complexity  # type: ignore[index]
    assert dict(Engine.from_source("otherwise use gpt-5-mini").functions) == {}

    async def slow(request: object) -> float:
        return 1.0

    cases: list[tuple[Any, str]] = [
        ({"complexity": slow}, "async function"),
        ({"not a name": complexity}, "not a name"),
        ({"class": complexity}, "not a name"),
        ({"x": 3}, "must be a function"),
    ]
    for bad, match in cases:
        with pytest.raises(TypeError, match=match):
            Engine.from_source("otherwise use gpt-5-mini", functions=bad)
    with pytest.raises(TypeError, match=r"rankers=.*async"):
        Engine.from_source("otherwise use gpt-5-mini", rankers={"r": slow})


ADHOC = """
set retry.attempts = 0
set adhoc_models = true
otherwise use alpha-mini
"""


def test_an_adhoc_name_pins_from_python(make, fake_server: FakeServer) -> None:
    engine = make(ADHOC)
    c = engine.complete("hello", model="acme:brand-new", fallback=["acme:alpha-mini"])
    assert (c.model, fake_server.last().model) == ("acme:brand-new", "brand-new")
    assert [s.model for s in c.decision.plan] == ["acme:brand-new", "alpha-mini"]  # P:X names the catalog model
    assert c.cost is None or c.cost == 0.0  # the price is unknown (see providers/execution/metering.py)
    assert [r.model for r in engine.warmup(["acme:brand-new"])] == ["acme:brand-new"]
    with pytest.raises(PinError, match="nobody:brand-new") as info:  # not a provider the catalog knows
        engine.complete("hello", model="nobody:brand-new")
    assert info.value.code == "model_not_found"
    with pytest.raises(PinError):  # without `set adhoc_models = true`, only catalog models
        make().complete("hello", model="acme:brand-new")


def test_an_unknown_price_meters_no_cost_unless_held() -> None:
    from engine.runtime.policy import Entry
    from engine.runtime.qualified import adhoc_spec
    from providers.execution.metering import meter
    from providers.types import ChatResponse, Usage

    entry = Entry.of(adhoc_spec("acme", "brand-new"))
    answer = ChatResponse(text="ok", usage=Usage(input_tokens=10, output_tokens=2), model="acme:brand-new")
    metered, estimated = meter(answer, entry, lambda: 10, len, None)
    assert metered.cost is None and estimated  # unknown, never $0
    metered, _ = meter(answer, entry, lambda: 10, len, 0.1)
    assert metered.cost == 0.1  # `set budget.unknown_price_hold = $0.10`
