"""The Anthropic Messages wire format: a ChatRequest in, `POST {base_url}/v1/messages` JSON out, and its
replies (whole, or as message_start/content_block_*/message_delta/message_stop SSE events) back out.

System text becomes the top-level `system` field, `max_tokens` is always sent (default 1024, capped by the
model's `max_output`), OpenAI-style tools become `{name, description, input_schema}`, and tool results
become `tool_result` blocks in user turns. A PDF (a file part's bytes) becomes a `document` block with a base64
source (its filename the `title`); audio has no counterpart and a `file_id` names a file Anthropic cannot read:
either raises ValueError, a BadRequest before anything is sent (the `audio` / `files` catalog features keep such
requests away from models without them). A `response_format` goes to Anthropic's structured output
(`output_config.format`) on a model whose catalog entry supports `json_schema`; otherwise (and for json_object)
to a forced tool whose input is returned as the message's text, or, when the request has tools of its own, to a
system instruction. A part's `cache_control` is kept on its block (on a system part: `system` as text blocks). A
base64 image (a data: URL too) goes as a base64 source. Of `params` (providers/clients/params.py): top_p, top_k,
thinking and cache_control (as sent), reasoning_effort (a thinking budget),
parallel_tool_calls (`disable_parallel_tool_use`), user / safety_identifier (`metadata.user_id`); `n` is n calls
(providers/clients/base.py); the rest is dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from providers.clients.base import ProviderClient
from providers.clients.params import JSON_TOOL, anthropic_thinking, json_tool, user_id
from providers.clients.reply import ParsedReply, StreamParser, stream_progress
from providers.clients.sse import SSEEvent
from providers.errors import classify_stream_error
from providers.types import (
    AudioPart,
    ChatRequest,
    FilePart,
    FinishReason,
    ImagePart,
    Message,
    StreamEvent,
    TextPart,
    ToolCall,
    Usage,
)

if TYPE_CHECKING:
    from providers.catalog.models import ProviderKind
    from providers.types import ModelSpecLike as ModelSpec

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
    "model_context_window_exceeded": "length",
}


def _input_tokens(usage: dict[str, Any]) -> int:
    """Uncached plus cache-write plus cache-read input tokens (Anthropic reports them separately)."""
    keys = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    return sum(int(usage.get(k) or 0) for k in keys)


def _blocks(message: Message) -> list[dict[str, Any]]:
    if message.role == "tool":
        result = {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.text()}
        return [{**result, "is_error": True} if message.is_error else result]
    blocks: list[dict[str, Any]]
    if isinstance(message.content, str):
        blocks = [{"type": "text", "text": message.content}] if message.content else []
    else:
        blocks = []
        for part in message.content:
            if isinstance(part, ImagePart):
                inline = part.inline()  # bytes (a base64 data: URL too) go as a base64 source
                source = (
                    {"type": "base64", "media_type": inline[0], "data": inline[1]}
                    if inline is not None
                    else {"type": "url", "url": part.url}
                )
                block = {"type": "image", "source": source}
            elif isinstance(part, FilePart):
                block = _document(part)
            elif isinstance(part, AudioPart):
                raise ValueError("Anthropic models take no audio input (an input_audio part)")
            else:
                block = {"type": "text", "text": part.text}
            if part.cache_control is not None:
                block["cache_control"] = part.cache_control
            blocks.append(block)
    for call in message.tool_calls:
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": call.parsed_arguments()})
    return blocks


def _document(part: FilePart) -> dict[str, Any]:
    """A file part as a `document` block: its bytes as a base64 source (a `file_id` cannot be read here)."""
    if part.data is None:
        raise ValueError(
            f"a file_id ({part.file_id}) names a file stored at OpenAI, which Anthropic cannot read: send the file "
            "as file_data"
        )
    block: dict[str, Any] = {
        "type": "document",
        "source": {"type": "base64", "media_type": part.mime_type, "data": part.data},
    }
    if part.filename:
        block["title"] = part.filename
    return block


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Anthropic turns: system messages dropped (they go top-level), tool results folded into user turns,
    consecutive turns of the same role merged."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        role = "assistant" if message.role == "assistant" else "user"
        if out and out[-1]["role"] == role:
            previous = out[-1]["content"]
            if isinstance(previous, str):
                previous = [{"type": "text", "text": previous}] if previous else []
            out[-1]["content"] = previous + _blocks(message)
        elif message.role == "user" and isinstance(message.content, str):
            out.append({"role": role, "content": message.content})
        else:
            out.append({"role": role, "content": _blocks(message)})
    return out


def _system(req: ChatRequest, instruction: str | None) -> str | list[dict[str, Any]] | None:
    """The top-level `system`: the system texts joined by blank lines, or, when a system part carries a
    `cache_control` breakpoint, one text block per part (the breakpoint kept)."""
    messages = [m for m in req.messages if m.role == "system"]
    if not any(m.cached() for m in messages):
        return "\n\n".join(x for x in (req.system_text(), instruction) if x) or None
    blocks: list[dict[str, Any]] = [{"type": "text", "text": req.system}] if req.system else []
    for message in messages:
        parts = [TextPart(text=message.content)] if isinstance(message.content, str) else message.content
        for part in parts:
            if isinstance(part, TextPart) and part.text:
                block: dict[str, Any] = {"type": "text", "text": part.text}
                if part.cache_control is not None:
                    block["cache_control"] = part.cache_control
                blocks.append(block)
    if instruction:
        blocks.append({"type": "text", "text": instruction})
    return blocks


def _json_instruction(req: ChatRequest, supports: frozenset[str]) -> str | None:
    """The system instruction that asks for JSON when neither structured output nor the JSON tool carries it."""
    fmt = req.response_format
    if fmt is None or fmt.type == "text" or json_tool(req, supports) or _native_format(req, supports):
        return None
    if fmt.type == "json_schema" and fmt.json_schema:
        schema = json.dumps(fmt.json_schema, separators=(",", ":"))
        return f"Respond with only a JSON value that matches this JSON Schema, and no other text: {schema}"
    return "Respond with only a valid JSON object and no other text."


def _native_format(req: ChatRequest, supports: frozenset[str]) -> bool:
    fmt = req.response_format
    return fmt is not None and fmt.type == "json_schema" and "json_schema" in supports and bool(fmt.json_schema)


def _supports(model: ModelSpec) -> frozenset[str]:
    return frozenset(getattr(model, "supports", None) or ())


def _format_tool(req: ChatRequest) -> dict[str, Any]:
    fmt = req.response_format
    schema = fmt.json_schema if fmt is not None and fmt.type == "json_schema" and fmt.json_schema else None
    return {
        "name": JSON_TOOL,
        "description": "Give the answer: its input is the whole answer, as JSON.",
        "input_schema": schema or {"type": "object"},
    }


class AnthropicStreamParser(StreamParser):
    """Messages-API stream events; tool_use input is assembled from input_json_delta fragments (each one reported
    as progress meanwhile: providers.clients.reply.stream_progress)."""

    def __init__(self, client: ProviderClient, model: ModelSpec) -> None:
        super().__init__(client, model)
        self._tools: dict[int, dict[str, Any]] = {}
        self._json: int | None = None  # the block of the forced JSON tool, streamed as text
        self._input = 0
        self._output = 0

    def feed(self, event: SSEEvent) -> Iterable[StreamEvent]:
        if not event.data.strip():
            return []
        data = json.loads(event.data)
        kind = data.get("type") or event.event
        events: list[StreamEvent] = []
        if kind == "error":
            raise self.stream_error(data)
        self.raw = data
        if kind == "message_start":
            message = data.get("message") or {}
            self.reply.model_version = message.get("model")
            usage = message.get("usage") or {}
            self._input, self._output = _input_tokens(usage), int(usage.get("output_tokens") or 0)
        elif kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use" and block.get("name") == JSON_TOOL:
                self._json = data.get("index", 0)
            elif block.get("type") == "tool_use":
                self._tools[data.get("index", 0)] = {
                    "id": block.get("id", ""),
                    "name": block.get("name", ""),
                    "args": [],
                }
                stream_progress()  # a tool call is emitted whole: its pieces are still output for the idle timeout
            elif block.get("type") == "text" and block.get("text"):
                events.append(self.delta(block["text"]))
        elif kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                events.append(self.delta(delta["text"]))
            elif delta.get("type") == "input_json_delta" and data.get("index", 0) == self._json:
                if delta.get("partial_json"):
                    events.append(self.delta(delta["partial_json"]))
            elif delta.get("type") == "input_json_delta" and data.get("index", 0) in self._tools:
                self._tools[data.get("index", 0)]["args"].append(delta.get("partial_json") or "")
                if delta.get("partial_json"):
                    stream_progress()
        elif kind == "content_block_stop" and data.get("index", 0) in self._tools:
            tool = self._tools.pop(data.get("index", 0))
            events.append(
                self.tool_call(ToolCall(id=tool["id"], name=tool["name"], arguments="".join(tool["args"]) or "{}"))
            )
        elif kind == "message_delta":
            stop = (data.get("delta") or {}).get("stop_reason")
            if stop:
                self.reply.finish_reason = "stop" if self._json is not None else FINISH.get(stop, "other")
            usage = data.get("usage") or {}
            self._output = int(usage.get("output_tokens") or self._output)
            self._input = _input_tokens(usage) or self._input
        elif kind == "message_stop":
            self.finished = True
        self.reply.usage = Usage(input_tokens=self._input, output_tokens=self._output)
        return events


class AnthropicClient(ProviderClient):
    """Anthropic Messages API (`x-api-key`, `anthropic-version: 2023-06-01`)."""

    kind: ClassVar[ProviderKind] = "anthropic"
    default_base_url = "https://api.anthropic.com"
    stream_parser = AnthropicStreamParser

    def url(self, model: ModelSpec, *, stream: bool) -> str:
        return f"{self.base_url}/v1/messages"

    def auth_headers(self, key: str | None) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if key:
            headers["x-api-key"] = key
        return headers

    def build_body(self, model: ModelSpec, req: ChatRequest, *, stream: bool) -> dict[str, Any]:
        supports = _supports(model)
        max_tokens = req.max_tokens
        thinking = anthropic_thinking(req, supports, max_tokens)
        budget = thinking.get("budget_tokens") if thinking is not None else None
        if max_tokens is None:
            cap = getattr(model, "max_output", None)
            max_tokens = min(DEFAULT_MAX_TOKENS, cap) if cap else DEFAULT_MAX_TOKENS
            if isinstance(budget, int):  # no bound was asked for: room for the thinking and an answer
                max_tokens = max_tokens + budget if not cap else min(max_tokens + budget, cap)
                thinking = thinking if budget < max_tokens else None
        thinks = thinking is not None and thinking.get("type") != "disabled"
        body: dict[str, Any] = {
            "model": model.id,
            "max_tokens": max_tokens,
            "messages": _messages(req.messages),
        }
        system = _system(req, _json_instruction(req, supports))
        if system:
            body["system"] = system
        if req.temperature is not None and not thinks:
            body["temperature"] = req.temperature
        for name in ("top_p", "top_k"):  # neither combines with thinking
            if req.params.get(name) is not None and not thinks:
                body[name] = req.params[name]
        if req.stop:
            body["stop_sequences"] = req.stop
        if req.tools:
            body["tools"] = [
                {
                    "name": f["name"],
                    "description": f.get("description") or "",
                    "input_schema": f.get("parameters") or {"type": "object", "properties": {}},
                }
                for f in req.tool_functions()
            ]
        if req.tool_choice:
            choices = {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}}
            body["tool_choice"] = choices.get(req.tool_choice, {"type": "tool", "name": req.tool_choice})
        if req.tools and req.params.get("parallel_tool_calls") is False:
            choice = body.setdefault("tool_choice", {"type": "auto"})
            if choice["type"] != "none":
                choice["disable_parallel_tool_use"] = True
        if json_tool(req, supports):
            body["tools"] = [_format_tool(req)]
            body["tool_choice"] = {"type": "tool", "name": JSON_TOOL}
        elif _native_format(req, supports):
            fmt = req.response_format
            assert fmt is not None
            body["output_config"] = {"format": {"type": "json_schema", "schema": fmt.json_schema}}
        if thinking is not None:
            body["thinking"] = thinking
        if isinstance(req.params.get("cache_control"), dict):  # Anthropic's automatic prompt caching
            body["cache_control"] = req.params["cache_control"]
        user = user_id(req.params)
        if user is not None:
            body["metadata"] = {"user_id": user}
        if stream:
            body["stream"] = True
        return body

    def parse_reply(self, data: Any) -> ParsedReply:
        if data.get("type") == "error":
            raise classify_stream_error(self.kind, data, provider=self.spec.name, secret=self._secret())
        text, calls = [], []
        answered = False  # through the forced JSON tool: its input is the answer
        for block in data["content"]:
            if block.get("type") == "text":
                text.append(block.get("text") or "")
            elif block.get("type") == "tool_use" and block.get("name") == JSON_TOOL:
                text, answered = [json.dumps(block.get("input") or {}, ensure_ascii=False)], True
            elif block.get("type") == "tool_use":
                calls.append(
                    ToolCall(id=block["id"], name=block["name"], arguments=json.dumps(block.get("input") or {}))
                )
        usage = data.get("usage") or {}
        return ParsedReply(
            text="".join(text),
            tool_calls=calls,
            usage=Usage(input_tokens=_input_tokens(usage), output_tokens=int(usage.get("output_tokens") or 0)),
            finish_reason="stop" if answered else FINISH.get(data.get("stop_reason") or "", "other"),
            model_version=data.get("model"),
        )
