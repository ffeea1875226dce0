"""Provider-independent chat types: a `ChatRequest` goes in, a `ChatResponse` (or `StreamEvent`s) comes out.

Every wire format (OpenAI, Anthropic, Gemini) translates to and from these models, so the engine and the
gateway never see a provider's JSON.  Tools are described OpenAI-style (`{"type": "function", "function":
{"name", "description", "parameters"}}`) because that is the most common shape; the clients convert them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from engine.runtime.messages import ChatMessage

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "other"]
StreamEventKind = Literal["delta", "tool_call", "usage", "done"]


class ProviderSpecLike(Protocol):
    """What the clients need from `providers.catalog.ProviderSpec` (duck-typed so tests can stub it)."""

    name: str
    kind: str
    base_url: str | None
    api_key_env: str | None
    timeout_s: float
    headers: dict[str, str]


class ModelSpecLike(Protocol):
    """What the clients need from `providers.catalog.ModelSpec`: the wire id and USD-per-token prices."""

    name: str
    provider: str
    id: str
    input_price: float
    output_price: float


class TextPart(BaseModel, frozen=True):
    """Text; `cache_control` (on text, image and file parts) is Anthropic's prompt-cache breakpoint: sent to an
    Anthropic upstream as given, named as dropped for the others."""

    type: Literal["text"] = "text"
    text: str
    cache_control: dict[str, Any] | None = None


class ImagePart(BaseModel, frozen=True):
    """An image given by URL or by base64 `data` (with its `mime_type`); `detail` is OpenAI's vision fidelity
    (auto, low, high), sent to OpenAI-kind providers only. `inline()` reads a `data:` URL as (mime type, data)."""

    type: Literal["image"] = "image"
    url: str | None = None
    data: str | None = Field(default=None, repr=False)
    mime_type: str = "image/png"
    detail: str | None = None
    cache_control: dict[str, Any] | None = None

    def inline(self) -> tuple[str, str] | None:
        """(mime type, base64 data) of an image given as bytes (`data`, or a base64 `data:` URL); None for a URL."""
        from engine.runtime.images import parse_data_url

        if self.url:
            return parse_data_url(self.url)
        return (self.mime_type, self.data) if self.data is not None else None

    def data_url(self) -> str:
        """The image as a URL: its own, or its bytes as a `data:` URL."""
        return self.url or f"data:{self.mime_type};base64,{self.data}"


class AudioPart(BaseModel, frozen=True):
    """Audio given as base64 `data` in `format` (wav or mp3); `mime_type` names it for providers that want one."""

    type: Literal["audio"] = "audio"
    data: str = Field(repr=False)
    format: str = "wav"
    mime_type: str = "audio/wav"


class FilePart(BaseModel, frozen=True):
    """A document (a PDF) given as base64 `data` with its `mime_type`, or by the `file_id` of a file stored at
    OpenAI (only OpenAI-kind providers can read that)."""

    type: Literal["file"] = "file"
    data: str | None = Field(default=None, repr=False)
    mime_type: str = "application/pdf"
    filename: str | None = None
    file_id: str | None = None
    cache_control: dict[str, Any] | None = None


Part = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]


class ToolCall(BaseModel, frozen=True):
    """A function call requested by the model; `arguments` is the JSON text exactly as produced."""

    id: str
    name: str
    arguments: str = "{}"

    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as a dict (`{}` when empty); raises `ValueError` on invalid JSON."""
        if not self.arguments.strip():
            return {}
        value = json.loads(self.arguments)
        if not isinstance(value, dict):
            raise ValueError("tool call arguments are not a JSON object")
        return value


class Message(BaseModel):
    """One conversation turn.  `tool` messages answer the call named by `tool_call_id`."""

    model_config = ConfigDict(frozen=True)

    role: Role
    content: str | list[Part] = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None  # the tool's name on `tool` messages (Gemini needs it; found by id otherwise)
    is_error: bool = False  # a `tool` message reporting a failure: Anthropic's is_error, "Error: " text elsewhere

    def text(self) -> str:
        """The concatenated text of the content (image, audio and file parts are skipped)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    def cached(self) -> bool:
        """Whether a part of the content carries a `cache_control` breakpoint."""
        return not isinstance(self.content, str) and any(
            getattr(p, "cache_control", None) is not None for p in self.content
        )

    def result_text(self) -> str:
        """A tool message's text as a provider without an error flag gets it ("Error: " first when `is_error`)."""
        return "Error: " + self.text() if self.is_error else self.text()

    @classmethod
    def from_openai(cls, message: Mapping[str, Any] | Message, *, lenient: bool = True) -> Message:
        """An OpenAI-format message dict (read by `engine.runtime.messages`) as a Message; a Message as itself."""
        if isinstance(message, Message):
            return message
        from engine.runtime.messages import read_message

        return cls.from_chat(read_message(message, lenient=lenient))

    @classmethod
    def from_chat(cls, message: ChatMessage) -> Message:
        """A message read by `engine.runtime.messages.read_message` as a Message."""
        from engine.runtime.messages import AudioContent, FileContent, ImageContent

        content: str | list[Part]
        if isinstance(message.content, str):
            content = message.content
        else:
            parts: list[Part] = []
            content = parts
            for p in message.content:
                given = getattr(p, "cache_control", None)
                cache = dict(given) if given is not None else None
                if isinstance(p, ImageContent):
                    parts.append(
                        ImagePart(url=p.url, data=p.data, mime_type=p.mime_type, detail=p.detail, cache_control=cache)
                    )
                elif isinstance(p, AudioContent):
                    parts.append(AudioPart(data=p.data, format=p.format, mime_type=p.mime_type))
                elif isinstance(p, FileContent):
                    parts.append(
                        FilePart(
                            data=p.data,
                            mime_type=p.mime_type,
                            filename=p.filename,
                            file_id=p.file_id,
                            cache_control=cache,
                        )
                    )
                else:
                    parts.append(TextPart(text=p.text, cache_control=cache))
        calls = [ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in message.tool_calls]
        return cls(
            role=message.role,
            content=content,
            tool_calls=calls,
            tool_call_id=message.tool_call_id,
            name=message.name,
            is_error=message.is_error,
        )

    def to_openai(self) -> dict[str, Any]:
        """This message as an OpenAI chat-completions message dict (parts in OpenAI's shapes: an image as
        `image_url` with its detail, audio as `input_audio`, a file as `file` with file_data as a data URL)."""
        if self.role == "tool":
            return {"role": "tool", "tool_call_id": self.tool_call_id, "content": self.result_text()}
        message: dict[str, Any] = {"role": self.role, "content": _openai_content(self.content)}
        if self.role == "assistant" and self.tool_calls:
            message["content"] = self.text() or None
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        return message

    @classmethod
    def system(cls, text: str) -> Message:
        return cls(role="system", content=text)

    @classmethod
    def user(cls, content: str | list[Part]) -> Message:
        return cls(role="user", content=content)

    @classmethod
    def assistant(cls, text: str = "", tool_calls: list[ToolCall] | None = None) -> Message:
        return cls(role="assistant", content=text, tool_calls=tool_calls or [])

    @classmethod
    def tool(cls, tool_call_id: str, content: str, name: str | None = None) -> Message:
        return cls(role="tool", content=content, tool_call_id=tool_call_id, name=name)


def _openai_content(content: str | list[Part]) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, ImagePart):
            image: dict[str, Any] = {"url": part.data_url()}
            if part.detail is not None:
                image["detail"] = part.detail
            parts.append({"type": "image_url", "image_url": image})
        elif isinstance(part, AudioPart):
            parts.append({"type": "input_audio", "input_audio": {"data": part.data, "format": part.format}})
        elif isinstance(part, FilePart):
            file: dict[str, Any] = (
                {"file_id": part.file_id}
                if part.file_id
                else {"file_data": f"data:{part.mime_type};base64,{part.data}"}
            )
            if part.filename is not None:
                file["filename"] = part.filename
            parts.append({"type": "file", "file": file})
        else:
            parts.append({"type": "text", "text": part.text})
    return parts


class ResponseFormat(BaseModel, frozen=True):
    """`json` asks for any JSON object; `json_schema` for JSON matching `json_schema` (a JSON Schema)."""

    type: Literal["text", "json", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None
    name: str = "response"
    strict: bool = True


def function_tool(name: str, description: str = "", parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """An OpenAI-style function tool spec, the shape `ChatRequest.tools` expects."""
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": parameters or {"type": "object", "properties": {}},
        },
    }


class ChatRequest(BaseModel):
    """A provider-independent chat request.

    `system` is prepended to any system messages.  `tool_choice` is "auto", "none", "required" or the name
    of one tool.  `extra` is merged verbatim into the provider's JSON body (provider-specific options).
    `params` holds the OpenAI chat-completions fields beyond these (`top_p`, `seed`, `n`, `reasoning_effort`,
    `response_format` as sent, ...; providers/clients/params.py): sent as they are to an OpenAI-kind provider,
    translated or dropped for the others.
    """

    model_config = ConfigDict(frozen=True)

    messages: list[Message]
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: str | None = None
    response_format: ResponseFormat | None = None
    stop: list[str] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict, repr=False)
    params: dict[str, Any] = Field(default_factory=dict, repr=False)

    @field_validator("tools")
    @classmethod
    def _check_tools(cls, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for tool in tools:
            fn = tool.get("function")
            if tool.get("type", "function") != "function" or not isinstance(fn, dict) or not fn.get("name"):
                raise ValueError("tools must be OpenAI-style function specs: {'type': 'function', 'function': {...}}")
        return tools

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def system_text(self) -> str | None:
        """`system` plus the text of every system message, joined by blank lines (None when empty)."""
        chunks = [self.system] if self.system else []
        chunks += [m.text() for m in self.messages if m.role == "system" and m.text()]
        return "\n\n".join(chunks) or None

    def tool_functions(self) -> list[dict[str, Any]]:
        """The `function` objects of `tools` (name, description, parameters)."""
        return [t["function"] for t in self.tools]


#: The largest token count an answer may report: more than any request could use (a trillion).
MAX_TOKEN_COUNT = 10**12


class Usage(BaseModel, frozen=True):
    """Tokens of one call (or a whole request). `estimated` is True when the upstream did not report them and
    execution estimated them from what was sent and received (providers/execution/metering.py)."""

    input_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False

    @field_validator("input_tokens", "output_tokens")
    @classmethod
    def _a_count(cls, value: int) -> int:
        """A count an upstream reported: below 0 is no report (0: execution estimates it, and a negative count would
        credit a budget); past MAX_TOKEN_COUNT it is not a count, and the answer is malformed."""
        if value > MAX_TOKEN_COUNT:
            raise ValueError(f"a token count of {len(str(value))} digits is not a count")
        return max(0, value)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Choice(BaseModel, frozen=True):
    """One more answer of a call that asked for several (`n`): its text, tool calls, finish reason, logprobs."""

    text: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: FinishReason = "stop"
    logprobs: Any = None


class ChatResponse(BaseModel):
    """A completed answer.  `cost` is USD from the ModelSpec prices; `raw` is the provider JSON (last chunk
    for streams).  `model` is the catalog model name, `model_version` whatever the provider reported. `choices`
    holds the further answers of a request with `n` > 1 (usage and cost cover them all)."""

    model_config = ConfigDict(frozen=True)

    text: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    finish_reason: FinishReason = "stop"
    provider: str = ""
    model: str = ""
    model_version: str | None = None
    latency_s: float = 0.0
    first_token_s: float | None = None
    cost: float | None = None
    raw: Any = Field(default=None, repr=False)
    choices: list[Choice] = Field(default_factory=list)  # the answers after the first, when `n` > 1
    logprobs: Any = None  # OpenAI-shaped `logprobs` of the first answer, when asked for and given
    service_tier: str | None = None  # the OpenAI service tier the answer was billed at (its price multiplier)


class StreamEvent(BaseModel):
    """One streaming increment.

    delta: `text` holds new text.  tool_call: `tool_call` is a complete call.  usage: `usage` is final.
    done: `response` is the aggregated `ChatResponse` (always the last event of a healthy stream).
    """

    model_config = ConfigDict(frozen=True)

    kind: StreamEventKind
    text: str = ""
    tool_call: ToolCall | None = None
    usage: Usage | None = None
    finish_reason: FinishReason | None = None
    response: ChatResponse | None = None


def tier_factor(model: Any, tier: str | None) -> float:
    """The price multiplier of `tier` for a model (its catalog `service_tiers`; 1 for a model without them)."""
    factor = getattr(model, "tier_factor", None)
    return float(factor(tier)) if callable(factor) else 1.0


def cost_of(model: ModelSpecLike | None, usage: Usage, tier: str | None = None) -> float | None:
    """USD cost of `usage` at the model's per-token prices, times the price multiplier of the OpenAI service
    `tier` it was served at (None without a model or prices)."""
    if model is None:
        return None
    try:
        cost = usage.input_tokens * float(model.input_price) + usage.output_tokens * float(model.output_price)
    except (AttributeError, TypeError, ValueError):
        return None
    return cost * tier_factor(model, tier)
