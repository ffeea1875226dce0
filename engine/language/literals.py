"""Literals: the text of a unit-bearing literal (a number, duration, amount, price or percentage, as the grammar's
terminals spell it) in, its normalised value out; the one conversion for the parsers and for request values
(engine/runtime/units.py reads request attributes with it)."""

from __future__ import annotations

__all__ = ["DURATION_UNITS", "LITERAL_PATTERNS", "count_value", "literal_value"]

_SCALE = {"": 1.0, "k": 1e3, "M": 1e6}
#: Seconds per duration unit (the grammar's DURATION terminal: ms, s, m, h).
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

#: The text of each unit-bearing literal kind, as the grammar's terminals (grammar/route.lark) spell them.
LITERAL_PATTERNS = {
    "price": r"\$[0-9]+(?:\.[0-9]+)?/(?:[0-9]+(?:\.[0-9]+)?[kM]?|[kM])",
    "money": r"\$[0-9]+(?:\.[0-9]+)?",
    "duration": r"[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h)",
    "percent": r"[0-9]+(?:\.[0-9]+)?%",
    "count": r"[0-9]+(?:\.[0-9]+)?[kM]?",
}


def count_value(text: str) -> float:
    """`30k` -> 30000.0, `1M` -> 1e6, `2.5` -> 2.5."""
    if text[-1] in "kM":
        return float(text[:-1]) * _SCALE[text[-1]]
    return float(text)


def literal_value(kind: str, text: str) -> float:
    """The normalised value of a literal of `kind` written as `text` (which matches LITERAL_PATTERNS[kind]):
    count -> number, duration -> seconds, money -> USD, price -> USD per token, percent -> fraction. ValueError
    for a price per zero tokens."""
    if kind == "count":
        return count_value(text)
    if kind == "duration":
        unit = "ms" if text.endswith("ms") else text[-1]
        return float(text[: -len(unit)]) * DURATION_UNITS[unit]
    if kind == "money":
        return float(text[1:])
    if kind == "price":
        amount, per = text[1:].split("/")
        per_tokens = count_value(per) if per[0].isdigit() else _SCALE[per]
        if per_tokens == 0:
            raise ValueError("a price must be per a positive number of tokens, e.g. $3/1M")
        return float(amount) / per_tokens
    if kind == "percent":
        return float(text[:-1]) / 100
    raise ValueError(f"not a unit kind: {kind}")
