"""Budget holds: an engine's budget book, a policy's budgets and a request's attributes in, reservations
before any call, settled spend after it, and `BudgetExceeded` refusals out.

Which budgets apply and under which spend keys is the engine's rule (engine.BudgetBook); this module holds
money against those keys. Requests reserve their estimated cost before any call and settle the real cost
afterwards, so concurrent requests cannot overspend by more than one request's cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine import BudgetBook

if TYPE_CHECKING:
    from engine.runtime.budget import Applicable
    from engine.runtime.policy import BudgetSpec

label = BudgetBook.label

__all__ = ["BudgetExceeded", "Budgets", "Reservation", "label"]


class BudgetExceeded(Exception):
    """A request was refused before any call because it could push a hard budget over its limit."""

    def __init__(self, budget: BudgetSpec, key: str, used: float, needed: float):
        self.budget, self.key, self.used, self.needed = budget, key, used, needed
        self.limit = float(budget.limit)
        where = f" ({budget.per}={key.rsplit('=', 1)[-1]})" if budget.per else ""
        super().__init__(
            f"{label(budget)}{where} would be exceeded: ${used:.4f} spent or reserved of ${self.limit:.2f}, this "
            f"request may cost up to ${needed:.4f}; refused before any call (line {budget.span.line})"
        )


@dataclass
class Reservation:
    """Money held for one request on each applicable budget key; settle() exactly once."""

    amount: float
    items: list[Applicable] = field(default_factory=list)
    day_key: str = ""
    settled: bool = False


class Budgets(BudgetBook):
    """The budget book plus reserve / settle against its keys in its state store."""

    @classmethod
    def of(cls, book: BudgetBook) -> Budgets:
        """Reserve and settle against the same store and clock as `book` (the engine's)."""
        return book if isinstance(book, Budgets) else cls(book.store, book.wall)

    def reserve(self, budgets: tuple[BudgetSpec, ...], attrs: Mapping[str, Any], amount: float) -> Reservation:
        """Hold `amount` on every applicable budget, or raise BudgetExceeded (holding nothing)."""
        res = Reservation(amount, day_key=self.day_key())
        for a in self.applicable(budgets, attrs):
            ok, used = self.store.reserve(a.key, amount, a.limit)
            if not ok:
                for held in res.items:
                    self.store.settle(held.key, amount, 0.0)
                raise BudgetExceeded(a.spec, a.key, used, amount)
            res.items.append(a)
        return res

    def settle(self, res: Reservation, actual: float, warn: float) -> list[tuple[BudgetSpec, float, float]]:
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
