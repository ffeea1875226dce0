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
  shared data folder through bench/speed_bench.py's `big_catalog` when it is there, else a generated one),
  interleaved; target: under 20 us over 4,000 models.
* cliff: 10,000 `not task ~ kw` rules and a prompt holding 5,000 of the keywords (target < 50 ms per decide),
  and first-seen prompts against warm ones at 10,000 patterns (target: first-seen p99 <= 10x warm p99). Each
  run in a child process with a time limit, so a cliff shows as "over N s" instead of hanging the bench.
* bundled, threads (bench/scaling/bundled.py): decide() on the bundled policy with its `like` items removed
  (patterns only: what the index and the scan do) against its own RE2 set scan at 200 B, 4 KB and 100 KB (targets
  <= 3x at 200 B, <= 1.1x at 100 KB), and, labelled apart, the policy as shipped (with detection by meaning)
  against that; calls per second of 1 thread, 2 threads and 2 processes at 200 B.
* reload (bench/scaling/reload.py): write -> new version answering decide() for a 1,000-rule file of the
  compile mix (target < 200 ms).

The machine this runs on has 2 cores and other work: medians of interleaved samples, never single timings.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from needs import missing_data  # noqa: E402

from engine import Engine  # noqa: E402
from providers.catalog.models import Catalog, ModelSpec, default_catalog  # noqa: E402

RESULTS = HERE / "results" / "scaling.txt"
SIZES = (10, 1_000, 10_000)
MODELS = ("gpt-4o-mini", "claude-3-5-haiku", "gemini-1.5-flash", "deepseek-chat", "gpt-4o")
FILLER = (
    "Please read the following request carefully and answer it in plain words, with an example where it helps. "
    "The context: a small team maintains a service and wants advice. "
)
GROWTH_TARGET = 2.0
BIG_CATALOG = 4_000


# ---- generated policies ------------------------------------------------------------------------------------

Request = tuple[str, dict]


@dataclass(frozen=True)
class Shape:
    """A condition shape: the condition of rule i of n, and a request that makes rule `at` of n decide."""

    name: str
    cond: Callable[[int, int], str]
    request: Callable[[int, int], Request]
    decides: Callable[[int, int], int] = lambda at, n: at  # the rule that decides (when `at`'s own cond fails)


def _prompt(*words: str) -> str:
    return FILLER + " ".join(words) + " thanks."


def _down(i: int, n: int) -> int:
    """Thresholds that fall with the rule index: rule i holds for `x > _down(i)` exactly when i >= the target."""
    return 10 * (n - i)


SHAPES: tuple[Shape, ...] = (
    Shape("task ~ kw", lambda i, n: f'task ~ "zq{i}x"', lambda at, n: (_prompt(f"zq{at}x"), {})),
    Shape("tier == v", lambda i, n: f'tier == "x{i}"', lambda at, n: (_prompt(), {"tier": f"x{at}"})),
    Shape(
        "tokens > N", lambda i, n: f"tokens > {_down(i, n)}", lambda at, n: (_prompt(), {"tokens": _down(at, n) + 1})
    ),
    Shape(
        "max_tokens < N",
        lambda i, n: f"max_tokens < {10 * (i + 1)}",
        lambda at, n: (_prompt(), {"max_tokens": 10 * (at + 1) - 1}),
    ),
    Shape("score >= N", lambda i, n: f"score >= {n - i}", lambda at, n: (_prompt(), {"score": n - at})),
    Shape(
        "tier in [..]",
        lambda i, n: f'tier in ["a{i}", "b{i}", "c{i}"]',
        lambda at, n: (_prompt(), {"tier": f"b{at}"}),
    ),
    Shape(
        "user.plan == v", lambda i, n: f'user.plan == "p{i}"', lambda at, n: (_prompt(), {"user": {"plan": f"p{at}"}})
    ),
    Shape(
        "task ~ kw or tokens > N",
        lambda i, n: f'task ~ "kw{i}q" or tokens > {_down(i, n)}',
        # the middle rule by its keyword, the last one by its threshold
        lambda at, n: (_prompt(f"kw{at}q"), {"tokens": 5}) if at < n - 1 else (_prompt(), {"tokens": _down(at, n) + 1}),
    ),
    Shape(
        "tier == v or task ~ kw",
        lambda i, n: f'tier == "v{i}" or task ~ "kw{i}q"',
        lambda at, n: (_prompt(), {"tier": f"v{at}"}) if at < n - 1 else (_prompt(f"kw{at}q"), {}),
    ),
    Shape(
        "not task ~ kw and tokens > N",
        lambda i, n: f'not task ~ "kw{i}q" and tokens > {_down(i, n)}',
        # rules from `at` on hold by tokens; the prompt names rule at's keyword, so the rule after it decides
        lambda at, n: (_prompt(f"kw{at}q"), {"tokens": _down(at, n) + 1}),
        lambda at, n: at + 1,
    ),
    Shape(
        "(u.plan in [..] and rg == N) or (o.t == v and task ~ kw)",
        lambda i, n: f'(u.plan in ["free", "pro"] and rg == {i}) or (o.t == "t{i}" and task ~ "kw{i}q")',
        lambda at, n: (
            (_prompt(), {"u": {"plan": "pro"}, "rg": at})
            if at < n - 1
            else (_prompt(f"kw{at}q"), {"o": {"t": f"t{at}"}})
        ),
    ),
)


ALIASES = "".join(f'model m{k} = "{m}"\n' for k, m in enumerate(MODELS))  # short names keep 10,000 rules < 1 MB


def policy_text(shape: Shape, n: int) -> str:
    return ALIASES + "".join(f"when {shape.cond(i, n)} use m{i % len(MODELS)}\n" for i in range(n))


def mixed_text(n: int) -> str:
    """A policy of n rules cycling through every shape (the compile and reload sections), without `otherwise`."""
    return ALIASES + "".join(f"when {SHAPES[i % len(SHAPES)].cond(i, n)} use m{i % len(MODELS)}\n" for i in range(n))


def positions(shape: Shape, n: int) -> dict[str, int]:
    """The rule each request is aimed at: the middle one and the last one (one before it when the rule after
    the aimed one decides)."""
    last = n - 1 if shape.decides(0, n) == 0 else n - 2
    return {"middle": n // 2, "last": last}


# ---- timing ------------------------------------------------------------------------------------------------


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - start) / calls / 1000


def calls_for(fn: Callable[[], object], budget_s: float = 0.004) -> int:
    """How many calls fill about `budget_s` (at least 1): slow cells get few calls, fast ones many."""
    one = per_call_us(fn, 3) / 1e6
    return max(1, min(2_000, int(budget_s / max(one, 1e-9))))


def interleaved(cells: dict[str, Callable[[], object]], samples: int) -> dict[str, float]:
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


# ---- sections ----------------------------------------------------------------------------------------------


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
        med = interleaved(cells, samples)
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
from scaling_bench import mixed_text
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


def synthetic_catalog(base: Catalog, total: int) -> Catalog:
    """A deterministic generated catalog of `total` models (when the shared LiteLLM file is not there)."""
    rng = random.Random(15)
    prices = [0.0, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 3.0, 5.0, 10.0, 15.0]
    specs = list(base.models.values())
    for i in range(total - len(specs)):
        ip = rng.choice(prices)
        specs.append(
            ModelSpec(
                name=f"gen-{i:05d}",
                provider=f"p{i % 40}",
                id=f"gen-{i:05d}",
                context=rng.choice([8_000, 32_000, 128_000, 1_000_000]),
                input_price=ip / 1e6,
                output_price=ip * rng.choice([1, 2, 4]) / 1e6,
                latency_ms=float(rng.randrange(200, 4000, 50)),
                capabilities={"CODING": float(rng.randint(1, 10)), "REASONING": float(rng.randint(1, 10))},
                supports=frozenset(rng.sample(["tools", "vision", "json"], rng.randint(0, 3))),
            )
        )
    return Catalog.from_models(specs)


def big_catalog() -> tuple[Catalog, str]:
    base = default_catalog()
    if not missing_data("litellm_model_prices.json"):
        from speed_bench import big_catalog as from_litellm

        cat, k = from_litellm(base, BIG_CATALOG)
        return cat, f"bundled + {k} LiteLLM chat models + variants"
    return synthetic_catalog(base, BIG_CATALOG), "bundled + generated models (no shared LiteLLM file)"


PREFERS = {
    "prefer cheapest": "otherwise prefer cheapest\n",
    "prefer capability(CODING)": "otherwise prefer capability(CODING)\n",
    "prefer capability(CODING) then cheapest": "otherwise prefer capability(CODING) then cheapest\n",
    "prefer least_busy": "otherwise prefer least_busy\n",
}


def section_prefer(out: list[str], samples: int) -> None:
    from engine.runtime.state import MemoryStore

    big, how = big_catalog()
    small = default_catalog()
    out.append("")
    out.append(
        f"== rankings over the bundled catalog ({len(small.models)} models) and {len(big.models):,} models ({how})"
    )
    out.append("   200 B prompt; least_busy with 40 models in flight (the alphabetically first 20 among them)")
    out.append(
        f"  {'action':<42} {f'{len(small.models)} models us':>13} {f'{len(big.models):,} models us':>16} "
        f"{'ratio':>7}  target < 20 us"
    )
    prompt = _prompt("summarize the meeting notes")
    for label, text in PREFERS.items():
        cells: dict[str, Callable[[], object]] = {}
        for name, cat in (("small", small), ("big", big)):
            store = MemoryStore()
            names = sorted(cat.models)
            for m in names[:20] + random.Random(1).sample(names, 20):
                store.add_in_flight(m, 1 + len(m) % 3)
            engine = Engine.from_source(text, catalog=cat, state=store)
            d = engine.decide(prompt)
            assert d.model, label

            def cell(e: Engine = engine) -> object:
                return e.decide(prompt)

            cells[name] = cell
        med = interleaved(cells, samples)
        ratio = med["big"] / med["small"]
        flag = "ok" if med["big"] < 20 else "MISSED"
        out.append(f"  {label:<42} {med['small']:13.2f} {med['big']:16.2f} {ratio:6.2f}x  {flag}")


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
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
