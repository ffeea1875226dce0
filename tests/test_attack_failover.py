"""Attacks on issue 13's execution guarantees (providers/execution/, engine/runtime/plan.py): edges the other
failover and deadline tests leave open, against the loopback FakeServer. Deadlines with race / consensus /
best_of (the judge included), streams cut on each wire format and both async transports (an upstream that
trickles bytes, one that sends its head and then nothing), deadlines at their edges (1 ms, huge, shorter than a
backoff), in-flight counts and budget holds after every way a request can end early (a deadline mid-stream, a
sync stream abandoned half-way, a cancelled task), the half-open probe (timed out, cancelled, cut by the
deadline, claimed by two engines over one store) and the failover plan as executed (`prefer least_busy`, a
fallback that is also ranked, retry-then-failover order, `failover.depth = 0`, stand-ins for long prompts).

Timings are asserted with wide margins only: a cut request must end far sooner than its trickled answer would.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from engine import NoRouteError
from engine.runtime.state import CircuitConfig, MemoryStore
from providers.execution.resilience import RoutingError, StreamInterrupted
from tests.engines import Engines, called, engine_for, idle, outcomes, provider_specs
from tests.fakeserver import Behaviour, Ctx, FakeServer, Fault, Handler, Reply, _render_json, _render_stream
from tests.waiting import await_until, wait_until

TRICKLE = 0.2  # seconds per byte: a trickled answer takes a minute and more, yet no read ever waits long
FAST_ENOUGH = 20.0  # a cut request ends well before this
CHAIN = ["alpha-mini", "beta-chat", "gamma-flash"]  # one model per wire format: openai, anthropic, gemini
PROVIDER = {"alpha-mini": "acme", "beta-chat": "betacorp", "gamma-flash": "gammalabs", "delta-tiny": "deltaio"}
#: SSE events of Reply(text="partial answer text", chunks=6) up to and including the first text delta, per format
#: (openai: the role chunk, then text; anthropic: message_start, content_block_start, ping, then text; gemini: text)
FIRST_TOKEN_EVENTS = {"alpha-mini": 2, "beta-chat": 4, "gamma-flash": 1}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


# ---- scripted upstream behaviours the FakeServer does not have -------------------------------------------------
@dataclass
class TrickleAfter(Behaviour):
    """A stream that sends its first `after` SSE events at once, then the rest one byte every `interval` seconds:
    after its first token no further event is ever complete for long, yet no socket read waits long."""

    after: int
    interval: float = TRICKLE
    reply: Reply = field(default_factory=lambda: Reply(text="partial answer text", chunks=6))

    def run(self, h: Handler, ctx: Ctx) -> None:
        if not ctx.stream:
            h.drop(True)
            return
        h.start_stream()
        events = list(_render_stream(ctx, self.reply))
        for event in events[: self.after]:
            h.write_chunk(event)
        rest = b"".join(events[self.after :])
        for i in range(len(rest)):
            if h.server.stopping.wait(self.interval):
                h.close_connection = True
                return
            h.write_chunk(rest[i : i + 1])
        h.end_stream()


@dataclass
class HeadThenNothing(Behaviour):
    """A 200 head with a Content-Length, then not one byte of the body for `seconds`."""

    seconds: float = 60.0

    def run(self, h: Handler, ctx: Ctx) -> None:
        body = json.dumps(_render_json(ctx, Reply())).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.server.stopping.wait(self.seconds)
        h.close_connection = True


# ---- helpers --------------------------------------------------------------------------------------------------
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


def held(engine: Any) -> float:
    """Money still reserved today (0 once every request has settled)."""
    return engine.state.spent(engine.budget_book.day_key())[1]


def transport_kw(transport: str) -> dict[str, Any]:
    return {"async_transport": httpx.AsyncHTTPTransport()} if transport == "httpx" else {}


# ---- deadlines and groups ---------------------------------------------------------------------------------------
def test_a_trickling_judge_is_cut_at_the_deadline_and_the_first_answer_wins(make, fake_server: FakeServer) -> None:
    rule = "otherwise best_of [alpha-mini, beta-chat] judge gamma-long"
    engine = make(policy("set timeout = 30s", "set deadline = 1500ms", "budget daily $100", rule=rule))
    fake_server.always("alpha-mini", Reply(text="first answer"))
    fake_server.always("beta-chat", Reply(text="second answer"))
    fake_server.always("gamma-long", Fault.trickle(TRICKLE))
    t0 = time.monotonic()
    c = engine.complete("hello")
    elapsed = time.monotonic() - t0
    assert 1.3 <= elapsed < FAST_ENOUGH  # the judge had what was left of 1.5 s, not its 30 s timeout
    assert (c.model, c.text, c.judge) == ("alpha-mini", "first answer", None)
    judge = [a for a in c.attempts if a.model == "gamma-long"]
    assert [(a.error, a.retry) for a in judge] == [("Timeout", 0)]
    assert "before the request's deadline of 1.5s passed" in judge[0].message
    assert idle(engine) and held(engine) == 0.0


def test_best_of_members_cut_by_the_deadline_never_reach_the_judge(make, fake_server: FakeServer) -> None:
    rule = "otherwise best_of [alpha-mini, beta-chat] judge gamma-long fallback gamma-flash"
    engine = make(policy("set deadline = 1s", rule=rule))
    for model in ("alpha-mini", "beta-chat", "gamma-flash"):
        fake_server.always(model, Fault.trickle(TRICKLE))
    t0 = time.monotonic()
    with pytest.raises(RoutingError) as info:
        engine.complete("hello")
    assert time.monotonic() - t0 < FAST_ENOUGH
    assert info.value.deadline_passed
    assert sorted(outcomes(info.value)) == [("alpha-mini", "Timeout"), ("beta-chat", "Timeout")]
    assert "gamma-long" not in called(fake_server) and "gamma-flash" not in called(fake_server)
    assert idle(engine)


def test_a_consensus_does_not_wait_for_a_trickling_member_past_the_deadline(make, fake_server: FakeServer) -> None:
    rule = "otherwise consensus [alpha-mini, beta-chat, gamma-flash] min_agreement 2"
    engine = make(policy("set timeout = 30s", "set deadline = 1s", rule=rule))
    fake_server.always("alpha-mini", Reply(text="Paris"))
    fake_server.always("beta-chat", Reply(text="paris."))
    fake_server.always("gamma-flash", Fault.trickle(TRICKLE))
    t0 = time.monotonic()
    c = engine.complete("capital of France?")
    assert time.monotonic() - t0 < FAST_ENOUGH
    assert c.agreement == 1.0 and c.answers == {"alpha-mini": "Paris", "beta-chat": "paris."}
    assert ("gamma-flash", "Timeout") in outcomes(c) and idle(engine)


def test_a_consensus_with_no_answer_before_the_deadline_says_the_deadline_passed(make, fake_server) -> None:
    rule = "otherwise consensus [alpha-mini, beta-chat, gamma-flash] min_agreement 2"
    engine = make(policy("set timeout = 30s", "set deadline = 1s", rule=rule))
    for model in CHAIN:
        fake_server.always(model, Fault.trickle(TRICKLE))
    with pytest.raises(RoutingError) as info:
        engine.complete("hello")
    assert idle(engine)
    assert info.value.deadline_passed, str(info.value)


def test_a_streamed_race_honours_the_deadline(make, fake_server: FakeServer) -> None:
    engine = make(policy("set deadline = 1s", rule="otherwise race [alpha-mini, beta-chat] fallback gamma-flash"))
    for model in CHAIN:
        fake_server.always(model, Fault.stall_stream(after=0, gap=60))
    stream = engine.stream("hello")
    t0 = time.monotonic()
    with pytest.raises(RoutingError) as info:
        stream.text()
    assert time.monotonic() - t0 < FAST_ENOUGH and info.value.deadline_passed
    assert "gamma-flash" not in called(fake_server) and idle(engine)


# ---- streams on each wire format and both async transports -----------------------------------------------------
@pytest.mark.parametrize("transport", ["lean", "httpx"])
@pytest.mark.parametrize("slow", CHAIN)
def test_a_stream_trickling_before_its_first_token_is_cut_by_first_token_timeout(
    make, fake_server: FakeServer, slow: str, transport: str
) -> None:
    settings = ("set timeout = 30s", "set stream.first_token_timeout = 600ms")
    engine = make(policy(*settings, rule=f"otherwise use {slow} fallback delta-tiny"), **transport_kw(transport))
    fake_server.always(slow, Fault.trickle(TRICKLE))  # bytes keep coming, a whole event never does
    t0 = time.monotonic()
    stream = engine.stream("hello")
    assert stream.text() == "ok"
    assert time.monotonic() - t0 < FAST_ENOUGH
    assert outcomes(stream) == [(slow, "Timeout"), ("delta-tiny", "ok")]
    assert stream.attempts[0].message == "no first token within 0.6s" and stream.attempts[0].latency_s >= 0.5
    assert idle(engine)


@pytest.mark.parametrize("transport", ["lean", "httpx"])
@pytest.mark.parametrize("slow", CHAIN)
def test_a_stream_trickling_after_its_first_token_is_cut_by_idle_timeout(
    make, fake_server: FakeServer, slow: str, transport: str
) -> None:
    settings = ("set timeout = 30s", "set stream.idle_timeout = 500ms", "budget daily $100")
    engine = make(policy(*settings, rule=f"otherwise use {slow} fallback delta-tiny"), **transport_kw(transport))
    fake_server.script(slow, TrickleAfter(FIRST_TOKEN_EVENTS[slow]))
    texts: list[str] = []
    t0 = time.monotonic()
    stream = engine.stream("hello")
    with pytest.raises(StreamInterrupted) as info:
        for event in stream:
            if event.kind == "delta":
                texts.append(event.text)
    assert time.monotonic() - t0 < FAST_ENOUGH
    assert texts and "partial answer text".startswith("".join(texts))
    assert "no next chunk within 0.5s" in str(info.value)
    assert called(fake_server) == [slow] and outcomes(stream) == [(slow, "Timeout")]
    assert idle(engine) and held(engine) == 0.0
    fake_server.script(slow, Reply(text="fresh answer"))  # the next stream of the same model is whole
    again = engine.stream("again")
    assert again.text() == "fresh answer" and outcomes(again) == [(slow, "ok")]


@pytest.mark.parametrize("transport", ["lean", "httpx"])
@pytest.mark.parametrize("slow", CHAIN)
def test_an_answer_whose_head_comes_but_never_its_body_is_cut_at_timeout(
    make, fake_server: FakeServer, slow: str, transport: str
) -> None:
    engine = make(
        policy("set timeout = 600ms", rule=f"otherwise use {slow} fallback delta-tiny"), **transport_kw(transport)
    )
    fake_server.script(slow, HeadThenNothing())
    t0 = time.monotonic()
    c = engine.complete("hello")
    assert time.monotonic() - t0 < FAST_ENOUGH
    assert outcomes(c) == [(slow, "Timeout"), ("delta-tiny", "ok")] and idle(engine)
    fake_server.script(slow, Reply(text="fresh answer"))  # the cut connection, body unread, is not reused
    c = engine.complete("again")
    assert (c.model, c.text) == (slow, "fresh answer") and outcomes(c) == [(slow, "ok")]


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["lean", "httpx"])
async def test_astream_whose_head_comes_but_no_event_falls_back(make, fake_server: FakeServer, transport: str) -> None:
    engine = make(policy("set timeout = 30s", "set stream.first_token_timeout = 500ms"), **transport_kw(transport))
    fake_server.always("alpha-mini", Fault.stall_stream(after=0, gap=60))  # the head, then nothing
    fake_server.always("beta-chat", Fault.stall_stream(after=1, gap=60))  # message_start, then nothing
    t0 = time.monotonic()
    text = "".join([e.text async for e in engine.astream("hello") if e.kind == "delta"])
    assert text == "ok" and time.monotonic() - t0 < FAST_ENOUGH
    assert called(fake_server) == CHAIN and idle(engine)
    await engine.aclose()


# ---- deadlines at their edges ------------------------------------------------------------------------------------
def test_a_one_millisecond_deadline_ends_every_api_at_once(make, fake_server: FakeServer) -> None:
    engine = make(policy("budget daily $100"))
    fake_server.default = Fault.hang(30)
    for run in (
        lambda: engine.complete("hello", deadline=0.001),
        lambda: engine.stream("hello", deadline=0.001).text(),
    ):
        t0 = time.monotonic()
        with pytest.raises(RoutingError) as info:
            run()
        assert time.monotonic() - t0 < FAST_ENOUGH
        assert info.value.deadline_passed and str(info.value).startswith("deadline of 0.001s passed after")
        assert all(a.error == "Timeout" for a in info.value.attempts)
    assert idle(engine) and held(engine) == 0.0


@pytest.mark.anyio
async def test_a_one_millisecond_deadline_ends_the_async_apis_at_once(make, fake_server: FakeServer) -> None:
    engine = make(policy("budget daily $100"))
    fake_server.default = Fault.hang(30)
    with pytest.raises(RoutingError) as info:
        await engine.acomplete("hello", deadline=0.001)
    assert info.value.deadline_passed
    with pytest.raises(RoutingError) as info:
        async for _ in engine.astream("hello", deadline=0.001):
            pass
    assert info.value.deadline_passed
    assert idle(engine) and held(engine) == 0.0
    await engine.aclose()


def test_a_huge_float_deadline_changes_nothing(make, fake_server: FakeServer) -> None:
    engine = make(policy())
    assert engine.complete("hello", deadline=1e300).text == "ok"
    assert engine.stream("hello", deadline=1e300).text() == "ok"


def test_a_huge_integer_deadline_is_accepted_or_refused_with_value_error(make, fake_server: FakeServer) -> None:
    engine = make(policy())
    try:
        text = engine.complete("hello", deadline=10**400)
    except ValueError:
        return
    assert text.text == "ok"


def test_a_stream_skips_a_backoff_longer_than_the_time_left(make, fake_server: FakeServer) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    settings = ("set retry.attempts = 2", "set retry.backoff = 5s", "set retry.max_backoff = 10s", "set deadline = 3s")
    engine = make(policy(*settings), sleep=sleep)
    fake_server.script("alpha-mini", Fault.rate_limited(retry_after=8))  # Retry-After 8 s > the 3 s left
    stream = engine.stream("hello")
    assert stream.text() == "ok"
    assert slept == [] and outcomes(stream) == [("alpha-mini", "RateLimited"), ("beta-chat", "ok")]
    assert stream.attempts[0].wait_s == 0


# ---- in flight and budget holds after every early end -------------------------------------------------------------
def test_a_sync_stream_abandoned_half_way_releases_its_slot_and_hold(make, fake_server: FakeServer) -> None:
    engine = make(policy("budget daily $100"))
    fake_server.script("alpha-mini", Reply(text="a b c d e f g h", chunks=8, chunk_delay=0.3))
    got = []
    for event in engine.stream("hello"):
        if event.kind == "delta" and event.text:
            got.append(event.text)
            break  # the caller walks away; the stream object is dropped with the loop
    assert got
    wait_until(lambda: idle(engine), "the abandoned stream's in-flight slot to be released")
    assert held(engine) == 0.0
    assert engine.complete("again").text == "ok" and idle(engine)


def test_a_sync_stream_closed_half_way_records_the_attempt_as_cancelled(make, fake_server: FakeServer) -> None:
    engine = make(policy("budget daily $100"))
    fake_server.script("alpha-mini", Reply(text="a b c d e f g h", chunks=8, chunk_delay=0.3))
    with engine.stream("hello") as stream:
        for event in stream:
            if event.kind == "delta" and event.text:
                break
    wait_until(lambda: idle(engine), "the closed stream's in-flight slot to be released")
    assert held(engine) == 0.0
    wait_until(lambda: outcomes(stream) == [("alpha-mini", "cancelled")], "the attempt to be recorded as cancelled")


@pytest.mark.anyio
async def test_a_task_cancelled_mid_astream_releases_its_slot_and_hold(make, fake_server: FakeServer) -> None:
    engine = make(policy("budget daily $100"))
    fake_server.script("alpha-mini", Reply(text="a b c d e f g h", chunks=8, chunk_delay=0.3))
    first = asyncio.Event()
    stream = engine.astream("hello")  # kept referenced (see the next test for why)

    async def consume() -> None:
        async for event in stream:
            if event.kind == "delta" and event.text:
                first.set()

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(first.wait(), 10)
    assert engine.state.in_flight("alpha-mini") == 1 and held(engine) > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await await_until(lambda: idle(engine), "the cancelled stream's slot to be released")
    assert held(engine) == 0.0 and outcomes(stream) == [("alpha-mini", "cancelled")]
    await engine.aclose()


@pytest.mark.anyio
async def test_async_for_over_astream_holds_the_budget_and_records_the_spend(make, fake_server: FakeServer) -> None:
    engine = make(policy("budget daily $100"))
    big = Reply(text="a b c", chunks=3, chunk_delay=0.1, input_tokens=100_000, output_tokens=100_000)
    fake_server.script("alpha-mini", big)
    during = []
    async for event in engine.astream("hello"):  # the idiom docs/execution.md shows
        if event.kind == "delta":
            during.append(held(engine))
    spent, reserved = engine.state.spent(engine.budget_book.day_key())
    await engine.aclose()
    assert reserved == 0.0
    assert spent == pytest.approx(100_000 * 0.5e-6 + 100_000 * 1.5e-6)  # alpha-mini: $0.50 / $1.50 per 1M
    assert during and all(h > 0 for h in during)


def test_a_deadline_that_passes_mid_stream_interrupts_it_and_frees_everything(make, fake_server) -> None:
    engine = make(policy("set deadline = 1s", "budget daily $100"))
    fake_server.always("alpha-mini", Fault.stall_stream(after=2, gap=60))  # the role chunk and one text piece
    texts = []
    t0 = time.monotonic()
    stream = engine.stream("hello")
    with pytest.raises(StreamInterrupted) as info:
        for event in stream:
            texts.append(event.text)
    assert time.monotonic() - t0 < FAST_ENOUGH and "".join(texts)
    assert "before the request's deadline of 1s passed" in str(info.value)
    assert called(fake_server) == ["alpha-mini"] and idle(engine) and held(engine) == 0.0


@pytest.mark.anyio
async def test_a_task_cancelled_during_a_retry_backoff_stops_retrying(make, fake_server: FakeServer) -> None:
    engine = make(
        policy("set retry.attempts = 3", "set retry.backoff = 5s", "set retry.max_backoff = 5s", "budget daily $100")
    )
    fake_server.always("alpha-mini", Fault.server_error(503))
    seen = []
    engine.on_event(seen.append)
    task = asyncio.ensure_future(engine.acomplete("hello"))
    await await_until(lambda: any(e.kind == "retry" for e in seen), "the first failure to schedule a retry")
    assert idle(engine) and held(engine) > 0  # the failed call is released; the money is held while it sleeps
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert held(engine) == 0.0 and idle(engine) and called(fake_server) == ["alpha-mini"]
    await engine.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "rule",
    [
        "otherwise consensus [alpha-mini, beta-chat, gamma-flash] min_agreement 2",
        "otherwise race [alpha-mini, beta-chat, gamma-flash]",
        "otherwise best_of [alpha-mini, beta-chat, gamma-flash] judge gamma-long",
    ],
    ids=["consensus", "race", "best_of"],
)
async def test_a_cancelled_group_releases_every_leg(make, fake_server: FakeServer, rule: str) -> None:
    engine = make(policy("budget daily $100", rule=rule))
    gate = threading.Event()
    for model in CHAIN:
        fake_server.always(model, Fault.held(gate))
    task = asyncio.ensure_future(engine.acomplete("hello"))
    try:
        await await_until(lambda: all(engine.state.in_flight(m) == 1 for m in CHAIN), "every leg to be in flight")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert idle(engine) and held(engine) == 0.0
        stats = engine.state.stats()
        assert all(stats.get(m) is None or stats[m].failures == 0 for m in CHAIN)  # cancelled legs are not failures
    finally:
        gate.set()
    await engine.aclose()


@pytest.mark.anyio
async def test_a_task_cancelled_while_the_judge_runs_releases_it(make, fake_server: FakeServer) -> None:
    engine = make(policy("budget daily $100", rule="otherwise best_of [alpha-mini, beta-chat] judge gamma-long"))
    gate = threading.Event()
    fake_server.always("gamma-long", Fault.held(gate, Reply(text='{"scores": [1, 9], "reasoning": "b"}')))
    task = asyncio.ensure_future(engine.acomplete("hello"))
    try:
        await await_until(lambda: engine.state.in_flight("gamma-long") == 1, "the judge to be in flight")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert idle(engine) and held(engine) == 0.0
    finally:
        gate.set()
    await engine.aclose()


# ---- the half-open probe ---------------------------------------------------------------------------------------
PROBE = """
set retry.attempts = 2
set retry.backoff = 10ms
set circuit.failures = 1
set circuit.cooldown = 60s
"""
PROBE_RULE = "otherwise use alpha-mini fallback beta-chat\n"
OPEN = CircuitConfig(failures=1, window=60.0, cooldown=60.0)


def open_circuits(state: Any, *models: str) -> None:
    """Open each model's circuit, in order (the first is the one opened longest ago)."""
    for model in models:
        assert state.record(model, PROVIDER[model], "fail", OPEN) == "opened"
        time.sleep(0.01)


def test_a_probe_that_times_out_reopens_the_circuit_and_the_next_probe_goes_elsewhere(make, fake_server) -> None:
    engine = make(PROBE + "set timeout = 500ms\n" + PROBE_RULE)
    open_circuits(engine.state, "alpha-mini", "beta-chat")
    before = engine.state.circuit("alpha-mini").until
    fake_server.script("alpha-mini", Fault.hang(30))
    with pytest.raises(RoutingError) as info:
        engine.complete("hello")
    assert outcomes(info.value) == [("alpha-mini", "Timeout"), ("beta-chat", "CircuitOpen")]
    assert called(fake_server) == ["alpha-mini"]  # the probe is one try: no retry of a timed-out probe
    after = engine.state.circuit("alpha-mini")
    assert after.state == "open" and after.until > before  # a new cooldown
    assert idle(engine)
    d = engine.decide("hello")  # beta-chat has now been open longest: it is the next probe
    assert d.probe == "beta-chat" and d.chain == ["beta-chat", "alpha-mini"]
    c = engine.complete("hello")
    assert (c.model, outcomes(c)) == ("beta-chat", [("beta-chat", "ok")])


@pytest.mark.anyio
async def test_a_cancelled_probe_lets_the_next_request_probe(make, fake_server: FakeServer) -> None:
    engine = make(PROBE + PROBE_RULE)
    open_circuits(engine.state, "alpha-mini", "beta-chat")
    gate = threading.Event()
    fake_server.script("alpha-mini", Fault.held(gate))
    task = asyncio.ensure_future(engine.acomplete("hello"))
    try:
        await await_until(lambda: engine.state.in_flight("alpha-mini") == 1, "the probe to be in flight")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        gate.set()
    assert idle(engine)
    c = await engine.acomplete("hello")  # the probe claim was released: this request may probe
    assert (c.model, outcomes(c)) == ("alpha-mini", [("alpha-mini", "ok")])
    assert engine.state.circuit("alpha-mini").state == "closed"
    await engine.aclose()


def test_a_probe_cut_by_the_deadline_does_not_stick_as_already_running(make, fake_server: FakeServer) -> None:
    engine = make(PROBE + PROBE_RULE)
    open_circuits(engine.state, "alpha-mini", "beta-chat")
    fake_server.script("alpha-mini", Fault.hang(30))
    with pytest.raises(RoutingError) as info:
        engine.complete("hello", deadline=0.5)
    assert info.value.deadline_passed and outcomes(info.value)[0] == ("alpha-mini", "Timeout")
    assert idle(engine)
    c = engine.complete("hello")  # not the model's fault: the next request can still reach alpha-mini
    assert c.model == "alpha-mini" and outcomes(c) == [("alpha-mini", "ok")]


def test_two_engines_on_one_store_claim_the_probe_once(fake_server: FakeServer) -> None:
    store = MemoryStore()
    engines = [
        engine_for(fake_server, PROBE + PROBE_RULE, specs=provider_specs(fake_server, timeout_s=None), state=store)
        for _ in range(2)
    ]
    try:
        open_circuits(store, "alpha-mini", "beta-chat")
        gate = threading.Event()
        fake_server.always("alpha-mini", Fault.held(gate, Reply(text="probe answered")))
        results: list[Any] = [None, None]

        def call(i: int) -> None:
            try:
                results[i] = engines[i].complete("hello")
            except RoutingError as err:
                results[i] = err

        threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(2)]
        try:
            for t in threads:
                t.start()
            fake_server.wait_for_requests(1)
            wait_until(lambda: any(isinstance(r, RoutingError) for r in results), "the second request to give up")
            assert len(fake_server.requests) == 1
        finally:
            gate.set()
            for t in threads:
                t.join(30)
        errors = [r for r in results if isinstance(r, RoutingError)]
        answers = [r for r in results if not isinstance(r, RoutingError)]
        assert len(errors) == 1 and len(answers) == 1 and answers[0].text == "probe answered"
        assert errors[0].attempts[0].message == "a half-open probe of alpha-mini is already running"
        assert called(fake_server) == ["alpha-mini"] and store.circuit("alpha-mini").state == "closed"
        assert store.in_flight("alpha-mini") == 0
    finally:
        for e in engines:
            e.close()


@pytest.mark.anyio
async def test_only_the_probe_decides_a_half_open_circuit(make, fake_server: FakeServer) -> None:
    engine = make(PROBE + PROBE_RULE)
    stale, probe = threading.Event(), threading.Event()
    fake_server.script("alpha-mini", Fault.held(stale, Fault.server_error(503)))  # started while closed
    fake_server.script("alpha-mini", Fault.held(probe, Reply(text="probe answered")))
    old = asyncio.ensure_future(engine.acomplete("hello"))
    try:
        await await_until(lambda: len(fake_server.requests) == 1, "the old call to reach the server")
        open_circuits(engine.state, "alpha-mini", "beta-chat")  # other requests' failures open both circuits
        new = asyncio.ensure_future(engine.acomplete("hello"))
        await await_until(lambda: len(fake_server.requests) == 2, "the probe to reach the server")
        stale.set()  # the old call fails while the probe runs
        with pytest.raises(RoutingError):
            await old
        probe.set()
        c = await new
    finally:
        stale.set()
        probe.set()
    assert (c.decision.probe, c.text) == ("alpha-mini", "probe answered")
    assert idle(engine)
    await engine.aclose()
    assert engine.state.circuit("alpha-mini").state == "closed"  # the probe succeeded


def test_when_all_open_fail_refuses_streams_and_groups_before_any_call(make, fake_server: FakeServer) -> None:
    engine = make(PROBE + "set circuit.when_all_open = fail\notherwise race [alpha-mini, beta-chat]\n")
    open_circuits(engine.state, "alpha-mini", "beta-chat")
    for call in (lambda: engine.complete("hello"), lambda: engine.stream("hello")):
        with pytest.raises(NoRouteError) as info:
            call()
        assert info.value.unavailable == frozenset({"alpha-mini", "beta-chat"})
        assert info.value.retry_after is not None and 0 < info.value.retry_after <= 60
    assert fake_server.requests == []


def test_retry_after_counts_a_pool_model_beyond_the_plan_that_half_opens_first(make) -> None:
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0], wall=lambda: now[0])
    rule = "otherwise prefer cheapest where provider in [acme, betacorp]"
    engine = make(policy("set circuit.when_all_open = fail", "set failover.depth = 1", rule=rule), state=store)
    assert engine.decide("hi").chain == ["beta-chat", "alpha-mini"]  # beta-coder and alpha-large follow in the pool
    for model, cooldown in (("beta-chat", 40), ("alpha-mini", 40), ("beta-coder", 40), ("alpha-large", 5)):
        store.record(model, "p", "fail", CircuitConfig(failures=1, cooldown=cooldown))
    with pytest.raises(NoRouteError) as info:
        engine.decide("hi")
    now[0] += 5.5
    assert engine.decide("hi").model == "alpha-large"  # 5.5 s later the request is served...
    assert info.value.retry_after is not None and info.value.retry_after <= 5  # ...so Retry-After must say so


def test_an_all_open_race_probes_one_member_only(make, fake_server: FakeServer) -> None:
    engine = make(PROBE + "otherwise race [alpha-mini, beta-chat] fallback gamma-flash\n")
    open_circuits(engine.state, "beta-chat", "alpha-mini", "gamma-flash")
    c = engine.complete("hello")
    assert c.decision.probe == "beta-chat" and c.model == "beta-chat"
    assert called(fake_server) == ["beta-chat"]
    assert engine.state.circuit("beta-chat").state == "closed"
    assert engine.state.circuit("alpha-mini").state == "open" and idle(engine)


# ---- the plan as executed ------------------------------------------------------------------------------------------
def test_prefer_least_busy_fails_over_to_the_next_least_busy(make, fake_server: FakeServer) -> None:
    engine = make(policy(rule="otherwise prefer least_busy where provider in [acme, betacorp]"))
    busy = {"alpha-large": 3, "alpha-mini": 2, "beta-chat": 1, "beta-coder": 0}
    for model, n in busy.items():
        engine.state.add_in_flight(model, n)
    d = engine.decide("hello")
    assert d.chain == ["beta-coder", "beta-chat", "alpha-mini"]
    assert [s.role for s in d.plan] == ["chosen", "ranked", "ranked"]
    fake_server.always("beta-coder", Fault.server_error(503))
    c = engine.complete("hello")
    assert outcomes(c) == [("beta-coder", "ServerError"), ("beta-chat", "ok")]
    assert {m: engine.state.in_flight(m) for m in busy} == busy  # every call's slot was given back


def test_a_fallback_that_is_also_ranked_is_tried_once(make, fake_server: FakeServer) -> None:
    engine = make(policy(rule="otherwise prefer cheapest fallback delta-tiny, alpha-mini"))
    for model in ("local-free", "delta-tiny", "gamma-flash", "alpha-mini"):
        fake_server.always(model, Fault.server_error(500))
    with pytest.raises(RoutingError) as info:
        engine.complete("hello")
    assert [m for m, _ in outcomes(info.value)] == ["local-free", "delta-tiny", "gamma-flash", "alpha-mini"]
    assert called(fake_server) == ["local-free", "delta-tiny", "gamma-flash", "alpha-mini"]


def test_a_model_is_retried_then_failed_over_in_order(make, fake_server: FakeServer) -> None:
    engine = make(policy("set retry.attempts = 2"))
    fake_server.always("alpha-mini", Fault.server_error(503))
    fake_server.script("beta-chat", Fault.server_error(503))
    c = engine.complete("hello")
    got = [(a.model, a.outcome, a.retry, a.wait_s > 0) for a in c.attempts]
    assert got == [
        ("alpha-mini", "error", 0, True),
        ("alpha-mini", "error", 1, True),
        ("alpha-mini", "error", 2, False),
        ("beta-chat", "error", 0, True),
        ("beta-chat", "ok", 1, False),
    ]
    assert called(fake_server) == ["alpha-mini"] * 3 + ["beta-chat"] * 2


@pytest.mark.parametrize(
    ("rule", "first", "fallback", "unused"),
    [
        ("otherwise prefer cheapest fallback alpha-mini", "local-free", "alpha-mini", ["delta-tiny", "gamma-flash"]),
        (
            "otherwise balance round_robin [beta-chat, gamma-flash, delta-tiny] fallback alpha-mini",
            "beta-chat",
            "alpha-mini",
            ["gamma-flash", "delta-tiny"],
        ),
    ],
    ids=["prefer", "balance"],
)
def test_failover_depth_zero_goes_straight_to_the_listed_fallbacks(
    make, fake_server: FakeServer, rule: str, first: str, fallback: str, unused: list[str]
) -> None:
    engine = make(policy("set failover.depth = 0", rule=rule))
    fake_server.always(first, Fault.server_error(503))
    c = engine.complete("hello")
    assert c.decision.chain == [first, fallback]
    assert outcomes(c) == [(first, "ServerError"), (fallback, "ok")]
    assert not set(unused) & set(called(fake_server))


def test_the_default_depth_leaves_the_fourth_balance_member_out(make, fake_server: FakeServer) -> None:
    engine = make(policy(rule="otherwise balance round_robin [alpha-mini, beta-chat, gamma-flash, delta-tiny]"))
    for model in ("alpha-mini", "beta-chat", "gamma-flash", "delta-tiny"):
        fake_server.always(model, Fault.server_error(503))
    with pytest.raises(RoutingError) as info:
        engine.complete("hello")
    assert [m for m, _ in outcomes(info.value)] == CHAIN and "delta-tiny" not in called(fake_server)


def test_a_too_long_prompt_lets_a_fallback_stand_in_and_context_too_long_moves_on(make, fake_server) -> None:
    engine = make(policy(rule="otherwise use delta-tiny fallback beta-chat, gamma-flash"))
    prompt = "word " * 10_000  # ~12.5k tokens: more than delta-tiny's 8k, less than beta-chat's 32k
    d = engine.decide(prompt)
    assert d.chain == ["beta-chat", "gamma-flash"] and "stands in for delta-tiny" in d.plan[0].reason
    fake_server.always("beta-chat", Fault.context_too_long())  # the provider counts more tokens than the estimate
    c = engine.complete(prompt)
    assert outcomes(c) == [("beta-chat", "ContextTooLong"), ("gamma-flash", "ok")]
    assert "delta-tiny" not in called(fake_server)

    longer = "word " * 40_000  # ~50k tokens: only gamma-flash can take it
    c = engine.complete(longer)
    assert c.decision.chain == ["gamma-flash"] and outcomes(c) == [("gamma-flash", "ok")]


def test_a_context_too_long_skips_the_smaller_ranked_models(make, fake_server: FakeServer) -> None:
    engine = make(policy("set failover.depth = 4", rule="otherwise prefer capability(CODING) fallback delta-tiny"))
    d = engine.decide("write a parser")
    assert d.chain == ["beta-coder", "alpha-large", "gamma-long", "alpha-mini", "gamma-flash", "delta-tiny"]
    fake_server.always("beta-coder", Fault.context_too_long())  # 64k
    fake_server.always("alpha-large-2025-01", Fault.context_too_long())  # 200k: later models must be larger
    fake_server.always("gamma-long", Fault.server_error(500))  # 2M, but failing for another reason
    c = engine.complete("write a parser")
    assert outcomes(c) == [
        ("beta-coder", "ContextTooLong"),
        ("alpha-large", "ContextTooLong"),
        ("gamma-long", "ServerError"),
        ("alpha-mini", "Skipped"),  # 128k is not larger than 200k
        ("gamma-flash", "ok"),  # 1M is
    ]
    assert called(fake_server) == ["beta-coder", "alpha-large-2025-01", "gamma-long", "gamma-flash"]


def test_a_model_without_tools_gives_way_to_the_first_fallback_with_tools_on_a_stream(make, fake_server) -> None:
    engine = make(policy(rule="otherwise use delta-tiny fallback beta-chat, gamma-flash, alpha-mini"))
    fake_server.always("gamma-flash", Fault.server_error(503))
    stream = engine.stream("look it up", tools=[TOOL])
    assert stream.decision.chain == ["gamma-flash", "alpha-mini"]
    assert stream.text() == "ok" and outcomes(stream) == [("gamma-flash", "ServerError"), ("alpha-mini", "ok")]
    assert fake_server.last().body["tools"][0]["function"]["name"] == "lookup"
