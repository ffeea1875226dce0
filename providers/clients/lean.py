"""The lean async HTTP/1.1 transport: an `httpx.Request` in, an `httpx.Response` with a streamed body out, over
pooled keep-alive asyncio connections (plain TCP or TLS).

It plugs into httpx's own transport seam (`httpx.AsyncBaseTransport`) and raises httpx's exception classes, so
everything above it (error classification, SSE parsing, tests with `httpx.MockTransport`) is unchanged.
ProviderClient's async path uses it by default, calling it directly rather than through `httpx.AsyncClient`,
whose client layer and default transport cost several times more per call (docs/performance.md). It is used
only where it is enough: no proxy in the environment (proxies go through `httpx.AsyncClient`) and HTTP/1.1.

Framing follows RFC 9112 section 6: no body for HEAD, 1xx, 204 and 304; `Transfer-Encoding: chunked`; then
`Content-Length`; else the body runs to the end of the connection. A connection returns to its pool only when
its response body was read to the end and neither side said `Connection: close`; a connection that was idle
past `keepalive_expiry`, or that the server has closed meanwhile, is dropped instead of reused. The whole-body
readers (`post`, `fetch`) take a `max_bytes` cap: a larger body raises providers.errors.ResponseTooLarge (at once
when its Content-Length says so, else as soon as the count passes the cap) and its connection is dropped.
The connections themselves and the reading of a body by its framing live in providers/clients/lean_conn.py.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

import httpx

from providers.clients.lean_conn import READ_SIZE, _Body, _Conn, _deadline

MAX_HEAD = 64 * 1024  # bytes of status line plus headers; larger answers are a protocol error
DEFAULT_PORTS = {b"http": 80, b"https": 443}


def _timeouts(request: httpx.Request) -> tuple[float | None, float | None, float | None, float | None]:
    t = request.extensions.get("timeout") or {}
    return t.get("connect"), t.get("read"), t.get("write"), t.get("pool")


class LeanTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over pooled asyncio connections (see the module docstring). Bound to one event loop at a time:
    used from another (a second `asyncio.run()`), it forgets the first loop's connections and starts afresh."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        limits: httpx.Limits | None = None,
        keepalive_expiry: float | None = None,
    ) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self._ssl = ssl_context
        self._max_open = limits.max_connections or 1 << 30
        keepalive = limits.max_keepalive_connections
        self._max_idle = keepalive if keepalive is not None else 1 << 30
        expiry = keepalive_expiry if keepalive_expiry is not None else limits.keepalive_expiry
        self._expiry = expiry if expiry is not None else 5.0
        self._idle: dict[tuple[Any, ...], list[_Conn]] = {}
        self._n_idle = 0
        self._open = 0  # connections open or being opened, idle ones included
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Use `loop` from now on. Connections and waiters of an earlier loop cannot be used from this one (their
        futures belong to it): idle ones are closed, and the rest no longer count towards the limits."""
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        self._n_idle = self._open = 0
        self._waiters.clear()
        self._loop = loop

    # ---- the pool -------------------------------------------------------------------------------------
    async def _acquire(
        self, url: httpx.URL, origin: tuple[Any, ...], connect_t: float | None, pool_t: float | None
    ) -> _Conn:
        """An idle connection to `origin`, else a new one; waits (up to the pool timeout) at the limit."""
        deadline = None if pool_t is None else time.monotonic() + pool_t
        while True:
            if self._closed:
                raise RuntimeError("the transport has been closed")
            conn = self._take_idle(origin)
            if conn is not None:
                return conn
            if self._open < self._max_open:
                return await self._connect(url, origin, connect_t)
            if self._n_idle:  # at the limit with idle connections to other origins: close one to make room
                self._evict_one()
                continue
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with _deadline(None if deadline is None else max(0.0, deadline - time.monotonic())):
                    await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken too late to use it: pass the turn on
                if isinstance(exc, TimeoutError):
                    raise httpx.PoolTimeout("timed out waiting for a free connection") from None
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self, url: httpx.URL, origin: tuple[Any, ...], connect_t: float | None) -> _Conn:
        self._open += 1
        scheme, host, port = origin
        tls = scheme == b"https"
        if tls and self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        try:
            async with _deadline(connect_t):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=self._ssl if tls else None, server_hostname=host if tls else None, limit=MAX_HEAD
                )
        except BaseException as exc:
            self._open -= 1
            self._wake()
            if isinstance(exc, TimeoutError):
                raise httpx.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
            if isinstance(exc, OSError):  # ssl.SSLError included
                raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from None
            raise
        return _Conn(reader, writer, origin, asyncio.get_running_loop())

    def _take_idle(self, origin: tuple[Any, ...]) -> _Conn | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            self._n_idle -= 1
            if conn.usable(now, self._expiry):
                return conn
            self._drop(conn)
        return None

    def _evict_one(self) -> None:
        for conns in self._idle.values():
            if conns:
                self._n_idle -= 1
                self._drop(conns.pop(0))
                return

    def _drop(self, conn: _Conn) -> None:
        conn.close()
        if conn.loop is self._loop:  # else a connection of an earlier event loop, already uncounted by _bind
            self._open -= 1
            self._wake()

    def _release(self, conn: _Conn, *, reuse: bool) -> None:
        if (
            not reuse
            or self._closed
            or self._n_idle >= self._max_idle
            or conn.writer.is_closing()
            or conn.loop is not self._loop
        ):
            self._drop(conn)
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.origin, []).append(conn)
        self._n_idle += 1
        self._wake()

    # ---- one exchange ---------------------------------------------------------------------------------
    async def _exchange(self, request: httpx.Request) -> tuple[int, list[tuple[bytes, bytes]], dict[str, Any], _Body]:
        """Send `request` and read the response head: status, headers, extensions and the body stream."""
        url = request.url
        head = [b"%s %s HTTP/1.1\r\n" % (request.method.encode(), url.raw_path)]
        head += [b"%s: %s\r\n" % (k, v) for k, v in request.headers.raw]
        try:
            body = request.content if isinstance(request.stream, httpx.ByteStream) else None
        except httpx.RequestNotRead:  # built with `stream=`
            body = None
        if body is None:
            body = await request.aread()
            if request.headers.get("transfer-encoding", "").lower() == "chunked":  # streamed content: say so
                body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
            elif body and "content-length" not in request.headers:
                head.append(b"Content-Length: %d\r\n" % len(body))
        head.append(b"\r\n")
        close = request.headers.get("connection", "").lower() == "close"
        return await self._send(request.method, url, b"".join(head) + body, _timeouts(request), close)

    async def post(
        self,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeouts: dict[str, float | None],
        max_bytes: int | None = None,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """POST `body` and read the whole answer as (status, raw headers, body bytes), with no httpx objects:
        the provider clients' path for answers that are not streamed. `headers` must not hold Content-Length
        (added here); Host is added unless they hold one. The body is returned as sent: a caller that finds a
        Content-Encoding must decode it (ProviderClient then goes through httpx.Response). A body larger than
        `max_bytes` raises ResponseTooLarge and drops the connection."""
        head = [b"POST %s HTTP/1.1\r\n" % url.raw_path]
        if not any(k.lower() == b"host" for k, _ in headers):  # a Host the caller gives wins
            head.append(b"Host: %s\r\n" % url.netloc)
        head += [b"%s: %s\r\n" % kv for kv in headers]
        head.append(b"Content-Length: %d\r\n\r\n" % len(body))
        t = timeouts
        status, raw, _, stream = await self._send(
            "POST", url, b"".join(head) + body, (t.get("connect"), t.get("read"), t.get("write"), t.get("pool")), False
        )
        try:
            return status, raw, await stream.read_all(max_bytes)
        finally:
            await stream.aclose()

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        payload: bytes,
        timeouts: tuple[float | None, float | None, float | None, float | None],
        client_close: bool,
    ) -> tuple[int, list[tuple[bytes, bytes]], dict[str, Any], _Body]:
        """Write one request (`payload`: head and body) on a pooled connection and read the response head."""
        if self._closed:
            raise RuntimeError("the transport has been closed")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        scheme = url.raw_scheme
        if scheme not in DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"the lean transport speaks http and https, not {url.scheme!r}")
        origin = (scheme, url.raw_host.decode("ascii"), url.port or DEFAULT_PORTS[scheme])  # IDNA: xn--
        connect_t, read_t, write_t, pool_t = timeouts
        conn = await self._acquire(url, origin, connect_t, pool_t)
        try:
            try:
                conn.writer.write(payload)
                if conn.writer.transport.get_write_buffer_size() > READ_SIZE:
                    async with _deadline(write_t):
                        await conn.writer.drain()
            except TimeoutError:
                raise httpx.WriteTimeout("timed out sending the request") from None
            except (ConnectionError, OSError) as exc:
                raise httpx.WriteError(f"{type(exc).__name__}: {exc}") from None
            status, reason, version, headers = await self._read_head(conn.reader, read_t)
        except BaseException:
            self._drop(conn)  # an exchange cut anywhere (errors, cancellation) leaves the connection unusable
            raise

        framing, length, keep, coded = "close", -1, version == b"HTTP/1.1", False
        for name, value in headers:
            lname = name.lower()
            if lname == b"content-length":
                if not value.isdigit() or (length >= 0 and int(value) != length):  # int() alone takes "-1", "+1"
                    self._drop(conn)
                    raise httpx.RemoteProtocolError(f"malformed Content-Length {value[:40]!r}")
                length = int(value)
            elif lname == b"transfer-encoding":  # chunked only as the final coding, else the body runs to close
                coded = True
                framing = "chunked" if value.lower().rsplit(b",", 1)[-1].strip() == b"chunked" else "close"
            elif lname == b"connection" and b"close" in value.lower():
                keep = False
        if coded:
            if length >= 0:  # both: Transfer-Encoding wins, and the connection is not trusted again
                keep = False
        elif length >= 0:
            framing = "length"
        if method == "HEAD" or status in (204, 304) or (framing == "length" and length == 0):
            framing = "none"
        if framing == "close":
            keep = False
        if client_close:
            keep = False
        stream = _Body(self, conn, framing, length, keep, read_t)
        if framing == "none":
            await stream.aclose()
        return status, headers, {"http_version": version, "reason_phrase": reason}, stream

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        status, headers, extensions, stream = await self._exchange(request)
        return httpx.Response(status, headers=headers, stream=stream, request=request, extensions=extensions)

    async def fetch(self, request: httpx.Request, max_bytes: int | None = None) -> httpx.Response:
        """`handle_async_request` with the whole body read: a Response holding its content, for calls that are
        not streamed. A Content-Length body that has already arrived is taken in one read, without a timer or
        the async-iterator machinery. A body larger than `max_bytes` (as sent, before any Content-Encoding is
        decoded) raises ResponseTooLarge and drops the connection."""
        status, headers, extensions, stream = await self._exchange(request)
        try:
            body = await stream.read_all(max_bytes)
        finally:
            await stream.aclose()
        response = httpx.Response(
            status, headers=headers, stream=httpx.ByteStream(body), request=request, extensions=extensions
        )
        response.read()  # decodes a Content-Encoding, as aread() would; adds no headers of its own
        return response

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader, read_t: float | None) -> tuple[int, bytes, bytes, list]:
        while True:  # 1xx interim answers (100 Continue, 103 Early Hints) are skipped
            try:
                async with _deadline(read_t):
                    raw = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                detail = "without sending a response" if not exc.partial else "in the middle of the response head"
                raise httpx.RemoteProtocolError(f"server disconnected {detail}") from None
            except asyncio.LimitOverrunError:
                raise httpx.RemoteProtocolError(f"response head larger than {MAX_HEAD} bytes") from None
            except TimeoutError:
                raise httpx.ReadTimeout("timed out waiting for the response") from None
            except (ConnectionError, OSError) as exc:
                raise httpx.ReadError(f"{type(exc).__name__}: {exc}") from None
            raw = raw[:-4]
            crlf = raw.count(b"\r\n")
            if raw.count(b"\n") != crlf or raw.count(b"\r") != crlf:
                raise httpx.RemoteProtocolError("malformed response head: a bare CR or LF")
            lines = raw.split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not (len(parts[1]) == 3 and parts[1].isdigit()):
                raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:60]!r}")
            status = int(parts[1])
            if 100 <= status < 200 and status != 101:
                continue
            headers = []
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                if not sep or not name or name != name.strip():
                    raise httpx.RemoteProtocolError(f"malformed header line {line[:60]!r}")
                headers.append((name, value.strip()))
            return status, parts[2] if len(parts) > 2 else b"", parts[0], headers

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                self._drop(conn)
        self._idle.clear()
        self._n_idle = 0
        for waiter in self._waiters:  # requests queued for a connection fail now rather than connect again
            if not waiter.done():
                waiter.set_result(None)
