"""Cliff section of bench/scaling_bench.py: a time limit in, report lines out on 10,000 negated keyword rules
against a prompt holding 5,000 of the keywords and on first-seen prompts against warm ones (each in a child
process, so a cliff shows as "over N s" instead of hanging the bench)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

_CLIFF_CHILD = """
import random, statistics, sys, time
sys.path.insert(0, {root!r})
from engine import Engine
n, hits, kind = {n}, {hits}, {kind!r}
if kind == "cliff":
    text = "".join(f'when not task ~ "kw{{i}}q" use gpt-4o-mini\\n' for i in range(n))
    engine = Engine.from_source(text)
    prompt = " ".join(f"kw{{i}}q" for i in range(hits))
    start = time.perf_counter()
    d = engine.decide(prompt, tokens=1)
    first = time.perf_counter() - start
    assert d.rule.index == hits, d.rule.index
    times = []
    for _ in range(3):
        start = time.perf_counter(); engine.decide(prompt, tokens=1); times.append(time.perf_counter() - start)
    print(first, statistics.median(times))
else:
    text = "".join(f'when task ~ "kw{{i}}q" use gpt-4o-mini\\n' for i in range(n - 1)) + "otherwise use gpt-4o\\n"
    engine = Engine.from_source(text)
    rng = random.Random(7)
    words = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta"]
    def fresh():  # unseen words, the policy's keywords and near misses of them, all drawn anew for each prompt
        out = []
        for _ in range(40):
            k = rng.randrange(3)
            i = rng.randrange(n)
            word = rng.choice(words) + str(rng.randrange(10**6))
            out.append(word if k == 0 else f"kw{{i}}q" if k == 1 else f"kw{{i}}")
        return " ".join(out)
    warm = fresh()
    for _ in range(200):
        engine.decide(warm)
    cold, hot = [], []
    for _ in range(300):
        p = fresh()
        start = time.thread_time_ns(); engine.decide(p); cold.append(time.thread_time_ns() - start)
        start = time.thread_time_ns(); engine.decide(warm); hot.append(time.thread_time_ns() - start)
    cold.sort(); hot.sort()
    print(cold[int(len(cold) * 0.99)] / 1000, hot[int(len(hot) * 0.99)] / 1000)
"""


def _child(kind: str, n: int, hits: int, limit: float) -> list[float] | None:
    code = _CLIFF_CHILD.format(root=str(ROOT), n=n, hits=hits, kind=kind)
    try:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return None
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "child failed")
    return [float(x) for x in res.stdout.split()]


def section_cliff(out: list[str], limit: float) -> None:
    out.append("")
    out.append("== pattern scan cliff and first-seen prompts (each in a child process)")
    out.append("   first-seen: 300 prompts of 40 words each (unseen words, keywords of the policy, near misses), each")
    out.append(
        "   timed once, against one prompt decided over and over; p99 of each, in CPU time of the deciding thread"
    )
    out.append("   (single timings: wall time would count every moment another process holds the CPU)")
    got = _child("cliff", 10_000, 5_000, limit)
    if got is None:
        out.append(
            f"  10,000 `not task ~ kw` rules, prompt with 5,000 keywords: over {limit:g} s (target < 50 ms: MISSED)"
        )
    else:
        first, warm = got
        ok = "ok" if max(first, warm) < 0.05 else "MISSED"
        out.append(
            f"  10,000 `not task ~ kw` rules, prompt with 5,000 keywords: first decide {first * 1000:.1f} ms, "
            f"then {warm * 1000:.1f} ms median (target < 50 ms: {ok})"
        )
    got = _child("fresh", 10_000, 0, limit)
    if got is None:
        out.append(f"  first-seen prompts at 10,000 patterns: over {limit:g} s")
    else:
        cold, hot = got
        ratio = cold / hot
        out.append(
            f"  first-seen prompts at 10,000 patterns: p99 {cold:.1f} us, warm p99 {hot:.1f} us, {ratio:.1f}x "
            f"(target <= 10x: {'ok' if ratio <= 10 else 'MISSED'})"
        )
