"""Hot-reload benchmark: a copy of the bundled policy edited on disk in, the write-to-answer latency (median,
max) and decide() throughput with and without reloads every ~100 ms out, printed and saved to
bench/results/reload.txt, for the bundled policy, its patterns-only copy (`like` items cut) and a small policy.
Run: python bench/reload_bench.py [--writes 30] [--seconds 0.6] [--rounds 15] [--no-save]."""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_bench import without_likes

from engine.api import Engine, compile_policy
from engine.language.load import bundled_policy_dir
from engine.reload import ReloadEvent

RESULTS = Path(__file__).resolve().parent / "results" / "reload.txt"
PROMPT = "write a function that parses ISO dates and explain the edge cases"
MODELS = ["gpt-4o-mini", "claude-3-5-haiku", "gemini-1.5-flash", "o3-mini"]


def edit(main: Path, base: str, k: int) -> str:
    """Rewrite main.route in place with a new fallback rule; returns the model the edit routes to."""
    model = MODELS[k % len(MODELS)]
    text = re.sub(r"^otherwise .*$", f"otherwise use {model}", base, flags=re.M)
    assert text != base, "the policy has no `otherwise` line to rewrite"
    main.write_text(f"# edit {k}\n{text}")
    return model


def latency(engine: Engine, main: Path, base: str, writes: int) -> list[float]:
    """Seconds from the end of each write until decide() answers with the new version (checked every 1 ms)."""
    out = []
    for k in range(writes):
        before = engine.version
        start = time.perf_counter()
        model = edit(main, base, k)
        while True:
            d = engine.decide("hello")
            if d.policy_version != before:
                break
            if time.perf_counter() - start > 10:
                raise SystemExit(f"write {k} was not picked up within 10 s")
            time.sleep(0.001)
        out.append(time.perf_counter() - start)
        assert d.model == model, (d.model, model)
        time.sleep(0.05)  # let the watcher go quiet before the next write
    return out


def throughput(engine: Engine, seconds: float) -> float:
    """decide() calls per second in this thread (over the time the calls took, not the nominal window)."""
    n, start = 0, time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        for _ in range(50):
            engine.decide(PROMPT, tier="pro")
        n += 50
    return n / (time.perf_counter() - start)


def with_reloads(engine: Engine, main: Path, base: str, seconds: float) -> tuple[float, int, list[float]]:
    """Throughput while another thread edits the policy every ~100 ms; also returns how many reloads ran and the CPU
    time the reload thread used from one reload to the next (time.thread_time() read in its callback)."""
    reloads, cpu, last = [], [], [None]

    def seen(ev: ReloadEvent) -> None:
        now = time.thread_time()  # the watcher thread's own CPU time: the callback runs there
        if last[0] is not None:
            cpu.append(now - last[0])
        last[0] = now
        if ev.changed:
            reloads.append(ev)

    engine.on_reload(seen)
    stop = threading.Event()

    def writer() -> None:
        k = 1000
        while not stop.wait(0.1):
            edit(main, base, k)
            k += 1

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        rate = throughput(engine, seconds)
    finally:
        stop.set()
        t.join()
    engine.reloader.callbacks.clear()
    return rate, len(reloads), cpu


SMALL = """\
# No task patterns: isolates the reload machinery from the compiler's RE2 work.
when tier == "enterprise" use claude-3-opus fallback gpt-4o
when tier == "pro" and tools use gpt-4o
when tokens > 100k prefer cheapest where context >= 1M
when tier == "free" prefer cheapest then capability(REASONING)
otherwise use gpt-4o-mini fallback claude-3-5-haiku
"""


def compile_ms(root: Path, main: Path, base: str) -> float:
    """One compile after an edit like the bench's (main.route's fallback rule rewritten), median of 10: what a reload
    compiles, with what earlier compiles left for it to reuse (engine/compiler/reuse.py)."""
    times = []
    try:
        for k in range(10):
            edit(main, base, k)
            start = time.perf_counter()
            compile_policy(root)
            times.append(time.perf_counter() - start)
    finally:
        main.write_text(base)
    return statistics.median(times) * 1000


def run(root: Path, args: argparse.Namespace) -> list[str]:
    """Every figure for one policy directory, as report lines."""
    main_route = root / "main.route"
    base = main_route.read_text()
    ms = compile_ms(root, main_route, base)
    with Engine.load(root, watch=True) as engine:
        time.sleep(0.3)  # let the watcher arm
        lat = latency(engine, main_route, base, args.writes)
        quiet, busy, reloads, cpu = [], [], 0, []
        throughput(engine, 0.5)  # warm-up
        for _ in range(args.rounds):
            quiet.append(throughput(engine, args.seconds))
            rate, n, used = with_reloads(engine, main_route, base, args.seconds)
            busy.append(rate)
            reloads += n
            cpu += used
    q, b = statistics.median(quiet), statistics.median(busy)
    per_reload = statistics.median(cpu) * 1000 if cpu else math.nan
    ratio = statistics.median(r / w for r, w in zip(busy, quiet, strict=True))  # paired: robust to noise
    files = ", ".join(sorted(p.name for p in root.iterdir()))
    return [
        f"policy {root.name}/ ({files}); one compile after an edit takes {ms:.1f} ms (median of 10)",
        f"  write -> new version answering decide(), {len(lat)} in-place writes (target: median < 300 ms):",
        f"    median  {statistics.median(lat) * 1000:7.1f} ms",
        f"    max     {max(lat) * 1000:7.1f} ms",
        f"    min     {min(lat) * 1000:7.1f} ms",
        f"  decide() throughput, one thread, median of {args.rounds} x {args.seconds:g} s runs:",
        f"    without reloads       {q:10,.0f} calls/s",
        f"    reloads every 100 ms  {b:10,.0f} calls/s  ({reloads} reloads during the runs)",
        f"    ratio                 {ratio:10.3f}          (median of the {args.rounds} paired ratios; target >= 0.90)",
        f"    reload thread CPU     {per_reload:10.1f} ms a reload (median of {len(cpu)}): "
        f"{per_reload / 100:.1%} of a core at one reload every 100 ms",
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--writes", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=0.6, help="length of each throughput run")
    ap.add_argument("--rounds", type=int, default=15, help="alternating throughput runs of each kind")
    ap.add_argument("--no-save", action="store_true", help="print only; leave bench/results/reload.txt alone")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    lines = [
        "modelroute hot-reload benchmark: python bench/reload_bench.py",
        f"python {sys.version.split()[0]} on {sys.platform}, {os.cpu_count()} CPUs; watchfiles (inotify), "
        "debounce 50 ms",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        bundled = Path(tmp) / "bundled"
        shutil.copytree(bundled_policy_dir(), bundled)
        patterns = Path(tmp) / "bundled-patterns-only"  # the same, `like` items cut: no detection by meaning
        shutil.copytree(bundled_policy_dir(), patterns)
        tasks = patterns / "tasks.route"
        tasks.write_text(without_likes(tasks.read_text(encoding="utf-8"), str(tasks)), encoding="utf-8")
        small = Path(tmp) / "small"
        small.mkdir()
        (small / "main.route").write_text(SMALL)
        for root in (bundled, patterns, small):
            lines += run(root, args)
            print("\n".join(lines[-10:]), flush=True)
    if args.no_save:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
