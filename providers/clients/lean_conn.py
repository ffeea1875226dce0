"""The lean transport's connections and response bodies: an open asyncio stream pair in, a response body's bytes
out, read by its framing (Content-Length, chunked, or to the end of the connection).

`_Conn` is one pooled connection (and whether it is still fit to reuse); `_Body` reads one response body off it
as it arrives and hands the connection back to its LeanTransport (providers/clients/lean.py) when closed;
`too_large` is the error for a body over the `max_response_bytes` cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx

from providers.errors import ResponseTooLarge

if TYPE_CHECKING:
    from providers.clients.lean import LeanTransport

READ_SIZE = 64 * 1024
HEXDIGITS = b"0123456789abcdefABCDEF"

if sys.version_info >= (3, 11):
    _deadline = asyncio.timeout
else:  # pragma: no cover - Python 3.10

    @contextlib.asynccontextmanager
    async def _deadline(delay: float | None) -> AsyncIterator[None]:
        if delay is None:
            yield
            return
        task = asyncio.current_task()
        assert task is not None
        handle = asyncio.get_running_loop().call_later(delay, task.cancel)
        try:
            yield
        except asyncio.CancelledError:
            if handle.cancelled() or handle.when() > asyncio.get_running_loop().time():
                raise
            raise TimeoutError from None
        finally:
            handle.cancel()


def _readable(fd: int) -> bool:
    """Whether the socket has something to read right now (for an idle connection: the server's FIN or RST)."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([fd], [], [], 0)[0])  # pragma: no cover - Windows
    except (OSError, ValueError):
        return True


class _Conn:
    """One open connection to one origin."""

    __slots__ = ("fd", "idle_since", "loop", "origin", "reader", "writer")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        origin: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.reader, self.writer, self.origin, self.loop = reader, writer, origin, loop
        self.idle_since = 0.0
        sock = writer.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1

    def usable(self, now: float, expiry: float) -> bool:
        """Still fit to send a request on: open, nothing unread (the server said nothing unasked), not stale.
        The socket itself is polled too: a FIN or RST that arrived since the event loop last looked at it would
        otherwise only show up as a failed request."""
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and not self.reader._buffer  # type: ignore[attr-defined]
            and now - self.idle_since < expiry
            and (self.fd < 0 or not _readable(self.fd))
        )

    def close(self) -> None:
        if self.loop.is_closed():  # the transport cannot close itself any more: at least tell the server
            with contextlib.suppress(Exception):
                self.writer.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self.writer.close()


class _Body(httpx.AsyncByteStream):
    """A response body read from its connection as it arrives; closing it hands the connection back."""

    def __init__(
        self, transport: LeanTransport, conn: _Conn, framing: str, length: int, keep: bool, read_timeout: float | None
    ) -> None:
        self._transport, self._conn, self._framing, self._length = transport, conn, framing, length
        self._keep, self._timeout = keep, read_timeout
        self._complete = framing == "none"
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        reader, timeout, received = self._conn.reader, self._timeout, 0
        try:
            if self._framing == "length":
                remaining = self._length
                while remaining:
                    if len(reader._buffer) >= remaining:  # type: ignore[attr-defined]  # here: no wait, no timer
                        chunk = await reader.readexactly(remaining)
                    else:
                        async with _deadline(timeout):
                            chunk = await reader.read(min(remaining, READ_SIZE))
                    if not chunk:
                        raise httpx.RemoteProtocolError(
                            f"peer closed connection without sending complete message body: received "
                            f"{self._length - remaining} bytes, expected {self._length}"
                        )
                    remaining -= len(chunk)
                    yield chunk
            elif self._framing == "chunked":
                while True:
                    async with _deadline(timeout):
                        line = await reader.readuntil(b"\n")
                    digits = line.split(b";", 1)[0].strip()
                    if not digits or digits.lstrip(HEXDIGITS):  # int() alone would take "-5", "0x5", "1_0"
                        raise httpx.RemoteProtocolError(f"malformed chunk size line {line[:40]!r}")
                    size = int(digits, 16)
                    if size == 0:
                        async with _deadline(timeout):
                            while (await reader.readuntil(b"\n")).strip():  # trailer fields, then the blank line
                                pass
                        break
                    if len(reader._buffer) >= size + 2:  # type: ignore[attr-defined]  # all here: one read, no timer
                        data = await reader.readexactly(size + 2)
                        if data[size:] != b"\r\n":
                            raise httpx.RemoteProtocolError("chunk data is not followed by CRLF")
                        received += size
                        yield data[:size]
                        continue
                    remaining = size  # a chunk still arriving: hand on what is here rather than wait for all of it
                    while remaining:
                        if len(reader._buffer) >= remaining:  # type: ignore[attr-defined]
                            data = await reader.readexactly(remaining)
                        else:
                            async with _deadline(timeout):
                                data = await reader.read(min(remaining, READ_SIZE))
                            if not data:
                                raise asyncio.IncompleteReadError(b"", remaining)
                        remaining -= len(data)
                        received += len(data)
                        yield data
                    async with _deadline(timeout):
                        if await reader.readexactly(2) != b"\r\n":
                            raise httpx.RemoteProtocolError("chunk data is not followed by CRLF")
            elif self._framing == "close":
                while True:
                    async with _deadline(timeout):
                        chunk = await reader.read(READ_SIZE)
                    if not chunk:
                        break
                    yield chunk
            self._complete = True
        except asyncio.IncompleteReadError:
            raise httpx.RemoteProtocolError(
                f"peer closed connection without sending complete message body (after {received} bytes)"
            ) from None
        except asyncio.LimitOverrunError:
            raise httpx.RemoteProtocolError("chunk size line too long") from None
        except TimeoutError:
            raise httpx.ReadTimeout("timed out reading the response body") from None
        except (ConnectionError, OSError) as exc:
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}") from None

    async def read_all(self, max_bytes: int | None = None) -> bytes:
        """The whole body (the stream is then exhausted). Raises ResponseTooLarge, leaving the body unfinished (so
        closing it drops the connection), when it is larger than `max_bytes`."""
        if self._framing == "none":
            return b""
        reader = self._conn.reader
        if self._framing == "length":
            if max_bytes is not None and self._length > max_bytes:
                raise too_large(max_bytes, f"Content-Length {self._length:,}")
            if len(reader._buffer) >= self._length:  # type: ignore[attr-defined]
                body = await reader.readexactly(self._length)
                self._complete = True
                return body
            max_bytes = None  # the length was checked: no count needed
        chunks: list[bytes] = []
        size = 0
        body_iter = self.__aiter__()
        try:
            async for chunk in body_iter:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise too_large(max_bytes, f"more than {max_bytes:,} bytes")
                chunks.append(chunk)
        finally:
            await body_iter.aclose()  # type: ignore[attr-defined]
        return b"".join(chunks)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._transport._release(self._conn, reuse=self._complete and self._keep)


def too_large(max_bytes: int, got: str) -> ResponseTooLarge:
    """The error for a body over the cap (`got`: what was seen, e.g. "Content-Length 314,572,800")."""
    return ResponseTooLarge(
        f"response body larger than max_response_bytes ({max_bytes:,} bytes; {got}): connection dropped"
    )
