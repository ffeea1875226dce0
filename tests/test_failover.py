"""Tests for plan execution (providers/execution/executor.py, streaming.py): a policy, a scripted loopback
FakeServer and a request in, the models execution tried, in the decision's failover plan order, out: the next
models of a ranking or a balance group, stand-in fallbacks, a group's fallbacks, the half-open probe of an
all-open plan, and the budget estimate over every model the plan may call."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from engine import NoRouteError
from providers.execution.judging import JUDGE_MAX_TOKENS
from providers.execution.resilience import RoutingError
from tests.engines import Engines, called, idle, outcomes
from tests.fakeserver import FakeServer, Fault, Reply
from tests.waiting import await_until

NO_RETRY = """
set retry.attempts = 0
set circuit.failures = 100
"""

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make(fake_server: FakeServer) -> Iterator[Engines]:
    """engine_for() on the test's server; closes every engine made."""
    engines = Engines(fake_server)
    yield engines
    engines.close()


# ---- ranked and member alternatives ------------------------------------------------------------------------
def test_a_failing_cheapest_model_falls_to_the_next_cheapest(make, fake_server: FakeServer) -> None:
    engine = make(NO_RETRY + "otherwise prefer cheapest")  # no fallback listed
    fake_server.always("local-free", Fault.server_error(503))
    c = engine.complete("hello")
    assert [(s.model, s.role) for s in c.decision.plan] == [
        ("local-free", "chosen"),
        ("delta-tiny", "ranked"),
        ("gamma-flash", "ranked"),
    ]
    assert c.model == "delta-tiny" and outcomes(c) == [("local-free", "ServerError"), ("delta-tiny", "ok")]
    assert called(fake_server) == ["local-free", "delta-tiny"] and idle(engine)


def test_a_failing_capability_leader_falls_to_rank_two(make, fake_server: FakeServer) -> None:
    engine = make(NO_RETRY + "otherwise prefer capability(CODING)")
    fake_server.always("beta-coder", Fault.reset())
    c = engine.complete("write a parser")
    assert c.decision.model == "beta-coder" and c.decision.plan[1].model == "alpha-large"
    assert outcomes(c) == [("beta-coder", "ConnectionFailed"), ("alpha-large", "ok")]


def test_every_ranked_model_failing_is_a_routing_error_over_the_whole_plan(make, fake_server: FakeServer) -> None:
    engine = make(NO_RETRY + "otherwise prefer capability(CODING)")
    for model_id in ("beta-coder", "alpha-large-2025-01", "gamma-long"):  # scripts go by the provider's model id
        fake_server.always(model_id, Fault.server_error(500))
    with pytest.raises(RoutingError) as info:
        engine.complete("write a parser")
    assert [m for m, _ in outcomes(info.value)] == ["beta-coder", "alpha-large", "gamma-long"]
    assert not info.value.deadline_passed and idle(engine)


def test_a_failing_balance_member_falls_to_another_member(make, fake_server: FakeServer) -> None:
    engine = make(NO_RETRY + "otherwise balance round_robin [alpha-mini, beta-chat, gamma-flash]")
    fake_server.always("alpha-mini", Fault.server_error(503))
    c = engine.complete("hello")  # round robin starts at the first member
    assert c.decision.model == "alpha-mini" and [s.role for s in c.decision.plan] == ["chosen", "member", "member"]
    assert outcomes(c) == [("alpha-mini", "ServerError"), ("beta-chat", "ok")]


def test_a_stand_in_fallback_with_tools_answers_and_its_own_fallback_follows(make, fake_server: FakeServer) -> None:
    # beta-chat and delta-tiny cannot call tools: alpha-mini stands in, gamma-flash (tools) is its fallback
    engine = make(NO_RETRY + "otherwise use beta-chat fallback delta-tiny, alpha-mini, gamma-flash")
    c = engine.complete("look it up", tools=[TOOL])  # the decision stands in: no NoRouteError
    assert (c.decision.model, c.model) == ("alpha-mini", "alpha-mini")
    assert fake_server.last().body["tools"][0]["function"]["name"] == "lookup"

    fake_server.always("alpha-mini", Fault.server_error(500))
    c = engine.complete("look it up", tools=[TOOL])
    assert outcomes(c) == [("alpha-mini", "ServerError"), ("gamma-flash", "ok")]
    assert "beta-chat" not in called(fake_server) and "delta-tiny" not in called(fake_server)


def test_a_stream_walks_the_plan_too(make, fake_server: FakeServer) -> None:
    engine = make(NO_RETRY + "otherwise prefer cheapest")
    fake_server.always("local-free", Fault.server_error(503))
    fake_server.always("delta-tiny", Fault.cut_stream(after=0, abort=False))
    stream = engine.stream("hello")
    assert stream.text() == "ok"
    assert outcomes(stream) == [
        ("local-free", "ServerError"),
        ("delta-tiny", "MalformedResponse"),
        ("gamma-flash", "ok"),
    ]


# ---- groups: the plan's fallback entries after the group -----------------------------------------------------
def test_a_race_that_fails_walks_the_plans_fallbacks(make, fake_server: FakeServer) -> None:
    engine = make(NO_RETRY + "otherwise race [alpha-mini, beta-chat] fallback gamma-flash, delta-tiny")
    fake_server.always("alpha-mini", Fault.server_error(500))
    fake_server.always("beta-chat", Fault.auth())
    fake_server.always("gamma-flash", Fault.server_error(503))
    c = engine.complete("hello")
    assert [s.role for s in c.decision.plan] == ["group", "group", "fallback", "fallback"]
    assert sorted(outcomes(c)[:2]) == [("alpha-mini", "ServerError"), ("beta-chat", "AuthError")]
    assert outcomes(c)[2:] == [("gamma-flash", "ServerError"), ("delta-tiny", "ok")]
    assert idle(engine)


# ---- every circuit open: the half-open probe -----------------------------------------------------------------
PROBE = """
set retry.attempts = 2
set retry.backoff = 10ms
set circuit.failures = 1
set circuit.cooldown = 60s
otherwise use alpha-mini fallback beta-chat
"""


def open_both(engine: Any, server: FakeServer) -> None:
    """Open the circuits of alpha-mini, then beta-chat (one failure each opens them)."""
    server.script("alpha-mini", Fault.server_error(503))
    server.script("beta-chat", Fault.server_error(503))
    with pytest.raises(RoutingError):
        engine.complete("hello")
    assert {m for m in ("alpha-mini", "beta-chat") if engine.state.circuit(m).state == "open"} == {
        "alpha-mini",
        "beta-chat",
    }


def test_an_all_open_plan_probes_its_longest_open_model_once_and_closes_it(make, fake_server: FakeServer) -> None:
    engine = make(PROBE)
    seen = []
    engine.on_event(seen.append)
    open_both(engine, fake_server)
    before = len(fake_server.requests)
    c = engine.complete("hello")
    assert c.decision.probe == "alpha-mini" and c.decision.plan[0].role == "probe"
    assert outcomes(c) == [("alpha-mini", "ok")] and called(fake_server)[before:] == ["alpha-mini"]
    assert engine.state.circuit("alpha-mini").state == "closed"
    assert engine.state.circuit("beta-chat").state == "open"
    assert [e.model for e in seen if e.kind == "circuit_closed"] == ["alpha-mini"]


def test_a_failed_probe_is_tried_once_and_reopens_the_circuit(make, fake_server: FakeServer) -> None:
    engine = make(PROBE)
    open_both(engine, fake_server)
    before = len(fake_server.requests)
    fake_server.script("alpha-mini", Fault.server_error(500))
    with pytest.raises(RoutingError) as info:
        engine.complete("hello")
    assert outcomes(info.value) == [("alpha-mini", "ServerError"), ("beta-chat", "CircuitOpen")]
    assert called(fake_server)[before:] == ["alpha-mini"]  # retry.attempts = 2, yet one try: it was the probe
    assert engine.state.circuit("alpha-mini").state == "open" and idle(engine)


@pytest.mark.anyio
async def test_a_second_request_skips_a_probe_that_is_already_running(make, fake_server: FakeServer) -> None:
    engine = make(PROBE)
    await asyncio.to_thread(open_both, engine, fake_server)
    gate = threading.Event()
    fake_server.script("alpha-mini", Fault.held(gate, Reply(text="probe answered")))
    before = len(fake_server.requests)
    first = asyncio.ensure_future(engine.acomplete("hello"))
    try:
        await await_until(lambda: len(fake_server.requests) > before, "the probe to reach the server")
        with pytest.raises(RoutingError) as info:
            await engine.acomplete("hello again")
        second = info.value
        assert second.decision.probe == "alpha-mini"
        assert outcomes(second) == [("alpha-mini", "CircuitOpen"), ("beta-chat", "CircuitOpen")]
        assert second.attempts[0].message == "a half-open probe of alpha-mini is already running"
        assert len(fake_server.requests) == before + 1
    finally:
        gate.set()
    c = await first
    assert c.text == "probe answered" and engine.state.circuit("alpha-mini").state == "closed"
    assert idle(engine)
    await engine.aclose()


def test_when_all_open_fail_raises_no_route_with_what_is_open(make, fake_server: FakeServer) -> None:
    engine = make(PROBE + "set circuit.when_all_open = fail\n")
    open_both(engine, fake_server)
    before = len(fake_server.requests)
    with pytest.raises(NoRouteError) as info:
        engine.complete("hello")
    assert info.value.unavailable == frozenset({"alpha-mini", "beta-chat"})
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= 60
    assert len(fake_server.requests) == before


# ---- the budget estimate covers the plan ---------------------------------------------------------------------
def test_the_estimate_covers_every_model_the_plan_may_call(make) -> None:
    engine = make("budget daily $100\notherwise prefer cheapest")
    d = engine.decide("hello")
    models, req = engine.policy.models, d.request

    def cost(name: str, tokens: float = req.tokens) -> float:
        return models[name].cost(tokens, req.out_tokens)

    assert engine.executor.estimate(d) == pytest.approx(max(cost(m) for m in d.chain))
    assert engine.executor.estimate(d) > cost(d.model)  # not only the chosen model: the ranked ones too

    engine = make("budget daily $100\notherwise best_of [alpha-mini, beta-chat] judge gamma-long fallback delta-tiny")
    d = engine.decide("hello")
    judge = models["gamma-long"].cost(req.tokens + 2 * req.out_tokens, JUDGE_MAX_TOKENS)  # the judge may write 1024
    expected = cost("alpha-mini") + cost("beta-chat") + judge + cost("delta-tiny")
    assert engine.executor.estimate(d) == pytest.approx(expected)
