"""Execution events and usage: what happened during a request (an `Event`) in, delivered to registered
callbacks and to the standard logger "modelroute.execute" out; and the state store's per-model stats in, the
`engine.usage()` summary per model and provider out.

Kinds: attempt_started, attempt_failed, attempt_succeeded, retry, fallback, circuit_opened, circuit_closed,
budget_warning, usage_estimated (an upstream reported no usage: the call was settled from an estimate; data has
input_tokens, output_tokens and cost).

Event messages are built from redacted provider error text only, never from request headers
or API keys. Callbacks run on the thread (or event loop) that executes the request; an exception in a
callback is logged and never breaks the request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from providers.execution.metering import Tally

if TYPE_CHECKING:
    from engine.runtime.state import ExecutionStore
    from providers.execution.experiments import ExperimentTally
    from providers.execution.health import HealthTally
    from providers.execution.metering import EstimatedSpend
    from providers.execution.spending import SpendTally

log = logging.getLogger("modelroute.execute")
log.addHandler(logging.NullHandler())

KINDS = (
    "attempt_started",
    "attempt_failed",
    "attempt_succeeded",
    "retry",
    "fallback",
    "circuit_opened",
    "circuit_closed",
    "budget_warning",
    "usage_estimated",
)
_LEVELS = {
    "attempt_failed": logging.WARNING,
    "circuit_opened": logging.WARNING,
    "budget_warning": logging.WARNING,
    "fallback": logging.INFO,
    "circuit_closed": logging.INFO,
    "retry": logging.INFO,
    "usage_estimated": logging.INFO,
}


@dataclass(frozen=True)
class Event:
    """One observable step. `model`/`provider` name the model concerned; `error` is an error class name;
    `data` holds kind-specific numbers (status, latency_s, wait_s, to, spent, limit...)."""

    kind: str
    message: str
    model: str | None = None
    provider: str | None = None
    error: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


Callback = Callable[[Event], None]


class EventBus:
    """Callbacks plus logging; thread-safe registration."""

    def __init__(self) -> None:
        self._callbacks: list[Callback] = []
        self._lock = threading.Lock()

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Register `callback(event)`; returns a function that unregisters it."""
        with self._lock:
            self._callbacks = [*self._callbacks, callback]

        def unsubscribe() -> None:
            with self._lock:
                self._callbacks = [c for c in self._callbacks if c is not callback]

        return unsubscribe

    def emit(self, kind: str, message: str, **kw: Any) -> Event:
        event = Event(kind, message, **kw)
        log.log(_LEVELS.get(kind, logging.DEBUG), "%s: %s", kind, message)
        for callback in self._callbacks:
            try:
                callback(event)
            except Exception:  # an observer must never break a request
                log.exception("event callback %r failed on %s", callback, kind)
        return event


def _row(
    calls: int,
    failures: int,
    tin: int,
    tout: int,
    cost: float,
    latency: float | None,
    estimated: Tally | None = None,
    mean: float | None = None,
) -> dict[str, Any]:
    return {
        "calls": calls,
        "failures": failures,
        "success_rate": (calls - failures) / calls if calls else None,
        "input_tokens": tin,
        "output_tokens": tout,
        "cost": cost,
        "latency_ms": round(latency, 1) if latency is not None else None,
        "mean_latency_ms": round(mean, 1) if mean is not None else None,
        "estimated_calls": estimated.calls if estimated is not None else 0,
        "estimated_cost": estimated.cost if estimated is not None else 0.0,
    }


def _sum(tallies: list[Tally]) -> Tally:
    return Tally("", sum(t.calls for t in tallies), sum(t.cost for t in tallies))


def usage_summary(
    store: ExecutionStore,
    estimated: EstimatedSpend | None = None,
    health: HealthTally | None = None,
    experiments: ExperimentTally | None = None,
    spending: SpendTally | None = None,
) -> dict[str, dict[str, Any]]:
    """{"models": {name: row}, "providers": {name: row}, "total": row, "experiments": {...}}; a row has calls,
    failures, success_rate, input_tokens, output_tokens, cost (USD), latency_ms (EWMA of successful calls; for a
    provider, its models' EWMAs weighted by successful calls), mean_latency_ms (a model's mean over its successful
    calls, counted by `health`, this process's executor; None for providers and the total), and estimated_calls /
    estimated_cost: the calls (and their part of `cost`) settled from an estimate because the upstream reported no
    usage, as counted by `estimated`. "experiments" is {experiment: {variant: {requests, errors, error_rate,
    latency_ms, cost}}} (providers/execution/experiments.py; requests of this process); "keys" and "users" are
    {name: {requests, errors, cost, estimated_cost}} per gateway key and per `user` attribute (at most 1,000 users
    a process, later ones as "(other)": providers/execution/spending.py)."""
    stats = store.stats()
    guessed = estimated.snapshot() if estimated is not None else {}
    models = {
        m: _row(
            s.calls,
            s.failures,
            s.input_tokens,
            s.output_tokens,
            s.cost,
            s.latency_ms,
            guessed.get(m),
            health.mean_latency_ms(m) if health is not None else None,
        )
        for m, s in sorted(stats.items())
    }
    providers: dict[str, dict[str, Any]] = {}
    for p in sorted({s.provider for s in stats.values()}):
        mine = [s for s in stats.values() if s.provider == p]
        ok = [(s.calls - s.failures, s.latency_ms) for s in mine if s.latency_ms is not None and s.calls > s.failures]
        weight = sum(w for w, _ in ok)
        latency = sum(w * lat for w, lat in ok) / weight if weight else None
        providers[p] = _row(
            sum(s.calls for s in mine),
            sum(s.failures for s in mine),
            sum(s.input_tokens for s in mine),
            sum(s.output_tokens for s in mine),
            sum(s.cost for s in mine),
            latency,
            _sum([t for m, t in guessed.items() if m in stats and stats[m].provider == p]),
        )
    total = _row(
        sum(s.calls for s in stats.values()),
        sum(s.failures for s in stats.values()),
        sum(s.input_tokens for s in stats.values()),
        sum(s.output_tokens for s in stats.values()),
        sum(s.cost for s in stats.values()),
        None,
        _sum(list(guessed.values())),
    )
    return {
        "models": models,
        "providers": providers,
        "total": total,
        "experiments": experiments.summary() if experiments is not None else {},
        **(spending.summary() if spending is not None else {"keys": {}, "users": {}}),
    }
