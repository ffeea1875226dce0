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

Parts: bench/speed/inputs.py (sizes, generated policies, the big catalog), bench/speed/timing.py (interleaved
medians), bench/speed/profile.py (compile, memory, per-phase sections), bench/speed/versus_litellm.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import re2  # noqa: E402
from decide_bench import PROMPT_FILES, engine_fn, patterns_only_engine, real_prompts, sized  # noqa: E402
from needs import require_data, require_modules, save  # noqa: E402
from speed.inputs import KINDS, LITELLM_PRICES, SIZES, Case, big_catalog, cases_for, generated_policy  # noqa: E402
from speed.profile import compile_and_memory, phases  # noqa: E402
from speed.timing import interleaved_us, median_us, pair_us, scan_fn, warm_up  # noqa: E402
from speed.versus_litellm import litellm  # noqa: E402

from engine import Engine  # noqa: E402
from engine.compiler.reuse import forget  # noqa: E402
from providers.catalog.models import Catalog, default_catalog  # noqa: E402


def headline(out: list[str], prompts: list[str], small: Catalog, samples: int) -> None:
    out.append("== headline: 200 B prompt, 50-rule policy, bundled catalog (after a 1 s warm-up each)")
    for kind in KINDS:
        engine = Engine.from_source(generated_policy(50, kind), catalog=small)
        cases = cases_for(prompts, 200, 50)
        warm_up(engine_fn(engine), cases)
        us = median_us(engine_fn(engine), cases, samples * 3)
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
            ours, sset = pair_us(engine_fn(engine), scan_fn(matcher.scan), cases, samples)
            ours2, scan = pair_us(engine_fn(engine), lambda p, at: rx.search(p), cases, samples)
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
        cases: list[Case] = [(p, {}) for p in sized(prompts, SIZES[label], 8)]
        sem, pat = interleaved_us([engine_fn(shipped), engine_fn(patterns)], cases, samples)
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
                forget()  # time a first compile (engine/compiler/reuse.py)
                start = time.perf_counter()
                engine = Engine.from_source(text, catalog=cat)
                compile_s[(kind, n, cname)] = time.perf_counter() - start
                row = []
                for label in sizes:
                    cases = cases_for(prompts, SIZES[label], n)
                    want = engine.decide(*cases[0][:1], **cases[0][1])
                    assert want.rule.index == (n // 2) & ~1, (kind, n, cname, label, want.rule.index)
                    us = median_us(engine_fn(engine), cases, samples)
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
