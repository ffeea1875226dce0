"""Failover benchmark: how long a request takes when its first model trickles its answer one byte at a time,
against how long that trickle lasts, in one run over a loopback upstream (tests/fakeserver.py).

Three cases, each timed over several runs (median):
  baseline   the trickling answer read to its end by httpx with a 2 s read timeout (what a per-read timeout
             allows: every byte arrives within it, so the request is never cut)
  timeout    `engine.complete(timeout=1)`: the attempt is cut at 1 s from connect to last byte, the next model
             of the plan answers
  deadline   every model trickles, `set deadline = 1.5s`: RoutingError at the deadline

Prints each median and its ratio to the baseline. Run: `python bench/failover_bench.py` (`--quick`: 3 runs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from providers.execution import RoutingError  # noqa: E402
from tests.engines import engine_for  # noqa: E402
from tests.fakeserver import FakeServer, Fault, Reply  # noqa: E402

INTERVAL = 0.02  # seconds between bytes of the trickled answer
TEXT = "a trickled answer " * 8


def _baseline(server: FakeServer) -> float:
    server.always("alpha-mini", Fault.trickle(INTERVAL, Reply(text=TEXT)))
    body = {"model": "alpha-mini", "messages": [{"role": "user", "content": "hi"}]}
    t0 = time.perf_counter()
    r = httpx.post(server.base_url("openai") + "/chat/completions", json=body, timeout=httpx.Timeout(2.0))
    r.raise_for_status()
    return time.perf_counter() - t0


def _timeout(server: FakeServer) -> float:
    server.always("alpha-mini", Fault.trickle(INTERVAL, Reply(text=TEXT)))
    server.always("beta-chat", Reply(text="served by the next model"))
    policy = "set retry.attempts = 0\notherwise use alpha-mini fallback beta-chat\n"
    with engine_for(server, policy) as engine:
        t0 = time.perf_counter()
        done = engine.complete("hi", timeout=1.0)
        elapsed = time.perf_counter() - t0
    assert done.model == "beta-chat", done
    return elapsed


def _deadline(server: FakeServer) -> float:
    for model in ("alpha-mini", "beta-chat", "gamma-flash"):
        server.always(model, Fault.trickle(INTERVAL, Reply(text=TEXT)))
    policy = "set retry.attempts = 0\nset deadline = 1.5s\notherwise use alpha-mini fallback beta-chat, gamma-flash\n"
    with engine_for(server, policy) as engine:
        t0 = time.perf_counter()
        try:
            engine.complete("hi")
        except RoutingError as err:
            assert err.deadline_passed, err
        else:
            raise AssertionError("the deadline did not end the request")
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs per case instead of 7")
    runs = 3 if parser.parse_args().quick else 7
    cases = {"baseline": _baseline, "timeout": _timeout, "deadline": _deadline}
    times: dict[str, list[float]] = {name: [] for name in cases}
    with FakeServer() as server:
        for _ in range(runs):  # interleaved, so a noisy moment hits every case alike
            for name, case in cases.items():
                times[name].append(case(server))
    base = statistics.median(times["baseline"])
    print(f"trickle: one byte every {INTERVAL * 1000:.0f} ms; median of {runs} runs")
    for name in cases:
        median = statistics.median(times[name])
        print(f"  {name:<9} {median:7.3f} s   {median / base:6.3f}x the baseline")


if __name__ == "__main__":
    main()
