"""Token counting, the one token counter of the project: a prompt, chat messages, tools and a response schema in,
an estimated input token count out (per provider kind, since images cost differently on each).

Text is counted by an estimator `fn(text) -> int`: by default one token per four characters, rounded up (the
usual rule of thumb for English with BPE tokenizers), deliberately cheap since decide() must not spend more time
counting than deciding. An exact tokenizer (`set tokens.estimator = "tiktoken:cl100k_base"`, `modelroute serve
--tokenizer`, `Engine.load(..., token_estimator=...)`; loaded by engine/runtime/tokenizer.py) is applied to every
piece of text counted here. A chat message costs MESSAGE_OVERHEAD tokens of framing plus the text of every part:
its content (a string or text parts), its name, the name and arguments of each tool call it makes, and the
tool call id a tool result answers. Images cost what engine.runtime.images says for their provider kind; audio
(`input_audio` parts: seconds from the bytes) and documents (`file` parts: PDF pages from the bytes, a `file_id` at
a fixed count) what engine.runtime.media says for it; nothing remote is ever fetched. Tools
and a response-format schema are counted as their JSON text, plus what providers wrap them in (TOOL_PROMPT,
SCHEMA_FRAMING). Execution counts what it sends upstream with
`count_request`; decide() counts messages with `from_messages` (images at the worst kind).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.runtime.images import IMAGE_KINDS, image_size, image_tokens, parse_data_url
from engine.runtime.media import UNKNOWN_PAGES, Media, audio_seconds, document_pages, media_tokens
from engine.runtime.messages import IMAGE_PART_TYPES, content_text, has_images

__all__ = [
    "MESSAGE_OVERHEAD",
    "SCHEMA_FRAMING",
    "TOOL_PROMPT",
    "TokenCount",
    "TokenEstimator",
    "count_request",
    "count_text",
    "estimate_tokens",
    "from_messages",
    "has_images",
    "json_text",
    "message_text",
]

TokenEstimator = Callable[[str], int]
MESSAGE_OVERHEAD = 4
Size = tuple[int, int] | None


def estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


#: The text of one message's content (a string, or the text parts of a list): the message reader's, so token
#: counting reads messages exactly as the gateway and execution do.
message_text = content_text


#: Tokens a provider adds to a request with tools, per kind: Anthropic's tool-use system prompt, at most 530
#: tokens (its "tool use pricing" page: Claude 3 Opus with tool_choice auto; 159-395 for other models).
TOOL_PROMPT = {"anthropic": 530}
#: Tokens of the framing around a response-format schema (Anthropic gets it as a ~25-token instruction).
SCHEMA_FRAMING = 32


@dataclass(frozen=True)
class TokenCount:
    """Input tokens of a request: `text` (every piece of text and the framing), the `images`' sizes (None for
    one whose size could not be read), whether it has `tools` (some providers add a prompt for them) and its
    `media`: ("audio", seconds) per audio part, ("pages", pages) per document part."""

    text: int
    images: tuple[Size, ...] = ()
    tools: bool = False
    media: tuple[Media, ...] = ()

    def for_kind(self, kind: str | None) -> int:
        """The tokens a provider of `kind` bills for this input (None: the largest over every kind)."""
        if kind == "azure":  # Azure OpenAI serves OpenAI's models and counts as OpenAI does
            kind = "openai"
        if kind not in IMAGE_KINDS:
            return self.worst
        extra = TOOL_PROMPT.get(kind, 0) if self.tools else 0
        extra += sum(media_tokens(m, kind) for m in self.media)
        return self.text + extra + sum(image_tokens(size, kind) for size in self.images)

    @property
    def worst(self) -> int:
        """The largest count over every provider kind."""
        if not self.images and not self.tools and not self.media:
            return self.text
        return max(self.for_kind(kind) for kind in IMAGE_KINDS)


def json_text(value: Any) -> str:
    """`value` as JSON text for counting ("" when it cannot be serialised at all: such a request is refused
    before it is sent, so it costs nothing)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except (ValueError, TypeError, RecursionError):
        return ""


def count_text(text: str, estimator: TokenEstimator = estimate_tokens) -> int:
    """The estimator's count of `text`, as a whole number of tokens >= 0."""
    if not text:
        return 0
    n = estimator(text)
    return n if n.__class__ is int else max(0, math.ceil(float(n)))


def _image_size_of(part: Any) -> Size:
    """The size of an image part: an OpenAI-format dict or an object with `url` / `data`."""
    if isinstance(part, Mapping):
        raw = part.get("image_url")
        url = raw.get("url") if isinstance(raw, Mapping) else raw
        url = url if isinstance(url, str) else part.get("url")
        data = part.get("data")
        return image_size(url if isinstance(url, str) else None, data if isinstance(data, str) else None)
    url, data = getattr(part, "url", None), getattr(part, "data", None)
    return image_size(url if isinstance(url, str) else None, data if isinstance(data, str) else None)


def _media_of(part: Any) -> Media | None:
    """("audio", seconds) of an audio part, ("pages", pages) of a document part (an OpenAI-format dict or a read
    part), or None for any other part. A document without bytes (a `file_id`) is UNKNOWN_PAGES pages."""
    if isinstance(part, Mapping):
        kind = part.get("type")
        raw = part.get("input_audio") if kind == "input_audio" else part.get("file") if kind == "file" else None
        if not isinstance(raw, Mapping):
            return None
        if kind == "input_audio":
            data, fmt = raw.get("data"), raw.get("format")
            return ("audio", audio_seconds(data, str(fmt))) if isinstance(data, str) else None
        data = raw.get("file_data")
        if isinstance(data, str):
            parsed = parse_data_url(data)
            data = parsed[1] if parsed is not None else data
    else:
        kind, data = getattr(part, "type", None), getattr(part, "data", None)
        if kind == "audio":
            return (
                ("audio", audio_seconds(data, str(getattr(part, "format", "wav")))) if isinstance(data, str) else None
            )
        if kind != "file":
            return None
    return ("pages", document_pages(data) if isinstance(data, str) and data else UNKNOWN_PAGES)


def _parts(content: list[Any] | tuple[Any, ...], images: list[Size], media: list[Media]) -> None:
    """Append the sizes of the image parts of `content` to `images`, the audio and document parts to `media`."""
    for p in content:
        if isinstance(p, Mapping):
            kind = p.get("type")
            if kind in IMAGE_PART_TYPES:
                images.append(_image_size_of(p))
            elif kind in ("input_audio", "file") and (m := _media_of(p)) is not None:
                media.append(m)
        elif not isinstance(getattr(p, "text", None), str):
            found = _media_of(p)
            if found is not None:
                media.append(found)
            elif getattr(p, "type", "image") not in ("audio", "file"):
                images.append(_image_size_of(p))


def _dict_message(
    msg: Mapping[str, Any], count: TokenEstimator, images: list[Size], media: list[Media]
) -> tuple[str, int]:
    """(content text, tokens) of an OpenAI-format message dict; its images' sizes are appended to `images`, its
    audio and documents to `media`."""
    content = msg.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = content_text(content)
        _parts(content, images, media)
    else:
        text = ""
    tokens = MESSAGE_OVERHEAD + count_text(text, count)
    if len(msg) == 2 and "content" in msg:  # role and content only: the common case, kept short
        return text, tokens
    for key in ("name", "tool_call_id"):
        value = msg.get(key)
        if isinstance(value, str):
            tokens += count_text(value, count)
    calls = msg.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            fn = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(fn, Mapping):
                tokens += count_text(json_text(fn.get("name")), count)
                tokens += count_text(json_text(fn.get("arguments")), count)
    return text, tokens


def _object_message(msg: Any, count: TokenEstimator, images: list[Size], media: list[Media]) -> tuple[str, int]:
    """(content text, tokens) of a read message (engine.runtime.messages.ChatMessage or providers.types.Message)."""
    content = getattr(msg, "content", "")
    if isinstance(content, str):
        text = content
    else:
        text = "\n".join(p.text for p in content if isinstance(getattr(p, "text", None), str))
        _parts(content, images, media)
    tokens = MESSAGE_OVERHEAD + count_text(text, count)
    for value in (getattr(msg, "name", None), getattr(msg, "tool_call_id", None)):
        if isinstance(value, str):
            tokens += count_text(value, count)
    for call in getattr(msg, "tool_calls", ()) or ():
        tokens += count_text(str(call.name), count) + count_text(str(call.arguments), count)
    return text, tokens


def _messages(
    messages: Iterable[Any], count: TokenEstimator, images: list[Size], media: list[Media]
) -> tuple[str, int]:
    """(task text: the last user message's, tokens of every message)."""
    task, total = "", 0
    for msg in messages:
        if isinstance(msg, (dict, Mapping)):  # dict first: the ABC check is slower
            text, tokens = _dict_message(msg, count, images, media)
            role = msg.get("role")
        else:
            text, tokens = _object_message(msg, count, images, media)
            role = getattr(msg, "role", None)
        total += tokens
        if role == "user":
            task = text
    return task, total


def from_messages(messages: Iterable[Any], estimator: TokenEstimator) -> tuple[str, int]:
    """(task text, tokens): the task text is the last user message; tokens count every message, images, audio and
    documents at the largest cost over every provider kind (decide() does not know the provider yet)."""
    images: list[Size] = []
    media: list[Media] = []
    task, total = _messages(messages, estimator, images, media)
    if images or media:
        return task, TokenCount(total, tuple(images), media=tuple(media)).worst
    return task, total


def count_request(
    messages: Iterable[Any],
    estimator: TokenEstimator = estimate_tokens,
    *,
    system: str | None = None,
    tools: Any = None,
    response_format: Any = None,
) -> TokenCount:
    """The input tokens of a request as sent: every message (OpenAI-format dicts or read messages), the `system`
    text (one more message), the tools and the response-format schema (as JSON text)."""
    images: list[Size] = []
    media: list[Media] = []
    _, total = _messages(messages, estimator, images, media)
    if system:
        total += MESSAGE_OVERHEAD + count_text(system, estimator)
    total += count_text(json_text(tools or None), estimator)
    if response_format:
        total += SCHEMA_FRAMING + count_text(json_text(response_format), estimator)
    return TokenCount(total, tuple(images), bool(tools), tuple(media))
