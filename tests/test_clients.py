"""Tests for the provider HTTP clients: ProviderSpec/ModelSpec plus a ChatRequest in, checked against the
FakeServer over real loopback sockets (request shape, results, each fault's error class, pooling, secrets)."""

from __future__ import annotations

import email.utils
import ipaddress
import itertools
import json
import logging
import socket
import subprocess
import sys
import traceback
import types
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import providers.errors as errors_module
from providers.catalog.models import PROVIDER_KINDS, ModelSpec, ProviderSpec
from providers.clients import AnthropicClient, GeminiClient, OpenAIClient, ProviderClient, client_for
from providers.clients.sse import aiter_sse_bytes, aiter_sse_lines, iter_sse_bytes
from providers.errors import (
    AuthError,
    BadRequest,
    ConnectionFailed,
    ContentFiltered,
    ContextTooLong,
    MalformedResponse,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    ServerError,
    Timeout,
    classify_exception,
    classify_http,
    parse_retry_after,
)
from providers.types import ChatRequest, Message, ResponseFormat, StreamEvent, ToolCall, function_tool

try:
    from tests.fakeserver import Call, FakeServer, Fault, Reply, fake_server
except ModuleNotFoundError:  # plain `pytest` puts tests/, not the repo root, on sys.path
    from fakeserver import Call, FakeServer, Fault, Reply, fake_server  # type: ignore[no-redef]  # noqa: F401

KINDS = [k for k in PROVIDER_KINDS if k != "azure"]  # azure: its own URLs and header, tests/test_azure.py
MODEL_IDS = {"openai": "gpt-test", "anthropic": "claude-test", "gemini": "gemini-test"}
AUTH_HEADER = {"openai": "authorization", "anthropic": "x-api-key", "gemini": "x-goog-api-key"}
CANARY = "sk-CANARY-123"
REQ = ChatRequest(messages=[Message.user("Hello there")], system="Be brief.", temperature=0.2, max_tokens=50)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class NetworkLeak(BaseException):
    """Raised on a non-loopback connect; a BaseException so no `except Exception` can hide it."""


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that tries to reach a non-loopback address (or to resolve a public name)."""
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not ipaddress.ip_address(address[0]).is_loopback:
            raise NetworkLeak(f"non-loopback connect to {address[0]}")
        return real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kw: Any) -> Any:
        if (host.decode() if isinstance(host, bytes) else host) not in ("127.0.0.1", "localhost", "::1", None):
            raise NetworkLeak(f"name lookup of {host}")
        return real_getaddrinfo(host, *args, **kw)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def spec_for(kind: str, server: FakeServer | None, **kw: Any) -> ProviderSpec:
    fields: dict[str, Any] = {
        "name": f"{kind}-prov",
        "kind": kind,
        "api_key_env": f"TEST_{kind.upper()}_KEY",
        "timeout_s": 5.0,
        "base_url": server.base_url(kind) if server else None,
    }
    return ProviderSpec(**(fields | kw))


def model_for(kind: str) -> ModelSpec:
    return ModelSpec(
        name=f"{kind}-model",
        provider=f"{kind}-prov",
        id=MODEL_IDS[kind],
        context=100_000,
        max_output=4096,
        input_price=1e-6,
        output_price=2e-6,
        latency_ms=100,
    )


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def client(kind: str, fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(f"TEST_{kind.upper()}_KEY", f"sk-test-{kind}")
    with client_for(spec_for(kind, fake_server)) as c:
        yield c


@pytest.fixture
async def aclient(kind: str, fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Like `client`, but closed with `aclose()` inside the test's event loop."""
    monkeypatch.setenv(f"TEST_{kind.upper()}_KEY", f"sk-test-{kind}")
    async with client_for(spec_for(kind, fake_server)) as c:
        yield c


def collect(events: Any) -> list[StreamEvent]:
    return list(events)


async def acollect(events: Any) -> list[StreamEvent]:
    return [e async for e in events]


# ---- success paths -----------------------------------------------------------------------------------------
def check_request(kind: str, server: FakeServer, *, stream: bool) -> dict[str, Any]:
    rec = server.last()
    assert rec.model == MODEL_IDS[kind] and rec.stream is stream
    key = rec.headers[AUTH_HEADER[kind]]
    assert key == (f"Bearer sk-test-{kind}" if kind == "openai" else f"sk-test-{kind}")
    body = rec.body
    if kind == "openai":
        assert rec.path == "/v1/chat/completions"
        assert body["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello there"},
        ]
        assert body["max_completion_tokens"] == 50 and body["temperature"] == 0.2
        if stream:
            assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    elif kind == "anthropic":
        assert rec.path == "/v1/messages" and rec.headers["anthropic-version"] == "2023-06-01"
        assert body["system"] == "Be brief." and body["max_tokens"] == 50 and body["temperature"] == 0.2
        assert body["messages"] == [{"role": "user", "content": "Hello there"}]
        assert body.get("stream", False) is stream
    else:
        method = "streamGenerateContent" if stream else "generateContent"
        assert rec.path == f"/v1beta/models/gemini-test:{method}"
        assert rec.query == ({"alt": ["sse"]} if stream else {})
        assert body["contents"] == [{"role": "user", "parts": [{"text": "Hello there"}]}]
        assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
        assert body["generationConfig"] == {"temperature": 0.2, "maxOutputTokens": 50}
    return body


def check_response(kind: str, response: Any, text: str = "Hi from the fake") -> None:
    assert response.text == text and response.finish_reason == "stop"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 7)
    assert response.cost == pytest.approx(12 * 1e-6 + 7 * 2e-6)
    assert response.provider == f"{kind}-prov" and response.model == f"{kind}-model"
    assert response.latency_s > 0


def test_chat_success(kind: str, client: ProviderClient, fake_server: FakeServer) -> None:
    fake_server.script(MODEL_IDS[kind], Reply(text="Hi from the fake", input_tokens=12, output_tokens=7))
    check_response(kind, client.chat(model_for(kind), REQ))
    check_request(kind, fake_server, stream=False)


@pytest.mark.anyio
async def test_achat_success(kind: str, aclient: ProviderClient, fake_server: FakeServer) -> None:
    fake_server.script(MODEL_IDS[kind], Reply(text="Hi from the fake", input_tokens=12, output_tokens=7))
    check_response(kind, await aclient.achat(model_for(kind), REQ))
    check_request(kind, fake_server, stream=False)


def check_stream(kind: str, events: list[StreamEvent]) -> None:
    deltas = [e.text for e in events if e.kind == "delta"]
    assert len(deltas) >= 3 and "".join(deltas) == "Hi from the fake"
    assert [e.kind for e in events[-2:]] == ["usage", "done"]
    done = events[-1].response
    assert done is not None and done.first_token_s is not None
    check_response(kind, done)


def test_stream_success(kind: str, client: ProviderClient, fake_server: FakeServer) -> None:
    fake_server.script(MODEL_IDS[kind], Reply(text="Hi from the fake", input_tokens=12, output_tokens=7))
    check_stream(kind, collect(client.stream(model_for(kind), REQ)))
    check_request(kind, fake_server, stream=True)


@pytest.mark.anyio
async def test_astream_success(kind: str, aclient: ProviderClient, fake_server: FakeServer) -> None:
    fake_server.script(MODEL_IDS[kind], Reply(text="Hi from the fake", input_tokens=12, output_tokens=7))
    check_stream(kind, await acollect(aclient.astream(model_for(kind), REQ)))
    check_request(kind, fake_server, stream=True)


WEATHER = function_tool(
    "get_weather",
    "Weather for a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TOOL_REQ = ChatRequest(messages=[Message.user("Weather in Paris?")], tools=[WEATHER], tool_choice="get_weather")


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls(kind: str, client: ProviderClient, fake_server: FakeServer, stream: bool) -> None:
    calls = [
        Call("get_weather", {"city": "Paris"}, id="call_a"),
        Call("get_weather", {"city": "Lyon"}, id="b"),
    ]
    fake_server.script(MODEL_IDS[kind], Reply(text="", tool_calls=calls))
    if stream:
        events = collect(client.stream(model_for(kind), TOOL_REQ))
        streamed = [e.tool_call for e in events if e.kind == "tool_call"]
        response = events[-1].response
        assert response is not None and streamed == response.tool_calls
    else:
        response = client.chat(model_for(kind), TOOL_REQ)
    assert response.finish_reason == "tool_calls"
    assert [c.name for c in response.tool_calls] == ["get_weather", "get_weather"]
    assert [c.parsed_arguments() for c in response.tool_calls] == [{"city": "Paris"}, {"city": "Lyon"}]
    if kind != "gemini":  # Gemini's functionCall carries no id: ours are synthesised
        assert [c.id for c in response.tool_calls] == ["call_a", "b"]
    body = fake_server.last().body
    params = WEATHER["function"]["parameters"]
    if kind == "openai":
        assert body["tools"] == [WEATHER]
        assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    elif kind == "anthropic":
        assert body["tools"] == [{"name": "get_weather", "description": "Weather for a city", "input_schema": params}]
        assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    else:
        decl = {"name": "get_weather", "description": "Weather for a city", "parameters": params}
        assert body["tools"] == [{"functionDeclarations": [decl]}]
        assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}


def test_tool_results_and_json_format_shapes(kind: str, client: ProviderClient, fake_server: FakeServer) -> None:
    schema = {"type": "object", "properties": {"temp": {"type": "number"}}}
    req = ChatRequest(
        messages=[
            Message.system("You are terse."),
            Message.user("Weather in Paris?"),
            Message.assistant("", [ToolCall(id="c1", name="get_weather", arguments='{"city": "Paris"}')]),
            Message.tool("c1", '{"temp": 21}'),
        ],
        tools=[WEATHER],
        response_format=ResponseFormat(type="json_schema", json_schema=schema),
        stop="END",
    )
    client.chat(model_for(kind), req)
    body = fake_server.last().body
    if kind == "openai":
        assert body["messages"][0] == {"role": "system", "content": "You are terse."}
        assert body["messages"][2]["tool_calls"][0]["function"] == {
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        }
        assert body["messages"][3] == {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'}
        assert body["response_format"]["json_schema"]["schema"] == schema and body["stop"] == ["END"]
    elif kind == "anthropic":
        assert body["system"].startswith("You are terse.") and "JSON Schema" in body["system"]
        assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
        assert body["messages"][1]["content"] == [
            {"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Paris"}}
        ]
        assert body["messages"][2]["content"] == [
            {"type": "tool_result", "tool_use_id": "c1", "content": '{"temp": 21}'}
        ]
        assert body["stop_sequences"] == ["END"]
    else:
        assert body["systemInstruction"] == {"parts": [{"text": "You are terse."}]}
        assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
        assert body["contents"][1]["parts"] == [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]
        assert body["contents"][2]["parts"] == [{"functionResponse": {"name": "get_weather", "response": {"temp": 21}}}]
        config = body["generationConfig"]
        assert config["responseMimeType"] == "application/json" and config["responseJsonSchema"] == schema
        assert config["stopSequences"] == ["END"]


# ---- faults ------------------------------------------------------------------------------------------------
FAULTS: dict[str, tuple[Any, type[ProviderError], int | None]] = {
    "429": (Fault.rate_limited(retry_after=2), RateLimited, 429),
    "500": (Fault.server_error(500), ServerError, 500),
    "503": (Fault.server_error(503), ServerError, 503),
    "529": (Fault.overloaded(), ServerError, 529),
    "401": (Fault.auth(), AuthError, 401),
    "context": (Fault.context_too_long(), ContextTooLong, 400),
    "filtered": (Fault.content_filtered(), ContentFiltered, None),
    "malformed": (Fault.malformed(), MalformedResponse, None),
    "reset": (Fault.reset(), ConnectionFailed, None),
    "closed": (Fault.close(), ConnectionFailed, None),
}
TRANSIENT = {RateLimited, ServerError, MalformedResponse, ConnectionFailed, Timeout}


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_mapping(kind: str, client: ProviderClient, fake_server: FakeServer, fault: str, stream: bool) -> None:
    behaviour, error_class, status = FAULTS[fault]
    if stream and fault == "malformed":
        behaviour = Fault.raw(200, b"data: {not json\n\n", "text/event-stream")
    fake_server.script(MODEL_IDS[kind], behaviour)
    with pytest.raises(error_class) as info:
        if stream:
            collect(client.stream(model_for(kind), REQ))
        else:
            client.chat(model_for(kind), REQ)
    error = info.value
    assert error.status == status and error.provider == f"{kind}-prov" and error.model == f"{kind}-model"
    assert error.transient is (error_class in TRANSIENT)
    if fault == "429":
        assert error.retry_after == 2.0
    # the client stays usable after any fault
    fake_server.script(MODEL_IDS[kind], Reply(text="recovered"))
    assert client.chat(model_for(kind), REQ).text == "recovered"


@pytest.mark.parametrize("header", ["ms", "date"])
def test_retry_after_variants(
    kind: str, client: ProviderClient, fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch, header: str
) -> None:
    now = 1_750_000_000.0  # the wall clock an HTTP-date is read against, frozen: no dependence on today or load
    monkeypatch.setattr(errors_module, "time", types.SimpleNamespace(time=lambda: now))
    if header == "ms":
        fault = Fault.status(429, retry_after_ms=1500)
    else:
        fault = Fault.status(503, retry_after=email.utils.formatdate(now + 30, usegmt=True))
    fake_server.script(MODEL_IDS[kind], fault)
    with pytest.raises(RateLimited if header == "ms" else ServerError) as info:
        client.chat(model_for(kind), REQ)
    assert info.value.retry_after == (1.5 if header == "ms" else 30.0)


def test_gemini_retry_info_and_status_names(fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_GEMINI_KEY", "k")
    body = {
        "error": {
            "code": 429,
            "message": "Quota exceeded",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "13s"}],
        }
    }
    fake_server.script("gemini-test", Fault.raw(429, json.dumps(body).encode()))
    with client_for(spec_for("gemini", fake_server)) as c, pytest.raises(RateLimited) as info:
        c.chat(model_for("gemini"), REQ)
    assert info.value.retry_after == 13.0 and info.value.code == "RESOURCE_EXHAUSTED"


def test_openai_insufficient_quota_is_not_transient(fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_OPENAI_KEY", "k")
    fake_server.script(
        "gpt-test", Fault.status(429, message="You exceeded your quota", error_code="insufficient_quota")
    )
    with client_for(spec_for("openai", fake_server)) as c, pytest.raises(RateLimited) as info:
        c.chat(model_for("openai"), REQ)
    assert info.value.transient is False


# The call's timeout (0.3 s) is shorter than the upstream's hang (5 s), which is shorter than the provider's
# timeout_s (60 s): only a timeout taken from the call raises Timeout; one ignored lets the hang end in a closed
# connection (ConnectionFailed) instead. No wall-clock bound is asserted.
HANG = 5.0
PATIENT = {"timeout_s": 60.0}


@pytest.mark.parametrize("mode", ["sync", "stream"])
def test_the_calls_timeout_is_honoured(
    kind: str, fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv(f"TEST_{kind.upper()}_KEY", f"sk-test-{kind}")
    fake_server.script(MODEL_IDS[kind], Fault.hang(HANG))
    with client_for(spec_for(kind, fake_server, **PATIENT)) as client, pytest.raises(Timeout) as info:
        if mode == "sync":
            client.chat(model_for(kind), REQ, timeout=0.3)
        else:
            collect(client.stream(model_for(kind), REQ, timeout=0.3))
    assert info.value.transient


@pytest.mark.anyio
@pytest.mark.parametrize("fault", ["hang", "reset", "429"])
async def test_async_faults(kind: str, fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    behaviour, error_class = {
        "hang": (Fault.hang(HANG), Timeout),  # see test_the_calls_timeout_is_honoured
        "reset": (Fault.reset(), ConnectionFailed),
        "429": (Fault.rate_limited(3), RateLimited),
    }[fault]
    monkeypatch.setenv(f"TEST_{kind.upper()}_KEY", f"sk-test-{kind}")
    fake_server.script(MODEL_IDS[kind], [behaviour, behaviour])
    async with client_for(spec_for(kind, fake_server, **PATIENT)) as aclient:
        with pytest.raises(error_class):
            await aclient.achat(model_for(kind), REQ, timeout=0.3)
        with pytest.raises(error_class):
            await acollect(aclient.astream(model_for(kind), REQ, timeout=0.3))


@pytest.mark.parametrize("abort", [True, False], ids=["rst", "clean-eof"])
def test_stream_cut_midway_raises(kind: str, client: ProviderClient, fake_server: FakeServer, abort: bool) -> None:
    fake_server.script(MODEL_IDS[kind], Fault.cut_stream(after=4, abort=abort))
    received: list[StreamEvent] = []
    with pytest.raises(ConnectionFailed if abort else MalformedResponse):
        for event in client.stream(model_for(kind), REQ):
            received.append(event)
    assert received and all(e.kind == "delta" for e in received)  # partial text arrived, then the error


@pytest.mark.anyio
async def test_astream_cut_midway_raises(kind: str, aclient: ProviderClient, fake_server: FakeServer) -> None:
    fake_server.script(MODEL_IDS[kind], [Fault.cut_stream(after=4, abort=False), Fault.cut_stream(after=4)])
    with pytest.raises(MalformedResponse):
        await acollect(aclient.astream(model_for(kind), REQ))
    with pytest.raises(ConnectionFailed):
        await acollect(aclient.astream(model_for(kind), REQ))


def test_in_stream_error_event(kind: str, client: ProviderClient, fake_server: FakeServer) -> None:
    fake_server.script(MODEL_IDS[kind], Fault.stream_error(after=2))
    with pytest.raises(ServerError) as info:
        collect(client.stream(model_for(kind), REQ))
    assert info.value.transient
    assert info.value.status == {"openai": None, "anthropic": 529, "gemini": 503}[kind]


def test_slow_reply_within_timeout(kind: str, client: ProviderClient, fake_server: FakeServer) -> None:
    fake_server.script(MODEL_IDS[kind], Fault.slow(0.3, "late"))
    response = client.chat(model_for(kind), REQ, timeout=30)
    assert response.text == "late" and response.latency_s >= 0.3  # a lower bound the server's wait guarantees


# ---- keys, pooling, transports -----------------------------------------------------------------------------
def test_missing_key_raises_before_network(kind: str, fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(f"TEST_{kind.upper()}_KEY", raising=False)
    client = client_for(spec_for(kind, fake_server))
    for call in (lambda: client.chat(model_for(kind), REQ), lambda: client.stream(model_for(kind), REQ)):
        with pytest.raises(ProviderUnavailable) as info:
            call()
        assert info.value.transient is False and f"TEST_{kind.upper()}_KEY" in str(info.value)
    assert fake_server.requests == [] and fake_server.connections == 0


@pytest.mark.anyio
async def test_missing_key_async(fake_server: FakeServer) -> None:
    client = client_for(spec_for("anthropic", fake_server, api_key_env="TEST_UNSET_KEY_XYZ"))
    with pytest.raises(ProviderUnavailable):
        await client.achat(model_for("anthropic"), REQ)
    with pytest.raises(ProviderUnavailable):
        client.astream(model_for("anthropic"), REQ)
    assert fake_server.requests == []


def test_keyless_provider_sends_no_auth(fake_server: FakeServer) -> None:
    with client_for(spec_for("openai", fake_server, api_key_env=None, headers={"X-Org": "o1"})) as c:
        assert c.chat(model_for("openai"), REQ).text == "ok"
    assert "authorization" not in fake_server.last().headers and fake_server.last().headers["x-org"] == "o1"


def test_keep_alive_reuses_one_connection(kind: str, client: ProviderClient, fake_server: FakeServer) -> None:
    for _ in range(4):
        client.chat(model_for(kind), REQ)
    for _ in range(2):
        collect(client.stream(model_for(kind), REQ))
    assert fake_server.connections == 1 and {r.connection for r in fake_server.requests} == {1}


@pytest.mark.anyio
async def test_async_keep_alive(kind: str, aclient: ProviderClient, fake_server: FakeServer) -> None:
    for _ in range(3):
        await aclient.achat(model_for(kind), REQ)
    await acollect(aclient.astream(model_for(kind), REQ))
    assert fake_server.connections == 1


def test_mock_transport_seam_uses_default_base_urls(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"TEST_{kind.upper()}_KEY", "k")
    seen: list[httpx.Request] = []
    replies = {
        "openai": {"choices": [{"message": {"content": "mocked"}, "finish_reason": "stop"}]},
        "anthropic": {"content": [{"type": "text", "text": "mocked"}], "stop_reason": "end_turn"},
        "gemini": {"candidates": [{"content": {"parts": [{"text": "mocked"}]}, "finishReason": "STOP"}]},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=replies[kind])

    urls = {
        "openai": "https://api.openai.com/v1/chat/completions",
        "anthropic": "https://api.anthropic.com/v1/messages",
        "gemini": "https://generativelanguage.googleapis.com/v1beta/models/gemini-test:generateContent",
    }
    with client_for(spec_for(kind, None), transport=httpx.MockTransport(handler)) as c:
        assert c.chat(model_for(kind), REQ).text == "mocked"
    assert str(seen[0].url) == urls[kind]


@pytest.mark.anyio
async def test_async_transport_seam() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(529, json={"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})

    client = AnthropicClient(spec_for("anthropic", None), api_key="k", async_transport=httpx.MockTransport(handler))
    async with client:
        with pytest.raises(ServerError) as info:
            await client.achat(model_for("anthropic"), REQ)
    assert info.value.status == 529 and info.value.code == "overloaded_error"


def test_client_for_dispatch_and_lifecycle(fake_server: FakeServer) -> None:
    assert type(client_for(spec_for("openai", None))) is OpenAIClient
    assert type(client_for(spec_for("gemini", None))) is GeminiClient
    with pytest.raises(ValueError, match="unknown provider kind"):
        client_for(ProviderSpec.model_construct(name="x", kind="cohere"))  # type: ignore[arg-type]
    client = client_for(spec_for("openai", fake_server), api_key="k")
    with client:
        client.chat(model_for("openai"), REQ)
        assert client.http() is client.http()
    assert client._client is None  # closed; a later call reopens lazily
    assert client.chat(model_for("openai"), REQ).text == "ok"
    client.close()


def test_connection_refused_is_connection_failed() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = spec_for("openai", None, base_url=f"http://127.0.0.1:{port}/v1")
    with client_for(spec, api_key="k") as c, pytest.raises(ConnectionFailed) as info:
        c.chat(model_for("openai"), REQ, timeout=1)
    assert info.value.transient and info.value.status is None


def test_error_and_type_modules_do_not_load_httpx() -> None:
    code = "import sys, providers.errors, providers.types; assert 'httpx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


# ---- secrets -----------------------------------------------------------------------------------------------
def test_api_key_never_leaks(
    kind: str, fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    auth_errors: list[str] = []
    for explicit in (True, False):
        if not explicit:
            monkeypatch.setenv(f"TEST_{kind.upper()}_KEY", CANARY)
        client = client_for(spec_for(kind, fake_server), api_key=CANARY if explicit else None)
        fake_server.script(MODEL_IDS[kind], [Reply(), Reply(), Fault.auth(echo_key=True), Fault.reset()])
        response = client.chat(model_for(kind), REQ)
        events = collect(client.stream(model_for(kind), REQ))
        texts += [repr(client), str(client), repr(vars(client)), repr(REQ), repr(response), repr(events)]
        for _ in range(2):
            with pytest.raises(ProviderError) as info:
                client.chat(model_for(kind), REQ)
            chain = "".join(traceback.format_exception(info.value))
            texts += [str(info.value), repr(info.value), chain, repr(info.value.__cause__)]
            if isinstance(info.value, AuthError):
                auth_errors.append(str(info.value))
        client.close()
    sent = fake_server.requests[0].headers[AUTH_HEADER[kind]]
    assert CANARY in sent  # the key really was used...
    assert len(auth_errors) == 2 and all("***" in e for e in auth_errors)  # ...the echoed key was redacted
    for text in [*texts, caplog.text]:  # ...but appears nowhere else
        assert CANARY not in text


# ---- SSE parser and classification units -------------------------------------------------------------------
SSE_TEXT = (
    ": keep-alive comment\r\n"
    'event: message_start\r\ndata: {"a": 1}\r\n\r\n'
    "data: line one\ndata: line two\n\n"
    "id: 7\rretry: 1500\rdata: café ☕\r\r"
    "data: [DONE]"  # no trailing blank line: still dispatched at end of input
)
SSE_EVENTS = [
    ("message_start", '{"a": 1}'),
    ("message", "line one\nline two"),
    ("message", "café ☕"),
    ("message", "[DONE]"),
]


@given(cuts=st.lists(st.integers(min_value=0, max_value=len(SSE_TEXT.encode())), max_size=12))
@settings(max_examples=150, deadline=None)
def test_sse_parser_is_chunking_independent(cuts: list[int]) -> None:
    data = SSE_TEXT.encode()
    bounds = [0, *sorted(cuts), len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    events = list(iter_sse_bytes(chunks))
    assert [(e.event, e.data) for e in events] == SSE_EVENTS
    assert events[2].id == "7" and events[2].retry == 1500


@pytest.mark.anyio
async def test_async_sse_parsers() -> None:
    async def byte_chunks() -> Any:
        data = SSE_TEXT.encode()
        for i in range(0, len(data), 5):
            yield data[i : i + 5]

    async def lines() -> Any:
        for line in SSE_TEXT.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
            yield line

    assert [(e.event, e.data) async for e in aiter_sse_bytes(byte_chunks())] == SSE_EVENTS
    assert [(e.event, e.data) async for e in aiter_sse_lines(lines())] == SSE_EVENTS


@pytest.mark.parametrize(
    ("kind", "status", "body", "expected"),
    [
        (
            "anthropic",
            400,
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "message": "prompt is too long: 201000 tokens > 200000",
                },
            },
            ContextTooLong,
        ),
        (
            "anthropic",
            400,
            {"type": "error", "error": {"type": "invalid_request_error", "message": "bad role"}},
            BadRequest,
        ),
        ("openai", 400, {"error": {"message": "filtered", "code": "content_filter"}}, ContentFiltered),
        ("openai", 404, {"error": {"message": "model not found", "code": "model_not_found"}}, BadRequest),
        ("openai", 403, {"error": {"message": "forbidden"}}, AuthError),
        (
            "gemini",
            400,
            {
                "error": {
                    "code": 400,
                    "status": "INVALID_ARGUMENT",
                    "message": "The input token count (5) exceeds the maximum number of tokens",
                }
            },
            ContextTooLong,
        ),
        ("gemini", 503, b"<html>upstream down</html>", ServerError),
        ("openai", 408, b"", Timeout),
    ],
)
def test_classify_http(kind: str, status: int, body: Any, expected: type[ProviderError]) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    error = classify_http(kind, status, {}, raw, provider="p", model="m")
    assert type(error) is expected and error.status == status


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ConnectTimeout("t"), Timeout),
        (httpx.PoolTimeout("t"), Timeout),
        (httpx.ConnectError("refused"), ConnectionFailed),
        (httpx.RemoteProtocolError("peer closed"), ConnectionFailed),
        (httpx.ReadError("reset"), ConnectionFailed),
        (json.JSONDecodeError("x", "doc", 0), MalformedResponse),
        (KeyError("choices"), MalformedResponse),
    ],
)
def test_classify_exception(exc: Exception, expected: type[ProviderError]) -> None:
    error = classify_exception(exc, provider="p", model="m")
    assert type(error) is expected and error.transient


def test_parse_retry_after() -> None:
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None
