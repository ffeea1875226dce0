"""Gateway metrics: what each request did (decision, attempts, outcome, latency, cost) in, Prometheus text
exposition format out. A tiny hand-written registry (counters, gauges and histograms with labels), thread-safe
and per process, as Prometheus expects of each replica.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CIRCUIT_VALUE = {"closed": 0, "half_open": 1, "open": 2}


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[Any, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(x: float) -> str:
    if x == math.inf:
        return "+Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.labels = name, help, labels
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        super().__init__(name, help, labels)
        self._values: dict[tuple[Any, ...], float] = {}

    def inc(self, *labels: Any, by: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + by

    def value(self, *labels: Any) -> float:
        return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items(), key=lambda kv: tuple(map(str, kv[0])))
        return [*self.header(), *(f"{self.name}{_labels(self.labels, k)} {_num(v)}" for k, v in items)]


class Gauge(_Metric):
    """A gauge whose samples come from a callback at scrape time (circuit states, in-flight requests)."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labels: tuple[str, ...], collect: Callable[[], Iterable[tuple]]):
        super().__init__(name, help, labels)
        self._collect = collect

    def render(self) -> list[str]:
        rows = [*self.header()]
        for *labels, value in self._collect():
            rows.append(f"{self.name}{_labels(self.labels, tuple(labels))} {_num(value)}")
        return rows


class Collected(_Metric):
    """A counter (or summary) whose samples come from a callback at scrape time: `collect()` yields (suffix,
    label values, value) rows, e.g. ("_sum", ("prompt-v2", "alpha-mini"), 1.5) for a summary."""

    def __init__(
        self,
        name: str,
        help: str,
        labels: tuple[str, ...],
        collect: Callable[[], Iterable[tuple[str, tuple[Any, ...], float]]],
        kind: str = "counter",
    ):
        super().__init__(name, help, labels)
        self.kind = kind
        self._collect = collect

    def render(self) -> list[str]:
        rows = [*self.header()]
        for suffix, labels, value in self._collect():
            rows.append(f"{self.name}{suffix}{_labels(self.labels, labels)} {_num(value)}")
        return rows


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help: str, labels: tuple[str, ...] = (), buckets: tuple[float, ...] = LATENCY_BUCKETS
    ):
        super().__init__(name, help, labels)
        self.buckets = (*buckets, math.inf)
        self._series: dict[tuple[Any, ...], list[float]] = {}  # per-bucket counts, then sum, then count

    def observe(self, value: float, *labels: Any) -> None:
        with self._lock:
            row = self._series.get(labels)
            if row is None:
                row = self._series[labels] = [0.0] * (len(self.buckets) + 2)
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    row[i] += 1
                    break
            row[-2] += value
            row[-1] += 1

    def count(self, *labels: Any) -> int:
        row = self._series.get(labels)
        return int(row[-1]) if row else 0

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(((k, list(v)) for k, v in self._series.items()), key=lambda kv: tuple(map(str, kv[0])))
        rows = [*self.header()]
        for labels, row in items:
            total = 0.0
            for i, bound in enumerate(self.buckets):
                total += row[i]
                le = 'le="' + _num(bound) + '"'
                rows.append(f"{self.name}_bucket{_labels(self.labels, labels, le)} {_num(total)}")
            rows.append(f"{self.name}_sum{_labels(self.labels, labels)} {_num(row[-2])}")
            rows.append(f"{self.name}_count{_labels(self.labels, labels)} {_num(row[-1])}")
        return rows


class GatewayMetrics:
    """Every metric the gateway exports; `circuits` and `in_flight` are read at scrape time."""

    def __init__(
        self,
        circuits: Callable[[], Iterable[tuple[str, str]]],
        in_flight: Callable[[], int],
        experiments: Callable[[], Iterable[tuple[str, str, Any]]] = lambda: (),
    ):
        """`experiments` yields (experiment, variant, totals) with `requests`, `errors`, `latency_s` and `cost`
        (providers.execution.experiments.VariantRow), read at scrape time."""
        self.requests = Counter(
            "modelroute_requests_total", "HTTP requests by endpoint and status code", ("endpoint", "status")
        )
        self.decisions = Counter(
            "modelroute_decisions_total", "Routing decisions by deciding rule and model", ("rule", "model")
        )
        self.attempts = Counter(
            "modelroute_attempts_total",
            "Model attempts by model and outcome (ok, error, skipped, cancelled)",
            ("model", "outcome"),
        )
        self.failures = Counter(
            "modelroute_failures_total", "Failed or skipped attempts by model and error class", ("model", "error")
        )
        self.fallbacks = Counter(
            "modelroute_fallbacks_total", "Requests answered by a fallback, by answering model", ("model",)
        )
        self.spend = Counter("modelroute_spend_usd_total", "Upstream cost in USD by answering model", ("model",))
        self.spend_estimated = Counter(
            "modelroute_spend_estimated_usd_total",
            "The part of modelroute_spend_usd_total estimated because an upstream reported no usage",
            ("model",),
        )
        self.tokens = Counter(
            "modelroute_tokens_total", "Tokens by model and direction (input, output)", ("model", "direction")
        )
        self.duration = Histogram(
            "modelroute_request_duration_seconds",
            "Gateway request duration (to the last byte for streams)",
            ("endpoint",),
        )
        self.upstream = Histogram(
            "modelroute_upstream_latency_seconds", "Latency of successful upstream calls", ("model",)
        )
        self.circuit = Gauge(
            "modelroute_circuit_state",
            "Circuit state per model (0 closed, 1 half-open, 2 open)",
            ("model",),
            lambda: ((m, CIRCUIT_VALUE.get(s, 0)) for m, s in circuits()),
        )
        self.in_flight = Gauge(
            "modelroute_in_flight_requests", "Requests being handled by this process", (), lambda: [(in_flight(),)]
        )
        variant = ("experiment", "variant")

        def rows(field: str, suffix: str = "") -> Callable[[], list[tuple[str, tuple[Any, ...], float]]]:
            return lambda: [(suffix, (e, v), getattr(r, field)) for e, v, r in experiments()]

        self.experiment_requests = Collected(
            "modelroute_experiment_requests_total", "Requests by experiment and variant", variant, rows("requests")
        )
        self.experiment_errors = Collected(
            "modelroute_experiment_errors_total",
            "Requests without an answer by experiment and variant",
            variant,
            rows("errors"),
        )
        self.experiment_cost = Collected(
            "modelroute_experiment_cost_usd_total",
            "Upstream cost in USD by experiment and variant",
            variant,
            rows("cost"),
        )
        self.experiment_latency = Collected(
            "modelroute_experiment_latency_seconds",
            "Request latency by experiment and variant (to the end of the answer)",
            variant,
            lambda: [*rows("latency_s", "_sum")(), *rows("requests", "_count")()],
            kind="summary",
        )

    def all(self) -> list[Any]:
        return [
            self.requests,
            self.decisions,
            self.attempts,
            self.failures,
            self.fallbacks,
            self.spend,
            self.spend_estimated,
            self.tokens,
            self.duration,
            self.upstream,
            self.circuit,
            self.in_flight,
            self.experiment_requests,
            self.experiment_errors,
            self.experiment_cost,
            self.experiment_latency,
        ]

    def attempts_of(self, attempts: Iterable[Any]) -> None:
        """Count a request's attempts (from a Completion or a RoutingError)."""
        for a in attempts:
            self.attempts.inc(a.model, a.outcome)
            if a.outcome in ("error", "skipped"):
                self.failures.inc(a.model, a.error or a.outcome)
            elif a.outcome == "ok" and a.latency_s is not None:
                self.upstream.observe(a.latency_s, a.model)

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.all():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
