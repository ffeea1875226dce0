"""Token estimation: prompt text or chat messages in, an estimated input token count out.

The default estimator counts one token per four characters (rounded up), the usual rule of thumb for
English text with BPE tokenizers, plus four tokens of framing per chat message. It is deliberately cheap:
decide() must not spend more time counting than deciding. Plug in a real tokenizer with
`Engine.load(..., token_estimator=fn)` where `fn(text: str) -> int`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

TokenEstimator = Callable[[str], int]
MESSAGE_OVERHEAD = 4


def estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def message_text(content: Any) -> str:
    """The text of an OpenAI-format message content: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, Mapping) and part.get("type") == "text":
            parts.append(str(part.get("text", "")))
        elif isinstance(part, str):
            parts.append(part)
    return "\n".join(parts)


def has_images(messages: Iterable[Mapping[str, Any]]) -> bool:
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") in ("image_url", "image", "input_image"):
                    return True
    return False


def from_messages(messages: list[Mapping[str, Any]], estimator: TokenEstimator) -> tuple[str, int]:
    """(task text, tokens): the task text is the last user message; tokens count every message."""
    task = ""
    total = 0
    for msg in messages:
        text = message_text(msg.get("content"))
        total += estimator(text) + MESSAGE_OVERHEAD
        if msg.get("role") == "user":
            task = text
    return task, total
