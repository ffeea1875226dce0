"""Streamed answers at the gateway (issue 18): a streamed request cut short before its body began (a client gone
before the headers, a server whose send fails on them, a stream that fails after its first event) in; nothing left
held (in-flight count, key budget hold, rate-limit tokens) and the request counted (499 or 500) out. And the cost of
a streamed answer in its last event, read with the official openai and anthropic SDKs."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")

import anyio

from providers.catalog.loader import load_catalog
from providers.gateway import wire as wire_module
from providers.gateway.app import Gateway
from providers.gateway.keys import GatewayKey, KeyRing, hash_key
from providers.gateway.run import key_budget_key
from providers.state.ratelimit import Check, MemoryLimiter, attach
from tests.engines import CATALOG, engine_for, idle
from tests.fakeserver import FakeServer, Reply
from tests.test_gateway import ThreadServer
from tests.waiting import wait_until

KEY = "mr-stream-cleanup-key"
TPM = 100_000
MAX_TOKENS = 500  # the tpm estimate is the input plus this: settled, the bucket gets most of it back
POLICY = "otherwise use alpha-mini\n"
MESSAGES: Any = [{"role": "user", "content": "hello"}]
BODY = {"model": "auto", "stream": True, "max_tokens": MAX_TOKENS, "messages": MESSAGES}


@pytest.fixture
def gateway(fake_server: FakeServer) -> Iterator[Gateway]:
    """A Gateway over alpha-mini (the FakeServer) whose key has a daily budget and a tpm limit, with a
    MemoryLimiter on a clock that does not move (the tpm bucket reads the same until something is settled)."""
    engine = engine_for(fake_server, POLICY)
    attach(engine.state, MemoryLimiter(lambda: 1_700_000_000.0))
    keys = KeyRing([GatewayKey("team", hash_key(KEY), daily_budget=5.0, tpm=TPM)])
    gw = Gateway(engine, keys=keys)
    try:
        yield gw
    finally:
        engine.close()


def tpm_left(gw: Gateway) -> int:
    """The key's tpm bucket's remaining tokens (read by taking nothing from it)."""
    from providers.state.ratelimit import limiter_for

    _ok, (verdict,) = limiter_for(gw.engine.state).acquire([Check("key:team:tpm", TPM, 0.0)])
    return verdict.remaining


def counted(gw: Gateway, status: int, endpoint: str = "chat") -> float:
    value = gw.metrics.registry.get_sample_value(
        "modelroute_requests_total", {"endpoint": endpoint, "status": str(status)}
    )
    return value or 0.0


def assert_released(gw: Gateway, status: int) -> None:
    """Nothing of the request is left held, and it was counted once with `status`."""
    state: Any = gw.engine.state

    def held() -> float:  # the hold was made under a minute ago: today's key, or yesterday's just after midnight UTC
        now = time.time()
        return sum(state.spent(key)[1] for key in {key_budget_key("team", t) for t in (now - 60, now)})

    wait_until(lambda: gw.active == 0, "the gateway's in-flight count to drop to 0", timeout=5)
    wait_until(lambda: idle(gw.engine), "the upstream attempt to be released", timeout=5)
    # the request is counted, and its budgets settled, just after it leaves the in-flight count
    wait_until(
        lambda: counted(gw, status) >= 1 and held() < 1e-12 and tpm_left(gw) > TPM - MAX_TOKENS,
        "the request to be counted and its holds settled",
        timeout=5,
    )
    assert held() == pytest.approx(0.0, abs=1e-12)  # the key budget's hold was released
    assert tpm_left(gw) > TPM - MAX_TOKENS  # the estimate (input + max_tokens) was settled to the real usage
    assert counted(gw, status) == 1
    assert gw.active == 0  # not taken twice


def request_bytes(path: str = "/v1/chat/completions", body: dict[str, Any] = BODY) -> bytes:
    raw = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(raw)}\r\n\r\n"
    )
    return head.encode() + raw


# ---- a stream cut short before its body began -----------------------------------------------------------------


def test_a_client_gone_before_the_headers_releases_everything(gateway: Gateway) -> None:
    """A raw socket client sends a streamed request and hangs up once the gateway is sending the headers; the
    server wrapper holds that send until Starlette, noticing the hang-up, cancels it (so the body never began)."""
    app = gateway.asgi()
    sending = threading.Event()

    async def holding(scope: Any, receive: Any, send: Any) -> None:
        async def held(message: Any) -> None:
            if message["type"] == "http.response.start" and scope.get("path") == "/v1/chat/completions":
                sending.set()
                await anyio.sleep_forever()  # cancelled by the response once the client is gone
            await send(message)

        await app(scope, receive, held)

    with ThreadServer(holding) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
            client.sendall(request_bytes())
            assert sending.wait(10), "the gateway never started its answer"
        assert_released(gateway, 499)


def test_a_send_failing_on_the_headers_releases_everything(gateway: Gateway) -> None:
    """Driven through ASGI (the upstream is the loopback FakeServer): the server's send raises on
    http.response.start, as a server does on a connection already closed."""
    app = gateway.asgi()
    raw = json.dumps(BODY).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"authorization", f"Bearer {KEY}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }

    async def go() -> None:
        await gateway.start()
        sent = False
        never = asyncio.Event()

        async def receive() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await never.wait()  # the client stays: no http.disconnect
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            if message["type"] == "http.response.start":
                raise OSError("the connection is closed")

        with pytest.raises(OSError):
            await app(scope, receive, send)
        for engine in gateway.engines():
            engine.executor.health.stop()

    asyncio.run(go())
    assert_released(gateway, 499)


def test_a_stream_failing_after_its_first_event_releases_everything(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The endpoint's writer fails after the first event came, before any response exists: a 500, nothing held."""

    def broken(self: Any, model: str) -> Any:
        raise RuntimeError("the writer failed")

    monkeypatch.setattr(wire_module.ChatWire, "writer", broken)
    import httpx

    with ThreadServer(gateway.asgi()) as server:
        r = httpx.post(
            server.url + "/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {KEY}"}, timeout=10
        )
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        assert_released(gateway, 500)


# ---- the cost of a streamed answer ----------------------------------------------------------------------------


def price(model: str, input_tokens: int, output_tokens: int) -> float:
    m = load_catalog(CATALOG).models[model]
    return input_tokens * float(m.input_price) + output_tokens * float(m.output_price)


@pytest.fixture
def served(fake_server: FakeServer) -> Iterator[str]:
    """The URL of a started gateway over alpha-mini (no keys); the FakeServer answers 12 in, 7 out."""
    fake_server.default = Reply(text="streamed answer", input_tokens=12, output_tokens=7)
    engine = engine_for(fake_server, POLICY)
    try:
        with ThreadServer(Gateway(engine).asgi()) as server:
            yield server.url
    finally:
        engine.close()


def test_a_chat_stream_with_usage_carries_its_cost_in_the_usage_chunk(served: str) -> None:
    import openai

    client = openai.OpenAI(base_url=served + "/v1", api_key="unused", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="auto", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (12, 7)
    assert usage.model_extra is not None
    assert usage.model_extra["cost"] == pytest.approx(price("alpha-mini", 12, 7))
    assert usage.model_extra["cost_estimated"] is False
    assert all(c.usage is None for c in chunks[:-1])


def test_a_chat_stream_without_usage_carries_its_cost_on_the_finish_chunk(served: str) -> None:
    import openai

    client = openai.OpenAI(base_url=served + "/v1", api_key="unused", max_retries=0)
    with client.chat.completions.with_streaming_response.create(model="auto", messages=MESSAGES, stream=True) as raw:
        assert "x-modelroute-cost" not in raw.headers  # a stream's cost is known only at its end
        chunks = list(raw.parse())
    last = chunks[-1]
    assert last.choices and last.choices[0].finish_reason == "stop" and last.usage is None
    assert last.model_extra is not None
    assert last.model_extra["x_modelroute_cost"] == {
        "usd": pytest.approx(price("alpha-mini", 12, 7)),
        "estimated": False,
    }
    assert all("x_modelroute_cost" not in (c.model_extra or {}) for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "streamed answer"


def test_a_messages_stream_carries_its_cost_in_the_message_delta(served: str) -> None:
    anthropic = pytest.importorskip("anthropic")

    client = anthropic.Anthropic(base_url=served, api_key="unused", max_retries=0)
    events = list(
        client.messages.create(
            model="auto", max_tokens=100, messages=[{"role": "user", "content": "hello"}], stream=True
        )
    )
    (delta,) = [e for e in events if e.type == "message_delta"]
    assert delta.usage.output_tokens == 7
    assert delta.usage.model_extra is not None
    assert delta.usage.model_extra["cost"] == pytest.approx(price("alpha-mini", 12, 7))
    assert delta.usage.model_extra["cost_estimated"] is False


def test_a_responses_stream_carries_its_cost_in_response_completed(served: str) -> None:
    import openai

    client = openai.OpenAI(base_url=served + "/v1", api_key="unused", max_retries=0)
    events = list(client.responses.create(model="auto", input="hello", stream=True))
    (completed,) = [e for e in events if e.type == "response.completed"]
    usage = completed.response.usage
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (12, 7)
    assert usage.model_extra is not None
    assert usage.model_extra["cost"] == pytest.approx(price("alpha-mini", 12, 7))
    assert usage.model_extra["cost_estimated"] is False


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_completions_stream_carries_its_cost_like_chat(served: str, include_usage: bool) -> None:
    import openai

    client = openai.OpenAI(base_url=served + "/v1", api_key="unused", max_retries=0)
    options: Any = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = list(client.completions.create(model="auto", prompt="hello", stream=True, **options))
    cost = price("alpha-mini", 12, 7)
    if include_usage:
        usage = chunks[-1].usage
        assert usage is not None and usage.model_extra is not None
        assert usage.model_extra["cost"] == pytest.approx(cost) and usage.model_extra["cost_estimated"] is False
    else:
        last = chunks[-1]
        assert last.choices[0].finish_reason == "stop" and last.model_extra is not None
        assert last.model_extra["x_modelroute_cost"] == {"usd": pytest.approx(cost), "estimated": False}
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "streamed answer"
