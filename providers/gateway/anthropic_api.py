"""The Anthropic Messages API for the gateway (POST /v1/messages): a Messages request body in, the ChatCall every
endpoint executes out (translated by providers/gateway/anthropic_request.py, checked by parse_chat); a Completion or
its stream events in, an Anthropic `message` object, Anthropic's SSE events (`event:` lines, message_start ...
message_stop) and Anthropic's error shape out, whichever provider answered."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from providers.gateway.anthropic_request import to_chat, to_count
from providers.gateway.closing import cost_fields
from providers.gateway.openai_wire import ApiError, parse_chat
from providers.gateway.run import SHOULD_RETRY
from providers.gateway.wire import body_object, sse

if TYPE_CHECKING:
    from providers.execution import Completion
    from providers.gateway.openai_wire import ChatCall
    from providers.gateway.wire import Writer
    from providers.types import StreamEvent, Usage

__all__ = ["ERROR_TYPES", "MessagesWire", "MessagesWriter", "error_type"]

#: Anthropic's error type for each HTTP status (other 4xx: invalid_request_error; other 5xx: api_error).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status."""
    return ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def _new_id() -> str:
    return "msg_" + os.urandom(12).hex()


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _input(arguments: str) -> Any:
    """A tool call's JSON arguments as the tool_use block's `input` object ({} when they are not an object)."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _stop(c: Completion | None, finish: str | None, tools: bool, stops: list[str]) -> tuple[str, str | None]:
    """The stop_reason and stop_sequence: an Anthropic upstream's own, else mapped from the finish reason."""
    raw = c.response.raw if c is not None and c.response is not None else None
    if isinstance(raw, dict) and raw.get("stop_reason") == "stop_sequence":
        seq = raw.get("stop_sequence")
        return "stop_sequence", seq if isinstance(seq, str) and seq in stops else None
    if tools:
        return "tool_use", None
    return _STOP.get(finish or "stop", "end_turn"), None


class MessagesWriter:
    """Anthropic's SSE events for one streamed answer; content blocks numbered in order from 0."""

    def __init__(self, model: str, stops: list[str]) -> None:
        self.id, self.model, self.stops = _new_id(), model, stops
        self.index = -1  # the last block started
        self.open_text = False
        self.tools = False
        self.finish: str | None = None

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return sse("message_start", {"type": "message_start", "message": message}) + sse("ping", {"type": "ping"})

    def _close(self) -> bytes:
        if not self.open_text:
            return b""
        self.open_text = False
        return sse("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _block(self, block: dict[str, Any]) -> bytes:
        self.index += 1
        return sse("content_block_start", {"type": "content_block_start", "index": self.index, "content_block": block})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def event(self, event: StreamEvent) -> bytes | None:
        if event.kind == "delta" and event.text:
            out = b""
            if not self.open_text:
                out, self.open_text = self._block({"type": "text", "text": ""}), True
            return out + self._delta({"type": "text_delta", "text": event.text})
        if event.kind == "tool_call" and event.tool_call is not None:
            call = event.tool_call
            self.tools = True
            out = self._close() + self._block({"type": "tool_use", "id": call.id, "name": call.name, "input": {}})
            out += self._delta({"type": "input_json_delta", "partial_json": call.arguments or "{}"})
            return out + sse("content_block_stop", {"type": "content_block_stop", "index": self.index})
        if event.kind == "done":
            self.finish = event.finish_reason
        return None

    def end(self, done: Completion | None) -> bytes:
        reason, seq = _stop(done, self.finish, self.tools, self.stops)
        usage = {**_usage(done.usage), **cost_fields(done)} if done is not None else {"output_tokens": 0}
        delta = {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": seq}, "usage": usage}
        return self._close() + sse("message_delta", delta) + sse("message_stop", {"type": "message_stop"})

    def error(self, err: ApiError) -> bytes:
        return sse("error", _error_body(err))


def _error_body(err: ApiError) -> dict[str, Any]:
    """Anthropic's error body; a 503 the gateway marks as not worth retrying (no provider has a key: x-should-retry
    false) is an `api_error`, not `overloaded_error`, which says "try again later"."""
    kind = "api_error" if err.headers.get(SHOULD_RETRY) == "false" else error_type(err.status)
    return {"type": "error", "error": {"type": kind, "message": err.message}}


class MessagesWire:
    """POST /v1/messages: Anthropic's Messages API over the chat pipeline."""

    endpoint = "messages"

    def __init__(self) -> None:
        self.stops: list[str] = []

    def parse(self, raw: bytes, headers: Mapping[str, str]) -> ChatCall:
        body = to_chat(body_object(raw))
        self.stops = body.get("stop", [])
        return parse_chat(body, headers)

    def parse_count(self, raw: bytes, headers: Mapping[str, str]) -> ChatCall:
        """The ChatCall of a POST /v1/messages/count_tokens body (counted, never sent)."""
        return parse_chat(to_count(body_object(raw)), headers)

    def answer(self, c: Completion) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if c.text:
            content.append({"type": "text", "text": c.text})
        for call in c.tool_calls:
            content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call.arguments)})
        reason, seq = _stop(c, c.finish_reason, bool(c.tool_calls), self.stops)
        return {
            "id": _new_id(),
            "type": "message",
            "role": "assistant",
            "model": c.model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": seq,
            "usage": _usage(c.usage),
        }

    def writer(self, model: str) -> Writer:
        return MessagesWriter(model, self.stops)

    def error_body(self, err: ApiError) -> dict[str, Any]:
        return _error_body(err)
