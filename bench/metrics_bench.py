"""Metrics benchmark: what recording one gateway request's metrics costs, the hand-written registry the gateway
used before (kept here as the baseline, reduced to its counters and histograms) against prometheus_client as
providers/gateway/metrics.py uses it, in one process and in multiprocess mode (`serve --workers N`: values in
mmap'ed files); and what one /metrics scrape costs.

One request records what the gateway records for a JSON answer after one attempt: the request and its duration,
the decision, the attempt and its upstream latency, spend and tokens (and, with prometheus_client only, the spend by
key and user). Prints microseconds per request (median of several rounds) and each ratio to the hand-written
registry; the issue's bar is prometheus_client at no more than 20 us a request over it. Run:
`python bench/metrics_bench.py` (`--quick`: fewer requests and rounds).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prometheus_client import values  # noqa: E402

from providers.gateway.metrics import LATENCY_BUCKETS, MULTIPROC_ENV, GatewayMetrics  # noqa: E402

BUDGET_US = 20.0  # the bar: prometheus_client unless it costs more than this per request


# ---- the baseline: the gateway's former hand-written registry (recording only) --------------------------------
class HandCounter:
    def __init__(self) -> None:
        self.values: dict[tuple[Any, ...], float] = {}
        self.lock = threading.Lock()

    def inc(self, *labels: Any, by: float = 1.0) -> None:
        with self.lock:
            self.values[labels] = self.values.get(labels, 0.0) + by


class HandHistogram:
    def __init__(self) -> None:
        self.buckets = (*LATENCY_BUCKETS, math.inf)
        self.series: dict[tuple[Any, ...], list[float]] = {}
        self.lock = threading.Lock()

    def observe(self, value: float, *labels: Any) -> None:
        with self.lock:
            row = self.series.get(labels)
            if row is None:
                row = self.series[labels] = [0.0] * (len(self.buckets) + 2)
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    row[i] += 1
                    break
            row[-2] += value
            row[-1] += 1


class Hand:
    def __init__(self) -> None:
        self.requests, self.decisions, self.attempts, self.spend, self.tokens = (HandCounter() for _ in range(5))
        self.duration, self.upstream = HandHistogram(), HandHistogram()


def record(m: Any, with_spend_by_who: bool) -> None:
    """One request's recording, as providers/gateway/app.py and pipeline.py do it."""
    m.decisions.inc("policy.route:3", "alpha-mini")
    m.attempts.inc("alpha-mini", "ok")
    m.upstream.observe(0.18, "alpha-mini")
    m.spend.inc("alpha-mini", by=0.000042)
    m.tokens.inc("alpha-mini", "input", by=54)
    m.tokens.inc("alpha-mini", "output", by=12)
    if with_spend_by_who:
        m.spent({"key": "team-a", "user": "alice"}, 0.000042)
    m.requests.inc("chat", 200)
    m.duration.observe(0.2, "chat")


def per_request_us(make: Callable[[], Any], spend_by_who: bool, requests: int, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        m = make()
        t0 = time.perf_counter()
        for _ in range(requests):
            record(m, spend_by_who)
        samples.append((time.perf_counter() - t0) / requests * 1e6)
    return statistics.median(samples)


def scrape_ms(m: GatewayMetrics, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        m.render()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds (a smoke run)")
    args = parser.parse_args()
    requests, rounds = (2_000, 3) if args.quick else (50_000, 7)

    def gateway() -> GatewayMetrics:
        return GatewayMetrics(lambda: [("alpha-mini", "closed")], lambda: 0)

    hand = per_request_us(Hand, False, requests, rounds)
    rows = [("hand-written registry (baseline)", hand)]
    rows.append(("prometheus_client, one process", per_request_us(gateway, True, requests, rounds)))
    one_process_scrape = scrape_ms(gateway(), rounds)
    directory = tempfile.mkdtemp(prefix="modelroute-metrics-bench-")
    os.environ[MULTIPROC_ENV] = directory
    values.ValueClass = values.get_value_class()
    try:
        rows.append(("prometheus_client, multiprocess files", per_request_us(gateway, True, requests, rounds)))
        many_scrape = scrape_ms(gateway(), rounds)
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        values.ValueClass = values.get_value_class()
        shutil.rmtree(directory, ignore_errors=True)
    print(f"recording one request's metrics ({requests} requests, median of {rounds} rounds):")
    worst = 0.0
    for name, us in rows:
        worst = max(worst, us - hand)
        print(f"  {name:<40} {us:7.2f} us/request  {us / hand:5.2f}x  (+{us - hand:.2f} us)")
    print(f"one /metrics scrape: {one_process_scrape:.2f} ms (one process), {many_scrape:.2f} ms (multiprocess files)")
    verdict = "within" if worst <= BUDGET_US else "OVER"
    print(f"prometheus_client adds at most {worst:.2f} us a request: {verdict} the {BUDGET_US:g} us budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
