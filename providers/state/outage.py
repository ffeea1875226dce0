"""RedisStore's degradation: each call's Redis and local variants in, the Redis answer out while Redis answers, the
local in-process state's while it is unreachable (retried every `retry` seconds); plus the marking of an outage's
start and the recovery that pushes what the outage recorded before any other call (docs/state.md). A mixin on
RedisStore's state."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from engine.runtime.state import MemoryStore
from providers.state.spend import Gate

log = logging.getLogger("modelroute.state")


class OutageMixin:
    """status, `_do()` and the outage's start and end, for RedisStore."""

    _lock: Any
    _down: bool
    _down_until: float
    _retry: float
    _valid_until: float
    _held_remote: dict[str, float]
    _held_local: dict[str, float]
    _budget_gate: Gate
    _outage: MemoryStore
    _base: dict[str, float]
    _errors: tuple[type[BaseException], ...]
    _clock: Callable[[], float]
    _wall: Callable[[], float]
    _drain: Any
    _beat_locked: Any

    # -- degradation ---------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        """ "redis" when Redis answers, else "local (redis unreachable)"."""
        return "local (redis unreachable)" if self._down else "redis"

    def _do(self, remote: Callable[[], Any], local: Callable[[], Any], *, flush: bool = True) -> Any:
        """remote() against Redis, or local() while Redis is unreachable. What is pending for the sender goes
        first, so this replica reads its own writes (`flush=False` for the calls that carry the counts themselves
        or do not need them). After an outage, the heartbeat that pushes what the outage recorded goes before
        any call: Redis answers from figures that include it."""
        drained = not flush
        while True:
            if self._down:
                if self._clock() < self._down_until:
                    return local()
                self._mark_up()
                if self._down:  # the recovery failed: the outage goes on
                    return local()
            if drained:
                break
            self._drain()  # also waits for a send in progress; may find Redis gone
            drained = True
        try:
            return remote()
        except self._errors as exc:
            self._mark_down(exc)
            return local()

    def _mark_down(self, exc: BaseException) -> None:
        with self._lock:  # budgets of this outage go on from the last one's figures until those reach Redis
            first = not self._down
            self._down, self._down_until = True, self._clock() + self._retry
        if first:
            log.warning(
                "redis state store unreachable (%s: %s): using local in-process state; retrying every %.1fs",
                type(exc).__name__,
                str(exc).split("\n")[0][:200],
                self._retry,
            )

    def _mark_up(self) -> None:
        with self._budget_gate.exclusive():
            with self._lock:
                if not self._down:
                    return
                self._down = False
                unpushed = {k: hold for k, hold in self._held_local.items() if hold > 0}
                for key, hold in unpushed.items():  # local reservations still open become shared ones
                    self._held_remote[key] = self._held_remote.get(key, 0.0) + hold
                self._held_local = {}
            try:  # republishes this replica's in-flight counts and holds, adds the outage's spend to Redis
                self._beat_locked(unpushed=unpushed)
                with self._lock:  # in Redis now: the next outage starts from the figures last seen there
                    self._outage = MemoryStore(clock=self._clock, wall=self._wall)
                    self._base = {}
            except self._errors:  # a recovery that pushed nothing: the outage goes on, its figures with it
                with self._lock:  # the holds made during the outage are still only local
                    for key, hold in unpushed.items():
                        self._held_remote[key] = max(0.0, self._held_remote.get(key, 0.0) - hold)
                    self._held_local = unpushed
                    self._down, self._down_until = True, self._clock() + self._retry
                return
        log.warning("redis state store reachable again: shared state restored")
        self._valid_until = -math.inf
