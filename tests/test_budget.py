"""Tests for budgets (engine/runtime/budget.py, providers/execution/budget.py, holds.py, prepare.py and
Engine.request's budget attributes): policies with `budget` statements and requests in, refusals before any call,
recorded spend, warnings and degrade rules out; and, whatever fails where in a request, nothing left in flight or
held. The concurrent attacks on budgets are in tests/test_budget_attacks.py."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import pytest

from engine import Engine
from engine.runtime.budget import bucket
from providers.catalog.loader import load_catalog
from providers.catalog.models import Catalog, ModelSpec
from providers.clients.base import ProviderClient
from providers.execution.budget import BudgetExceeded, Budgets
from providers.execution.events import Event
from providers.execution.holds import UnknownPrice, UnsendableRequest
from providers.execution.resilience import RoutingError
from tests.engines import CATALOG, KINDS, TEST_KEY, engine_for, provider_specs
from tests.fakeserver import FakeServer, Fault, Reply

# alpha-mini: $0.50 / $1.50 per 1M. A 1-token prompt with 100 output tokens costs 0.5e-6 + 150e-6 = $0.0001505;
# its hold counts the prompt as the one user message sent (1 + 4 tokens of framing): $0.0001525.
COST = 0.0001505
HOLD = 5 * 0.5e-6 + 100 * 1.5e-6
POLICY = """
set output_tokens = 100
set budget.max_output_tokens = 100
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
        assert "budget daily $0.00" in msg and "refused before any call" in msg and "line 5" in msg
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
set budget.max_output_tokens = 100
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
        assert engine.state.spent(key)[1] == pytest.approx(HOLD)  # reserved at stream()
        stream.close()
        assert engine.state.spent(key) == (0.0, 0.0) and fake_server.requests == []


# ---- what a hold covers -------------------------------------------------------------------------------------
def test_max_tokens_is_derived_from_the_body_and_the_default_bound_is_sent(fake_server: FakeServer, wall: Wall) -> None:
    policy = "budget daily $10\notherwise use alpha-mini"
    with engine_for(fake_server, policy, wall=wall) as engine:
        ex = engine.executor
        run = ex.prepare("hi", None, None, {"max_tokens": None}, {"max_tokens": 1})
        assert "max_tokens" not in run.decision.request.attrs  # the caller's attribute is dropped
        assert run.decision.request.out_tokens == 500  # ranking keeps `output_tokens`
        assert run.chat.max_tokens == 4096  # a budget applies: budget.max_output_tokens is sent
        assert run.max_cost == pytest.approx(5 * 0.5e-6 + 4096 * 1.5e-6)
        ex.settle(run)
        run = ex.prepare("hi", None, None, {"max_tokens": 70}, {"max_tokens": 1})
        assert run.decision.request.attrs["max_tokens"] == 70 and run.chat.max_tokens == 70
        ex.settle(run)
        engine.complete("hi")
        assert fake_server.last().body["max_completion_tokens"] == 4096
    with engine_for(fake_server, "otherwise use alpha-mini") as engine:
        engine.complete("hi")  # no budget: no bound is imposed
        assert "max_completion_tokens" not in fake_server.last().body
        run = engine.executor.prepare("hi", None, None, {"budgeted": True}, {})  # a budget outside the policy
        assert run.chat.max_tokens == 4096 and run.reservation is None
        assert run.max_cost == pytest.approx(5 * 0.5e-6 + 4096 * 1.5e-6)


def test_a_caller_token_count_can_only_raise_the_hold(fake_server: FakeServer, wall: Wall) -> None:
    with engine_for(fake_server, "budget daily $10\notherwise use alpha-mini", wall=wall) as engine:
        ex = engine.executor
        low = ex.prepare("hello " * 400, None, None, {"max_tokens": 10}, {"tokens": 1})
        high = ex.prepare("hello", None, None, {"max_tokens": 10}, {"tokens": 100_000})
        assert low.decision.tokens == 1 and low.max_cost == pytest.approx((600 + 4) * 0.5e-6 + 10 * 1.5e-6)
        assert high.max_cost == pytest.approx(100_000 * 0.5e-6 + 10 * 1.5e-6)
        ex.settle(low)
        ex.settle(high)


def unpriced_engine(server: FakeServer, policy: str, wall: Wall) -> Engine:
    base = load_catalog(CATALOG)
    spec = base.models["alpha-mini"]
    unpriced = ModelSpec.model_construct(**{**dict(spec), "input_price": None, "output_price": None})
    catalog = Catalog([unpriced, *(m for n, m in base.models.items() if n != "alpha-mini")], base.providers)
    keys = {name: TEST_KEY for name in KINDS}
    return Engine.from_source(policy, catalog=catalog, providers=provider_specs(server), api_keys=keys, wall=wall)


def test_a_model_without_a_known_price_is_refused_under_a_budget(fake_server: FakeServer, wall: Wall) -> None:
    engine = unpriced_engine(fake_server, "budget daily $1\notherwise use alpha-mini", wall)
    with pytest.raises(UnknownPrice, match=r"alpha-mini has no known price.*budget.unknown_price_hold = \$X"):
        engine.complete("hi")
    assert fake_server.requests == [] and isinstance(UnknownPrice("m", []), BudgetExceeded)
    engine.close()
    held = "set budget.unknown_price_hold = $0.01\nbudget daily $1\notherwise use alpha-mini"
    engine = unpriced_engine(fake_server, held, wall)
    c = engine.complete("hi")
    assert c.cost == pytest.approx(0.01) and c.usage.estimated  # settled at the hold: never $0
    assert engine.state.spent(f"daily:{bucket('daily', wall.t)}") == (pytest.approx(0.01), 0.0)
    engine.close()
    engine = unpriced_engine(fake_server, "otherwise use alpha-mini", wall)  # no budget: nothing to hold
    assert engine.complete("hi").text == "ok"
    engine.close()


@pytest.mark.parametrize(
    ("request_kw", "what"),
    [
        ({"messages": [{"role": "user", "content": "lone \ud800 surrogate"}]}, "not valid Unicode"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"max": math.nan}}}]}, "JSON"),
        ({"extra": {"seed": object()}}, "cannot be sent as JSON"),
    ],
)
def test_a_request_that_cannot_be_serialised_is_refused_before_anything(
    fake_server: FakeServer, wall: Wall, request_kw: dict[str, Any], what: str
) -> None:
    with engine_for(fake_server, "budget daily $1\notherwise use alpha-mini", wall=wall) as engine:
        for call in (engine.complete, engine.stream):
            with pytest.raises(UnsendableRequest, match=what):
                call(None if "messages" in request_kw else "hi", **request_kw)
        assert fake_server.requests == [] and engine.state.spent(f"daily:{bucket('daily', wall.t)}") == (0.0, 0.0)


def test_the_client_builder_refuses_what_it_cannot_serialise_as_a_bad_request(
    fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("providers.execution.prepare.check_chat", lambda chat: "")  # only the client's check left
    with engine_for(fake_server, "otherwise use alpha-mini fallback beta-chat") as engine:
        for stream in (False, True):
            with pytest.raises(RoutingError) as info:
                if stream:
                    list(engine.stream("lone \ud800 surrogate"))
                else:
                    engine.complete("lone \ud800 surrogate")
            errors = [(a.error, a.outcome) for a in info.value.attempts]
            assert errors == [("BadRequest", "error")] * 2  # each provider refused it, no retry
            assert "cannot be serialised" in info.value.attempts[0].message
            assert all(engine.state.in_flight(m) == 0 for m in engine.policy.models)
            assert engine.state.circuit("alpha-mini").state == "closed"
        assert fake_server.requests == []


# ---- nothing leaks, whatever raises where ---------------------------------------------------------------------
LEAK_POLICY = """
set retry.attempts = 0
budget daily $1
budget hourly $1
otherwise use alpha-mini fallback beta-chat
"""
MODES = ("complete", "acomplete", "stream", "astream")


class Boom(BaseException):
    """Not an Exception: what a callback or a bug may raise past `except Exception`."""


def drive(engine: Engine, mode: str, prompt: str = "hi") -> BaseException | None:
    """One request in `mode`, read to its end; the error it raised, if any."""
    try:
        if mode == "complete":
            engine.complete(prompt)
        elif mode == "stream":
            for _ in engine.stream(prompt):
                pass
        else:

            async def go() -> None:
                try:
                    if mode == "acomplete":
                        await engine.acomplete(prompt)
                    else:
                        async for _ in engine.astream(prompt):
                            pass
                finally:
                    await engine.aclose()

            asyncio.run(go())
    except BaseException as exc:  # every failure is what the test looks at
        return exc
    return None


def _raise(error: BaseException) -> Callable[..., Any]:
    def raising(*args: Any, **kwargs: Any) -> Any:
        raise error

    return raising


def _once(real: Callable[..., Any], error: BaseException, *, at: int = 1) -> Callable[..., Any]:
    calls = [0]

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == at:
            raise error
        return real(*args, **kwargs)

    return flaky


def _inject(stage: str, engine: Engine, server: FakeServer, mp: pytest.MonkeyPatch) -> tuple[str, Callable[[], Any]]:
    """Make `stage` of the next request fail (patches are undone with `mp`); (the prompt to send, an undo)."""
    ex, state = engine.executor, engine.state
    prompt, undo = "hi", (lambda: None)
    if stage == "decide":
        mp.setattr(engine, "decide", _raise(RuntimeError("decide broke")))
    elif stage == "reservation":  # the second budget's hold fails after the first was taken
        mp.setattr(state, "reserve", _once(state.reserve, RuntimeError("store down"), at=2))
    elif stage == "client build":
        mp.setattr(ex, "client", _raise(RuntimeError("no client")))
    elif stage == "serialisation":  # past prepare's own check: the client's request builder fails
        mp.setattr("providers.execution.prepare.check_chat", lambda chat: "")
        prompt = "lone \ud800 surrogate"
    elif stage == "builder bug":
        mp.setattr(ProviderClient, "request_parts", _raise(RuntimeError("builder bug")))
    elif stage == "http":
        mp.setattr(server, "_always", {"alpha-mini": Fault.reset(), "beta-chat": Fault.reset()})
    elif stage == "http bug":
        mp.setattr(ProviderClient, "achat", _raise(RuntimeError("transport bug")))
        mp.setattr(ProviderClient, "astream", _raise(RuntimeError("transport bug")))
    elif stage == "parsing":
        mp.setattr(server, "_always", {"alpha-mini": Fault.malformed(), "beta-chat": Fault.cut_stream(after=1)})
    elif stage == "parsing bug":
        mp.setattr(ProviderClient, "_response", _raise(RuntimeError("parser bug")))
    elif stage == "usage accounting":
        mp.setattr(state, "record", _raise(RuntimeError("stats store down")))
    elif stage == "metering":
        mp.setattr("providers.execution.attempts.meter", _raise(RuntimeError("meter broke")))
    elif stage == "settlement":  # the store fails once: the settlement is retried
        mp.setattr(state, "settle", _once(state.settle, RuntimeError("store blip")))
    elif stage == "callback calls the sync API":  # refused on the loop thread: its hold must not stay

        def nested(event: Event) -> None:
            if event.kind == "attempt_started" and event.data.get("retry") == 0 and event.model == "alpha-mini":
                engine.complete("nested")

        undo = engine.on_event(nested)
    elif stage.startswith("callback"):
        kind = {"callback": None, "callback BaseException": "attempt_started"}.get(stage, "attempt_succeeded")
        error: BaseException = RuntimeError("observer broke") if kind is None else Boom()

        def observer(event: Event) -> None:
            if kind is None or event.kind == kind:
                raise error

        undo = engine.on_event(observer)
    else:
        raise AssertionError(stage)
    return prompt, undo


STAGES = (
    "decide",
    "reservation",
    "client build",
    "serialisation",
    "builder bug",
    "http",
    "http bug",
    "parsing",
    "parsing bug",
    "usage accounting",
    "metering",
    "settlement",
    "callback",
    "callback BaseException",
    "callback after the answer",
    "callback calls the sync API",
)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stage", STAGES)
def test_nothing_stays_in_flight_or_held_whatever_fails_where(
    fake_server: FakeServer, wall: Wall, monkeypatch: pytest.MonkeyPatch, stage: str, mode: str
) -> None:
    fake_server.default = Reply(text="ok", input_tokens=3, output_tokens=4)
    engine = engine_for(fake_server, LEAK_POLICY, wall=wall)
    keys = [f"daily:{bucket('daily', wall.t)}", f"hourly:{bucket('hourly', wall.t)}"]
    try:
        with monkeypatch.context() as mp:
            prompt, undo = _inject(stage, engine, fake_server, mp)
            error = drive(engine, mode, prompt)
            undo()
        if stage in ("callback", "settlement", "callback calls the sync API"):
            assert error is None  # an observer's Exception is logged; a store that failed once is retried
        else:
            assert error is not None
        leaks = [f"{m} in flight" for m in engine.policy.models if engine.state.in_flight(m) != 0]
        leaks += [f"{k} held ${engine.state.spent(k)[1]}" for k in keys if abs(engine.state.spent(k)[1]) > 1e-12]
        assert leaks == [], (stage, mode, repr(error))
        assert engine.complete("hi").text == "ok"  # and the engine still works
    finally:
        engine.close()
