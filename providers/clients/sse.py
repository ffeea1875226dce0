"""A small Server-Sent Events parser: byte chunks or text lines (sync or async) in, `SSEEvent`s out.

Follows the WHATWG event-stream rules that matter for LLM APIs: LF, CR and CRLF line ends (also split across
chunks), `event:`/`data:`/`id:`/`retry:` fields, multi-line `data:` joined by newlines, `:` comment lines,
and a blank line dispatching the event.  An event still pending when the input ends is dispatched too (a
lenient choice: a terminal `data: [DONE]` without its blank line is not lost); callers detect streams cut
short by the absence of their wire format's terminal event. The byte readers take a `max_bytes` cap on the
stream's total size: past it they raise providers.errors.ResponseTooLarge (one counter per chunk).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

from providers.errors import ResponseTooLarge

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class SSEEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


class LineSplitter:
    """Incrementally splits UTF-8 byte chunks into lines without their terminators."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer: list[str] = []  # the pieces of an unfinished line (joined once it ends: a long line is linear)
        self._skip_lf = False  # the previous chunk ended in CR: a leading LF belongs to that line end

    def feed(self, chunk: bytes | str) -> list[str]:
        text = self._decoder.decode(chunk) if isinstance(chunk, bytes) else chunk
        if not text:
            return []
        if self._skip_lf and text.startswith("\n"):
            text = text[1:]
        self._skip_lf = text.endswith("\r")
        if "\n" not in text and "\r" not in text:
            if text:
                self._buffer.append(text)
            return []
        parts = _LINE_END.split(text)
        if self._buffer:
            self._buffer.append(parts[0])
            parts[0] = "".join(self._buffer)
        tail = parts.pop()
        self._buffer = [tail] if tail else []
        return parts

    def flush(self) -> list[str]:
        tail = "".join(self._buffer) + self._decoder.decode(b"", final=True)
        self._buffer = []
        return [tail] if tail else []


class SSEDecoder:
    """Turns lines into events; `feed_line` returns an event when a blank line dispatches one."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None
        self._dirty = False

    def feed_line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event, self._dirty = value, True
        elif name == "data":
            self._data.append(value)
            self._dirty = True
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def flush(self) -> SSEEvent | None:
        return self._dispatch()

    def _dispatch(self) -> SSEEvent | None:
        if not self._dirty:
            return None
        event = SSEEvent(self._event or "message", "\n".join(self._data), self._id, self._retry)
        self._event, self._data, self._dirty = "", [], False
        return event


def iter_sse_lines(lines: Iterable[str]) -> Iterator[SSEEvent]:
    """Events from text lines (with or without their trailing newline)."""
    decoder = SSEDecoder()
    for line in lines:
        event = decoder.feed_line(line.rstrip("\r\n"))
        if event is not None:
            yield event
    event = decoder.flush()
    if event is not None:
        yield event


def stream_too_large(max_bytes: int) -> ResponseTooLarge:
    return ResponseTooLarge(f"stream larger than max_response_bytes ({max_bytes:,} bytes in all): connection dropped")


def iter_sse_bytes(chunks: Iterable[bytes], max_bytes: int | None = None) -> Iterator[SSEEvent]:
    """Events from raw byte chunks split anywhere (mid-line, mid-CRLF, mid-UTF-8 character); ResponseTooLarge once
    more than `max_bytes` have come."""
    splitter = LineSplitter()
    left = max_bytes if max_bytes is not None else -1

    def lines() -> Iterator[str]:
        nonlocal left
        for chunk in chunks:
            if left >= 0:
                left -= len(chunk)
                if left < 0:
                    raise stream_too_large(max_bytes or 0)
            yield from splitter.feed(chunk)
        yield from splitter.flush()

    return iter_sse_lines(lines())


async def aiter_sse_lines(lines: AsyncIterable[str]) -> AsyncIterator[SSEEvent]:
    """Async `iter_sse_lines`."""
    decoder = SSEDecoder()
    async for line in lines:
        event = decoder.feed_line(line.rstrip("\r\n"))
        if event is not None:
            yield event
    event = decoder.flush()
    if event is not None:
        yield event


async def aiter_sse_bytes(chunks: AsyncIterable[bytes], max_bytes: int | None = None) -> AsyncIterator[SSEEvent]:
    """Async `iter_sse_bytes`."""
    splitter = LineSplitter()
    decoder = SSEDecoder()
    left = max_bytes if max_bytes is not None else -1
    async for chunk in chunks:
        if left >= 0:
            left -= len(chunk)
            if left < 0:
                raise stream_too_large(max_bytes or 0)
        for line in splitter.feed(chunk):
            event = decoder.feed_line(line)
            if event is not None:
                yield event
    for line in splitter.flush():
        event = decoder.feed_line(line)
        if event is not None:
            yield event
    event = decoder.flush()
    if event is not None:
        yield event
