"""Tests for time bounds (providers/execution/deadlines.py and their use in executor.py and streaming.py): an
upstream that paces its answer badly (one byte every 0.2 s, a stream that stalls) in, attempts cut at their
bound and the request served by the next plan model (or a RoutingError that says the deadline passed) out, on
the sync and async API and on the lean, httpx and mock transports; in-flight counts and budget holds back to
zero after every cut.

Timings are asserted with wide margins only (a 2-core machine under load): a cut attempt must end far sooner
than the trickled answer would (60 s and more), and never before its bound.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from providers.catalog.models import ProviderSpec
from providers.execution.resilience import RoutingError, StreamInterrupted
from tests.engines import Engines, called, engine_for, idle, outcomes, provider_specs, settled
from tests.fakeserver import FakeServer, Fault, Reply
from tests.waiting import await_until

TRICKLE = 0.2  # seconds per byte: an answer of ~300 bytes takes a minute, yet no read ever waits long
FAST_ENOUGH = 20.0  # a cut request ends well before this; the trickled answer takes 60 s and more
CHAIN = ["alpha-mini", "beta-chat", "gamma-flash"]  # one model per wire format: openai, anthropic, gemini


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make(fake_server: FakeServer) -> Iterator[Engines]:
    """engine_for() on the test's server without provider timeouts; closes every engine made."""
    engines = Engines(fake_server, provider_timeouts=False)
    yield engines
    engines.close()


def policy(*settings: str, rule: str = "otherwise use alpha-mini fallback beta-chat, gamma-flash") -> str:
    return "\n".join(["set retry.attempts = 0", "set retry.backoff = 10ms", *settings, rule]) + "\n"


# ---- a whole non-streamed attempt is bounded, connect to last byte ----------------------------------------------
@pytest.mark.parametrize("slow", CHAIN)
def test_a_trickled_answer_is_cut_at_timeout_and_the_next_model_answers(make, fake_server: FakeServer, slow) -> None:
    engine = make(policy("set timeout = 1s", rule=f"otherwise use {slow} fallback delta-tiny"))
    fake_server.always(slow, Fault.trickle(TRICKLE))
    t0 = time.monotonic()
    c = engine.complete("hello")
    elapsed = time.monotonic() - t0
    assert outcomes(c) == [(slow, "Timeout"), ("delta-tiny", "ok")] and c.text == "ok"
    assert c.attempts[0].message == "no complete answer within 1s"
    assert 0.9 <= elapsed < FAST_ENOUGH and c.attempts[0].latency_s >= 0.9
    assert idle(engine)


def test_each_retry_is_cut_too_and_the_calls_timeout_wins(make, fake_server: FakeServer) -> None:
    engine = make(policy("set timeout = 30s", "set retry.attempts = 1"))
    fake_server.always("alpha-mini", Fault.trickle(TRICKLE))
    t0 = time.monotonic()
    c = engine.complete("hello", timeout=0.5)  # the call's timeout= replaces the policy's 30 s
    elapsed = time.monotonic() - t0
    assert outcomes(c) == [("alpha-mini", "Timeout"), ("alpha-mini", "Timeout"), ("beta-chat", "ok")]
    assert 0.9 <= elapsed < FAST_ENOUGH
    assert engine.usage()["models"]["alpha-mini"]["failures"] == 2 and idle(engine)


def test_a_providers_own_timeout_s_bounds_the_whole_attempt(fake_server: FakeServer) -> None:
    own = {
        n: ProviderSpec(**{**s.model_dump(), "timeout_s": 0.5})
        for n, s in provider_specs(fake_server, timeout_s=None).items()
    }
    engine = engine_for(fake_server, policy("set timeout = 60s"), specs=own)
    try:
        fake_server.always("alpha-mini", Fault.trickle(TRICKLE))
        t0 = time.monotonic()
        c = engine.complete("hello")
        assert time.monotonic() - t0 < FAST_ENOUGH
        assert outcomes(c) == [("alpha-mini", "Timeout"), ("beta-chat", "ok")]
        assert c.attempts[0].message == "no complete answer within 0.5s"
    finally:
        engine.close()


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["lean", "httpx"])
async def test_the_async_api_on_each_transport(make, fake_server: FakeServer, transport: str) -> None:
    kw = {"async_transport": httpx.AsyncHTTPTransport()} if transport == "httpx" else {}
    engine = make(policy("set timeout = 1s", "budget daily $100"), **kw)
    fake_server.always("alpha-mini", Fault.trickle(TRICKLE))
    t0 = time.monotonic()
    c = await engine.acomplete("hello")
    elapsed = time.monotonic() - t0
    assert outcomes(c) == [("alpha-mini", "Timeout"), ("beta-chat", "ok")]
    assert 0.9 <= elapsed < FAST_ENOUGH
    assert idle(engine) and settled(engine) == (pytest.approx(c.cost), 0.0)
    await engine.aclose()


def test_the_sync_api_on_the_httpx_transport(make, fake_server: FakeServer) -> None:
    engine = make(policy("set timeout = 1s"), async_transport=httpx.AsyncHTTPTransport())
    fake_server.always("alpha-mini", Fault.trickle(TRICKLE))
    t0 = time.monotonic()
    c = engine.complete("hello")
    assert time.monotonic() - t0 < FAST_ENOUGH
    assert outcomes(c) == [("alpha-mini", "Timeout"), ("beta-chat", "ok")] and idle(engine)


def test_a_mock_transport_that_never_answers_is_cut_too(fake_server: FakeServer) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body["model"] == "alpha-mini":
            await asyncio.sleep(60)  # no socket at all: only the executor's bound can end this
        answer = {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "mocked"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        }
        return httpx.Response(200, json=answer)

    engine = engine_for(
        fake_server,
        policy("set timeout = 500ms", rule="otherwise use alpha-mini fallback delta-tiny"),
        specs=provider_specs(fake_server, timeout_s=None),
        async_transport=httpx.MockTransport(handler),
    )
    try:
        t0 = time.monotonic()
        c = engine.complete("hello")
        assert time.monotonic() - t0 < FAST_ENOUGH
        assert outcomes(c) == [("alpha-mini", "Timeout"), ("delta-tiny", "ok")] and c.text == "mocked"
        assert idle(engine)
    finally:
        engine.close()


# ---- streams: first token and idle gaps -------------------------------------------------------------------------
def test_a_stream_without_a_first_token_falls_back(make, fake_server: FakeServer) -> None:
    engine = make(policy("set timeout = 30s", "set stream.first_token_timeout = 500ms"))
    fake_server.always("alpha-mini", Fault.stall_stream(after=0, gap=60))  # the head, then nothing
    fake_server.script("beta-chat", Reply(text="from beta"))
    t0 = time.monotonic()
    stream = engine.stream("hello")
    assert stream.text() == "from beta"
    assert time.monotonic() - t0 < FAST_ENOUGH
    assert outcomes(stream) == [("alpha-mini", "Timeout"), ("beta-chat", "ok")]
    assert stream.attempts[0].message == "no first token within 0.5s" and idle(engine)


def test_a_trickled_stream_is_cut_at_the_attempt_timeout_before_its_first_token(make, fake_server) -> None:
    engine = make(policy("set timeout = 1s"))  # no stream.first_token_timeout: the attempt's timeout bounds it
    fake_server.always("alpha-mini", Fault.trickle(TRICKLE))  # its first token comes after ~100 bytes
    fake_server.always("beta-chat", Fault.trickle(TRICKLE))
    t0 = time.monotonic()
    stream = engine.stream("hello")
    assert stream.text() == "ok" and time.monotonic() - t0 < FAST_ENOUGH
    assert outcomes(stream) == [("alpha-mini", "Timeout"), ("beta-chat", "Timeout"), ("gamma-flash", "ok")]
    assert idle(engine)


def test_an_idle_gap_after_the_first_token_interrupts_the_stream(make, fake_server: FakeServer) -> None:
    engine = make(policy("set stream.idle_timeout = 500ms", "budget daily $100"))
    fake_server.always("alpha-mini", Fault.stall_stream(after=2, gap=60))  # the role chunk and one text piece
    texts = []
    t0 = time.monotonic()
    stream = engine.stream("hello")
    with pytest.raises(StreamInterrupted) as info:
        for event in stream:
            texts.append(event.text)
    assert time.monotonic() - t0 < FAST_ENOUGH
    assert "".join(texts) and "partial answer text".startswith("".join(texts))
    assert "no next chunk within 0.5s" in str(info.value)
    assert called(fake_server) == ["alpha-mini"]  # no retry and no fallback after the first token
    assert outcomes(stream) == [("alpha-mini", "Timeout")]
    assert idle(engine) and settled(engine) == (0.0, 0.0)


def test_an_idle_timeout_longer_than_the_attempt_timeout_is_honoured(make, fake_server: FakeServer) -> None:
    # the client's own read timeouts must not cut a gap the idle timeout allows
    engine = make(policy("set timeout = 400ms", "set stream.idle_timeout = 5s"))
    fake_server.always("alpha-mini", Fault.stall_stream(after=2, gap=1.2))
    stream = engine.stream("hello")
    assert stream.text() == "partial answer text"
    assert outcomes(stream) == [("alpha-mini", "ok")]


@pytest.mark.anyio
async def test_astream_is_bounded_too(make, fake_server: FakeServer) -> None:
    engine = make(policy("set stream.first_token_timeout = 500ms"))
    fake_server.always("alpha-mini", Fault.stall_stream(after=0, gap=60))
    stream = engine.astream("hello")
    text = "".join([e.text async for e in stream if e.kind == "delta"])
    assert text == "ok" and outcomes(stream) == [("alpha-mini", "Timeout"), ("beta-chat", "ok")]
    assert idle(engine)
    await engine.aclose()


# ---- the request's deadline ----------------------------------------------------------------------------------
def test_the_deadline_bounds_the_request_across_fallbacks(make, fake_server: FakeServer) -> None:
    engine = make(policy("set timeout = 1s", "set deadline = 1.5s", "budget daily $100"))
    for model in CHAIN:
        fake_server.always(model, Fault.trickle(TRICKLE))
    t0 = time.monotonic()
    with pytest.raises(RoutingError) as info:
        engine.complete("hello")
    elapsed = time.monotonic() - t0
    err = info.value
    assert err.deadline_passed and 1.4 <= elapsed < FAST_ENOUGH
    n = len(err.attempts)
    assert str(err).startswith(f"deadline of 1.5s passed after {n} attempt")
    assert outcomes(err)[0] == ("alpha-mini", "Timeout") and n <= 2
    assert all(a.error == "Timeout" for a in err.attempts)
    if n == 2:  # beta-chat had what was left of the deadline, not its own 1 s
        assert err.attempts[1].message == "no complete answer before the request's deadline of 1.5s passed"
    assert "gamma-flash" not in called(fake_server)  # no attempt starts after the deadline
    assert idle(engine) and settled(engine) == (0.0, 0.0)


def test_a_backoff_never_sleeps_past_the_deadline(make, fake_server: FakeServer) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    settings = ("set retry.attempts = 2", "set retry.backoff = 5s", "set retry.max_backoff = 5s", "set deadline = 2s")
    engine = make(policy(*settings), sleep=sleep)
    fake_server.always("alpha-mini", Fault.server_error(503))
    c = engine.complete("hello")
    assert slept == []  # a 2.5-5 s backoff does not fit in 2 s: the next model is tried at once
    assert outcomes(c) == [("alpha-mini", "ServerError"), ("beta-chat", "ok")] and c.attempts[0].wait_s == 0

    slept.clear()  # with room for it, the backoff is slept as usual
    engine = make(policy(*settings[:3], "set deadline = 30s"), sleep=sleep)
    fake_server.script("alpha-mini", [Fault.server_error(503), Reply(text="second try")])
    c = engine.complete("hello")
    assert c.text == "second try" and len(slept) == 1 and 2.5 <= slept[0] <= 5


def test_a_group_honours_the_deadline(make, fake_server: FakeServer) -> None:
    engine = make(policy("set deadline = 1s", rule="otherwise race [alpha-mini, beta-chat] fallback gamma-flash"))
    for model in CHAIN:
        fake_server.always(model, Fault.trickle(TRICKLE))
    t0 = time.monotonic()
    with pytest.raises(RoutingError) as info:
        engine.complete("hello")
    assert time.monotonic() - t0 < FAST_ENOUGH and info.value.deadline_passed
    assert sorted(outcomes(info.value)) == [("alpha-mini", "Timeout"), ("beta-chat", "Timeout")]
    assert "gamma-flash" not in called(fake_server) and idle(engine)


def test_a_stream_honours_the_deadline(make, fake_server: FakeServer) -> None:
    engine = make(policy("set deadline = 1s"))
    for model in CHAIN:
        fake_server.always(model, Fault.stall_stream(after=0, gap=60))
    stream = engine.stream("hello")
    t0 = time.monotonic()
    with pytest.raises(RoutingError) as info:
        stream.text()
    assert time.monotonic() - t0 < FAST_ENOUGH and info.value.deadline_passed
    assert outcomes(info.value) == [("alpha-mini", "Timeout")]
    assert "first token before the request's deadline of 1s passed" in info.value.attempts[0].message
    assert idle(engine)


# ---- a deadline per request --------------------------------------------------------------------------------------
def test_a_request_deadline_shortens_the_policys(make, fake_server: FakeServer) -> None:
    engine = make(policy("set deadline = 30s"))
    for model in CHAIN:
        fake_server.always(model, Fault.trickle(TRICKLE))
    t0 = time.monotonic()
    with pytest.raises(RoutingError) as info:
        engine.complete("hello", deadline=0.8)
    assert 0.7 <= time.monotonic() - t0 < FAST_ENOUGH
    assert info.value.deadline_passed and str(info.value).startswith("deadline of 0.8s passed after 1 attempt:")
    assert idle(engine)


@pytest.mark.anyio
async def test_a_request_deadline_never_lengthens_the_policys(make, fake_server: FakeServer) -> None:
    engine = make(policy("set deadline = 800ms"))
    for model in CHAIN:
        fake_server.always(model, Fault.trickle(TRICKLE))
    with pytest.raises(RoutingError) as info:
        await engine.acomplete("hello", deadline=30)
    assert str(info.value).startswith("deadline of 0.8s passed")
    assert idle(engine)
    await engine.aclose()


@pytest.mark.anyio
async def test_a_request_deadline_without_a_policy_deadline_bounds_astream(make, fake_server: FakeServer) -> None:
    engine = make(policy())
    for model in CHAIN:
        fake_server.always(model, Fault.stall_stream(after=0, gap=60))
    with pytest.raises(RoutingError) as info:
        async for _ in engine.astream("hello", deadline=0.6):
            pass
    assert info.value.deadline_passed and str(info.value).startswith("deadline of 0.6s passed")
    assert idle(engine)
    await engine.aclose()


@pytest.mark.parametrize("bad", [0, -1.5, "soon", True, math.nan, math.inf, [1]])
def test_an_unusable_deadline_is_refused_before_any_call(make, fake_server: FakeServer, bad: Any) -> None:
    engine = make(policy())
    for call in (engine.complete, engine.stream):
        with pytest.raises(ValueError, match=re.escape(f"greater than 0, not {bad!r}")):
            call("hello", deadline=bad)
    assert fake_server.requests == []


def test_prepare_reads_the_deadline_from_the_options(make) -> None:
    """The gateway hands the x-modelroute-deadline header's value over as options["deadline"] (text is read)."""
    engine = make(policy("set deadline = 5s"))
    ex = engine.executor
    t0 = time.monotonic()
    run = ex.prepare("hello", None, None, {"deadline": "1.25"}, {})
    assert run.deadline_s == 1.25 and t0 + 1.2 <= run.deadline <= time.monotonic() + 1.25
    assert ex.prepare("hello", None, None, {"deadline": 9}, {}).deadline_s == 5.0
    assert ex.prepare("hello", None, None, {}, {}).deadline_s == 5.0
    assert make(policy()).executor.prepare("hello", None, None, {}, {}).deadline is None


# ---- in flight and budgets after cancellation ------------------------------------------------------------------
@pytest.mark.anyio
async def test_a_cancelled_request_releases_its_slot_and_its_budget_hold(make, fake_server: FakeServer) -> None:
    engine = make(policy("budget daily $100"))
    fake_server.always("alpha-mini", Fault.trickle(TRICKLE))
    task = asyncio.ensure_future(engine.acomplete("hello"))
    await await_until(lambda: engine.state.in_flight("alpha-mini") == 1, "the call to be in flight")
    assert settled(engine)[1] > 0  # money is held while the call runs
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert idle(engine) and settled(engine) == (0.0, 0.0)
    await engine.aclose()


def test_a_race_winner_cancels_a_trickling_leg_and_frees_it(make, fake_server: FakeServer) -> None:
    engine = make(policy("budget daily $100", rule="otherwise race [alpha-mini, beta-chat]"))
    fake_server.always("alpha-mini", Fault.trickle(TRICKLE))
    c = engine.complete("hello")
    assert c.model == "beta-chat" and ("alpha-mini", "cancelled") in outcomes(c)
    assert idle(engine) and settled(engine) == (pytest.approx(c.cost), 0.0)
