"""Spend accounting: each finished request's Decision (its `key` and `user` attributes) and cost in; requests,
errors and cost (USD, with the estimated part) per gateway key and per user out, for `engine.usage()["keys"]` and
`["users"]` (counted by this process). At most MAX_USERS distinct users are tracked; later ones share OTHER_USERS."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["MAX_USERS", "NOBODY", "OTHER_USERS", "Pending", "SpendRow", "SpendTally"]

MAX_USERS = 1000  # distinct users a process tracks (a bound on memory and on /metrics series)
OTHER_USERS = "(other)"  # the row of the users beyond MAX_USERS
NOBODY = "(none)"  # the row of requests without a gateway key, or without a `user` attribute

T = TypeVar("T")


class Pending(Generic[T]):
    """Requests started but not yet counted, by identity, each with what its tally needs and whether it got an
    answer: `start` opens one, `answered` marks it, `finish` closes it once (None when it is not open)."""

    def __init__(self) -> None:
        self._open: dict[int, tuple[T, list[bool]]] = {}

    def start(self, key: int, item: T) -> None:
        self._open[key] = (item, [False])

    def answered(self, key: int) -> None:
        found = self._open.get(key) if self._open else None
        if found is not None:
            found[1][0] = True

    def finish(self, key: int) -> tuple[T, bool] | None:
        found = self._open.pop(key, None) if self._open else None
        return None if found is None else (found[0], found[1][0])


@dataclass
class SpendRow:
    """One key's or user's totals: requests finished, errors (no answer), cost and its estimated part (USD)."""

    requests: int = 0
    errors: int = 0
    cost: float = 0.0
    estimated_cost: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "cost": self.cost,
            "estimated_cost": self.estimated_cost,
        }


def _who(attrs: Any, name: str) -> str:
    value = attrs.get(name) if hasattr(attrs, "get") else None
    return NOBODY if value is None or value == "" else str(value)


class SpendTally:
    """Per key and per user totals; thread-safe. `start(key, decision)` opens a request, `answered(key)` marks it
    answered, `finish(key, cost, estimated)` counts it once (later calls for the same key do nothing)."""

    def __init__(self, max_users: int = MAX_USERS) -> None:
        self.max_users = max_users
        self._keys: dict[str, SpendRow] = {}
        self._users: dict[str, SpendRow] = {}
        self._pending: Pending[tuple[str, str]] = Pending()
        self._lock = threading.Lock()

    def start(self, key: int, decision: Any) -> None:
        """Note a prepared request (`key`: its identity) with the gateway key and user of its attributes."""
        request = getattr(decision, "request", None)
        attrs = getattr(request, "attrs", None) or {}
        self._pending.start(key, (_who(attrs, "key"), _who(attrs, "user")))

    def answered(self, key: int) -> None:
        """The request got an answer (it is counted as a success when it finishes)."""
        self._pending.answered(key)

    def finish(self, key: int, cost: float, estimated: float = 0.0) -> None:
        found = self._pending.finish(key)
        if found is not None:
            (who, user), ok = found
            self.add(who, user, ok=ok, cost=cost, estimated=estimated)

    def add(self, key: str, user: str, *, ok: bool, cost: float, estimated: float = 0.0) -> None:
        with self._lock:
            if user not in self._users and len(self._users) >= self.max_users:
                user = OTHER_USERS
            for row in (self._keys.setdefault(key, SpendRow()), self._users.setdefault(user, SpendRow())):
                row.requests += 1
                row.errors += not ok
                row.cost += cost
                row.estimated_cost += estimated

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        """{"keys": {key: row}, "users": {user: row}}, each row {requests, errors, cost, estimated_cost}, sorted."""
        with self._lock:
            return {
                "keys": {k: r.summary() for k, r in sorted(self._keys.items())},
                "users": {u: r.summary() for u, r in sorted(self._users.items())},
            }
