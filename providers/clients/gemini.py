"""The Gemini generateContent wire format: a ChatRequest in, a JSON POST to
`{base_url}/v1beta/models/{id}:generateContent` (or `:streamGenerateContent?alt=sse`) out, and
GenerateContentResponse objects back into a ParsedReply / StreamEvents.

The key goes in the `x-goog-api-key` header (never the URL).  Turns use roles user/model with `parts`,
system text becomes `systemInstruction`, tools become `functionDeclarations`, tool results become
`functionResponse` parts, and JSON output uses `responseMimeType` plus `responseJsonSchema` (which accepts
the same JSON Schema the OpenAI format does).  Gemini streams have no terminal event: a candidate's
`finishReason` marks the end.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from providers.clients.base import ParsedReply, ProviderClient, StreamParser
from providers.clients.sse import SSEEvent
from providers.types import ChatRequest, FinishReason, ImagePart, Message, StreamEvent, ToolCall, Usage

if TYPE_CHECKING:
    from providers.catalog.models import ProviderKind
    from providers.types import ModelSpecLike as ModelSpec

FINISH: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}


def _usage(meta: Any) -> Usage:
    meta = meta or {}
    output = int(meta.get("candidatesTokenCount") or 0) + int(meta.get("thoughtsTokenCount") or 0)
    return Usage(input_tokens=int(meta.get("promptTokenCount") or 0), output_tokens=output)


def _tool_result(content: str) -> dict[str, Any]:
    """functionResponse.response must be an object: JSON objects pass through, anything else is wrapped."""
    try:
        value = json.loads(content)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"result": content}


def _parts(message: Message, tool_names: dict[str, str]) -> list[dict[str, Any]]:
    if message.role == "tool":
        name = message.name or tool_names.get(message.tool_call_id or "", "tool")
        return [{"functionResponse": {"name": name, "response": _tool_result(message.text())}}]
    parts: list[dict[str, Any]] = []
    if isinstance(message.content, str):
        parts = [{"text": message.content}] if message.content else []
    else:
        for part in message.content:
            if isinstance(part, ImagePart):
                parts.append(
                    {"fileData": {"mimeType": part.mime_type, "fileUri": part.url}}
                    if part.url
                    else {"inlineData": {"mimeType": part.mime_type, "data": part.data}}
                )
            else:
                parts.append({"text": part.text})
    for call in message.tool_calls:
        parts.append({"functionCall": {"name": call.name, "args": call.parsed_arguments()}})
    return parts


def _contents(messages: list[Message]) -> list[dict[str, Any]]:
    tool_names = {c.id: c.name for m in messages for c in m.tool_calls}
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        role = "model" if message.role == "assistant" else "user"
        parts = _parts(message, tool_names)
        if out and out[-1]["role"] == role:
            out[-1]["parts"].extend(parts)
        else:
            out.append({"role": role, "parts": parts})
    return out


def _candidate_reply(
    data: dict[str, Any],
) -> tuple[list[str], list[ToolCall], str | None]:
    """(texts, tool calls, raw finishReason) of the first candidate."""
    candidates = data.get("candidates") or []
    if not candidates:
        return [], [], None
    candidate = candidates[0]
    texts, calls = [], []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if "text" in part and not part.get("thought"):
            texts.append(part["text"])
        elif "functionCall" in part:
            fc = part["functionCall"]
            call_id = fc.get("id") or f"call_{uuid.uuid4().hex[:16]}"  # Gemini may omit ids; ours are unique
            calls.append(ToolCall(id=call_id, name=fc["name"], arguments=json.dumps(fc.get("args") or {})))
    return texts, calls, candidate.get("finishReason")


def _blocked(data: dict[str, Any]) -> bool:
    return bool((data.get("promptFeedback") or {}).get("blockReason")) and not data.get("candidates")


class GeminiStreamParser(StreamParser):
    """streamGenerateContent?alt=sse: each `data:` is a partial GenerateContentResponse."""

    def __init__(self, client: ProviderClient, model: ModelSpec) -> None:
        super().__init__(client, model)

    def feed(self, event: SSEEvent) -> Iterable[StreamEvent]:
        if not event.data.strip():
            return []
        data = json.loads(event.data)
        if isinstance(data, list):  # tolerate JSON-array framing of a single record
            data = data[0] if data else {}
        if data.get("error"):
            raise self.stream_error(data)
        self.raw = data
        self.reply.model_version = data.get("modelVersion") or self.reply.model_version
        if data.get("usageMetadata"):
            self.reply.usage = _usage(data["usageMetadata"])
        if _blocked(data):
            self.reply.finish_reason, self.finished = "content_filter", True
            return []
        texts, calls, finish = _candidate_reply(data)
        events = [self.delta(t) for t in texts if t] + [self.tool_call(c) for c in calls]
        if finish:
            self.reply.finish_reason = FINISH.get(finish, "other")
            self.finished = True
        return events


class GeminiClient(ProviderClient):
    """Gemini API (generativelanguage) with the `x-goog-api-key` header."""

    kind: ClassVar[ProviderKind] = "gemini"
    default_base_url = "https://generativelanguage.googleapis.com"
    stream_parser = GeminiStreamParser

    def url(self, model: ModelSpec, *, stream: bool) -> str:
        model_id = model.id.removeprefix("models/")
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return f"{self.base_url}/v1beta/models/{model_id}:{method}"

    def auth_headers(self, key: str | None) -> dict[str, str]:
        return {"x-goog-api-key": key} if key else {}

    def build_body(self, model: ModelSpec, req: ChatRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"contents": _contents(req.messages)}
        system = req.system_text()
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        config: dict[str, Any] = {}
        if req.temperature is not None:
            config["temperature"] = req.temperature
        if req.max_tokens is not None:
            config["maxOutputTokens"] = req.max_tokens
        if req.stop:
            config["stopSequences"] = req.stop
        fmt = req.response_format
        if fmt is not None and fmt.type != "text":
            config["responseMimeType"] = "application/json"
            if fmt.type == "json_schema" and fmt.json_schema:
                config["responseJsonSchema"] = fmt.json_schema
        if config:
            body["generationConfig"] = config
        if req.tools:
            body["tools"] = [
                {
                    "functionDeclarations": [
                        {k: v for k, v in f.items() if k in ("name", "description", "parameters")}
                        for f in req.tool_functions()
                    ]
                }
            ]
        if req.tool_choice:
            modes = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
            calling: dict[str, Any] = {"mode": modes.get(req.tool_choice, "ANY")}
            if req.tool_choice not in modes:
                calling["allowedFunctionNames"] = [req.tool_choice]
            body["toolConfig"] = {"functionCallingConfig": calling}
        return body

    def parse_reply(self, data: Any) -> ParsedReply:
        usage = _usage(data.get("usageMetadata"))
        if _blocked(data):
            return ParsedReply(usage=usage, finish_reason="content_filter", model_version=data.get("modelVersion"))
        if not data.get("candidates"):
            raise ValueError("no candidates in the response")
        texts, calls, finish = _candidate_reply(data)
        return ParsedReply(
            text="".join(texts),
            tool_calls=calls,
            usage=usage,
            finish_reason=FINISH.get(finish or "", "other"),
            model_version=data.get("modelVersion"),
        )
