"""The OpenAI wire format for the gateway: a chat-completions JSON body and the request headers in, a checked
ChatCall (messages, execution options, request attributes) out; Completions and stream events in, OpenAI
response JSON and `chat.completion.chunk` SSE lines out. Every client mistake raises ApiError (an OpenAI-style
4xx error body)."""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from engine.runtime.messages import MessageError, read_messages

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
RESERVED_ATTRS = ("tokens", "key", "images", "spend.", "budget.")
DEADLINE_HEADER = "x-modelroute-deadline"
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s)?", re.ASCII)
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
    except (ValueError, RecursionError):  # not JSON, or nested too deeply to be a value: the raw string
        return raw


def parse_deadline(raw: str) -> float:
    """The `x-modelroute-deadline` header in seconds: `800ms`, `30s` or bare seconds (`2.5`), more than 0."""
    match = _DURATION.fullmatch(raw.strip())
    seconds = float(match[1]) / (1000 if match[2] == "ms" else 1) if match else 0.0
    if not 0 < seconds < math.inf:
        raise bad(
            f"header `{DEADLINE_HEADER}` must be a positive duration: milliseconds (`800ms`), seconds (`30s`) "
            f"or bare seconds (`2.5`); got {raw[:40]!r}",
            "invalid_header",
            DEADLINE_HEADER,
        )
    return seconds


def _check_attr_name(name: str, where: str) -> str:
    if not name or any(name == r or (r.endswith(".") and name.startswith(r)) for r in RESERVED_ATTRS):
        raise bad(
            f"{where}: attribute `{name}` is set by the gateway and cannot be given by a request", "reserved_attribute"
        )
    return name


#: The largest `max_tokens` accepted: far above any model's output limit, small enough to stay an exact float.
MAX_TOKENS_LIMIT = 2**31 - 1

_FIELD_MESSAGES = {
    "model": '`model` must be a string: "auto" or a catalog model name',
    "messages": "`messages` must be a non-empty array of message objects",
    "stream": "`stream` must be a boolean",
    "stream_options": "`stream_options` may only hold include_usage",
    "n": "`n` must be 1",
    "max_tokens": "`max_tokens` must be a positive integer (at most 2147483647)",
    "max_completion_tokens": "`max_completion_tokens` must be a positive integer (at most 2147483647)",
    "temperature": "`temperature` must be a number from 0 to 2",
    "tools": '`tools` must be an array of {"type": "function", "function": {"name": ...}}',
    "tool_choice": "`tool_choice` must be auto, none, required or a function",
    "stop": "`stop` must be a string or an array of strings",
    "user": "`user` must be a string",
    "metadata": "`metadata` must be an object",
}


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: Any = None


class _FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    name: Annotated[str, Field(min_length=1)]


class _Tool(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["function"] = "function"
    function: _FunctionSpec


class _NamedChoice(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    function: _FunctionSpec


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("not a number")
    return value


class ChatBody(BaseModel):
    """The accepted fields of a chat-completions body, checked by type; unknown fields are refused earlier."""

    model_config = ConfigDict(strict=True)

    model: Annotated[str, Field(min_length=1)] = "auto"
    messages: Annotated[list[Any], Field(min_length=1)]
    stream: bool = False
    stream_options: _StreamOptions | None = None
    n: Any = 1
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    temperature: Annotated[float, BeforeValidator(_number), Field(ge=0, le=2, strict=False)] | None = None
    tools: list[_Tool] | None = None
    tool_choice: str | _NamedChoice | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("n", mode="after")
    @classmethod
    def _one_choice(cls, n: Any) -> Any:
        if n != 1:
            raise ValueError("n must be 1")
        return n


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _param(loc: tuple[int | str, ...]) -> str:
    """OpenAI's `param` for a pydantic error location: the field, then list indexes as `[i]`."""
    out = str(loc[0])
    for step in loc[1:]:
        if isinstance(step, int):
            out += f"[{step}]"
        elif step.isidentifier() and step.islower() and step not in _TYPE_TAGS:
            out += f".{step}"  # a nested field; union member tags (`str`, `_NamedChoice`, `list[str]`) are skipped
    return out


def _read_body(body: dict[str, Any]) -> ChatBody:
    try:
        return ChatBody.model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        field_name = str(first["loc"][0]) if first["loc"] else "messages"
        message = _FIELD_MESSAGES.get(field_name, first["msg"])
        raise bad(message, param=_param(first["loc"]) if first["loc"] else field_name) from None


def parse_chat(body: Any, headers: Mapping[str, str]) -> ChatCall:
    """Check a chat-completions body (and the x-route-* and x-modelroute-deadline headers); raises ApiError (400)
    on any mistake."""
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
    checked = _read_body(body)
    try:
        read = read_messages(checked.messages)
    except MessageError as err:
        raise bad(str(err), param=err.param) from None
    messages = [{**m, "role": r.role} for m, r in zip(checked.messages, read, strict=True)]
    call = ChatCall(checked.model, messages, stream=checked.stream)
    if checked.stream_options is not None:
        call.include_usage = bool(checked.stream_options.include_usage)
    max_tokens = checked.max_completion_tokens if "max_completion_tokens" in body else checked.max_tokens
    if max_tokens is not None:
        call.options["max_tokens"] = max_tokens
    if checked.temperature is not None:
        call.options["temperature"] = float(checked.temperature)
    if body.get("tools"):
        call.options["tools"] = body["tools"]
    choice = checked.tool_choice
    if choice is not None:
        call.options["tool_choice"] = choice if isinstance(choice, str) else choice.function.name
    if checked.stop is not None:
        call.options["stop"] = [checked.stop] if isinstance(checked.stop, str) else checked.stop
    _request_attrs(call.attrs, call.options, checked, headers)
    return call


def _request_attrs(
    attrs: dict[str, Any], options: dict[str, Any], checked: ChatBody, headers: Mapping[str, str]
) -> None:
    """The request attributes: `user`, `metadata` (each key also an attribute) and the x-route-* headers; and the
    `x-modelroute-deadline` header, as `options["deadline"]` in seconds."""
    if checked.user is not None:
        attrs["user"] = checked.user
    if checked.metadata is not None:
        for name, value in checked.metadata.items():
            attrs[_check_attr_name(str(name), "metadata")] = value
        attrs["metadata"] = dict(checked.metadata)
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("x-route-"):
            attr = lower[8:].replace("-", "_")
            attrs[_check_attr_name(attr, name)] = _attr_value(value)
        elif lower == DEADLINE_HEADER:
            options["deadline"] = parse_deadline(value)


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
