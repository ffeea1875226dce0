"""The OpenAI Chat Completions wire format: a ChatRequest in, `POST {base_url}/chat/completions` JSON out, and
its replies (whole or as `data:` SSE chunks ending in `data: [DONE]`) back into a ParsedReply / StreamEvents.

Content parts go as OpenAI defines them: text, image_url, input_audio (base64 and format) and file (a `file_id`,
or the bytes as a `data:` URL in `file_data`, with the filename). The request's `params` (every other
chat-completions field: top_p, seed, n, response_format as the client sent it, reasoning_effort, ..., unknown
ones too) go into the body as they are; `metadata` only with `store: true`
(OpenAI keeps it with stored completions; otherwise it is the gateway's routing attributes). Replies keep every
choice (`n`), the logprobs and the service tier.

Also fits OpenAI-compatible servers (vLLM, Together, Groq, ...): `base_url` includes the version path
(`https://api.openai.com/v1`), and providers without `api_key_env` are called without an auth header.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from providers.clients.base import ProviderClient
from providers.clients.params import openai_params
from providers.clients.reply import ParsedReply, StreamParser, stream_progress
from providers.clients.sse import SSEEvent
from providers.types import (
    ChatRequest,
    Choice,
    FinishReason,
    StreamEvent,
    ToolCall,
    Usage,
)

if TYPE_CHECKING:
    from providers.catalog.models import ProviderKind
    from providers.types import ModelSpecLike as ModelSpec
    from providers.types import ProviderSpecLike as ProviderSpec

FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def _usage(data: Any) -> Usage:
    usage = data or {}
    return Usage(input_tokens=usage.get("prompt_tokens") or 0, output_tokens=usage.get("completion_tokens") or 0)


class OpenAIStreamParser(StreamParser):
    """Chat-completion chunks; tool-call fragments are assembled per `index` and emitted at finish (each one
    reported as progress meanwhile: `stream_progress`)."""

    def __init__(self, client: ProviderClient, model: ModelSpec) -> None:
        super().__init__(client, model)
        self._calls: dict[int, dict[str, Any]] = {}

    def feed(self, event: SSEEvent) -> Iterable[StreamEvent]:
        data = event.data.strip()
        if data == "[DONE]":
            self.finished = True
            return self._flush_calls()
        if not data:
            return []
        chunk = json.loads(data)
        if chunk.get("error"):
            raise self.stream_error(chunk)
        self.raw = chunk
        self.reply.model_version = chunk.get("model") or self.reply.model_version
        self.reply.service_tier = chunk.get("service_tier") or self.reply.service_tier
        if chunk.get("usage"):
            self.reply.usage = _usage(chunk["usage"])
        events: list[StreamEvent] = []
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events.append(self.delta(delta["content"]))
            for frag in delta.get("tool_calls") or []:
                slot = self._calls.setdefault(frag.get("index", 0), {"id": "", "name": "", "args": []})
                fn = frag.get("function") or {}
                slot["id"] = frag.get("id") or slot["id"]
                slot["name"] = fn.get("name") or slot["name"]
                slot["args"].append(fn.get("arguments") or "")
                if frag.get("id") or fn.get("name") or fn.get("arguments"):
                    stream_progress()  # held back until the call is whole: still output for the idle timeout
            if choice.get("finish_reason"):
                self.reply.finish_reason = FINISH.get(choice["finish_reason"], "other")
                events.extend(self._flush_calls())
        return events

    def _flush_calls(self) -> list[StreamEvent]:
        calls = [self._calls[i] for i in sorted(self._calls)]
        self._calls.clear()
        return [
            self.tool_call(ToolCall(id=c["id"], name=c["name"], arguments="".join(c["args"]) or "{}")) for c in calls
        ]


class OpenAIClient(ProviderClient):
    """OpenAI Chat Completions (`Authorization: Bearer`); `max_tokens_field` names the output limit field."""

    kind: ClassVar[ProviderKind] = "openai"
    default_base_url = "https://api.openai.com/v1"
    stream_parser = OpenAIStreamParser

    def __init__(self, spec: ProviderSpec, *, max_tokens_field: str = "max_completion_tokens", **kw: Any) -> None:
        super().__init__(spec, **kw)
        self.max_tokens_field = max_tokens_field

    def url(self, model: ModelSpec, *, stream: bool) -> str:
        return f"{self.base_url}/chat/completions"

    def auth_headers(self, key: str | None) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"} if key else {}

    def build_body(self, model: ModelSpec, req: ChatRequest, *, stream: bool) -> dict[str, Any]:
        messages = [{"role": "system", "content": req.system}] if req.system else []
        messages += [m.to_openai() for m in req.messages]
        body: dict[str, Any] = {"model": model.id, "messages": messages}
        if req.temperature is not None:
            body["temperature"] = req.temperature
        if req.max_tokens is not None:
            body[self.max_tokens_field] = req.max_tokens
        if req.stop:
            body["stop"] = req.stop
        if req.tools:
            body["tools"] = req.tools
        if req.tool_choice:
            named = req.tool_choice not in ("auto", "none", "required")
            body["tool_choice"] = (
                {"type": "function", "function": {"name": req.tool_choice}} if named else req.tool_choice
            )
        fmt = req.response_format
        if fmt is not None and fmt.type == "json":
            body["response_format"] = {"type": "json_object"}
        elif fmt is not None and fmt.type == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": fmt.name, "schema": fmt.json_schema or {}, "strict": fmt.strict},
            }
        for name, value in openai_params(req.params).items():
            if name != "metadata" or req.params.get("store"):
                body[name] = value
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def parse_reply(self, data: Any) -> ParsedReply:
        first, *rest = [_choice(c) for c in sorted(data["choices"], key=lambda c: c.get("index") or 0)]
        return ParsedReply(
            text=first.text,
            tool_calls=first.tool_calls,
            usage=_usage(data.get("usage")),
            finish_reason=first.finish_reason,
            model_version=data.get("model"),
            choices=rest,
            logprobs=first.logprobs,
            service_tier=data.get("service_tier"),
        )


def _choice(choice: dict[str, Any]) -> Choice:
    message = choice.get("message") or {}
    calls = [
        ToolCall(id=c["id"], name=c["function"]["name"], arguments=c["function"].get("arguments") or "{}")
        for c in message.get("tool_calls") or []
    ]
    finish = FINISH.get(choice.get("finish_reason") or "", "other")
    if message.get("refusal") and not message.get("content"):
        finish = "content_filter"
    elif calls and finish == "stop":
        finish = "tool_calls"
    return Choice(
        text=message.get("content") or "", tool_calls=calls, finish_reason=finish, logprobs=choice.get("logprobs")
    )
