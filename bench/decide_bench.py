"""decide() benchmark: modelroute against a hand-written Python router doing the same job, in one run.

Run: python bench/decide_bench.py [--quick] [--synthetic]
Prints medians (microseconds per decide) and ratios, and writes them to bench/results/decide.txt.
Both sides are timed interleaved, sample by sample, so machine noise hits them alike.

The prompts are real ones from the shared data folder (../shared/data, or $MODELROUTE_BENCH_DATA); without
it the bench says so in one line and exits 2. `--synthetic` runs on generated prompts instead and saves
nothing (its figures are not comparable with the recorded ones).
"""

from __future__ import annotations

import argparse
import csv
import gc
import gzip
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from handwritten import HandwrittenRouter, HandwrittenRuleLoop  # noqa: E402
from needs import data_dir, require_data  # noqa: E402

from engine import Engine  # noqa: E402

SIZES = {"200 B": 200, "4 KB": 4_000, "100 KB": 100_000}
PROMPT_FILES = ("awesome_chatgpt_prompts.csv", "HumanEval.jsonl.gz", "self_instruct_seed_tasks.jsonl")


def real_prompts() -> list[str]:
    """Real prompts from the shared data folder (awesome-chatgpt-prompts, HumanEval, Self-Instruct)."""
    data = data_dir()
    out: list[str] = []
    csv.field_size_limit(10**7)
    with open(data / "awesome_chatgpt_prompts.csv", newline="", encoding="utf-8") as f:
        out += [row["prompt"] for row in csv.DictReader(f) if row.get("prompt")]
    with gzip.open(data / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as f:
        out += [json.loads(line)["prompt"] for line in f]
    with open(data / "self_instruct_seed_tasks.jsonl", encoding="utf-8") as f:
        out += [json.loads(line)["instruction"] for line in f]
    return out


def synthetic_prompts() -> list[str]:
    """Generated prompts, for `--synthetic` runs without the shared data."""
    return [
        f"Please help me with request number {i}: implement a parser, summarize a report, "
        f"translate this to french, or write a poem about the sea."
        for i in range(200)
    ]


def sized(prompts: list[str], size: int, count: int) -> list[str]:
    """`count` prompts of exactly `size` characters, built from consecutive real prompts."""
    out = []
    step = max(1, len(prompts) // count)
    for k in range(count):
        text, j = "", (k * step) % len(prompts)
        while len(text) < size:
            text += prompts[j % len(prompts)] + "\n\n"
            j += 1
        out.append(text[:size])
    return out


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - start) / calls / 1000


def compare(
    a: Callable[[str, dict], object], b: Callable[[str, dict], object], cases: list[tuple[str, dict]], samples: int
) -> tuple[float, float]:
    """Median microseconds per call over the cases for a and b, interleaved sample by sample."""
    size = len(cases[0][0])
    calls = max(1, min(200, 2_000_000 // max(size, 1)))
    sa, sb = [], []
    gc.disable()
    try:
        for s in range(samples):
            prompt, attrs = cases[s % len(cases)]
            sa.append(per_call_us(lambda p=prompt, at=attrs: a(p, at), calls))
            sb.append(per_call_us(lambda p=prompt, at=attrs: b(p, at), calls))
    finally:
        gc.enable()
    return statistics.median(sa), statistics.median(sb)


ATTRS = [{}, {"tier": "pro"}, {"tier": "free"}, {"tier": "enterprise", "tools": True}]


def bundled(samples: int, lines: list[str], prompts: list[str]) -> None:
    engine = Engine.load(ROOT / "policies")
    hand = HandwrittenRouter()
    lines.append("== bundled policy (policies/main.route) vs hand-written router (bench/handwritten.py)")
    lines.append(f"{'prompt':>8} {'modelroute us':>14} {'hand-written us':>16} {'speed-up':>9}")
    for label, size in SIZES.items():
        cases = [(p, ATTRS[i % len(ATTRS)]) for i, p in enumerate(sized(prompts, size, 24))]
        for p, at in cases:  # same job: both must pick the same model
            got, want = engine.decide(p, **at).model, hand.route(p, **at)
            assert got == want, f"disagree on {p[:60]!r} {at}: engine {got}, hand-written {want}"
        ours, theirs = compare(lambda p, at: engine.decide(p, **at), lambda p, at: hand.route(p, **at), cases, samples)
        lines.append(f"{label:>8} {ours:>14.2f} {theirs:>16.2f} {theirs / ours:>8.1f}x")


def generated_policy(n: int) -> tuple[str, list[tuple[list[str], str | None, str]]]:
    """A policy of n rules (keyword, tier+keyword, and keyword+size rules) and the same rules as data."""
    models = ["gpt-4o-mini", "claude-3-5-haiku", "gemini-1.5-flash", "deepseek-chat", "gpt-4o"]
    src, rules = [], []
    for i in range(n - 1):
        model = models[i % len(models)]
        if i % 2 == 0:
            src.append(f"when task ~ /\\bkeyword{i}\\b/ use {model}")
            rules.append(([rf"\bkeyword{i}\b"], None, model))
        else:
            src.append(f'when tier == "t{i}" and task ~ /\\btopic{i}\\b/ use {model}')
            rules.append(([rf"\btopic{i}\b"], f"t{i}", model))
    src.append("otherwise use gpt-4o-mini")
    return "\n".join(src) + "\n", rules


def engine_fn(engine: Engine) -> Callable[[str, dict], object]:
    return lambda p, at: engine.decide(p, **at)


def hand_fn_of(hand: HandwrittenRuleLoop) -> Callable[[str, dict], object]:
    return lambda p, at: hand.route(p, **at)


def scaling(samples: int, lines: list[str], prompts: list[str]) -> None:
    lines.append("")
    lines.append("== generated policies: decide() by rule count (prompt hits the rule in the middle)")
    lines.append(f"{'rules':>6} {'prompt':>8} {'modelroute us':>14} {'hand-written loop us':>21} {'speed-up':>9}")
    results: dict[tuple[int, str], float] = {}
    for n in (10, 50, 100, 1000):
        text, rules = generated_policy(n)
        engine = Engine.from_source(text, file=f"generated-{n}.route")
        hand = HandwrittenRuleLoop(rules, "gpt-4o-mini")
        ours_fn = engine_fn(engine)
        hand_fn = hand_fn_of(hand)
        mid = (n // 2) & ~1
        for label, size in SIZES.items():
            base = sized(prompts, size, 12)
            cases = [(p[: size // 2] + f" keyword{mid} " + p[size // 2 :], {}) for p in base]
            cases = [(p[:size], at) for p, at in cases]
            for p, at in cases:
                assert engine.decide(p, **at).model == hand.route(p, **at)
            if n == 1000 and size > 4_000:
                ours = compare(ours_fn, ours_fn, cases, max(5, samples // 4))[0]
                theirs = float("nan")
            else:
                ours, theirs = compare(ours_fn, hand_fn, cases, samples)
            results[(n, label)] = ours
            ratio = f"{theirs / ours:>8.1f}x" if theirs == theirs else "  (skip)"
            shown = f"{theirs:>21.2f}" if theirs == theirs else f"{'(too slow to run)':>21}"
            lines.append(f"{n:>6} {label:>8} {ours:>14.2f} {shown} {ratio}")
    lines.append("")
    for label in SIZES:
        growth = results[(1000, label)] / results[(10, label)]
        lines.append(f"growth 10 -> 1,000 rules at {label}: {growth:.2f}x (target <= 2x)")
    lines.append(f"50 rules at 200 B: {results[(50, '200 B')]:.2f} us median (target < 10 us)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="9 samples per cell instead of 31")
    ap.add_argument("--synthetic", action="store_true", help="generated prompts instead of the shared data")
    args = ap.parse_args()
    if not args.synthetic:
        require_data("decide_bench.py", *PROMPT_FILES, alternative="; or pass --synthetic for generated prompts")
    prompts = synthetic_prompts() if args.synthetic else real_prompts()
    samples = 9 if args.quick else 31
    source = "synthetic prompts (not saved)" if args.synthetic else "real prompts"
    lines = [f"decide() benchmark, {samples} samples per cell, Python {sys.version.split()[0]}, {source}"]
    bundled(samples, lines, prompts)
    scaling(samples, lines, prompts)
    text = "\n".join(lines)
    print(text)
    if args.synthetic:
        return
    out = HERE / "results" / "decide.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
