"""Bundled-policy sections of bench/scaling_bench.py: prompts in, decide() against the policy's own RE2 set scan
and the throughput of threads and processes out, as report lines.

* bundled: the issue-15 target, on what it is about (the rule index and the scan): decide() on the bundled policy
  with its `like` items removed (patterns only: bench/decide_bench.py's `patterns_only_engine`) against
  `policy.matcher.scan` alone (the single-pass RE2 set scan of the same prompt) at 200 B, 4 KB and 100 KB,
  interleaved sample by sample (bench/speed/timing.py's interleaved_us); targets: <= 3x at 200 B, <= 1.1x at 100 KB.
  In the same samples, decide() on the bundled policy as shipped (patterns + detection by meaning), reported as
  its ratio to the patterns-only decide(): the cost of meaning, which has no target here.
* threads: calls per second of 1 thread, 2 threads and 2 processes, each deciding 200 B prompts for a fixed time,
  in rounds that rotate the order; ratios are taken within a round. Workloads: decide() on the patterns-only
  policy, the same by a rule that needs no scan (tokens=200k: the `tokens > 150k` rule decides), the RE2 set scan
  alone, and decide() on the policy as shipped.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from decide_bench import patterns_only_engine, real_prompts, sized, synthetic_prompts
from needs import missing_data
from speed.timing import interleaved_us

from engine import Engine

TARGETS = {200: 3.0, 100_000: 1.1}
LABELS = {200: "200 B", 4_000: "4 KB", 100_000: "100 KB"}


def prompts() -> tuple[list[str], str]:
    """Real prompts from the shared data folder when it is there, else generated ones (and which)."""
    if not missing_data("awesome_chatgpt_prompts.csv", "HumanEval.jsonl.gz", "self_instruct_seed_tasks.jsonl"):
        return real_prompts(), "real prompts (awesome-chatgpt-prompts, HumanEval, Self-Instruct)"
    return synthetic_prompts(), "generated prompts (no shared data folder)"


def section_bundled(out: list[str], samples: int) -> None:
    engine = patterns_only_engine()
    shipped = Engine.load()
    matcher = engine.policy.matcher
    assert matcher is not None
    texts, how = prompts()
    out.append("")
    out.append(f"== decide() on the bundled policy vs its own RE2 set scan (policy.matcher.scan), {how}")
    out.append(
        "   patterns only: policies/ with its `like` items removed (the target is about the index and the scan);"
    )
    out.append("   shipped: the bundled policy as it ships, patterns + detection by meaning (WordLlama), in the same")
    out.append("   samples; shipped/patterns = the cost of meaning (no target). 8 prompts per size, interleaved")
    out.append("   sample by sample, the order rotating; medians in us")
    out.append(
        f"  {'prompt':>7} {'decide us':>10} {'scan us':>9} {'decide/scan':>12}  {'target':<15}"
        f"{'shipped us':>11} {'shipped/patterns':>17}"
    )
    for size, label in LABELS.items():
        cases: list[tuple[str, dict]] = [(p, {}) for p in sized(texts, size, 8)]
        n = samples * 3 if size <= 4_000 else samples  # short prompts: more samples, the ratio is the target
        ours, scan, sem = interleaved_us(
            [lambda p, at: engine.decide(p), lambda p, at: matcher.scan(p), lambda p, at: shipped.decide(p)], cases, n
        )
        ratio = ours / scan
        target = TARGETS.get(size)
        flag = f"<= {target:g}x: {'ok' if ratio <= target else 'MISSED'}" if target else ""
        out.append(f"  {label:>7} {ours:10.2f} {scan:9.2f} {ratio:11.2f}x  {flag:<15}{sem:11.2f} {sem / ours:16.1f}x")


# ---- threads and processes ---------------------------------------------------------------------------------

Work = Callable[[str], object]
Run = tuple[float, float]  # (calls per second of wall time, CPU seconds per call, all threads or processes)


def _loop(work: Work, cases: list[str], until: float) -> int:
    n = 0
    while time.perf_counter() < until:
        for p in cases:
            work(p)
        n += len(cases)
    return n


def _threads(work: Work, cases: list[str], k: int, seconds: float) -> Run:
    counts = [0] * k
    gate = threading.Barrier(k + 1)
    until = [0.0]

    def run(j: int) -> None:
        gate.wait()
        counts[j] = _loop(work, cases, until[0])

    threads = [threading.Thread(target=run, args=(j,)) for j in range(k)]
    for t in threads:
        t.start()
    cpu = time.process_time()  # this process: every thread
    until[0] = time.perf_counter() + seconds
    gate.wait()
    for t in threads:
        t.join()
    calls = sum(counts)
    return calls / seconds, (time.process_time() - cpu) / calls


def _child(work: Work, cases: list[str], seconds: float, gate: Any, conn: Any) -> None:
    gate.wait()
    conn.send(_loop(work, cases, time.perf_counter() + seconds))


def _processes(work: Work, cases: list[str], k: int, seconds: float) -> Run:
    ctx = mp.get_context("fork")  # the children inherit the compiled policy
    gate = ctx.Barrier(k)
    pipes = [ctx.Pipe(duplex=False) for _ in range(k)]
    procs = [ctx.Process(target=_child, args=(work, cases, seconds, gate, w)) for _, w in pipes]
    before = os.times()
    for p in procs:
        p.start()
    calls = sum(r.recv() for r, _ in pipes)
    for p in procs:
        p.join()
    after = os.times()
    cpu = after.children_user + after.children_system - before.children_user - before.children_system
    return calls / seconds, cpu / calls  # the children's CPU includes forking and warming up: a little high


MODES: dict[str, Callable[[Work, list[str], float], Run]] = {
    "1 thread": lambda w, c, s: _threads(w, c, 1, s),
    "2 threads": lambda w, c, s: _threads(w, c, 2, s),
    "2 processes": lambda w, c, s: _processes(w, c, 2, s),
}


def section_threads(out: list[str], rounds: int, seconds: float) -> None:
    engine = patterns_only_engine()
    shipped = Engine.load()
    matcher = engine.policy.matcher
    assert matcher is not None
    texts, how = prompts()
    cases = sized(texts, 200, 8)
    works: dict[str, Work] = {
        "decide(), patterns only": lambda p: engine.decide(p),
        "decide(), no scan (tokens=200k)": lambda p: engine.decide(p, tokens=200_000),
        "RE2 set scan alone": matcher.scan,
        "decide(), shipped (meaning)": lambda p: shipped.decide(p),
    }
    no_scan = engine.decide(cases[0], tokens=200_000)
    assert no_scan.rule.text.startswith("when tokens > "), no_scan.rule.text  # decided before any rule needs the scan
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    out.append("")
    out.append(f"== throughput at 200 B on the bundled policy: 1 thread, 2 threads, 2 processes ({how})")
    out.append("   patterns only = policies/ with its `like` items removed; shipped = as it ships, with meaning")
    out.append(
        f"   {rounds} rounds of {seconds:g} s per cell, the order rotating each round; ratios to 1 thread are taken "
        f"within a round, then the median; load average before: {load}"
    )
    out.append(
        f"  {'workload':<32} {'calls/s: 1 thread':>17} {'2 threads':>10} {'2 procs':>10}"
        f"  {'vs 1 thread: threads':>20} {'procs':>6}  {'CPU us/call: 1 thr':>18} {'2 thr':>6} {'2 procs':>7}"
    )
    for name, work in works.items():
        _loop(work, cases, time.perf_counter() + 0.2)  # warm up
        runs: dict[str, list[Run]] = {m: [] for m in MODES}
        keys = list(MODES)
        for r in range(rounds):
            for m in keys[r % len(keys) :] + keys[: r % len(keys)]:
                runs[m].append(MODES[m](work, cases, seconds))
        one = [rate for rate, _ in runs["1 thread"]]
        ratio = {m: statistics.median(rate / o for (rate, _), o in zip(runs[m], one, strict=True)) for m in keys}
        rate = {m: statistics.median(r for r, _ in runs[m]) for m in keys}
        cpu = {m: statistics.median(c for _, c in runs[m]) * 1e6 for m in keys}
        out.append(
            f"  {name:<32} {rate['1 thread']:17,.0f} {rate['2 threads']:10,.0f} {rate['2 processes']:10,.0f}"
            f"  {ratio['2 threads']:19.2f}x {ratio['2 processes']:5.2f}x  {cpu['1 thread']:18.2f}"
            f" {cpu['2 threads']:6.2f} {cpu['2 processes']:7.2f}"
        )
    out.append("  target: 2 threads at least as fast as 1, or docs/performance.md says why not and what to do instead")
