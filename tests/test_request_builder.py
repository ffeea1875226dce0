"""The one request builder, seen from a loopback server: every transport path (sync httpx, async lean, async
httpx; answers and streams) sends the same body and headers, and refuses the same bad input the same way."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from providers.catalog.models import ModelSpec, ProviderSpec
from providers.clients import client_for
from providers.clients.base import ProviderClient
from providers.errors import ProviderUnavailable
from providers.types import ChatRequest, Message
from tests.fakeserver import FakeServer, Reply

MODEL = ModelSpec(
    name="m",
    provider="p",
    id="gpt-test",
    context=1000,
    max_output=100,
    input_price=0.0,
    output_price=0.0,
    latency_ms=100,
)
REQ = ChatRequest(messages=[Message.user("héllo")], max_tokens=5, extra={"seed": 1})
# added by the connection layer, not by the builder: they differ between httpx and the lean transport
TRANSPORT_HEADERS = {"host", "content-length", "connection", "accept-encoding"}


def _client(server: FakeServer, path: str, **spec: Any) -> ProviderClient:
    key = spec.pop("key", "sk-good")
    fields: dict[str, Any] = {"name": "p", "kind": "openai", "base_url": server.base_url("openai"), "timeout_s": 5.0}
    async_transport = httpx.AsyncHTTPTransport() if path.endswith("httpx") else None
    provider = ProviderSpec(**(fields | spec))
    client = client_for(provider, api_key=key, trust_env=False, async_transport=async_transport)
    assert (client.lean() is None) == (async_transport is not None)
    return client


def _run(client: ProviderClient, path: str) -> None:
    """One call through `path`: chat or stream, sync or async, over the lean transport or httpx."""
    if path.startswith("sync"):
        try:
            client.chat(MODEL, REQ) if path == "sync chat" else list(client.stream(MODEL, REQ))
        finally:
            client.close()
        return

    async def call() -> None:
        try:
            if path.startswith("async chat"):
                await client.achat(MODEL, REQ)
            else:
                async for _ in client.astream(MODEL, REQ):
                    pass
        finally:
            await client.aclose()  # in the loop that opened the connections

    asyncio.run(call())


PATHS = ["sync chat", "sync stream", "async chat lean", "async stream lean", "async chat httpx", "async stream httpx"]


def _sent(server: FakeServer, path: str, **spec: Any) -> tuple[list[tuple[str, str]], bytes]:
    server.default = Reply(text="ok")
    before = len(server.requests)
    _run(_client(server, path, **spec), path)
    request = server.requests[before]
    lines = [(k.lower(), v) for k, v in request.header_lines if k.lower() not in TRANSPORT_HEADERS]
    return sorted(lines), request.raw


def test_every_path_sends_the_same_request(fake_server: FakeServer) -> None:
    sent = {path: _sent(fake_server, path) for path in PATHS}
    first = sent[PATHS[0]]
    assert dict(first[0])["authorization"] == "Bearer sk-good" and dict(first[0])["content-type"] == "application/json"
    assert b'"seed":1' in first[1] and "héllo".encode() in first[1]
    for path, (headers, body) in sent.items():
        assert _unstreamed(body) == _unstreamed(first[1]), path
        assert headers == first[0], path


def _unstreamed(body: bytes) -> bytes:
    """The body with its stream flag (the one field a stream's request adds) taken out."""
    return body.replace(b',"stream_options":{"include_usage":true}', b"").replace(b',"stream":true', b"")


@pytest.mark.parametrize("path", PATHS)
def test_a_catalog_authorization_header_is_sent_once(fake_server: FakeServer, path: str) -> None:
    headers, _ = _sent(fake_server, path, headers={"Authorization": "Bearer from-catalog", "X-Team": "a"})
    auth = [v for k, v in headers if k == "authorization"]
    assert auth == ["Bearer sk-good"]  # the wire format's auth wins, one header, one casing
    assert ("x-team", "a") in headers
    casings = [k for k, _ in fake_server.requests[-1].header_lines if k.lower() == "authorization"]
    assert len(casings) == 1


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bad", ["sk-good\n", "sk-good\r\n", "sk\0x", "sk-good ", "sk\tx", "sk-\u00e9"])
def test_a_key_with_a_line_break_is_refused_before_sending(fake_server: FakeServer, path: str, bad: str) -> None:
    before = len(fake_server.requests)
    with pytest.raises(ProviderUnavailable, match=r"not a valid value|not ASCII"):
        _run(_client(fake_server, path, key=bad), path)
    assert len(fake_server.requests) == before  # refused here, not a retried connection failure


@pytest.mark.parametrize("path", PATHS)
def test_a_catalog_header_with_a_line_break_is_refused(fake_server: FakeServer, path: str) -> None:
    with pytest.raises(ProviderUnavailable):
        _run(_client(fake_server, path, headers={"X-Team": "a\nb"}), path)
