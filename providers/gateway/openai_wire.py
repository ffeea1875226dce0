"""The OpenAI wire format for the gateway: a chat-completions JSON body and the request headers in, a checked
ChatCall (messages, execution options, request attributes) out; Completions and stream events in, OpenAI
response JSON and `chat.completion.chunk` SSE lines out. Every client mistake raises ApiError (an OpenAI-style
4xx error body). Every chat-completions field is accepted: the fields beyond ACCEPTED (and unknown ones) travel
as the call's `options["params"]`, which each provider client sends as is, translates or drops
(providers/clients/params.py; `dropped_header` names the dropped ones for the answering model). Reading the body's
bytes is providers/gateway/jsonbody.py, the type checks of its fields providers/gateway/chat_body.py, the answers
providers/gateway/openai_answer.py (jsonbody's and openai_answer's public names re-exported here)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.runtime.constraints import FORMAT_ATTR
from engine.runtime.messages import MessageError, legacy_functions, read_messages
from engine.runtime.reserved import RESERVED_ATTRS, reserved
from providers.clients.params import CORE_FIELDS, OPENAI_FIELDS
from providers.gateway.chat_body import (
    _FIELD_MESSAGES,
    ChatBody,
    _ChoiceName,
    _FunctionCallName,
    _NamedChoice,
    _read_body,
    _Tool,
)
from providers.gateway.jsonbody import (
    _DECODER,
    MAX_DEPTH,
    _check_depth,
    _check_sendable,
    _depth_over,
    _NotFinite,
    _short,
    _unsendable,
)
from providers.gateway.jsonbody import ApiError as ApiError
from providers.gateway.jsonbody import bad as bad
from providers.gateway.jsonbody import read_json as read_json
from providers.gateway.openai_answer import DROPPED_HEADER as DROPPED_HEADER
from providers.gateway.openai_answer import ChunkWriter as ChunkWriter
from providers.gateway.openai_answer import completion_json as completion_json
from providers.gateway.openai_answer import dropped_header as dropped_header
from providers.gateway.openai_answer import new_id as new_id
from providers.gateway.openai_answer import usage_json as usage_json
from providers.types import ResponseFormat

#: The fields the gateway reads into the call itself (routing, the hold, what every provider kind is sent): the core
#: fields (but the deprecated functions flow, rewritten to tools) and the user, metadata and n it routes or fans out by.
ACCEPTED = (frozenset(CORE_FIELDS) - {"functions", "function_call"}) | {"user", "metadata", "n"}
#: Every chat-completions field OpenAI defines. One outside it (a newer field, a typo) is not refused either: like
#: the known ones beyond ACCEPTED it goes to OpenAI-kind providers as sent and, where a provider kind has no
#: counterpart, is dropped and named in the x-modelroute-dropped-params header (providers/clients/params.py).
KNOWN_FIELDS = frozenset(CORE_FIELDS + OPENAI_FIELDS)
#: The known fields beyond ACCEPTED: passed on as the request's params, or (functions, function_call) rewritten to
#: tools. (Refused as "unsupported" before the gateway translated them; the name stays for its users.)
UNSUPPORTED = KNOWN_FIELDS - ACCEPTED
# The attributes a request may not set, each with every dotted name under it (`budget` covers `budget.left` and a
# nested `{"budget": {"left": 1}}`): the engine's one list, engine/runtime/reserved.py.
_RESERVED_LIST = ", ".join(RESERVED_ATTRS)
DEADLINE_HEADER = "x-modelroute-deadline"
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s)?", re.ASCII)
AUTO_MODELS = ("auto",)


@dataclass
class ChatCall:
    """A checked chat-completions request."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    include_usage: bool = False
    functions: bool = False  # the request used the deprecated `functions`: answer with `function_call`
    options: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def auto(self) -> bool:
        return self.model in AUTO_MODELS


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


def _functions(checked: ChatBody, body: dict[str, Any]) -> None:
    """The deprecated `functions` / `function_call` as `tools` / `tool_choice` (in `checked` and `body`)."""
    if checked.functions is None and checked.function_call is None:
        return
    if checked.tools is not None or checked.tool_choice is not None:
        param = "functions" if checked.functions is not None else "function_call"
        raise bad(f"`{param}` (deprecated) and `tools` / `tool_choice` cannot both be sent; use tools", param=param)
    if checked.functions is not None:
        checked.tools = [_Tool(function=f) for f in checked.functions]
        body["tools"] = [{"type": "function", "function": f} for f in body["functions"]]
    call = checked.function_call
    if isinstance(call, _FunctionCallName):
        checked.tool_choice = _NamedChoice(function=_ChoiceName(name=call.name))
    elif call is not None:
        checked.tool_choice = call


def _response_format(checked: ChatBody) -> ResponseFormat | None:
    fmt = checked.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ResponseFormat(type="json")
    spec = fmt.json_schema
    if spec is None:
        raise bad(
            "`response_format.json_schema` is required with type json_schema (a name and a schema)",
            param="response_format.json_schema",
        )
    return ResponseFormat(type="json_schema", json_schema=spec.schema_, name=spec.name, strict=bool(spec.strict))


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
    checked = _read_body(body)
    _functions(checked, body)
    if checked.thinking is not None and (checked.thinking.type == "enabled") != (
        checked.thinking.budget_tokens is not None
    ):
        raise bad(_FIELD_MESSAGES["thinking"], param="thinking")
    try:
        given = legacy_functions(checked.messages)
        read = read_messages(given)
    except MessageError as err:
        raise bad(str(err), param=err.param) from None
    _check_messages(given)
    messages = [{**m, "role": r.role} for m, r in zip(given, read, strict=True)]
    call = ChatCall(checked.model, messages, stream=checked.stream, functions=checked.functions is not None)
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
    _params(call, checked, body)
    return call


def _params(call: ChatCall, checked: ChatBody, body: dict[str, Any]) -> None:
    """Every field beyond the core ones, as sent (`options["params"]`: ChatRequest.params; a null is no field),
    `n` (it sizes the budget hold) and the response format, which is also the request attribute
    `response_format` (json_schema or json) that keeps models without it out of the plan."""
    core = set(CORE_FIELDS)
    params = {name: value for name, value in body.items() if name not in core and value is not None}
    if params:
        call.options["params"] = params
    if checked.n > 1:
        if call.stream:
            raise bad("`n` above 1 cannot be streamed: send stream false, or n 1", param="n")
        call.options["n"] = checked.n
    fmt = _response_format(checked)
    if fmt is not None:
        call.options["response_format"] = fmt
        call.attrs[FORMAT_ATTR] = fmt.type


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
