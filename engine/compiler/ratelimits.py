"""Rate limit checks: a policy's `limit` statements in, their diagnostics (E315, E316, E401, E406; the lint warning
W112) and the checked RateLimitSpec list the gateway enforces out."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from engine.diagnostics import Diagnostic, did_you_mean
from engine.language import nodes as n
from engine.runtime.messages import REQUEST_COUNTS
from engine.runtime.reserved import RESERVED_ATTRS
from engine.runtime.settings import RATE_UNITS, RateLimitSpec

__all__ = ["COUNTED_ATTRS", "LIMIT_CODES", "NEVER_BINDS", "check_limits", "limit_specs", "limit_warnings"]

#: The reserved request attributes whose value is a number (engine/runtime/reserved.py describes each): a count or
#: amount of the request itself, not who sent it, so a limit cannot be kept per value of one (E406).
COUNTED_ATTRS: frozenset[str] = frozenset(
    {"tokens", "images", "max_tokens", "spend", "budget", "ratelimit", *REQUEST_COUNTS}
)
assert COUNTED_ATTRS.issubset(RESERVED_ATTRS), "a counted attribute is not a reserved one"

#: The help of a limit whose amount is not a whole number above 0.
AMOUNT_HINT = "a limit is a whole number per minute above 0: `limit 60 rpm`, `limit 100k tpm per user`"

#: Stable codes of the lint warnings about limits, in the numbering of engine/tools/lint.py (which lists them).
LIMIT_CODES: dict[str, str] = {"W112": "rate limit too large to ever bind"}

#: Above this many requests or tokens a minute (over 16 million a second) a limit never binds: no gateway serves
#: that much, for one key or in all (docs/check.md, W112).
NEVER_BINDS = 1_000_000_000


def _units() -> str:
    """The units a limit takes, for a message: "`rpm` (requests per minute) or `tpm` (tokens per minute)"."""
    named = [f"`{u}` ({what} per minute)" for u, what in RATE_UNITS.items()]
    return " or ".join([", ".join(named[:-1]), named[-1]] if len(named) > 1 else named)


def check_limits(limits: list[n.RateLimit], report: Callable[[Diagnostic], None]) -> None:
    """Report an unknown unit (E315), an amount that is not a whole number above 0 (E401), a limit kept per value
    of a number the request itself carries (E406: `per tokens`) and a second limit of the same unit and `per`
    (E316: which one would apply is not clear)."""
    seen: dict[tuple[str, str | None], n.RateLimit] = {}
    for stmt in limits:
        if not stmt.unit:  # `limit 60`, `limit 60 per key`: the grammar reads a limit without its unit
            per = stmt.per or "key"
            report(
                Diagnostic(
                    "E315",
                    f"`limit {stmt.amount.text}` has no unit",
                    stmt.unit_span,
                    f"expected {_units()} after the number",
                    f"write the unit after the number: `limit {stmt.amount.text} {next(iter(RATE_UNITS))} per {per}` "
                    "(a limit is `limit NUMBER UNIT [per ATTRIBUTE]`)",
                )
            )
            continue
        if stmt.unit not in RATE_UNITS:
            units = ", ".join(f"{u} ({what} per minute)" for u, what in RATE_UNITS.items())
            report(
                Diagnostic(
                    "E315",
                    f"unknown rate limit unit `{stmt.unit}`",
                    stmt.unit_span,
                    "not a unit",
                    did_you_mean(stmt.unit, list(RATE_UNITS)) or f"units: {units}",
                )
            )
            continue
        value = stmt.amount.value
        if not isinstance(value, float) or not math.isfinite(value) or value < 1 or value != int(value):
            report(
                Diagnostic(
                    "E401",
                    f"rate limit `{stmt.amount.text} {stmt.unit}` is not a whole number above 0",
                    stmt.amount.span,
                    "out of range",
                    AMOUNT_HINT,
                )
            )
            continue
        if stmt.per is not None and stmt.per.partition(".")[0] in COUNTED_ATTRS:
            report(
                Diagnostic(
                    "E406",
                    f"`limit {stmt.amount.text} {stmt.unit} per {stmt.per}`: `{stmt.per}` is a number the request "
                    "carries, not who sent it",
                    stmt.per_span or stmt.span,
                    "a count",
                    "keep the limit per key, per user, or per another string attribute: `per key`, `per user`",
                )
            )
            continue
        slot = (stmt.unit, stmt.per)
        first = seen.get(slot)
        if first is not None:
            per = f" per {stmt.per}" if stmt.per else ""
            report(
                Diagnostic(
                    "E316",
                    f"a second `{stmt.unit}{per}` limit",
                    stmt.span,
                    "limited again here",
                    "keep one limit of each unit and `per`; limits of different `per` all apply",
                    (f"the first is at {first.span}",),
                )
            )
            continue
        seen[slot] = stmt


def limit_specs(limits: list[n.RateLimit]) -> tuple[RateLimitSpec, ...]:
    """The checked statements as the runtime's RateLimitSpec (call after check_limits found no problem)."""
    return tuple(
        RateLimitSpec(s.unit, int(float(s.amount.value)), s.per, f"{s.span.file}:{s.span.line}")  # type: ignore[arg-type]
        for s in limits
    )


def limit_warnings(limits: Iterable[n.RateLimit]) -> list[Diagnostic]:
    """W112 for each limit of a known unit above NEVER_BINDS a minute (`limit 100000000000 rpm per key`): it never
    binds, so it is most likely a typo (a k or M too many) and the policy has no limit where one was meant."""
    out = []
    for stmt in limits:
        value = stmt.amount.value
        if stmt.unit in RATE_UNITS and isinstance(value, float) and value > NEVER_BINDS:
            what = RATE_UNITS[stmt.unit]
            out.append(
                Diagnostic(
                    "W112",
                    f"`limit {stmt.amount.text} {stmt.unit}` allows more than {NEVER_BINDS:,} {what} a minute (over "
                    f"{NEVER_BINDS // 60_000_000} million a second): no gateway serves that many, so it never binds",
                    stmt.amount.span,
                    "never reached",
                    "write the limit you mean (`limit 60 rpm per key`, `limit 100k tpm per user`), or remove the "
                    "statement to have no limit",
                    severity="warning",
                )
            )
    return out
