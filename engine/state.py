"""Router state: the one small store behind round-robin positions, in-flight counts, circuits, latency and spend.

decide() only reads it through the first group of methods below; execution (providers/execute.py) writes it.
The in-memory store is the default; a shared store (e.g. Redis, for several replicas) implements the same
methods. Every method must be safe to call from many threads.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from typing import Protocol, runtime_checkable


@runtime_checkable
class StateStore(Protocol):
    # -- read by decide() (must be cheap) --
    def next_index(self, key: str) -> int:
        """A counter that increases by one per call (round-robin position for `key`)."""

    def in_flight(self, model: str) -> int:
        """Requests currently running on `model` (for least_busy)."""

    def unavailable(self) -> frozenset[str]:
        """Models decide() must skip now (open circuits)."""

    def latency_ms(self) -> Mapping[str, float]:
        """Measured latency (EWMA, ms) of models with enough samples (for `fastest`)."""


class MemoryStore:
    """The default in-process StateStore. Execution extends what it records (see providers/execute.py)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, itertools.count] = {}
        self._in_flight: dict[str, int] = {}
        self._unavailable: frozenset[str] = frozenset()
        self._latency: dict[str, float] = {}

    def next_index(self, key: str) -> int:
        counter = self._counters.get(key)
        if counter is None:
            with self._lock:
                counter = self._counters.setdefault(key, itertools.count())
        return next(counter)  # itertools.count is atomic under the GIL

    def in_flight(self, model: str) -> int:
        return self._in_flight.get(model, 0)

    def unavailable(self) -> frozenset[str]:
        return self._unavailable

    def latency_ms(self) -> Mapping[str, float]:
        return self._latency

    # -- written by execution --
    def add_in_flight(self, model: str, delta: int) -> None:
        with self._lock:
            self._in_flight[model] = max(0, self._in_flight.get(model, 0) + delta)

    def set_unavailable(self, models: frozenset[str]) -> None:
        self._unavailable = frozenset(models)

    def set_latency(self, model: str, ms: float | None) -> None:
        with self._lock:
            latency = dict(self._latency)
            if ms is None:
                latency.pop(model, None)
            else:
                latency[model] = ms
            self._latency = latency  # replaced whole: readers never see a dict being changed
