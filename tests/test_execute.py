"""Tests for execution (providers/execute.py, resilience.py, events.py): an Engine plus the FakeServer over real
loopback sockets in, Completions, attempts, errors, streams, events and usage out."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from providers.errors import ServerError
from providers.execution.events import Event
from providers.execution.resilience import RetryPolicy, RoutingError, StreamInterrupted
from tests.engines import KINDS, Engines, outcomes
from tests.fakeserver import FakeServer, Fault, Reply

CHAIN = """
set retry.attempts = 2
set retry.backoff = 10ms
set retry.max_backoff = 2s
otherwise use alpha-mini fallback beta-chat, gamma-flash
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make(fake_server: FakeServer) -> Iterator[Engines]:
    """engine_for() on the test's server; closes every engine made."""
    engines = Engines(fake_server, default=CHAIN)
    yield engines
    engines.close()


# ---- success on each wire format ---------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["alpha-mini", "beta-chat", "gamma-flash"])
def test_complete_each_wire_format(make, fake_server: FakeServer, model: str) -> None:
    engine = make(f"otherwise use {model}")
    fake_server.script(model, Reply(text="hello there", input_tokens=100, output_tokens=20))
    c = engine.complete("Say hello", temperature=0.1)
    assert (c.text, c.model, c.strategy) == ("hello there", model, "single")
    assert c.provider == engine.policy.models[model].provider
    assert (c.usage.input_tokens, c.usage.output_tokens) == (100, 20)
    spec = engine.policy.models[model].spec
    assert c.cost == pytest.approx(100 * spec.input_price + 20 * spec.output_price)
    assert c.decision.model == model and outcomes(c) == [(model, "ok")]
    assert fake_server.last().kind == KINDS[engine.policy.models[model].provider]


def test_messages_and_options_reach_the_provider(make, fake_server: FakeServer) -> None:
    engine = make("otherwise use alpha-mini")
    msgs = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Summarize this"}]
    engine.complete(messages=msgs, max_tokens=42, stop=["END"])
    body = fake_server.last().body
    assert body["messages"][0] == {"role": "system", "content": "Be terse."}
    assert body["max_completion_tokens"] == 42 and body["stop"] == ["END"]


# ---- every error class -------------------------------------------------------------------------------------
# fault on alpha-mini -> (error class, tries of alpha-mini); context-too-long has its own test below
FAULTS = {
    "rate_limited": (lambda: Fault.rate_limited(retry_after=0.01), "RateLimited", 3),
    "server_error": (lambda: Fault.server_error(500), "ServerError", 3),
    "overloaded": (Fault.overloaded, "ServerError", 3),
    "reset": (Fault.reset, "ConnectionFailed", 3),
    "malformed": (Fault.malformed, "MalformedResponse", 3),
    "timeout": (lambda: Fault.hang(3), "Timeout", 3),
    "content_filtered": (Fault.content_filtered, "ContentFiltered", 1),
    "auth": (Fault.auth, "AuthError", 1),
    "bad_request": (lambda: Fault.status(400, message="unknown parameter"), "BadRequest", 1),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_error_class_retries_or_falls_back(make, fake_server: FakeServer, fault: str) -> None:
    make_fault, error, tries = FAULTS[fault]
    engine = make()
    fake_server.always("alpha-mini", make_fault())
    c = engine.complete("hello", timeout=0.3 if fault == "timeout" else None)
    assert c.model == "beta-chat"
    assert outcomes(c) == [("alpha-mini", error)] * tries + [("beta-chat", "ok")]
    assert [a.retry for a in c.attempts[:tries]] == list(range(tries))
    assert sum(r.model == "alpha-mini" for r in fake_server.requests) == tries


def test_retry_after_is_honoured(make, fake_server: FakeServer) -> None:
    engine = make()
    fake_server.script("alpha-mini", [Fault.rate_limited(retry_after=0.3), Reply(text="after the wait")])
    c = engine.complete("hello")
    assert c.text == "after the wait" and outcomes(c) == [("alpha-mini", "RateLimited"), ("alpha-mini", "ok")]
    assert c.attempts[0].wait_s == pytest.approx(0.3)
    first, second = fake_server.requests
    assert second.at - first.at >= 0.28


def test_retry_after_is_capped_by_max_backoff(make, fake_server: FakeServer) -> None:
    slept: list[float] = []  # what the executor really waited for, not only what it reports

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    engine = make(CHAIN.replace("max_backoff = 2s", "max_backoff = 50ms"), sleep=sleep)
    fake_server.script("alpha-mini", [Fault.rate_limited(retry_after=30), Reply()])
    c = engine.complete("hello")
    assert outcomes(c) == [("alpha-mini", "RateLimited"), ("alpha-mini", "ok")]
    assert c.attempts[0].wait_s == pytest.approx(0.05) and slept == [pytest.approx(0.05)]


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    policy = RetryPolicy(attempts=5, backoff=0.1, max_backoff=0.5)
    error = ServerError("boom")
    for retry, base in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.5), (4, 0.5)]:
        delays = [policy.delay(error, retry) for _ in range(50)]
        assert all(base / 2 <= d <= base for d in delays) and len(set(delays)) > 1
    assert policy.delay(ServerError("x", retry_after=9), 0) == 0.5
    assert policy.should_retry(error, 4) and not policy.should_retry(error, 5)


def test_auth_error_skips_the_rest_of_that_provider(make, fake_server: FakeServer) -> None:
    engine = make("otherwise use alpha-mini fallback alpha-large, beta-chat")
    fake_server.always("alpha-mini", Fault.auth())
    c = engine.complete("hello")
    assert outcomes(c) == [("alpha-mini", "AuthError"), ("alpha-large", "Skipped"), ("beta-chat", "ok")]
    assert "AuthError from acme" in c.attempts[1].message
    assert [r.model for r in fake_server.requests] == ["alpha-mini", "beta-chat"]


def test_context_too_long_falls_back_to_a_model_whose_context_fits(make, fake_server: FakeServer) -> None:
    # beta-chat (32k) is smaller than alpha-mini (128k): skipped; gamma-long (2M) fits.
    engine = make("otherwise use alpha-mini fallback beta-chat, gamma-long")
    fake_server.always("alpha-mini", Fault.context_too_long())
    c = engine.complete("hello")
    assert outcomes(c) == [("alpha-mini", "ContextTooLong"), ("beta-chat", "Skipped"), ("gamma-long", "ok")]
    assert "context" in c.attempts[1].message


def test_missing_api_key_is_skipped_with_the_reason(make, fake_server: FakeServer, monkeypatch) -> None:
    monkeypatch.delenv("TEST_ACME_KEY", raising=False)
    engine = make(api_keys={"betacorp": "sk-b"})
    c = engine.complete("hello")
    assert outcomes(c)[0] == ("alpha-mini", "ProviderUnavailable") and c.model == "beta-chat"
    assert "TEST_ACME_KEY is not set" in c.attempts[0].message
    assert [r.model for r in fake_server.requests] == ["beta-chat"]


def test_routing_error_lists_every_attempt(make, fake_server: FakeServer) -> None:
    engine = make(CHAIN.replace("retry.attempts = 2", "retry.attempts = 0"))
    fake_server.always("alpha-mini", Fault.server_error(503))
    fake_server.always("beta-chat", Fault.auth())
    fake_server.always("gamma-flash", Fault.status(400, message="nope"))
    with pytest.raises(RoutingError) as info:
        engine.complete("hello")
    err = info.value
    assert outcomes(err) == [("alpha-mini", "ServerError"), ("beta-chat", "AuthError"), ("gamma-flash", "BadRequest")]
    text = str(err)
    assert "1. alpha-mini (acme): error ServerError 503" in text and "3. gamma-flash" in text
    assert err.decision.model == "alpha-mini" and err.last_error == "BadRequest"


# ---- structured output -------------------------------------------------------------------------------------
class Answer(BaseModel):
    city: str
    population: int


def test_schema_parses_and_invalid_output_falls_back(make, fake_server: FakeServer) -> None:
    engine = make()
    fake_server.script("alpha-mini", Reply(text='{"city": "Paris"}'))
    fake_server.script("beta-chat", Reply(text='```json\n{"city": "Paris", "population": 2100000}\n```'))
    c = engine.complete("Largest city of France?", schema=Answer)
    assert c.parsed == Answer(city="Paris", population=2_100_000)
    assert outcomes(c) == [("alpha-mini", "InvalidOutput"), ("beta-chat", "ok")]
    assert "population" in c.attempts[0].message
    assert fake_server.requests[0].body["response_format"]["type"] == "json_schema"
    assert c.usage.input_tokens == 20  # the invalid answer was paid for too


# ---- streaming ---------------------------------------------------------------------------------------------
def test_stream_success(make, fake_server: FakeServer) -> None:
    engine = make("otherwise use beta-chat")
    fake_server.script("beta-chat", Reply(text="streamed words here", chunks=3))
    stream = engine.stream("hello")
    events = list(stream)
    assert "".join(e.text for e in events if e.kind == "delta") == "streamed words here"
    assert events[-1].kind == "done" and stream.completion.text == "streamed words here"
    assert fake_server.last().stream


def test_stream_failing_before_first_token_falls_back(make, fake_server: FakeServer) -> None:
    engine = make(CHAIN.replace("retry.attempts = 2", "retry.attempts = 0"))
    fake_server.always("alpha-mini", Fault.server_error(503))
    fake_server.script("gamma-flash", Reply(text="from gemini"))
    fake_server.always("beta-chat", Fault.cut_stream(after=0, abort=False))  # ends before any event
    stream = engine.stream("hello")
    assert stream.text() == "from gemini"
    assert outcomes(stream) == [
        ("alpha-mini", "ServerError"),
        ("beta-chat", "MalformedResponse"),
        ("gamma-flash", "ok"),
    ]


@pytest.mark.parametrize("fault", [lambda: Fault.cut_stream(after=3), lambda: Fault.stream_error(after=3)])
def test_stream_failing_after_first_token_raises_without_duplicates(make, fake_server: FakeServer, fault) -> None:
    engine = make()
    fake_server.always("alpha-mini", fault())
    texts = []
    with pytest.raises(StreamInterrupted):
        for event in engine.stream("hello"):
            texts.append(event.text)
    assert "".join(texts) and "partial answer text".startswith("".join(texts))
    assert [r.model for r in fake_server.requests] == ["alpha-mini"]  # no retry, no fallback


@pytest.mark.anyio
async def test_acomplete_and_astream(make, fake_server: FakeServer) -> None:
    engine = make()
    fake_server.script("alpha-mini", [Fault.server_error(500), Reply(text="async ok"), Reply(text="a b c")])
    c = await engine.acomplete("hello")
    assert c.text == "async ok" and outcomes(c) == [("alpha-mini", "ServerError"), ("alpha-mini", "ok")]
    stream = engine.astream("hello")
    text = "".join([e.text async for e in stream if e.kind == "delta"])
    assert text == "a b c" and stream.completion.model == "alpha-mini"
    await engine.aclose()


@pytest.mark.anyio
async def test_many_parallel_requests_lose_no_attempt(make, fake_server: FakeServer) -> None:
    import anyio
    import httpx

    # a pool of 4 connections per provider: the fake server's listen backlog is small
    engine = make(CHAIN.replace("retry.attempts = 2", "retry.attempts = 1"), limits=httpx.Limits(max_connections=4))
    fake_server.script("alpha-mini", [Fault.server_error(503)] * 30)
    results: list[Any] = []

    async def one(i: int) -> None:
        results.append(await engine.acomplete(f"request {i}"))

    async with anyio.create_task_group() as tg:
        for i in range(60):
            tg.start_soon(one, i)
    assert len(results) == 60
    tried = [a for c in results for a in c.attempts if a.outcome != "skipped"]
    assert len(tried) == len(fake_server.requests)
    usage = engine.usage()
    assert usage["total"]["calls"] == len(tried) and usage["models"]["alpha-mini"]["failures"] == 30
    assert engine.state.in_flight("alpha-mini") == 0
    await engine.aclose()


# ---- events, usage, logging --------------------------------------------------------------------------------
def test_events_and_logging(make, fake_server: FakeServer, caplog) -> None:
    engine = make(CHAIN.replace("retry.attempts = 2", "retry.attempts = 1"))
    seen: list[Event] = []
    unsubscribe = engine.on_event(seen.append)
    fake_server.always("alpha-mini", Fault.server_error(503))
    with caplog.at_level(logging.INFO, logger="modelroute.execute"):
        engine.complete("hello")
    kinds = [e.kind for e in seen]
    assert kinds == [
        "attempt_started",
        "retry",
        "attempt_started",
        "attempt_failed",
        "fallback",
        "attempt_started",
        "attempt_succeeded",
    ]
    assert seen[1].error == "ServerError" and seen[1].data["status"] == 503 and seen[4].model == "beta-chat"
    assert "falling back to beta-chat" in caplog.text
    unsubscribe()
    engine.complete("again")
    assert len(seen) == len(kinds)


def test_a_failing_callback_does_not_break_the_request(make, fake_server: FakeServer) -> None:
    engine = make()
    engine.on_event(lambda e: 1 / 0)
    assert engine.complete("hello").text == "ok"


def test_usage_per_model_and_provider(make, fake_server: FakeServer) -> None:
    engine = make(CHAIN.replace("retry.attempts = 2", "retry.attempts = 0"))
    fake_server.script("alpha-mini", [Fault.server_error(500), Reply(input_tokens=7, output_tokens=3)])
    engine.complete("one")
    engine.complete("two")
    usage = engine.usage()
    mini, chat = usage["models"]["alpha-mini"], usage["models"]["beta-chat"]
    assert (mini["calls"], mini["failures"], mini["success_rate"]) == (2, 1, 0.5)
    assert (mini["input_tokens"], mini["output_tokens"]) == (7, 3) and mini["latency_ms"] > 0
    assert chat["calls"] == 1 and usage["providers"]["acme"]["calls"] == 2
    assert usage["total"]["cost"] == pytest.approx(mini["cost"] + chat["cost"])


# ---- secrets -----------------------------------------------------------------------------------------------
CANARY = "sk-CANARY-9f8e7d6c5b4a"


def test_secrets_canary(make, fake_server: FakeServer, monkeypatch, caplog, capsys) -> None:
    monkeypatch.setenv("TEST_ACME_KEY", CANARY)
    monkeypatch.setenv("TEST_GAMMALABS_KEY", CANARY)
    engine = make(CHAIN.replace("retry.attempts = 2", "retry.attempts = 0"), api_keys={})
    seen: list[Event] = []
    engine.on_event(seen.append)
    fake_server.always("alpha-mini", Fault.auth(echo_key=True))  # the error body echoes the key
    fake_server.always("gamma-flash", Fault.status(500, message=f"upstream said {CANARY}"))
    with caplog.at_level(logging.DEBUG), pytest.raises(RoutingError) as info:
        engine.complete("hello")
    assert fake_server.requests[0].headers["authorization"] == f"Bearer {CANARY}"  # it was really sent
    err = info.value
    dumped = [
        str(err),
        repr(err),
        *map(repr, err.attempts),
        *map(repr, seen),
        caplog.text,
        repr(engine.usage()),
        repr(engine.executor),
        err.decision.explain(),
        repr(err.decision),
        capsys.readouterr().out,
    ]
    assert [d for d in dumped if CANARY in d] == []
    assert "***" in str(err)


def test_import_engine_does_not_import_httpx() -> None:
    code = "import sys, engine, providers; engine.Engine; assert 'httpx' not in sys.modules, 'httpx loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_message_objects_are_accepted(make, fake_server: FakeServer) -> None:
    from providers.types import Message

    engine = make("otherwise use beta-chat")
    c = engine.complete(messages=[Message.system("Be terse."), Message.user("Hello")])
    assert c.text == "ok" and c.decision.request.text == "Hello"
    assert fake_server.last().body["system"] == "Be terse."
