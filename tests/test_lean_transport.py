"""Tests for the lean HTTP/1.1 transport (providers/clients/lean.py) against real servers on 127.0.0.1.

Most tests script exact response bytes with `Server`, a small asyncio server running in the test's own event loop
that counts the connections it accepts and how many are open at once. Tests that need the server to act while
the client's event loop is not running (a close the client has not yet seen) use a thread with blocking sockets.
No mocks: every byte crosses a loopback socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from providers.catalog.models import ModelSpec, ProviderSpec
from providers.clients import client_for
from providers.clients import lean as lean_module
from providers.clients.lean import MAX_HEAD, LeanTransport
from providers.types import ChatRequest, Message

try:
    from tests.fakeserver import FakeServer, Reply
    from tests.waiting import await_until
except ModuleNotFoundError:  # plain `pytest` puts tests/, not the repo root, on sys.path
    from fakeserver import FakeServer, Reply  # type: ignore[no-redef]
    from waiting import await_until  # type: ignore[no-redef]

pytestmark = pytest.mark.anyio

TIMEOUTS = {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}  # a bug fails fast instead of hanging


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ---- a scriptable raw server -------------------------------------------------------------------------------
@dataclass
class Req:
    """One request as the server read it off the wire."""

    method: str
    target: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    head: bytes


class Conn:
    """The server's side of one accepted connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        self.reader, self.writer, self.number = reader, writer, number

    async def read_request(self) -> Req | None:
        """The next request, or None when the client closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                body += (await self.reader.readexactly(size + 2))[:-2]
            await self.reader.readuntil(b"\r\n")
        elif "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        return Req(method, target, headers, body, head)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        """A clean close (FIN), waited for: the socket is closed when this returns."""
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Handler = Callable[[Conn], Awaitable[None]]


@dataclass
class Server:
    """An asyncio server on 127.0.0.1 running `handler(conn)` for each accepted connection."""

    handler: Handler
    ssl_context: ssl.SSLContext | None = None
    accepted: int = 0
    open: int = 0
    max_open: int = 0
    requests: list[Req] = field(default_factory=list)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"{'https' if self.ssl_context else 'http'}://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self.handler(Conn(reader, writer, self.accepted))
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError):
            pass  # the client left, or the test is over (cancelled here, start_server would log it)
        finally:
            self.open -= 1
            writer.close()
            self._tasks.discard(task)


def serve_each(
    answer: Callable[[Req, Conn], Awaitable[bytes | None] | bytes | None], server: list[Server] | None = None
) -> Handler:
    """A handler answering every request on a connection with `answer(req, conn)`'s bytes (None: stop)."""

    async def handler(conn: Conn) -> None:
        while (req := await conn.read_request()) is not None:
            if server:
                server[0].requests.append(req)
            reply = answer(req, conn)
            if asyncio.iscoroutine(reply):
                reply = await reply
            if reply is None:
                return
            await conn.send(reply)

    return handler


async def start(answer: Callable[..., Any], **kw: Any) -> Server:
    """A started Server whose connections answer each request with `answer(req, conn)`."""
    box: list[Server] = []
    server = Server(serve_each(answer, box), **kw)
    box.append(server)
    return await server.__aenter__()


@contextlib.asynccontextmanager
async def running(answer: Callable[..., Any], **kw: Any) -> AsyncIterator[Server]:
    server = await start(answer, **kw)
    try:
        yield server
    finally:
        await server.__aexit__()


@contextlib.asynccontextmanager
async def lean(**kw: Any) -> AsyncIterator[LeanTransport]:
    transport = LeanTransport(**kw)
    try:
        yield transport
    finally:
        await transport.aclose()


def request(method: str, url: str, *, content: Any = None, headers: Any = None, **timeouts: float) -> httpx.Request:
    return httpx.Request(method, url, content=content, headers=headers, extensions={"timeout": TIMEOUTS | timeouts})


async def fetch(transport: LeanTransport, method: str, url: str, **kw: Any) -> tuple[httpx.Response, bytes]:
    """Send one request and read its whole body (closing the response, as httpx does)."""
    response = await transport.handle_async_request(request(method, url, **kw))
    try:
        body = await response.aread()
    finally:
        await response.aclose()
    return response, body


def ok(body: bytes = b"hello", *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), b"".join(extra), body)


def raw(data: bytes) -> Callable[[Req, Conn], bytes]:
    return lambda req, conn: data


# ---- framing -------------------------------------------------------------------------------------------
async def test_content_length_body_and_request_bytes() -> None:
    async with running(lambda req, conn: ok(b"hello", b"X-Answer: 42\r\n")) as server, lean() as t:
        response, body = await fetch(
            t, "POST", server.url("/v1/x?q=1&r=%20"), content=b'{"a":1}', headers={"X-Custom": "v"}
        )
        assert (response.status_code, body) == (200, b"hello")
        assert response.headers["x-answer"] == "42" and response.headers["content-length"] == "5"
        assert response.extensions["http_version"] == b"HTTP/1.1"
        assert response.extensions["reason_phrase"] == b"OK"
        req = server.requests[0]
        assert (req.method, req.target, req.body) == ("POST", "/v1/x?q=1&r=%20", b'{"a":1}')
        assert req.headers["host"] == f"127.0.0.1:{server.port}"
        assert req.headers["content-length"] == "7" and req.headers["x-custom"] == "v"


async def test_large_content_length_body_arrives_whole() -> None:
    big = bytes(range(256)) * 4096  # 1 MiB: many reads, and more than the reader's buffer limit
    async with running(lambda req, conn: ok(big)) as server, lean() as t:
        for _ in range(2):
            _, body = await fetch(t, "GET", server.url())
            assert body == big
        assert server.accepted == 1


async def test_chunked_body_with_extensions_and_trailers() -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b'6 ; quoted="a;b"\r\n world\r\n'
        b"A\r\n0123456789\r\n"
        b"0;last\r\nX-Trailer: yes\r\nX-Other: 2\r\n\r\n"
    )
    async with running(raw(answer)) as server, lean() as t:
        for _ in range(2):  # the second exchange on the same connection shows the trailers were consumed
            _, body = await fetch(t, "GET", server.url())
            assert body == b"hello world0123456789"
        assert server.accepted == 1


async def test_large_chunk_is_streamed_and_whole() -> None:
    big = b"x" * (300 * 1024)  # one chunk bigger than the reader's buffer limit
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(big), big)
    async with running(raw(answer)) as server, lean() as t:
        _, body = await fetch(t, "GET", server.url())
        assert body == big
        _, body = await fetch(t, "GET", server.url())
        assert body == big and server.accepted == 1


async def test_body_delimited_by_close() -> None:
    async def answer(req: Req, conn: Conn) -> None:
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
        await conn.send(b"the end")
        await conn.close()

    async with running(answer) as server, lean() as t:
        for _ in range(2):
            _, body = await fetch(t, "GET", server.url())
            assert body == b"until the end"
        assert server.accepted == 2  # a close-delimited body leaves nothing to reuse


async def test_http10_response_is_not_reused() -> None:
    async with running(lambda req, conn: ok(b"old").replace(b"HTTP/1.1", b"HTTP/1.0")) as server, lean() as t:
        for _ in range(2):
            response, body = await fetch(t, "GET", server.url())
            assert body == b"old" and response.extensions["http_version"] == b"HTTP/1.0"
        assert server.accepted == 2


async def test_transfer_encoding_framing() -> None:
    """Chunked only as the final coding; another coding means the body runs to the close; chunked beside a
    Content-Length wins but the connection is not reused."""
    answers = {
        "/gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nnot-three-bytes",
        "/both": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        "/list": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity, Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    }

    async def answer(req: Req, conn: Conn) -> bytes | None:
        await conn.send(answers[req.target])
        if req.target == "/gzip":
            await conn.close()
            return None
        return b""

    async with running(answer) as server, lean() as t:
        assert (await fetch(t, "GET", server.url("/gzip")))[1] == b"not-three-bytes"
        assert (await fetch(t, "GET", server.url("/both")))[1] == b"ok"
        assert (await fetch(t, "GET", server.url("/list")))[1] == b"ok"
        assert (await fetch(t, "GET", server.url("/list")))[1] == b"ok"
        assert server.accepted == 3  # /gzip closed, /both not reused, /list kept


async def test_request_built_with_a_stream_gets_a_content_length() -> None:
    async with running(lambda req, conn: ok(req.body)) as server, lean() as t:
        req = httpx.Request(
            "POST",
            server.url(),
            stream=httpx.ByteStream(b"raw stream"),
            headers={"Host": f"127.0.0.1:{server.port}"},
            extensions={"timeout": TIMEOUTS},
        )
        response = await t.handle_async_request(req)
        assert await response.aread() == b"raw stream"
        assert server.requests[0].headers["content-length"] == "10"


async def test_no_body_for_head_204_304() -> None:
    answers = {  # each says a body might follow, but none does: the connection must stay in step
        "HEAD": b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
        "/204": b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
        "/304": b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
        "/empty": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    }

    def answer(req: Req, conn: Conn) -> bytes:
        return answers.get(req.method) or answers[req.target]

    async with running(answer) as server, lean() as t:
        for method, path, status in [
            ("HEAD", "/", 200),
            ("GET", "/204", 204),
            ("GET", "/304", 304),
            ("GET", "/empty", 200),
            ("HEAD", "/", 200),
        ]:
            response, body = await fetch(t, method, server.url(path))
            assert (response.status_code, body) == (status, b"")
        assert server.accepted == 1


async def test_interim_1xx_responses_are_skipped() -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-Final: 1\r\n\r\nok"
    )
    async with running(raw(answer)) as server, lean() as t:
        for _ in range(2):
            response, body = await fetch(t, "POST", server.url(), content=b"data")
            assert (response.status_code, body) == (201, b"ok")
            assert "link" not in response.headers and response.headers["x-final"] == "1"
        assert server.accepted == 1


async def test_streamed_request_body_is_sent_chunked() -> None:
    async def parts() -> AsyncIterator[bytes]:
        yield b"part one, "
        yield b"part two"

    async with running(lambda req, conn: ok(req.body)) as server, lean() as t:
        _, body = await fetch(t, "POST", server.url(), content=parts())
        assert body == b"part one, part two"
        _, body = await fetch(t, "POST", server.url(), content=b"plain")  # the connection is still in step
        assert body == b"plain" and server.accepted == 1


# ---- keep-alive ----------------------------------------------------------------------------------------
async def test_keep_alive_reuses_one_connection() -> None:
    async with running(lambda req, conn: ok(b"n%d" % conn.number)) as server, lean() as t:
        bodies = [(await fetch(t, "GET", server.url()))[1] for _ in range(3)]
        assert bodies == [b"n1"] * 3 and server.accepted == 1


async def test_server_connection_close_prevents_reuse() -> None:
    async def answer(req: Req, conn: Conn) -> bytes:
        return ok(b"bye", b"Connection: close\r\n")  # says close, but leaves the socket open

    async with running(answer) as server, lean() as t:
        for _ in range(2):
            assert (await fetch(t, "GET", server.url()))[1] == b"bye"
        assert server.accepted == 2


async def test_request_connection_close_prevents_reuse() -> None:
    async with running(lambda req, conn: ok()) as server, lean() as t:
        for _ in range(2):
            await fetch(t, "GET", server.url(), headers={"Connection": "close"})
        assert server.accepted == 2


@pytest.mark.parametrize("seen", [False, True], ids=["fin-unseen", "fin-seen"])
async def test_connection_closed_while_idle_is_not_reused(seen: bool) -> None:
    """The server closes a pooled connection; the next request, sent before (unseen) or after (seen) the event
    loop has processed the FIN, goes out on a new connection without error."""
    closed = asyncio.Event()

    async def answer(req: Req, conn: Conn) -> bytes | None:
        await conn.send(ok(b"n%d" % conn.number))
        if req.target == "/close-after":  # close the connection once it is idle in the client's pool
            await conn.close()
            closed.set()
            return None
        return b""

    async with running(answer) as server, lean() as t:
        assert (await fetch(t, "GET", server.url("/close-after")))[1] == b"n1"
        await closed.wait()
        if seen:
            idle = [c for conns in t._idle.values() for c in conns]
            assert len(idle) == 1
            await await_until(idle[0].reader.at_eof, "the event loop to process the FIN")
        assert (await fetch(t, "GET", server.url()))[1] == b"n2"  # no error: a fresh connection
        assert server.accepted == 2


async def test_connection_reset_while_idle_is_not_reused() -> None:
    conns: list[Conn] = []

    async def answer(req: Req, conn: Conn) -> bytes:
        conns.append(conn)
        return ok(b"n%d" % conn.number)

    async with running(answer) as server, lean() as t:
        await fetch(t, "GET", server.url())
        conns[0].reset()
        await asyncio.sleep(0)
        assert (await fetch(t, "GET", server.url()))[1] == b"n2"
        assert server.accepted == 2


class ThreadServer:
    """A blocking-socket server on a thread: answers one request per connection with Content-Length, then
    closes when told to. It acts while the test's event loop is blocked, so the client cannot have seen it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.close_now = threading.Event()
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.accepted += 1
                with conn:
                    data = b""
                    while b"\r\n\r\n" not in data and (more := conn.recv(65536)):
                        data += more
                    conn.sendall(ok(b"n%d" % self.accepted))
                    if self.accepted > 1:
                        continue
                    self.close_now.wait(5)
                self.closed.set()

    def stop(self) -> None:
        self.sock.close()
        self.close_now.set()


async def test_close_not_yet_seen_by_the_event_loop_is_detected() -> None:
    """The server's FIN is in the socket but the event loop has not run since: the pool must still notice."""
    server = ThreadServer()
    try:
        async with lean() as t:
            url = f"http://127.0.0.1:{server.port}/"
            assert (await fetch(t, "GET", url))[1] == b"n1"
            server.close_now.set()
            assert server.closed.wait(5)  # blocks the loop: the client has not processed the FIN
            assert (await fetch(t, "GET", url))[1] == b"n2"
    finally:
        server.stop()


class PoolClock:
    """The pool's monotonic clock (`providers.clients.lean.time`), standing still until a test advances it."""

    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t


async def test_keepalive_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = PoolClock()  # idle time passes only when the test says so, however slow the machine is
    monkeypatch.setattr(lean_module, "time", clock)
    async with running(lambda req, conn: ok(b"n%d" % conn.number)) as server:
        async with lean(keepalive_expiry=0.05) as t:
            assert [(await fetch(t, "GET", server.url()))[1] for _ in range(2)] == [b"n1", b"n1"]
            clock.t += 0.04
            assert (await fetch(t, "GET", server.url()))[1] == b"n1"  # idle 40 ms: reused
            clock.t += 0.06
            assert (await fetch(t, "GET", server.url()))[1] == b"n2"  # idle 60 ms: expired, a new connection
            assert server.accepted == 2
        async with lean(keepalive_expiry=0) as t:
            for _ in range(2):
                await fetch(t, "GET", server.url())
            assert server.accepted == 4


async def test_unread_body_is_not_reused() -> None:
    async with running(lambda req, conn: ok(b"x" * 100)) as server, lean() as t:
        response = await t.handle_async_request(request("GET", server.url()))
        await response.aclose()  # closed without reading: the rest of the body is still on the wire
        assert (await fetch(t, "GET", server.url()))[1] == b"x" * 100
        assert server.accepted == 2


async def test_max_keepalive_connections() -> None:
    gate = asyncio.Event()

    async def answer(req: Req, conn: Conn) -> bytes:
        await gate.wait()
        return ok()

    async with running(answer) as server:
        limits = httpx.Limits(max_connections=10, max_keepalive_connections=1)
        async with lean(limits=limits) as t:
            tasks = [asyncio.create_task(fetch(t, "GET", server.url())) for _ in range(3)]
            await await_until(lambda: server.accepted == 3, "three connections")
            gate.set()
            await asyncio.gather(*tasks)
            for _ in range(3):
                await fetch(t, "GET", server.url())
            assert server.accepted == 3  # 3 at once, then only one was kept for the sequential calls


def test_a_new_event_loop_starts_afresh(fake_server: FakeServer) -> None:
    """Used from a second asyncio.run(), the transport does not touch the first loop's pooled connection (its
    futures belong to the closed loop) and its limits are not held by it."""
    transport = LeanTransport(limits=httpx.Limits(max_connections=1))
    url = f"{fake_server.url}/v1/chat/completions"

    async def once() -> bytes:
        return (await fetch(transport, "POST", url, content=b'{"model": "m"}', pool=0.5))[1]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # a closed loop cannot close its transports: gc does
        first = asyncio.run(once())
        assert asyncio.run(once()) == first and b"choices" in first
        assert asyncio.run(once()) == first
        asyncio.run(transport.aclose())
        gc.collect()
    assert fake_server.connections == 3


# ---- the pool ------------------------------------------------------------------------------------------
async def test_pool_limit_queues_requests() -> None:
    in_flight, peak = 0, 0
    two = asyncio.Event()  # the first answers wait until both connections carry a request

    async def answer(req: Req, conn: Conn) -> bytes:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == 2:
            two.set()
        await asyncio.wait_for(two.wait(), 10)  # a pool that never opens a second connection fails here
        in_flight -= 1
        return ok(req.target.encode())

    async with running(answer) as server, lean(limits=httpx.Limits(max_connections=2)) as t:
        results = await asyncio.gather(*(fetch(t, "GET", server.url(f"/{i}")) for i in range(5)))
        assert [body for _, body in results] == [b"/%d" % i for i in range(5)]
        assert server.accepted == 2 and server.max_open == 2 and peak == 2


async def test_pool_timeout() -> None:
    gate, got = asyncio.Event(), asyncio.Event()

    async def answer(req: Req, conn: Conn) -> bytes:
        got.set()
        if req.target == "/slow":
            await gate.wait()
        return ok()

    async with running(answer) as server, lean(limits=httpx.Limits(max_connections=1)) as t:
        busy = asyncio.create_task(fetch(t, "GET", server.url("/slow")))
        await got.wait()
        with pytest.raises(httpx.PoolTimeout):
            await fetch(t, "GET", server.url(), pool=0.05)
        gate.set()
        assert (await busy)[1] == b"hello"
        assert (await fetch(t, "GET", server.url(), pool=0.5))[1] == b"hello"  # the timed-out wait left no trace
        assert server.accepted == 1


async def test_idle_connection_to_another_origin_is_evicted_at_the_limit() -> None:
    limits = httpx.Limits(max_connections=1)
    async with (
        running(lambda req, conn: ok(b"a")) as a,
        running(lambda req, conn: ok(b"b")) as b,
        lean(limits=limits) as t,
    ):
        assert (await fetch(t, "GET", a.url()))[1] == b"a"
        assert (await fetch(t, "GET", b.url(), pool=0.5))[1] == b"b"
        assert (await fetch(t, "GET", a.url(), pool=0.5))[1] == b"a"
        assert (a.accepted, b.accepted) == (2, 1)


async def check_pool_is_free(t: LeanTransport, server: Server, n: int) -> None:
    """`n` (= max_connections) requests at once all get a connection quickly."""
    results = await asyncio.gather(*(fetch(t, "GET", server.url("/fast"), pool=1.0) for _ in range(n)))
    assert all(response.status_code == 200 for response, _ in results)


async def test_cancelled_requests_do_not_leak_slots() -> None:
    """Cancel exchanges at each stage (waiting for the head, reading the body, queued for the pool): afterwards
    max_connections requests still go through."""
    started = asyncio.Event()

    async def answer(req: Req, conn: Conn) -> bytes | None:
        if req.target == "/fast":
            return ok()
        if req.target == "/part":
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst")
        started.set()
        await asyncio.sleep(30)
        return None

    async def body_reader(t: LeanTransport, url: str, first: asyncio.Event) -> None:
        response = await t.handle_async_request(request("GET", url))
        try:
            async for _ in response.aiter_bytes():
                first.set()
        finally:
            await response.aclose()

    async with running(answer) as server, lean(limits=httpx.Limits(max_connections=2)) as t:
        for target in ("/hang", "/part"):
            tasks, firsts = [], []
            for _ in range(2):
                started.clear()
                first = asyncio.Event()
                firsts.append(first)
                if target == "/hang":
                    tasks.append(asyncio.create_task(fetch(t, "GET", server.url(target))))
                    await started.wait()
                else:
                    tasks.append(asyncio.create_task(body_reader(t, server.url(target), first)))
                    await first.wait()
            queued = asyncio.create_task(fetch(t, "GET", server.url("/fast")))  # waits for a free connection
            await await_until(lambda: len(t._waiters) == 1, "the request to queue for the pool")
            assert not queued.done()
            queued.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, queued, return_exceptions=True)
            assert all(task.cancelled() for task in (*tasks, queued))
            await check_pool_is_free(t, server, 2)


async def test_waiter_cancelled_after_being_woken_passes_the_turn_on() -> None:
    async with running(lambda req, conn: ok()) as server, lean(limits=httpx.Limits(max_connections=1)) as t:
        response = await t.handle_async_request(request("GET", server.url()))  # holds the only connection
        first = asyncio.create_task(fetch(t, "GET", server.url()))
        second = asyncio.create_task(fetch(t, "GET", server.url()))
        await await_until(lambda: len(t._waiters) == 2, "both requests to queue for the pool")
        await response.aread()  # read to the end: the connection goes back to the pool and wakes `first` ...
        first.cancel()  # ... which is cancelled before it can run
        assert (await asyncio.wait_for(second, 2))[1] == b"hello"
        with pytest.raises(asyncio.CancelledError):
            await first
        assert server.accepted == 1


async def test_httpx_async_client_over_lean_transport() -> None:
    async with running(lambda req, conn: ok(b"via client")) as server:
        async with httpx.AsyncClient(transport=LeanTransport()) as client:
            assert (await client.get(server.url())).text == "via client"
            async with client.stream("GET", server.url()) as response:
                assert [chunk async for chunk in response.aiter_bytes()] == [b"via client"]
        assert server.accepted == 1


# ---- faults --------------------------------------------------------------------------------------------
async def test_connection_refused_is_connect_error() -> None:
    with socket.socket() as probe:  # bound, never listening: connections to it are refused
        probe.bind(("127.0.0.1", 0))
        async with lean() as t:
            with pytest.raises(httpx.ConnectError):
                await fetch(t, "GET", f"http://127.0.0.1:{probe.getsockname()[1]}/")
            # the failed connect gave its slot back
            assert t._open == 0


async def test_connect_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        fillers = []
        try:
            for _ in range(4):  # fill the accept queue: the kernel then drops new SYNs, so connect() hangs
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(listener.getsockname())
                fillers.append(filler)
            async with lean() as t:
                try:
                    await fetch(t, "GET", f"http://127.0.0.1:{listener.getsockname()[1]}/", connect=0.1, read=0.1)
                except httpx.ConnectTimeout:
                    pass
                except httpx.HTTPError as exc:  # the kernel accepted it after all: nothing to test here
                    pytest.skip(f"this kernel did not drop the SYN ({type(exc).__name__})")
                else:
                    pytest.fail("expected ConnectTimeout")
        finally:
            for filler in fillers:
                filler.close()


async def test_no_answer_is_read_timeout() -> None:
    async def answer(req: Req, conn: Conn) -> bytes:
        await asyncio.sleep(1.0)  # an answer after 1 s, on this loop: the request's 0.1 s comes first, the
        return ok()  # default 2 s (TIMEOUTS) would not, so only the request's own read timeout raises

    async with running(answer) as server, lean() as t:
        with pytest.raises(httpx.ReadTimeout):
            await fetch(t, "GET", server.url(), read=0.1)
        assert t._open == 0


async def test_stalled_body_is_read_timeout() -> None:
    answers = {
        "/length": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        "/close": b"HTTP/1.1 200 OK\r\n\r\nabc",
    }

    async def answer(req: Req, conn: Conn) -> None:
        await conn.send(answers[req.target])
        await asyncio.sleep(30)

    async with running(answer) as server, lean() as t:
        for path in answers:
            with pytest.raises(httpx.ReadTimeout):
                await fetch(t, "GET", server.url(path), read=0.1)
        assert t._open == 0


async def test_disconnect_without_answer() -> None:
    async def answer(req: Req, conn: Conn) -> None:
        await conn.close()

    async with running(answer) as server, lean() as t:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await fetch(t, "GET", server.url())


async def test_reset_mid_body() -> None:
    got_first = {"/length": asyncio.Event(), "/chunked": asyncio.Event()}  # the client has read "abc"

    async def answer(req: Req, conn: Conn) -> None:
        framing = b"Content-Length: 1000" if req.target == "/length" else b"Transfer-Encoding: chunked"
        first = b"abc" if req.target == "/length" else b"3\r\nabc\r\n"
        await conn.send(b"HTTP/1.1 200 OK\r\n%s\r\n\r\n%s" % (framing, first))
        await got_first[req.target].wait()  # reset only then: a reset may discard data the client has not read
        conn.reset()

    async with running(answer) as server, lean() as t:
        for path in ("/length", "/chunked"):
            received = []
            response = await t.handle_async_request(request("GET", server.url(path)))
            with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
                try:
                    async for chunk in response.aiter_bytes():
                        received.append(chunk)
                        got_first[path].set()
                finally:
                    await response.aclose()
            assert b"".join(received) == b"abc"
        assert t._open == 0


async def test_body_shorter_than_content_length() -> None:
    async def answer(req: Req, conn: Conn) -> None:
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await conn.close()

    async with running(answer) as server, lean() as t:
        with pytest.raises(httpx.RemoteProtocolError, match="received 3 bytes, expected 10"):
            await fetch(t, "GET", server.url())
        for whole in (t.fetch(request("GET", server.url())), t.post(httpx.URL(server.url()), [], b"{}", TIMEOUTS)):
            with pytest.raises(httpx.RemoteProtocolError):  # the whole-body paths map it the same way
                await whole
        assert t._open == 0


async def test_chunked_body_cut_short() -> None:
    for answer in (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n",
    ):

        async def close_after(req: Req, conn: Conn, answer: bytes = answer) -> None:
            await conn.send(answer)
            await conn.close()

        async with running(close_after) as server, lean() as t:
            with pytest.raises(httpx.RemoteProtocolError):
                await fetch(t, "GET", server.url())


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"HTTP/1.1 OK\r\nContent-Length: 0\r\n\r\n", id="no-status-code"),
        pytest.param(b"HTTP/1.1 2000 OK\r\n\r\n", id="four-digit-status"),
        pytest.param(b"HTTP/1.1 +20 OK\r\n\r\n", id="signed-status"),
        pytest.param(b"SPDY/3 200 OK\r\n\r\n", id="not-http"),
        pytest.param(b"garbage\r\n\r\n", id="garbage"),
        pytest.param(b"HTTP/1.1 200 OK\r\nNoColonHere\r\n\r\n", id="header-without-colon"),
        pytest.param(b"HTTP/1.1 200 OK\r\n: empty-name\r\n\r\n", id="empty-header-name"),
        pytest.param(b"HTTP/1.1 200 OK\r\nName : value\r\n\r\n", id="space-before-colon"),
        pytest.param(b"HTTP/1.1 200 OK\r\n Folded: value\r\n\r\n", id="leading-whitespace"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-A: 1\nX-B: 2\r\n\r\n", id="bare-lf-in-head"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-A: 1\rX-B: 2\r\n\r\n", id="bare-cr-in-head"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", id="content-length-not-a-number"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", id="content-length-negative"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", id="content-length-signed"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 1_0\r\n\r\n0123456789", id="content-length-underscore"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", id="content-length-conflicting"
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", id="chunk-size-not-hex"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", id="chunk-size-negative"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", id="chunk-size-0x"
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", id="chunk-size-empty"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n", id="chunk-without-crlf"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\n0\r\n\r\n",
            id="chunk-followed-by-junk-and-lf",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * (MAX_HEAD + 10),
            id="chunk-size-line-too-long",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\n" + b"X-Big: %s\r\n" % (b"a" * MAX_HEAD) + b"\r\n", id="head-too-large"),
        pytest.param(b"HTTP/1.1 200 OK\r\n" + b"X-Many: value\r\n" * 5000 + b"\r\n", id="many-headers-too-large"),
    ],
)
async def test_malformed_answers_are_protocol_errors(answer: bytes) -> None:
    async with running(raw(answer)) as server, lean() as t:
        with pytest.raises(httpx.RemoteProtocolError):
            await fetch(t, "GET", server.url())
        assert t._open == 0  # the connection was dropped, its slot freed


async def test_head_just_under_the_limit_is_accepted() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
    filler = b"X-Fill: " + b"a" * (MAX_HEAD - len(head) - len(b"X-Fill: \r\n\r\n") - 1) + b"\r\n"
    async with running(raw(head + filler + b"\r\nok")) as server, lean() as t:
        response, body = await fetch(t, "GET", server.url())
        assert body == b"ok" and len(response.headers["x-fill"]) > 60_000


async def test_unsupported_scheme_and_closed_transport() -> None:
    t = LeanTransport()
    with pytest.raises(httpx.UnsupportedProtocol):
        await t.handle_async_request(request("GET", "ftp://127.0.0.1/"))
    await t.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await t.handle_async_request(request("GET", "http://127.0.0.1:1/"))


async def test_aclose_fails_queued_requests() -> None:
    async with running(lambda req, conn: ok()) as server:
        t = LeanTransport(limits=httpx.Limits(max_connections=1))
        response = await t.handle_async_request(request("GET", server.url()))  # holds the only connection
        queued = asyncio.create_task(fetch(t, "GET", server.url()))
        await await_until(lambda: len(t._waiters) == 1, "the request to queue for the pool")
        await t.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await asyncio.wait_for(queued, 2)
        await response.aclose()
        assert t._open == 0


async def test_aclose_closes_idle_connections() -> None:
    eofs = asyncio.Event()

    async def handler(conn: Conn) -> None:
        while (await conn.read_request()) is not None:
            await conn.send(ok())
        eofs.set()

    async with Server(handler) as server:
        t = LeanTransport()
        await fetch(t, "GET", server.url())
        await t.aclose()
        await asyncio.wait_for(eofs.wait(), 2)


# ---- streaming -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("framing", ["chunked", "split-chunk", "length", "close"])
async def test_body_streams_before_the_server_finishes(framing: str) -> None:
    go_on = asyncio.Event()

    async def answer(req: Req, conn: Conn) -> bytes | None:
        if framing == "chunked":
            await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await go_on.wait()
            return b"6\r\nsecond\r\n0\r\n\r\n"
        if framing == "split-chunk":  # one chunk, its data sent in two parts
            await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nfirst")
            await go_on.wait()
            return b"second\r\n0\r\n\r\n"
        if framing == "length":
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nfirst")
            await go_on.wait()
            return b"second"
        await conn.send(b"HTTP/1.1 200 OK\r\n\r\nfirst")
        await go_on.wait()
        await conn.send(b"second")
        await conn.close()
        return None

    async with running(answer) as server, lean() as t:
        response = await t.handle_async_request(request("GET", server.url()))
        pieces = []

        async def read_all() -> None:
            async for chunk in response.aiter_bytes():
                pieces.append(chunk)
                go_on.set()

        await asyncio.wait_for(read_all(), 2)  # a transport that waits for the whole body would hang here
        await response.aclose()
        assert pieces[0] == b"first" and b"".join(pieces) == b"firstsecond"


# ---- TLS -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    if shutil.which("openssl"):
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return cert, key
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        pytest.skip("neither the openssl CLI nor the cryptography package is available to make a certificate")
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(alt, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(built.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


@pytest.fixture
def tls_server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


async def test_tls_default_context_rejects_self_signed(tls_server_context: ssl.SSLContext) -> None:
    async with running(lambda req, conn: ok(), ssl_context=tls_server_context) as server, lean() as t:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await fetch(t, "GET", server.url())
        assert t._open == 0


async def test_tls_with_trusted_certificate(tls_server_context: ssl.SSLContext, certificate: tuple[Path, Path]) -> None:
    trusted = ssl.create_default_context(cafile=str(certificate[0]))
    closers: list[Conn] = []

    async def answer(req: Req, conn: Conn) -> bytes:
        if req.target == "/close-after":
            closers.append(conn)
        return ok(b"secure n%d" % conn.number, b"Content-Type: text/plain\r\n")

    async with running(answer, ssl_context=tls_server_context) as server, lean(ssl_context=trusted) as t:
        for host in ("127.0.0.1", "127.0.0.1", "localhost"):
            _, body = await fetch(t, "GET", server.url("/", host=host))
            assert body == b"secure n%d" % (1 if host == "127.0.0.1" else 2)
        assert server.accepted == 2  # one connection per origin, reused
        await fetch(t, "GET", server.url("/close-after"))
        await closers[0].close()
        assert (await fetch(t, "GET", server.url()))[1] == b"secure n3"  # the closed one was not reused


# ---- through the provider clients ----------------------------------------------------------------------
async def test_provider_client_uses_lean_transport(fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    spec = ProviderSpec(
        name="openai-prov", kind="openai", api_key_env=None, timeout_s=5.0, base_url=fake_server.base_url("openai")
    )
    model = ModelSpec(
        name="openai-model",
        provider="openai-prov",
        id="gpt-test",
        context=100_000,
        max_output=4096,
        input_price=1e-6,
        output_price=2e-6,
        latency_ms=100,
    )
    req = ChatRequest(messages=[Message.user("Hello there")], max_tokens=50)
    fake_server.script("gpt-test", [Reply(text="Hi from the fake", input_tokens=12, output_tokens=7)] * 2)
    async with client_for(spec) as client:
        assert isinstance(client.lean(), LeanTransport)
        response = await client.achat(model, req)
        assert response.text == "Hi from the fake" and response.usage.output_tokens == 7
        events = [event async for event in client.astream(model, req)]
        assert "".join(e.text for e in events if e.kind == "delta") == "Hi from the fake"
        assert events[-1].kind == "done"
        assert (await client.achat(model, req, timeout=2)).text == "ok"
    assert fake_server.connections == 1
    assert [r.body["messages"] for r in fake_server.requests] == [[{"role": "user", "content": "Hello there"}]] * 3
    assert fake_server.requests[1].body["stream"] is True


# ---- fetch(): the whole body at once, as ProviderClient.achat reads ----------------------------------------
FETCH_CASES = {
    "content-length": ok(b"hello"),
    "content-length, large": ok(b"y" * 200_000),
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    "empty": b"HTTP/1.1 204 No Content\r\n\r\n",
    "zero length": ok(b""),
}


@pytest.mark.parametrize("case", sorted(FETCH_CASES))
async def test_fetch_reads_the_whole_body_like_aread(case: str) -> None:
    async with running(raw(FETCH_CASES[case])) as server, lean() as t:
        streamed, expected = await fetch(t, "GET", server.url())
        for _ in range(2):
            whole = await t.fetch(request("GET", server.url()))
            assert (whole.status_code, whole.content, whole.headers.raw) == (
                streamed.status_code,
                expected,
                streamed.headers.raw,
            )
            assert whole.extensions["http_version"] == b"HTTP/1.1"
        assert server.accepted == 1  # the connection went back to the pool each time


async def test_fetch_of_a_body_ended_by_close() -> None:
    async def close_delimited(req: Req, conn: Conn) -> None:
        await conn.send(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        await conn.close()

    async with running(close_delimited) as server, lean() as t:
        assert (await t.fetch(request("GET", server.url()))).content == b"until the end"


async def test_fetch_decodes_a_gzip_body_like_httpx() -> None:
    import gzip

    packed = gzip.compress(b'{"ok": true}')
    async with running(raw(ok(packed, b"Content-Encoding: gzip\r\n"))) as server, lean() as t:
        assert (await t.fetch(request("GET", server.url()))).json() == {"ok": True}


# ---- post(): no httpx objects, as ProviderClient.achat sends -----------------------------------------------
async def test_post_sends_host_length_and_headers_and_returns_raw_parts() -> None:
    async with running(lambda req, conn: ok(b'{"a":1}', b"X-Answer: 42\r\n")) as server, lean() as t:
        for _ in range(2):
            status, headers, body = await t.post(
                httpx.URL(server.url("/v1/chat?x=1")), [(b"content-type", b"application/json")], b'{"q":2}', TIMEOUTS
            )
            assert (status, body) == (200, b'{"a":1}') and (b"X-Answer", b"42") in headers
        req = server.requests[0]
        assert (req.method, req.target, req.body) == ("POST", "/v1/chat?x=1", b'{"q":2}')
        assert req.headers["host"] == f"127.0.0.1:{server.port}" and req.headers["content-length"] == "7"
        assert server.accepted == 1


@pytest.mark.parametrize("answer", ["gzip", "error"])
async def test_provider_client_decodes_gzip_and_classifies_errors_on_the_post_path(answer: str) -> None:
    import gzip
    import json as jsonlib

    from providers.errors import RateLimited

    message = {"role": "assistant", "content": "zipped"}
    reply = jsonlib.dumps(
        {
            "choices": [{"message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        }
    ).encode()
    gzipped = ok(gzip.compress(reply), b"Content-Encoding: gzip\r\nContent-Type: application/json\r\n")
    data = (
        gzipped
        if answer == "gzip"
        else b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 2\r\n\r\n{}"
    )
    async with running(raw(data)) as server:
        spec = ProviderSpec(name="p", kind="openai", api_key_env=None, timeout_s=5.0, base_url=server.url("/v1"))
        model = ModelSpec(name="m", provider="p", id="m", context=1000, input_price=0, output_price=0, latency_ms=1)
        async with client_for(spec, trust_env=False) as client:
            req = ChatRequest(messages=[Message.user("hi")])
            if answer == "gzip":
                assert (await client.achat(model, req)).text == "zipped"
            else:
                with pytest.raises(RateLimited) as info:
                    await client.achat(model, req)
                assert info.value.retry_after == 7


async def test_provider_headers_merge_case_insensitively_and_reject_line_breaks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from providers.errors import ProviderUnavailable

    reply = ok(b'{"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]}')
    async with running(raw(reply)) as server:
        spec = ProviderSpec(
            name="p",
            kind="openai",
            api_key_env="LEAN_TEST_KEY",
            timeout_s=5.0,
            base_url=server.url("/v1"),
            headers={"User-Agent": "mine/1", "Host": "api.example"},
        )
        model = ModelSpec(name="m", provider="p", id="m", context=1000, input_price=0, output_price=0, latency_ms=1)
        req = ChatRequest(messages=[Message.user("hi")])
        monkeypatch.setenv("LEAN_TEST_KEY", "sk-good")
        async with client_for(spec, trust_env=False) as client:
            assert (await client.achat(model, req)).text == "ok"
            sent = server.requests[0]
            assert sent.headers["user-agent"] == "mine/1" and sent.headers["host"] == "api.example"
            assert sent.head.lower().count(b"user-agent:") == 1 and sent.head.lower().count(b"host:") == 1
            monkeypatch.setenv("LEAN_TEST_KEY", "sk-with-newline\n")  # as read from a secret file
            with pytest.raises(ProviderUnavailable, match="line break"):
                await client.achat(model, req)
        assert len(server.requests) == 1  # nothing went out with the broken header
