"""The gateway's HTTP/1.1 protocol for uvicorn: uvicorn's own protocol class in, the same class out with its socket
writes coalesced (every write made in one event-loop turn leaves as one send; see docs/performance.md) and, with
`guarded`, its connections bounded:

* a **header timeout**: a request head must arrive whole within `header_timeout` seconds of the connection opening,
  or of its first byte on a kept-alive connection; otherwise the connection is closed (with a 408 JSON answer when
  part of a head came). uvicorn has no such timer (its keep-alive timer stops at the first byte), so a client that
  sends one header byte a second would hold its connection forever;
* a **body timeout**: once a head is parsed, the request's body must arrive whole within `body_timeout` seconds, or
  the connection is closed (with a 408 JSON answer when no response has started); otherwise a client that sends its
  head and then one body byte a second would hold a connection and a request slot forever;
* a **connection cap**: past `max_connections` open connections, a new one makes room by closing the connection
  idle longest (no request in progress: between requests, or still sending a head), else it is closed itself, so
  idle sockets cannot use up the file descriptors that requests and upstream calls need.

The keep-alive timeout after a response is uvicorn's own (`timeout_keep_alive`)."""

from __future__ import annotations

import asyncio
import json
from typing import Any


class CoalescingTransport:
    """An asyncio transport proxy: `write()`s are queued and sent as one write at the end of the loop turn."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._pending.append(bytes(data))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what is queued now (also done before close and write_eof)."""
        self._scheduled = False
        if self._pending:
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading, ...: the real transport's
        return getattr(self._transport, name)


def coalescing(protocol: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """A subclass of the asyncio protocol class `protocol` whose transport coalesces writes."""

    class Coalescing(protocol):  # type: ignore[valid-type, misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            loop = asyncio.get_running_loop()
            super().connection_made(CoalescingTransport(transport, loop))  # type: ignore[arg-type]

    Coalescing.__name__ = Coalescing.__qualname__ = f"Coalescing{protocol.__name__}"
    return Coalescing


def _timeout_answer(seconds: float, part: str = "head") -> bytes:
    body = json.dumps(
        {
            "error": {
                "message": f"the request {part} did not arrive within {seconds:g} seconds",
                "type": "invalid_request_error",
                "code": "request_timeout",
                "param": None,
            }
        },
        separators=(",", ":"),
    ).encode()
    head = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    )
    return head + body


def guarded(
    protocol: type[asyncio.Protocol],
    *,
    header_timeout: float | None = None,
    max_connections: int | None = None,
    body_timeout: float | None = None,
) -> type[asyncio.Protocol]:
    """A subclass of uvicorn's HTTP protocol class `protocol` (httptools or h11) with the header timeout, the body
    timeout and the connection cap of the module docstring; None turns each off. It relies on what both of uvicorn's
    protocols have: `cycle` (a new one per request head parsed, `more_body` until its body is complete,
    `response_started`, `response_complete`), `transport` and the server-wide `connections` set."""
    answer_408 = _timeout_answer(header_timeout) if header_timeout else b""
    body_408 = _timeout_answer(body_timeout, "body") if body_timeout else b""

    class Guarded(protocol):  # type: ignore[valid-type, misc]
        _head_timer: asyncio.TimerHandle | None = None
        _body_timer: asyncio.TimerHandle | None = None
        _partial = False  # bytes of a request head arrived, the head is not complete
        _active_at = 0.0  # loop time of the last bytes received (or of the connection)

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            loop = asyncio.get_running_loop()
            self._active_at = loop.time()
            if header_timeout:  # a new connection has header_timeout to send its first head
                self._head_timer = loop.call_later(header_timeout, self._head_timed_out)
            if max_connections is not None and len(self.connections) > max_connections:
                self._make_room()

        def data_received(self, data: bytes) -> None:
            before = self.cycle
            super().data_received(data)
            cycle = self.cycle
            if cycle is not before:  # a head was parsed: its request is under way
                self._partial = False
                if self._head_timer is not None:
                    self._head_timer.cancel()
                    self._head_timer = None
                self._cancel_body_timer()
                if body_timeout and cycle is not None and cycle.more_body and not self.transport.is_closing():
                    self._body_timer = asyncio.get_running_loop().call_later(body_timeout, self._body_timed_out, cycle)
            elif cycle is None or cycle.response_complete:  # the first bytes of the next head (or more of it)
                self._partial = True
                if self._head_timer is None and header_timeout and not self.transport.is_closing():
                    self._head_timer = asyncio.get_running_loop().call_later(header_timeout, self._head_timed_out)
            if max_connections is not None:
                self._active_at = asyncio.get_running_loop().time()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            self._cancel_body_timer()
            super().connection_lost(exc)

        def _cancel_body_timer(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

        def _body_timed_out(self, cycle: Any) -> None:
            self._body_timer = None
            if cycle is not self.cycle or not cycle.more_body or self.transport.is_closing():
                return  # the body arrived (or a later request is under way, or the connection is closing)
            if not cycle.response_started:
                self.transport.write(body_408)
            self.transport.close()

        def _between_requests(self) -> bool:
            cycle = self.cycle
            return (cycle is None or cycle.response_complete) and not self.transport.is_closing()

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self._between_requests():  # a request is under way (or the connection is closing)
                return
            if self._partial:
                self.transport.write(answer_408)
            self.transport.close()

        def _make_room(self) -> None:
            """Close the connection idle longest (fully idle before one sending a head), else this new one."""
            victim, best = None, None
            for other in self.connections:
                if other is self or not isinstance(other, Guarded) or not other._between_requests():
                    continue
                rank = (other._partial, other._active_at)
                if best is None or rank < best:
                    victim, best = other, rank
            (victim or self).transport.close()

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{protocol.__name__}"
    return Guarded


def http_protocol(
    *, header_timeout: float | None = None, max_connections: int | None = None, body_timeout: float | None = None
) -> type[asyncio.Protocol]:
    """uvicorn's default HTTP/1.1 protocol class (httptools when installed, else h11), coalescing; with
    `header_timeout` / `max_connections` / `body_timeout`, guarded as well (see `guarded`)."""
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    protocol = coalescing(import_from_string(HTTP_PROTOCOLS["auto"]))
    if header_timeout is None and max_connections is None and body_timeout is None:
        return protocol
    return guarded(protocol, header_timeout=header_timeout, max_connections=max_connections, body_timeout=body_timeout)
