"""Budget holds: an engine's budget book, a policy's budgets and a request's attributes in, reservations
before any call, settled spend after it, and `BudgetExceeded` refusals out.

Which budgets apply and under which spend keys is the engine's rule (engine.BudgetBook); this module holds
money against those keys. Requests reserve the most they may cost before any call (providers/execution/holds.py
computes it) and settle the real cost afterwards, so concurrent requests cannot overspend by more than one
request's cost. Neither a failed reservation nor a failed settlement leaves money held: a reservation that fails
part-way releases what it held, and a settlement settles every key even when one fails (each store call is
tried twice).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from engine import BudgetBook

if TYPE_CHECKING:
    from engine.runtime.budget import Applicable
    from engine.runtime.policy import BudgetSpec

label = BudgetBook.label
T = TypeVar("T")

__all__ = ["BudgetExceeded", "Budgets", "Reservation", "label"]


class BudgetExceeded(Exception):
    """A request was refused before any call because it could push a hard budget over its limit."""

    def __init__(self, budget: BudgetSpec, key: str, used: float, needed: float, wait: float = 0.0):
        self.budget, self.key, self.used, self.needed = budget, key, used, needed
        self.limit = float(budget.limit)
        self.wait = wait  # seconds a shared store rebuilding its figures after a reset asks to wait (else 0)
        where = f" ({budget.per}={key.rsplit('=', 1)[-1]})" if budget.per else ""
        why = (
            f"the shared budget figures are being rebuilt after a Redis reset (each replica takes one request per "
            f"budget until all have re-published their spend, {wait:.1f}s more)"
            if wait > 0
            else f"{label(budget)}{where} would be exceeded"
        )
        super().__init__(
            f"{why}: ${used:.4f} spent or reserved of ${self.limit:.2f}, this "
            f"request may cost up to ${needed:.4f}; refused before any call (line {budget.span.line})"
        )


@dataclass
class Reservation:
    """Money held for one request on each applicable budget key; settle() exactly once (thread-safe)."""

    amount: float
    items: list[Applicable] = field(default_factory=list)
    day_key: str = ""
    settled: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


def _retried(call: Callable[[], T]) -> T:
    """`call()`, tried once more when it raises (a store that failed once, e.g. a dropped connection); a store
    must apply a reserve or settle whole or not at all."""
    try:
        return call()
    except Exception:
        return call()


def _grace_left(store: Any, wanted: float, limit: float) -> float:
    """Seconds left of a shared store's grace after a Redis reset (RedisStore.grace_left), when that and not the
    limit refused a reservation that would fit; else 0."""
    left = getattr(store, "grace_left", None)
    return float(left()) if callable(left) and wanted <= limit + 1e-12 else 0.0


class Budgets(BudgetBook):
    """The budget book plus reserve / settle against its keys in its state store."""

    @classmethod
    def of(cls, book: BudgetBook) -> Budgets:
        """Reserve and settle against the same store and clock as `book` (the engine's)."""
        return book if isinstance(book, Budgets) else cls(book.store, book.wall)

    def reserve(self, budgets: tuple[BudgetSpec, ...], attrs: Mapping[str, Any], amount: float) -> Reservation:
        """Hold `amount` on every applicable budget, or raise BudgetExceeded (holding nothing)."""
        return self.reserve_on(self.applicable(budgets, attrs), amount)

    def reserve_on(self, items: list[Applicable], amount: float) -> Reservation:
        """Hold `amount` on each of `items` (from applicable()), or raise BudgetExceeded, or whatever the store
        raised, holding nothing: what was held before the failure is released."""
        res = Reservation(amount, day_key=self.day_key())
        try:
            for a in items:
                ok, used = self.store.reserve(a.key, amount, a.limit)
                if not ok:
                    raise BudgetExceeded(a.spec, a.key, used, amount, _grace_left(self.store, used + amount, a.limit))
                res.items.append(a)
        except BaseException:
            for held in res.items:
                _retried(partial(self.store.settle, held.key, amount, 0.0))
            res.items.clear()
            raise
        return res

    def settle(self, res: Reservation, actual: float, warn: float) -> list[tuple[BudgetSpec, float, float]]:
        """Record the real cost; returns (budget, spent, limit) for each budget this spend pushed past `warn`.
        Every key is settled even when one of them fails (its error is raised after the others are done)."""
        with res.lock:
            if res.settled:
                return []
            res.settled = True
        crossed = []
        keys = set()
        failure: Exception | None = None
        for a in res.items:
            keys.add(a.key)
            try:
                total = _retried(partial(self.store.settle, a.key, res.amount, actual))
            except Exception as exc:
                failure = failure or exc
                continue
            if a.limit > 0 and total - actual < warn * a.limit <= total:
                crossed.append((a.spec, total, a.limit))
        if res.day_key not in keys:
            try:
                _retried(partial(self.store.settle, res.day_key, 0.0, actual))
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return crossed
