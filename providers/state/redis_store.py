"""Shared router state on Redis: the StateStore / ExecutionStore calls of engine.runtime.state in, the same answers
as MemoryStore out, kept in one Redis so several gateway replicas behave as one router (see docs/state.md)."""

from __future__ import annotations

import atexit
import functools
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

from engine.runtime.state import EWMA_ALPHA, PROBE, CircuitConfig, CircuitInfo, Claim, MemoryStore, ModelStats, Outcome
from providers.state import lua
from providers.state.heartbeat import HeartbeatMixin
from providers.state.sender import SenderMixin, Signal, run_sender
from providers.state.spend import SPEND_TTL, Gate, SpendMixin, grace_after_reset

log = logging.getLogger("modelroute.state")

PROBE_LEASE = 60.0  # seconds a half-open probe blocks other calls if its replica never records it

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


def _parse(value: str | None) -> tuple[str, float, bool, float]:
    if not value:
        return "closed", 0.0, False, 0.0
    state, until, probing, lease = value.split("|")
    return state, float(until), probing == "1", float(lease)


class RedisStore(SpendMixin, HeartbeatMixin, SenderMixin):
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

    # -- degradation ---------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        """ "redis" when Redis answers, else "local (redis unreachable)"."""
        return "local (redis unreachable)" if self._down else "redis"

    @property
    def replicas(self) -> int:
        """Live replicas (this one included) at the last heartbeat; 1 before the first."""
        return self._replicas

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

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

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

    # -- read by decide() ----------------------------------------------------------------------------
    def next_index(self, key: str) -> int:
        return self._do(lambda: int(self._redis.incr(self._k("rr", key))) - 1, lambda: self._local.next_index(key))

    def in_flight(self, model: str) -> int:
        return self._do(lambda: max(0, int(self._redis.hget(self._kf[0], model) or 0)), lambda: self._own.get(model, 0))

    def _load(self) -> None:
        """Refresh the circuit snapshot and the measured latencies (one round trip)."""

        def remote() -> None:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hgetall(self._kc)
            pipe.hgetall(self._kl)
            circuits, latency = pipe.execute()
            now = self._wall()
            blocked, expiries, not_closed = set(), [], set()
            for model, value in circuits.items():
                state, until, probing, lease = _parse(value)
                if state != "closed" or probing:
                    not_closed.add(model)
                if state == "open" and now < until:
                    blocked.add(model)
                    expiries.append(until)
                elif state in ("open", "half_open") and probing and now < lease:
                    blocked.add(model)
                    expiries.append(lease)
            self._unavailable = frozenset(blocked) if blocked != self._unavailable else self._unavailable
            self._not_closed = frozenset(not_closed) if not_closed != self._not_closed else self._not_closed
            self._latency = {m: float(v) for m, v in latency.items()}
            mono = self._clock()
            self._valid_until = min([mono + self._refresh, *(mono + (t - now) for t in expiries)])

        self._do(remote, lambda: None, flush=False)  # the sender sends what is pending

    def unavailable(self) -> frozenset[str]:
        if self._clock() >= self._valid_until:
            self._load()
        return self._local.unavailable() if self._down else self._unavailable

    def latency_ms(self) -> Mapping[str, float]:
        if self._clock() >= self._valid_until:
            self._load()
        return self._local.latency_ms() if self._down else self._latency

    def success_rates(self, window: float) -> Mapping[str, float]:
        """Success rates over the last `window` seconds (at most lua.HEALTH_HORIZON_S), counted in Redis by every
        replica in lua.HEALTH_BUCKET_S buckets, so a window is measured to within one bucket; read once per refresh
        interval (two round trips), this replica's own records while Redis is down."""
        mono = self._clock()
        cached = self._rates.get(window)
        if cached is not None and mono < cached[0]:
            return cached[1]

        def remote() -> Mapping[str, float]:
            models = sorted(self._redis.smembers(self._k("models")))
            pipe = self._redis.pipeline(transaction=False)
            for m in models:
                pipe.hgetall(self._k("health", m))
            first = math.floor((self._wall() - min(window, lua.HEALTH_HORIZON_S)) / lua.HEALTH_BUCKET_S)
            rates: dict[str, float] = {}
            for m, counts in zip(models, pipe.execute(), strict=True):
                n = ok = 0
                for field, value in counts.items():
                    bucket, _, kind = field.partition(":")
                    if int(bucket) >= first:
                        if kind == "n":
                            n += int(value)
                        else:
                            ok += int(value)
                if n:
                    rates[m] = ok / n
            self._rates[window] = (mono + self._refresh, rates)
            return rates

        return self._do(remote, lambda: self._local.success_rates(window), flush=False)

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

    def _closed_now(self, model: str) -> bool:
        """True when the decide() snapshot is current and says `model`'s circuit is plainly closed."""
        return not self._down and model not in self._not_closed and self._clock() < self._valid_until

    def allow(self, model: str) -> Claim:
        if self._closed_now(model):  # fast path: allowed locally, the claim goes out through the sender
            with self._lock:
                self._claims.setdefault(model, deque()).append(self._clock())
                self._mark_dirty(model)
            self._wake()
            return True
        return self._do(lambda: self._gate(model, force=False), lambda: self._local.allow(model), flush=False)

    def probe(self, model: str) -> Claim:
        """Claim the half-open probe of `model` now, before its cooldown ends (see ExecutionStore.probe): the
        scripted gate, forced, holding the probe for PROBE_LEASE seconds; False while any replica holds it."""
        return self._do(lambda: self._gate(model, force=True), lambda: self._local.probe(model), flush=False)

    def _gate(self, model: str, *, force: bool) -> Claim:
        """The scripted gate of allow() / probe() (one round trip): True (closed) or PROBE count the call in
        flight (a claim)."""
        with self._lock:  # count the call in flight if the gate lets it through (a claim)
            self._claims.setdefault(model, deque()).append(self._clock())
            self._seq += 1
            args = [model, self._wall(), PROBE_LEASE, int(force), self._value(model), self._seq, *self._take()]
        try:
            code = int(self._allow(keys=[self._kc, *self._kf], args=args))
        except BaseException:
            self._unclaim(model)
            raise
        if code == 0:
            self._unclaim(model)
        if code != 1:  # a claimed probe or a closed gate: decide() must see the circuit now
            self._valid_until = -math.inf
        return PROBE if code == 2 else code == 1

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
        keys = [
            self._kc,
            self._k("fails", model),
            self._k("stats", model),
            self._kl,
            self._k("models"),
            *self._kf,
            self._k("health", model),
        ]
        args = [
            model,
            provider,
            outcome,
            self._wall(),
            cfg.failures,
            cfg.window,
            cfg.cooldown,
            cfg.min_samples,
            "" if latency_ms is None else latency_ms,
            int(input_tokens),
            int(output_tokens),
            float(cost),
            EWMA_ALPHA,
            uuid.uuid4().hex if outcome == "fail" else "",
            int(probe),
        ]
        local = functools.partial(  # the same call on the local store: queued, or the fallback in an outage
            self._local.record,
            model,
            provider,
            outcome,
            cfg,
            latency_ms=latency_ms,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost=cost,
            probe=probe,
        )
        if outcome != "fail" and self._closed_now(model):  # cannot change a closed circuit: the sender sends it
            with self._lock:
                self._queue.append((keys, args, local))
            self._wake()
            return None

        def remote() -> str | None:
            with self._lock:
                publish = self._take()
            change = self._record(keys=keys, args=[*args, *publish])
            if change:
                self._valid_until = -math.inf
            return change if change in ("opened", "closed") else None

        return self._do(remote, local, flush=False)

    def circuit(self, model: str) -> CircuitInfo:
        def remote() -> CircuitInfo:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hget(self._kc, model)
            pipe.zcard(self._k("fails", model))
            value, fails = pipe.execute()
            state, until, _, _ = _parse(value)
            now = self._wall()
            if state == "open" and now >= until:
                state = "half_open"
            if state != "open":
                return CircuitInfo(model, state, int(fails))
            return CircuitInfo(model, state, int(fails), until, until - now)

        return self._do(remote, lambda: self._local.circuit(model))

    def stats(self) -> Mapping[str, ModelStats]:
        def remote() -> Mapping[str, ModelStats]:
            models = sorted(self._redis.smembers(self._k("models")))
            pipe = self._redis.pipeline(transaction=False)
            for m in models:
                pipe.hgetall(self._k("stats", m))
            out = {}
            for m, h in zip(models, pipe.execute(), strict=True):
                out[m] = ModelStats(
                    h.get("provider", ""),
                    int(h.get("calls", 0)),
                    int(h.get("failures", 0)),
                    int(h.get("input_tokens", 0)),
                    int(h.get("output_tokens", 0)),
                    float(h.get("cost", 0.0)),
                    float(h["latency_ms"]) if "latency_ms" in h else None,
                    int(h.get("samples", 0)),
                )
            return out

        return self._do(remote, self._local.stats)

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
