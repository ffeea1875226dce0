"""Budget spend on Redis: RedisStore's reserve / settle / spent, with this replica's share of what is left
during a Redis outage (the rule is in docs/state.md). A mixin: it works on RedisStore's
state (`_do`, `_lock`, the scripts, the outage MemoryStore)."""

from __future__ import annotations

import math
from typing import Any

SPEND_TTL = 40 * 86400  # budget buckets (hour / day / month) are dropped 40 days after their last use


class SpendMixin:
    """reserve / settle / spent for RedisStore."""

    _seen: dict[str, list[float]]
    _base: dict[str, float]
    _held_remote: dict[str, float]
    _held_local: dict[str, float]
    _pending: dict[str, list[float]]
    _replicas: int
    _outage: Any
    _lock: Any
    _redis: Any
    _reserve: Any
    _settle: Any
    _clock: Any
    _do: Any
    _k: Any

    def _saw(self, key: str, used: float) -> None:
        """Remember `key`'s shared spent + reserved (lock held)."""
        self._seen[key] = [used, self._clock()]

    def _seed(self, key: str) -> float:
        """In an outage, before the first local figure for `key`: start from what Redis last showed (lock held).
        Returns the used figure the outage started from."""
        base = self._base.get(key)
        if base is None:
            seen = self._seen.get(key)
            held_remote, held_local = self._held_remote.get(key, 0.0), self._held_local.get(key, 0.0)
            used = max(seen[0] if seen else 0.0, held_remote)
            self._outage.settle(key, 0.0, used - held_remote)
            if held_remote + held_local > 0:  # this replica's holds stay reservations, released when settled
                self._outage.reserve(key, held_remote + held_local, math.inf)
            base = self._base[key] = used + held_local
        return base

    def reserve(self, key: str, amount: float, limit: float) -> tuple[bool, float]:
        def remote() -> tuple[bool, float]:
            done, before, after = self._reserve(keys=[self._k("spend", key)], args=[amount, limit, SPEND_TTL])
            with self._lock:
                if done:
                    self._held_remote[key] = self._held_remote.get(key, 0.0) + amount
                self._saw(key, float(after))
            return bool(done), float(before)

        def local() -> tuple[bool, float]:
            with self._lock:  # this replica's share of what was left (module docstring)
                base = self._seed(key)
                done, used = self._outage.reserve(key, amount, base + max(0.0, limit - base) / self._replicas)
                if done:
                    self._held_local[key] = self._held_local.get(key, 0.0) + amount
            return done, used

        return self._do(remote, local)

    def settle(self, key: str, reserved: float, actual: float) -> float:
        # release the hold where it was made: in Redis or in local state during an outage
        remote_hold = reserved if self._held_remote.get(key, 0.0) >= reserved - 1e-12 else 0.0
        local_hold = reserved - remote_hold

        def release() -> None:  # lock held
            if remote_hold:
                self._held_remote[key] = max(0.0, self._held_remote.get(key, 0.0) - remote_hold)
            if local_hold:
                self._held_local[key] = max(0.0, self._held_local.get(key, 0.0) - local_hold)

        def remote() -> float:
            total, reserved_after = self._settle(keys=[self._k("spend", key)], args=[remote_hold, actual, SPEND_TTL])
            with self._lock:
                release()
                self._saw(key, float(total) + float(reserved_after))
            return float(total)

        def local() -> float:
            with self._lock:
                self._seed(key)
                release()
                pending = self._pending.setdefault(key, [0.0, 0.0])
                pending[0] += remote_hold
                pending[1] += actual
                return self._outage.settle(key, reserved, actual)

        return self._do(remote, local)

    def spent(self, key: str) -> tuple[float, float]:
        def remote() -> tuple[float, float]:
            spent, reserved = self._redis.hmget(self._k("spend", key), "spent", "reserved")
            out = float(spent or 0.0), float(reserved or 0.0)
            with self._lock:
                self._saw(key, out[0] + out[1])
            return out

        def local() -> tuple[float, float]:
            with self._lock:
                self._seed(key)
                return self._outage.spent(key)

        return self._do(remote, local)
