"""Token counting benchmark: prompts of 200 B, 4 KB and 100 KB in, the cost of exact counting (tiktoken
cl100k_base, `set tokens.estimator = "tiktoken:cl100k_base"`) against the default estimate (one token per four
characters) out, for the counter alone and for a whole decide(); plus the estimate's error against tiktoken on
real prompts (English, code, JSON, Chinese) of the shared data folder. Printed, and saved to
bench/results/tokens.txt.

Run: python bench/tokens_bench.py [--quick] [--no-save]
Timings are interleaved (estimate, exact, estimate, exact, ...) and each cell is the median of its samples; each
exact count is of a text not counted before (the counter remembers long texts, so decide() and execution count a
request's text once: "again" is that second count). Without the shared data (../shared/data or
$MODELROUTE_BENCH_DATA) the timings run on generated text and the error table is left out, saying so. Needs the
`tokens` extra (pip install 'modelroute[tokens]').
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from needs import data_dir, missing_data, require_modules  # noqa: E402

from engine import Engine  # noqa: E402
from engine.runtime.tokens import estimate_tokens  # noqa: E402

RESULTS = HERE / "results" / "tokens.txt"
SPEC = "tiktoken:cl100k_base"
SIZES = {"200 B": 200, "4 KB": 4_000, "100 KB": 100_000}
PROMPTS = "awesome_chatgpt_prompts.csv"
CODE = "HumanEval.jsonl.gz"
INSTRUCTIONS = "self_instruct_seed_tasks.jsonl"
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
KANA = re.compile(r"[\u3040-\u30ff]")


# ---- inputs ------------------------------------------------------------------------------------------------


def _awesome() -> list[dict[str, str]]:
    csv.field_size_limit(10**7)
    with open(data_dir() / PROMPTS, newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f) if row.get("prompt")]


def _cjk_share(text: str) -> float:
    return len(CJK.findall(text)) / max(1, len(text))


def _is_json(text: str) -> bool:
    try:
        return isinstance(json.loads(text), (dict, list))
    except ValueError:
        return False


def languages() -> dict[str, list[str]]:
    """Real prompts by kind: English prose, Python code, JSON, Chinese, Japanese (the kinds the data has)."""
    rows = _awesome()
    prompts = [r["prompt"] for r in rows]
    out = {
        "English": [
            p for r, p in zip(rows, prompts, strict=True) if r.get("type") == "TEXT" and p.isascii() and not _is_json(p)
        ],
        "code (Python)": [],
        "JSON": [p for p in prompts if _is_json(p.strip())],
        "Chinese": [p for p in prompts if _cjk_share(p) > 0.3 and not KANA.search(p)],
        "Japanese": [p for p in prompts if _cjk_share(p) > 0.3 and KANA.search(p)],
    }
    with gzip.open(data_dir() / CODE, "rt", encoding="utf-8") as f:
        out["code (Python)"] = [json.loads(line)["prompt"] for line in f]
    return out


def sized_texts(size: int, count: int, source: list[str]) -> list[str]:
    """`count` texts of exactly `size` characters built from consecutive prompts of `source`."""
    out = []
    for k in range(count):
        text, j = "", k * 7
        while len(text) < size:
            text += source[j % len(source)] + "\n\n"
            j += 1
        out.append(text[:size])
    return out


def generated() -> list[str]:
    return [
        f"Request {i}: implement a parser for ISO dates, summarise the quarterly report in three bullet points, "
        f'and return {{"id": {i}, "status": "ok"}} as JSON. 東京の天気を教えてください。'
        for i in range(64)
    ]


# ---- timings -----------------------------------------------------------------------------------------------


def _median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1000


def timings(lines: list[str], source: list[str], samples: int) -> None:
    exact = Engine.tokenizer(SPEC)
    plain = Engine.load()
    counted = Engine.load(token_estimator=SPEC)
    lines.append("")
    lines.append(f"cost per call, median of {samples} interleaved samples (us); exact = {SPEC}")
    lines.append(
        f"{'size':>7} {'estimate':>9} {'exact':>9} {'ratio':>7} {'again':>7}"
        f" | {'decide est':>10} {'decide exact':>12} {'ratio':>6}"
    )
    fresh = 0
    for label, size in SIZES.items():
        texts = sized_texts(size, 8, source)
        est: list[int] = []
        ex: list[int] = []
        again: list[int] = []
        d_est: list[int] = []
        d_ex: list[int] = []
        for k in range(samples):
            fresh += 1
            text = f"{fresh}:" + texts[k % len(texts)][len(str(fresh)) + 1 :]  # never counted before
            est.append(_timed(estimate_tokens, text))
            ex.append(_timed(exact, text))
            again.append(_timed(exact, text))
            fresh += 1
            text = f"{fresh}:" + texts[k % len(texts)][len(str(fresh)) + 1 :]
            d_est.append(_timed(plain.decide, text))
            d_ex.append(_timed(counted.decide, text))
        e, x, d0, d1 = _median_us(est), _median_us(ex), _median_us(d_est), _median_us(d_ex)
        lines.append(
            f"{label:>7} {e:9.2f} {x:9.1f} {x / e:6.0f}x {_median_us(again):7.2f}"
            f" | {d0:10.1f} {d1:12.1f} {d1 / d0:5.1f}x"
        )
    for engine in (plain, counted):
        engine.close()


def _timed(fn: Callable[[str], object], text: str) -> int:
    start = time.perf_counter_ns()
    fn(text)
    return time.perf_counter_ns() - start


# ---- error of the estimate ---------------------------------------------------------------------------------


def errors(lines: list[str]) -> None:
    exact = Engine.tokenizer(SPEC)
    lines.append("")
    lines.append(f"the estimate (ceil(chars / 4)) against {SPEC} on real prompts of {data_dir()}")
    lines.append(
        f"{'kind':<14} {'prompts':>7} {'chars':>9} {'estimate':>9} {'tiktoken':>9} {'ratio':>6} {'p10-p90':>11}"
    )
    for kind, prompts in languages().items():
        if not prompts:
            lines.append(f"{kind:<14} {'-':>7}   (none in the shared data)")
            continue
        est = [estimate_tokens(p) for p in prompts]
        ex = [exact(p) for p in prompts]
        ratios = sorted(a / b for a, b in zip(est, ex, strict=True) if b)
        lo, hi = ratios[len(ratios) // 10], ratios[(len(ratios) * 9) // 10 - (len(ratios) >= 10)]
        lines.append(
            f"{kind:<14} {len(prompts):7d} {sum(map(len, prompts)):9d} {sum(est):9d} {sum(ex):9d}"
            f" {sum(est) / sum(ex):5.2f}x {lo:5.2f}-{hi:4.2f}x"
        )
    lines.append("ratio: estimate / tiktoken over all the kind's prompts (below 1: the estimate undercounts)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    ap.add_argument("--no-save", action="store_true", help="print only; leave bench/results/tokens.txt alone")
    args = ap.parse_args()
    require_modules("tokens_bench.py", "tiktoken", install="pip install 'modelroute[tokens]'")
    have_data = not missing_data(PROMPTS, CODE, INSTRUCTIONS)
    samples = 5 if args.quick else 41
    lines = [f"token counting benchmark, Python {sys.version.split()[0]}"]
    if have_data:
        rows = _awesome()
        timings(lines, [r["prompt"] for r in rows if r.get("type") == "TEXT"], samples)
        errors(lines)
    else:
        timings(lines, generated(), samples)
        lines.append("")
        lines.append(f"(generated text: the error table needs {PROMPTS} and {CODE} in {data_dir()})")
    text = "\n".join(lines)
    print(text)
    if args.no_save or not have_data or args.quick:
        return
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
