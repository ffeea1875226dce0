"""Router state: the one small store behind round-robin positions, in-flight counts, circuits, latency and spend.

decide() only reads it through the first group of methods below (`StateStore`); execution
(providers.execution) writes it through the second (`ExecutionStore`). The in-memory store is the default; a
shared store (e.g. Redis, for several replicas) implements the same methods. Every method must be safe to
call from many threads. Policy settings (circuit thresholds, latency.min_samples) are passed in by the
caller as a `CircuitConfig`, so one store serves every policy version.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Outcome = Literal["ok", "fail", "neutral", "cancelled"]
#: What allow() / probe() answer: False (refused), True (allowed, the circuit is closed) or PROBE (allowed: this
#: call is the half-open probe, and only its recorded outcome, `record(..., probe=True)`, decides the circuit).
Claim = bool | Literal["probe"]
PROBE: Literal["probe"] = "probe"
EWMA_ALPHA = 0.2  # weight of the newest latency sample
#: Completed calls per model MemoryStore keeps for success rates (the newest; older ones age out of any window).
HEALTH_SAMPLES = 1024
#: How long MemoryStore reuses computed success rates while no call completes (seconds).
HEALTH_CACHE_S = 1.0


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

    def circuit(self, model: str) -> CircuitInfo:
        """A model's circuit (read by decide() only when open circuits leave no route: which to probe)."""

    def success_rates(self, window: float) -> Mapping[str, float]:
        """Success rate (0 to 1: ok calls over completed calls) of each model over the calls that completed in the
        last `window` seconds, for `prefer healthiest` and `balance weighted`. A model with no completed call in
        the window is absent (unknown: selection counts it as healthy). Cancelled calls do not count; "neutral"
        outcomes (the caller's own mistakes) count as neither. Read on decide()'s path: must be cheap."""


@dataclass(frozen=True)
class CircuitConfig:
    """The policy settings the store needs when recording a call."""

    failures: int = 5
    window: float = 60.0
    cooldown: float = 30.0
    min_samples: int = 20

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None) -> CircuitConfig:
        if settings is None:
            return cls()
        return cls(
            int(settings["circuit.failures"]),
            float(settings["circuit.window"]),
            float(settings["circuit.cooldown"]),
            int(settings["latency.min_samples"]),
        )


@dataclass(frozen=True)
class CircuitInfo:
    """A model's circuit: state closed | open | half_open; `until` is the wall-clock end of an open state."""

    model: str
    state: str
    failures: int
    until: float | None = None
    half_open_in: float | None = None  # seconds until an open circuit half-opens (None: not open, or unknown)


@dataclass
class ModelStats:
    """Health and usage of one model (completed calls only; cancelled race legs are not counted)."""

    provider: str = ""
    calls: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    latency_ms: float | None = None  # EWMA over successful calls
    samples: int = 0

    @property
    def success_rate(self) -> float | None:
        return (self.calls - self.failures) / self.calls if self.calls else None


@dataclass
class _Circuit:
    state: str = "closed"
    fails: deque[float] = field(default_factory=deque)
    open_until: float = 0.0
    probing: bool = False


class ExecutionStore(StateStore, Protocol):
    """What execution writes (and reads back for usage and budgets)."""

    def add_in_flight(self, model: str, delta: int) -> None: ...

    def allow(self, model: str) -> Claim:
        """May a call go to `model` now? False while its circuit is open (or a half-open probe runs); True when
        it is closed; PROBE when this call claims the half-open probe."""

    def probe(self, model: str) -> Claim:
        """Claim the half-open probe of `model` now, even before its cooldown ends (every circuit of a plan is
        open and the policy says `set circuit.when_all_open = probe`): PROBE; True when the circuit is closed;
        False when a probe of it already runs. The probe's outcome, recorded with `probe=True`, closes the
        circuit (ok) or opens it for a new cooldown (fail)."""

    def record(
        self,
        model: str,
        provider: str,
        outcome: Outcome,
        cfg: CircuitConfig,
        *,
        latency_ms: float | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost: float = 0.0,
        probe: bool = False,
    ) -> str | None:
        """Record one call; returns "opened" or "closed" when this call changed the model's circuit. `probe`
        says the call held the half-open probe (allow() or probe() answered PROBE): in a half-open circuit only
        the probe's outcome counts, never that of a call that started before the circuit opened."""

    def stats(self) -> Mapping[str, ModelStats]: ...

    def reserve(self, key: str, amount: float, limit: float) -> tuple[bool, float]:
        """Atomically add `amount` to `key`'s reservations if spent + reserved + amount <= limit; returns
        (done, spent + reserved before)."""

    def settle(self, key: str, reserved: float, actual: float) -> float:
        """Release a reservation and record the real spend; returns the spend after."""

    def spent(self, key: str) -> tuple[float, float]:
        """(spent, reserved) for a budget key."""


class MemoryStore:
    """The default in-process store. `clock` (monotonic seconds) and `wall` (epoch seconds) can be injected
    so tests drive circuit cooldowns without sleeping."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self._lock = threading.Lock()
        self._clock, self._wall = clock, wall
        self._counters: dict[str, itertools.count] = {}
        self._in_flight: dict[str, int] = {}
        self._unavailable: frozenset[str] = frozenset()
        self._latency: dict[str, float] = {}
        self._circuits: dict[str, _Circuit] = {}
        self._next_expiry = math.inf  # earliest open_until of an open circuit
        self._stats: dict[str, ModelStats] = {}
        self._spent: dict[str, float] = {}
        self._reserved: dict[str, float] = {}
        self._outcomes: dict[str, deque[tuple[float, bool]]] = {}  # model -> (monotonic time, ok) of recent calls
        self._rates: dict[float, tuple[float, Mapping[str, float]]] = {}  # window -> (computed at, rates)

    # -- read by decide() --
    def next_index(self, key: str) -> int:
        counter = self._counters.get(key)
        if counter is None:
            with self._lock:
                counter = self._counters.setdefault(key, itertools.count())
        return next(counter)  # itertools.count is atomic under the GIL

    def in_flight(self, model: str) -> int:
        return self._in_flight.get(model, 0)

    def unavailable(self) -> frozenset[str]:
        if self._next_expiry is not math.inf and self._clock() >= self._next_expiry:
            with self._lock:
                self._expire()
        return self._unavailable

    def latency_ms(self) -> Mapping[str, float]:
        return self._latency

    def success_rates(self, window: float) -> Mapping[str, float]:
        now = self._clock()
        cached = self._rates.get(window)
        if cached is not None and now - cached[0] < HEALTH_CACHE_S:
            return cached[1]
        with self._lock:
            rates: dict[str, float] = {}
            for model, calls in self._outcomes.items():
                recent = [ok for t, ok in calls if t > now - window]
                if recent:
                    rates[model] = sum(recent) / len(recent)
            self._rates[window] = (now, rates)
        return rates

    # -- written by execution --
    def add_in_flight(self, model: str, delta: int) -> None:
        with self._lock:
            self._in_flight[model] = max(0, self._in_flight.get(model, 0) + delta)

    # -- circuits (call with the lock held) --
    def _expire(self) -> None:
        """Move open circuits whose cooldown has passed to half-open, and rebuild the cached set."""
        now = self._clock()
        for c in self._circuits.values():
            if c.state == "open" and now >= c.open_until:
                c.state, c.probing = "half_open", False
        self._rebuild()

    def _rebuild(self) -> None:
        blocked = {m for m, c in self._circuits.items() if c.state == "open" or (c.state == "half_open" and c.probing)}
        expiries = [c.open_until for c in self._circuits.values() if c.state == "open"]
        self._next_expiry = min(expiries) if expiries else math.inf
        self._unavailable = frozenset(blocked)

    def allow(self, model: str) -> Claim:
        with self._lock:
            c = self._circuits.get(model)
            if c is None or c.state == "closed":
                return True
            if c.state == "open":
                if self._clock() < c.open_until:
                    return False
                c.state, c.probing = "half_open", False
            if c.probing:
                return False
            c.probing = True  # this caller is the half-open probe
            self._rebuild()
            return PROBE

    def probe(self, model: str) -> Claim:
        with self._lock:
            c = self._circuits.get(model)
            if c is None or c.state == "closed":
                return True
            if c.state == "half_open" and c.probing:
                return False
            c.state, c.probing = "half_open", True  # this caller is the probe, cooldown or not
            self._rebuild()
            return PROBE

    def record(
        self,
        model: str,
        provider: str,
        outcome: Outcome,
        cfg: CircuitConfig,
        *,
        latency_ms: float | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost: float = 0.0,
        probe: bool = False,
    ) -> str | None:
        with self._lock:
            if outcome != "cancelled":
                self._count(model, provider, outcome, cfg, latency_ms, input_tokens, output_tokens, cost)
            return self._transition(model, outcome, cfg, probe)

    def _count(
        self,
        model: str,
        provider: str,
        outcome: Outcome,
        cfg: CircuitConfig,
        latency_ms: float | None,
        input_tokens: int,
        output_tokens: int,
        cost: float,
    ) -> None:
        if outcome in ("ok", "fail"):
            calls = self._outcomes.get(model)
            if calls is None:
                calls = self._outcomes[model] = deque(maxlen=HEALTH_SAMPLES)
            calls.append((self._clock(), outcome == "ok"))
            self._rates = {}
        s = self._stats.get(model)
        if s is None:
            s = self._stats[model] = ModelStats(provider)
        s.calls += 1
        s.failures += outcome != "ok"
        s.input_tokens += input_tokens
        s.output_tokens += output_tokens
        s.cost += cost
        if outcome == "ok" and latency_ms is not None:
            s.latency_ms = (
                latency_ms if s.latency_ms is None else (EWMA_ALPHA * latency_ms + (1 - EWMA_ALPHA) * s.latency_ms)
            )
            s.samples += 1
            if s.samples >= cfg.min_samples:
                self._latency = {**self._latency, model: s.latency_ms}

    def _transition(self, model: str, outcome: Outcome, cfg: CircuitConfig, probe: bool) -> str | None:
        c = self._circuits.get(model)
        if c is None:
            if outcome != "fail":
                return None
            c = self._circuits[model] = _Circuit()
        now = self._clock()
        if c.state == "half_open":
            if not c.probing or not probe:
                return None  # a call started before the circuit opened: only the probe decides
            c.probing = False
            if outcome == "ok":
                c.state = "closed"
                c.fails.clear()
                self._rebuild()
                return "closed"
            if outcome == "fail":
                c.state, c.open_until = "open", now + cfg.cooldown
                self._rebuild()
                return "opened"
            self._rebuild()  # neutral / cancelled: release the probe, stay half-open
            return None
        if c.state == "open" or outcome != "fail":
            return None
        c.fails.append(now)
        while c.fails and c.fails[0] <= now - cfg.window:
            c.fails.popleft()
        if len(c.fails) >= cfg.failures:
            c.state, c.open_until = "open", now + cfg.cooldown
            self._rebuild()
            return "opened"
        return None

    def circuit(self, model: str) -> CircuitInfo:
        self.unavailable()  # expire cooldowns first
        with self._lock:
            c = self._circuits.get(model)
            if c is None:
                return CircuitInfo(model, "closed", 0)
            if c.state != "open":
                return CircuitInfo(model, c.state, len(c.fails))
            left = max(0.0, c.open_until - self._clock())
            return CircuitInfo(model, c.state, len(c.fails), self._wall() + left, left)

    def stats(self) -> Mapping[str, ModelStats]:
        with self._lock:
            return {m: ModelStats(**vars(s)) for m, s in self._stats.items()}

    # -- spend (budgets) --
    def reserve(self, key: str, amount: float, limit: float) -> tuple[bool, float]:
        with self._lock:
            used = self._spent.get(key, 0.0) + self._reserved.get(key, 0.0)
            if used + amount > limit + 1e-12:
                return False, used
            self._reserved[key] = self._reserved.get(key, 0.0) + amount
            return True, used

    def settle(self, key: str, reserved: float, actual: float) -> float:
        with self._lock:
            self._reserved[key] = max(0.0, self._reserved.get(key, 0.0) - reserved)
            total = self._spent[key] = self._spent.get(key, 0.0) + actual
            return total

    def spent(self, key: str) -> tuple[float, float]:
        return self._spent.get(key, 0.0), self._reserved.get(key, 0.0)
