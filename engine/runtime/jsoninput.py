"""Request input read from files and the command line: JSON text in, checked Python values out (bounded depth,
OpenAI-format messages), so deep or malformed input is refused as bad input before anything recurses on it."""

from __future__ import annotations

import json
from typing import Any

from engine.runtime.messages import read_messages

#: JSON read from the command line or a file (--attr, --messages, --prompts) may nest this deep; deeper is
#: refused as bad input.
MAX_JSON_DEPTH = 64


class TooDeepError(ValueError):
    """JSON that nests deeper than MAX_JSON_DEPTH."""


def _depth(value: Any) -> int:
    """How deep lists and objects nest in a JSON value (a scalar is 0), without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, level)
            if level <= MAX_JSON_DEPTH:  # deeper is refused anyway: stop counting
                todo.extend((x, level + 1) for x in (item.values() if isinstance(item, dict) else item))
    return deepest


def load_json(text: str) -> Any:
    """JSON from the command line or a file it names. Raises ValueError when it is not JSON, TooDeepError when it
    nests deeper than MAX_JSON_DEPTH (deeper input would exhaust the stack further on)."""
    try:
        value = json.loads(text)
    except RecursionError:
        value, deep = None, True
    else:
        deep = _depth(value) > MAX_JSON_DEPTH
    if deep:
        raise TooDeepError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI-format chat messages as read from a file, checked by the one message reader (read as the executor
    reads them: leniently). Raises ValueError (a MessageError) naming the first field that cannot be read."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError("expected a JSON list of {role, content} objects")
    read_messages(messages, lenient=True)
    return messages
