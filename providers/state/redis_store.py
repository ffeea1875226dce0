"""Shared router state on Redis: the StateStore / ExecutionStore calls of engine.runtime.state in, the same answers
as MemoryStore out, kept in one Redis so several gateway replicas behave as one router (see docs/state.md).
RedisStore is assembled here from its mixins (outage.py, inflight.py, reads.py, circuits.py, spend.py, heartbeat.py,
sender.py); this module keeps its set-up, fork and exit handling and housekeeping."""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from engine.runtime.state import MemoryStore
from providers.state import lua
from providers.state.circuits import CircuitsMixin
from providers.state.heartbeat import HeartbeatMixin
from providers.state.inflight import InflightMixin
from providers.state.outage import OutageMixin
from providers.state.reads import ReadsMixin
from providers.state.sender import SenderMixin, Signal, run_sender
from providers.state.spend import SPEND_TTL, Gate, SpendMixin, grace_after_reset

log = logging.getLogger("modelroute.state")

_open: weakref.WeakSet[RedisStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_open):
        try:
            store._after_fork()
        except Exception:  # never break the child's start
            log.exception("redis state store: setting up a forked child failed")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _close_all() -> None:  # a replica that exits cleanly removes its in-flight counts at once
    for store in list(_open):
        try:
            store.close()
        except Exception:  # never fail interpreter exit
            pass


class RedisStore(OutageMixin, InflightMixin, ReadsMixin, CircuitsMixin, SpendMixin, HeartbeatMixin, SenderMixin):
    """A StateStore / ExecutionStore on Redis with MemoryStore semantics (see the module docstring).

    `url` like redis://127.0.0.1:6379/0 (or pass `client`, a redis.Redis); `prefix` namespaces the keys so
    several routers can share one Redis. `replica_ttl`: seconds without a heartbeat after which a replica counts
    as dead; `hold_lease`: seconds after this replica's last heartbeat (or reservation) at which any replica
    releases its budget holds (it died mid-request); `claim_ttl`: seconds an in-flight claim made by allow() waits
    for its add_in_flight(+1); `linger`: seconds the background sender waits after it is woken, so that a short
    request's claim and record leave in one round trip after its answer rather than in two during it;
    `background=False` runs no thread (call `flush()` / `heartbeat()` yourself, as tests do)."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "modelroute:",
        client: Any = None,
        refresh: float = 0.1,
        retry: float = 1.0,
        timeout: float = 0.5,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        replica_ttl: float = 30.0,
        hold_lease: float = 30.0,
        claim_ttl: float = 2.0,
        flush_after: float = 0.05,
        linger: float = 0.002,
        background: bool = True,
        replica_id: str | None = None,
    ):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = url
        self._redis = (
            client
            if client is not None
            else redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
                decode_responses=True,
                health_check_interval=0,
            )
        )
        self._errors = (redis.exceptions.RedisError, OSError)
        self._noscript = redis.exceptions.NoScriptError
        self._response_error = redis.exceptions.ResponseError
        self._conn: Any = None  # the sender's own connection (see _send_batch)
        self._p = prefix
        self._wall, self._clock = wall, clock
        self._refresh, self._retry = refresh, retry
        self._local = MemoryStore(clock=clock, wall=wall)
        self._lock = threading.Lock()
        self._sending = threading.RLock()  # one _drain() at a time: flush() returns after a send in progress
        self._down_until = 0.0
        self._down = False
        self._closed = False
        self._valid_until = -math.inf
        self._unavailable: frozenset[str] = frozenset()
        self._not_closed: frozenset[str] = frozenset()  # models whose circuit is open, half-open or probing
        self._latency: Mapping[str, float] = {}
        self._rates: dict[float, tuple[float, Mapping[str, float]]] = {}  # window -> (valid until, success rates)
        self._queue: list[tuple[list[str], list[Any], Callable[[], Any]]] = []  # records for the sender
        # in flight (this replica): own counts, unconsumed claims (monotonic times), counts not yet sent
        self.replica_id = replica_id or uuid.uuid4().hex[:16]
        if "|" in self.replica_id:
            raise ValueError("replica_id must not contain '|'")
        if not hold_lease > 0:
            raise ValueError("hold_lease must be a positive number of seconds")
        self._ttl, self._claim_ttl, self._flush_after = replica_ttl, claim_ttl, flush_after
        self._lease = hold_lease
        self._beat_every = min(replica_ttl, hold_lease) / 6  # renews liveness and the holds' lease
        self._grace = grace_after_reset(self._beat_every)
        self._grace_until = -math.inf  # wall time the last grace this replica was told of ends
        self._next_beat = -math.inf
        self._touched = -math.inf  # monotonic time this replica's liveness was last refreshed
        self._own: dict[str, int] = {}
        self._claims: dict[str, deque[float]] = {}
        self._dirty: dict[str, tuple[int, int]] = {}
        self._dirty_since = math.inf
        self._seq = time.time_ns() // 1000  # counts are ordered by seq, also across restarts of one replica_id
        self._replicas = 1  # live replicas at the last heartbeat
        # budgets
        self._held_remote: dict[str, float] = {}  # money this replica holds in Redis reservations, per key
        self._held_local: dict[str, float] = {}  # ... and in local reservations made during an outage
        self._pending: dict[str, float] = {}  # key -> spend settled during an outage, added once Redis is back
        self._released: dict[str, float] = {}  # key -> holds in Redis released during an outage (until it is back)
        self._seen: dict[str, list[float]] = {}  # key -> [spent, reserved last seen in Redis, monotonic time used]
        self._ledger: dict[str, list[float]] = {}  # key -> [this replica's spend since start, monotonic time used]
        self._epoch: str | None = None  # the Redis epoch this replica's figures belong to (None: not seen yet)
        self._budget_gate = Gate()  # budget calls share it, the heartbeat takes it alone
        self._outage = MemoryStore(clock=clock, wall=wall)  # budget figures of the current outage
        self._base: dict[str, float] = {}  # key -> used figure the outage started from (seeded keys)
        r = self._redis
        self._allow = r.register_script(lua.ALLOW)
        self._record = r.register_script(lua.RECORD)
        self._reserve = r.register_script(lua.RESERVE)
        self._settle = r.register_script(lua.SETTLE)
        self._spent = r.register_script(lua.SPENT)
        self._flush_script = r.register_script(lua.FLUSH)
        self._beat_script = r.register_script(lua.HEARTBEAT)
        self._retire = r.register_script(lua.RETIRE)
        self._kc, self._kl = self._k("circuits"), self._k("latency")
        self._kf = [self._k("inflight"), self._k("inflight_by"), self._k("replicas")]
        kg = self._k("grace")  # the grace after a Redis reset (one hold per replica and key)
        self._kh = [self._k("holds"), self._k("leases"), self._k("epoch"), kg]  # with a spend hash: budget scripts'
        self._kb = [*self._kf, self._k("leases"), self._k("holds"), self._k("epoch"), kg]  # the heartbeat's
        self._sig = Signal(linger)
        self._thread: threading.Thread | None = None
        _open.add(self)
        if background:
            self._start_sender()

    def _start_sender(self) -> None:
        self._thread = threading.Thread(
            target=run_sender, args=(weakref.ref(self), self._sig), name="modelroute-redis-state", daemon=True
        )
        self._thread.start()

    def _after_fork(self) -> None:
        """In a forked child (e.g. a pre-loading worker server): a replica of its own. The parent's calls in
        flight are the parent's; its locks, sender thread and the sender's socket do not survive the fork."""
        self.replica_id = uuid.uuid4().hex[:16]
        self._lock, self._sending = threading.Lock(), threading.RLock()
        self._conn = None
        self._redis.connection_pool.reset()  # redis-py would do this on first use (pid check); be explicit
        self._own, self._claims, self._dirty, self._dirty_since = {}, {}, {}, math.inf
        self._queue = []
        self._held_remote, self._held_local = {}, {}  # the parent's holds are settled by the parent...
        self._pending, self._released, self._ledger, self._epoch = {}, {}, {}, None  # ... and its spend too
        self._budget_gate = Gate()
        self._next_beat = self._touched = -math.inf
        self._valid_until = -math.inf
        linger, had_thread = self._sig.linger, self._thread is not None
        self._sig, self._thread = Signal(linger), None
        if had_thread and not self._closed:
            self._start_sender()

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self._p!r}, replica={self.replica_id}, {self.status})"

    @property
    def replicas(self) -> int:
        """Live replicas (this one included) at the last heartbeat; 1 before the first."""
        return self._replicas

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    def _tick(self) -> None:
        """The background thread's work: heartbeats, expired claims and counts left waiting."""
        now = self._clock()
        if now >= self._next_beat or (self._down and now >= self._down_until):
            self.heartbeat()
            return
        with self._lock:
            self._expire_claims()
            due = bool(self._queue) or (bool(self._dirty) and now - self._dirty_since >= self._flush_after)
        if due:
            self._drain()

    def flush(self) -> None:
        """Send in-flight counts and records still waiting (and drop claims older than `claim_ttl`) now."""
        with self._lock:
            self._expire_claims()
        self._drain()

    # -- housekeeping --------------------------------------------------------------------------------
    def ping(self) -> bool:
        """True when Redis answers now (also ends a degraded period early); a heartbeat."""
        self._down_until = 0.0
        return self.heartbeat()

    def clear(self) -> None:
        """Delete every key under this store's prefix (tests, resets) and forget this replica's spend and holds
        (other replicas see a Redis reset and re-publish theirs)."""
        with self._budget_gate.exclusive():
            keys = list(self._redis.scan_iter(match=self._p + "*", count=500))
            if keys:
                self._redis.delete(*keys)
            with self._lock:
                self._epoch, self._ledger, self._seen, self._held_remote = None, {}, {}, {}
                self._pending, self._released = {}, {}
        self._valid_until = -math.inf

    def close(self) -> None:
        """Stop the background thread, remove this replica and its in-flight counts from Redis, disconnect."""
        if self._closed:
            return
        self._closed = True
        _open.discard(self)
        with self._sig.cond:
            self._sig.stop = True
            self._sig.cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        self._drain()  # everything pending goes out before the replica's counts are removed
        if not (self._down and self._clock() < self._down_until):
            try:
                self._retire(
                    keys=[*self._kf, self._k("leases"), self._k("holds")],
                    args=[self.replica_id, self._k("spend", ""), SPEND_TTL],
                )
            except self._errors:
                pass
        if self._conn is not None:
            self._conn.disconnect()
        self._redis.close()
