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
from engine.runtime.reserved import RESERVED_ATTRS, reserved

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
# The attributes a request may not set, each with every dotted name under it (`budget` covers `budget.left` and a
# nested `{"budget": {"left": 1}}`): the engine's one list, engine/runtime/reserved.py.
_RESERVED_LIST = ", ".join(RESERVED_ATTRS)
#: How deeply a request body may nest (the body object is level 1): far beyond any real tool schema, shallow
#: enough that no recursive reader (pydantic, json.dumps upstream, explain's trace) runs out of stack.
MAX_DEPTH = 64
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


# ---- reading JSON that can be sent on ---------------------------------------------------------------------
class _NotFinite(Exception):
    """NaN, Infinity, or a number too large for a double (`1e999`), met while decoding (not a ValueError, so the
    decoder's own errors stay apart)."""


def _no_constant(name: str) -> Any:
    raise _NotFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotFinite(text)
    return value


# Python's json reads NaN / Infinity and turns 1e999 into inf; none of them can be written as JSON again
_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_no_constant)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # how a surrogate is written in JSON text
_SURROGATE = re.compile("[\ud800-\udfff]")


def _short(text: str, limit: int = 40) -> str:
    """A client-given name for an error message: at most `limit` characters, unprintable ones escaped."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return shown if shown.isprintable() else repr(shown)[1:-1]


def _not_finite(err: _NotFinite) -> ApiError:
    text = _short(str(err))
    if text.lstrip("-") in ("NaN", "Infinity"):
        return bad(f"malformed JSON body: `{text}` is not JSON (no NaN or Infinity)", "invalid_json")
    return bad(f"number `{text}` is out of range (larger than a double)", "invalid_value")


def _depth_over(value: Any, limit: int) -> bool:
    """Whether the container `value` nests more than `limit` levels (`[]` is 1, `[[]]` 2): level by level, no
    recursion, each value looked at once."""
    level, depth = [value], 0
    while level:
        if depth >= limit:
            return True
        depth += 1
        below: list[Any] = []
        add = below.append
        for node in level:
            for child in node.values() if type(node) is dict else node:
                kind = type(child)
                if kind is dict or kind is list:
                    add(child)
        level = below
    return False


def _check_depth(body: dict[str, Any]) -> None:
    for name, value in body.items():
        if isinstance(value, (dict, list)) and _depth_over(value, MAX_DEPTH - 1):
            raise bad(f"`{_short(name)}` is nested too deeply (over {MAX_DEPTH} levels)", param=name[:64])


def _unsendable(value: Any, where: str) -> tuple[str, str] | None:
    """The first value under `value` that JSON sent upstream cannot carry, as (what, path): a string or key with
    a lone surrogate, a NaN or infinite float, a key that is not a string. Iterative, any depth."""
    stack = [(value, where)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                return "a lone surrogate (\\ud800-\\udfff)", path
        elif isinstance(node, float):
            if not math.isfinite(node):
                return "NaN or Infinity", path
        elif isinstance(node, dict):
            for key, child in node.items():
                sub = f"{path}.{key}" if path else str(key)
                if not isinstance(key, str):
                    return "a key that is not a string", sub
                if _SURROGATE.search(key):
                    return "a lone surrogate (\\ud800-\\udfff)", sub
                stack.append((child, sub))
        elif isinstance(node, (list, tuple)):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(node))
    return None


def _check_sendable(body: Any) -> None:
    found = _unsendable(body, "")
    if found is not None:
        what, path = found
        raise bad(f"`{_short(path, 60)}` holds {what}: JSON sent upstream cannot carry it", param=path[:64] or None)


def read_json(raw: bytes) -> Any:
    """A request body's bytes as JSON that can be sent on as it is; raises ApiError (400) for bytes that are not
    UTF-8 JSON, for NaN / Infinity / numbers beyond a double, for lone surrogates (escaped `\\ud800`) in any
    string, and for nesting deeper than MAX_DEPTH. Cheap on ordinary bodies: the values are searched for
    surrogates only when the text has a surrogate escape (`\\udXXX`; a raw encoded surrogate is not UTF-8), and
    the depth is walked (a step per value, not per character) only for a text over 1 KiB or with more than
    MAX_DEPTH brackets."""
    try:
        text = raw.decode(json.detect_encoding(raw))  # strict: a UTF-8-encoded surrogate is not UTF-8
    except UnicodeDecodeError as exc:
        raise bad(f"malformed JSON body: not UTF-8 text (byte {exc.start})", "invalid_json") from None
    try:
        body = _DECODER.decode(text)
    except _NotFinite as exc:
        raise _not_finite(exc) from None
    except RecursionError:
        raise bad("malformed JSON body: nested too deeply", "invalid_json") from None
    except json.JSONDecodeError as exc:
        raise bad(f"malformed JSON body: {_short(str(exc), 120)}", "invalid_json") from None
    except ValueError:  # Python's limit on the digits of an int (4300 by default)
        raise bad("malformed JSON body: a number has too many digits", "invalid_json") from None
    if "\\" in text and _SURROGATE_ESCAPE.search(text):
        _check_sendable(body)
    if isinstance(body, dict) and (len(text) > 1024 or text.count("[") + text.count("{") > MAX_DEPTH):
        _check_depth(body)
    return body


def _attr_value(raw: str) -> Any:
    """An `x-route-*` header's value: JSON when it is a JSON value a body could carry, else the raw string."""
    try:
        value = _DECODER.decode(raw)
    except (ValueError, RecursionError, _NotFinite):  # not JSON, or nested too deeply to be a value
        return raw
    if ("\\" in raw and _unsendable(value, "") is not None) or (
        isinstance(value, (dict, list)) and _depth_over(value, MAX_DEPTH)
    ):
        return raw
    return value


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
    if reserved(name):
        raise bad(
            f"{where}: `{_short(name)}` is a reserved attribute name ({_RESERVED_LIST} and names under them)",
            "reserved_attribute",
        )
    return name


#: The largest `max_tokens` accepted: far above any model's output limit, small enough to stay an exact float.
MAX_TOKENS_LIMIT = 2**31 - 1

_FIELD_MESSAGES = {
    "model": '`model` must be a string: "auto" or a catalog model name',
    "messages": "`messages` must be a non-empty array of message objects",
    "stream": "`stream` must be a boolean",
    "stream_options": "`stream_options` may only hold include_usage, a boolean",
    "n": "`n` must be 1",
    "max_tokens": "`max_tokens` must be a positive integer (at most 2147483647)",
    "max_completion_tokens": "`max_completion_tokens` must be a positive integer (at most 2147483647)",
    "temperature": "`temperature` must be a number from 0 to 2",
    "tools": '`tools` must be an array of {"type": "function", "function": {"name": ...}}',
    "tool_choice": '`tool_choice` must be auto, none, required or {"type": "function", "function": {"name": ...}}',
    "stop": "`stop` must be a string or an array of strings",
    "user": "`user` must be a string",
    "metadata": "`metadata` must be an object",
}
# the parts of a tool's `function` the gateway checks beyond its name, and what each must be
_FUNCTION_FIELDS = {"description": "a string", "parameters": "a JSON Schema object", "strict": "a boolean"}


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool | None = None


class _FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    name: Annotated[str, Field(min_length=1)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class _Tool(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["function"] = "function"
    function: _FunctionSpec


class _ChoiceName(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    name: Annotated[str, Field(min_length=1)]


class _NamedChoice(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["function"] = "function"
    function: _ChoiceName


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
    tool_choice: Literal["auto", "none", "required"] | _NamedChoice | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("n", mode="after")
    @classmethod
    def _one_choice(cls, n: Any) -> Any:
        if type(n) is not int or n != 1:
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
        param = _param(first["loc"]) if first["loc"] else field_name
        message = _FIELD_MESSAGES.get(field_name, "`" + field_name + "` is not valid")
        if field_name == "tools" and first["loc"][-1] in _FUNCTION_FIELDS:
            message = f"`{param}` must be {_FUNCTION_FIELDS[str(first['loc'][-1])]}"
        raise bad(message, param=param) from None


def _check_messages(messages: list[Any]) -> None:
    """What the message reader lets by but the wire must not carry: a `name` or `tool_call_id` that is not a
    string, a tool call whose `type` is not "function" (the reader has checked everything else)."""
    for i, m in enumerate(messages):
        for name in ("name", "tool_call_id"):
            value = m.get(name)
            if value is not None and not isinstance(value, str):
                raise bad(f"`messages[{i}].{name}` must be a string", param=f"messages[{i}].{name}")
        for j, c in enumerate(m.get("tool_calls") or ()):
            if c.get("type", "function") != "function":
                where = f"messages[{i}].tool_calls[{j}].type"
                raise bad(f'`{where}` must be "function"', param=where)


def _tool_choice(checked: ChatBody) -> str | None:
    choice = checked.tool_choice
    if choice is None:
        return None
    names = {t.function.name for t in checked.tools or ()}
    if isinstance(choice, str):
        if choice == "required" and not names:
            raise bad("`tool_choice` is required but `tools` is empty", param="tool_choice")
        return choice
    name = choice.function.name
    if name not in names:
        raise bad(f"`tool_choice` names function `{_short(name)}`, which is not in `tools`", param="tool_choice")
    return name


def parse_chat(body: Any, headers: Mapping[str, str]) -> ChatCall:
    """Check a chat-completions body (and the x-route-* and x-modelroute-deadline headers); raises ApiError (400)
    on any mistake. `body` is the request's bytes (read by `read_json`) or its already parsed JSON (then walked
    whole for what JSON sent upstream cannot carry): either way nothing that cannot be sent on gets through."""
    if isinstance(body, (bytes, bytearray)):
        body = read_json(bytes(body))
    elif isinstance(body, dict):
        _check_sendable(body)
        _check_depth(body)
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", "invalid_json")
    unsupported = sorted(set(body) & UNSUPPORTED)
    if unsupported:
        raise bad(
            f"unsupported field `{unsupported[0]}`: the gateway does not translate it to every provider",
            "unsupported_field",
            unsupported[0],
        )
    unknown = sorted(map(str, set(body) - ACCEPTED))
    if unknown:
        raise bad(f"unknown field `{_short(unknown[0])}`", "unknown_field", unknown[0][:64])
    checked = _read_body(body)
    try:
        read = read_messages(checked.messages)
    except MessageError as err:
        raise bad(str(err), param=err.param) from None
    _check_messages(checked.messages)
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
    choice = _tool_choice(checked)
    if choice is not None:
        call.options["tool_choice"] = choice
    if checked.stop is not None:
        call.options["stop"] = [checked.stop] if isinstance(checked.stop, str) else checked.stop
    _request_attrs(call.attrs, call.options, checked, headers)
    return call


def _request_attrs(
    attrs: dict[str, Any], options: dict[str, Any], checked: ChatBody, headers: Mapping[str, str]
) -> None:
    """The request attributes: `user`, `metadata` (each key also an attribute) and the x-route-* headers; and the
    `x-modelroute-deadline` header, as `options["deadline"]` in seconds. A reserved name (RESERVED_ATTRS) is
    refused wherever it comes from."""
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
            attrs[_check_attr_name(attr, _short(name))] = _attr_value(value)
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
