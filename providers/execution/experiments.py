"""Experiment accounting: each finished request whose Decision belongs to an experiment (`split ... as "NAME"`:
`decision.experiment` with `.name` and `.variant`) in; requests, errors, latency and cost per experiment and
variant out, for `engine.usage()["experiments"]` (counted by this process) and, through listeners, the gateway's
/metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from providers.execution.spending import Pending

__all__ = ["ExperimentTally", "Listener", "VariantRow", "experiment_of"]

#: Called with (experiment, variant, ok=, latency_s=, cost=) for each request counted (the gateway's metrics).
Listener = Callable[..., None]


def experiment_of(decision: Any) -> tuple[str, str] | None:
    """(experiment, variant) of a decision, or None when it belongs to no experiment. The variant is the
    experiment's chosen variant (the chosen model when it names none)."""
    experiment = getattr(decision, "experiment", None)
    if experiment is None:
        return None
    name = getattr(experiment, "name", None)
    if not name:
        return None
    variant = getattr(experiment, "variant", None)
    return str(name), str(variant if variant is not None else getattr(decision, "model", "?"))


@dataclass
class VariantRow:
    """One variant's totals: requests finished, errors (no answer), latency (seconds, summed) and cost (USD)."""

    requests: int = 0
    errors: int = 0
    latency_s: float = 0.0
    cost: float = 0.0

    def summary(self) -> dict[str, Any]:
        done = self.requests
        return {
            "requests": done,
            "errors": self.errors,
            "error_rate": self.errors / done if done else None,
            "latency_ms": round(self.latency_s / done * 1000, 1) if done else None,
            "cost": self.cost,
        }


class ExperimentTally:
    """Per (experiment, variant) totals; thread-safe. `start(key)` opens a request, `finish(key)` closes it."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], VariantRow] = {}
        self._pending: Pending[tuple[tuple[str, str], float]] = Pending()
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` for every request counted from now on; returns a function that stops that."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def start(self, key: int, decision: Any) -> None:
        """Note a prepared request (`key`: its identity) when its decision belongs to an experiment."""
        which = experiment_of(decision)
        if which is not None:
            self._pending.start(key, (which, time.perf_counter()))

    def answered(self, key: int) -> None:
        """The request got an answer (it will be counted as a success when it finishes)."""
        self._pending.answered(key)

    def finish(self, key: int, cost: float) -> None:
        """Count a request once it has ended (later calls for the same key do nothing)."""
        found = self._pending.finish(key)
        if found is not None:
            (which, t0), ok = found
            self.add(which[0], which[1], ok=ok, latency_s=time.perf_counter() - t0, cost=cost)

    def add(self, experiment: str, variant: str, *, ok: bool, latency_s: float, cost: float) -> None:
        with self._lock:
            row = self._rows.setdefault((experiment, variant), VariantRow())
            row.requests += 1
            row.errors += not ok
            row.latency_s += latency_s
            row.cost += cost
        for listener in self._listeners:
            listener(experiment, variant, ok=ok, latency_s=latency_s, cost=cost)

    def rows(self) -> list[tuple[str, str, VariantRow]]:
        """(experiment, variant, totals), sorted; the totals are copies."""
        with self._lock:
            return [(e, v, VariantRow(**vars(r))) for (e, v), r in sorted(self._rows.items())]

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        """{experiment: {variant: {requests, errors, error_rate, latency_ms (mean), cost}}}."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for experiment, variant, row in self.rows():
            out.setdefault(experiment, {})[variant] = row.summary()
        return out
