"""Budgets: a policy's `budget` statements plus request attributes in, spend keys, reservations, the
`spend.today` / `budget.left` request attributes and `BudgetExceeded` refusals out.

A budget's spend lives in the state store under a key made of its period bucket (UTC hour, day or month) and,
for `per ATTR` budgets, the attribute's value: `daily:2025-01-31` or `daily:2025-01-31:user=alice`. Two
budgets with the same key share one spend figure (the tighter limit applies). A `per ATTR` budget does not
apply to a request without that attribute. Requests reserve their estimated cost before any call and settle
the real cost afterwards, so concurrent requests cannot overspend by more than one request's cost.
Pure (no httpx): engine/api.py imports it to build request attributes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

_FORMATS = {"hourly": "%Y-%m-%dT%H", "daily": "%Y-%m-%d", "monthly": "%Y-%m"}


def label(spec: Any) -> str:
    """`budget daily $50 per user`, as written."""
    per = f" per {spec.per}" if spec.per else ""
    return f"budget {spec.period} ${spec.limit:,.2f}{per}"


def bucket(period: str, now: float) -> str:
    return time.strftime(_FORMATS[period], time.gmtime(now))


class BudgetExceeded(Exception):
    """A request was refused before any call because it could push a hard budget over its limit."""

    def __init__(self, budget: Any, key: str, used: float, needed: float):
        self.budget, self.key, self.used, self.needed = budget, key, used, needed
        self.limit = float(budget.limit)
        where = f" ({budget.per}={key.rsplit('=', 1)[-1]})" if budget.per else ""
        super().__init__(
            f"{label(budget)}{where} would be exceeded: ${used:.4f} spent or reserved of ${self.limit:.2f}, this "
            f"request may cost up to ${needed:.4f}; refused before any call (line {budget.span.line})"
        )


@dataclass
class _Applicable:
    key: str
    limit: float
    spec: Any


@dataclass
class Reservation:
    """Money held for one request on each applicable budget key; settle() exactly once."""

    amount: float
    items: list[_Applicable] = field(default_factory=list)
    day_key: str = ""
    settled: bool = False


class Budgets:
    """Reserve / settle / report spend against a policy's budgets in a state store (see the module docstring)."""

    def __init__(self, store: Any, wall: Callable[[], float] = time.time):
        self.store, self.wall = store, wall

    def applicable(self, budgets: tuple[Any, ...], attrs: Mapping[str, Any]) -> list[_Applicable]:
        now = self.wall()
        by_key: dict[str, _Applicable] = {}
        for spec in budgets:
            key = f"{spec.period}:{bucket(spec.period, now)}"
            if spec.per:
                value = attrs.get(spec.per)
                if value is None:
                    continue
                key += f":{spec.per}={value}"
            seen = by_key.get(key)
            if seen is None or spec.limit < seen.limit:
                by_key[key] = _Applicable(key, float(spec.limit), spec)
        return list(by_key.values())

    def request_attrs(self, budgets: tuple[Any, ...], attrs: Mapping[str, Any]) -> dict[str, float]:
        """`spend.today` (USD spent today, all requests) and `budget.left` (the fraction left of the tightest
        applicable budget, 0..1; absent when none applies)."""
        out = {"spend.today": self.store.spent(f"daily:{bucket('daily', self.wall())}")[0]}
        left = None
        for a in self.applicable(budgets, attrs):
            spent, reserved = self.store.spent(a.key)
            frac = max(0.0, min(1.0, (a.limit - spent - reserved) / a.limit)) if a.limit > 0 else 0.0
            left = frac if left is None else min(left, frac)
        if left is not None:
            out["budget.left"] = left
        return out

    def reserve(self, budgets: tuple[Any, ...], attrs: Mapping[str, Any], amount: float) -> Reservation:
        """Hold `amount` on every applicable budget, or raise BudgetExceeded (holding nothing)."""
        res = Reservation(amount, day_key=f"daily:{bucket('daily', self.wall())}")
        for a in self.applicable(budgets, attrs):
            ok, used = self.store.reserve(a.key, amount, a.limit)
            if not ok:
                for held in res.items:
                    self.store.settle(held.key, amount, 0.0)
                raise BudgetExceeded(a.spec, a.key, used, amount)
            res.items.append(a)
        return res

    def settle(self, res: Reservation, actual: float, warn: float) -> list[tuple[Any, float, float]]:
        """Record the real cost; returns (budget, spent, limit) for each budget this spend pushed past `warn`."""
        if res.settled:
            return []
        res.settled = True
        crossed = []
        keys = set()
        for a in res.items:
            keys.add(a.key)
            total = self.store.settle(a.key, res.amount, actual)
            if a.limit > 0 and total - actual < warn * a.limit <= total:
                crossed.append((a.spec, total, a.limit))
        if res.day_key not in keys:
            self.store.settle(res.day_key, 0.0, actual)
        return crossed
