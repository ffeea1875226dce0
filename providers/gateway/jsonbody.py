"""Reading a request body for the gateway: its bytes in, JSON that can be sent upstream as it is out, or an
ApiError (an OpenAI-style 4xx error: status plus {"error": {"message", "type", "code", "param"}}) naming the
mistake: not UTF-8, not JSON, NaN / Infinity / numbers beyond a double, lone surrogates, nesting too deep; and a
field's value in, that value out if it is an object (or a string), else an ApiError naming the field."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

#: How deeply a request body may nest (the body object is level 1): far beyond any real tool schema, shallow
#: enough that no recursive reader (pydantic, json.dumps upstream, explain's trace) runs out of stack.
MAX_DEPTH = 64


class ApiError(Exception):
    """An OpenAI-style error: HTTP status plus {"error": {"message", "type", "code", "param"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


def internal_error() -> ApiError:
    """The 500 the gateway answers when its own code fails: the exception is logged, never sent to the client."""
    return ApiError(500, "internal error in the gateway (logged)", type="server_error", code="internal_error")


def bad(message: str, code: str = "invalid_value", param: str | None = None) -> ApiError:
    return ApiError(400, message, code=code, param=param)


def object_at(value: Any, where: str) -> dict[str, Any]:
    """`value` if it is a JSON object, else a 400 naming the field `where`."""
    if not isinstance(value, dict):
        raise bad(f"`{where}` must be an object", param=where)
    return value


def text_at(value: Any, where: str) -> str:
    """`value` if it is a string, else a 400 naming the field `where`."""
    if not isinstance(value, str):
        raise bad(f"`{where}` must be a string", param=where)
    return value


# ---- reading JSON that can be sent on ---------------------------------------------------------------------
class _NotFinite(Exception):
    """NaN, Infinity, or a number too large for a double (`1e999`), met while decoding (not a ValueError, so the
    decoder's own errors stay apart)."""


def _no_constant(name: str) -> Any:
    raise _NotFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotFinite(text)
    return value


# Python's json reads NaN / Infinity and turns 1e999 into inf; none of them can be written as JSON again
_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_no_constant)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # how a surrogate is written in JSON text
_SURROGATE = re.compile("[\ud800-\udfff]")


def _short(text: str, limit: int = 40) -> str:
    """A client-given name for an error message: at most `limit` characters, unprintable ones escaped."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return shown if shown.isprintable() else repr(shown)[1:-1]


def _not_finite(err: _NotFinite) -> ApiError:
    text = _short(str(err))
    if text.lstrip("-") in ("NaN", "Infinity"):
        return bad(f"malformed JSON body: `{text}` is not JSON (no NaN or Infinity)", "invalid_json")
    return bad(f"number `{text}` is out of range (larger than a double)", "invalid_value")


def _depth_over(value: Any, limit: int) -> bool:
    """Whether the container `value` nests more than `limit` levels (`[]` is 1, `[[]]` 2): level by level, no
    recursion, each value looked at once."""
    level, depth = [value], 0
    while level:
        if depth >= limit:
            return True
        depth += 1
        below: list[Any] = []
        add = below.append
        for node in level:
            for child in node.values() if type(node) is dict else node:
                kind = type(child)
                if kind is dict or kind is list:
                    add(child)
        level = below
    return False


def _check_depth(body: dict[str, Any]) -> None:
    for name, value in body.items():
        if isinstance(value, (dict, list)) and _depth_over(value, MAX_DEPTH - 1):
            raise bad(f"`{_short(name)}` is nested too deeply (over {MAX_DEPTH} levels)", param=name[:64])


def _unsendable(value: Any, where: str) -> tuple[str, str] | None:
    """The first value under `value` that JSON sent upstream cannot carry, as (what, path): a string or key with
    a lone surrogate, a NaN or infinite float, a key that is not a string. Iterative, any depth."""
    stack = [(value, where)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                return "a lone surrogate (\\ud800-\\udfff)", path
        elif isinstance(node, float):
            if not math.isfinite(node):
                return "NaN or Infinity", path
        elif isinstance(node, dict):
            for key, child in node.items():
                sub = f"{path}.{key}" if path else str(key)
                if not isinstance(key, str):
                    return "a key that is not a string", sub
                if _SURROGATE.search(key):
                    return "a lone surrogate (\\ud800-\\udfff)", sub
                stack.append((child, sub))
        elif isinstance(node, (list, tuple)):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(node))
    return None


def _check_sendable(body: Any) -> None:
    found = _unsendable(body, "")
    if found is not None:
        what, path = found
        raise bad(f"`{_short(path, 60)}` holds {what}: JSON sent upstream cannot carry it", param=path[:64] or None)


def read_json(raw: bytes) -> Any:
    """A request body's bytes as JSON that can be sent on as it is; raises ApiError (400) for bytes that are not
    UTF-8 JSON, for NaN / Infinity / numbers beyond a double, for lone surrogates (escaped `\\ud800`) in any
    string, and for nesting deeper than MAX_DEPTH. Cheap on ordinary bodies: the values are searched for
    surrogates only when the text has a surrogate escape (`\\udXXX`; a raw encoded surrogate is not UTF-8), and
    the depth is walked (a step per value, not per character) only for a text over 1 KiB or with more than
    MAX_DEPTH brackets."""
    try:
        text = raw.decode(json.detect_encoding(raw))  # strict: a UTF-8-encoded surrogate is not UTF-8
    except UnicodeDecodeError as exc:
        raise bad(f"malformed JSON body: not UTF-8 text (byte {exc.start})", "invalid_json") from None
    try:
        body = _DECODER.decode(text)
    except _NotFinite as exc:
        raise _not_finite(exc) from None
    except RecursionError:
        raise bad("malformed JSON body: nested too deeply", "invalid_json") from None
    except json.JSONDecodeError as exc:
        raise bad(f"malformed JSON body: {_short(str(exc), 120)}", "invalid_json") from None
    except ValueError:  # Python's limit on the digits of an int (4300 by default)
        raise bad("malformed JSON body: a number has too many digits", "invalid_json") from None
    if "\\" in text and _SURROGATE_ESCAPE.search(text):
        _check_sendable(body)
    if isinstance(body, dict) and (len(text) > 1024 or text.count("[") + text.count("{") > MAX_DEPTH):
        _check_depth(body)
    return body
