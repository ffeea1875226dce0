"""Scaling benchmark: does decide() stay flat as a policy grows, for every shape of rule condition?

Run: python bench/scaling_bench.py [--quick] [--no-save] [--only SECTION ...]
Prints ratios (and the medians they come from) and writes the same text to bench/results/scaling.txt.

Sections:
* shapes: for each condition shape (keyword, attribute value, numeric comparisons on `tokens` and on attributes,
  `or` across kinds, negations, `in` lists, dotted attributes, a compound shape), a generated policy of 10, 1,000
  and 10,000 rules of that shape; the request decides at the rule in the middle and at the last rule. The cells of
  one shape are timed interleaved, sample by sample, and each shape's growth 10 -> 10,000 rules is printed
  against the target (<= 2x). Every request is first checked to decide at the rule it is meant to.
* compile: a policy mixing every shape at 10, 1,000 and 10,000 rules, compiled in a fresh process each time:
  compile time and the resident memory the compile adds (target at 10,000 rules: < 1.5 s, < 40 MB).
* prefer: `prefer cheapest`, `prefer capability(CODING)`, `prefer capability(CODING) then cheapest` and
  `prefer least_busy` over the bundled catalog and over a 4,000-model catalog (LiteLLM's price file from the
  shared data folder through bench/speed/inputs.py's `big_catalog` when it is there, else a generated one),
  interleaved; target: under 20 us over 4,000 models (bench/scaling/prefer.py).
* cliff: 10,000 `not task ~ kw` rules and a prompt holding 5,000 of the keywords (target < 50 ms per decide),
  and first-seen prompts against warm ones at 10,000 patterns (target: first-seen p99 <= 10x warm p99). Each
  run in a child process with a time limit, so a cliff shows as "over N s" instead of hanging the bench
  (bench/scaling/cliff.py).
* bundled, threads (bench/scaling/bundled.py): decide() on the bundled policy with its `like` items removed
  (patterns only: what the index and the scan do) against its own RE2 set scan at 200 B, 4 KB and 100 KB (targets
  <= 3x at 200 B, <= 1.1x at 100 KB), and, labelled apart, the policy as shipped (with detection by meaning)
  against that; calls per second of 1 thread, 2 threads and 2 processes at 200 B.
* reload (bench/scaling/reload.py): write -> new version answering decide() for a 1,000-rule file of the
  compile mix (target < 200 ms).

The generated policies and requests are in bench/scaling/shapes.py, the timing in bench/speed/timing.py.
The machine this runs on has 2 cores and other work: medians of interleaved samples, never single timings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from needs import save  # noqa: E402
from scaling.cliff import section_cliff  # noqa: E402
from scaling.prefer import section_prefer  # noqa: E402
from scaling.shapes import SHAPES, mixed_text, policy_text, positions  # noqa: E402
from speed.timing import interleaved_cells  # noqa: E402

from engine import Engine  # noqa: E402
from engine.compiler.reuse import forget  # noqa: E402

SIZES = (10, 1_000, 10_000)
GROWTH_TARGET = 2.0


def section_shapes(out: list[str], samples: int, sizes: tuple[int, ...]) -> list[float]:
    out.append("== decide() by condition shape and policy size (bundled catalog, `use` actions)")
    out.append(
        f"   {samples} interleaved samples per cell; medians in us; growth = {sizes[-1]:,} rules / {sizes[0]} rules"
    )
    head = "  " + f"{'shape':<58}" + "".join(f"{f'{n:,} mid':>12}{f'{n:,} last':>12}" for n in sizes)
    out.append(head + f"{'growth':>9}  {'compile s':>9}")
    growths = []
    for shape in SHAPES:
        cells: dict[str, Callable[[], object]] = {}
        compile_s = 0.0
        for n in sizes:
            forget()  # time a first compile (engine/compiler/reuse.py)
            start = time.perf_counter()
            engine = Engine.from_source(policy_text(shape, n), file=f"{n}.route")
            compile_s = time.perf_counter() - start
            for label, at in positions(shape, n).items():
                prompt, attrs = shape.request(at, n)
                d = engine.decide(prompt, **attrs)
                want = shape.decides(at, n)
                assert d.rule.index == want, f"{shape.name} n={n} {label}: rule {d.rule.index} decided, not {want}"

                def cell(e: Engine = engine, p: str = prompt, a: dict = attrs) -> object:
                    return e.decide(p, **a)

                cells[f"{n} {label}"] = cell
        med = interleaved_cells(cells, samples)
        growth = max(med[f"{sizes[-1]} {lab}"] / med[f"{sizes[0]} {lab}"] for lab in ("middle", "last"))
        growths.append(growth)
        row = "".join(f"{med[f'{n} middle']:12.2f}{med[f'{n} last']:12.2f}" for n in sizes)
        flag = "ok" if growth <= GROWTH_TARGET else "MISSED"
        out.append(f"  {shape.name:<58}{row}{growth:8.2f}x {flag:<6} {compile_s:6.2f}")
    worst = max(growths)
    out.append(
        f"  worst growth {sizes[0]} -> {sizes[-1]:,} rules: {worst:.2f}x (target <= {GROWTH_TARGET:g}x: "
        f"{'ok' if worst <= GROWTH_TARGET else 'MISSED'}); growth = the larger of the middle and last ratios"
    )
    return growths


_COMPILE_CHILD = """
import gc, json, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {here!r})
from scaling.shapes import mixed_text
from engine.api import compile_source
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096
text = mixed_text({n})
compile_source("otherwise use gpt-4o-mini\\n")  # imports, the parser and the bundled catalog, outside the figure
gc.collect()
before = rss()
start = time.perf_counter()
policy = compile_source(text, "mixed.route")
elapsed = time.perf_counter() - start
gc.collect()
print(json.dumps({{"seconds": elapsed, "rss": rss() - before, "rules": len(policy.rules)}}))
"""


def section_compile(out: list[str], runs: int, sizes: tuple[int, ...]) -> None:
    out.append("")
    out.append("== compile: a policy mixing every shape above, in a fresh process per run (medians of runs)")
    out.append(f"  {'rules':>7} {'compile s':>10} {'RSS added MB':>13} {'KB per rule':>12}")
    for n in sizes:
        secs, rss = [], []
        for _ in range(runs):
            code = _COMPILE_CHILD.format(root=str(ROOT), here=str(HERE), n=n)
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
            if res.returncode != 0:
                raise SystemExit(res.stderr)
            got = json.loads(res.stdout.strip().splitlines()[-1])
            secs.append(got["seconds"])
            rss.append(got["rss"])
        s, m = statistics.median(secs), statistics.median(rss)
        out.append(f"  {n:>7,} {s:10.3f} {m / 1e6:13.1f} {m / 1000 / n:12.2f}")
        if n == 10_000:
            ok = s < 1.5 and m < 40e6
            out.append(f"  target at 10,000 rules: < 1.5 s and < 40 MB: {'ok' if ok else 'MISSED'}")


SECTIONS = ("shapes", "compile", "prefer", "cliff", "bundled", "threads", "reload")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="7 samples per cell and one compile run per size")
    ap.add_argument("--no-save", action="store_true", help="print only; do not write bench/results/scaling.txt")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    ap.add_argument("--cliff-limit", type=float, default=120.0, help="seconds a cliff child may run (default 120)")
    args = ap.parse_args()
    samples = 7 if args.quick else 21
    chosen = args.only or SECTIONS
    started = time.perf_counter()
    cpus = os.cpu_count()
    mode = "quick" if args.quick else "full"
    out = [f"scaling benchmark ({mode}), Python {sys.version.split()[0]}, {cpus} CPUs"]
    if "shapes" in chosen:
        section_shapes(out, samples, SIZES)
    if "compile" in chosen:
        section_compile(out, 1 if args.quick else 3, SIZES)
    if "prefer" in chosen:
        section_prefer(out, samples)
    if "cliff" in chosen:
        section_cliff(out, args.cliff_limit)
    if "bundled" in chosen:
        from scaling.bundled import section_bundled

        section_bundled(out, samples)
    if "threads" in chosen:
        from scaling.bundled import section_threads

        section_threads(out, 3 if args.quick else 7, 0.3 if args.quick else 0.5)
    if "reload" in chosen:
        from scaling.reload import section_reload

        section_reload(out, mixed_text(1_000), 1_000, 10 if args.quick else 30)
    command = "python bench/scaling_bench.py" + (" --quick" if args.quick else "")
    if args.only:
        command += " --only " + " ".join(args.only)
    out.append("")
    out.append(f"total bench time {time.perf_counter() - started:.0f} s; command: {command}")
    text = "\n".join(out)
    print(text)
    if not args.no_save:
        save("scaling.txt", text)


if __name__ == "__main__":
    main()
