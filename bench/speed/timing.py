"""Timing for bench/speed_bench.py and bench/scaling_bench.py: callables and their requests in, median
microseconds per call out, each side or cell interleaved sample by sample so machine noise hits all alike."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence

from decide_bench import Side, per_call_us

from speed.inputs import Case


def median_us(fn: Side, cases: list[Case], samples: int) -> float:
    """Median microseconds per call of fn over the cases (one case per sample), with the cyclic GC paused; each
    sample makes enough calls to read about 4 MB of prompt (1 to 500 calls)."""
    size = len(cases[0][0])
    calls = max(1, min(500, 4_000_000 // max(size, 1)))
    out = []
    gc.disable()
    try:
        for s in range(samples):
            prompt, attrs = cases[s % len(cases)]
            start = time.perf_counter_ns()
            for _ in range(calls):
                fn(prompt, attrs)
            out.append((time.perf_counter_ns() - start) / calls / 1000)
    finally:
        gc.enable()
    return statistics.median(out)


def interleaved_us(sides: Sequence[Side], cases: list[Case], samples: int) -> list[float]:
    """The median of each side, interleaved sample by sample (one case per sample) so machine noise hits all alike;
    the order rotates each sample, since the first side to read a prompt pays for bringing it into the caches."""
    got: list[list[float]] = [[] for _ in sides]
    order = list(range(len(sides)))
    for s in range(samples):
        one = [cases[s % len(cases)]]
        for i in order[s % len(order) :] + order[: s % len(order)]:
            got[i].append(median_us(sides[i], one, 1))
    return [statistics.median(v) for v in got]


def pair_us(a: Side, b: Side, cases: list[Case], samples: int) -> tuple[float, float]:
    """Medians of a and b, interleaved sample by sample so machine noise hits both alike."""
    ours, theirs = interleaved_us([a, b], cases, samples)
    return ours, theirs


def scan_fn(scan: Callable[[str], object]) -> Side:
    """A scan of the prompt alone, as a side (the attributes are ignored)."""
    return lambda p, at: scan(p)


def warm_up(fn: Side, cases: list[Case], seconds: float = 1.0) -> None:
    """Run fn for a while first: the first run of a section otherwise pays for cold caches and clock ramp-up."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for prompt, attrs in cases:
            fn(prompt, attrs)


def calls_for(fn: Callable[[], object], budget_s: float = 0.004) -> int:
    """How many calls fill about `budget_s` (at least 1): slow cells get few calls, fast ones many."""
    one = per_call_us(fn, 3) / 1e6
    return max(1, min(2_000, int(budget_s / max(one, 1e-9))))


def interleaved_cells(cells: dict[str, Callable[[], object]], samples: int) -> dict[str, float]:
    """Median microseconds per call of each cell; every sample round times every cell once, in a rotating order,
    with the cyclic GC paused, so machine noise hits all cells alike."""
    for fn in cells.values():  # warm up
        per_call_us(fn, 20)
    calls = {k: calls_for(fn) for k, fn in cells.items()}
    out: dict[str, list[float]] = {k: [] for k in cells}
    keys = list(cells)
    gc.collect()
    gc.disable()
    try:
        for s in range(samples):
            for k in keys[s % len(keys) :] + keys[: s % len(keys)]:
                out[k].append(per_call_us(cells[k], calls[k]))
    finally:
        gc.enable()
    return {k: statistics.median(v) for k, v in out.items()}
