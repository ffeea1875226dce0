"""The gateway's wire formats, one per endpoint: a request's bytes and headers in, the checked ChatCall the shared
pipeline executes out; a Completion (or its stream of events) in, the endpoint's own JSON answer, SSE frames and
error shape out. Chat completions is the OpenAI format itself; /v1/messages, /v1/responses and /v1/completions
translate to it (providers/gateway/anthropic_api.py, responses_api.py, legacy.py).

`Wire` is what providers/gateway/app.py and streamed.py call; a Wire object serves one request (it may keep what
it read from the request to render the answer)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request
from starlette.responses import Response

from providers.gateway.closing import COST_FIELD, add_to_frame, cost_fields
from providers.gateway.openai_wire import ApiError, ChunkWriter, completion_json, new_id, parse_chat, read_json

if TYPE_CHECKING:
    from providers.execution import Completion
    from providers.gateway.openai_wire import ChatCall
    from providers.types import StreamEvent

__all__ = ["ChatWire", "Wire", "Writer", "body_object", "dumps", "json_response", "sse", "with_body"]


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(obj, separators=(",", ":")).encode()


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A compact JSON response."""
    return Response(dumps(obj), status, headers, "application/json")


def sse(event: str, obj: Any) -> bytes:
    """One SSE frame with its `event:` line (Anthropic's SDK drops a frame without one)."""
    return b"event: " + event.encode() + b"\ndata: " + dumps(obj) + b"\n\n"


def with_body(request: Request, body: bytes) -> Request:
    """`request` with `body` as its (already read) body: the body is received first, then whatever the server's
    own channel gives (a disconnect), so hang-ups are still noticed."""
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    sent = False

    async def receive() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await request.receive()

    return Request({**request.scope, "headers": headers}, receive)


def body_object(raw: bytes) -> dict[str, Any]:
    """A request body's JSON object (read_json's checks), or ApiError 400."""
    body = read_json(raw)
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return body


class Writer(Protocol):
    """The SSE frames of one streamed answer, in the endpoint's format."""

    def start(self) -> bytes:
        """The frames before the first event (a role chunk, `message_start`, `response.created`)."""
        ...

    def event(self, event: StreamEvent) -> bytes | None:
        """The frames for one StreamEvent (delta, tool_call, usage, done), or None."""
        ...

    def end(self, done: Completion | None) -> bytes:
        """The closing frames of a stream that reached its end (`done`: the run's Completion)."""
        ...

    def error(self, err: ApiError) -> bytes:
        """The error frame of a stream that failed after it began."""
        ...


class Wire(Protocol):
    """One endpoint's wire format, for one request."""

    endpoint: str  # the `endpoint` attribute and the metrics label: chat, messages, responses, completions

    def parse(self, raw: bytes, headers: Mapping[str, str]) -> ChatCall:
        """The checked ChatCall for a request body (raises ApiError)."""
        ...

    def answer(self, c: Completion) -> dict[str, Any]:
        """The JSON answer for a Completion."""
        ...

    def writer(self, model: str) -> Writer:
        """The SSE writer of a streamed answer from `model`."""
        ...

    def error_body(self, err: ApiError) -> dict[str, Any]:
        """The JSON body of an error answer."""
        ...


class _ChatWriter:
    def __init__(self, model: str, include_usage: bool, functions: bool = False) -> None:
        self.chunks = ChunkWriter(model, include_usage, functions)
        self.include_usage = include_usage
        self.last = b""  # without include_usage, the finish chunk: held back for the cost (end)

    def start(self) -> bytes:
        return self.chunks.start()

    def event(self, event: StreamEvent) -> bytes | None:
        frame = self.chunks.event(event)
        if event.kind == "done" and not self.include_usage and frame is not None:
            self.last, frame = frame, None
        return frame

    def end(self, done: Completion | None) -> bytes:
        """The usage chunk with `cost` / `cost_estimated` in its `usage` (include_usage), else the finish chunk
        with a top-level `x_modelroute_cost: {usd, estimated}`; then `[DONE]`."""
        cost = cost_fields(done)
        if self.include_usage and done is not None:
            return add_to_frame(self.chunks.usage(done.usage), "usage", cost) + ChunkWriter.DONE
        last, self.last = self.last, b""
        if last and cost:
            last = add_to_frame(last, None, {COST_FIELD: {"usd": cost["cost"], "estimated": cost["cost_estimated"]}})
        return last + ChunkWriter.DONE

    def error(self, err: ApiError) -> bytes:
        last, self.last = self.last, b""
        return last + ChunkWriter.error(err)


class ChatWire:
    """POST /v1/chat/completions: the OpenAI chat format, as it is."""

    endpoint = "chat"

    def __init__(self) -> None:
        self.include_usage = False
        self.functions = False

    def parse(self, raw: bytes, headers: Mapping[str, str]) -> ChatCall:
        call = parse_chat(raw, headers)
        self.include_usage, self.functions = call.include_usage, call.functions
        return call

    def answer(self, c: Completion) -> dict[str, Any]:
        return completion_json(c, new_id(), int(time.time()), self.functions)

    def writer(self, model: str) -> Writer:
        return _ChatWriter(model, self.include_usage, self.functions)

    def error_body(self, err: ApiError) -> dict[str, Any]:
        return err.body()
