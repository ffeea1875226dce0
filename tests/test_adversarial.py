"""Adversarial prompts and limits (hardening).

* Regexes that backtrack catastrophically in Python's `re` decide, and correctly, on a 1 MB adversarial prompt
  (RE2 has no backtracking; a backtracking engine would never finish). How fast is a bench/ question.
* A 50 MB prompt is decided without exhausting memory (measured in a clean subprocess).
* Every limit gives a clear PolicyError diagnostic: policy file size (E700), rule count (E700), include depth
  (E203), include cycles (E201), regexes RE2 rejects (E500).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from engine import Engine, PolicyError, compile_policy, compile_source
from engine.language.load import MAX_FILE_BYTES, MAX_INCLUDE_DEPTH
from providers.catalog.loader import load_catalog

REPO = Path(__file__).resolve().parent.parent
CATALOG_PATH = REPO / "tests" / "fixtures" / "hardening" / "catalog.yaml"
MB = 1_000_000
WATCHDOG_S = 60.0  # a hang guard, not a speed bound: RE2 needs milliseconds, backtracking would need ages

T = TypeVar("T")


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(CATALOG_PATH)


def codes(err: PolicyError) -> list[str]:
    return [d.code for d in err.diagnostics]


def finishes(fn: Callable[[], T], what: str) -> T:
    """fn()'s result, computed on a daemon thread so that a hang fails the test instead of the whole suite."""
    out: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # re-raised on the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WATCHDOG_S)
    if errors:
        raise errors[0]
    assert out, f"{what}: no result after {WATCHDOG_S:g} s (catastrophic backtracking?)"
    return out[0]


# ---- catastrophic backtracking -----------------------------------------------------------------------------

EVIL = [
    # (policy regex, adversarial 1 MB prompt, does the regex match it?)
    ("/(a+)+$/", "a" * MB + "!", False),
    ("/(a+)+$/", "a" * MB, True),
    ("/(a|aa)*b/", "a" * MB, False),
    ("/(x+x+)+y/", "x" * MB, False),
    ("/(x+x+)+y/", "x" * MB + "y", True),
]


@pytest.mark.parametrize(("regex", "prompt", "matches"), EVIL, ids=lambda v: v if len(str(v)) < 20 else "1MB")
def test_catastrophic_regex_decides_in_linear_time(catalog, regex, prompt, matches):
    """A 1 MB adversarial prompt against regexes that are exponential for a backtracking engine.

    Python's `re` (measured on a 2-core machine while writing this test; not run here):
    `re.search(r"(a+)+$", "a" * n + "!")` takes 0.08 s at n=20, 0.67 s at n=22, 1.4 s at n=23, 2.4 s at n=24,
    and roughly doubles per extra character, so 25 characters already take ~5 s and 1 MB would never finish;
    `(x+x+)+y` on 22 x's takes 0.42 s. modelroute scans the whole 1 MB prompt with RE2 in a few milliseconds, so
    a decision at all is the evidence; the watchdog only keeps a regression from hanging the suite.
    """
    policy = f"when task ~ {regex} prefer fastest where context >= 1M\notherwise use epsilon-long\n"
    engine = Engine.from_source(policy, catalog=catalog)
    engine.decide("warm up")
    d = finishes(lambda: engine.decide(prompt), f"{regex} on 1 MB")
    assert d.model == "epsilon-long"
    assert d.rule.line == (1 if matches else 2)


# ---- a 50 MB prompt ----------------------------------------------------------------------------------------

_BIG_PROMPT_SCRIPT = textwrap.dedent("""
    import json, resource, sys, time, tracemalloc
    from engine import Engine
    from providers.catalog.loader import load_catalog
    from providers.catalog.models import Catalog

    cat = load_catalog(sys.argv[1])
    huge = cat.models["epsilon-long"].model_copy(update={"name": "huge", "aliases": (), "context": 100_000_000})
    cat = Catalog.from_models([*cat.models.values(), huge])
    policy = '''
    task evil = /(a+)+$/, /(x+x+)+y/, "key points"
    task code = /implement/, "debug", /```\\\\w+/
    when task is code prefer capability(CODING)
    when task is evil and tokens > 1M prefer cheapest
    otherwise prefer fastest
    '''
    engine = Engine.from_source(policy, catalog=cat)
    engine.decide("warm up")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    prompt = "a" * 50_000_000 + "! key points"
    tracemalloc.start()
    start = time.perf_counter()
    d = engine.decide(prompt)
    elapsed = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"model": d.model, "line": d.rule.line, "tokens": d.tokens, "seconds": elapsed,
                      "rss_over_baseline_mb": (peak - base) / 1024, "traced_peak_mb": traced_peak / 1e6}))
""")


def test_50mb_prompt(tmp_path):
    """A 50 MB prompt decides, in a clean subprocess so the memory figure is this decision's alone.

    Peak RSS over the baseline includes the 50 MB prompt itself; the bound (600 MB) leaves room for RE2's
    copy of the text and its DFA, and catches anything proportional to a multiple of the prompt size. The
    decision's time is printed (run with -s), not asserted: speed is a bench/ question."""
    script = tmp_path / "big.py"
    script.write_text(_BIG_PROMPT_SCRIPT, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script), str(CATALOG_PATH)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(result)
    assert result["model"] == "huge"
    assert result["line"] == 5  # `when task is evil and tokens > 1M`: 12.5M tokens, only `huge` holds them
    assert result["tokens"] == 12_500_003
    assert result["rss_over_baseline_mb"] < 600, result
    assert result["traced_peak_mb"] < 600, result


# ---- limits ------------------------------------------------------------------------------------------------


def test_policy_file_over_limit(tmp_path, catalog):
    path = tmp_path / "big.route"
    path.write_text("# " + "x" * MAX_FILE_BYTES + "\notherwise use beta-mid\n", encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        compile_policy(path, catalog=catalog)
    assert codes(info.value) == ["E700"]
    assert "1,000,000 bytes" in info.value.diagnostics[0].message
    assert "big.route" in info.value.render()


def test_included_file_over_limit(tmp_path, catalog):
    (tmp_path / "main.route").write_text('include "big.route"\notherwise use beta-mid\n', encoding="utf-8")
    (tmp_path / "big.route").write_text("#" * (MAX_FILE_BYTES + 1), encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        compile_policy(tmp_path, catalog=catalog)
    assert codes(info.value) == ["E700"]
    assert info.value.diagnostics[0].span.line == 1  # points at the include


def test_policy_text_over_limit(catalog):
    with pytest.raises(PolicyError) as info:
        compile_source("x" * (MAX_FILE_BYTES + 1), catalog=catalog)
    assert codes(info.value) == ["E700"]


def test_too_many_rules(catalog):
    text = "".join(f'when tier == "t{i}" use beta-mid\n' for i in range(10_001))
    assert len(text.encode()) < MAX_FILE_BYTES  # the rule limit, not the size limit
    with pytest.raises(PolicyError) as info:
        compile_source(text, "many.route", catalog=catalog)
    assert codes(info.value) == ["E700"]
    d = info.value.diagnostics[0]
    assert "10,001 rules" in d.message and "10,000" in d.message
    assert d.span.line == 10_001


def test_include_depth(tmp_path, catalog):
    depth = MAX_INCLUDE_DEPTH + 3
    for i in range(depth):
        body = f'include "f{i + 1}.route"\n' if i < depth - 1 else "otherwise use beta-mid\n"
        (tmp_path / f"f{i}.route").write_text(body, encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        compile_policy(tmp_path / "f0.route", catalog=catalog)
    assert codes(info.value) == ["E203"]
    d = info.value.diagnostics[0]
    assert "deeper than 16" in d.message
    assert d.span is not None and d.span.file.endswith(f"f{MAX_INCLUDE_DEPTH - 1}.route")


def test_include_depth_at_limit_is_fine(tmp_path, catalog):
    for i in range(MAX_INCLUDE_DEPTH):
        body = f'include "f{i + 1}.route"\n' if i < MAX_INCLUDE_DEPTH - 1 else "otherwise use beta-mid\n"
        (tmp_path / f"f{i}.route").write_text(body, encoding="utf-8")
    assert Engine(compile_policy(tmp_path / "f0.route", catalog=catalog)).decide("hi").model == "beta-mid"


@pytest.mark.parametrize("shape", ["self", "pair", "triangle"])
def test_include_cycle(tmp_path, catalog, shape):
    names = {"self": ["a"], "pair": ["a", "b"], "triangle": ["a", "b", "c"]}[shape]
    for i, name in enumerate(names):
        nxt = names[(i + 1) % len(names)]
        (tmp_path / f"{name}.route").write_text(f'include "{nxt}.route"\notherwise use beta-mid\n', encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        compile_policy(tmp_path / "a.route", catalog=catalog)
    assert "E201" in codes(info.value)
    d = next(d for d in info.value.diagnostics if d.code == "E201")
    assert "include cycle" in d.message and "a.route" in d.message
    assert d.span is not None


def test_regex_rejected_by_re2(catalog):
    """`(((a{100}){100}){100})` repeats 10^6 times; RE2 caps counted repetition at 1000 (also when nested)."""
    with pytest.raises(PolicyError) as info:
        compile_source("when task ~ /(((a{100}){100}){100})/ use beta-mid\n", "rx.route", catalog=catalog)
    assert codes(info.value) == ["E500"]
    d = info.value.diagnostics[0]
    assert "repetition" in d.message
    assert d.span.line == 1 and d.span.col == 13
    assert "^^^" in info.value.render()


def test_regex_nested_repetition_message(catalog):
    with pytest.raises(PolicyError) as info:
        compile_source("when task ~ /(((a{100}){100}){100})/ use beta-mid\n", "rx.route", catalog=catalog)
    d = info.value.diagnostics[0]
    assert "1000" in f"{d.message} {d.hint}"


def test_regex_program_too_large(catalog):
    with pytest.raises(PolicyError) as info:
        compile_source("when task ~ /\\pL{500}/ use beta-mid\n", "rx.route", catalog=catalog)
    assert codes(info.value) == ["E500"]


# ---- ranking pathologies -------------------------------------------------------------------------------------


def test_cheapest_with_many_ties_breaks_them_by_name(catalog):
    """1000 models of one price (how fast that is, is a bench/ question)."""
    from providers.catalog.models import Catalog

    base = catalog.models["beta-mid"]
    models = [base.model_copy(update={"name": f"m{i:04d}", "aliases": ()}) for i in range(1000)]
    engine = Engine.from_source("otherwise prefer cheapest\n", catalog=Catalog.from_models(models))
    assert engine.decide("warm up").model == "m0000"
    d = engine.decide("hello there")
    assert d.model == "m0000"  # ties break by name
