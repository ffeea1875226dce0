"""Attacks on issue 13's gateway guarantees (providers/gateway/): real uvicorn servers over the loopback
FakeServer. Retry-After with several open circuits, `x-modelroute-fallbacks` / `x-modelroute-attempts` of a
stream that failed over (or was retried) before its first token, a client that hangs up while the executor
sleeps a retry backoff or while a race runs, and `x-modelroute-deadline` on streams (before and after the first
token) and at 1 ms. In-flight counts, policy and key budget holds are checked back at zero after each."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")

from engine.runtime.state import CircuitConfig
from providers.gateway.run import key_budget_key
from tests.fakeserver import FakeServer, Fault, Reply
from tests.test_gateway_failover import BODY, PROVIDER, Gw, _raw_request
from tests.waiting import wait_until

FAST_ENOUGH = 20.0  # a cut request ends well before this


@pytest.fixture
def start(fake_server: FakeServer) -> Iterator[Any]:
    started: list[Gw] = []

    def go(policy: str, **kw: Any) -> Gw:
        started.append(Gw(fake_server, policy, **kw))
        return started[-1]

    yield go
    for g in started:
        g.server.__exit__()


def open_for(gw: Gw, model: str, cooldown: float) -> None:
    """Open `model`'s circuit for `cooldown` seconds (one failure opens it)."""
    cfg = CircuitConfig(failures=1, window=60.0, cooldown=cooldown)
    assert gw.engine.state.record(model, PROVIDER.get(model, "deltaio"), "fail", cfg) == "opened"


def idle(gw: Gw) -> bool:
    state = gw.engine.state
    return all(state.in_flight(m) == 0 for m in gw.engine.policy.models)


def holds(gw: Gw) -> list[float]:
    """Money still reserved on the policy's budgets and on the test key's daily budget."""
    ex = gw.engine.executor
    keys = [a.key for a in ex.budgets.applicable(gw.engine.policy.budgets, {})]
    keys.append(key_budget_key("team", time.time()))
    return [gw.engine.state.spent(k)[1] for k in keys]


def settled(gw: Gw, what: str) -> None:
    """Wait until no call is in flight and no money is held. The gateway settles a request's budgets just after its
    calls end, so the two are waited for together; a hold that is never released fails after the deadline."""
    wait_until(lambda: idle(gw) and holds(gw) == [0.0, 0.0], what)


def sse_events(text: str) -> list[Any]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


def streamed_text(text: str) -> str:
    """The content deltas of an SSE body, joined."""
    chunks = [json.loads(e) for e in sse_events(text) if e != "[DONE]"]
    return "".join(((c.get("choices") or [{}])[0].get("delta") or {}).get("content") or "" for c in chunks)


# ---- Retry-After with several open circuits ---------------------------------------------------------------------
def test_retry_after_is_the_soonest_of_several_open_circuits(start, fake_server: FakeServer) -> None:
    gw = start("set circuit.when_all_open = fail\notherwise use alpha-mini fallback beta-chat, gamma-flash\n")
    open_for(gw, "alpha-mini", 50)  # opened first, half-opens last
    open_for(gw, "beta-chat", 9)  # half-opens first
    open_for(gw, "gamma-flash", 25)
    r = gw.post()
    assert r.status_code == 503 and r.json()["error"]["code"] == "models_unavailable", r.text
    assert 6 <= int(r.headers["retry-after"]) <= 9
    assert fake_server.requests == []


def test_retry_after_while_a_probe_runs_is_read_from_the_circuits_still_open(start, fake_server: FakeServer) -> None:
    gw = start("otherwise use alpha-mini fallback beta-chat, gamma-flash\n")  # when_all_open = probe
    open_for(gw, "alpha-mini", 30)  # the probe
    time.sleep(0.01)
    open_for(gw, "beta-chat", 30)
    time.sleep(0.01)
    open_for(gw, "gamma-flash", 30)
    gate = threading.Event()
    fake_server.script("alpha-mini", Fault.held(gate, Reply(text="probe answered")))
    result: dict[str, Any] = {}
    probe = threading.Thread(target=lambda: result.update(r=gw.post()), daemon=True)
    probe.start()
    try:
        fake_server.wait_for_requests(1)
        r = gw.post()
        assert r.status_code == 503 and r.json()["error"]["code"] == "models_unavailable", r.text
        assert 25 <= int(r.headers["retry-after"]) <= 30  # beta-chat's circuit, not the probing one
        r = gw.post({**BODY, "stream": True})  # a stream is refused the same way
        assert r.status_code == 503 and r.json()["error"]["code"] == "models_unavailable", r.text
        assert 25 <= int(r.headers["retry-after"]) <= 30
        assert len(fake_server.requests) == 1
    finally:
        gate.set()
        probe.join(30)
    assert result["r"].status_code == 200 and result["r"].headers["x-modelroute-model"] == "alpha-mini"


# ---- x-modelroute-fallbacks of a stream -------------------------------------------------------------------------
def test_a_stream_that_failed_over_before_its_first_token_counts_the_fallback(start, fake_server: FakeServer) -> None:
    gw = start("set retry.attempts = 0\nset stream.first_token_timeout = 500ms\notherwise prefer cheapest\n")
    fake_server.script("local-free", Fault.server_error(503))
    fake_server.script("delta-tiny", Reply(text="from the second cheapest"))
    r = gw.post({**BODY, "stream": True})
    assert r.status_code == 200, r.text
    h = r.headers
    assert (h["x-modelroute-model"], h["x-modelroute-fallbacks"], h["x-modelroute-attempts"]) == (
        "delta-tiny",
        "1",
        "2",
    )
    assert sse_events(r.text)[-1] == "[DONE]"
    assert streamed_text(r.text) == "from the second cheapest"
    assert gw.metric('modelroute_fallbacks_total{model="delta-tiny"} 1')

    fake_server.script("local-free", Fault.stall_stream(after=0, gap=60))  # no first token: cut, then the next
    fake_server.script("delta-tiny", Fault.server_error(503))
    r = gw.post({**BODY, "stream": True})
    h = r.headers
    assert (h["x-modelroute-model"], h["x-modelroute-fallbacks"], h["x-modelroute-attempts"]) == (
        "gamma-flash",
        "2",
        "3",
    )
    assert sse_events(r.text)[-1] == "[DONE]"
    wait_until(lambda: idle(gw), "every upstream call to be released")


def test_a_stream_past_a_skipped_entry_counts_it_as_a_fallback(start, fake_server: FakeServer) -> None:
    gw = start("set retry.attempts = 0\notherwise use alpha-mini fallback alpha-large, beta-chat\n")
    fake_server.script("alpha-mini", Fault.auth())  # acme refuses the key: alpha-large (acme too) is skipped
    r = gw.post({**BODY, "stream": True})
    h = r.headers
    assert (h["x-modelroute-model"], h["x-modelroute-fallbacks"], h["x-modelroute-attempts"]) == ("beta-chat", "2", "2")
    assert streamed_text(r.text) == "ok"
    assert [q.model for q in fake_server.requests] == ["alpha-mini", "beta-chat"]


def test_a_stream_retried_before_its_first_token_is_no_fallback(start, fake_server: FakeServer) -> None:
    gw = start("set retry.attempts = 1\nset retry.backoff = 10ms\notherwise use alpha-mini fallback beta-chat\n")
    fake_server.script("alpha-mini", [Fault.server_error(503), Reply(text="second try")])
    r = gw.post({**BODY, "stream": True})
    h = r.headers
    assert (h["x-modelroute-model"], h["x-modelroute-fallbacks"], h["x-modelroute-attempts"]) == (
        "alpha-mini",
        "0",
        "2",
    )
    assert streamed_text(r.text) == "second try"
    assert not gw.metric('modelroute_fallbacks_total{model="alpha-mini"} 1')


# ---- a client that hangs up while nothing is in flight upstream ---------------------------------------------------
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_client_that_hangs_up_during_a_retry_backoff_stops_the_retries(
    start, fake_server: FakeServer, stream: bool
) -> None:
    policy = "budget daily $5\nset retry.attempts = 5\nset retry.backoff = 5s\nset retry.max_backoff = 5s\n"
    gw = start(policy + "otherwise use alpha-mini\n")
    fake_server.always("alpha-mini", Fault.server_error(503))
    sock = _raw_request(gw.url, {**BODY, "stream": stream})
    try:
        fake_server.wait_for_requests(1)
        wait_until(lambda: gw.engine.usage()["models"].get("alpha-mini", {}).get("failures") == 1, "the failure")
        assert idle(gw) and all(h > 0 for h in holds(gw))  # sleeping 2.5-5 s before the retry, money held
    finally:
        sock.close()
    wait_until(
        lambda: gw.metric('modelroute_requests_total{endpoint="chat",status="499"} 1'), "the hang-up to count as 499"
    )
    assert [q.model for q in fake_server.requests] == ["alpha-mini"]  # no retry after the client left
    settled(gw, "the hung-up request's hold to be released")
    assert gw.gateway.active == 0


def test_a_client_that_hangs_up_during_a_race_cancels_every_leg(start, fake_server: FakeServer) -> None:
    gw = start("budget daily $5\nset retry.attempts = 0\notherwise race [alpha-mini, beta-chat, gamma-flash]\n")
    gate = threading.Event()
    for model in ("alpha-mini", "beta-chat", "gamma-flash"):
        fake_server.always(model, Fault.held(gate))
    try:
        sock = _raw_request(gw.url, BODY)
        state = gw.engine.state
        wait_until(lambda: all(state.in_flight(m) == 1 for m in PROVIDER), "every leg to be in flight")
        sock.close()
        wait_until(lambda: idle(gw), "every leg to be cancelled")
        wait_until(
            lambda: gw.metric('modelroute_requests_total{endpoint="chat",status="499"} 1'), "the request to be a 499"
        )
        for model in PROVIDER:
            assert gw.metric(f'modelroute_attempts_total{{model="{model}",outcome="cancelled"}} 1')
        settled(gw, "every leg's hold to be released")
        assert gw.gateway.active == 0
    finally:
        gate.set()


# ---- x-modelroute-deadline on streams and at its smallest ---------------------------------------------------------
def test_a_deadline_header_ends_a_stream_without_a_first_token_with_504(start, fake_server: FakeServer) -> None:
    gw = start("budget daily $5\nset retry.attempts = 0\notherwise use alpha-mini fallback beta-chat\n")
    fake_server.always("alpha-mini", Fault.stall_stream(after=0, gap=60))
    t0 = time.monotonic()
    r = gw.post({**BODY, "stream": True}, headers={"x-modelroute-deadline": "600ms"})
    assert time.monotonic() - t0 < FAST_ENOUGH
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded", r.text
    assert "beta-chat" not in [q.model for q in fake_server.requests]
    settled(gw, "the cut stream to be released")


def test_a_deadline_header_passing_mid_stream_ends_it_with_an_error_event(start, fake_server: FakeServer) -> None:
    gw = start("budget daily $5\notherwise use alpha-mini fallback beta-chat\n")
    fake_server.always("alpha-mini", Fault.stall_stream(after=2, gap=60))
    t0 = time.monotonic()
    r = gw.post({**BODY, "stream": True}, headers={"x-modelroute-deadline": "1s"})
    assert time.monotonic() - t0 < FAST_ENOUGH and r.status_code == 200
    events = sse_events(r.text)
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] == "stream_interrupted"
    assert [q.model for q in fake_server.requests] == ["alpha-mini"]  # nothing is repeated by another model
    settled(gw, "the cut stream to be released")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_one_millisecond_deadline_header_is_a_quick_504(start, fake_server: FakeServer, stream: bool) -> None:
    gw = start("budget daily $5\notherwise use alpha-mini fallback beta-chat\n")
    fake_server.default = Fault.hang(30)
    t0 = time.monotonic()
    r = gw.post({**BODY, "stream": stream}, headers={"x-modelroute-deadline": "1ms"})
    assert time.monotonic() - t0 < FAST_ENOUGH
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded", r.text
    settled(gw, "every call to be released")
    assert gw.gateway.active == 0


def test_a_deadline_that_leaves_a_consensus_without_answers_is_a_504(start, fake_server: FakeServer) -> None:
    gw = start("set retry.attempts = 0\notherwise consensus [alpha-mini, beta-chat, gamma-flash] min_agreement 2\n")
    fake_server.default = Fault.hang(30)
    r = gw.post(headers={"x-modelroute-deadline": "600ms"})
    wait_until(lambda: idle(gw), "every member to be released")
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded", r.text
