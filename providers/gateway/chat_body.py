"""The chat-completions body schema for the gateway: a chat-completions JSON object in, a ChatBody whose known fields
are checked by type (pydantic, strict) out, or ApiError 400 with OpenAI's `param` and a message naming the field.
providers/gateway/openai_wire.py reads the checked body into the ChatCall."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from providers.clients.params import REASONING_EFFORTS
from providers.gateway.jsonbody import bad

#: The largest `n` (OpenAI's own limit).
MAX_N = 128

#: The largest `max_tokens` accepted: far above any model's output limit, small enough to stay an exact float.
MAX_TOKENS_LIMIT = 2**31 - 1

_FIELD_MESSAGES = {
    "model": '`model` must be a string: "auto" or a catalog model name',
    "messages": "`messages` must be a non-empty array of message objects",
    "stream": "`stream` must be a boolean",
    "stream_options": "`stream_options` may only hold include_usage and include_obfuscation, booleans",
    "n": f"`n` must be an integer from 1 to {MAX_N}",
    "max_tokens": "`max_tokens` must be a positive integer (at most 2147483647)",
    "max_completion_tokens": "`max_completion_tokens` must be a positive integer (at most 2147483647)",
    "temperature": "`temperature` must be a number from 0 to 2",
    "tools": '`tools` must be an array of {"type": "function", "function": {"name": ...}}',
    "tool_choice": '`tool_choice` must be auto, none, required or {"type": "function", "function": {"name": ...}}',
    "stop": "`stop` must be a string or an array of strings",
    "user": "`user` must be a string",
    "metadata": "`metadata` must be an object",
    "top_p": "`top_p` must be a number from 0 to 1",
    "seed": "`seed` must be an integer",
    "frequency_penalty": "`frequency_penalty` must be a number from -2 to 2",
    "presence_penalty": "`presence_penalty` must be a number from -2 to 2",
    "logprobs": "`logprobs` must be a boolean",
    "top_logprobs": "`top_logprobs` must be an integer from 0 to 20",
    "logit_bias": "`logit_bias` must be an object of token ids and numbers from -100 to 100",
    "response_format": '`response_format` must be {"type": "text"}, {"type": "json_object"} or '
    '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}',
    "reasoning_effort": f"`reasoning_effort` must be one of {', '.join(REASONING_EFFORTS)}",
    "top_k": "`top_k` must be a non-negative integer",
    "thinking": '`thinking` must be {"type": "enabled", "budget_tokens": <positive integer>}, {"type": "disabled"} '
    'or {"type": "adaptive"}',
    "parallel_tool_calls": "`parallel_tool_calls` must be a boolean",
    "functions": '`functions` must be an array of {"name": ..., "parameters": {...}}',
    "function_call": '`function_call` must be none, auto or {"name": ...}',
    "service_tier": "`service_tier` must be a string",
    "store": "`store` must be a boolean",
    "safety_identifier": "`safety_identifier` must be a string",
    "prompt_cache_key": "`prompt_cache_key` must be a string",
    "verbosity": "`verbosity` must be a string (low, medium, high)",
    "modalities": "`modalities` must be an array of strings",
}
# the parts of a tool's `function` the gateway checks beyond its name, and what each must be
_FUNCTION_FIELDS = {"description": "a string", "parameters": "a JSON Schema object", "strict": "a boolean"}


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool | None = None
    include_obfuscation: bool | None = None


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


Number = Annotated[float, BeforeValidator(_number), Field(strict=False)]


class _JsonSchema(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    name: Annotated[str, Field(min_length=1)]
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class _ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: _JsonSchema | None = None


class _Thinking(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Annotated[int, Field(ge=1)] | None = None


class _FunctionCallName(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    name: Annotated[str, Field(min_length=1)]


class ChatBody(BaseModel):
    """The known fields of a chat-completions body that the gateway checks by type (the others in ACCEPTED are
    passed on unchecked, as are unknown ones)."""

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
    top_p: Annotated[Number, Field(ge=0, le=1)] | None = None
    seed: int | None = None
    frequency_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    logit_bias: dict[str, Annotated[Number, Field(ge=-100, le=100)]] | None = None
    response_format: _ResponseFormat | None = None
    reasoning_effort: Literal[REASONING_EFFORTS] | None = None  # type: ignore[valid-type]
    top_k: Annotated[int, Field(ge=0)] | None = None
    thinking: _Thinking | None = None
    parallel_tool_calls: bool | None = None
    functions: Annotated[list[_FunctionSpec], Field(min_length=1)] | None = None
    function_call: Literal["auto", "none"] | _FunctionCallName | None = None
    service_tier: str | None = None
    store: bool | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    verbosity: str | None = None
    modalities: list[str] | None = None

    @field_validator("n", mode="after")
    @classmethod
    def _choices(cls, n: Any) -> Any:
        if type(n) is not int or not 1 <= n <= MAX_N:
            raise ValueError(f"n must be from 1 to {MAX_N}")
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
