"""Semantic task benchmark: decide() on a policy with one task detected by meaning (`like [...]`) against the same
policy with patterns only, and the embedding alone, at 200 B, 2 KB, 20 KB and 1 MB of real prompt text.

Run: python bench/semantic_bench.py [--quick]
Prints medians and p99 (microseconds per call), the ratio to the pattern-only policy and whether each size meets
the target (decide() with the semantic task under 500 us, median), and writes them to bench/results/semantic.txt.

Every call is timed on its own; the two policies take turns call by call, so machine noise hits them alike. The
text is the awesome-chatgpt-prompts collection from the shared data folder (../shared/data, or
$MODELROUTE_BENCH_DATA), concatenated and cut at a dozen places per size. "warm" is the steady state of a running
process (the default embedder keeps each word's tokens); "cold" empties that cache before every call, so every word
is tokenized again (the worst case: a text of words never seen). Needs the semantic extra (WordLlama).
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from needs import data_dir, require_data, require_modules, save  # noqa: E402

SIZES = {"200 B": 200, "2 KB": 2_000, "20 KB": 20_000, "1 MB": 1_000_000}
TARGET_US = 500.0
EXAMPLES = [
    "write a python function that parses dates",
    "why does this stack trace happen",
    "fix the bug in this code",
    "implement a class for a linked list in java",
    "review my pull request and suggest improvements",
    "write a SQL query that joins two tables",
]
#: The same two rules in both policies (models with a 1M-token context, so 1 MB prompts have a route).
RULES = "when task is code use claude-opus-4-6\notherwise use claude-sonnet-4-6\n"
SEMANTIC = "task code = like [" + ", ".join(f'"{e}"' for e in EXAMPLES) + "] >= 0.5\n" + RULES
PATTERNS = (
    'task code = /write (a |the )?(code|function|class|script)/, /implement/, "debug", /```\\w+/, "stack trace"\n'
)
PATTERNS += RULES
#: Pairs of requests and how they relate, for the cosine scale of the default embedder (docs/semantic.md).
PAIRS = [
    (
        "paraphrase, same words",
        "write a python function that parses dates",
        "write a python function to parse a date string",
    ),
    ("paraphrase, other words", "hi, how are you today?", "hey there, how is your day going?"),
    (
        "paraphrase, other words",
        "summarize this article in three bullet points",
        "give me a short summary of the following text",
    ),
    (
        "paraphrase, other words",
        "why does this stack trace happen",
        "I get a NullPointerException when I run my code, why?",
    ),
    ("same task", "write a python function that parses dates", "Implement a function that merges two sorted lists"),
    ("same task", "fix the bug in this code", "Fix this bug: my loop never ends in JavaScript"),
    ("same task", "translate this paragraph into French", "how do you say 'good morning' in Spanish?"),
    ("same task", "review this contract clause for legal risks", "is this non-compete agreement enforceable?"),
    ("unrelated", "translate this paragraph into French", "write a poem about the sea"),
    ("unrelated", "write a python function that parses dates", "What's the weather today?"),
    ("unrelated", "Analyze this complex financial report and identify the main risks", "What's the weather today?"),
]
#: The semantic cache's threshold and risk (docs/cache.md): rewordings, and pairs whose meaning differs.
CACHE_PAIRS = [
    ("same question", "What is the capital of France?", "What's the capital of France?"),
    ("same request", "Write a python function that parses dates", "Write a Python function that parses dates."),
    ("same question", "What is the capital of France?", "What is the capital city of France?"),
    ("same question", "What is the capital of France?", "what is the capital of France"),
    ("another question", "What is the capital of France?", "What is the capital of Spain?"),
    ("meaning differs", "convert 5 miles to km", "convert 5 km to miles"),
    ("meaning differs", "Is this function thread safe?", "Is this function not thread safe?"),
    ("meaning differs", "Should I take ibuprofen with alcohol?", "Should I take ibuprofen without alcohol?"),
]
CUTS = (500, 1_000, 1_500, 2_000)  # total characters embedded, for the table that picks the cut


def corpus() -> str:
    """Every prompt of awesome-chatgpt-prompts, one after another (about 4 MB)."""
    csv.field_size_limit(10**7)
    with open(data_dir() / "awesome_chatgpt_prompts.csv", newline="", encoding="utf-8") as f:
        return "\n\n".join(row["prompt"] for row in csv.DictReader(f) if row.get("prompt"))


def texts_of(text: str, size: int, count: int) -> list[str]:
    """`count` texts of `size` characters, cut from `text` at evenly spread places."""
    step = max(1, (len(text) - size) // count)
    return [text[k * step : k * step + size] for k in range(count)]


def timed(
    fns: list[Callable[[str], object]], texts: list[str], calls: int, before: Callable[[], object]
) -> list[list[float]]:
    """Microseconds of each call, per function; the functions take turns call by call over the texts."""
    out: list[list[float]] = [[] for _ in fns]
    gc.disable()
    try:
        for i in range(calls):
            text = texts[i % len(texts)]
            for fn, samples in zip(fns, out, strict=True):
                before()
                start = time.perf_counter_ns()
                fn(text)
                samples.append((time.perf_counter_ns() - start) / 1000)
    finally:
        gc.enable()
    return out


def p99(samples: list[float]) -> float:
    return sorted(samples)[min(len(samples) - 1, int(len(samples) * 0.99))]


def decide_section(text: str, calls: int, lines: list[str]) -> None:
    from engine import Engine
    from engine.runtime.embedder import default_embedder

    semantic = Engine.from_source(SEMANTIC, file="semantic.route")
    patterns = Engine.from_source(PATTERNS, file="patterns.route")
    model = default_embedder()
    pieces = getattr(model, "pieces", {})
    lines.append("== decide(): one semantic task (`like`, 6 examples) vs the same policy with patterns only")
    lines.append(
        f"{'prompt':>7} {'semantic us':>12} {'p99':>8} {'patterns us':>12} {'p99':>8} {'ratio':>6}"
        f" {'cold us':>8} {'p99':>8}  {'< 500 us':>8}"
    )
    for label, size in SIZES.items():
        texts = texts_of(text, size, 12)
        for t in texts:  # warm up, and check both policies decide
            semantic.decide(t), patterns.decide(t)
        n = max(60, calls // 4) if size >= 1_000_000 else calls
        sem, pat = timed([semantic.decide, patterns.decide], texts, n, lambda: None)
        (cold,) = timed([semantic.decide], texts, max(60, n // 4), pieces.clear)
        ms, mp, mc = statistics.median(sem), statistics.median(pat), statistics.median(cold)
        lines.append(
            f"{label:>7} {ms:>12.1f} {p99(sem):>8.1f} {mp:>12.1f} {p99(pat):>8.1f} {ms / mp:>5.1f}x"
            f" {mc:>8.1f} {p99(cold):>8.1f}  {'yes' if ms < TARGET_US else 'NO':>8}"
        )


def scale_section(lines: list[str], pairs: list[tuple[str, str, str]] = PAIRS) -> None:
    from engine.runtime.embedder import default_embedder, embed_text

    model = default_embedder()
    lines.append("== cosine scale of the default embedder (WordLlama 256-d): similarity of two requests")
    lines.append(f"{'cosine':>6}  {'relation':<24} requests")
    for relation, a, b in pairs:
        cosine = float(embed_text(model, a) @ embed_text(model, b))
        lines.append(f"{cosine:>6.2f}  {relation:<24} {a!r} / {b!r}")
    lines.append("")


def embed_section(text: str, calls: int, lines: list[str]) -> None:
    from engine.runtime.embedder import HEAD_CHARS, TAIL_CHARS, WordLlamaEmbedder, default_embedder, embed_text

    model = default_embedder()
    assert isinstance(model, WordLlamaEmbedder)
    wordllama = model.model
    lines.append("")
    lines.append(f"== embedding alone: embed_text() of the cut ({HEAD_CHARS} + {TAIL_CHARS} characters)")
    lines.append(f"{'prompt':>7} {'warm us':>8} {'p99':>8} {'cold us':>8} {'p99':>8} {'WordLlama embed() us':>21}")
    for label, size in SIZES.items():
        texts = texts_of(text, size, 12)
        warm, theirs = timed(
            [lambda t: embed_text(model, t), lambda t: embed_text(lambda x: wordllama.embed(x, norm=True), t)],
            texts,
            calls,
            lambda: None,
        )
        (cold,) = timed([lambda t: embed_text(model, t)], texts, max(60, calls // 4), model.pieces.clear)
        lines.append(
            f"{label:>7} {statistics.median(warm):>8.1f} {p99(warm):>8.1f} {statistics.median(cold):>8.1f}"
            f" {p99(cold):>8.1f} {statistics.median(theirs):>21.1f}"
        )
    lines.append("")
    lines.append("== the cut's length: embedding that many characters of real text (the default embedder)")
    lines.append(f"{'characters':>10} {'warm us':>8} {'p99':>8} {'cold us':>8} {'p99':>8} {'WordLlama embed() us':>21}")
    for chars in CUTS:
        texts = texts_of(text, chars, 12)
        warm, theirs = timed(
            [lambda t: model([t]), lambda t: wordllama.embed([t], norm=True)], texts, calls, lambda: None
        )
        (cold,) = timed([lambda t: model([t])], texts, max(60, calls // 4), model.pieces.clear)
        lines.append(
            f"{chars:>10} {statistics.median(warm):>8.1f} {p99(warm):>8.1f} {statistics.median(cold):>8.1f}"
            f" {p99(cold):>8.1f} {statistics.median(theirs):>21.1f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 calls per cell instead of 1,000 (not saved)")
    ap.add_argument(
        "--cosines",
        action="store_true",
        help="only the cosine scale, with the semantic cache's pairs (no timing, not saved)",
    )
    args = ap.parse_args()
    require_data("semantic_bench.py", "awesome_chatgpt_prompts.csv")
    require_modules("semantic_bench.py", "wordllama", "numpy", install="python -m pip install -e '.[semantic]'")
    if args.cosines:
        lines: list[str] = []
        scale_section(lines, PAIRS + CACHE_PAIRS)
        print("\n".join(lines))
        return
    calls = 200 if args.quick else 1_000
    text = corpus()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"semantic task benchmark, {calls} calls per cell (timed one by one), Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load average {load:.2f} at the start"
    ]
    scale_section(lines)
    decide_section(text, calls, lines)
    embed_section(text, calls, lines)
    report = "\n".join(lines)
    print(report)
    if args.quick:
        return
    save("semantic.txt", report)


if __name__ == "__main__":
    main()
