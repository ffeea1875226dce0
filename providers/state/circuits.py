"""RedisStore's circuit calls of execution: allow() / probe() and record() in, the gate's answer (a claim, PROBE or
False) and a circuit's change ("opened" / "closed") out; a plainly closed circuit's are answered locally and leave
through the background sender, the rest run the gate or record script (one round trip). A mixin on RedisStore's
state."""

from __future__ import annotations

import functools
import math
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from engine.runtime.state import EWMA_ALPHA, PROBE, CircuitConfig, Claim, MemoryStore, Outcome

PROBE_LEASE = 60.0  # seconds a half-open probe blocks other calls if its replica never records it


class CircuitsMixin:
    """allow, probe and record, for RedisStore."""

    _lock: Any
    _local: MemoryStore
    _down: bool
    _valid_until: float
    _not_closed: frozenset[str]
    _claims: dict[str, deque[float]]
    _queue: list[tuple[list[str], list[Any], Callable[[], Any]]]
    _seq: int
    _kc: str
    _kl: str
    _kf: list[str]
    _allow: Any
    _record: Any
    _clock: Callable[[], float]
    _wall: Callable[[], float]
    _do: Any
    _k: Any
    _value: Any
    _mark_dirty: Any
    _take: Any
    _unclaim: Any
    _wake: Any

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
