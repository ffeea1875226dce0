"""Units: literal text in, its kind and normalised value out (in the policy and in request attributes); which
kind each metric takes, and how numbers of each kind are shown back to people."""

from __future__ import annotations

import decimal
import math
import numbers
import re

from engine.language.literals import LITERAL_PATTERNS, literal_value

#: metric -> the literal kind it compares with.
METRIC_KIND = {
    "tokens": "count",
    "latency": "duration",
    "price": "price",
    "cost": "money",
    "context": "count",
    "capability": "count",
}

#: How to write a value of each kind, for hints.
EXAMPLES = {
    "count": "a plain number such as 6, 30k or 1M",
    "duration": "a duration such as 800ms, 2s, 5m or 1h",
    "price": "a price per token such as $15/1M or $0.003/1k",
    "money": "an amount in dollars such as $0.05",
    "percent": "a percentage such as 20%",
    "fraction": "a number from 0 to 1 such as 0.95, or a percentage such as 95%",
    "string": 'a string such as "pro"',
    "bool": "true or false",
    "name": "a bare name",
}

KIND_NAMES = {
    "count": "a number",
    "duration": "a duration",
    "price": "a price per token",
    "money": "a dollar amount",
    "percent": "a percentage",
    "fraction": "a fraction (0-1)",
    "string": "a string",
    "bool": "a boolean",
    "name": "a name",
    "list": "a list",
}


def fmt_count(x: float) -> str:
    if x >= 1_000_000 and x % 100_000 == 0:
        return f"{x / 1_000_000:g}M"
    if x >= 1000 and x % 100 == 0:
        return f"{x / 1000:g}k"
    return f"{x:g}"


def fmt_seconds(s: float) -> str:
    if s >= 3600 and s % 3600 == 0:
        return f"{s / 3600:g}h"
    if s >= 60 and s % 60 == 0:
        return f"{s / 60:g}m"
    return f"{s:g}s" if s >= 1 and (s * 10) % 1 == 0 else f"{s * 1000:g}ms"


def fmt_plain(x: float) -> str:
    """A number as a policy writes it: plain decimals, never an exponent (1e-09 -> 0.000000001), which the
    language does not read."""
    text = f"{x:g}"
    if "e" not in text:
        return text
    plain = format(decimal.Decimal(repr(float(x))), "f")
    return plain.rstrip("0").rstrip(".") if "." in plain else plain


def fmt_ms(ms: float) -> str:
    return f"{ms:g}ms"


def fmt_price(per_token: float) -> str:
    return f"${per_token * 1e6:.2f}/1M"


def fmt_money(usd: float) -> str:
    if usd == 0:
        return "$0"
    if usd >= 0.01:
        return f"${usd:.4f}".rstrip("0").rstrip(".") if usd < 1 else f"${usd:.2f}"
    return f"${usd:.6f}".rstrip("0")


def fmt_value(kind: str, value: object) -> str:
    if kind == "count":
        return fmt_count(float(value))  # type: ignore[arg-type]
    if kind == "duration":
        return fmt_seconds(float(value))  # type: ignore[arg-type]
    if kind == "price":
        return fmt_price(float(value))  # type: ignore[arg-type]
    if kind == "money":
        return fmt_money(float(value))  # type: ignore[arg-type]
    if kind == "percent":
        return f"{float(value) * 100:g}%"  # type: ignore[arg-type]
    if kind == "string":
        return f'"{value}"'
    if kind == "bool":
        return "true" if value else "false"
    return str(value)


# ---- reading request values ----------------------------------------------------------------------------

#: The unit a request attribute's plain number is read in, per metric kind: latency in ms (as seconds), cost in
#: USD, price in USD per 1M input tokens (as USD per token), context and capability as plain numbers.
_PLAIN_SCALE = {"duration": 0.001, "money": 1.0, "price": 1e-6, "count": 1.0}
#: The metric kinds a request attribute may carry as text with its unit (context also as 200k; capability only
#: as a number).
_WHOLE = {kind: re.compile(pattern) for kind, pattern in LITERAL_PATTERNS.items()}
_TEXT_KINDS = {"duration": ("duration",), "money": ("money",), "price": ("price",), "count": ("count",)}


def request_value(kind: str, value: object) -> float | None:
    """A request attribute's value read as a metric of `kind` (METRIC_KIND's value: duration, money, price,
    count), normalised like a literal of that kind (seconds, USD, USD per token, number); None when it is the
    wrong kind: a bool, a non-finite number, text that is not a number or a literal of that kind, or anything else.

    A number is in the metric's unit: latency ms, cost USD, price USD per 1M input tokens, context tokens,
    capability points. Text is a literal as a policy writes it ("2s", "$0.01", "$3/1M", "200k"), or a number."""
    if isinstance(value, (numbers.Real, decimal.Decimal)) and not isinstance(value, bool):
        return _known(finite(value) * _PLAIN_SCALE[kind])
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _WHOLE["count"].fullmatch(text) and kind != "count" and text[-1] not in "kM":
        return _known(finite(text) * _PLAIN_SCALE[kind])  # a plain number sent as text ("800")
    for want in _TEXT_KINDS.get(kind, ()):
        if _WHOLE[want].fullmatch(text):
            try:
                return _known(finite(literal_value(want, text)))
            except (ValueError, OverflowError):
                return None
    return None


def _known(number: float) -> float | None:
    return number if math.isfinite(number) else None


def finite(value: object) -> float:
    """A number (int, float, Decimal, numpy scalar, numeric text) as a float; NaN when it is not finite or too large
    for a float (10**400): such a number sets no limit and adds nothing to a score."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (OverflowError, ValueError, TypeError):
        return math.nan
    return number if math.isfinite(number) else math.nan
