"""Gateway failover and its edges (providers/gateway/): requests through the official `openai` SDK, httpx and raw
sockets in, against real uvicorn servers whose upstream is the FakeServer; `x-modelroute-fallbacks` counted on the
failover plan, 503 models_unavailable with Retry-After when open circuits leave nothing to call, the
`x-modelroute-deadline` header (504 deadline_exceeded), and a client that hangs up cancelling its upstream call
(status 499) out."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
openai = pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")
import httpx  # noqa: E402

from engine.runtime.state import CircuitConfig, MemoryStore  # noqa: E402
from providers.execution.resilience import Attempt, RoutingError  # noqa: E402
from providers.gateway.app import Gateway  # noqa: E402
from providers.gateway.keys import GatewayKey, KeyRing, hash_key  # noqa: E402
from providers.gateway.openai_wire import parse_chat  # noqa: E402
from providers.gateway.run import key_budget_key, routing_error  # noqa: E402
from tests.engines import KINDS, TEST_KEY, engine_for  # noqa: E402
from tests.fakeserver import FakeServer, Fault, Reply  # noqa: E402
from tests.test_gateway import ThreadServer  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

KEY = "mr-failover-test-key"
MSG = [{"role": "user", "content": "Say hello"}]
BODY = {"model": "auto", "messages": MSG}
PROVIDER = {"alpha-mini": "acme", "beta-chat": "betacorp", "gamma-flash": "gammalabs"}
OPEN_LONG = CircuitConfig(failures=1, window=60.0, cooldown=30.0)  # one failure opens for 30 s


class Gw:
    """One gateway (ASGI fast path by default, or Starlette's routing) over engine_for(fake_server, policy)."""

    def __init__(self, server: FakeServer, policy: str, *, starlette: bool = False, **engine_kw: Any):
        self.engine = engine_for(server, policy, **engine_kw)
        keys = KeyRing([GatewayKey("team", hash_key(KEY), daily_budget=5.0)])
        self.gateway = Gateway(self.engine, keys=keys)
        self.server = ThreadServer(self.gateway.app() if starlette else self.gateway.asgi()).__enter__()
        self.url = self.server.url
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=0)

    def post(self, body: Any = BODY, headers: dict[str, str] | None = None, timeout: float = 30) -> httpx.Response:
        return httpx.post(
            self.url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {KEY}", **(headers or {})},
            timeout=timeout,
        )

    def metric(self, line: str) -> bool:
        return line in httpx.get(self.url + "/metrics").text.splitlines()

    def open_circuits(self, *models: str) -> None:
        for model in models:  # in order: the first opened is the one opened longest ago
            assert self.engine.state.record(model, PROVIDER[model], "fail", OPEN_LONG) == "opened"
            time.sleep(0.01)


@pytest.fixture
def start(fake_server: FakeServer) -> Iterator[Any]:
    started: list[Gw] = []

    def go(policy: str, **kw: Any) -> Gw:
        started.append(Gw(fake_server, policy, **kw))
        return started[-1]

    yield go
    for g in started:
        g.server.__exit__()


# ---- x-modelroute-fallbacks: plan entries before the one that answered --------------------------------------
def test_failing_cheapest_model_is_answered_by_the_next_cheapest(start, fake_server: FakeServer) -> None:
    gw = start("set retry.attempts = 0\notherwise prefer cheapest\n")
    assert gw.engine.decide(messages=MSG).chain == ["local-free", "delta-tiny", "gamma-flash"]
    fake_server.script("local-free", Fault.server_error(503))
    fake_server.script("delta-tiny", Reply(text="from the second cheapest"))
    raw = gw.client.chat.completions.with_raw_response.create(model="auto", messages=MSG)
    assert raw.parse().choices[0].message.content == "from the second cheapest"
    h = raw.headers
    assert (h["x-modelroute-model"], h["x-modelroute-fallbacks"], h["x-modelroute-attempts"]) == (
        "delta-tiny",
        "1",
        "2",
    )
    assert gw.metric('modelroute_fallbacks_total{model="delta-tiny"} 1')
    raw = gw.client.chat.completions.with_raw_response.create(model="auto", messages=MSG)  # first choice answers
    assert (raw.headers["x-modelroute-model"], raw.headers["x-modelroute-fallbacks"]) == ("local-free", "0")
    assert not gw.metric('modelroute_fallbacks_total{model="local-free"} 1')


def test_a_skipped_plan_entry_counts_as_a_fallback(start, fake_server: FakeServer, monkeypatch) -> None:
    monkeypatch.delenv("TEST_LOCAL_KEY", raising=False)  # local-free's provider has no key: skipped, not called
    gw = start("otherwise prefer cheapest\n", api_keys={n: TEST_KEY for n in KINDS if n != "local"})
    raw = gw.client.chat.completions.with_raw_response.create(model="auto", messages=MSG)
    h = raw.headers
    assert (h["x-modelroute-model"], h["x-modelroute-fallbacks"], h["x-modelroute-attempts"]) == (
        "delta-tiny",
        "1",
        "1",
    )
    assert [r.model for r in fake_server.requests] == ["delta-tiny"]


def test_a_group_is_one_plan_entry(start, fake_server: FakeServer) -> None:
    gw = start("set retry.attempts = 0\notherwise race [alpha-mini, beta-chat] fallback gamma-flash\n")
    fake_server.script("alpha-mini", Fault.server_error(503))
    raw = gw.client.chat.completions.with_raw_response.create(model="auto", messages=MSG)
    assert (raw.headers["x-modelroute-model"], raw.headers["x-modelroute-fallbacks"]) == ("beta-chat", "0")
    fake_server.script("alpha-mini", Fault.server_error(503))
    fake_server.script("beta-chat", Fault.server_error(503))
    raw = gw.client.chat.completions.with_raw_response.create(model="auto", messages=MSG)
    assert (raw.headers["x-modelroute-model"], raw.headers["x-modelroute-fallbacks"]) == ("gamma-flash", "1")


# ---- 503 models_unavailable and Retry-After -------------------------------------------------------------------
def test_all_circuits_open_with_fail_is_a_503_with_retry_after(start, fake_server: FakeServer) -> None:
    gw = start("set circuit.when_all_open = fail\notherwise use alpha-mini fallback beta-chat\n")
    gw.open_circuits("alpha-mini", "beta-chat")
    r = gw.post()
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "models_unavailable"
    assert 1 <= int(r.headers["retry-after"]) <= 30
    assert fake_server.requests == []
    with pytest.raises(openai.InternalServerError) as info:  # the SDK's exception for a 503
        gw.client.chat.completions.create(model="auto", messages=MSG)
    assert info.value.status_code == 503
    assert gw.metric('modelroute_requests_total{endpoint="chat",status="503"} 2')


def test_an_ordinary_no_route_stays_a_400(start, fake_server: FakeServer) -> None:
    gw = start('when tier == "pro" use alpha-large\n')
    r = gw.post()
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_route" and "retry-after" not in r.headers


def test_all_circuits_open_probes_one_model_and_a_second_request_meanwhile_gets_503(
    start, fake_server: FakeServer
) -> None:
    gw = start("otherwise use alpha-mini fallback beta-chat\n")  # circuit.when_all_open = probe by default
    gw.open_circuits("alpha-mini", "beta-chat")
    gate = threading.Event()
    fake_server.script("alpha-mini", [Fault.held(gate, Reply(text="probe answered")), Reply(text="closed again")])
    result: dict[str, Any] = {}
    probe = threading.Thread(target=lambda: result.update(r=gw.post()), daemon=True)
    probe.start()
    try:
        fake_server.wait_for_requests(1)
        r = gw.post()  # the probe is still in flight: nothing else may be called
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "models_unavailable"
        assert len(fake_server.requests) == 1
    finally:
        gate.set()
        probe.join(30)
    first = result["r"]
    assert first.status_code == 200, first.text
    assert first.json()["choices"][0]["message"]["content"] == "probe answered"
    assert first.headers["x-modelroute-model"] == "alpha-mini" and first.headers["x-modelroute-attempts"] == "1"
    assert [q.model for q in fake_server.requests] == ["alpha-mini"]  # the upstream was called once
    assert gw.engine.state.circuit("alpha-mini").state == "closed"
    assert gw.post().json()["choices"][0]["message"]["content"] == "closed again"


def test_routing_error_maps_to_503_504_and_reads_retry_after_from_circuits() -> None:
    now = [1000.0]
    state = MemoryStore(clock=lambda: now[0], wall=lambda: now[0])
    state.record("alpha-mini", "acme", "fail", CircuitConfig(failures=1, cooldown=12.5))
    state.record("beta-chat", "betacorp", "fail", CircuitConfig(failures=1, cooldown=40.0))
    skipped = [
        Attempt("alpha-mini", "acme", "skipped", "CircuitOpen"),
        Attempt("beta-chat", "betacorp", "skipped", "CircuitOpen"),
        Attempt("gamma-flash", "gammalabs", "skipped", "ProviderUnavailable"),
    ]
    err = routing_error(RoutingError(skipped), state, now[0])
    assert (err.status, err.code, err.headers["retry-after"]) == (503, "models_unavailable", "13")
    now[0] += 12.4  # 0.1 s left: still at least 1
    assert routing_error(RoutingError(skipped), state, now[0]).headers["retry-after"] == "1"
    err = routing_error(
        RoutingError(skipped[2:]), state, now[0]
    )  # only an unconfigured provider: no circuit to wait for
    assert (err.status, err.code) == (503, "models_unavailable") and "retry-after" not in err.headers
    timed_out = RoutingError([Attempt("alpha-mini", "acme", "error", "Timeout")])
    timed_out.deadline_passed = True
    err = routing_error(timed_out, state)
    assert (err.status, err.code) == (504, "deadline_exceeded")
    err = routing_error(RoutingError([Attempt("alpha-mini", "acme", "error", "ServerError", 503)]), state)
    assert (err.status, err.code) == (502, "upstream_failed")


def test_answers_that_do_not_agree_are_502_no_consensus(start, fake_server: FakeServer) -> None:
    gw = start("set retry.attempts = 0\notherwise consensus [alpha-mini, beta-chat, gamma-flash] min_agreement 2\n")
    for model, text in (("alpha-mini", "Paris"), ("beta-chat", "Lyon"), ("gamma-flash", "Nice")):
        fake_server.always(model, Reply(text=text))
    r = gw.post()
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert error["code"] == "no_consensus"
    assert "1 of 3 votes, min_agreement is 2" in error["message"]
    for model, text in (("beta-chat", "paris."), ("gamma-flash", "Nice")):
        fake_server.always(model, Reply(text=text))
    assert gw.post().status_code == 200  # two of three agree after normalisation


# ---- x-modelroute-deadline -------------------------------------------------------------------------------------
# These need the executor to read options["deadline"] and set RoutingError.deadline_passed.
def test_deadline_header_ends_a_hanging_request_with_504(start, fake_server: FakeServer) -> None:
    gw = start("set retry.attempts = 0\notherwise use alpha-mini\n")  # no `set deadline`
    fake_server.always("alpha-mini", Fault.hang(20))
    t0 = time.monotonic()
    r = gw.post(headers={"x-modelroute-deadline": "300ms"})
    took = time.monotonic() - t0
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "deadline_exceeded"
    assert took < 4.5, f"the 300ms deadline took {took:.2f}s"  # the provider's own timeout is 5 s, the hang 20 s
    wait_until(lambda: gw.engine.state.in_flight("alpha-mini") == 0, "the timed-out call to be released")


def test_a_deadline_header_cannot_lengthen_the_policy_deadline(start, fake_server: FakeServer) -> None:
    gw = start("set retry.attempts = 0\nset deadline = 300ms\notherwise use alpha-mini\n")
    fake_server.always("alpha-mini", Fault.hang(20))
    t0 = time.monotonic()
    r = gw.post(headers={"x-modelroute-deadline": "30s"})
    took = time.monotonic() - t0
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded", r.text
    assert took < 4.5, f"the policy's 300ms deadline took {took:.2f}s"


def test_a_deadline_header_in_time_changes_nothing(start, fake_server: FakeServer) -> None:
    gw = start("otherwise use alpha-mini\n")
    for value in ("30s", "2.5", "800ms"):
        r = gw.post(headers={"x-modelroute-deadline": value})
        assert r.status_code == 200, r.text


def test_the_deadline_header_becomes_the_deadline_option_in_seconds() -> None:
    for value, seconds in (("800ms", 0.8), ("30s", 30.0), ("2.5", 2.5), (" .5s ", 0.5)):
        assert parse_chat({"messages": MSG}, {"x-modelroute-deadline": value}).options["deadline"] == seconds
    assert "deadline" not in parse_chat({"messages": MSG}, {}).options


@pytest.mark.parametrize("value", ["abc", "-1", "0", "0ms", "1e999", "30m", "inf", "1 s", ""])
def test_a_malformed_deadline_header_is_a_400(start, fake_server: FakeServer, value: str) -> None:
    gw = start("otherwise use alpha-mini\n")
    r = gw.post(headers={"x-modelroute-deadline": value})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_header" and err["param"] == "x-modelroute-deadline"
    assert "x-modelroute-deadline" in err["message"] and "800ms" in err["message"] and "30s" in err["message"]
    assert fake_server.requests == []


# ---- a client that hangs up ------------------------------------------------------------------------------------
def _raw_request(url: str, body: dict[str, Any]) -> socket.socket:
    data = json.dumps(body).encode()
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s" % (host.encode(), KEY.encode(), len(data), data)
    )
    return sock


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream-before-first-token"])
@pytest.mark.parametrize("starlette", [False, True], ids=["fast-path", "starlette"])
def test_a_client_that_hangs_up_cancels_the_upstream_call(
    start, fake_server: FakeServer, stream: bool, starlette: bool
) -> None:
    gw = start("budget daily $5\nset retry.attempts = 0\notherwise use alpha-mini\n", starlette=starlette)
    state, ex = gw.engine.state, gw.engine.executor
    (budget,) = [a.key for a in ex.budgets.applicable(gw.engine.policy.budgets, {})]
    key_budget = key_budget_key("team", time.time())
    gate = threading.Event()
    fake_server.script("alpha-mini", Fault.held(gate))
    try:
        sock = _raw_request(gw.url, {**BODY, "stream": stream})
        fake_server.wait_for_requests(1)
        wait_until(lambda: state.in_flight("alpha-mini") == 1, "the upstream call to be in flight")
        assert state.spent(budget)[1] > 0 and state.spent(key_budget)[1] > 0  # both holds taken
        sock.close()  # hang up while the upstream call is held
        wait_until(lambda: state.in_flight("alpha-mini") == 0, "the upstream call to be cancelled")
        wait_until(
            lambda: gw.metric('modelroute_requests_total{endpoint="chat",status="499"} 1'),
            "the request to be counted as 499",
        )
        assert gw.metric('modelroute_attempts_total{model="alpha-mini",outcome="cancelled"} 1')
        assert state.spent(budget) == (0.0, 0.0) and state.spent(key_budget) == (0.0, 0.0)  # released, nothing spent
        assert gw.gateway.active == 0
    finally:
        gate.set()
    r = gw.post()  # the gateway goes on serving
    assert r.status_code == 200 and r.headers["x-modelroute-model"] == "alpha-mini"


def test_a_client_that_hangs_up_mid_stream_is_counted_as_499(start, fake_server: FakeServer) -> None:
    gw = start("otherwise use alpha-mini\n")
    fake_server.script("alpha-mini", Reply(text="a b c d e f g h", chunks=8, chunk_delay=0.5))
    sock = _raw_request(gw.url, {**BODY, "stream": True})
    try:
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # the head and the first chunk
    finally:
        sock.close()
    wait_until(
        lambda: gw.metric('modelroute_requests_total{endpoint="chat",status="499"} 1'), "the stream to count as 499"
    )
    wait_until(lambda: gw.engine.state.in_flight("alpha-mini") == 0, "the upstream stream to be closed")
    assert gw.gateway.active == 0


def test_a_client_that_waits_is_answered_on_the_same_raw_connection(start, fake_server: FakeServer) -> None:
    gw = start("otherwise use alpha-mini\n")
    fake_server.script("alpha-mini", Reply(text="still here", delay=0.2))
    sock = _raw_request(gw.url, BODY)
    try:
        sock.settimeout(10)
        head = b""
        while b"still here" not in head:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed early: {head!r}"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200")
    finally:
        sock.close()
    assert gw.metric('modelroute_requests_total{endpoint="chat",status="200"} 1')


def test_spend_settled_without_usage_is_estimated_and_counted_as_such(start, fake_server: FakeServer) -> None:
    from tests.fakeserver import Billing

    gw = start("set retry.attempts = 0\notherwise use alpha-mini\n")
    fake_server.billing = Billing(omit_usage=True)
    r = gw.post()
    assert r.status_code == 200, r.text
    metrics = httpx.get(gw.url + "/metrics").text
    line = next(
        x for x in metrics.splitlines() if x.startswith('modelroute_spend_estimated_usd_total{model="alpha-mini"}')
    )
    assert float(line.rsplit(" ", 1)[1]) > 0  # never $0: estimated from what was sent and received
