"""Budget spend on Redis: RedisStore's reserve / settle / spent calls in, atomic holds owned by this replica (under
a lease) and spend figures out; this replica's share of what is left during a Redis outage; and its ledger of its
own spend, which it re-publishes after a Redis reset, followed by a grace of one hold per replica and key (the rules
are in docs/state.md). A mixin: it works on RedisStore's state (`_do`, `_lock`, the scripts, the outage
MemoryStore)."""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

SPEND_TTL = 40 * 86400  # budget buckets (hour / day / month) are dropped 40 days after their last use
SEEN_FORGET = 35 * 86400  # figures (and ledger entries) of keys unused this long, whose bucket cannot be read, go
RESET = object()  # what a script call answers when the Redis epoch is not this replica's (a reset)
AGAIN = object()  # the outage began or ended while a budget call waited: it runs again, on the other side
# AGAIN turns a budget call takes before it stops turning: reserve() gives up with a RedisError (holding nothing),
# spent() answers with the figures Redis showed last (a read feeds decide(), which must not fail). Each turn follows an
# outage starting or ending while the call waited; an outage ends at most once per `retry` (or at an explicit ping()).
# settle() has no bound: giving up would lose the spend, so it runs until the state holds still for one call.
FLIP_TURNS = 8
# the engine's spend keys (engine/runtime/budget.py): period:bucket[:attr=value], the bucket in UTC
_BUCKETS = {
    "hourly": (re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}"), "%Y-%m-%dT%H"),
    "daily": (re.compile(r"\d{4}-\d{2}-\d{2}"), "%Y-%m-%d"),
    "monthly": (re.compile(r"\d{4}-\d{2}"), "%Y-%m"),
}


class Wait(NamedTuple):
    """What reserve()'s script answers when this replica already had its one hold of a reset's grace on the key."""

    used: float  # spent + reserved
    until: float  # wall time the grace ends


def grace_after_reset(beat_every: float) -> float:
    """Seconds of the grace after a Redis reset (docs/state.md): every live replica heartbeats, and so re-publishes
    its spend, at least every `beat_every` seconds; half an interval and half a second more cover a late one."""
    return 1.5 * beat_every + 0.5


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _turn(turns: int) -> int:
    """One more AGAIN turn of a reserve(); raises RedisError at FLIP_TURNS (Redis is flapping)."""
    if turns + 1 >= FLIP_TURNS:
        import redis

        raise redis.exceptions.RedisError(f"the Redis state store went down or came back {FLIP_TURNS} times in a call")
    return turns + 1


def bucket_open(key: str, now: float) -> bool:
    """Whether the budget bucket of spend key `key` (`daily:2025-01-31[:user=x]`) is the current one at epoch time
    `now`; True for a key whose bucket cannot be read (kept until unused for SEEN_FORGET)."""
    period, _, rest = key.partition(":")
    form = _BUCKETS.get(period)
    stamp = rest.split(":", 1)[0]
    if form is None or not form[0].fullmatch(stamp):
        return True
    return stamp == time.strftime(form[1], time.gmtime(now))


class Gate:
    """Budget calls share it; the heartbeat (which republishes this replica's holds as absolute figures, and its
    ledger after a reset) takes it alone, so it never publishes a figure a call in progress is changing. A waiting
    exclusive holder goes first. Never wait for it holding the store's `_lock` or from inside a shared section."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._shared = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._shared:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class SpendMixin:
    """reserve / settle / spent for RedisStore."""

    replica_id: str
    _seen: dict[str, list[float]]  # key -> [spent, reserved, monotonic time used]
    _base: dict[str, float]
    _held_remote: dict[str, float]
    _held_local: dict[str, float]
    _pending: dict[str, float]
    _released: dict[str, float]
    _ledger: dict[str, list[float]]  # key -> [own spend since start, monotonic time used]
    _epoch: str | None
    _budget_gate: Gate
    _lease: float
    _replicas: int
    _grace_until: float
    _outage: Any
    _lock: Any
    _redis: Any
    _reserve: Any
    _settle: Any
    _spent: Any
    _clock: Any
    _wall: Any
    _do: Any
    _down: bool
    _k: Any
    _kh: list[str]
    _reset: Any

    def _saw(self, key: str, spent: float, reserved: float) -> None:
        """Remember `key`'s shared figures (lock held)."""
        self._seen[key] = [spent, reserved, self._clock()]

    def _spent_by_me(self, key: str, actual: float) -> None:
        """Add to this replica's ledger (lock held)."""
        if not actual:
            return
        entry = self._ledger.get(key)
        if entry is None:
            self._ledger[key] = [actual, self._clock()]
        else:
            entry[0] += actual
            entry[1] = self._clock()

    def _seed(self, key: str) -> float:
        """In an outage, before the first local figure for `key`: start from what Redis last showed (lock held).
        Returns the used figure the outage started from."""
        base = self._base.get(key)
        if base is None:
            seen = self._seen.get(key)
            held_remote, held_local = self._held_remote.get(key, 0.0), self._held_local.get(key, 0.0)
            used = max(seen[0] + seen[1] if seen else 0.0, held_remote)
            self._outage.settle(key, 0.0, used - held_remote)
            if held_remote + held_local > 0:  # this replica's holds stay reservations, released when settled
                self._outage.reserve(key, held_remote + held_local, math.inf)
            base = self._base[key] = used + held_local
        return base

    def _spend_call(self, run: Callable[[str], Any]) -> Any:
        """run(epoch) (a script call and what follows it locally) alongside other budget calls; when Redis answers
        that its epoch is not this replica's (a reset, or this replica's first call), re-publish and run again."""
        for _ in range(3):
            with self._budget_gate.shared():
                if self._down:  # an outage began while this call waited: never a hold it does not count
                    return AGAIN
                epoch = self._epoch
                out = RESET if epoch is None else run(epoch)
            if out is not RESET:
                return out
            self._reset(epoch)
        import redis

        raise redis.exceptions.RedisError("the Redis epoch changed three times in one call")

    def _keys(self, key: str) -> list[str]:
        return [self._k("spend", key), *self._kh]

    def reserve(self, key: str, amount: float, limit: float) -> tuple[bool, float]:
        def run(epoch: str) -> Any:
            now = self._wall()
            args = [epoch, self.replica_id, key, amount, limit, SPEND_TTL, now, now + self._lease, self._k("spend", "")]
            done, before, spent, reserved = self._reserve(keys=self._keys(key), args=args)
            if int(done) == -2:  # this replica's one hold of a reset's grace on this key is taken (docs/state.md)
                with self._lock:
                    self._grace_until = float(reserved)
                return Wait(float(before), float(reserved))
            if int(done) < 0:
                return RESET
            with self._lock:
                if done:
                    self._held_remote[key] = self._held_remote.get(key, 0.0) + amount
                self._saw(key, float(spent), float(reserved))
            return bool(done), float(before)

        def local() -> Any:
            with self._budget_gate.shared(), self._lock:  # this replica's share of what was left (docs/state.md)
                if not self._down:  # a hold made here now would be taken for one in Redis
                    return AGAIN
                base = self._seed(key)
                done, used = self._outage.reserve(key, amount, base + max(0.0, limit - base) / self._replicas)
                if done:
                    self._held_local[key] = self._held_local.get(key, 0.0) + amount
            return done, used

        turns = 0
        while True:
            out = self._do(lambda: self._spend_call(run), local)
            if out is AGAIN:
                turns = _turn(turns)
                continue
            if not isinstance(out, Wait):
                return out
            if _on_event_loop():  # never block an event loop: refused, as when the money is not there
                return False, out.used
            time.sleep(min(0.05, max(0.001, out.until - self._wall())))  # until the grace ends (bounded by it)

    def grace_left(self) -> float:
        """Seconds left of the grace after a Redis reset during which this replica gets one hold per budget key
        (0 when none is known to run): what a refused request may wait before it is tried again."""
        return max(0.0, self._grace_until - self._wall())

    def settle(self, key: str, reserved: float, actual: float) -> float:
        def split() -> tuple[float, float]:  # lock held: the hold was made in Redis, or locally during an outage
            remote = reserved if self._held_remote.get(key, 0.0) >= reserved - 1e-12 else 0.0
            return remote, reserved - remote

        def release(remote_hold: float, local_hold: float) -> None:  # lock held
            if remote_hold:
                left = self._held_remote.get(key, 0.0) - remote_hold
                if left < 1e-12:
                    self._held_remote.pop(key, None)
                else:
                    self._held_remote[key] = left
            if local_hold:
                self._held_local[key] = max(0.0, self._held_local.get(key, 0.0) - local_hold)
            self._spent_by_me(key, actual)

        def run(epoch: str) -> Any:
            with self._lock:
                remote_hold, local_hold = split()
            args = [epoch, self.replica_id, key, remote_hold, actual, SPEND_TTL, self._wall() + self._lease]
            code, total, reserved_after = self._settle(keys=self._keys(key), args=[*args, self._k("spend", "")])
            if int(code) < 0:
                return RESET
            with self._lock:
                release(remote_hold, local_hold)
                self._saw(key, float(total), float(reserved_after))
            return float(total)

        def local() -> Any:
            with self._budget_gate.shared(), self._lock:
                if not self._down:  # the holds were republished: release them in Redis
                    return AGAIN
                remote_hold, local_hold = split()
                self._seed(key)
                release(remote_hold, local_hold)
                self._pending[key] = self._pending.get(key, 0.0) + actual
                if remote_hold:  # the heartbeat republishes the holds; this says what Redis had (after a reset)
                    self._released[key] = self._released.get(key, 0.0) + remote_hold
                return self._outage.settle(key, reserved, actual)

        while (out := self._do(lambda: self._spend_call(run), local)) is AGAIN:
            pass
        return float(out)

    def spent(self, key: str) -> tuple[float, float]:
        def run(epoch: str) -> Any:
            args = [epoch, self._wall(), self._k("spend", ""), SPEND_TTL]
            code, spent, reserved = self._spent(keys=self._keys(key), args=args)
            if int(code) < 0:
                return RESET
            out = float(spent), float(reserved)
            with self._lock:
                self._saw(key, *out)
            return out

        def local() -> Any:
            with self._budget_gate.shared(), self._lock:
                if not self._down:  # the outage ended while this read waited: seeding now would start the next
                    return AGAIN  # outage from these figures, not from the ones Redis shows then
                self._seed(key)
                return self._outage.spent(key)

        for _ in range(FLIP_TURNS):
            if (out := self._do(lambda: self._spend_call(run), local)) is not AGAIN:
                return out
        with self._lock:  # Redis is flapping: what it showed last
            seen = self._seen.get(key)
        return (seen[0], seen[1]) if seen else (0.0, 0.0)
