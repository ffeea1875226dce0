"""Token estimation: prompt text or chat messages in, an estimated input token count out.

The default estimator counts one token per four characters (rounded up), the usual rule of thumb for
English text with BPE tokenizers, plus four tokens of framing per chat message. It is deliberately cheap:
decide() must not spend more time counting than deciding. Plug in a real tokenizer with
`Engine.load(..., token_estimator=fn)` where `fn(text: str) -> int`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from engine.runtime.messages import content_text, has_images

__all__ = ["MESSAGE_OVERHEAD", "TokenEstimator", "estimate_tokens", "from_messages", "has_images", "message_text"]

TokenEstimator = Callable[[str], int]
MESSAGE_OVERHEAD = 4


def estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


#: The text of one message's content (a string, or the text parts of a list): the message reader's, so token
#: counting reads messages exactly as the gateway and execution do.
message_text = content_text


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
