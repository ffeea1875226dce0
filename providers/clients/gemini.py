"""The Gemini generateContent wire format: a ChatRequest in, a JSON POST to
`{base_url}/v1beta/models/{id}:generateContent` (or `:streamGenerateContent?alt=sse`) out, and
GenerateContentResponse objects back into a ParsedReply / StreamEvents.

The key goes in the `x-goog-api-key` header (never the URL).  Turns use roles user/model with `parts`,
system text becomes `systemInstruction`, tools become `functionDeclarations`, tool results become
`functionResponse` parts, audio and PDF parts become `inlineData` {mimeType, data} (a `file_id` names a file
stored at OpenAI, which Gemini cannot read: ValueError, a BadRequest before anything is sent), and JSON output
uses `responseMimeType` plus `responseJsonSchema` (which accepts the same JSON Schema the OpenAI format does).
Of `params` (providers/clients/params.py): top_p, top_k, seed, the penalties, n (`candidateCount`),
logprobs / top_logprobs, thinking or reasoning_effort (`thinkingConfig.thinkingBudget`, cut below max_tokens);
the rest is dropped. A base64 image (data, or a data: URL) goes as `inlineData`, a remote URL as `fileData`.
Gemini streams have no terminal event: a candidate's `finishReason` marks the end.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from providers.clients.base import ProviderClient
from providers.clients.params import gemini_thinking
from providers.clients.reply import ParsedReply, StreamParser
from providers.clients.sse import SSEEvent
from providers.types import (
    AudioPart,
    ChatRequest,
    Choice,
    FilePart,
    FinishReason,
    ImagePart,
    Message,
    StreamEvent,
    ToolCall,
    Usage,
)

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
        return [{"functionResponse": {"name": name, "response": _tool_result(message.result_text())}}]
    parts: list[dict[str, Any]] = []
    if isinstance(message.content, str):
        parts = [{"text": message.content}] if message.content else []
    else:
        for part in message.content:
            if isinstance(part, ImagePart):
                inline = part.inline()  # bytes (a base64 data: URL too) go as inlineData
                parts.append(
                    {"inlineData": {"mimeType": inline[0], "data": inline[1]}}
                    if inline is not None
                    else {"fileData": {"mimeType": part.mime_type, "fileUri": part.url}}
                )
            elif isinstance(part, (AudioPart, FilePart)):
                parts.append({"inlineData": {"mimeType": part.mime_type, "data": _inline_data(part)}})
            else:
                parts.append({"text": part.text})
    for call in message.tool_calls:
        parts.append({"functionCall": {"name": call.name, "args": call.parsed_arguments()}})
    return parts


def _inline_data(part: AudioPart | FilePart) -> str:
    """The base64 bytes of an audio or file part (a `file_id` cannot be read here)."""
    if part.data is None:
        file_id = getattr(part, "file_id", None)
        raise ValueError(
            f"a file_id ({file_id}) names a file stored at OpenAI, which Gemini cannot read: send the file as file_data"
        )
    return part.data


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


#: generationConfig names of the `params` Gemini takes as they are
_CONFIG = {
    "top_p": "topP",
    "seed": "seed",
    "frequency_penalty": "frequencyPenalty",
    "presence_penalty": "presencePenalty",
    "n": "candidateCount",
    "top_logprobs": "logprobs",
    "top_k": "topK",
}


def _logprobs(result: Any) -> Any:
    """A candidate's `logprobsResult` as OpenAI's choice `logprobs` ({"content": [...]}); None without one."""
    if not isinstance(result, dict):
        return None
    tops = result.get("topCandidates") or []
    content = []
    for i, chosen in enumerate(result.get("chosenCandidates") or []):
        top = tops[i].get("candidates") or [] if i < len(tops) and isinstance(tops[i], dict) else []
        content.append(
            {
                "token": chosen.get("token", ""),
                "logprob": chosen.get("logProbability", 0.0),
                "bytes": None,
                "top_logprobs": [
                    {"token": c.get("token", ""), "logprob": c.get("logProbability", 0.0), "bytes": None} for c in top
                ],
            }
        )
    return {"content": content, "refusal": None}


def _candidate(candidate: dict[str, Any]) -> tuple[list[str], list[ToolCall], str | None]:
    texts, calls = [], []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if "text" in part and not part.get("thought"):
            texts.append(part["text"])
        elif "functionCall" in part:
            fc = part["functionCall"]
            call_id = fc.get("id") or f"call_{uuid.uuid4().hex[:16]}"  # Gemini may omit ids; ours are unique
            calls.append(ToolCall(id=call_id, name=fc["name"], arguments=json.dumps(fc.get("args") or {})))
    return texts, calls, candidate.get("finishReason")


def _candidates(data: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(data.get("candidates") or [], key=lambda c: c.get("index") or 0)


def _candidate_reply(
    data: dict[str, Any],
) -> tuple[list[str], list[ToolCall], str | None]:
    """(texts, tool calls, raw finishReason) of the first candidate."""
    candidates = _candidates(data)
    return _candidate(candidates[0]) if candidates else ([], [], None)


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
        for name, key in _CONFIG.items():
            if req.params.get(name) is not None:
                config[key] = req.params[name]
        if req.params.get("logprobs"):
            config["responseLogprobs"] = True
        budget = gemini_thinking(req)
        if budget is not None:
            config["thinkingConfig"] = {"thinkingBudget": budget}
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
        first, *rest = [self._choice(c) for c in _candidates(data)]
        return ParsedReply(
            text=first.text,
            tool_calls=first.tool_calls,
            usage=usage,
            finish_reason=first.finish_reason,
            model_version=data.get("modelVersion"),
            choices=rest,
            logprobs=first.logprobs,
        )

    @staticmethod
    def _choice(candidate: dict[str, Any]) -> Choice:
        texts, calls, finish = _candidate(candidate)
        reason = FINISH.get(finish or "", "other")
        return Choice(
            text="".join(texts),
            tool_calls=calls,
            finish_reason="tool_calls" if calls and reason == "stop" else reason,
            logprobs=_logprobs(candidate.get("logprobsResult")),
        )
