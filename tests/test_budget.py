"""Tests for budgets (engine/runtime/budget.py, providers/execution/budget.py and Engine.request's budget
attributes): policies with `budget` statements and requests in, refusals before any call, recorded spend,
warnings and degrade rules out."""

from __future__ import annotations

from typing import Any

import pytest

from engine.runtime.budget import bucket
from providers.execution.budget import BudgetExceeded, Budgets
from providers.execution.events import Event
from tests.engines import engine_for
from tests.fakeserver import FakeServer, Reply

# alpha-mini: $0.50 / $1.50 per 1M. A 1-token prompt with 100 output tokens costs 0.5e-6 + 150e-6 = $0.0001505.
COST = 0.0001505
POLICY = """
set output_tokens = 100
set budget.warn = 50%
budget daily $0.0005
otherwise use alpha-mini
"""
EXACT = Reply(text="ok", input_tokens=1, output_tokens=100)  # costs exactly the estimate


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Wall:
    def __init__(self) -> None:
        self.t = 1_750_000_000.0  # 2025-06-15

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def wall() -> Wall:
    return Wall()


def test_refused_before_any_call_with_a_clear_error(fake_server: FakeServer, wall: Wall) -> None:
    fake_server.default = EXACT
    with engine_for(fake_server, POLICY, wall=wall) as engine:
        for _ in range(3):
            engine.complete("hi")
        assert fake_server.requests[0].body["max_completion_tokens"] == 100  # the reservation bounds the spend
        with pytest.raises(BudgetExceeded) as info:
            engine.complete("hi")
        assert len(fake_server.requests) == 3
        msg = str(info.value)
        assert "budget daily $0.00" in msg and "refused before any call" in msg and "line 4" in msg
        assert info.value.limit == 0.0005 and info.value.used == pytest.approx(3 * COST)
        wall.t += 86_400  # a new day: a new budget period
        assert engine.complete("hi").text == "ok"


def test_spend_is_recorded_from_real_usage(fake_server: FakeServer, wall: Wall) -> None:
    fake_server.default = Reply(input_tokens=1000, output_tokens=10)
    with engine_for(fake_server, POLICY, wall=wall) as engine:
        c = engine.complete("hi")
        day = f"daily:{bucket('daily', wall.t)}"
        assert engine.state.spent(day) == (pytest.approx(c.cost), 0.0)
        assert c.cost == pytest.approx(1000 * 0.5e-6 + 10 * 1.5e-6)


def test_per_user_budgets_are_separate(fake_server: FakeServer, wall: Wall) -> None:
    fake_server.default = EXACT
    policy = POLICY.replace("budget daily $0.0005", "budget daily $0.0002 per user")
    with engine_for(fake_server, policy, wall=wall) as engine:
        engine.complete("hi", user="alice")
        with pytest.raises(BudgetExceeded, match=r"per user \(user=alice\)"):
            engine.complete("hi", user="alice")
        engine.complete("hi", user="bob")
        engine.complete("hi")  # no user: the per-user budget does not apply
        assert len(fake_server.requests) == 3


def test_budget_attributes_let_a_policy_degrade(fake_server: FakeServer, wall: Wall) -> None:
    fake_server.default = EXACT
    policy = """
set output_tokens = 100
budget daily $0.001
when budget.left < 50% use delta-tiny
otherwise use alpha-mini
"""
    with engine_for(fake_server, policy, wall=wall) as engine:
        req = engine.request("hi")
        assert req.attrs["budget.left"] == 1.0 and req.attrs["spend.today"] == 0.0
        models = [engine.complete("hi").model for _ in range(5)]
        assert models == ["alpha-mini"] * 4 + ["delta-tiny"]
        attrs = engine.request("hi").attrs
        assert attrs["spend.today"] == pytest.approx(4 * COST + 100 * 0.1e-6 + 1 * 0.05e-6)
        assert 0 < attrs["budget.left"] < 0.5


def test_no_budget_attributes_without_budgets(fake_server: FakeServer) -> None:
    with engine_for(fake_server, "otherwise use alpha-mini") as engine:
        assert "budget.left" not in engine.request("hi").attrs


def test_budget_warning_event(fake_server: FakeServer, wall: Wall) -> None:
    fake_server.default = EXACT
    with engine_for(fake_server, POLICY, wall=wall) as engine:
        seen: list[Event] = []
        engine.on_event(seen.append)
        engine.complete("hi")
        assert not [e for e in seen if e.kind == "budget_warning"]
        engine.complete("hi")  # 2 x 0.00015 = 60% of $0.0005 >= 50%
        engine.complete("hi")
        warnings = [e for e in seen if e.kind == "budget_warning"]
        assert len(warnings) == 1 and "budget daily" in warnings[0].message and warnings[0].data["limit"] == 0.0005


@pytest.mark.anyio
async def test_concurrent_requests_never_overspend(fake_server: FakeServer, wall: Wall) -> None:
    import anyio
    import httpx

    fake_server.default = Reply(text="ok", input_tokens=1, output_tokens=100, delay=0.05)
    policy = POLICY.replace("$0.0005", "$0.002")  # room for 13 requests of $0.0001505
    engine = engine_for(fake_server, policy, wall=wall, limits=httpx.Limits(max_connections=4))
    done: list[Any] = []
    refused: list[BudgetExceeded] = []

    async def one(i: int) -> None:
        try:
            done.append(await engine.acomplete("hi"))
        except BudgetExceeded as exc:
            refused.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(one, i)
    spent, reserved = engine.state.spent(f"daily:{bucket('daily', wall.t)}")
    assert len(done) + len(refused) == 40 and len(done) == 13
    assert spent <= 0.002 + 1e-12 and reserved == pytest.approx(0)
    assert spent == pytest.approx(sum(c.cost for c in done))
    assert len(fake_server.requests) == len(done)  # refused requests made no call
    await engine.aclose()


def test_budgets_unit(wall: Wall) -> None:
    from engine.runtime.state import MemoryStore

    class Spec:
        def __init__(self, period: str, limit: float, per: str | None = None) -> None:
            self.period, self.limit, self.per = period, limit, per
            self.span = type("Span", (), {"line": 1})()

    store = MemoryStore()
    book = Budgets(store, wall)
    specs = (Spec("daily", 10.0), Spec("daily", 5.0), Spec("monthly", 100.0, "team"))
    keys = {a.key: a.limit for a in book.applicable(specs, {"team": "red"})}
    assert keys == {"daily:2025-06-15": 5.0, "monthly:2025-06:team=red": 100.0}  # the tighter same-key limit
    res = book.reserve(specs, {"team": "red"}, 4.0)
    with pytest.raises(BudgetExceeded):
        book.reserve(specs, {"team": "red"}, 2.0)
    assert store.spent("monthly:2025-06:team=red") == (0.0, 4.0)  # the refused one held nothing
    book.settle(res, 3.0, 0.5)
    assert book.request_attrs(specs, {"team": "red"}) == {"spend.today": 3.0, "budget.left": pytest.approx(0.4)}


def test_a_stream_closed_unread_releases_its_hold(fake_server: FakeServer, wall: Wall) -> None:
    with engine_for(fake_server, POLICY, wall=wall) as engine:
        key = f"daily:{bucket('daily', wall.t)}"
        stream = engine.stream("hi")
        assert engine.state.spent(key)[1] == pytest.approx(COST)  # reserved at stream()
        stream.close()
        assert engine.state.spent(key) == (0.0, 0.0) and fake_server.requests == []
