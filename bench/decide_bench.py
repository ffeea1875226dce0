"""decide() benchmark: modelroute against a hand-written Python router doing the same job, in one run.

Run: python bench/decide_bench.py [--quick] [--synthetic] [--no-save]
Prints medians (microseconds per decide) and ratios, and writes them to bench/results/decide.txt.
The sides of each table are timed interleaved, sample by sample, so machine noise hits them alike.

The bundled policy (policies/) detects tasks by patterns and, for prompts no pattern settles, by meaning (`like`
examples, the WordLlama embedder). The hand-written router (bench/handwritten.py) mirrors its rules and its
patterns, not its examples, so it is compared with the bundled policy with every `like` item removed (cut at the
parser's spans by bench/quality_bench.py's `without_likes`; same job: both must pick the same model on every
prompt); the bundled policy as shipped is then compared with that patterns-only copy, and the ratio is what
detection by meaning costs.

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
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from handwritten import HandwrittenRouter, HandwrittenRuleLoop  # noqa: E402
from needs import data_dir, require_data, require_modules, save  # noqa: E402
from quality_bench import without_likes  # noqa: E402

from engine import Engine  # noqa: E402
from engine.language.load import bundled_policy_dir  # noqa: E402

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


Side = Callable[[str, dict], object]


def timed(sides: Sequence[Side], cases: list[tuple[str, dict]], samples: int) -> list[float]:
    """Median microseconds per call of each side over the cases, interleaved sample by sample; the order rotates
    each sample, since the first side to read a prompt pays for bringing it into the caches."""
    size = len(cases[0][0])
    calls = max(1, min(200, 2_000_000 // max(size, 1)))
    got: list[list[float]] = [[] for _ in sides]
    order = list(range(len(sides)))
    gc.disable()
    try:
        for s in range(samples):
            prompt, attrs = cases[s % len(cases)]
            for i in order[s % len(order) :] + order[: s % len(order)]:

                def call(f: Side = sides[i], p: str = prompt, at: dict = attrs) -> object:
                    return f(p, at)

                got[i].append(per_call_us(call, calls))
    finally:
        gc.enable()
    return [statistics.median(v) for v in got]


def compare(a: Side, b: Side, cases: list[tuple[str, dict]], samples: int) -> tuple[float, float]:
    """Median microseconds per call over the cases for a and b, interleaved sample by sample."""
    ours, theirs = timed([a, b], cases, samples)
    return ours, theirs


ATTRS: list[dict[str, Any]] = [{}, {"tier": "pro"}, {"tier": "free"}, {"tier": "enterprise", "tools": True}]


def patterns_only_engine(**kwargs: Any) -> Engine:
    """The bundled policy with every `like` item of its task library removed (bench/quality_bench.py's
    `without_likes`): task detection by patterns only, the job bench/handwritten.py does."""
    src = bundled_policy_dir()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for f in src.glob("*.route"):
            text = f.read_text(encoding="utf-8")
            if f.name == "tasks.route":
                text = without_likes(text, str(f))
            (folder / f.name).write_text(text, encoding="utf-8")
        engine = Engine.load(folder, **kwargs)
    assert engine.embedder is None, "the patterns-only copy of the bundled policy still needs an embedder"
    return engine


def check_agreement(engine: Engine, hand: HandwrittenRouter, prompts: list[str]) -> int:
    """Assert decide() and the hand-written router pick the same model for every prompt with every ATTRS; the
    number of requests checked."""
    n = 0
    for p in prompts:
        for at in ATTRS:
            got, want = engine.decide(p, **at).model, hand.route(p, **at)
            assert got == want, f"disagree on {p[:60]!r} {at}: engine {got}, hand-written {want}"
            n += 1
    return n


def bundled(samples: int, lines: list[str], prompts: list[str]) -> None:
    shipped = Engine.load(ROOT / "policies")
    patterns = patterns_only_engine()
    hand = HandwrittenRouter()
    checked = check_agreement(patterns, hand, prompts)
    by_size = {label: sized(prompts, size, 24) for label, size in SIZES.items()}
    checked += sum(check_agreement(patterns, hand, ps) for ps in by_size.values())
    lines.append("== bundled policy, patterns only (policies/ with its `like` items removed) vs hand-written router")
    lines.append("   (bench/handwritten.py: the same rules and patterns, Python's re; same model on every one of")
    lines.append(
        f"   {checked:,} requests checked: {len(prompts):,} prompts and the timed ones, each with 4 sets of attributes)"
    )
    lines.append(f"{'prompt':>8} {'modelroute us':>14} {'hand-written us':>16} {'speed-up':>9}")
    rows = []
    for label, ps in by_size.items():
        cases: list[tuple[str, dict]] = [(p, ATTRS[i % len(ATTRS)]) for i, p in enumerate(ps)]
        ours, theirs, sem = timed(
            [
                lambda p, at: patterns.decide(p, **at),
                lambda p, at: hand.route(p, **at),
                lambda p, at: shipped.decide(p, **at),
            ],
            cases,
            samples,
        )
        lines.append(f"{label:>8} {ours:>14.2f} {theirs:>16.2f} {theirs / ours:>8.1f}x")
        embedded = sum(shipped.decide(p, **at).vector is not None for p, at in cases)
        changed = sum(shipped.decide(p, **at).model != patterns.decide(p, **at).model for p, at in cases)
        rows.append((label, sem, ours, embedded, changed, len(cases)))
    lines.append("")
    lines.append("== bundled policy as shipped (patterns + meaning: `like` examples, WordLlama) vs patterns only")
    lines.append("   ratio = the cost of detection by meaning; timed in the same samples as the table above; a prompt")
    lines.append("   is embedded only when a rule needs a semantic task no pattern settled (prompts repeat, so the")
    lines.append("   embedder's per-word token cache is warm: bench/semantic_bench.py times first-seen text)")
    lines.append(
        f"{'prompt':>8} {'shipped us':>11} {'patterns us':>12} {'ratio':>7} {'embedded':>9} {'other model':>12}"
    )
    for label, sem, ours, embedded, changed, n in rows:
        lines.append(
            f"{label:>8} {sem:>11.2f} {ours:>12.2f} {sem / ours:>6.1f}x {f'{embedded}/{n}':>9} {f'{changed}/{n}':>12}"
        )


def generated_policy(n: int) -> tuple[str, list[tuple[list[str], str | None, str]]]:
    """A policy of n rules (keyword, tier+keyword, and keyword+size rules) and the same rules as data."""
    models = ["gpt-4o-mini", "claude-3-5-haiku", "gemini-1.5-flash", "deepseek-chat", "gpt-4o"]
    src: list[str] = []
    rules: list[tuple[list[str], str | None, str]] = []
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


def engine_fn(engine: Engine) -> Side:
    return lambda p, at: engine.decide(p, **at)


def hand_fn_of(hand: HandwrittenRuleLoop) -> Side:
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
            cases: list[tuple[str, dict]] = [(p[: size // 2] + f" keyword{mid} " + p[size // 2 :], {}) for p in base]
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
    ap.add_argument("--no-save", action="store_true", help="print only; do not write bench/results/decide.txt")
    args = ap.parse_args()
    if not args.synthetic:
        require_data("decide_bench.py", *PROMPT_FILES, alternative="; or pass --synthetic for generated prompts")
    require_modules("decide_bench.py", "wordllama", "numpy", install="pip install 'modelroute[semantic]'")
    started = time.perf_counter()
    prompts = synthetic_prompts() if args.synthetic else real_prompts()
    samples = 9 if args.quick else 31
    source = "synthetic prompts (not saved)" if args.synthetic else "real prompts"
    lines = [f"decide() benchmark, {samples} samples per cell, Python {sys.version.split()[0]}, {source}"]
    bundled(samples, lines, prompts)
    scaling(samples, lines, prompts)
    command = "python bench/decide_bench.py" + "".join(f" --{k}" for k in ("quick", "synthetic") if getattr(args, k))
    lines.append("")
    lines.append(f"total bench time {time.perf_counter() - started:.0f} s; command: {command}")
    text = "\n".join(lines)
    print(text)
    if args.synthetic or args.no_save:
        return
    save("decide.txt", text)


if __name__ == "__main__":
    main()
