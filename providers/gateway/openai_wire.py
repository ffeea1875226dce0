"""The OpenAI wire format for the gateway: a chat-completions JSON body and the request headers in, a checked
ChatCall (messages, execution options, request attributes) out; Completions and stream events in, OpenAI
response JSON and `chat.completion.chunk` SSE lines out. Every client mistake raises ApiError (an OpenAI-style
4xx error body)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ACCEPTED = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "tools",
        "tool_choice",
        "stop",
        "user",
        "metadata",
        "n",
    }
)
# real OpenAI fields the gateway does not translate to every provider: refused rather than silently dropped
UNSUPPORTED = frozenset(
    {
        "top_p",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "response_format",
        "parallel_tool_calls",
        "functions",
        "function_call",
        "service_tier",
        "store",
        "modalities",
        "audio",
        "prediction",
        "reasoning_effort",
        "web_search_options",
        "verbosity",
        "prompt_cache_key",
        "safety_identifier",
    }
)
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
RESERVED_ATTRS = ("tokens", "key", "images", "spend.", "budget.")
AUTO_MODELS = ("auto",)
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter"}


class ApiError(Exception):
    """An OpenAI-style error: HTTP status plus {"error": {"message", "type", "code", "param"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


def bad(message: str, code: str = "invalid_value", param: str | None = None) -> ApiError:
    return ApiError(400, message, code=code, param=param)


@dataclass
class ChatCall:
    """A checked chat-completions request."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    include_usage: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def auto(self) -> bool:
        return self.model in AUTO_MODELS


def _attr_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _check_attr_name(name: str, where: str) -> str:
    if not name or any(name == r or (r.endswith(".") and name.startswith(r)) for r in RESERVED_ATTRS):
        raise bad(
            f"{where}: attribute `{name}` is set by the gateway and cannot be given by a request", "reserved_attribute"
        )
    return name


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise bad("`messages` must be a non-empty array of message objects", param="messages")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object", param=where)
        role = ROLES.get(m.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise bad(f"{where}.role must be one of {', '.join(ROLES)}", param=f"{where}.role")
        content = m.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    continue
                if kind == "image_url" and isinstance(part.get("image_url"), (dict, str)):
                    continue
                raise bad(f"{where}.content[{j}] must be a text or image_url part", param=f"{where}.content")
        elif content is not None and not isinstance(content, str):
            raise bad(f"{where}.content must be a string or an array of parts", param=f"{where}.content")
        calls = m.get("tool_calls")
        if calls is not None and not (
            isinstance(calls, list)
            and all(
                isinstance(c, dict)
                and isinstance(c.get("id"), str)
                and isinstance(c.get("function"), dict)
                and isinstance(c["function"].get("name"), str)
                for c in calls
            )
        ):
            raise bad(f"{where}.tool_calls must be an array of function calls", param=f"{where}.tool_calls")
        if role == "tool" and not isinstance(m.get("tool_call_id"), str):
            raise bad(f"{where}: a tool message needs a tool_call_id", param=f"{where}.tool_call_id")
        out.append({**m, "role": role})
    return out


def parse_chat(body: Any, headers: Mapping[str, str]) -> ChatCall:
    """Check a chat-completions body (and the x-route-* headers); raises ApiError (400) on any mistake."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", "invalid_json")
    unsupported = sorted(set(body) & UNSUPPORTED)
    if unsupported:
        raise bad(
            f"unsupported field `{unsupported[0]}`: the gateway does not translate it to every provider",
            "unsupported_field",
            unsupported[0],
        )
    unknown = sorted(set(body) - ACCEPTED)
    if unknown:
        raise bad(f"unknown field `{unknown[0]}`", "unknown_field", unknown[0])
    model = body.get("model", "auto")
    if not isinstance(model, str) or not model:
        raise bad('`model` must be a string: "auto" or a catalog model name', param="model")
    call = ChatCall(model, _messages(body.get("messages")))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("`stream` must be a boolean", param="stream")
    call.stream = stream
    so = body.get("stream_options")
    if so is not None:
        if not isinstance(so, dict) or set(so) - {"include_usage"}:
            raise bad("`stream_options` may only hold include_usage", param="stream_options")
        call.include_usage = bool(so.get("include_usage"))
    if body.get("n", 1) != 1:
        raise bad("`n` must be 1", param="n")
    opts = call.options
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise bad("`max_tokens` must be a positive integer", param="max_tokens")
        opts["max_tokens"] = max_tokens
    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
            raise bad("`temperature` must be a number from 0 to 2", param="temperature")
        opts["temperature"] = float(temperature)
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(
            isinstance(t, dict)
            and t.get("type", "function") == "function"
            and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str)
            for t in tools
        ):
            raise bad('`tools` must be an array of {"type": "function", "function": {"name": ...}}', param="tools")
        if tools:
            opts["tools"] = tools
    choice = body.get("tool_choice")
    if choice is not None:
        if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            choice = choice["function"].get("name")
        if not isinstance(choice, str):
            raise bad("`tool_choice` must be auto, none, required or a function", param="tool_choice")
        opts["tool_choice"] = choice
    stop = body.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise bad("`stop` must be a string or an array of strings", param="stop")
        opts["stop"] = stop
    attrs = call.attrs
    user = body.get("user")
    if user is not None:
        if not isinstance(user, str):
            raise bad("`user` must be a string", param="user")
        attrs["user"] = user
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise bad("`metadata` must be an object", param="metadata")
        for name, value in metadata.items():
            attrs[_check_attr_name(str(name), "metadata")] = value
        attrs["metadata"] = dict(metadata)
    for name, value in headers.items():
        if name.lower().startswith("x-route-"):
            attr = name.lower()[8:].replace("-", "_")
            attrs[_check_attr_name(attr, name)] = _attr_value(value)
    return call


# ---- responses -------------------------------------------------------------------------------------------
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


def completion_json(c: Any, rid: str, created: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": c.text if c.text or not c.tool_calls else None}
    if c.tool_calls:
        message["tool_calls"] = _tool_calls(c.tool_calls)
    finish = "tool_calls" if c.tool_calls else _FINISH.get(c.finish_reason or "stop", "stop")
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": c.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": usage_json(c.usage),
        "system_fingerprint": None,
    }


class ChunkWriter:
    """Builds the `data: {...}\\n\\n` lines of one streamed answer."""

    def __init__(self, model: str, include_usage: bool):
        self.id, self.created, self.model, self.include_usage = new_id(), int(time.time()), model, include_usage
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
        if event.kind == "tool_call" and event.tool_call is not None:
            call = _tool_calls([event.tool_call])[0]
            self._tools = True
            self._tool_index += 1
            return self.delta({"tool_calls": [{"index": self._tool_index - 1, **call}]})
        if event.kind == "done":
            finish = "tool_calls" if self._tools else _FINISH.get(event.finish_reason or "stop", "stop")
            return self.delta({}, finish)
        return None

    def usage(self, usage: Any) -> bytes:
        return self._line([], usage=usage_json(usage))

    @staticmethod
    def error(err: ApiError) -> bytes:
        return b"data: " + json.dumps(err.body()).encode() + b"\n\n"

    DONE = b"data: [DONE]\n\n"
