"""Parser, compiler, CLI and catalog-loader fuzzing (hardening).

Every input either compiles or raises engine.PolicyError with at least one diagnostic, each with a stable
code and, when it has a span, a span inside the file; never another exception, never a hang (a SIGALRM
watchdog per example; no hypothesis deadline, which fails a busy machine rather than a slow compiler: compile
speed is measured in bench/). The catalog loader either loads or raises
CatalogError. Bounded by default; `MODELROUTE_FUZZ=long` multiplies the budget.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_differential import CATALOG_PATH, policy_sources

from engine import PolicyError, compile_source
from engine.language.load import bundled_policy_dir
from providers.catalog.issues import CatalogError
from providers.catalog.loader import load_catalog
from providers.catalog.models import Catalog

REPO = Path(__file__).resolve().parent.parent
LONG = os.environ.get("MODELROUTE_FUZZ") == "long"
FILE = "fuzz.route"
CODE = re.compile(r"^E\d{3}$")
WATCHDOG_S = 10


def budget(n: int) -> int:
    return n * 25 if LONG else n


FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Hang(Exception):
    pass


@contextlib.contextmanager
def watchdog(seconds: int = WATCHDOG_S):
    """Fail (instead of hanging the suite) when the body runs longer than `seconds`."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def fire(signum, frame):
        raise Hang(f"no result after {seconds}s: the compiler hangs on this input")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(CATALOG_PATH)


def check_compiles_or_diagnoses(text: str, catalog: Catalog) -> str:
    """Compile; on PolicyError check the diagnostics. Returns "ok" or "error" (for the counts in the tests)."""
    with watchdog():
        try:
            compile_source(text, FILE, catalog=catalog)
        except PolicyError as err:
            rendered = err.render()  # rendering must not crash either
            assert err.diagnostics, "PolicyError without diagnostics"
            lines = text.count("\n") + 1
            for d in err.diagnostics:
                assert CODE.match(d.code), d
                assert d.message, d
                if d.span is not None and d.span.file == FILE:
                    assert 1 <= d.span.line <= lines, f"{d.code} at line {d.span.line}, file has {lines}: {d}"
                    assert d.span.col >= 1, d
            assert rendered
            return "error"
    return "ok"


# ---- seeds and mutations -------------------------------------------------------------------------------


def _seeds() -> list[str]:
    """Valid policy text to mutate: the bundled policy (tasks spliced in), a rich policy over the fixture catalog."""
    bundled = bundled_policy_dir()
    tasks = (bundled / "tasks.route").read_text(encoding="utf-8")
    main = (bundled / "main.route").read_text(encoding="utf-8").replace('include "tasks.route"', "")
    rich = """# every construct, over tests/fixtures/hardening/catalog.yaml
model fast = "zeta-fast"
task code      = /write (a |the )?(code|function|class|script)/, /implement/, "debug", /```\\w+/
task summarize = "summarize", "tl;dr", "key points"
when task ~ /code/ and tokens > 30k prefer capability(CODING) fallback fast
when task is code prefer capability(CODING) where latency <= 2s and price <= $15/1M fallback beta-mid
when tokens > 150k prefer cheapest where context >= 1M and cost < $0.05
when tier == "free" or tier == "trial" prefer cheapest then capability(REASONING)
when task is summarize and not tools prefer fastest where capability(REASONING) >= 6
when (tier in ["pro", "enterprise"] and task ~ "contract") or user.plan != 3 use gamma
when n >= 2.5k and not (images or tools) prefer fastest where provider in [acme] and supports json
otherwise use alpha-small fallback "beta-mid", gamma-pro
"""
    return [tasks + main, rich]


INTERESTING = [
    '"',
    "/",
    "(",
    ")",
    "[",
    "]",
    ",",
    "$",
    "k",
    "M",
    "%",
    "=",
    "==",
    "~",
    "#",
    "\\",
    "\n",
    " ",
    "\t",
    ".",
    ":",
    "-",
    "when",
    "otherwise",
    "and",
    "or",
    "not",
    "use",
    "prefer",
    "then",
    "where",
    "fallback",
    "task",
    "is",
    "in",
    "model",
    "include",
    "catalog",
    "capability(",
    "cheapest",
    "$3/1M",
    "30k",
    "800ms",
    "1e5",
    "\u00e9",
    "\x00",
    "\ufeff",
    "*",
    "+",
    "?",
    "{",
    "}",
    "(?=",
    "\\1",
    "/x",
    "/q",
    "1.5.5",
    "$0/0",
    "99999999999999999999",
]


def mutate(text: str, ops: list[tuple[int, int, int, int]]) -> str:
    """Apply (kind, position, length/other, choice) mutations: delete, insert, swap chars, swap tokens."""
    for kind, a, b, choice in ops:
        if not text:
            text = INTERESTING[choice % len(INTERESTING)]
            continue
        i = a % len(text)
        if kind == 0:  # delete a run of characters
            text = text[:i] + text[i + 1 + b % 8 :]
        elif kind == 1:  # insert an interesting token
            text = text[:i] + INTERESTING[choice % len(INTERESTING)] + text[i:]
        elif kind == 2:  # swap two characters
            j = b % len(text)
            chars = list(text)
            chars[i], chars[j] = chars[j], chars[i]
            text = "".join(chars)
        elif kind == 3:  # swap two whitespace-separated tokens
            toks = re.split(r"(\s+)", text)
            words = [k for k, t in enumerate(toks) if t and not t.isspace()]
            if len(words) >= 2:
                x, y = words[a % len(words)], words[b % len(words)]
                toks[x], toks[y] = toks[y], toks[x]
                text = "".join(toks)
        elif kind == 4:  # duplicate a line
            lines = text.split("\n")
            k = a % len(lines)
            lines.insert(k, lines[(k + b) % len(lines)])
            text = "\n".join(lines)
        else:  # truncate
            text = text[:i]
    return text


mutations = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6)),
    min_size=1,
    max_size=6,
)


# ---- policy text ---------------------------------------------------------------------------------------

GRAMMARISH = st.sampled_from(INTERESTING) | st.text(
    alphabet='abcdehknorstuwy_ ()[]"/\\$,.=<>!~#\n0123456789kMs%', min_size=1, max_size=6
)


@settings(FUZZ, max_examples=budget(200))
@given(text=st.text(max_size=400))
def test_random_text(catalog, text):
    check_compiles_or_diagnoses(text, catalog)


@settings(FUZZ, max_examples=budget(200))
@given(parts=st.lists(GRAMMARISH, max_size=40))
def test_random_token_soup(catalog, parts):
    check_compiles_or_diagnoses(" ".join(parts), catalog)


@settings(FUZZ, max_examples=budget(250))
@given(seed=st.sampled_from(_seeds()), ops=mutations)
def test_mutated_seed_policies(catalog, seed, ops):
    check_compiles_or_diagnoses(mutate(seed, ops), catalog)


@settings(FUZZ, max_examples=budget(150))
@given(text=policy_sources(), ops=mutations)
def test_mutated_generated_policies(catalog, text, ops):
    check_compiles_or_diagnoses(mutate(text, ops), catalog)


@settings(FUZZ, max_examples=budget(40))
@given(text=policy_sources())
def test_generated_policies_compile(catalog, text):
    assert check_compiles_or_diagnoses(text, catalog) == "ok"


def test_seeds_compile(catalog):
    assert check_compiles_or_diagnoses(_seeds()[1], catalog) == "ok"


# ---- the CLI, through a subprocess ----------------------------------------------------------------------


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("modelroute")
    cmd = [exe] if exe else [sys.executable, "-c", "from engine.cli import main; main()"]
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=env)


def test_cli_on_mutated_files(tmp_path):
    """A handful of mutated policies through `modelroute check` and `explain`: exit 0 or 1, no traceback."""
    import random

    rng = random.Random(6)
    shutil.copy(CATALOG_PATH, tmp_path / "catalog.yaml")
    seed = 'catalog "catalog.yaml"\n' + _seeds()[1]
    files = []
    for k in range(4):
        ops = [
            (rng.randrange(6), rng.randrange(10**6), rng.randrange(10**6), rng.randrange(10**6))
            for _ in range(rng.randrange(1, 5))
        ]
        text = seed if k == 0 else mutate(seed, ops)
        path = tmp_path / f"m{k}.route"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        files.append(path)
    (tmp_path / "bad.route").write_bytes(b"when \xff\xfe tier use x\n")  # not UTF-8
    files.append(tmp_path / "bad.route")
    codes = []
    for path in files:
        for args in (
            ["check", path.name, "--json"],
            ["explain", "-p", path.name, "please implement a debug function", "--attr", "tier=pro"],
        ):
            proc = _cli(*args, cwd=tmp_path)
            out = proc.stdout + proc.stderr
            assert "Traceback" not in out, f"{args}:\n{out}"
            assert proc.returncode in (0, 1), f"{args} exited {proc.returncode}:\n{out}"
            codes.append(proc.returncode)
    assert 0 in codes and 1 in codes  # the unmutated seed works, and at least one mutation is rejected


# ---- the catalog loader --------------------------------------------------------------------------------

CATALOG_TEXT = CATALOG_PATH.read_text(encoding="utf-8")
YAML_BITS = [
    ":",
    "-",
    " ",
    "\n",
    "  ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "'",
    '"',
    "&a",
    "*a",
    "<<: *a",
    "!!python/object",
    "~",
    "null",
    "1e999",
    "-5",
    "0",
    "200k",
    "1M",
    "x",
    "\t",
    "#",
    "?",
    "|",
    ">",
    "%YAML 1.1\n",
    "\x00",
]


def yaml_mutate(text: str, ops: list[tuple[int, int, int, int]]) -> str:
    for kind, a, b, choice in ops:
        if not text:
            return YAML_BITS[choice % len(YAML_BITS)]
        i = a % len(text)
        if kind in (0, 5):
            text = text[:i] + text[i + 1 + b % 12 :]
        elif kind in (1, 3):
            text = text[:i] + YAML_BITS[choice % len(YAML_BITS)] + text[i:]
        elif kind == 2:
            j = b % len(text)
            chars = list(text)
            chars[i], chars[j] = chars[j], chars[i]
            text = "".join(chars)
        else:
            lines = text.split("\n")
            del lines[a % len(lines)]
            text = "\n".join(lines)
    return text


@pytest.fixture(scope="module")
def yaml_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("catalog-fuzz")


@settings(FUZZ, max_examples=budget(250))
@given(ops=mutations)
def test_mutated_catalog(yaml_dir, ops):
    text = yaml_mutate(CATALOG_TEXT, ops)
    path = yaml_dir / "catalog.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    lines = text.count("\n") + 1
    with watchdog():
        try:
            cat = load_catalog(path)
        except CatalogError as err:
            assert err.issues
            assert str(err)
            for issue in err.issues:
                assert issue.message
                assert 0 <= issue.line <= lines + 1, issue
            return
    assert isinstance(cat, Catalog)
    # a catalog that loads must be usable by the compiler
    with watchdog():
        try:
            compile_source("otherwise prefer cheapest\n", FILE, catalog=cat)
        except PolicyError as err:
            assert err.diagnostics
