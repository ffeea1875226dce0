"""RedisStore's in-flight counts: this replica's calls starting and ending and the claims allow() makes in, the
counts it publishes (calls running plus unconsumed claims, ordered by seq) out, pending until a script call carries
them as its publish block or the sender flushes them. A mixin on RedisStore's state."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any


class InflightMixin:
    """add_in_flight() and the bookkeeping of this replica's in-flight counts and claims, for RedisStore."""

    replica_id: str
    _lock: Any
    _own: dict[str, int]
    _claims: dict[str, deque[float]]
    _dirty: dict[str, tuple[int, int]]
    _dirty_since: float
    _seq: int
    _touched: float
    _claim_ttl: float
    _kf: list[str]
    _flush_script: Any
    _clock: Callable[[], float]
    _wall: Callable[[], float]
    _do: Any

    # -- in flight: this replica's counts (call with the lock held) ----------------------------------
    def _value(self, model: str) -> int:
        """The count this replica publishes for `model`: calls running plus unconsumed claims."""
        claims = self._claims.get(model)
        return self._own.get(model, 0) + (len(claims) if claims else 0)

    def _mark_dirty(self, model: str) -> None:
        self._seq += 1
        if not self._dirty:
            self._dirty_since = self._clock()
        self._dirty[model] = (self._value(model), self._seq)

    def _take(self, touch: bool = False) -> list[Any]:
        """The publish block of a script call: the counts not yet sent (now no longer pending), and this
        replica's liveness when `touch` or when it was last refreshed more than a second ago."""
        items, self._dirty, self._dirty_since = self._dirty, {}, math.inf
        mono = self._clock()
        now: float | str = ""  # "" tells the script not to refresh liveness
        if touch or mono >= self._touched + 1.0:
            self._touched, now = mono, self._wall()
        out: list[Any] = [self.replica_id, now, len(items)]
        for model, (count, seq) in items.items():
            out += [model, count, seq]
        return out

    def _expire_claims(self) -> None:
        cutoff = self._clock() - self._claim_ttl
        for model in [m for m, c in self._claims.items() if c[0] <= cutoff]:
            claims = self._claims[model]
            while claims and claims[0] <= cutoff:
                claims.popleft()
            if not claims:
                del self._claims[model]
            self._mark_dirty(model)

    def _unclaim(self, model: str) -> None:
        with self._lock:
            claims = self._claims.get(model)
            if claims:
                claims.pop()
                if not claims:
                    del self._claims[model]
            self._mark_dirty(model)

    def _send_dirty(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            args = self._take()
        self._flush_script(keys=self._kf, args=args)

    # -- written by execution ------------------------------------------------------------------------
    def add_in_flight(self, model: str, delta: int) -> None:
        if not delta:
            return
        with self._lock:
            before = self._value(model)
            self._own[model] = max(0, self._own.get(model, 0) + delta)
            claims = self._claims.get(model)
            if delta > 0 and claims:  # the calls allow() already counted
                for _ in range(min(delta, len(claims))):
                    claims.popleft()
                if not claims:
                    del self._claims[model]
            after = self._value(model)
            if after == before:
                return
            self._mark_dirty(model)
        if after > before:  # a call starts: other replicas see it now; an end waits for the next call
            self._do(self._send_dirty, lambda: None, flush=False)
