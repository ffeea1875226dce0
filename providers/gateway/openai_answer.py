"""OpenAI-format answers for the gateway: a Completion (or a ChatResponse) and its stream's events in, the
`chat.completion` JSON (every choice of `n`, logprobs, service tier), the `chat.completion.chunk` SSE lines and
the `x-modelroute-dropped-params` header out. A request that used the deprecated `functions` is answered in its
shape: the (first) call as the message's `function_call` and finish_reason "function_call"."""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from providers.execution import Executor, Run
    from providers.gateway.jsonbody import ApiError

DROPPED_HEADER = "x-modelroute-dropped-params"
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter"}


def new_id() -> str:
    return "chatcmpl-" + os.urandom(12).hex()


def _tool_calls(calls: list[Any]) -> list[dict[str, Any]]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def usage_json(usage: Any) -> dict[str, int]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def _function_call(call: Any) -> dict[str, str]:
    return {"name": call.name, "arguments": call.arguments}


def _choice_json(
    index: int, text: str, calls: list[Any], finish_reason: str | None, logprobs: Any, functions: bool = False
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls and functions:
        message["function_call"] = _function_call(calls[0])
    elif calls:
        message["tool_calls"] = _tool_calls(calls)
    finish = ("function_call" if functions else "tool_calls") if calls else _FINISH.get(finish_reason or "stop", "stop")
    return {"index": index, "message": message, "finish_reason": finish, "logprobs": logprobs}


def completion_json(c: Any, rid: str, created: int, functions: bool = False) -> dict[str, Any]:
    """The chat.completion JSON of a Completion (or a ChatResponse): every choice (`n`), logprobs, service tier;
    `functions`: in the deprecated functions shape."""
    response = getattr(c, "response", c)
    more = getattr(response, "choices", None) or []
    choices = [_choice_json(0, c.text, c.tool_calls, c.finish_reason, getattr(response, "logprobs", None), functions)]
    choices += [
        _choice_json(i, m.text, m.tool_calls, m.finish_reason, m.logprobs, functions) for i, m in enumerate(more, 1)
    ]
    out = {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": c.model,
        "choices": choices,
        "usage": usage_json(c.usage),
        "system_fingerprint": None,
    }
    tier = getattr(response, "service_tier", None)
    if tier is not None:
        out["service_tier"] = tier
    return out


def dropped_header(ex: Executor, run: Run, model: str) -> dict[str, str]:
    """The `x-modelroute-dropped-params` header for an answer from `model`: the request fields its provider kind
    had no counterpart for, comma-separated (no header when none was dropped)."""
    from providers.execution.prepare import dropped_params

    names = [_header_safe(n) for n in dropped_params(ex, run, model)]
    if len(names) > _HEADER_NAMES:
        names[_HEADER_NAMES:] = [f"... ({len(names) - _HEADER_NAMES} more)"]
    return {DROPPED_HEADER: ", ".join(names)} if names else {}


_HEADER_NAMES = 32  # field names a dropped-params header lists


def _header_safe(name: str) -> str:
    """A client-given field name as header text: printable ASCII (others `?`, commas too), at most 64 characters."""
    return "".join(ch if " " < ch <= "~" and ch != "," else "?" for ch in name[:64])


class ChunkWriter:
    """Builds the `data: {...}\\n\\n` lines of one streamed answer."""

    def __init__(self, model: str, include_usage: bool, functions: bool = False):
        self.id, self.created, self.model, self.include_usage = new_id(), int(time.time()), model, include_usage
        self.functions = functions  # the deprecated functions shape: the first call as `function_call`
        self._tool_index = 0
        self._tools = False

    def _line(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        obj = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    def delta(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return self._line([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])

    def start(self) -> bytes:
        return self.delta({"role": "assistant", "content": ""})

    def event(self, event: Any) -> bytes | None:
        """The chunk for one StreamEvent (None for events that have no chunk of their own)."""
        if event.kind == "delta":
            return self.delta({"content": event.text}) if event.text else None
        if event.kind == "tool_call" and event.tool_call is not None and self.functions:
            if self._tools:  # the functions shape has one call
                return None
            self._tools = True
            return self.delta({"function_call": _function_call(event.tool_call)})
        if event.kind == "tool_call" and event.tool_call is not None:
            call = _tool_calls([event.tool_call])[0]
            self._tools = True
            self._tool_index += 1
            return self.delta({"tool_calls": [{"index": self._tool_index - 1, **call}]})
        if event.kind == "done":
            calls = "function_call" if self.functions else "tool_calls"
            finish = calls if self._tools else _FINISH.get(event.finish_reason or "stop", "stop")
            return self.delta({}, finish)
        return None

    def usage(self, usage: Any) -> bytes:
        return self._line([], usage=usage_json(usage))

    @staticmethod
    def error(err: ApiError) -> bytes:
        return b"data: " + json.dumps(err.body()).encode() + b"\n\n"

    DONE = b"data: [DONE]\n\n"
