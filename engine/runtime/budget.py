"""Budget rules: a policy's `budget` statements, request attributes and a state store in, the spend keys that
apply and the `spend.today` / `budget.left` request attributes out.

Pure (no I/O beyond the state store's reads): decide() uses it; execution reserves and settles against the
same keys (providers.execution.budget). A budget's spend lives in the state store under a key made of its
period bucket (UTC hour, day or month) and, for `per ATTR` budgets, the attribute's value: `daily:2025-01-31`
or `daily:2025-01-31:user=alice`. Two budgets with the same key share one spend figure (the tighter limit
applies). A `per ATTR` budget does not apply to a request without that attribute.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.runtime.policy import BudgetSpec
from engine.runtime.state import ExecutionStore

_FORMATS = {"hourly": "%Y-%m-%dT%H", "daily": "%Y-%m-%d", "monthly": "%Y-%m"}


def label(spec: BudgetSpec) -> str:
    """`budget daily $50 per user`, as written."""
    per = f" per {spec.per}" if spec.per else ""
    return f"budget {spec.period} ${spec.limit:,.2f}{per}"


def bucket(period: str, now: float) -> str:
    """The period's bucket at epoch time `now` (UTC): `2025-01-31T09`, `2025-01-31` or `2025-01`."""
    return time.strftime(_FORMATS[period], time.gmtime(now))


@dataclass
class Applicable:
    """One budget that applies to a request: its spend key, its limit, and the statement it comes from."""

    key: str
    limit: float
    spec: BudgetSpec


class BudgetBook:
    """Which budgets apply to a request and how much of them is left, read from a state store at `wall()` time.

    The engine owns one and hands it to its executor, which reserves and settles against the same keys."""

    def __init__(self, store: ExecutionStore, wall: Callable[[], float] = time.time) -> None:
        self.store, self.wall = store, wall

    label = staticmethod(label)

    def day_key(self) -> str:
        """The all-requests spend key of today (UTC)."""
        return f"daily:{bucket('daily', self.wall())}"

    def applicable(self, budgets: tuple[BudgetSpec, ...], attrs: Mapping[str, Any]) -> list[Applicable]:
        """The budgets that apply to a request with these attributes, one per spend key (the tightest)."""
        now = self.wall()
        by_key: dict[str, Applicable] = {}
        for spec in budgets:
            key = f"{spec.period}:{bucket(spec.period, now)}"
            if spec.per:
                value = attrs.get(spec.per)
                if value is None:
                    continue
                key += f":{spec.per}={value}"
            seen = by_key.get(key)
            if seen is None or spec.limit < seen.limit:
                by_key[key] = Applicable(key, float(spec.limit), spec)
        return list(by_key.values())

    def request_attrs(self, budgets: tuple[BudgetSpec, ...], attrs: Mapping[str, Any]) -> dict[str, float]:
        """`spend.today` (USD spent today, all requests) and `budget.left` (the fraction left of the tightest
        applicable budget, 0..1; absent when none applies)."""
        out = {"spend.today": self.store.spent(self.day_key())[0]}
        left = None
        for a in self.applicable(budgets, attrs):
            spent, reserved = self.store.spent(a.key)
            frac = max(0.0, min(1.0, (a.limit - spent - reserved) / a.limit)) if a.limit > 0 else 0.0
            left = frac if left is None else min(left, frac)
        if left is not None:
            out["budget.left"] = left
        return out
