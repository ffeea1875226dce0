"""Gateway metrics: what each request did (decision, attempts, outcome, latency, cost, key, user, experiment) in,
Prometheus text exposition out, through prometheus_client: one registry per Gateway with the process, platform and
GC collectors, or, under `serve --workers N` (PROMETHEUS_MULTIPROC_DIR set by the supervisor), the sum over every
worker read from prometheus_client's multiprocess files (the in-flight gauge a `livesum` over live workers; circuit
states and process_* / python_* series read from the worker that answered). Also the `x-modelroute-cost` headers.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    values,
)
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge
from prometheus_client import Histogram as PromHistogram
from prometheus_client import Summary as PromSummary
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from providers.execution.spending import MAX_USERS, NOBODY, OTHER_USERS

__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "MULTIPROC_ENV",
    "GatewayMetrics",
    "cost_headers",
    "cost_text",
    "exposition",
    "multiprocess_dir",
]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CIRCUIT_VALUE = {"closed": 0, "half_open": 1, "open": 2}
CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess mode: set by `serve --workers N`
IN_FLIGHT = ("modelroute_in_flight_requests", "Requests being handled (under --workers: summed over live workers)")


def multiprocess_dir(path: str | None) -> str | None:
    """Point prometheus_client's multiprocess mode at `path` (None: off) for the metrics made from now on, in this
    process and the processes it forks; returns the previous setting. prometheus_client reads the variable when it is
    first imported, so its value class is chosen again here."""
    previous = os.environ.get(MULTIPROC_ENV)
    if path is None:
        os.environ.pop(MULTIPROC_ENV, None)
    else:
        os.environ[MULTIPROC_ENV] = path
    values.ValueClass = values.get_value_class()
    return previous


def cost_text(cost: float) -> str:
    """A cost in USD as a header or SSE comment shows it: plain decimal, up to 10 places, no trailing zeros."""
    text = f"{max(cost, 0.0):.10f}".rstrip("0").rstrip(".")
    return text or "0"


def cost_headers(cost: float, estimated: float) -> dict[str, str]:
    """`x-modelroute-cost` (USD) and `x-modelroute-cost-estimated` (true when some of it was estimated because an
    upstream reported no usage)."""
    return {"x-modelroute-cost": cost_text(cost), "x-modelroute-cost-estimated": "true" if estimated else "false"}


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _escape(value: str, quote: bool = True) -> str:
    text = value.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quote else text


#: How a family's type and name appear in the text format (as prometheus_client's own exposition names them).
_TEXT_TYPE = {"info": ("gauge", "_info"), "stateset": ("gauge", ""), "gaugehistogram": ("histogram", "")}


def exposition(families: Iterable[Metric]) -> bytes:
    """The Prometheus text format (0.0.4) of collected families, labels in the order each metric declares them
    (e.g. `{model="m",le="+Inf"}`), whole numbers without `.0`, and no `_created` series."""
    lines: list[str] = []
    for family in families:
        kind, suffix = _TEXT_TYPE.get(family.type, (family.type, "_total" if family.type == "counter" else ""))
        name = family.name + suffix
        lines.append(f"# HELP {name} {_escape(family.documentation, quote=False)}")
        lines.append(f"# TYPE {name} {kind}")
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sample.labels.items())
            series = f"{sample.name}{{{labels}}}" if labels else sample.name
            lines.append(f"{series} {_num(sample.value)}")
    return ("\n".join(lines) + "\n").encode()


class Counter:
    """A labelled prometheus_client Counter with the gateway's call shape: `inc(*label_values, by=1.0)`."""

    def __init__(self, name: str, help: str, labels: tuple[str, ...], registry: CollectorRegistry):
        self.metric = PromCounter(name, help, labels, registry=registry)
        self._children: dict[tuple[Any, ...], Any] = {}

    def inc(self, *labels: Any, by: float = 1.0) -> None:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self.metric.labels(*labels)
        child.inc(by)


class Histogram:
    """A labelled prometheus_client Histogram: `observe(value, *label_values)`."""

    def __init__(self, name: str, help: str, labels: tuple[str, ...], registry: CollectorRegistry):
        self.metric = PromHistogram(name, help, labels, registry=registry, buckets=LATENCY_BUCKETS)
        self._children: dict[tuple[Any, ...], Any] = {}

    def observe(self, value: float, *labels: Any) -> None:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self.metric.labels(*labels)
        child.observe(value)


class _Live(Collector):
    """Gauges read at scrape time from this process: circuit states (shared through Redis under --redis) and, in one
    process (`in_flight` given; under --workers the livesum gauge of _InFlight stands in), the requests in flight."""

    def __init__(self, circuits: Callable[[], Iterable[tuple[str, str]]], in_flight: Callable[[], int] | None):
        self._circuits, self._in_flight = circuits, in_flight

    def collect(self) -> Iterator[Metric]:
        circuit = GaugeMetricFamily(
            "modelroute_circuit_state", "Circuit state per model (0 closed, 1 half-open, 2 open)", labels=("model",)
        )
        for model, state in self._circuits():
            circuit.add_metric((model,), CIRCUIT_VALUE.get(state, 0))
        yield circuit
        if self._in_flight is not None:
            yield GaugeMetricFamily(*IN_FLIGHT, value=self._in_flight())


class _InFlight:
    """Under --workers: this worker's requests in flight in a prometheus_client multiprocess gauge (`livesum`: the
    exposition sums live workers; a dead worker's file is dropped by the supervisor's mark_process_dead), set by the
    Gateway each time its count changes (GatewayMetrics.in_flight_now)."""

    def __init__(self, registry: CollectorRegistry):
        self.gauge = PromGauge(*IN_FLIGHT, registry=registry, multiprocess_mode="livesum")
        self.gauge.set(0)


class _CacheEvents:
    """The response cache's events (ResponseCache.listen) as counters: lookups by result (hit, miss) and the reads
    and writes its shared store skipped (Redis above the cache's memory headroom, or a Redis error)."""

    def __init__(self, registry: CollectorRegistry):
        self.lookups = Counter(
            "modelroute_cache_lookups_total", "Response cache lookups by result (hit, miss)", ("result",), registry
        )
        self.skipped = Counter(
            "modelroute_cache_skipped_total",
            "Response cache reads and writes skipped (Redis above the cache's memory headroom, or a Redis error)",
            ("operation",),
            registry,
        )

    def inc(self, event: str) -> None:
        """Count one event: "hit" | "miss" | "skip_read" | "skip_write"."""
        if event.startswith("skip_"):
            self.skipped.inc(event.removeprefix("skip_"))
        else:
            self.lookups.inc(event)


class _Users:
    """The `user` label value of a request: the first MAX_USERS distinct users keep theirs, later ones share
    OTHER_USERS (a bound on the series a process exports)."""

    def __init__(self, cap: int = MAX_USERS):
        self._seen: set[str] = set()
        self._cap = cap
        self._lock = threading.Lock()

    def label(self, user: Any) -> str:
        if user is None or user == "":
            return NOBODY
        name = str(user)
        if name in self._seen:
            return name
        with self._lock:
            if len(self._seen) < self._cap:
                self._seen.add(name)
                return name
        return OTHER_USERS


class GatewayMetrics:
    """Every metric the gateway exports; circuit states and in-flight requests are read at scrape time."""

    def __init__(
        self,
        circuits: Callable[[], Iterable[tuple[str, str]]],
        in_flight: Callable[[], int],
        *,
        max_users: int = MAX_USERS,
    ):
        self.registry = reg = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "modelroute_requests_total", "HTTP requests by endpoint and status code", ("endpoint", "status"), reg
        )
        self.decisions = Counter(
            "modelroute_decisions_total", "Routing decisions by deciding rule and model", ("rule", "model"), reg
        )
        self.attempts = Counter(
            "modelroute_attempts_total",
            "Model attempts by model and outcome (ok, error, skipped, cancelled)",
            ("model", "outcome"),
            reg,
        )
        self.failures = Counter(
            "modelroute_failures_total", "Failed or skipped attempts by model and error class", ("model", "error"), reg
        )
        self.fallbacks = Counter(
            "modelroute_fallbacks_total", "Requests answered by a fallback, by answering model", ("model",), reg
        )
        self.spend = Counter("modelroute_spend_usd_total", "Upstream cost in USD by answering model", ("model",), reg)
        self.spend_estimated = Counter(
            "modelroute_spend_estimated_usd_total",
            "The part of modelroute_spend_usd_total estimated because an upstream reported no usage",
            ("model",),
            reg,
        )
        self.tokens = Counter(
            "modelroute_tokens_total", "Tokens by model and direction (input, output)", ("model", "direction"), reg
        )
        self.duration = Histogram(
            "modelroute_request_duration_seconds",
            "Gateway request duration (to the last byte for streams)",
            ("endpoint",),
            reg,
        )
        self.upstream = Histogram(
            "modelroute_upstream_latency_seconds", "Latency of successful upstream calls", ("model",), reg
        )
        users = f"`user` attribute (at most {max_users} users a process, then {OTHER_USERS})"
        self.key_requests = Counter("modelroute_key_requests_total", "Routed requests by gateway key", ("key",), reg)
        self.key_spend = Counter("modelroute_key_spend_usd_total", "Upstream cost in USD by gateway key", ("key",), reg)
        self.user_requests = Counter("modelroute_user_requests_total", f"Routed requests by {users}", ("user",), reg)
        self.user_spend = Counter("modelroute_user_spend_usd_total", f"Upstream cost in USD by {users}", ("user",), reg)
        variant = ("experiment", "variant")
        self.experiment_requests = Counter(
            "modelroute_experiment_requests_total", "Requests by experiment and variant", variant, reg
        )
        self.experiment_errors = Counter(
            "modelroute_experiment_errors_total", "Requests without an answer by experiment and variant", variant, reg
        )
        self.experiment_cost = Counter(
            "modelroute_experiment_cost_usd_total", "Upstream cost in USD by experiment and variant", variant, reg
        )
        self.experiment_latency = PromSummary(
            "modelroute_experiment_latency_seconds",
            "Request latency by experiment and variant (to the end of the answer)",
            variant,
            registry=reg,
        )
        self.cache = _CacheEvents(reg)
        self.users = _Users(max_users)
        self.multiprocess = os.environ.get(MULTIPROC_ENV) or None
        self.in_flight = None if self.multiprocess is None else _InFlight(reg)
        self.live = _Live(circuits, in_flight if self.in_flight is None else None)
        reg.register(self.live)
        if self.in_flight is None:
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
            GCCollector(registry=reg)

    def in_flight_now(self, count: int) -> None:
        """This process's requests in flight changed to `count` (under --workers, into the livesum gauge; otherwise
        the gauge reads the Gateway's count at scrape time)."""
        if self.in_flight is not None:
            self.in_flight.gauge.set(count)

    def attempts_of(self, attempts: Iterable[Any]) -> None:
        """Count a request's attempts (from a Completion or a RoutingError)."""
        for a in attempts:
            self.attempts.inc(a.model, a.outcome)
            if a.outcome in ("error", "skipped"):
                self.failures.inc(a.model, a.error or a.outcome)
            elif a.outcome == "ok" and a.latency_s is not None:
                self.upstream.observe(a.latency_s, a.model)

    def spent(self, attrs: Any, cost: float) -> None:
        """Count a routed request and its cost for its gateway key and its `user` attribute."""
        key = attrs.get("key") or NOBODY
        user = self.users.label(attrs.get("user"))
        self.key_requests.inc(key)
        self.key_spend.inc(key, by=cost)
        self.user_requests.inc(user)
        self.user_spend.inc(user, by=cost)

    def experiment(self, experiment: str, variant: str, *, ok: bool, latency_s: float, cost: float) -> None:
        """Count a finished request of an experiment (providers.execution.experiments.ExperimentTally's listener)."""
        self.experiment_requests.inc(experiment, variant)
        self.experiment_errors.inc(experiment, variant, by=0.0 if ok else 1.0)
        self.experiment_cost.inc(experiment, variant, by=cost)
        self.experiment_latency.labels(experiment, variant).observe(latency_s)

    def render(self) -> bytes:
        """The exposition: this registry, or under multiprocess mode every worker's series (counters and histograms
        summed, the in-flight gauge summed over live workers) plus what is read from this process alone: circuit
        states (shared through Redis) and the process, platform and GC collectors (the worker that answered)."""
        if self.multiprocess is None:
            return exposition(self.registry.collect())
        scrape = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(scrape, path=self.multiprocess)
        scrape.register(self.live)
        for default in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            scrape.register(default)
        return exposition(scrape.collect())
