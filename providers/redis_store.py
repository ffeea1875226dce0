"""Shared router state on Redis: the StateStore / ExecutionStore calls of engine/state.py in, the same answers as
MemoryStore out, kept in one Redis so several gateway replicas behave as one router.

Round-robin positions are INCR counters; in-flight counts, circuits, health stats, measured latency and budget
spend live in hashes; every read-modify-write (the circuit gate, recording a call, reserving and settling
money) is one Lua script, so it is atomic across replicas. Times are wall-clock epoch seconds from `wall`
(replicas must agree on the time, as NTP-synced hosts do). decide() reads `unavailable()` and `latency_ms()`
from a snapshot refreshed at most every `refresh` seconds (and at once after this replica changes a circuit);
the circuit gate `allow()` always asks Redis, so a circuit opened by one replica stops calls in all of them.

When Redis is unreachable every call falls back to a local MemoryStore (one WARNING per outage; requests never
fail because of Redis) and Redis is tried again after `retry` seconds. Spend recorded during an outage is
added to Redis when it is back; budget limits are then enforced per replica, seeded with the last spend seen.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from engine.state import EWMA_ALPHA, CircuitConfig, CircuitInfo, MemoryStore, ModelStats, Outcome

log = logging.getLogger("modelroute.state")

_PARSE = """
local function parse(v)
  if not v then return 'closed', 0, '0', 0 end
  local s, u, p, l = string.match(v, '([^|]*)|([^|]*)|([^|]*)|([^|]*)')
  return s, tonumber(u), p, tonumber(l)
end
local function fmt(x) return string.format('%.17g', x) end
"""
# KEYS: circuits hash; ARGV: model, now, probe lease seconds. Returns 1 (allowed) or 0.
_ALLOW = _PARSE + """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 1 end
local s, u, p, l = parse(v)
local now = tonumber(ARGV[2])
if s == 'closed' then return 1 end
if s == 'open' then
  if now < u then return 0 end
  p = '0'
end
if p == '1' and now < l then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], 'half_open|' .. fmt(u) .. '|1|' .. fmt(now + tonumber(ARGV[3])))
return 1
"""
# KEYS: circuits, fails zset, stats hash, latency hash, models set
# ARGV: model, provider, outcome, now, failures, window, cooldown, min_samples, latency_ms|'', in, out, cost, alpha,
#       nonce. Returns 'opened', 'closed' or ''.
_RECORD = _PARSE + """
local model, outcome, now = ARGV[1], ARGV[3], tonumber(ARGV[4])
if outcome ~= 'cancelled' then
  redis.call('SADD', KEYS[5], model)
  redis.call('HSET', KEYS[3], 'provider', ARGV[2])
  redis.call('HINCRBY', KEYS[3], 'calls', 1)
  if outcome ~= 'ok' then redis.call('HINCRBY', KEYS[3], 'failures', 1) end
  redis.call('HINCRBY', KEYS[3], 'input_tokens', ARGV[10])
  redis.call('HINCRBY', KEYS[3], 'output_tokens', ARGV[11])
  redis.call('HINCRBYFLOAT', KEYS[3], 'cost', ARGV[12])
  if outcome == 'ok' and ARGV[9] ~= '' then
    local lat = tonumber(ARGV[9])
    local prev = redis.call('HGET', KEYS[3], 'latency_ms')
    if prev then lat = tonumber(ARGV[13]) * lat + (1 - tonumber(ARGV[13])) * tonumber(prev) end
    redis.call('HSET', KEYS[3], 'latency_ms', fmt(lat))
    local n = redis.call('HINCRBY', KEYS[3], 'samples', 1)
    if n >= tonumber(ARGV[8]) then redis.call('HSET', KEYS[4], model, fmt(lat)) end
  end
end
local v = redis.call('HGET', KEYS[1], model)
if not v and outcome ~= 'fail' then return '' end
local s, u, p, l = parse(v)
if s == 'half_open' then
  if p ~= '1' then return '' end
  if outcome == 'ok' then
    redis.call('HSET', KEYS[1], model, 'closed|0|0|0')
    redis.call('DEL', KEYS[2])
    return 'closed'
  end
  if outcome == 'fail' then
    redis.call('HSET', KEYS[1], model, 'open|' .. fmt(now + tonumber(ARGV[7])) .. '|0|0')
    return 'opened'
  end
  redis.call('HSET', KEYS[1], model, 'half_open|' .. fmt(u) .. '|0|0')
  return ''
end
if s == 'open' or outcome ~= 'fail' then return '' end
redis.call('ZADD', KEYS[2], now, ARGV[14])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt(now - tonumber(ARGV[6])))
redis.call('EXPIRE', KEYS[2], math.ceil(tonumber(ARGV[6])) + 1)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[1], model, 'open|' .. fmt(now + tonumber(ARGV[7])) .. '|0|0')
  return 'opened'
end
return ''
"""
# KEYS: spend hash; ARGV: amount, limit, ttl. Returns {1|0, used before}.
_RESERVE = """
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local used = spent + reserved
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) + 1e-12 then return {0, string.format('%.17g', used)} end
redis.call('HSET', KEYS[1], 'reserved', string.format('%.17g', reserved + tonumber(ARGV[1])))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, string.format('%.17g', used)}
"""
# KEYS: spend hash; ARGV: reserved, actual, ttl. Returns the spend after.
_SETTLE = """
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0') - tonumber(ARGV[1])
if reserved < 0 then reserved = 0 end
redis.call('HSET', KEYS[1], 'reserved', string.format('%.17g', reserved))
local total = redis.call('HINCRBYFLOAT', KEYS[1], 'spent', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return total
"""
# KEYS: in-flight hash; ARGV: model, delta. Never below zero.
_IN_FLIGHT = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
if n < 0 then redis.call('HSET', KEYS[1], ARGV[1], 0) end
return 0
"""
SPEND_TTL = 40 * 86400  # budget buckets (hour / day / month) are dropped 40 days after their last use


def _parse(value: str | None) -> tuple[str, float, bool, float]:
    if not value:
        return "closed", 0.0, False, 0.0
    state, until, probing, lease = value.split("|")
    return state, float(until), probing == "1", float(lease)


class RedisStore:
    """A StateStore / ExecutionStore on Redis with MemoryStore semantics (see the module docstring).

    `url` like redis://127.0.0.1:6379/0 (or pass `client`, a redis.Redis); `prefix` namespaces the keys so
    several routers can share one Redis."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "modelroute:", client: Any = None,
                 refresh: float = 0.1, retry: float = 1.0, timeout: float = 0.5,
                 wall: Callable[[], float] = time.time, clock: Callable[[], float] = time.monotonic):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = url
        self._redis = client if client is not None else redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
            decode_responses=True, health_check_interval=0)
        self._errors = (redis.exceptions.RedisError, OSError)
        self._p = prefix
        self._wall, self._clock = wall, clock
        self._refresh, self._retry = refresh, retry
        self._local = MemoryStore(clock=clock, wall=wall)
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._down = False
        self._snapshot_at = -math.inf
        self._valid_until = -math.inf
        self._unavailable: frozenset[str] = frozenset()
        self._latency: Mapping[str, float] = {}
        self._held_remote: dict[str, float] = {}  # money this replica holds in Redis reservations, per key
        self._pending: dict[str, list[float]] = {}  # key -> [reserved to release, spend to add] once Redis is back
        self._seeded: set[str] = set()
        self._last_spent: dict[str, float] = {}
        r = self._redis
        self._allow = r.register_script(_ALLOW)
        self._record = r.register_script(_RECORD)
        self._reserve = r.register_script(_RESERVE)
        self._settle = r.register_script(_SETTLE)
        self._inflight = r.register_script(_IN_FLIGHT)

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self._p!r}, {self.status})"

    # -- degradation ---------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        """"redis" when Redis answers, else "local (redis unreachable)"."""
        return "local (redis unreachable)" if self._down else "redis"

    def _do(self, remote: Callable[[], Any], local: Callable[[], Any]) -> Any:
        if self._down and self._clock() < self._down_until:
            return local()
        try:
            result = remote()
        except self._errors as exc:
            self._mark_down(exc)
            return local()
        if self._down:
            self._mark_up()
        return result

    def _mark_down(self, exc: BaseException) -> None:
        with self._lock:
            first = not self._down
            self._down, self._down_until = True, self._clock() + self._retry
        if first:
            log.warning("redis state store unreachable (%s: %s): using local in-process state; retrying every %.1fs",
                        type(exc).__name__, str(exc).split("\n")[0][:200], self._retry)

    def _mark_up(self) -> None:
        with self._lock:
            if not self._down:
                return
            self._down = False
            pending, self._pending = self._pending, {}
            self._seeded.clear()
        log.warning("redis state store reachable again: shared state restored")
        for key, (release, spend) in pending.items():  # spend made during the outage joins the shared figure
            try:
                self._settle(keys=[self._k("spend", key)], args=[release, spend, SPEND_TTL])
            except self._errors as exc:
                self._mark_down(exc)
                return
        self._valid_until = -math.inf

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    # -- read by decide() ----------------------------------------------------------------------------
    def next_index(self, key: str) -> int:
        return self._do(lambda: int(self._redis.incr(self._k("rr", key))) - 1, lambda: self._local.next_index(key))

    def in_flight(self, model: str) -> int:
        return self._do(lambda: max(0, int(self._redis.hget(self._k("inflight"), model) or 0)),
                        lambda: self._local.in_flight(model))

    def _load(self) -> None:
        """Refresh the circuit snapshot and the measured latencies (one round trip)."""
        def remote() -> None:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hgetall(self._k("circuits"))
            pipe.hgetall(self._k("latency"))
            circuits, latency = pipe.execute()
            now = self._wall()
            blocked, expiries = set(), []
            for model, value in circuits.items():
                state, until, probing, lease = _parse(value)
                if state == "open" and now < until:
                    blocked.add(model)
                    expiries.append(until)
                elif state in ("open", "half_open") and probing and now < lease:
                    blocked.add(model)
                    expiries.append(lease)
            self._unavailable = frozenset(blocked) if blocked != self._unavailable else self._unavailable
            self._latency = {m: float(v) for m, v in latency.items()}
            mono = self._clock()
            self._valid_until = min([mono + self._refresh, *(mono + (t - now) for t in expiries)])

        self._do(remote, lambda: None)

    def unavailable(self) -> frozenset[str]:
        if self._clock() >= self._valid_until:
            self._load()
        return self._local.unavailable() if self._down else self._unavailable

    def latency_ms(self) -> Mapping[str, float]:
        if self._clock() >= self._valid_until:
            self._load()
        return self._local.latency_ms() if self._down else self._latency

    # -- written by execution ------------------------------------------------------------------------
    def add_in_flight(self, model: str, delta: int) -> None:
        self._do(lambda: self._inflight(keys=[self._k("inflight")], args=[model, delta]),
                 lambda: self._local.add_in_flight(model, delta))

    def allow(self, model: str) -> bool:
        def remote() -> bool:
            ok = bool(self._allow(keys=[self._k("circuits")], args=[model, self._wall(), 60.0]))
            self._valid_until = -math.inf  # a claimed probe changes what decide() must skip
            return ok

        return self._do(remote, lambda: self._local.allow(model))

    def record(self, model: str, provider: str, outcome: Outcome, cfg: CircuitConfig, *,
               latency_ms: float | None = None, input_tokens: int = 0, output_tokens: int = 0,
               cost: float = 0.0) -> str | None:
        def remote() -> str | None:
            change = self._record(
                keys=[self._k("circuits"), self._k("fails", model), self._k("stats", model), self._k("latency"),
                      self._k("models")],
                args=[model, provider, outcome, self._wall(), cfg.failures, cfg.window, cfg.cooldown,
                      cfg.min_samples, "" if latency_ms is None else latency_ms, int(input_tokens),
                      int(output_tokens), float(cost), EWMA_ALPHA, uuid.uuid4().hex])
            if change:
                self._valid_until = -math.inf
            return change or None

        return self._do(remote, lambda: self._local.record(
            model, provider, outcome, cfg, latency_ms=latency_ms, input_tokens=input_tokens,
            output_tokens=output_tokens, cost=cost))

    def circuit(self, model: str) -> CircuitInfo:
        def remote() -> CircuitInfo:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hget(self._k("circuits"), model)
            pipe.zcard(self._k("fails", model))
            value, fails = pipe.execute()
            state, until, _, _ = _parse(value)
            if state == "open" and self._wall() >= until:
                state = "half_open"
            return CircuitInfo(model, state, int(fails), until if state == "open" else None)

        return self._do(remote, lambda: self._local.circuit(model))

    def stats(self) -> Mapping[str, ModelStats]:
        def remote() -> Mapping[str, ModelStats]:
            models = sorted(self._redis.smembers(self._k("models")))
            pipe = self._redis.pipeline(transaction=False)
            for m in models:
                pipe.hgetall(self._k("stats", m))
            out = {}
            for m, h in zip(models, pipe.execute(), strict=True):
                out[m] = ModelStats(h.get("provider", ""), int(h.get("calls", 0)), int(h.get("failures", 0)),
                                    int(h.get("input_tokens", 0)), int(h.get("output_tokens", 0)),
                                    float(h.get("cost", 0.0)),
                                    float(h["latency_ms"]) if "latency_ms" in h else None, int(h.get("samples", 0)))
            return out

        return self._do(remote, self._local.stats)

    # -- spend (budgets) -----------------------------------------------------------------------------
    def _seed(self, key: str) -> None:
        """Before the first local reservation on `key` in an outage, start from the last spend Redis reported."""
        if key not in self._seeded:
            self._seeded.add(key)
            seen = self._last_spent.get(key, 0.0) - self._local.spent(key)[0]
            if seen > 0:
                self._local.settle(key, 0.0, seen)

    def reserve(self, key: str, amount: float, limit: float) -> tuple[bool, float]:
        def remote() -> tuple[bool, float]:
            done, used = self._reserve(keys=[self._k("spend", key)], args=[amount, limit, SPEND_TTL])
            if done:
                with self._lock:
                    self._held_remote[key] = self._held_remote.get(key, 0.0) + amount
            self._last_spent[key] = max(self._last_spent.get(key, 0.0), float(used))
            return bool(done), float(used)

        def local() -> tuple[bool, float]:
            self._seed(key)
            return self._local.reserve(key, amount, limit)

        return self._do(remote, local)

    def settle(self, key: str, reserved: float, actual: float) -> float:
        with self._lock:  # release the hold where it was made: in Redis or in the local fallback
            held = self._held_remote.get(key, 0.0)
            remote_hold = reserved if held >= reserved - 1e-12 else 0.0
            if remote_hold:
                self._held_remote[key] = max(0.0, held - remote_hold)
        local_hold = reserved - remote_hold

        def remote() -> float:
            total = float(self._settle(keys=[self._k("spend", key)], args=[remote_hold, actual, SPEND_TTL]))
            if local_hold:
                self._local.settle(key, local_hold, 0.0)
            self._last_spent[key] = total
            return total

        def local() -> float:
            with self._lock:
                pending = self._pending.setdefault(key, [0.0, 0.0])
                pending[0] += remote_hold
                pending[1] += actual
            self._seed(key)
            return self._local.settle(key, local_hold, actual)

        return self._do(remote, local)

    def spent(self, key: str) -> tuple[float, float]:
        def remote() -> tuple[float, float]:
            spent, reserved = self._redis.hmget(self._k("spend", key), "spent", "reserved")
            return float(spent or 0.0), float(reserved or 0.0)

        return self._do(remote, lambda: self._local.spent(key))

    # -- housekeeping --------------------------------------------------------------------------------
    def ping(self) -> bool:
        """True when Redis answers now (also ends a degraded period early)."""
        self._down_until = 0.0
        return bool(self._do(lambda: self._redis.ping() or True, lambda: False))

    def clear(self) -> None:
        """Delete every key under this store's prefix (tests, resets)."""
        keys = list(self._redis.scan_iter(match=self._p + "*", count=500))
        if keys:
            self._redis.delete(*keys)
        self._valid_until = -math.inf

    def close(self) -> None:
        self._redis.close()
