"""The stateless part of OpenAI's Responses API for the gateway (POST /v1/responses): a Responses request body in,
the equivalent chat-completions body (checked by parse_chat into the ChatCall every endpoint executes) out; a
Completion or its stream events in, a `response` object and the Responses streaming events (each with its
sequence_number, `response.created` first and `response.completed` last) out. Nothing is stored: `store: true`,
`previous_response_id`, `conversation` and stored prompts are refused with a 400 that says so. Reading the request
into the chat body is providers/gateway/responses_request.py."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from providers.gateway.closing import cost_fields
from providers.gateway.openai_wire import ApiError, parse_chat
from providers.gateway.responses_request import _renamed, to_chat
from providers.gateway.wire import body_object, sse

if TYPE_CHECKING:
    from providers.execution import Completion
    from providers.gateway.openai_wire import ChatCall
    from providers.gateway.wire import Writer
    from providers.types import StreamEvent, ToolCall

__all__ = ["ResponsesWire"]


def _id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def _usage(c: Completion) -> dict[str, Any]:
    u = c.usage
    return {
        "input_tokens": u.input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.input_tokens + u.output_tokens,
    }


def _message(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": [part]}


def _call(item_id: str, call: ToolCall, status: str = "completed", arguments: str | None = None) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments if arguments is None else arguments,
        "status": status,
    }


class ResponsesWire:
    """POST /v1/responses: the stateless Responses API over the chat pipeline."""

    endpoint = "responses"

    def __init__(self) -> None:
        self.echo: dict[str, Any] = {}

    def parse(self, raw: bytes, headers: Mapping[str, str]) -> ChatCall:
        req = body_object(raw)
        body = to_chat(req)
        try:
            call = parse_chat(body, headers)
        except ApiError as err:
            raise _renamed(err) from None
        fmt = req["text"].get("format") if isinstance(req.get("text"), dict) else None
        reasoning: dict[str, Any] = req["reasoning"] if isinstance(req.get("reasoning"), dict) else {}
        self.echo = {  # what the response object repeats of the request
            "instructions": req.get("instructions"),
            "max_output_tokens": req.get("max_output_tokens"),
            "metadata": req.get("metadata") or {},
            "parallel_tool_calls": req.get("parallel_tool_calls", True),
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
            "temperature": req.get("temperature", 1.0),
            "text": {"format": fmt or {"type": "text"}},
            "tool_choice": req.get("tool_choice", "auto"),
            "tools": req.get("tools") or [],
            "top_p": req.get("top_p", 1.0),
            "user": req.get("user"),
        }
        return call

    def response(
        self, rid: str, model: str, output: list[dict[str, Any]], c: Completion | None, status: str
    ) -> dict[str, Any]:
        """The `response` object: `status` completed, incomplete or in_progress."""
        finish = c.finish_reason if c is not None else None
        incomplete = None
        if status == "incomplete":
            incomplete = {"reason": "content_filter" if finish == "content_filter" else "max_output_tokens"}
        return {
            "id": rid,
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "model": model,
            "output": output,
            "error": None,
            "incomplete_details": incomplete,
            "previous_response_id": None,
            "store": False,
            "truncation": "disabled",
            "usage": _usage(c) if c is not None else None,
            **self.echo,
        }

    def answer(self, c: Completion) -> dict[str, Any]:
        output = [_message(_id("msg_"), c.text)] if c.text or not c.tool_calls else []
        output += [_call(_id("fc_"), call) for call in c.tool_calls]
        return self.response(_id("resp_"), c.model, output, c, status_of(c.finish_reason, bool(c.tool_calls)))

    def writer(self, model: str) -> Writer:
        return ResponsesWriter(self, model)

    def error_body(self, err: ApiError) -> dict[str, Any]:
        return err.body()


def status_of(finish: str | None, tools: bool) -> str:
    """A response's status for the answer's finish reason: incomplete when cut short (length, content filter)."""
    return "incomplete" if not tools and finish in ("length", "content_filter") else "completed"


class ResponsesWriter:
    """The Responses streaming events of one answer, numbered from 0."""

    def __init__(self, wire: ResponsesWire, model: str) -> None:
        self.wire, self.model, self.id = wire, model, _id("resp_")
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.text: list[str] | None = None  # the open message item's text so far
        self.finish: str | None = None
        self.tools = False

    def _ev(self, kind: str, **data: Any) -> bytes:
        frame = sse(kind, {"type": kind, "sequence_number": self.seq, **data})
        self.seq += 1
        return frame

    def _snapshot(self, status: str, c: Completion | None = None) -> dict[str, Any]:
        return self.wire.response(self.id, self.model, list(self.output), c, status)

    def start(self) -> bytes:
        snapshot = self._snapshot("in_progress")
        return self._ev("response.created", response=snapshot) + self._ev("response.in_progress", response=snapshot)

    def _open(self) -> bytes:
        item = _message(_id("msg_"), "", "in_progress")
        item["content"] = []
        self.output.append(item)
        self.text = []
        index, item_id = len(self.output) - 1, item["id"]
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        out = self._ev("response.output_item.added", output_index=index, item=dict(item))
        return out + self._ev(
            "response.content_part.added", item_id=item_id, output_index=index, content_index=0, part=part
        )

    def _close(self) -> bytes:
        if self.text is None:
            return b""
        index = len(self.output) - 1
        item_id, text = self.output[index]["id"], "".join(self.text)
        self.text = None
        done = _message(item_id, text)
        self.output[index] = done
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        out = self._ev("response.output_text.done", **where, text=text, logprobs=[])
        out += self._ev("response.content_part.done", **where, part=done["content"][0])
        return out + self._ev("response.output_item.done", output_index=index, item=done)

    def event(self, event: StreamEvent) -> bytes | None:
        if event.kind == "delta" and event.text:
            out = self._open() if self.text is None else b""
            assert self.text is not None
            self.text.append(event.text)
            index = len(self.output) - 1
            where = {"item_id": self.output[index]["id"], "output_index": index, "content_index": 0}
            return out + self._ev("response.output_text.delta", **where, delta=event.text, logprobs=[])
        if event.kind == "tool_call" and event.tool_call is not None:
            self.tools = True
            out = self._close()
            call, item_id, index = event.tool_call, _id("fc_"), len(self.output)
            self.output.append(_call(item_id, call))
            added = _call(item_id, call, "in_progress", "")
            out += self._ev("response.output_item.added", output_index=index, item=added)
            where = {"item_id": item_id, "output_index": index}
            out += self._ev("response.function_call_arguments.delta", **where, delta=call.arguments)
            out += self._ev("response.function_call_arguments.done", **where, name=call.name, arguments=call.arguments)
            return out + self._ev("response.output_item.done", output_index=index, item=self.output[index])
        if event.kind == "done":
            self.finish = event.finish_reason
        return None

    def end(self, done: Completion | None) -> bytes:
        out = self._close()
        if not self.output:  # an empty answer is still one (empty) message
            out += self._open() + self._close()
        status = status_of(self.finish, self.tools)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        snapshot = self._snapshot(status, done)
        if isinstance(snapshot.get("usage"), dict):  # the cost of the answer: `cost`, `cost_estimated`
            snapshot["usage"].update(cost_fields(done))
        return out + self._ev(kind, response=snapshot)

    def error(self, err: ApiError) -> bytes:
        return self._ev("error", code=err.code, message=err.message, param=err.param)
