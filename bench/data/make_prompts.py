"""Labelled-prompt builder: the shared data files and the hand labels (labels.txt) in, prompts.jsonl out.

Run: python bench/data/make_prompts.py [--check]
Rebuilds bench/data/prompts.jsonl from ../shared/data (or $MODELROUTE_BENCH_DATA) and bench/data/labels.txt:
which prompts are in the set (all Self-Instruct seed tasks, 300 awesome-chatgpt-prompts drawn at random with seed
19, and the extra pools described in LABELLING.md), their text, their hand labels and the tuning/held-out split.
It also rebuilds bench/data/rest.jsonl, the second set: every other awesome-chatgpt-prompts row, labelled later
(labels_rest.txt) and split the same way; it keeps the row number and a digest of the text instead of the text
(the bench reads the text from the shared data and checks the digest).
No label is computed here: every label comes from the label files, written by reading each prompt. `--check`
rebuilds in memory and exits 1 if either file differs (the files are the record; the script shows how they were
made).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from needs import data_dir, require_data  # noqa: E402

SEED = 19
RANDOM_AWESOME = 300
TASKS = ("code", "math", "summarize", "translate", "creative", "extract", "legal", "advice")
#: rarest first: a prompt's stratum for the split is its rarest task (or "general"), then its complexity
RARITY = ("legal", "translate", "math", "extract", "summarize", "advice", "code", "creative")
MAX_BYTES = 2_000_000
BIG_PROMPT = 20_000

#: extra pool 1 and 2: the awesome prompt's `act` title matches; pool 3: its first 1,000 characters match
TITLE_POOL_1 = {
    "translate": r"translat|locali[sz]|language|english|spanish|chinese|french|german|japanese",
    "legal": r"law|legal|lawyer|attorney|contract|complian|patent|judic",
    "summarize": r"summar|recap|notes\b|digest|tl;?dr",
    "extract": r"extract|pars(e|er|ing)\b|scrap|json|ocr|data entry|invoice",
    "math": r"math|statist|calcul|equation|algebra|geometr|theorem|probab",
}
TITLE_POOL_2 = {
    "legal": r"polic(y|ies)|privacy|terms|gdpr|regulat|rights|\btax|immigra|visa|intellectual|crimin|police|lease"
    r"|tenant|dispute|will\b",
    "translate": r"dialect|linguist|bilingual|multilingual|korean|arabic|turkish|russian|portuguese|italian|hindi"
    r"|polyglot|vocabular|idiom",
    "math": r"number|arithmet|physic|quant|formula|numer|solver|olympiad|logic|account|finance|budget",
    "extract": r"scan|analy[sz]er|table|csv|excel|spreadsheet|\bdata\b|resume pars|field|entity",
    "summarize": r"summary|brief|meeting|minutes|overview|condens|synop|report",
}
TEXT_POOL_3 = {
    "legal": r"\blaws?\b|\blegal\b|attorney|lawyer|jurisdiction|statute",
    "translate": r"translat|into (english|french|spanish|german|chinese|japanese|korean|arabic|turkish)",
    "math": r"\bmath|equation|calculus|algebra|probabilit|geometry|arithmetic",
    "extract": r"\bextract|\bparse\b|named entit|\bfields?\b.*\bjson",
    "summarize": r"summari[sz]|tl;dr|key takeaways|condense",
}
POOL_3_PER_LABEL = 12


def awesome_rows() -> list[dict[str, str]]:
    csv.field_size_limit(10**8)
    with open(data_dir() / "awesome_chatgpt_prompts.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def self_instruct() -> list[tuple[str, str]]:
    """(id, text): the instruction, and the first instance's input after a blank line when it has one."""
    out = []
    with open(data_dir() / "self_instruct_seed_tasks.jsonl", encoding="utf-8") as f:
        for line in f:
            task = json.loads(line)
            given = task["instances"][0]["input"] if task["instances"] else ""
            text = task["instruction"] + (f"\n\n{given}" if given.strip() else "")
            out.append((f"si-{task['id'].rsplit('_', 1)[1]}", text))
    return out


def chosen_awesome(rows: list[dict[str, str]]) -> list[tuple[int, str]]:
    """(row index, how it was chosen) in selection order: the random draw, then the three extra pools."""
    drawn = sorted(random.Random(SEED).sample(range(len(rows)), RANDOM_AWESOME))
    out = [(i, "random") for i in drawn]
    seen = set(drawn)
    for name, pool in (("title-1", TITLE_POOL_1), ("title-2", TITLE_POOL_2)):
        picked = sorted(
            i
            for i in range(len(rows))
            if i not in seen and any(re.search(p, rows[i]["act"], re.I) for p in pool.values())
        )
        out += [(i, name) for i in picked]
        seen.update(picked)
    rng = random.Random(SEED)
    pool3: set[int] = set()
    for pattern in TEXT_POOL_3.values():
        found = [i for i in range(len(rows)) if i not in seen and re.search(pattern, rows[i]["prompt"][:1000], re.I)]
        rng.shuffle(found)
        pool3.update(found[:POOL_3_PER_LABEL])
    out += [(i, "text-3") for i in sorted(pool3)]
    return out


def read_labels(path: Path) -> dict[str, tuple[list[str], str]]:
    """ID|TASKS|COMPLEXITY lines (TASKS: comma-separated names of TASKS, or nothing); `#` lines and blank lines are
    skipped. Exits naming the file and line for any other line, and for an id labelled twice."""
    labels: dict[str, tuple[list[str], str]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("|")
        try:
            if len(fields) != 3 or not fields[0].strip():
                raise ValueError("not ID|TASKS|COMPLEXITY")
            names, _ = read_label_fields(fields[1], fields[2])
        except ValueError as exc:
            raise SystemExit(f"{path}:{n}: bad label line {line!r}: {exc}") from None
        if fields[0] in labels:
            raise SystemExit(f"{path}:{n}: {fields[0]} is labelled twice")
        labels[fields[0]] = (names, fields[2])
    return labels


def read_everyday(path: Path) -> list[tuple[str, frozenset[str], bool, str]]:
    """A file of everyday requests written for the project (everyday.txt, everyday_check.txt):
    ID|TASKS|COMPLEXITY|TEXT lines, `\\n` in TEXT for a line break; `#` lines and blank lines skipped. Returns
    (id, tasks, complex, text) per line; exits naming the file and line for a malformed line or a repeated id."""
    out: list[tuple[str, frozenset[str], bool, str]] = []
    seen: set[str] = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("|", 3)
        if len(fields) != 4:
            raise SystemExit(f"{path}:{n}: bad line {line[:80]!r} (ID|TASKS|simple or complex|TEXT)")
        ident, tasks, complexity, text = fields
        try:
            names, _ = read_label_fields(tasks, complexity)
        except ValueError as exc:
            raise SystemExit(f"{path}:{n}: {exc}") from None
        if not ident.strip() or not text.strip() or ident in seen:
            raise SystemExit(f"{path}:{n}: {'a repeated id' if ident in seen else 'an empty id or text'}")
        seen.add(ident)
        out.append((ident, frozenset(names), complexity == "complex", text.replace("\\n", "\n")))
    return out


def read_label_fields(tasks: str, complexity: str) -> tuple[list[str], str]:
    """The TASKS and COMPLEXITY fields of a label line, checked; ValueError saying what is wrong."""
    names = [t for t in tasks.split(",") if t]
    if any(t not in TASKS for t in names) or len(set(names)) != len(names) or complexity not in ("simple", "complex"):
        raise ValueError(f"bad labels {tasks!r}|{complexity!r} (tasks: {', '.join(TASKS)}; simple or complex)")
    return names, complexity


def stratum(tasks: list[str], complexity: str) -> str:
    rarest = next((t for t in RARITY if t in tasks), "general")
    return f"{rarest}/{complexity}"


def build() -> list[dict[str, object]]:
    labels = read_labels(HERE / "labels.txt")
    rows = awesome_rows()
    items: list[dict[str, object]] = []
    texts: set[str] = set()
    candidates = [(i, t, "self-instruct", "all") for i, t in self_instruct()]
    candidates += [(f"acp-{k}", rows[k]["prompt"], "awesome-chatgpt-prompts", how) for k, how in chosen_awesome(rows)]
    for ident, text, source, how in candidates:
        if text in texts:  # an exact duplicate of a prompt already in the set (the collection has a few)
            continue
        if ident not in labels:
            raise SystemExit(f"no label for {ident} in labels.txt")
        texts.add(text)
        tasks, complexity = labels[ident]
        items.append(
            {"id": ident, "source": source, "chosen": how, "text": text, "tasks": tasks, "complexity": complexity}
        )
    if sum(len(json.dumps(x, ensure_ascii=False)) for x in items) > MAX_BYTES:
        items = [x for x in items if x["source"] == "self-instruct" or len(str(x["text"])) <= BIG_PROMPT]
    split(items)
    return items


def split(items: list[dict[str, object]]) -> None:
    """The split, drawn once per set: within each stratum, a seeded shuffle, then alternately tuning and held-out."""
    rng = random.Random(SEED)
    groups: dict[str, list[dict[str, object]]] = {}
    for item in items:
        groups.setdefault(stratum(item["tasks"], item["complexity"]), []).append(item)  # type: ignore[arg-type]
    flip = 0
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        for member in members:
            member["split"] = ("tuning", "heldout")[flip]
            flip ^= 1


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def build_rest(first: list[dict[str, object]]) -> list[dict[str, object]]:
    """The second set: every awesome row whose text is not in the first set (exact duplicates kept once)."""
    labels = read_labels(HERE / "labels_rest.txt")
    rows = awesome_rows()
    texts = {str(x["text"]) for x in first}
    items: list[dict[str, object]] = []
    for k, row in enumerate(rows):
        text = row["prompt"]
        if text in texts:
            continue
        texts.add(text)
        ident = f"acp-{k}"
        if ident not in labels:
            raise SystemExit(f"no label for {ident} in labels_rest.txt")
        tasks, complexity = labels[ident]
        items.append(
            {"id": ident, "row": k, "sha256": digest(text), "chosen": "rest", "tasks": tasks, "complexity": complexity}
        )
    split(items)
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if prompts.jsonl is not what this builds")
    args = parser.parse_args()
    require_data("data/make_prompts.py", "awesome_chatgpt_prompts.csv", "self_instruct_seed_tasks.jsonl")
    first = build()
    outputs = {HERE / "prompts.jsonl": first, HERE / "rest.jsonl": build_rest(first)}
    for target, items in outputs.items():
        lines = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items)
        if args.check:
            if not target.exists() or target.read_text(encoding="utf-8") != lines:
                sys.exit(f"{target} is not what bench/data/make_prompts.py builds from {data_dir()}")  # exit 1
            continue
        target.write_text(lines, encoding="utf-8")
        print(f"wrote {target} ({lines.count(chr(10))} prompts, {len(lines.encode()):,} bytes)")


if __name__ == "__main__":
    main()
