"""Profile sections of bench/speed_bench.py: generated policies and sized prompts in, report lines out on the
compile time and memory of a 1,000-rule policy and on the time of each phase of decide()."""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc

from decide_bench import engine_fn

from engine import Engine
from engine.compiler.reuse import forget
from engine.runtime import evaluate as ev
from engine.runtime.decision import Decision
from engine.runtime.tokens import estimate_tokens
from providers.catalog.models import Catalog
from speed.inputs import KINDS, SIZES, Case, cases_for, generated_policy
from speed.timing import median_us


def compile_and_memory(out: list[str], small: Catalog) -> None:
    out.append("")
    out.append("== compile and memory of a 1,000-rule policy (bundled catalog, mixed actions)")
    lines = []
    for i in range(999):
        kind = list(KINDS)[i % 3]
        if i % 2 == 0:
            lines.append(f"when task ~ /\\bkeyword{i}\\b/ {KINDS[kind]}")
        else:
            lines.append(f'when tier == "t{i}" and task ~ /\\btopic{i}\\b/ {KINDS[kind]} where latency <= 2s')
    text = "\n".join([*lines, "otherwise use gpt-4o-mini"]) + "\n"
    Engine.from_source("otherwise use gpt-4o-mini\n", catalog=small)  # warm the parser
    times = []
    for _ in range(3):
        forget()  # a first compile: nothing kept from the run before (engine/compiler/reuse.py)
        start = time.perf_counter()
        Engine.from_source(text, catalog=small)
        times.append(time.perf_counter() - start)
    best = min(times)
    out.append(
        f"  compile: {best:.3f} s best of 3, {statistics.median(times):.3f} s median "
        f"(target < 1 s: {'ok' if best < 1 else 'MISSED'})"
    )
    forget()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    engine = Engine.from_source(text, catalog=small)
    gc.collect()
    with_memos = tracemalloc.take_snapshot()
    forget()  # what the compile kept for the next one (engine/compiler/reuse.py) is not the policy's
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    retained = sum(s.size_diff for s in after.compare_to(before, "filename"))
    memos = sum(s.size_diff for s in with_memos.compare_to(after, "filename"))
    out.append(
        f"  memory: {retained / 1e6:.2f} MB retained by the compiled policy (Python heap, tracemalloc; "
        f"RE2's C++ set is not counted), {retained / 1000 / 1000:.1f} KB per rule; the compile kept "
        f"{memos / 1e6:.2f} MB more for the next compile (engine/compiler/reuse.py)"
    )
    assert engine.decide("keyword0 please").rule.index == 0


def phases(out: list[str], prompts: list[str], small: Catalog, samples: int) -> None:
    out.append("")
    out.append("== per-phase breakdown of decide() (50-rule policy, prefer capability, bundled catalog)")
    out.append("   each phase timed on its own; 'walk' = evaluate.decide minus scan and ranking")
    engine = Engine.from_source(generated_policy(50, "capability"), catalog=small)
    out.append(
        f"  {'prompt':>7} {'total':>9} {'request':>9} {'tokens':>9} {'scan':>9} {'walk':>9} "
        f"{'ranking':>9} {'Decision':>9} {'sum':>9}   (us)"
    )
    for label in ("200 B", "100 KB"):
        out.append(_phase_row(label, cases_for(prompts, SIZES[label], 50), engine, samples))
    out.append("  (request = building the Request, which includes the token estimate shown next to it)")


def _phase_row(label: str, cases: list[Case], engine: Engine, samples: int) -> str:
    policy = engine.policy
    reqs = [engine.request(p, **at) for p, at in cases]
    res = ev.decide(policy, reqs[0])
    assert res is not None
    rule, entry, fallbacks, matched, scanned, _ = res
    sel = rule.selector
    req_of = {id(p): r for (p, _), r in zip(cases, reqs, strict=True)}
    total = median_us(engine_fn(engine), cases, samples)
    request = median_us(lambda p, at: engine.request(p, **at), cases, samples)
    tokens = median_us(lambda p, at: estimate_tokens(p), cases, samples)
    matcher = policy.matcher
    assert matcher is not None
    scan = median_us(lambda p, at: matcher.scan(p), cases, samples)
    evaluate = median_us(lambda p, at: ev.decide(policy, req_of[id(p)]), cases, samples)
    rank = median_us(lambda p, at: sel.pick(req_of[id(p)]), cases, samples)
    build = median_us(
        lambda p, at: Decision(policy, rule, entry, fallbacks, req_of[id(p)], matched, scanned, 0), cases, samples
    )
    walk = max(0.0, evaluate - scan - rank)
    parts = request + walk + scan + rank + build
    return (
        f"  {label:>7} {total:9.2f} {request:9.2f} {tokens:9.2f} {scan:9.2f} {walk:9.2f} "
        f"{rank:9.2f} {build:9.2f} {parts:9.2f}"
    )
