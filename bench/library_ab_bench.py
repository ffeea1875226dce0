"""Task-library A/B benchmark: the bundled policy with its task library and with an older one in, decide() time of
each, interleaved, and their ratio out.

Run: python bench/library_ab_bench.py --old DIR [--quick] [--no-save]
DIR is an older copy of policies/ (for example `mkdir DIR && git archive COMMIT policies | tar -x -C DIR`, then
DIR/policies). Both copies are timed as shipped (patterns and `like` examples) and patterns only (`like` items cut,
as in bench/decide_bench.py), on the real prompts and sizes of bench/decide_bench.py, interleaved sample by sample
(bench/decide_bench.py's `timed`), so machine noise hits both alike. A ratio near 1.00 says a library change did not
change what decide() costs, and the figures recorded with the older library still describe the new one. Also
prints how many timed requests each pair of copies routes to a different model. Writes
bench/results/library_ab.txt (not with --no-save).
Needs the shared data folder (bench/needs.py) and the semantic extra.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import decide_bench as db  # noqa: E402
from needs import require_data, require_modules, save  # noqa: E402
from quality_bench import without_likes  # noqa: E402

from engine import Engine  # noqa: E402
from engine.language.load import bundled_policy_dir  # noqa: E402


def patterns_only(folder: Path) -> Engine:
    """The policy in `folder` with every `like` item of its tasks.route cut (decide_bench's patterns-only copy)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp)
        for f in folder.glob("*.route"):
            text = f.read_text(encoding="utf-8")
            (copy / f.name).write_text(without_likes(text, str(f)) if f.name == "tasks.route" else text, "utf-8")
        return Engine.load(copy)


def report(old: Path, samples: int, argv: list[str]) -> list[str]:
    new = bundled_policy_dir()
    pairs = {
        "as shipped": (Engine.load(new), Engine.load(old)),
        "patterns only": (patterns_only(new), patterns_only(old)),
    }
    prompts = db.real_prompts()
    out = [
        f"task-library A/B: decide() with policies/ (new) and {old} (old), {samples} interleaved samples per cell",
        f"command: python bench/library_ab_bench.py {' '.join(argv)}".rstrip(),
    ]
    for name, (a, b) in pairs.items():
        out += ["", f"== {name}", f"{'prompt':>8} {'new us':>9} {'old us':>9} {'new/old':>8} {'other model':>12}"]
        for label, size in db.SIZES.items():
            cases: list[tuple[str, dict[str, Any]]] = [
                (p, db.ATTRS[i % len(db.ATTRS)]) for i, p in enumerate(db.sized(prompts, size, 24))
            ]
            ours, theirs = db.timed(
                [lambda p, at, e=a: e.decide(p, **at), lambda p, at, e=b: e.decide(p, **at)], cases, samples
            )
            moved = sum(a.decide(p, **at).model != b.decide(p, **at).model for p, at in cases)
            out.append(f"{label:>8} {ours:>9.2f} {theirs:>9.2f} {ours / theirs:>7.2f}x {f'{moved}/{len(cases)}':>12}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="an older copy of policies/ (a folder)")
    ap.add_argument("--quick", action="store_true", help="9 samples per cell instead of 31")
    ap.add_argument("--no-save", action="store_true", help="print only; do not write bench/results/library_ab.txt")
    args = ap.parse_args()
    if not (args.old / "main.route").is_file():
        ap.error(f"--old {args.old}: no main.route there (give the policies/ folder of the older copy)")
    require_data("library_ab_bench.py", *db.PROMPT_FILES)
    require_modules("library_ab_bench.py", "wordllama", "numpy", install="pip install 'modelroute[semantic]'")
    started = time.perf_counter()
    lines = report(args.old.resolve(), 9 if args.quick else 31, sys.argv[1:])
    lines += ["", f"total bench time {time.perf_counter() - started:.0f} s"]
    text = "\n".join(lines)
    print(text)
    if not args.no_save:
        save("library_ab.txt", text)


if __name__ == "__main__":
    main()
