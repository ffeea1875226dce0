"""Rate limiting: checks (a bucket, its limit per minute, what a request costs) in, GCRA verdicts (admitted or
not, what is left, when it is full again, when to retry) out, kept in process memory or shared by every replica
through one Redis, where a Lua script decides all of a request's checks at once.

The algorithm is GCRA (the generic cell rate algorithm), which is a token bucket kept as one number per bucket: the
theoretical arrival time `tat`. A limit of L per minute makes each unit (a request, a token) worth T = 60/L
seconds; a request of cost c is admitted when `max(tat, now) + c*T - now <= 60`, which moves `tat` there. So:

* a bucket starts full: L units may arrive at once, and are never exceeded at any single instant;
* it refills continuously at L per minute (one unit every T seconds), as OpenAI's own limits do;
* accuracy: over any 60-second window at most 2L - 1 units are admitted (a full burst as the window opens, then
  the refill of the minute), and over any longer span t at most L + L*t/60; the sustained rate is exact;
* a request costing more than L can never pass: its verdict says so (`too_large`) rather than asking to retry.

Several checks (a key's rpm and tpm, the policy's limits) are all-or-nothing: a request refused by one takes
nothing from the others. Tokens are charged when a request starts, from its estimate, and corrected with
`adjust()` when its real usage is known (a refund moves `tat` back, never below now).

Shared limits take `now` from the replica's wall clock, so replicas' clocks should agree to well under T. While
Redis is unreachable each replica limits on its own (RedisStore's outage fallback): up to N times the limit
with N replicas, until Redis answers again.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from providers.state import lua

__all__ = ["PERIOD", "Check", "Limiter", "MemoryLimiter", "RedisLimiter", "Verdict", "attach", "limiter_for"]

#: The span every limit counts over, in seconds: limits are per minute (rpm, tpm).
PERIOD = 60.0
#: Tolerance of the admission test and of the whole units left, in units (1% of one) plus seconds: times are
#: epoch seconds (~1.7e9), each sum exact to about 1.2e-7 s, so a bucket filled exactly to its limit after many
#: requests must still compare as within it (lua.RATE_ACQUIRE uses the same figures).
UNIT_EPS = 1e-2
EPS = 1e-5


def within(new: float, now: float, step: float) -> bool:
    """Whether a bucket whose `tat` would become `new` stays within its limit (`step`: seconds per unit)."""
    return new - now <= PERIOD + step * UNIT_EPS + EPS


@dataclass(frozen=True, slots=True)
class Check:
    """One limit a request must pass: its bucket name, the units allowed per minute, the units it takes."""

    bucket: str
    limit: int
    cost: float


@dataclass(frozen=True, slots=True)
class Verdict:
    """One check's answer. `remaining`: whole units left after this request (before it, when refused); `reset`:
    seconds until the bucket is full again; `retry_after`: seconds until the request would be admitted (0 when
    it was; math.inf when it never can, `too_large`)."""

    limit: int
    remaining: int
    reset: float
    retry_after: float
    admitted: bool

    @property
    def left(self) -> float:
        """The fraction of the limit left, 0-1."""
        return max(0.0, min(1.0, self.remaining / self.limit))

    @property
    def too_large(self) -> bool:
        return math.isinf(self.retry_after)


def verdict(check: Check, tat: float, new: float, now: float, admitted: bool) -> Verdict:
    """A check's verdict from its bucket's `tat` before (at least now) and after this request's cost."""
    step = PERIOD / check.limit
    after = new if admitted else tat
    remaining = max(0, math.floor((PERIOD + EPS - (after - now)) / step + UNIT_EPS))
    if admitted:
        retry = 0.0
    elif check.cost > check.limit:
        retry = math.inf
    else:
        retry = max(0.0, new - PERIOD - now)
    return Verdict(check.limit, min(remaining, check.limit), max(0.0, after - now), retry, admitted)


class Limiter(Protocol):
    """Where buckets live: process memory or Redis."""

    def acquire(self, checks: Sequence[Check]) -> tuple[bool, list[Verdict]]:
        """Admit a request against every check, or against none (then nothing is taken from any bucket)."""
        ...

    def adjust(self, check: Check, delta: float) -> None:
        """Take `delta` more units from a bucket (a negative delta gives them back): a usage correction."""
        ...


class MemoryLimiter:
    """Buckets in this process, under one lock; `clock` in seconds (monotonic by default, injectable)."""

    MAX_BUCKETS = 100_000  # past this, buckets already full again are forgotten

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._tat: dict[str, float] = {}
        self._lock = threading.Lock()

    def acquire(self, checks: Sequence[Check]) -> tuple[bool, list[Verdict]]:
        with self._lock:
            now = self.clock()
            steps = [(c, max(self._tat.get(c.bucket, now), now)) for c in checks]
            news = [tat + c.cost * PERIOD / c.limit for c, tat in steps]
            ok = all(within(new, now, PERIOD / c.limit) for (c, _t), new in zip(steps, news, strict=True))
            if ok:
                if len(self._tat) > self.MAX_BUCKETS:
                    self._tat = {k: v for k, v in self._tat.items() if v > now}
                for (c, _tat), new in zip(steps, news, strict=True):
                    self._tat[c.bucket] = new
        return ok, [verdict(c, tat, new, now, ok) for (c, tat), new in zip(steps, news, strict=True)]

    def adjust(self, check: Check, delta: float) -> None:
        with self._lock:
            now = self.clock()
            tat = max(self._tat.get(check.bucket, now), now)
            self._tat[check.bucket] = max(now, tat + delta * PERIOD / check.limit)

    def clear(self) -> None:
        with self._lock:
            self._tat.clear()


class RedisLimiter:
    """Buckets in the Redis of a RedisStore (its key prefix, its outage fallback), so every replica on that Redis
    shares them; while Redis is unreachable, a MemoryLimiter on the same clock decides."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.clock: Callable[[], float] = store._wall
        self.local = MemoryLimiter(self.clock)
        r = store._redis
        self._acquire = r.register_script(lua.RATE_ACQUIRE)
        self._adjust = r.register_script(lua.RATE_ADJUST)

    def _key(self, bucket: str) -> str:
        return self.store._k("ratelimit", bucket)

    def acquire(self, checks: Sequence[Check]) -> tuple[bool, list[Verdict]]:
        def remote() -> tuple[bool, list[Verdict]]:
            now = self.clock()
            args: list[Any] = [repr(now), repr(PERIOD)]
            for c in checks:
                args += [c.limit, repr(float(c.cost))]
            out = self._acquire(keys=[self._key(c.bucket) for c in checks], args=args)
            ok = int(out[0]) == 1
            pairs = [(float(out[1 + 2 * i]), float(out[2 + 2 * i])) for i in range(len(checks))]
            return ok, [verdict(c, tat, new, now, ok) for c, (tat, new) in zip(checks, pairs, strict=True)]

        result: tuple[bool, list[Verdict]] = self.store._do(remote, lambda: self.local.acquire(checks), flush=False)
        return result

    def adjust(self, check: Check, delta: float) -> None:
        def remote() -> None:
            now = self.clock()
            self._adjust(keys=[self._key(check.bucket)], args=[repr(now), repr(PERIOD), check.limit, repr(delta)])

        self.store._do(remote, lambda: self.local.adjust(check, delta), flush=False)


_limiters: weakref.WeakKeyDictionary[Any, Limiter] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def attach(store: Any, limiter: Limiter) -> None:
    """Make `limiter` the one limiter_for(store) gives (tests attach one on an injected clock)."""
    with _registry_lock:
        _limiters[store] = limiter


def limiter_for(store: Any) -> Limiter:
    """The one limiter of a state store: shared through Redis for a RedisStore, else in this process."""
    from providers.state.redis_store import RedisStore

    with _registry_lock:
        found = _limiters.get(store)
        if found is None:
            found = RedisLimiter(store) if isinstance(store, RedisStore) else MemoryLimiter()
            _limiters[store] = found
        return found
