"""Tests for the cap on upstream answers (`max_response_bytes`: ProviderSpec, the process default, `modelroute serve
--max-response-bytes`): a loopback upstream that generates a 300 MiB answer as it sends it (Content-Length,
chunked, to-the-close and SSE framings) in; ResponseTooLarge at the cap, the connection dropped rather than pooled,
memory bounded well under the answer's size, and the next plan entry answering, out."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from providers.catalog.models import ModelSpec, ProviderSpec
from providers.clients import OpenAIClient
from providers.clients.connection import (
    DEFAULT_MAX_RESPONSE_BYTES,
    default_max_response_bytes,
    set_default_max_response_bytes,
)
from providers.clients.lean import LeanTransport
from providers.clients.sse import LineSplitter, iter_sse_bytes
from providers.errors import ResponseTooLarge
from providers.types import ChatRequest, Message
from tests.engines import engine_for
from tests.fakeserver import Behaviour, FakeServer, Reply

MiB = 1 << 20
HUGE = 300 * MiB
REQ = ChatRequest(messages=[Message.user("Hello")], max_tokens=20)
MODEL = ModelSpec(
    name="gpt-test", provider="acme", id="gpt-test", context=8000, input_price=0, output_price=0, latency_ms=1
)


class Huge(Behaviour):
    """A 200 answer of `size` bytes generated as it is written (one 1 MiB block, reused): framing "length"
    (Content-Length), "chunked", "close" (the body runs to the end of the connection) or "sse" (a stream of
    chat.completion.chunk events, chunked). `sent` counts the body bytes the socket accepted; `done` is set when
    the behaviour returns (the client dropped the connection, or everything was sent)."""

    def __init__(self, framing: str, size: int = HUGE) -> None:
        self.framing, self.size = framing, size
        self.sent = 0
        self.dropped = False
        self.done = threading.Event()

    def _block(self) -> bytes:
        if self.framing != "sse":
            return b'{"choices": [{"message": {"content": "' + b"x" * (MiB - 40)  # never a valid JSON document
        event = json.dumps({"choices": [{"index": 0, "delta": {"content": "y" * (64 * 1024)}}]})
        one = f"data: {event}\n\n".encode()
        return one * (MiB // len(one))

    def run(self, h: Any, ctx: Any) -> None:
        block = self._block()
        try:
            h.send_response(200)
            h.send_header("Content-Type", "text/event-stream" if self.framing == "sse" else "application/json")
            if self.framing == "length":
                h.send_header("Content-Length", str(self.size))
            elif self.framing in ("chunked", "sse"):
                h.send_header("Transfer-Encoding", "chunked")
            else:
                h.send_header("Connection", "close")
            h.end_headers()
            while self.sent < self.size:
                piece = block[: self.size - self.sent]
                if self.framing in ("chunked", "sse"):
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                else:
                    h.wfile.write(piece)
                self.sent += len(piece)
        except OSError:
            self.dropped = True
        finally:
            h.close_connection = True
            self.done.set()


@pytest.fixture
def small_default_cap() -> Iterator[int]:
    previous = set_default_max_response_bytes(4 * MiB)
    yield 4 * MiB
    set_default_max_response_bytes(previous)


def spec_for(server: FakeServer, cap: int | None) -> ProviderSpec:
    return ProviderSpec(name="acme", kind="openai", base_url=server.base_url("openai"), max_response_bytes=cap)


def _peak(fn: Any) -> tuple[Any, int]:
    """(what `fn()` returned or raised, the peak of traced Python allocations while it ran, in bytes)."""
    tracemalloc.start()
    try:
        try:
            result: Any = fn()
        except Exception as exc:
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _cut(behaviour: Huge) -> None:
    """The upstream stops sending well before the end: the client dropped the connection."""
    assert behaviour.done.wait(30), "the upstream is still sending: the connection was not dropped"
    assert behaviour.dropped and behaviour.sent < HUGE // 3, (behaviour.sent, behaviour.dropped)


# ---- the clients ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_lean_path_cuts_a_300_mib_answer_at_the_cap(fake_server: FakeServer, framing: str) -> None:
    huge = Huge(framing)
    fake_server.script("gpt-test", huge)
    client = OpenAIClient(spec_for(fake_server, 2 * MiB))

    async def go() -> Any:
        try:
            return await client.achat(MODEL, REQ)
        finally:
            assert client._lean is not None and client._lean._n_idle == 0 and client._lean._open == 0  # not pooled
            await client.aclose()

    error, peak = _peak(lambda: asyncio.run(go()))
    assert isinstance(error, ResponseTooLarge), error
    assert error.provider == "acme" and error.model == "gpt-test" and not error.transient
    assert "max_response_bytes" in error.message and "2,097,152" in error.message
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB"
    _cut(huge)


@pytest.mark.parametrize("path", ["sync", "async-httpx"])
def test_httpx_paths_are_capped_too(fake_server: FakeServer, path: str) -> None:
    huge = Huge("chunked")
    fake_server.script("gpt-test", huge)
    if path == "sync":
        client = OpenAIClient(spec_for(fake_server, 2 * MiB))
        error, peak = _peak(lambda: client.chat(MODEL, REQ))
        client.close()
    else:
        client = OpenAIClient(spec_for(fake_server, 2 * MiB), async_transport=httpx.AsyncHTTPTransport())

        async def go() -> Any:
            try:
                return await client.achat(MODEL, REQ)
            finally:
                await client.aclose()

        error, peak = _peak(lambda: asyncio.run(go()))
    assert isinstance(error, ResponseTooLarge) and error.provider == "acme", error
    assert peak < 24 * MiB, f"peak {peak / MiB:.1f} MiB"
    _cut(huge)


def test_a_declared_length_over_the_cap_is_refused_before_reading(fake_server: FakeServer) -> None:
    huge = Huge("length")
    fake_server.script("gpt-test", huge)
    transport = LeanTransport()

    async def go() -> Any:
        url = httpx.URL(fake_server.base_url("openai") + "/chat/completions")
        body = json.dumps({"model": "gpt-test", "messages": []}).encode()
        try:
            return await transport.post(url, [(b"content-type", b"application/json")], body, {}, max_bytes=1000)
        finally:
            assert transport._open == 0
            await transport.aclose()

    with pytest.raises(ResponseTooLarge, match="Content-Length 314,572,800"):
        asyncio.run(go())
    _cut(huge)


def test_a_stream_is_capped_in_total(fake_server: FakeServer) -> None:
    huge = Huge("sse")
    fake_server.script("gpt-test", huge)
    client = OpenAIClient(spec_for(fake_server, 3 * MiB))
    got = 0

    async def go() -> None:
        nonlocal got
        try:
            async for event in client.astream(MODEL, REQ):
                got += len(event.text or "")
        finally:
            await client.aclose()

    error, peak = _peak(lambda: asyncio.run(go()))
    assert isinstance(error, ResponseTooLarge) and "stream" in error.message and error.model == "gpt-test", error
    assert 1 * MiB < got <= 3 * MiB  # deltas flowed until the cap
    assert peak < 24 * MiB, f"peak {peak / MiB:.1f} MiB"
    _cut(huge)


def test_the_cap_comes_from_the_spec_else_the_client_else_the_process_default(fake_server: FakeServer) -> None:
    assert default_max_response_bytes() == DEFAULT_MAX_RESPONSE_BYTES == 33554432
    assert OpenAIClient(spec_for(fake_server, None)).max_response_bytes == DEFAULT_MAX_RESPONSE_BYTES
    assert OpenAIClient(spec_for(fake_server, None), max_response_bytes=5).max_response_bytes == 5
    assert OpenAIClient(spec_for(fake_server, 7), max_response_bytes=5).max_response_bytes == 7
    previous = set_default_max_response_bytes(1234)
    try:
        assert OpenAIClient(spec_for(fake_server, None)).max_response_bytes == 1234
    finally:
        set_default_max_response_bytes(previous)
    with pytest.raises(ValueError):
        set_default_max_response_bytes(0)
    with pytest.raises(ValueError):
        ProviderSpec(name="acme", kind="openai", max_response_bytes=0)


def test_answers_within_the_cap_are_untouched(fake_server: FakeServer) -> None:
    fake_server.default = Reply(text="hello " * 100)
    client = OpenAIClient(spec_for(fake_server, 4096))

    async def go() -> tuple[str, str]:
        try:
            whole = (await client.achat(MODEL, REQ)).text
            streamed = "".join([e.text or "" async for e in client.astream(MODEL, REQ)])
            return whole, streamed
        finally:
            await client.aclose()

    whole, streamed = asyncio.run(go())
    assert whole == streamed == "hello " * 100
    assert client.chat(MODEL, REQ).text == "hello " * 100
    client.close()


def test_long_lines_split_in_linear_time() -> None:
    """An SSE line of 16 MiB in 64 KiB pieces used to be re-joined and re-scanned at every piece (quadratic)."""
    splitter = LineSplitter()
    for _ in range(256):
        assert splitter.feed(b"x" * 65536) == []
    (line,) = splitter.feed(b"\n")
    assert len(line) == 16 * MiB
    events = list(iter_sse_bytes([b"data: a", b"b\r", b"\ndata: c\n\n", b"data: d"], max_bytes=1000))
    assert [e.data for e in events] == ["ab\nc", "d"]
    with pytest.raises(ResponseTooLarge):
        list(iter_sse_bytes([b"data: 1\n\n"] * 100, max_bytes=50))


# ---- through an Engine: the next plan entry answers ----------------------------------------------------------
POLICY = """
set retry.attempts = 2
set retry.backoff = 5ms
otherwise use alpha-mini fallback beta-chat
"""


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_engine_falls_back_after_an_oversized_answer(
    fake_server: FakeServer, small_default_cap: int, framing: str
) -> None:
    huge = Huge(framing)
    fake_server.script("alpha-mini", huge)
    fake_server.default = Reply(text="fallback answer")
    engine = engine_for(fake_server, POLICY)
    try:
        done, peak = _peak(lambda: engine.complete("Say hello"))
    finally:
        engine.close()
    assert not isinstance(done, Exception), done
    assert done.text == "fallback answer" and done.model == "beta-chat"
    first = done.attempts[0]
    assert first.model == "alpha-mini" and first.error == "ResponseTooLarge" and first.retry == 0
    assert [a.model for a in done.attempts].count("alpha-mini") == 1  # not retried: the same answer would come
    assert peak < 6 * small_default_cap, f"peak {peak / MiB:.1f} MiB"
    _cut(huge)


# ---- through `modelroute serve`: the default cap of 32 MiB -----------------------------------------------------
def _peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak RSS from /proc")
def test_serve_default_cap_bounds_gateway_memory_and_falls_back(tmp_path: Path, fake_server: FakeServer) -> None:
    pytest.importorskip("uvicorn")
    from tests.test_gateway import Serve, write_policy

    huge = Huge("chunked")
    fake_server.script("alpha-mini", [Reply(text="warm"), huge])
    fake_server.default = Reply(text="fallback answer")
    serve = Serve(write_policy(tmp_path, fake_server, POLICY))
    try:
        body = {"model": "auto", "messages": [{"role": "user", "content": "Hi"}]}
        warm = httpx.post(serve.url + "/v1/chat/completions", json=body, timeout=30)
        assert warm.status_code == 200 and warm.json()["choices"][0]["message"]["content"] == "warm"
        before = _peak_rss_kib(serve.proc.pid)
        r = httpx.post(serve.url + "/v1/chat/completions", json=body, timeout=60)
        after = _peak_rss_kib(serve.proc.pid)
    finally:
        err = serve.stop()
    assert r.status_code == 200, r.text + err
    assert r.json()["choices"][0]["message"]["content"] == "fallback answer"
    assert r.headers["x-modelroute-model"] == "beta-chat" and r.headers["x-modelroute-fallbacks"] == "1"
    grew_mib = (after - before) / 1024
    assert grew_mib < 150, f"peak RSS grew by {grew_mib:.0f} MiB for a 300 MiB answer capped at 32 MiB"
    _cut(huge)


def test_the_catalog_reads_max_response_bytes(tmp_path) -> None:
    from providers.catalog.issues import CatalogError
    from providers.catalog.loader import load_catalog

    path = tmp_path / "c.yaml"
    body = "providers:\n  p1: {{kind: openai, base_url: 'http://x', max_response_bytes: {}}}\nmodels:\n"
    body += "  m: {{provider: p1, context: 1000, latency_ms: 100, price: {{input: 1, output: 1}}}}\n"
    path.write_text(body.format(1000))
    assert load_catalog(path).provider_spec("p1").max_response_bytes == 1000
    path.write_text(body.format(-5))
    with pytest.raises(CatalogError, match="max_response_bytes must be a whole number of bytes greater than 0"):
        load_catalog(path)


def test_an_engine_caps_its_own_answers_and_redacts_its_keys_at_once(fake_server) -> None:
    from providers.errors import redact
    from tests.engines import engine_for
    from tests.fakeserver import Reply

    fake_server.always("alpha-mini", Reply(text="x" * 20_000))
    fake_server.always("beta-chat", Reply(text="short"))
    with engine_for(fake_server, "otherwise use alpha-mini fallback beta-chat\n", max_response_bytes=4096) as engine:
        done = engine.complete("hi")
        assert done.model == "beta-chat"
        assert done.attempts[0].error == "ResponseTooLarge"
    secret = "sk-engine-only-key-0123456789"
    with engine_for(fake_server, api_keys={"acme": secret}) as engine:
        assert engine.executor is not None  # created on first use, before any provider is called
        assert secret[3:15] not in redact(f"upstream said: {secret[3:15]}")
