"""Speed benchmark: decide() against the regex engine alone, the bundled policy with and without detection by
meaning, scaling in rules and models, compile time, memory, a per-phase profile, and (when installed) LiteLLM's
Router deployment selection.

Run: python bench/speed_bench.py [--quick] [--no-save]
Prints every figure with its target and ratio, and writes the same text to bench/results/speed.txt.

Inputs: real prompts from the shared data folder (../shared/data, or $MODELROUTE_BENCH_DATA; as in
bench/decide_bench.py; without it the bench says so in one line and exits 2) cut to 200 B, 4 KB, 100 KB and 1 MB;
generated policies of 10, 100 and 1,000 rules whose actions are all `use`, all `prefer capability(CODING)`
or all `prefer cheapest`; catalogs of the bundled models and of ~4,000 models built from the LiteLLM price
snapshot (litellm_model_prices.json in the same folder); the bundled policy as shipped (it needs the semantic
extra) and its patterns-only copy (bench/decide_bench.py's `patterns_only_engine`). LiteLLM itself is optional:
set MODELROUTE_LITELLM_PYTHON to a Python that has `litellm` installed (a separate venv) and the LiteLLM
comparison runs there.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import re2  # noqa: E402
from decide_bench import PROMPT_FILES, patterns_only_engine, real_prompts, sized  # noqa: E402
from needs import data_dir, missing_modules, require_data, require_modules, save  # noqa: E402

from engine import Engine  # noqa: E402
from engine.runtime import evaluate as ev  # noqa: E402
from engine.runtime.decision import Decision  # noqa: E402
from engine.runtime.tokens import estimate_tokens  # noqa: E402
from providers.catalog.models import Catalog, ModelSpec, default_catalog  # noqa: E402

LITELLM_PRICES = "litellm_model_prices.json"
SIZES = {"200 B": 200, "4 KB": 4_000, "100 KB": 100_000, "1 MB": 1_000_000}
KINDS = {"use": "use gemini-1.5-flash", "capability": "prefer capability(CODING)", "cheapest": "prefer cheapest"}
BIG_CATALOG_SIZE = 4_000


# ---- inputs ------------------------------------------------------------------------------------------------


def big_catalog(base: Catalog, total: int = BIG_CATALOG_SIZE) -> tuple[Catalog, int]:
    """The bundled models plus every LiteLLM chat model with prices and a context window, padded with
    deterministic variants (name~2, prices +10%) to `total`. Capability scores come from the price rank."""
    raw = json.loads((data_dir() / LITELLM_PRICES).read_text(encoding="utf-8"))
    taken = set(base.models) | set(base.aliases)
    rows = []
    for name, v in raw.items():
        if not isinstance(v, dict) or v.get("mode") != "chat" or name in taken:
            continue
        ip, op, ctx = v.get("input_cost_per_token"), v.get("output_cost_per_token"), v.get("max_input_tokens")
        if ip is None or op is None or not ctx:
            continue
        rows.append((name, v, float(ip), float(op), int(ctx)))
    from_litellm = len(rows)
    k = 0
    while len(rows) < total - len(base.models) and from_litellm:
        name, v, ip, op, ctx = rows[k % from_litellm]
        rows.append((f"{name}~{2 + k // from_litellm}", v, ip * 1.1, op * 1.1, ctx))
        k += 1
    by_price = sorted(range(len(rows)), key=lambda i: (rows[i][3], rows[i][0]))
    rank = {i: r / max(1, len(rows) - 1) for r, i in enumerate(by_price)}
    specs = list(base.models.values())
    for i, (name, v, ip, op, ctx) in enumerate(rows):
        jitter = int(hashlib.sha256(name.encode()).hexdigest()[:4], 16) / 0xFFFF  # deterministic, 0..1
        score = 1 + 8 * rank[i]  # pricier models score higher, as they tend to
        supports = set()
        if v.get("supports_function_calling"):
            supports.add("tools")
        if v.get("supports_vision"):
            supports.add("vision")
        if v.get("supports_response_schema"):
            supports.add("json")
        specs.append(
            ModelSpec(
                name=name,
                provider=str(v.get("litellm_provider") or "unknown"),
                id=name,
                context=ctx,
                input_price=ip,
                output_price=op,
                latency_ms=round(200 + 3000 * (1 - rank[i]) * jitter),
                capabilities={
                    "REASONING": round(score, 2),
                    "CODING": round(min(10.0, score + jitter), 2),
                    "CREATIVITY": round(1 + 9 * jitter, 2),
                    "SPEED": round(10 - 9 * rank[i], 2),
                },
                supports=frozenset(supports),
            )
        )
    return Catalog.from_models(specs), from_litellm


def generated_policy(n: int, kind: str) -> str:
    """n rules: n-1 keyword / tier+keyword rules with the given action kind, then `otherwise`."""
    action = KINDS[kind]
    lines = []
    for i in range(n - 1):
        if i % 2 == 0:
            lines.append(f"when task ~ /\\bkeyword{i}\\b/ {action}")
        else:
            lines.append(f'when tier == "t{i}" and task ~ /\\btopic{i}\\b/ {action}')
    lines.append(f"otherwise {action}")
    return "\n".join(lines) + "\n"


def cases_for(prompts: list[str], size: int, n_rules: int, count: int = 8) -> list[tuple[str, dict]]:
    """Prompts of `size` bytes that contain the keyword of the rule in the middle of the policy."""
    mid = (n_rules // 2) & ~1
    out: list[tuple[str, dict]] = []
    for p in sized(prompts, size, count):
        cut = max(0, size // 2)
        text = (p[:cut] + f" keyword{mid} " + p[cut:])[:size]
        if f"keyword{mid} " not in text:  # tiny prompts: put the keyword first
            text = (f"keyword{mid} " + p)[:size]
        out.append((text, {"tier": "pro"} if len(out) % 2 else {}))
    return out


# ---- timing ------------------------------------------------------------------------------------------------


def median_us(fn: Callable[[str, dict], object], cases: list[tuple[str, dict]], samples: int) -> float:
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


def interleaved_us(
    sides: Sequence[Callable[[str, dict], object]], cases: list[tuple[str, dict]], samples: int
) -> list[float]:
    """The median of each side, interleaved sample by sample (one case per sample) so machine noise hits all alike;
    the order rotates each sample, since the first side to read a prompt pays for bringing it into the caches."""
    got: list[list[float]] = [[] for _ in sides]
    order = list(range(len(sides)))
    for s in range(samples):
        one = [cases[s % len(cases)]]
        for i in order[s % len(order) :] + order[: s % len(order)]:
            got[i].append(median_us(sides[i], one, 1))
    return [statistics.median(v) for v in got]


def pair_us(
    a: Callable[[str, dict], object], b: Callable[[str, dict], object], cases: list[tuple[str, dict]], samples: int
) -> tuple[float, float]:
    """Medians of a and b, interleaved sample by sample so machine noise hits both alike."""
    ours, theirs = interleaved_us([a, b], cases, samples)
    return ours, theirs


def decide_fn(engine: Engine) -> Callable[[str, dict], object]:
    return lambda p, at: engine.decide(p, **at)


def scan_fn(scan: Callable[[str], object]) -> Callable[[str, dict], object]:
    return lambda p, at: scan(p)


# ---- sections ------------------------------------------------------------------------------------------------


def warm_up(fn: Callable[[str, dict], object], cases: list[tuple[str, dict]], seconds: float = 1.0) -> None:
    """Run fn for a while first: the first run of a section otherwise pays for cold caches and clock ramp-up."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for prompt, attrs in cases:
            fn(prompt, attrs)


def headline(out: list[str], prompts: list[str], small: Catalog, samples: int) -> None:
    out.append("== headline: 200 B prompt, 50-rule policy, bundled catalog (after a 1 s warm-up each)")
    for kind in KINDS:
        engine = Engine.from_source(generated_policy(50, kind), catalog=small)
        cases = cases_for(prompts, 200, 50)
        warm_up(decide_fn(engine), cases)
        us = median_us(decide_fn(engine), cases, samples * 3)
        ok = "ok" if us < 5 else "MISSED"
        out.append(f"  {kind:<11} {us:8.2f} us median   (target < 5 us: {ok})")


def versus_scan(out: list[str], prompts: list[str], small: Catalog, samples: int) -> None:
    out.append("")
    out.append("== decide() vs one RE2 single-pass scan of the prompt alone (50 rules, bundled catalog)")
    out.append("   target (<= 1.5x): the policy's own single-pass RE2 set scan alone (policy.matcher.scan), i.e. the")
    out.append("   regex engine reading the prompt once for all of the policy's patterns; decide() adds the rest")
    out.append("   reference: one non-matching literal, re2.compile('(?i)zqxjkvw').search(prompt), the cheapest way")
    out.append("   to read every byte (a literal search is cheaper per byte than a multi-pattern set)")
    out.append(
        f"  {'prompt':>7} {'kind':<11} {'decide us':>11} {'set scan us':>12} {'decide/set':>10}  target <= 1.5x"
        f"  {'literal us':>11} {'decide/literal':>14}"
    )
    rx = re2.compile("(?i)zqxjkvw")
    for label in ("4 KB", "100 KB", "1 MB"):
        size = SIZES[label]
        cases = cases_for(prompts, size, 50)
        for kind in KINDS:
            engine = Engine.from_source(generated_policy(50, kind), catalog=small)
            matcher = engine.policy.matcher
            assert matcher is not None
            ours, sset = pair_us(decide_fn(engine), scan_fn(matcher.scan), cases, samples)
            ours2, scan = pair_us(decide_fn(engine), lambda p, at: rx.search(p), cases, samples)
            ratio = ours / sset
            flag = "" if label == "4 KB" else ("ok" if ratio <= 1.5 else "MISSED")
            out.append(
                f"  {label:>7} {kind:<11} {ours:11.1f} {sset:12.1f} {ratio:9.2f}x  {flag:<6}        "
                f"{scan:11.1f} {ours2 / scan:13.2f}x"
            )


def bundled_policy(out: list[str], prompts: list[str], samples: int, quick: bool) -> None:
    out.append("")
    out.append("== the bundled policy (policies/): as shipped (patterns + meaning) and patterns only (`like` removed)")
    out.append("   8 real prompts per size, interleaved sample by sample; ratio = shipped / patterns only, the cost of")
    out.append("   detection by meaning (WordLlama embeds the cut task text when a rule needs a semantic task that no")
    out.append("   pattern settled; prompts repeat, so its per-word token cache is warm)")
    out.append(f"  {'prompt':>7} {'shipped us':>11} {'patterns only us':>17} {'ratio':>7} {'embedded':>9}")
    shipped, patterns = Engine.load(), patterns_only_engine()
    for label in ("200 B", "4 KB", "100 KB") if quick else SIZES:
        cases: list[tuple[str, dict]] = [(p, {}) for p in sized(prompts, SIZES[label], 8)]
        sem, pat = interleaved_us([decide_fn(shipped), decide_fn(patterns)], cases, samples)
        embedded = sum(shipped.decide(p).vector is not None for p, _ in cases)
        out.append(f"  {label:>7} {sem:11.2f} {pat:17.2f} {sem / pat:6.1f}x {f'{embedded}/{len(cases)}':>9}")


def matrix(
    out: list[str], prompts: list[str], catalogs: dict[str, Catalog], samples: int, quick: bool
) -> dict[tuple[str, int, str, str], float]:
    out.append("")
    out.append("== decide() median us: prompt size x rules x catalog x action kind")
    results: dict[tuple[str, int, str, str], float] = {}
    compile_s: dict[tuple[str, int, str], float] = {}
    sizes = ["200 B", "4 KB", "100 KB"] if quick else list(SIZES)
    head = "  " + f"{'kind':<11} {'rules':>5} {'catalog':>8} " + " ".join(f"{s:>9}" for s in sizes)
    out.append(head)
    for kind in KINDS:
        for n in (10, 100, 1000):
            for cname, cat in catalogs.items():
                text = generated_policy(n, kind)
                start = time.perf_counter()
                engine = Engine.from_source(text, catalog=cat)
                compile_s[(kind, n, cname)] = time.perf_counter() - start
                row = []
                for label in sizes:
                    cases = cases_for(prompts, SIZES[label], n)
                    want = engine.decide(*cases[0][:1], **cases[0][1])
                    assert want.rule.index == (n // 2) & ~1, (kind, n, cname, label, want.rule.index)
                    us = median_us(decide_fn(engine), cases, samples)
                    results[(kind, n, cname, label)] = us
                    row.append(f"{us:9.2f}")
                out.append(f"  {kind:<11} {n:>5} {cname:>8} " + " ".join(row))
    out.append("")
    out.append("== growth (same prompt size, same kind): target <= 2x")
    names = list(catalogs)
    for kind in KINDS:
        for label in ("200 B", "4 KB"):
            r = results[(kind, 1000, names[0], label)] / results[(kind, 10, names[0], label)]
            m = results[(kind, 10, names[1], label)] / results[(kind, 10, names[0], label)]
            both = results[(kind, 1000, names[1], label)] / results[(kind, 10, names[0], label)]
            out.append(
                f"  {kind:<11} {label:>6}: rules 10 -> 1,000 {r:5.2f}x {'ok' if r <= 2 else 'MISSED':<6}"
                f" models {names[0]} -> {names[1]} {m:5.2f}x {'ok' if m <= 2 else 'MISSED':<6}"
                f" both {both:5.2f}x"
            )
    out.append("")
    out.append("== compile time of the generated policies (s)")
    for kind in KINDS:
        cells = " ".join(f"{n:>5} rules/{c}: {compile_s[(kind, n, c)]:6.3f}" for n in (10, 1000) for c in names)
        out.append(f"  {kind:<11} {cells}")
    return results


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
        start = time.perf_counter()
        Engine.from_source(text, catalog=small)
        times.append(time.perf_counter() - start)
    best = min(times)
    out.append(
        f"  compile: {best:.3f} s best of 3, {statistics.median(times):.3f} s median "
        f"(target < 1 s: {'ok' if best < 1 else 'MISSED'})"
    )
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    engine = Engine.from_source(text, catalog=small)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    retained = sum(s.size_diff for s in after.compare_to(before, "filename"))
    out.append(
        f"  memory: {retained / 1e6:.2f} MB retained by the compiled policy (Python heap, tracemalloc; "
        f"RE2's C++ set is not counted), {retained / 1000 / 1000:.1f} KB per rule"
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


def _phase_row(label: str, cases: list[tuple[str, dict]], engine: Engine, samples: int) -> str:
    policy = engine.policy
    reqs = [engine.request(p, **at) for p, at in cases]
    res = ev.decide(policy, reqs[0])
    assert res is not None
    rule, entry, fallbacks, matched, scanned, _ = res
    sel = rule.selector
    req_of = {id(p): r for (p, _), r in zip(cases, reqs, strict=True)}
    total = median_us(decide_fn(engine), cases, samples)
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


_LITELLM_SCRIPT = textwrap.dedent("""
    import asyncio, json, logging, statistics, sys, time
    from litellm import Router
    logging.disable(logging.CRITICAL)
    spec = json.loads(sys.stdin.read())

    async def main():
        out = {}
        for strategy in ("simple-shuffle", "cost-based-routing"):
            dep = [{"model_name": "main", "litellm_params": {"model": m, "api_key": "x"}} for m in spec["models"]]
            router = Router(model_list=dep, routing_strategy=strategy)
            for label, prompt in spec["prompts"].items():
                msgs = [{"role": "user", "content": prompt}]
                # the async path is the one the Router uses per request (cost-based only works there)
                await router.async_get_available_deployment(model="main", messages=msgs, request_kwargs={})
                ts = []
                for _ in range(spec["samples"]):
                    t = time.perf_counter_ns()
                    for _ in range(spec["calls"]):
                        await router.async_get_available_deployment(model="main", messages=msgs, request_kwargs={})
                    ts.append((time.perf_counter_ns() - t) / spec["calls"] / 1000)
                out[f"{strategy}|{label}"] = statistics.median(ts)
        print(json.dumps(out))

    asyncio.run(main())
""")


def litellm(out: list[str], prompts: list[str], small: Catalog, samples: int) -> None:
    out.append("")
    out.append("== LiteLLM Router deployment selection (simple-shuffle, cost-based-routing)")
    python = os.environ.get("MODELROUTE_LITELLM_PYTHON")
    if python is None:
        if not missing_modules("litellm"):
            python = sys.executable
        else:
            out.append(
                "  litellm not installed: skipped. To run it: python -m venv /tmp/litellm-venv && "
                "/tmp/litellm-venv/bin/pip install litellm && MODELROUTE_LITELLM_PYTHON=/tmp/litellm-venv/"
                "bin/python python bench/speed_bench.py"
            )
            return
    labels = ("200 B", "4 KB", "100 KB")
    texts = {label: cases_for(prompts, SIZES[label], 50)[0][0] for label in labels}
    models = [
        f"{m.provider}/{m.id}"
        for m in small.models.values()
        if m.provider in ("openai", "anthropic", "groq", "mistral", "deepseek")
    ]
    spec = {"models": models, "prompts": texts, "samples": samples, "calls": 20}
    try:
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # no network fetch of the cost map
        proc = subprocess.run(
            [python, "-c", _LITELLM_SCRIPT],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as exc:
        err = proc.stderr.strip().splitlines()[-1:] if "proc" in locals() else []
        out.append(f"  litellm run failed: skipped ({type(exc).__name__}: {exc}; {' '.join(err)})")
        return
    engine = Engine.from_source(generated_policy(50, "cheapest"), catalog=small)
    out.append(f"  {len(models)} deployments; modelroute: 50-rule policy, prefer cheapest, bundled catalog")
    out.append(
        f"  {'prompt':>7} {'modelroute us':>14} {'shuffle us':>11} {'cost-based us':>14} {'vs cost-based':>14}"
        "  target >= 20x at 100 KB"
    )
    for label in labels:
        ours = median_us(decide_fn(engine), [(texts[label], {})], samples)
        shuffle, cost = theirs[f"simple-shuffle|{label}"], theirs[f"cost-based-routing|{label}"]
        out.append(f"  {label:>7} {ours:14.2f} {shuffle:11.2f} {cost:14.2f} {cost / ours:13.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="7 samples per cell instead of 21, no 1 MB column")
    ap.add_argument("--no-save", action="store_true", help="print only; do not write bench/results/speed.txt")
    args = ap.parse_args()
    quick = args.quick
    require_data("speed_bench.py", *PROMPT_FILES, LITELLM_PRICES)
    require_modules("speed_bench.py", "wordllama", "numpy", install="pip install 'modelroute[semantic]'")
    samples = 7 if quick else 21
    started = time.perf_counter()
    prompts = real_prompts()
    small = default_catalog()
    big, from_litellm = big_catalog(small)
    catalogs = {f"{len(small)}": small, f"{len(big)}": big}
    out = [
        f"speed benchmark ({'quick' if quick else 'full'}), {samples} samples per cell, "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs",
        f"catalogs: bundled {len(small)} models; big {len(big)} models = bundled + {from_litellm} LiteLLM chat "
        f"models + {len(big) - len(small) - from_litellm} deterministic variants",
        "",
    ]
    headline(out, prompts, small, samples)
    versus_scan(out, prompts, small, samples)
    bundled_policy(out, prompts, samples, quick)
    matrix(out, prompts, catalogs, samples, quick)
    compile_and_memory(out, small)
    phases(out, prompts, small, samples)
    litellm(out, prompts, small, samples)
    out.append("")
    out.append(
        f"total bench time {time.perf_counter() - started:.0f} s; command: python bench/speed_bench.py"
        f"{' --quick' if quick else ''}"
    )
    text = "\n".join(out)
    print(text)
    if args.no_save:
        return
    save("speed.txt", text)


if __name__ == "__main__":
    main()
