"""RedisStore's reads: decide()'s and the status calls' questions in (round-robin index, in-flight count, unavailable
models, latencies, success rates, a circuit, the stats), the answers from Redis out, the circuit snapshot and the
latencies cached for one refresh interval (or until a circuit's open state or probe lease ends); this replica's local
state's answers while Redis is down. A mixin on RedisStore's state."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from engine.runtime.state import CircuitInfo, MemoryStore, ModelStats
from providers.state import lua


def _parse(value: str | None) -> tuple[str, float, bool, float]:
    if not value:
        return "closed", 0.0, False, 0.0
    state, until, probing, lease = value.split("|")
    return state, float(until), probing == "1", float(lease)


class ReadsMixin:
    """next_index, in_flight, unavailable, latency_ms, success_rates, circuit and stats, for RedisStore."""

    _redis: Any
    _local: MemoryStore
    _own: dict[str, int]
    _down: bool
    _refresh: float
    _valid_until: float
    _unavailable: frozenset[str]
    _not_closed: frozenset[str]
    _latency: Mapping[str, float]
    _rates: dict[float, tuple[float, Mapping[str, float]]]
    _kc: str
    _kl: str
    _kf: list[str]
    _clock: Callable[[], float]
    _wall: Callable[[], float]
    _do: Any
    _k: Any

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
