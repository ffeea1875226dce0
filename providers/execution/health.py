"""Model health: the executor's attempt events and active probes (a one-token request to each model the policy
uses) in; per-model and per-provider health (healthy, success and error rate over `health.window`, mean latency,
circuit state), the probes' results for warm-up, and the background checks of `set health.interval` out.

Probes are recorded in the state store like any call (`record()`: they count in usage and feed the circuits; a
half-open circuit's probe claim is honoured), at most `PROBE_CONCURRENCY` at a time. The recent outcomes behind
the rates and mean latencies are kept by this process. See docs/health.md.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from engine.runtime.state import PROBE, CircuitConfig
from providers.errors import ProviderError, redact
from providers.execution.resilience import circuit_outcome
from providers.types import ChatRequest, Message

if TYPE_CHECKING:
    from engine.runtime.policy import CompiledPolicy
    from engine.runtime.state import ModelStats
    from providers.execution.events import Event
    from providers.execution.executor import Executor

__all__ = ["HealthMonitor", "HealthTally", "ProbeResult", "health_summary", "policy_models"]

log = logging.getLogger("modelroute.health")
DEFAULT_WINDOW_S = 300.0  # `health.window` when the policy sets none
MAX_SAMPLES = 1000  # recent outcomes kept per model
HEALTHY_SUCCESS_RATE = 0.5  # below this success rate over the window a model is unhealthy
PROBE_CONCURRENCY = 4  # probes in flight at once (`health.concurrency` when the policy sets it)
PROBE_TIMEOUT_S = 30.0  # a probe's bound when neither the provider nor the policy sets a shorter one
PROBE_PROMPT = "ping"


def policy_setting(policy: CompiledPolicy, name: str, default: Any = None) -> Any:
    """A policy setting that may not exist in this version of the settings list: its value, else `default`."""
    settings = policy.settings
    value = settings.get(name) if settings is not None else None
    return default if value is None else value


def policy_models(policy: CompiledPolicy) -> list[str]:
    """The models the policy's rules can choose (picks, pools, fallbacks, judges), sorted."""
    names: set[str] = set()
    for rule in policy.rules:
        sel = rule.selector
        for attr in ("use", "judge"):
            entry = getattr(sel, attr, None)
            if entry is not None:
                names.add(entry.name)
        for attr in ("pool", "fallbacks"):
            names.update(e.name for e in getattr(sel, attr, ()) or ())
    return sorted(n for n in names if n in policy.models)


@dataclass(frozen=True)
class ProbeResult:
    """One probe of one model: `status` ok | failed | skipped; `error` the error class (failed) and `detail` why
    (failed: the provider's redacted message; skipped: no key, circuit open)."""

    model: str
    provider: str
    status: Literal["ok", "failed", "skipped"]
    latency_ms: float | None = None
    error: str | None = None
    detail: str | None = None
    at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def line(self) -> str:
        """One line for a log or a table: model, provider, status, latency or why."""
        what = f"{self.latency_ms:.0f}ms" if self.latency_ms is not None and self.ok else (self.error or "")
        why = f" ({self.detail})" if self.detail else ""
        return f"{self.model} ({self.provider}): {self.status} {what}".rstrip() + why


class HealthTally:
    """Recent outcomes per model (when, ok, latency) and the running mean latency of successful calls; fed by the
    executor's events and by probes. Thread-safe."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._recent: dict[str, deque[tuple[float, bool, float | None]]] = {}
        self._latency: dict[str, tuple[float, int]] = {}  # model -> (sum of ms, successful calls)
        self._probes: dict[str, ProbeResult] = {}
        self._lock = threading.Lock()

    def observe(self, event: Event) -> None:
        """An executor event: a call that answered or failed (skips and starts are not calls)."""
        if event.model is None or "latency_s" not in event.data:
            return
        if event.kind == "attempt_succeeded":
            self.add(event.model, True, float(event.data["latency_s"]) * 1000)
        elif event.kind in ("attempt_failed", "retry"):
            self.add(event.model, False, None)

    def add(self, model: str, ok: bool, latency_ms: float | None) -> None:
        with self._lock:
            recent = self._recent.get(model)
            if recent is None:
                recent = self._recent[model] = deque(maxlen=MAX_SAMPLES)
            recent.append((self._clock(), ok, latency_ms))
            if ok and latency_ms is not None:
                total, n = self._latency.get(model, (0.0, 0))
                self._latency[model] = (total + latency_ms, n + 1)

    def probed(self, result: ProbeResult) -> None:
        with self._lock:
            self._probes[result.model] = result

    def last_probe(self, model: str) -> ProbeResult | None:
        return self._probes.get(model)

    def mean_latency_ms(self, model: str) -> float | None:
        total, n = self._latency.get(model, (0.0, 0))
        return total / n if n else None

    def window(self, model: str, seconds: float) -> tuple[int, int, float | None]:
        """(calls, failures, mean latency in ms of the successful ones) over the last `seconds`."""
        since = self._clock() - seconds
        with self._lock:
            rows = [r for r in self._recent.get(model, ()) if r[0] >= since]
        latencies = [lat for _, ok, lat in rows if ok and lat is not None]
        fails = sum(not ok for _, ok, _ in rows)
        return len(rows), fails, (sum(latencies) / len(latencies) if latencies else None)

    def models(self) -> list[str]:
        return sorted(self._recent)


def _probe_row(probe: ProbeResult | None) -> dict[str, Any] | None:
    return None if probe is None else {"status": probe.status, "latency_ms": probe.latency_ms, "at": probe.at}


def _model_health(
    ex: Executor, policy: CompiledPolicy, name: str, window_s: float, stats: Mapping[str, ModelStats]
) -> dict[str, Any]:
    tally = ex.tally
    calls, fails, latency = tally.window(name, window_s)
    circuit = ex.state.circuit(name).state
    probe = tally.last_probe(name)
    rate = (calls - fails) / calls if calls else None
    healthy = circuit == "closed" and (rate is None or rate >= HEALTHY_SUCCESS_RATE)
    mine = stats.get(name)
    return {
        "provider": policy.models[name].provider,
        "healthy": healthy,
        "circuit": circuit,
        "calls": calls,
        "failures": fails,
        "success_rate": rate,
        "error_rate": fails / calls if calls else None,
        "latency_ms": round(latency, 1) if latency is not None else None,
        "latency_ewma_ms": round(mine.latency_ms, 1) if mine is not None and mine.latency_ms is not None else None,
        "last_probe": None
        if probe is None
        else {"status": probe.status, "latency_ms": probe.latency_ms, "at": probe.at},
    }


def _provider_health(rows: list[dict[str, Any]]) -> dict[str, Any]:
    calls = sum(r["calls"] for r in rows)
    fails = sum(r["failures"] for r in rows)
    ok = [(r["calls"] - r["failures"], r["latency_ms"]) for r in rows if r["latency_ms"] is not None]
    weight = sum(w for w, _ in ok)
    circuits = {r["circuit"] for r in rows}
    return {
        "healthy": any(r["healthy"] for r in rows),
        "circuit": circuits.pop() if len(circuits) == 1 else "mixed",
        "models": len(rows),
        "healthy_models": sum(r["healthy"] for r in rows),
        "calls": calls,
        "failures": fails,
        "error_rate": fails / calls if calls else None,
        "latency_ms": round(sum(w * lat for w, lat in ok) / weight, 1) if weight else None,
    }


def health_summary(ex: Executor) -> dict[str, dict[str, dict[str, Any]]]:
    """{"models": {name: row}, "providers": {name: row}}: a model row has provider, healthy, circuit (closed |
    half_open | open), calls, failures, success_rate and error_rate over `health.window`, latency_ms (mean of its
    successful calls in the window), latency_ewma_ms, last_probe; a provider row has healthy (any of its models
    is), circuit (its models' state when they agree, else "mixed"), models, healthy_models, calls, failures,
    error_rate and latency_ms (weighted by successful calls). Healthy: circuit closed and a success rate of at
    least HEALTHY_SUCCESS_RATE over the window (or no calls in it)."""
    policy = ex.engine.policy
    window_s = float(policy_setting(policy, "health.window", DEFAULT_WINDOW_S))
    names = sorted({*policy_models(policy), *ex.tally.models()} & set(policy.models))
    stats = ex.state.stats()
    models = {name: _model_health(ex, policy, name, window_s, stats) for name in names}
    providers: dict[str, list[dict[str, Any]]] = {}
    for row in models.values():
        providers.setdefault(row["provider"], []).append(row)
    return {"models": models, "providers": {p: _provider_health(rows) for p, rows in sorted(providers.items())}}


# ---- probes --------------------------------------------------------------------------------------------------
async def probe_model(ex: Executor, policy: CompiledPolicy, name: str) -> ProbeResult:
    """Send one one-token request to `name` and record its outcome (circuit, usage, health)."""
    entry = policy.models[name]
    provider = entry.provider
    now = time.time()

    def skipped(why: str, error: str) -> ProbeResult:
        return ProbeResult(name, provider, "skipped", error=error, detail=why, at=now)

    why = ex.unconfigured(policy, provider)
    if why is not None:
        return skipped(why, "ProviderUnavailable")
    claim = ex.state.allow(name)
    if not claim:
        return skipped("circuit open", "CircuitOpen")
    is_probe = claim == PROBE
    cfg = CircuitConfig.from_settings(policy.settings)
    spec = ex.provider_spec(policy, provider)
    timeout = min(float(getattr(spec, "timeout_s", None) or policy_setting(policy, "timeout", 60.0)), PROBE_TIMEOUT_S)
    chat = ChatRequest(messages=[Message.user(PROBE_PROMPT)], max_tokens=1)
    t0 = time.perf_counter()
    recorded = False
    try:
        call = ex.client(policy, provider).achat(entry.spec, chat, timeout=timeout)
        response = await asyncio.wait_for(call, timeout)
        latency = (time.perf_counter() - t0) * 1000
        used = response.usage
        change = ex.state.record(
            name,
            provider,
            "ok",
            cfg,
            latency_ms=latency,
            input_tokens=used.input_tokens,
            output_tokens=used.output_tokens,
            cost=response.cost or 0.0,
            probe=is_probe,
        )
        recorded = True
        ex.circuit_changed(change, entry)
        ex.tally.add(name, True, latency)
        return ProbeResult(name, provider, "ok", round(latency, 1), at=now)
    except (ProviderError, TimeoutError) as exc:
        latency = (time.perf_counter() - t0) * 1000
        outcome = circuit_outcome(exc) if isinstance(exc, ProviderError) else "fail"
        change = ex.state.record(name, provider, outcome, cfg, latency_ms=latency, probe=is_probe)
        recorded = True
        ex.circuit_changed(change, entry)
        ex.tally.add(name, False, None)
        detail = redact(exc.message) if isinstance(exc, ProviderError) else f"no answer within {timeout:g}s"
        return ProbeResult(name, provider, "failed", round(latency, 1), type(exc).__name__, detail[:200], now)
    finally:
        if not recorded:  # cancelled, or a bug: never leave a half-open probe claimed
            ex.state.record(name, provider, "cancelled", cfg, probe=is_probe)


async def probe_all(ex: Executor, names: Iterable[str] | None = None) -> list[ProbeResult]:
    """Probe each model the policy uses (or `names`), PROBE_CONCURRENCY at a time; results in model order."""
    policy = ex.engine.policy
    todo = list(names) if names is not None else policy_models(policy)
    gate = asyncio.Semaphore(max(1, int(policy_setting(policy, "health.concurrency", PROBE_CONCURRENCY))))

    async def one(name: str) -> ProbeResult:
        async with gate:
            result = await probe_model(ex, policy, name)
        ex.tally.probed(result)
        return result

    return list(await asyncio.gather(*(one(n) for n in todo)))


class HealthMonitor:
    """The background health checks of one executor: every `health.interval` (read from the engine's policy at
    each round, so a reload can change, set or unset it), probe_all(). `ensure(loop)` starts it on `loop` when the
    policy sets an interval and it is not running; a round runs at once unless a warm-up ran within the interval."""

    def __init__(self, ex: Executor) -> None:
        self.ex = ex
        self.rounds = 0
        self.last_round: float | None = None  # monotonic time of the last probe_all()
        self._future: Future[None] | None = None
        self._lock = threading.Lock()

    def interval(self) -> float | None:
        value = policy_setting(self.ex.engine.policy, "health.interval")
        return float(value) if value else None

    @property
    def running(self) -> bool:
        return self._future is not None and not self._future.done()

    def ensure(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Start the checks on `loop` (thread-safe) when the policy sets `health.interval`; whether they run."""
        with self._lock:
            if self.running:
                return True
            if self.interval() is None or loop.is_closed():
                return False
            self._future = asyncio.run_coroutine_threadsafe(self._loop(), loop)
            return True

    def stop(self) -> None:
        with self._lock:
            if self._future is not None:
                self._future.cancel()
                self._future = None

    async def round(self) -> list[ProbeResult]:
        results = await probe_all(self.ex)
        self.rounds += 1
        self.last_round = time.monotonic()
        failed = [r.line() for r in results if r.status == "failed"]
        if failed:
            log.warning("health check: %d of %d models failed: %s", len(failed), len(results), "; ".join(failed))
        return results

    async def _loop(self) -> None:
        while (every := self.interval()) is not None:
            since = None if self.last_round is None else time.monotonic() - self.last_round
            if since is not None and since < every:
                await asyncio.sleep(every - since)
                continue
            try:
                await self.round()
            except Exception:  # a bug must not end the checks silently
                log.exception("health check round failed")
                await asyncio.sleep(every)
