"""A real, scriptable HTTP server on 127.0.0.1 speaking the OpenAI, Anthropic and Gemini wire formats:
scripted behaviours in, provider-shaped HTTP responses (JSON or chunked SSE) and recorded requests out.

Routes (POST):  /v1/chat/completions (openai)   /v1/messages (anthropic)
    /v1beta/models/{id}:generateContent   /v1beta/models/{id}:streamGenerateContent?alt=sse (gemini)
Streaming is chosen like the real APIs do: `"stream": true` in the body, or the Gemini stream path.
HTTP/1.1 with keep-alive; streams use chunked transfer encoding.  Scripts are keyed by model id (the
body's "model", or the id in the Gemini path).

API:
    with FakeServer() as server:           # or the `fake_server` pytest fixture (import it into a conftest)
        server.url                         # "http://127.0.0.1:<port>"
        server.base_url("openai")          # ProviderSpec.base_url for a kind ("…/v1" for openai)
        server.script("gpt-4o", [Fault.status(429, retry_after=1), Reply(text="hi")])  # queue, in order
        server.always("claude-x", Fault.overloaded())    # used whenever the model's queue is empty
        server.default = Reply(text="ok")                # used for any model with nothing scripted
        server.requests / server.last()                  # RecordedRequest(path, headers, body, model, ...)
        server.connections                               # TCP connections accepted (keep-alive checks)
        server.wait_for_requests(2, timeout=1.0)
    FakeServer(api_key="sk-x") also answers 401 (provider-shaped) to requests without that key.

Behaviours:
    Reply(text, tool_calls=[Call(name, args)], input_tokens, output_tokens, finish, delay, chunk_delay)
                          a JSON answer has `n` (OpenAI) / `candidateCount` (Gemini) copies of its choice
    Fault.status(code, retry_after=, retry_after_ms=, message=, error_code=)  provider-shaped error
    Fault.rate_limited(retry_after) / server_error(code) / overloaded() (529) / auth(echo_key=)
    Fault.context_too_long() / content_filtered()     each provider's real error or blocked-answer format
    Fault.hang(seconds)   no answer until `seconds` pass (or the server stops): drives client timeouts
    Fault.reset()         TCP RST (SO_LINGER 0) instead of an answer; Fault.close() plain FIN
    Fault.malformed(body) 200 with an unparseable body
    Fault.cut_stream(after, abort=True)  send `after` SSE events then RST (abort) or end the body cleanly
    Fault.stream_error(after)            send `after` SSE events then a provider-shaped in-stream error
    Fault.slow(delay, text)              a Reply that waits `delay` seconds first (race tests)
    Fault.trickle(interval, reply=Reply())  the head at once, then the answer (JSON, or a stream's bytes one per
                                         chunk) one byte every `interval` seconds: no read ever waits long,
                                         yet the whole answer takes len(body) * interval (deadline tests)
    Fault.stall_stream(after, gap, reply=Reply())  a stream that sends `after` SSE events, then nothing for
                                         `gap` seconds, then the rest (first-token and idle timeouts)
    Fault.held(gate, then=Reply())       `then`, once the test sets the threading.Event `gate` (or the server
                                         stops): a call that stays in flight exactly as long as the test needs
Billing (`server.billing = Billing()`): every Reply's usage is computed from the body the server received, as a
provider bills it (input: 4 tokens per message plus a quarter token per character of every text part, name, tool
call and argument, tool result, the tools' and the response schema's compact JSON, Anthropic's 530-token tool
prompt, images by each provider's published rule with the size read from a `data:` PNG, else its worst case;
output: min(the body's max_tokens / max_completion_tokens / maxOutputTokens, the Reply's output_tokens) times `n`
/ `candidateCount`); the answer's text then holds 4 characters per output token. `server.bills` lists a Bill per
answered request. `Billing(omit_usage=True)` bills the same but sends no usage at all (JSON and streams), like
OpenAI-compatible servers that ignore `stream_options`.
Recorded headers keep real values (for auth assertions): never print them in tests about secrets.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

__all__ = ["Bill", "Billing", "Call", "FakeServer", "Fault", "RecordedRequest", "Reply", "fake_server"]

_CONTEXT_TOO_LONG = "__context_too_long__"
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_FINISH = {  # normalised finish -> (openai, anthropic, gemini)
    "stop": ("stop", "end_turn", "STOP"),
    "length": ("length", "max_tokens", "MAX_TOKENS"),
    "tool_calls": ("tool_calls", "tool_use", "STOP"),
    "content_filter": ("content_filter", "refusal", "SAFETY"),
}
_KINDS = ("openai", "anthropic", "gemini")


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names, real values
    body: Any  # parsed JSON (None if not JSON)
    raw: bytes
    kind: str
    model: str
    stream: bool
    connection: int  # server-side connection number (1, 2, ...): equal numbers = reused connection
    at: float = field(default_factory=time.monotonic)
    header_lines: list[tuple[str, str]] = field(default_factory=list)  # as sent: order, casing, repeats


@dataclass
class Ctx:
    kind: str
    model: str
    stream: bool
    api_key: str | None
    omit_usage: bool = False
    choices: int = 1  # answers asked for: OpenAI `n`, Gemini `generationConfig.candidateCount` (JSON answers)


@dataclass
class Call:
    """A scripted tool call; `args` is sent as the provider's JSON arguments."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


# ---- the three wire formats ------------------------------------------------------------------------------
def _route(path: str, body: Any) -> tuple[str, str, bool] | None:
    body = body if isinstance(body, dict) else {}
    if path in ("/v1/chat/completions", "/v1/messages"):
        kind = "openai" if path.endswith("completions") else "anthropic"
        return kind, str(body.get("model", "")), bool(body.get("stream"))
    match = re.fullmatch(r"/v1beta/models/([^/:]+):(generateContent|streamGenerateContent)", path)
    return ("gemini", match[1], match[2] == "streamGenerateContent") if match else None


def _choices(kind: str, body: Any) -> int:
    """How many answers a request asks for (OpenAI `n`, Gemini `candidateCount`; Anthropic has no such field)."""
    body = body if isinstance(body, dict) else {}
    config = body.get("generationConfig") if kind == "gemini" else None
    n = config.get("candidateCount") if isinstance(config, dict) else body.get("n") if kind == "openai" else None
    return n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 16 else 1


def _api_key(kind: str, headers: dict[str, str]) -> str | None:
    if kind == "openai":
        auth = headers.get("authorization", "")
        return auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
    return headers.get("x-api-key" if kind == "anthropic" else "x-goog-api-key")


def _error_body(kind: str, status: int, message: str, code: str | None) -> dict[str, Any]:
    if code == _CONTEXT_TOO_LONG:
        message, code = {
            "openai": (
                "This model's maximum context length is 128000 tokens. However, your messages resulted "
                "in 130017 tokens. Please reduce the length of the messages.",
                "context_length_exceeded",
            ),
            "anthropic": ("prompt is too long: 210342 tokens > 200000 maximum", "invalid_request_error"),
            "gemini": (
                "The input token count (1200293) exceeds the maximum number of tokens allowed (1048576).",
                "INVALID_ARGUMENT",
            ),
        }[kind]
    if kind == "anthropic":
        default = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {
            "type": "error",
            "error": {"type": code or default, "message": message},
            "request_id": "req_fake",
        }
    if kind == "gemini":
        default = _GEMINI_STATUS.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
        return {"error": {"code": status, "message": message, "status": code or default}}
    defaults = {401: "invalid_api_key", 429: "rate_limit_exceeded"}
    etype = "server_error" if status >= 500 else "requests" if status == 429 else "invalid_request_error"
    return {"error": {"message": message, "type": etype, "param": None, "code": code or defaults.get(status)}}


def _finish(kind: str, reply: Reply) -> str:
    norm = "tool_calls" if reply.tool_calls and reply.finish == "stop" else reply.finish
    return _FINISH[norm][_KINDS.index(kind)]


def _call_id(i: int, call: Call) -> str:
    return call.id or f"call_{i}"


def _render_json(ctx: Ctx, r: Reply) -> dict[str, Any]:
    calls = list(enumerate(r.tool_calls))
    if ctx.kind == "openai":
        message: dict[str, Any] = {"role": "assistant", "content": r.text or (None if calls else "")}
        if calls:
            message["tool_calls"] = [
                {
                    "id": _call_id(i, c),
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.dumps(c.args)},
                }
                for i, c in calls
            ]
        usage = {
            "prompt_tokens": r.input_tokens,
            "completion_tokens": r.output_tokens,
            "total_tokens": r.input_tokens + r.output_tokens,
        }
        out: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": ctx.model,
            "choices": [
                {"index": i, "message": message, "finish_reason": _finish("openai", r)} for i in range(ctx.choices)
            ],
            "usage": usage,
        }
        return _without_usage(out, "usage") if ctx.omit_usage else out
    if ctx.kind == "anthropic":
        content: list[dict[str, Any]] = [{"type": "text", "text": r.text}] if r.text else []
        content += [{"type": "tool_use", "id": _call_id(i, c), "name": c.name, "input": c.args} for i, c in calls]
        answer: dict[str, Any] = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": ctx.model,
            "content": content,
            "stop_reason": _finish("anthropic", r),
            "stop_sequence": None,
            "usage": {"input_tokens": r.input_tokens, "output_tokens": r.output_tokens},
        }
        return _without_usage(answer, "usage") if ctx.omit_usage else answer
    parts: list[dict[str, Any]] = [{"text": r.text}] if r.text else []
    parts += [{"functionCall": {"name": c.name, "args": c.args}} for _, c in calls]
    reply: dict[str, Any] = {
        "candidates": [
            {"content": {"role": "model", "parts": parts}, "finishReason": _finish("gemini", r), "index": i}
            for i in range(ctx.choices)
        ],
        "usageMetadata": {
            "promptTokenCount": r.input_tokens,
            "candidatesTokenCount": r.output_tokens,
            "totalTokenCount": r.input_tokens + r.output_tokens,
        },
        "modelVersion": ctx.model,
    }
    return _without_usage(reply, "usageMetadata") if ctx.omit_usage else reply


def _without_usage(obj: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != key}


def _sse(ctx: Ctx, obj: Any, event: str | None = None) -> bytes:
    eol = "\r\n" if ctx.kind == "gemini" else "\n"  # Gemini's CRLF framing exercises the client's parser
    lines = ([f"event: {event}"] if event else []) + [f"data: {json.dumps(obj)}"]
    return (eol.join(lines) + eol + eol).encode()


def _pieces(text: str, n: int) -> list[str]:
    size = max(1, -(-len(text) // max(1, n)))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _render_stream(ctx: Ctx, r: Reply, n_chunks: int | None = None) -> Iterator[bytes]:
    pieces, calls = _pieces(r.text, n_chunks or r.chunks), list(enumerate(r.tool_calls))
    if ctx.kind == "openai":
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": ctx.model}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return _sse(ctx, {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        yield chunk({"role": "assistant", "content": ""})
        yield from (chunk({"content": p}) for p in pieces)
        for i, c in calls:
            args = json.dumps(c.args)
            yield chunk(
                {
                    "tool_calls": [
                        {
                            "index": i,
                            "id": _call_id(i, c),
                            "type": "function",
                            "function": {"name": c.name, "arguments": ""},
                        }
                    ]
                }
            )
            for half in (args[: len(args) // 2], args[len(args) // 2 :]):
                yield chunk({"tool_calls": [{"index": i, "function": {"arguments": half}}]})
        yield chunk({}, _finish("openai", r))
        if not ctx.omit_usage:
            yield _sse(
                ctx,
                {
                    **base,
                    "choices": [],
                    "usage": {"prompt_tokens": r.input_tokens, "completion_tokens": r.output_tokens},
                },
            )
        yield b"data: [DONE]\n\n"
    elif ctx.kind == "anthropic":

        def ev(kind: str, **data: Any) -> bytes:
            if ctx.omit_usage:
                data.pop("usage", None)
                if isinstance(data.get("message"), dict):
                    data["message"] = _without_usage(data["message"], "usage")
            return _sse(ctx, {"type": kind, **data}, kind)

        yield ev(
            "message_start",
            message={
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": ctx.model,
                "stop_reason": None,
                "usage": {"input_tokens": r.input_tokens, "output_tokens": 1},
            },
        )
        index = 0
        if pieces:
            yield ev("content_block_start", index=0, content_block={"type": "text", "text": ""})
            yield ev("ping")
            yield from (ev("content_block_delta", index=0, delta={"type": "text_delta", "text": p}) for p in pieces)
            yield ev("content_block_stop", index=0)
            index = 1
        for i, c in calls:
            args = json.dumps(c.args)
            yield ev(
                "content_block_start",
                index=index + i,
                content_block={"type": "tool_use", "id": _call_id(i, c), "name": c.name, "input": {}},
            )
            for half in (args[: len(args) // 2], args[len(args) // 2 :]):
                yield ev(
                    "content_block_delta",
                    index=index + i,
                    delta={"type": "input_json_delta", "partial_json": half},
                )
            yield ev("content_block_stop", index=index + i)
        yield ev(
            "message_delta",
            delta={"stop_reason": _finish("anthropic", r), "stop_sequence": None},
            usage={"output_tokens": r.output_tokens},
        )
        yield ev("message_stop")
    else:
        pieces = pieces or [""]
        for n, p in enumerate(pieces):
            last = n == len(pieces) - 1
            parts: list[dict[str, Any]] = [{"text": p}] if p else []
            candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
            usage: dict[str, Any] = {"promptTokenCount": r.input_tokens}
            if last:
                parts += [{"functionCall": {"name": c.name, "args": c.args}} for _, c in calls]
                candidate["finishReason"] = _finish("gemini", r)
                usage.update(candidatesTokenCount=r.output_tokens, totalTokenCount=r.input_tokens + r.output_tokens)
            piece: dict[str, Any] = {"candidates": [candidate], "usageMetadata": usage, "modelVersion": ctx.model}
            yield _sse(ctx, _without_usage(piece, "usageMetadata") if ctx.omit_usage else piece)


def _stream_error_event(ctx: Ctx) -> bytes:
    if ctx.kind == "anthropic":
        return _sse(ctx, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error")
    if ctx.kind == "gemini":
        return _sse(ctx, {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})
    return _sse(
        ctx,
        {
            "error": {
                "message": "The server had an error while processing your request",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        },
    )


# ---- billing: usage from what a request carries ----------------------------------------------------------
@dataclass
class Billing:
    """Bill every Reply from the request body (see the module docstring); `omit_usage` sends no usage."""

    omit_usage: bool = False


@dataclass(frozen=True)
class Bill:
    """What one answered request was billed, in tokens."""

    model: str
    kind: str
    input_tokens: int
    output_tokens: int


_IMAGE_WORST = {"openai": 85 + 8 * 170, "anthropic": 1600, "gemini": 1120}
_TOOL_PROMPT = {"anthropic": 530}


def _tt(text: Any) -> int:
    return -(-len(text) // 4) if isinstance(text, str) else 0


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _png_size(source: Any) -> tuple[int, int] | None:
    if not isinstance(source, str):
        return None
    payload = source.split(",", 1)[1] if source.startswith("data:") else source
    try:
        raw = base64.b64decode(payload[:64])
    except ValueError:
        return None
    if raw[:8] != b"\x89PNG\r\n\x1a\n" or len(raw) < 24:
        return None
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


def _image_bill(kind: str, source: Any) -> int:
    """An image's tokens by the provider's published rule; its worst case when the size is not in the request."""
    size = _png_size(source)
    if size is None:
        return _IMAGE_WORST[kind]
    w, h = size
    if kind == "openai":
        fit = min(1.0, 2048 / max(w, h))
        scale = fit * min(1.0, 768 / (min(w, h) * fit))
        return 85 + 170 * math.ceil(w * scale / 512) * math.ceil(h * scale / 512)
    if kind == "anthropic":
        scale = min(1.0, 1568 / max(w, h))
        return min(1600, math.ceil(w * h * scale * scale / 750))
    tiles = 1 if w <= 384 and h <= 384 else math.ceil(w / 768) * math.ceil(h / 768)
    return max(1120, 258 * tiles)


def _bill_openai(body: dict[str, Any]) -> tuple[int, Any, Any]:
    tokens = 0
    for m in body.get("messages") or []:
        tokens += 4 + _tt(m.get("name")) + _tt(m.get("tool_call_id"))
        content = m.get("content")
        for part in content if isinstance(content, list) else [{"type": "text", "text": content}]:
            if part.get("type") == "image_url":
                tokens += _image_bill("openai", (part.get("image_url") or {}).get("url"))
            else:
                tokens += _tt(part.get("text"))
        for call in m.get("tool_calls") or []:
            tokens += _tt(call["function"]["name"]) + _tt(call["function"].get("arguments"))
    if body.get("tools"):
        tokens += _tt(_compact(body["tools"]))
    fmt = body.get("response_format") or {}
    if fmt.get("json_schema"):
        tokens += _tt(_compact(fmt["json_schema"].get("schema")))
    return tokens, body.get("max_completion_tokens") or body.get("max_tokens"), body.get("n")


def _bill_anthropic(body: dict[str, Any]) -> tuple[int, Any, Any]:
    tokens = 4 + _tt(body["system"]) if body.get("system") else 0
    for m in body.get("messages") or []:
        tokens += 4
        content = m.get("content")
        for block in content if isinstance(content, list) else [{"type": "text", "text": content}]:
            kind = block.get("type")
            if kind == "image":
                source = block.get("source") or {}
                tokens += _image_bill("anthropic", source.get("url") or source.get("data"))
            elif kind == "tool_use":
                tokens += _tt(block.get("name")) + _tt(_compact(block.get("input")))
            elif kind == "tool_result":
                result = block.get("content")
                tokens += _tt(result if isinstance(result, str) else _compact(result))
            else:
                tokens += _tt(block.get("text"))
    if body.get("tools"):
        tokens += _tt(_compact(body["tools"])) + _TOOL_PROMPT["anthropic"]
    return tokens, body.get("max_tokens"), 1


def _bill_gemini(body: dict[str, Any]) -> tuple[int, Any, Any]:
    system = body.get("systemInstruction")
    tokens = 4 + sum(_tt(p.get("text")) for p in system["parts"]) if system else 0
    for content in body.get("contents") or []:
        tokens += 4
        for part in content.get("parts") or []:
            if "inlineData" in part:
                tokens += _image_bill("gemini", part["inlineData"].get("data"))
            elif "fileData" in part:
                tokens += _image_bill("gemini", part["fileData"].get("fileUri"))
            elif "functionCall" in part:
                tokens += _tt(part["functionCall"].get("name")) + _tt(_compact(part["functionCall"].get("args")))
            elif "functionResponse" in part:
                call = part["functionResponse"]
                tokens += _tt(call.get("name")) + _tt(_compact(call.get("response")))
            else:
                tokens += _tt(part.get("text"))
    if body.get("tools"):
        tokens += _tt(_compact(body["tools"]))
    config = body.get("generationConfig") or {}
    if config.get("responseJsonSchema"):
        tokens += _tt(_compact(config["responseJsonSchema"]))
    return tokens, config.get("maxOutputTokens"), config.get("candidateCount")


def _billed(kind: str, body: Any, reply: Reply) -> tuple[Reply, Bill]:
    """The Reply with the usage a provider of `kind` would bill for `body`, and its Bill."""
    bill = {"openai": _bill_openai, "anthropic": _bill_anthropic, "gemini": _bill_gemini}[kind]
    tokens, limit, n = bill(body if isinstance(body, dict) else {})
    per_choice = min(limit, reply.output_tokens) if isinstance(limit, int) and limit > 0 else reply.output_tokens
    choices = n if isinstance(n, int) and n > 0 else 1
    text = ("lorem ipsum " * (per_choice // 3 + 1))[: 4 * per_choice]
    answer = dataclasses.replace(reply, text=text, input_tokens=tokens, output_tokens=per_choice * choices)
    return answer, Bill("", kind, tokens, per_choice * choices)


# ---- behaviours ------------------------------------------------------------------------------------------
class Behaviour:
    def run(self, h: Handler, ctx: Ctx) -> None:
        raise NotImplementedError


@dataclass
class Reply(Behaviour):
    """A successful answer (JSON, or SSE when the request streams); `delay` waits before answering."""

    text: str = "ok"
    tool_calls: list[Call] = field(default_factory=list)
    input_tokens: int = 10
    output_tokens: int = 5
    finish: str = "stop"  # stop | length | tool_calls | content_filter (rendered per wire format)
    delay: float = 0.0
    chunk_delay: float = 0.0
    chunks: int = 3  # how many text deltas a stream carries

    def run(self, h: Handler, ctx: Ctx) -> None:
        if self.delay and h.server.stopping.wait(self.delay):
            return
        if not ctx.stream:
            h.send_json(200, _render_json(ctx, self))
            return
        h.start_stream()
        for event in _render_stream(ctx, self):
            if self.chunk_delay and h.server.stopping.wait(self.chunk_delay):
                return
            h.write_chunk(event)
        h.end_stream()


@dataclass
class _Status(Behaviour):
    status: int
    message: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    echo_key: bool = False

    def run(self, h: Handler, ctx: Ctx) -> None:
        message = self.message or f"scripted error {self.status}"
        if self.echo_key:
            message += f" (you sent key {ctx.api_key})"
        h.send_json(self.status, _error_body(ctx.kind, self.status, message, self.code), self.headers)


@dataclass
class _Hang(Behaviour):
    seconds: float

    def run(self, h: Handler, ctx: Ctx) -> None:
        h.server.stopping.wait(self.seconds)
        h.close_connection = True


@dataclass
class _Held(Behaviour):
    gate: threading.Event
    then: Behaviour

    def run(self, h: Handler, ctx: Ctx) -> None:
        while not self.gate.wait(0.01):
            if h.server.stopping.is_set():
                h.close_connection = True
                return
        self.then.run(h, ctx)


@dataclass
class _Drop(Behaviour):
    rst: bool

    def run(self, h: Handler, ctx: Ctx) -> None:
        h.drop(self.rst)


@dataclass
class _Raw(Behaviour):
    status: int
    body: bytes
    content_type: str = "application/json"

    def run(self, h: Handler, ctx: Ctx) -> None:
        h.send_bytes(self.status, self.body, self.content_type)


@dataclass
class _ContentFiltered(Behaviour):
    def run(self, h: Handler, ctx: Ctx) -> None:
        if ctx.kind == "gemini":  # prompt blocked: no candidates, only promptFeedback
            blocked = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 7}}
            if not ctx.stream:
                h.send_json(200, blocked)
                return
            h.start_stream()
            h.write_chunk(_sse(ctx, blocked))
            h.end_stream()
            return
        Reply(text="", finish="content_filter").run(h, ctx)


@dataclass
class _StreamFault(Behaviour):
    after: int
    abort: bool = True
    error: bool = False

    def run(self, h: Handler, ctx: Ctx) -> None:
        if not ctx.stream:  # not a stream request: behave like a cut connection
            h.drop(True)
            return
        h.start_stream()
        for event in list(_render_stream(ctx, Reply(text="partial answer text"), n_chunks=6))[: self.after]:
            h.write_chunk(event)
        if self.error:
            h.write_chunk(_stream_error_event(ctx))
            h.end_stream()
        elif self.abort:
            h.server.stopping.wait(0.05)  # let the client read what was sent: an RST discards unread data
            h.drop(True)
        else:
            h.end_stream()


@dataclass
class _Trickle(Behaviour):
    interval: float
    reply: Reply

    def run(self, h: Handler, ctx: Ctx) -> None:
        if ctx.stream:
            h.start_stream()
            data = b"".join(_render_stream(ctx, self.reply))
        else:
            data = json.dumps(_render_json(ctx, self.reply)).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
        for i in range(len(data)):  # a client that gives up makes a write fail (OSError: ignored by the server)
            if h.server.stopping.wait(self.interval):
                h.close_connection = True
                return
            if ctx.stream:
                h.write_chunk(data[i : i + 1])
            else:
                h.wfile.write(data[i : i + 1])
                h.wfile.flush()
        if ctx.stream:
            h.end_stream()


@dataclass
class _Stall(Behaviour):
    after: int
    gap: float
    reply: Reply

    def run(self, h: Handler, ctx: Ctx) -> None:
        if not ctx.stream:  # not a stream request: the whole answer after the gap
            Reply(**{**vars(self.reply), "delay": self.gap}).run(h, ctx)
            return
        h.start_stream()
        events = list(_render_stream(ctx, self.reply))
        for event in events[: self.after]:
            h.write_chunk(event)
        if h.server.stopping.wait(self.gap):
            h.close_connection = True
            return
        for event in events[self.after :]:
            h.write_chunk(event)
        h.end_stream()


class Fault:
    """Constructors for scripted failures (see the module docstring)."""

    @staticmethod
    def status(
        code: int,
        *,
        retry_after: float | str | None = None,
        retry_after_ms: float | None = None,
        message: str | None = None,
        error_code: str | None = None,
    ) -> Behaviour:
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        return _Status(code, message, error_code, headers)

    @staticmethod
    def rate_limited(retry_after: float | str | None = 1) -> Behaviour:
        return Fault.status(429, retry_after=retry_after, message="Rate limit reached, slow down")

    @staticmethod
    def server_error(code: int = 500) -> Behaviour:
        return Fault.status(code, message="The server had an error while processing your request")

    @staticmethod
    def overloaded() -> Behaviour:
        return _Status(529, "Overloaded", "overloaded_error")

    @staticmethod
    def auth(echo_key: bool = False) -> Behaviour:
        return _Status(401, "Incorrect API key provided", None, echo_key=echo_key)

    @staticmethod
    def context_too_long() -> Behaviour:
        return _Status(400, None, _CONTEXT_TOO_LONG)

    @staticmethod
    def content_filtered() -> Behaviour:
        return _ContentFiltered()

    @staticmethod
    def hang(seconds: float = 30.0) -> Behaviour:
        return _Hang(seconds)

    @staticmethod
    def reset() -> Behaviour:
        return _Drop(rst=True)

    @staticmethod
    def close() -> Behaviour:
        return _Drop(rst=False)

    @staticmethod
    def malformed(body: bytes = b'{"choices": [{"message": ') -> Behaviour:
        return _Raw(200, body)

    @staticmethod
    def raw(status: int, body: bytes, content_type: str = "application/json") -> Behaviour:
        return _Raw(status, body, content_type)

    @staticmethod
    def cut_stream(after: int = 2, abort: bool = True) -> Behaviour:
        return _StreamFault(after, abort=abort)

    @staticmethod
    def stream_error(after: int = 2) -> Behaviour:
        return _StreamFault(after, error=True)

    @staticmethod
    def slow(delay: float, text: str = "slow answer") -> Behaviour:
        return Reply(text=text, delay=delay)

    @staticmethod
    def trickle(interval: float = 0.2, reply: Reply | None = None) -> Behaviour:
        return _Trickle(interval, reply if reply is not None else Reply())

    @staticmethod
    def stall_stream(after: int = 0, gap: float = 30.0, reply: Reply | None = None) -> Behaviour:
        return _Stall(after, gap, reply if reply is not None else Reply(text="partial answer text", chunks=6))

    @staticmethod
    def held(gate: threading.Event, then: Behaviour | None = None) -> Behaviour:
        return _Held(gate, then if then is not None else Reply())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle/delayed-ACK stalls
        self.conn_id = self.server.fake._connected(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        self.server.fake._disconnected(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        parts = urlsplit(self.path)
        route = _route(parts.path, body)
        if route is None:
            self.send_json(404, {"error": {"message": f"no route for {parts.path}"}})
            return
        kind, model, stream = route
        headers = {k.lower(): v for k, v in self.headers.items()}
        ctx = Ctx(kind, model, stream, _api_key(kind, headers), choices=_choices(kind, body))
        fake = self.server.fake
        fake._record(
            RecordedRequest(
                "POST",
                parts.path,
                parse_qs(parts.query),
                headers,
                body,
                raw,
                kind,
                model,
                stream,
                self.conn_id,
                header_lines=list(self.headers.items()),
            )
        )
        behaviour = fake._next(model)
        if fake.api_key is not None and ctx.api_key != fake.api_key:
            behaviour = _Status(401, "invalid x-api-key" if kind == "anthropic" else "API key not valid")
        billing = fake.billing
        if billing is not None and isinstance(behaviour, Reply):
            behaviour, bill = _billed(kind, body, behaviour)
            fake._bill(dataclasses.replace(bill, model=model))
            ctx.omit_usage = billing.omit_usage
        behaviour.run(self, ctx)

    # ---- low-level writers -------------------------------------------------------------------------------
    def send_bytes(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self.send_bytes(status, json.dumps(obj).encode(), "application/json", headers)

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def drop(self, rst: bool) -> None:
        """Close the socket now: with RST (SO_LINGER 0) or a plain FIN."""
        self.close_connection = True
        if rst:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            self.connection.shutdown(socket.SHUT_RDWR)
        self.connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256  # socketserver's default backlog of 5 drops bursts of new connections (load tests)
    fake: FakeServer
    stopping: threading.Event

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # the client left mid-answer: expected in fault tests
            return
        super().handle_error(request, client_address)


class FakeServer:
    """The scriptable server (see the module docstring); start()/stop() or use as a context manager."""

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.billing: Billing | None = None  # bill every Reply from the request it answers (see Billing)
        self._bills: list[Bill] = []
        self.default: Behaviour = Reply()
        self._scripts: dict[str, deque[Behaviour]] = {}
        self._always: dict[str, Behaviour] = {}
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Condition()
        self._open: set[socket.socket] = set()
        self.connections = 0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> FakeServer:
        httpd = _Server(("127.0.0.1", 0), Handler)
        httpd.fake, httpd.stopping = self, threading.Event()
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.stopping.set()
        self._httpd.shutdown()
        with self._lock:
            for sock in list(self._open):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._httpd.server_close()
        self._httpd = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def base_url(self, kind: str) -> str:
        return f"{self.url}/v1" if kind == "openai" else self.url

    # ---- scripting ---------------------------------------------------------------------------------------
    def script(self, model: str, behaviours: Behaviour | Iterable[Behaviour]) -> None:
        items = [behaviours] if isinstance(behaviours, Behaviour) else list(behaviours)
        with self._lock:
            self._scripts.setdefault(model, deque()).extend(items)

    def always(self, model: str, behaviour: Behaviour) -> None:
        with self._lock:
            self._always[model] = behaviour

    def pending(self, model: str) -> int:
        with self._lock:
            return len(self._scripts.get(model, ()))

    def _next(self, model: str) -> Behaviour:
        with self._lock:
            queue = self._scripts.get(model)
            if queue:
                return queue.popleft()
            return self._always.get(model, self.default)

    # ---- recording ---------------------------------------------------------------------------------------
    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()

    def _connected(self, sock: socket.socket) -> int:
        with self._lock:
            self.connections += 1
            self._open.add(sock)
            return self.connections

    def _disconnected(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    def _bill(self, bill: Bill) -> None:
        with self._lock:
            self._bills.append(bill)

    @property
    def bills(self) -> list[Bill]:
        """A Bill per request answered in billing mode, in arrival order."""
        with self._lock:
            return list(self._bills)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def last(self) -> RecordedRequest:
        with self._lock:
            return self._requests[-1]

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= n, timeout):
                raise TimeoutError(f"expected {n} requests, got {len(self._requests)}")
            return list(self._requests)


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    """A started FakeServer, stopped after the test."""
    with FakeServer() as server:
        yield server
