"""Units: which literal kind each metric takes, and how numbers of each kind are shown back to people."""

from __future__ import annotations

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
    "duration": "a duration such as 800ms or 2s",
    "price": "a price per token such as $15/1M or $0.003/1k",
    "money": "an amount in dollars such as $0.05",
    "percent": "a percentage such as 20%",
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
    return f"{s:g}s" if s >= 1 and (s * 10) % 1 == 0 else f"{s * 1000:g}ms"


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
