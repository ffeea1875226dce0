"""Embedder-signal benchmark: the tuning prompts and an embedder in, cross-validated F1 per task of `like` out.

Run: python bench/signal_bench.py [--embedder PATH] [--folds 5] [--out FILE]

What can examples add to the bundled task library, and what do they catch alone? A `like` item detects a task when
the prompt's nearest example reaches a threshold. Here the examples are real labelled prompts: in k-fold
cross-validation over the TUNING data only (both sets' tuning halves and bench/data/everyday.txt; the held-out
halves and the everyday check set are never read), a task's examples are the positives of the other folds, its
threshold is the one that gives the best F1 on those folds (each of their prompts scored by its nearest *other*
example), and the fold left out is scored with both. Three columns per task, pooled over the folds:

- patterns: the bundled patterns alone (`like` items cut, as in quality_bench.py). They were written from these
  very prompts, so this column is optimistic: it is the bar, not an estimate;
- examples alone: nearest example >= threshold, no pattern (what a task made only of examples would get);
- patterns + examples: either one (the threshold chosen for the pair).

--embedder PATH scores a sentence-transformers model folder (engine.runtime.embedder_adapters) instead of the
default embedder (WordLlama). Prompts are cut as decide() cuts them (engine.runtime.embedder.task_text). Writes
bench/results/signal.txt, or --out. Needs the shared data folder (bench/needs.py) and the semantic extra.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import quality_bench as qb  # noqa: E402
from needs import require_data, require_modules  # noqa: E402

OUT = HERE / "results" / "signal.txt"
SEED = 19  # the fold split: fixed, so two runs (and two embedders) split alike
THRESHOLDS = [round(0.30 + 0.01 * i, 2) for i in range(70)]  # 0.30 ... 0.99


@dataclass(frozen=True)
class Item:
    text: str
    tasks: frozenset[str]
    complex: bool

    def has(self, task: str) -> bool:
        return self.complex if task == "complex" else task in self.tasks


def tuning_items() -> list[Item]:
    """Both labelled sets' tuning halves, then the everyday tuning set; nothing held out."""
    items = [Item(p.text, p.tasks, p.complex) for p in qb.labelled_prompts() if p.split == "tuning"]
    everyday = qb.make_prompts.read_everyday(qb.HERE / "data" / qb.EVERYDAY[0][0])
    return items + [Item(text, tasks, cx) for _, tasks, cx, text in everyday]


def f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def counts(found: Sequence[bool], truth: Sequence[bool]) -> tuple[int, int, int]:
    tp = sum(f and t for f, t in zip(found, truth, strict=True))
    return tp, sum(found) - tp, sum(truth) - tp


def best_threshold(near: Sequence[float], pattern: Sequence[bool], truth: Sequence[bool]) -> float:
    """The lowest threshold with the best F1 of `pattern or near >= threshold` (no threshold at all: 1.01)."""
    best, chosen = f1(*counts(pattern, truth)), 1.01
    for t in THRESHOLDS:
        score = f1(*counts([p or n >= t for p, n in zip(pattern, near, strict=True)], truth))
        if score > best + 1e-12:
            best, chosen = score, t
    return chosen


def patterns_found(items: Sequence[Item]) -> list[frozenset[str]]:
    """The bundled library's patterns alone on every item (quality_bench's regex variant)."""
    tasks_file = qb.bundled_policy_dir() / "tasks.route"
    text = tasks_file.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        stripped = folder / "tasks_regex.route"
        stripped.write_text(qb.without_likes(text, str(tasks_file)), encoding="utf-8")
        return qb.detect(qb.bench_engine(folder, stripped, None), (i.text for i in items))


def report(embedder_path: Path | None, folds: int, argv: Sequence[str]) -> str:
    import numpy as np

    from engine.runtime.embedder import default_embedder, task_text
    from engine.runtime.embedder_adapters import sentence_transformers_embedder

    items = tuning_items()
    found = patterns_found(items)
    embedder = default_embedder() if embedder_path is None else sentence_transformers_embedder(embedder_path)
    vectors = np.asarray(embedder([task_text(i.text) for i in items]), dtype=np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -2.0)  # a prompt is never its own example
    order = list(range(len(items)))
    random.Random(SEED).shuffle(order)
    fold_of = {i: k % folds for k, i in enumerate(order)}
    name = "WordLlama (the default)" if embedder_path is None else f"the sentence-transformers model in {embedder_path}"
    out = [
        "Embedder signal: cross-validated F1 of nearest-example detection on the tuning data (never the held-out)",
        f"command: python bench/signal_bench.py {' '.join(argv)}".rstrip(),
        f"embedder: {name}",
        f"prompts: {len(items)} tuning prompts (both sets' tuning halves and everyday.txt),"
        f" {folds} folds (seed {SEED})",
        "patterns: the bundled patterns, written from these prompts (optimistic: the bar, not an estimate)",
        "",
        f"{'task':<10} {'positives':>9}  {'patterns P/R/F1':>17}  {'examples alone':>17}  {'patterns+examples':>17}"
        "  thresholds (alone; with patterns)",
    ]
    for task in (*qb.LABELS, "complex"):
        truth = [i.has(task) for i in items]
        pattern = [task in f for f in found]
        alone: list[bool] = [False] * len(items)
        both: list[bool] = [False] * len(items)
        chosen: tuple[list[float], list[float]] = ([], [])
        for k in range(folds):
            train = [i for i in range(len(items)) if fold_of[i] != k]
            test = [i for i in range(len(items)) if fold_of[i] == k]
            positives = [i for i in train if truth[i]]
            if not positives:
                continue
            near_train = sims[np.ix_(train, positives)].max(axis=1)
            near_test = sims[np.ix_(test, positives)].max(axis=1)
            t_train, p_train = [truth[i] for i in train], [pattern[i] for i in train]
            t_alone = best_threshold(near_train, [False] * len(train), t_train)
            t_both = best_threshold(near_train, p_train, t_train)
            chosen[0].append(t_alone)
            chosen[1].append(t_both)
            for i, near in zip(test, near_test, strict=True):
                alone[i] = near >= t_alone
                both[i] = pattern[i] or near >= t_both
        cells = [counts(x, truth) for x in (pattern, alone, both)]
        shown = "  ".join(f"{_prf(*c):>17}" for c in cells)
        marks = "; ".join(" ".join("-" if t > 1 else f"{t:.2f}" for t in ts) for ts in chosen)
        out.append(f"{task:<10} {sum(truth):>9}  {shown}  {marks}")
    out += ["", "(threshold '-': no threshold improved on the patterns in that fold, so examples add nothing there)"]
    return "\n".join(out) + "\n"


def _prf(tp: int, fp: int, fn: int) -> str:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return f"{p:5.2f} {r:5.2f} {f1(tp, fp, fn):5.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedder", type=Path, help="a sentence-transformers model folder (default: WordLlama)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the table (default: %(default)s)")
    args = parser.parse_args()
    require_data("signal_bench.py", "awesome_chatgpt_prompts.csv")
    if args.embedder is not None and not args.embedder.is_dir():
        parser.error(f"--embedder {args.embedder}: not a folder (give a sentence-transformers model folder)")
    if args.embedder is None:
        require_modules("signal_bench.py", "wordllama", "numpy", install="pip install 'modelroute[semantic]'")
    else:
        require_modules("signal_bench.py", "sentence_transformers", install="pip install sentence-transformers")
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    text = report(args.embedder, args.folds, sys.argv[1:])
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
