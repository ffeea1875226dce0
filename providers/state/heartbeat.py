"""RedisStore's heartbeat: this replica's in-flight counts, holds, spend not yet in Redis and (after a Redis reset)
its ledger in; one script call out that renews the replica's liveness and its holds' lease, reaps dead replicas'
counts and expired holds, adds the spend, re-publishes the ledger when the Redis epoch is not the replica's (and
then starts the grace after a reset), and refreshes the figures budgets fall back on in an outage (docs/state.md).
A mixin on RedisStore's state."""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Mapping
from typing import Any

from providers.state.spend import SEEN_FORGET, SPEND_TTL, Gate, bucket_open

log = logging.getLogger("modelroute.state")

SEEN_REFRESH = 3600.0  # heartbeats refresh the spend figures of keys used this recently (seconds)...
SEEN_REFRESH_MAX = 500  # ... at most this many, most recently used first


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class HeartbeatMixin:
    """heartbeat() and the re-publishing after a Redis reset, for RedisStore."""

    replica_id: str
    _seen: dict[str, list[float]]
    _held_remote: dict[str, float]
    _pending: dict[str, float]
    _released: dict[str, float]
    _ledger: dict[str, list[float]]
    _epoch: str | None
    _budget_gate: Gate
    _lease: float
    _ttl: float
    _replicas: int
    _next_beat: float
    _beat_every: float
    _grace: float
    _own: dict[str, int]
    _claims: dict[str, Any]
    _dirty: dict[str, tuple[int, int]]
    _dirty_since: float
    _kb: list[str]
    _lock: Any
    _beat_script: Any
    _clock: Any
    _wall: Any
    _do: Any
    _k: Any
    _expire_claims: Any
    _mark_dirty: Any
    _take: Any

    def heartbeat(self) -> bool:
        """Refresh this replica's liveness, counts and holds (renewing their lease), drop dead replicas' counts and
        expired holds, detect a Redis reset (re-publishing this replica's spend), refresh the replica count and
        spend figures budgets fall back on (docs/state.md). True when Redis answered."""

        def remote() -> bool:
            self._beat()
            return True

        self._next_beat = self._clock() + self._beat_every
        return bool(self._do(remote, lambda: False, flush=False))

    def _beat(self) -> None:
        with self._budget_gate.exclusive():
            self._beat_locked()

    def _reset(self, seen: str | None) -> None:
        """A budget script answered that the Redis epoch is not `seen` (this replica's; None before its first
        call): re-publish this replica's ledger and holds, unless another thread did since."""
        with self._budget_gate.exclusive():
            if self._epoch == seen:
                self._beat_locked(republish=True)

    def _beat_locked(self, republish: bool = False, unpushed: Mapping[str, float] | None = None) -> None:
        """One heartbeat round trip, two when it finds an unnoticed reset (the gate held exclusively)."""
        while True:
            with self._lock:
                known = self._epoch
                args, keys, n_ledger = self._beat_args(republish or known is None, unpushed or {})
            self._next_beat = self._clock() + self._beat_every
            out = self._beat_script(keys=self._kb, args=args)
            if _text(out[4]) != "reset":
                break
            republish = True
        live, dead, dropped, released = (int(x) for x in out[:4])
        with self._lock:
            # right after a reset the replica set is being rebuilt (one heartbeat each): keep the count known before
            reset = _text(out[4]) == "adopted" and known is not None
            self._replicas = max(1, live, self._replicas if reset else 1)
            self._epoch = _text(out[5])
            self._pending, self._released = {}, {}  # in Redis now, or (after a reset) part of what was re-published
            for i, key in enumerate(keys):
                seen = self._seen.get(key)
                if seen is not None:
                    seen[0], seen[1] = float(out[6 + 2 * i]), float(out[7 + 2 * i])
        if _text(out[4]) == "adopted" and known is not None:
            log.warning(
                "redis state store: Redis was reset (its epoch changed): re-published this replica's spend and "
                "holds (%d budget key(s))",
                n_ledger,
            )
        if dead or dropped or released:
            log.info(
                "redis state store: dropped %d dead replica(s), %d in-flight call(s) and %d hold(s) they held",
                dead,
                dropped,
                released,
            )

    def _beat_args(self, republish: bool, unpushed: Mapping[str, float]) -> tuple[list[Any], list[str], int]:
        """The heartbeat script's arguments, the keys it reports figures for and the number of ledger entries
        (lock held). `unpushed`: holds made during an outage, now among `_held_remote` but never in Redis."""
        self._expire_claims()
        models = set(self._own) | set(self._claims) | set(self._dirty)  # an expired claim's 0 must go out too
        self._dirty, self._dirty_since = {}, math.inf
        for model in models:
            self._mark_dirty(model)
        publish = self._take(touch=True)
        now, wall = self._clock(), self._wall()
        for key in [k for k, (*_, used) in self._seen.items() if used < now - SEEN_FORGET]:
            del self._seen[key]
        for key in [k for k, (_, used) in self._ledger.items() if used < now - SEEN_FORGET or not bucket_open(k, wall)]:
            del self._ledger[key]
        recent = sorted(
            ((used, k) for k, (*_, used) in self._seen.items() if used >= now - SEEN_REFRESH), reverse=True
        )[:SEEN_REFRESH_MAX]
        keys = [k for _, k in recent]
        holds = [(k, v) for k, v in self._held_remote.items() if v > 1e-12]
        pending = list(self._pending.items())
        ledger: list[tuple[str, float, float, float]] = []
        if republish:  # this replica's spend; after a reset, also what of it Redis had and the figures it saw there
            after_reset = self._epoch is not None
            wanted = set(self._ledger)
            if after_reset:  # its holds, and the keys it only read, are in what it saw
                wanted |= set(self._held_remote) | {k for k in keys if bucket_open(k, wall)}
            for key in sorted(wanted):
                amount = self._ledger[key][0] if key in self._ledger else 0.0
                seen = self._seen.get(key)
                if not after_reset:
                    ledger.append((key, amount, 0.0, 0.0))
                    continue
                pushed = max(0.0, amount - self._pending.get(key, 0.0)) + self._released.get(key, 0.0)
                pushed += max(0.0, self._held_remote.get(key, 0.0) - unpushed.get(key, 0.0))
                ledger.append((key, amount, pushed, seen[0] + seen[1] if seen else 0.0))
        args: list[Any] = [
            self._ttl,
            wall,
            self._epoch or "",
            uuid.uuid4().hex,
            wall + self._lease,
            self._k("spend", ""),
            SPEND_TTL,
            int(republish),
            self._grace,
        ]
        for section in (holds, pending, ledger):
            args.append(len(section))
            for entry in section:
                args += entry
        args += [len(keys), *keys, *publish]
        return args, keys, len(ledger)
