"""Checks that the examples of README.md and docs/*.md run as written: policies compile, catalogs load, the
bench scripts and the examples/ demo run (or say in one line what they need).

How fenced blocks are read (the convention for writing docs):

* The info string after the opening fence is a language, then words: flags (`fragment`, `overlay`) and
  `file=NAME`. Only the language shows on GitHub.
* ```` ```route ```` is a whole policy: it must compile (against the bundled catalog, or the catalogs its own
  `catalog` statements name) with `today=DOCS_TODAY`, and must not name a model deprecated by then (lint
  W108), so the check does not depend on the day it runs.
* ```` ```route functions=complexity,is_urgent rankers=quality ```` names the Python functions and rankers the
  policy calls (`complexity()`, `prefer custom(quality)`): it compiles with stand-ins of those names.
* ```` ```route fragment ```` is an excerpt (a rule, a test block) that leans on statements not shown: it
  must parse.
* ```` ```yaml ```` whose top level has `models:` or `providers:` is a catalog: it must load with
  `providers.catalog.load_catalog`, and the provider of every model it defines must be callable (a
  `providers:` entry with a `base_url` or an `api_key_env`). Other YAML blocks must be valid YAML.
  ```` ```yaml overlay ```` is a LiteLLM overlay: it is checked by the route block that imports it.
* `file=NAME` writes the block's text as NAME into the folder where the same document's route blocks are
  compiled, so their `catalog "NAME"`, `catalog litellm "NAME" overlay "NAME"` and `include "NAME"` statements
  find it. A ```` ```json file=NAME ```` block must be valid JSON.
* ```` ```python ```` must be valid Python (top-level `await` allowed); names it imports from `engine` or
  `providers` must exist.
* A block without a language must not be a policy (label policies ```` ```route ````).

Besides: docs/fmt.md's route blocks must be exactly `modelroute fmt`'s output, and docs/catalog.md's worked
example for a local server (`file=local.yaml` and the policy that loads it) is run against a fake
OpenAI-compatible server (examples/fake_openai.py).

Test ids are `DOC:LINE`, the line of the block's opening fence.
"""

from __future__ import annotations

import ast
import datetime
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine import Engine, PolicyError, compile_policy
from engine.language.fmt import format_source
from engine.language.parse import parse
from engine.tools.lint import lint
from examples.fake_openai import FakeOpenAI
from providers.catalog.loader import load_catalog

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: The date the examples are judged against: no example may name a model deprecated by then.
DOCS_TODAY = datetime.date(2026, 12, 1)

FLAGS = {"fragment", "overlay"}
OPTIONS = {"file", "functions", "rankers"}
_OPEN = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Block:
    """One fenced block of a document: where it starts, its info string parsed, and its text."""

    doc: str
    line: int
    lang: str
    flags: frozenset[str]
    options: dict[str, str] = field(hash=False)
    text: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks_of(path: Path, root: Path = REPO) -> list[Block]:
    """The fenced blocks of a markdown file, CommonMark-style: a fence of 3+ backticks or tildes opens a
    block, a line of at least as many of the same character (and nothing else) closes it."""
    doc = path.relative_to(root).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        close = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}} *$")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            line = lines[j]
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))) :])
            j += 1
        words = m["info"].split()
        lang = words[0] if words else ""
        options = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        flags = frozenset(w for w in words[1:] if "=" not in w)
        out.append(Block(doc, i + 1, lang, flags, options, "\n".join(body) + "\n"))
        i = j + 1
    return out


ALL = [b for doc in DOCS for b in blocks_of(doc)]


def _params(select: Any) -> list[Any]:
    return [pytest.param(b, id=b.id) for b in ALL if select(b)]


def _is_catalog(block: Block) -> bool:
    data = yaml.safe_load(block.text)
    return isinstance(data, dict) and bool({"models", "providers"} & set(data))


def _write_doc_files(block: Block, folder: Path) -> None:
    """Write every `file=NAME` block of the block's document into `folder`."""
    for other in ALL:
        if other.doc == block.doc and "file" in other.options:
            target = folder / other.options["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(other.text, encoding="utf-8")


# ---- the convention itself -------------------------------------------------------------------------------


def test_blocks_are_found() -> None:
    """The extractor sees the README's policy, catalog and set-up commands (a guard against a broken reader)."""
    readme = [b for b in ALL if b.doc == "README.md"]
    assert [b.lang for b in readme[:2]] == ["sh", "sh"]
    assert any(b.lang == "route" and "otherwise" in b.text for b in readme)
    assert any(b.lang == "yaml" and _is_catalog(b) for b in readme)
    assert all(b.lang in ("", "sh", "route", "yaml", "json", "python") for b in ALL), {b.id: b.lang for b in ALL}
    unknown = {b.id: (set(b.flags), set(b.options)) for b in ALL if b.flags - FLAGS or set(b.options) - OPTIONS}
    assert not unknown, f"info-string words this test does not know: {unknown}"


def test_readme_starts_with_the_two_setup_commands() -> None:
    readme = [b for b in ALL if b.doc == "README.md"]
    assert readme[0].text.strip().startswith("python -m pip install '.[semantic]' && modelroute explain ")
    assert readme[1].text.strip() == "python -m pip install -e '.[test]' && python -m pytest -q"


def test_fence_inside_a_line_does_not_close_a_block(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("text\n\n```route fragment file=a.route\ntask code = /```\\w+/\n```\n\n  ```sh\n  ls\n  ```\n")
    found = blocks_of(doc, tmp_path)
    assert [(b.line, b.lang, set(b.flags), b.options) for b in found] == [
        (3, "route", {"fragment"}, {"file": "a.route"}),
        (7, "sh", set(), {}),
    ]
    assert found[0].text == "task code = /```\\w+/\n" and found[1].text == "ls\n"


# ---- policies --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", _params(lambda b: b.lang == "route" and "fragment" not in b.flags))
def test_route_block_compiles(block: Block, tmp_path: Path) -> None:
    _write_doc_files(block, tmp_path)
    entry = tmp_path / block.options.get("file", "example.route")
    entry.write_text(block.text, encoding="utf-8")
    functions = {name: lambda request: 0 for name in block.options.get("functions", "").split(",") if name}
    rankers = {name: lambda request, model: 0.0 for name in block.options.get("rankers", "").split(",") if name}
    try:
        policy = compile_policy(entry, today=DOCS_TODAY, functions=functions, rankers=rankers)
    except PolicyError as exc:
        pytest.fail(f"{block.id}: the policy does not compile:\n{exc.render()}")
    deprecated = [d for d in lint(policy, today=DOCS_TODAY) if d.code == "W108"]
    assert not deprecated, f"{block.id} names deprecated models: " + "; ".join(d.message for d in deprecated)


@pytest.mark.parametrize("block", _params(lambda b: b.lang == "route" and "fragment" in b.flags))
def test_route_fragment_parses(block: Block) -> None:
    parse(block.text, block.id)


@pytest.mark.parametrize("block", _params(lambda b: b.lang == "route" and b.doc == "docs/fmt.md"))
def test_fmt_examples_are_formatted(block: Block) -> None:
    """docs/fmt.md shows the formatter's layout: its examples must be exactly what `modelroute fmt` writes."""
    assert format_source(block.text, block.id) == block.text


@pytest.mark.parametrize("block", _params(lambda b: b.lang == ""))
def test_unlabelled_block_is_not_a_policy(block: Block) -> None:
    try:
        module = parse(block.text, block.id)
    except PolicyError:
        return  # output, diagnostics, a usage line...: not a policy
    assert not module.body, f"{block.id} is a policy: label it ```route (or ```route fragment)"


# ---- Python ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", _params(lambda b: b.lang == "python"))
def test_python_block(block: Block) -> None:
    """Python examples are valid Python (top-level `await` allowed), and what they import from modelroute exists."""
    tree = compile(block.text, block.id, "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("engine", "providers"):
            module = importlib.import_module(node.module)
            missing = [a.name for a in node.names if not hasattr(module, a.name)]
            assert not missing, f"{block.id}: {node.module} has no {', '.join(missing)}"


# ---- catalogs and other data -----------------------------------------------------------------------------


@pytest.mark.parametrize("block", _params(lambda b: b.lang == "yaml" and "overlay" not in b.flags))
def test_yaml_block(block: Block, tmp_path: Path) -> None:
    data = yaml.safe_load(block.text)
    if not _is_catalog(block):
        assert data is not None, f"{block.id} is empty"
        return
    path = tmp_path / block.options.get("file", "catalog.yaml")
    path.write_text(block.text, encoding="utf-8")
    catalog = load_catalog(path)
    for model in catalog:
        spec = catalog.providers.get(model.provider)
        assert spec is not None and (spec.base_url or spec.api_key_env), (
            f"{block.id}: model {model.name} cannot be called: provider {model.provider} has no `providers:` entry "
            "with a base_url or an api_key_env"
        )


@pytest.mark.parametrize("block", _params(lambda b: b.lang == "yaml" and "overlay" in b.flags))
def test_overlay_is_used(block: Block) -> None:
    name = block.options.get("file")
    assert name, f"{block.id}: an overlay block needs file=NAME so that a route block can import it"
    users = [b for b in ALL if b.doc == block.doc and b.lang == "route" and f'overlay "{name}"' in b.text]
    assert users, f"{block.id}: no route block of {block.doc} imports {name}"


@pytest.mark.parametrize("block", _params(lambda b: b.lang == "json" and "file" in b.options))
def test_json_file_block(block: Block) -> None:
    json.loads(block.text)


def test_local_server_example_answers(tmp_path: Path) -> None:
    """docs/catalog.md's worked example (local.yaml and the policy that uses it) calls an OpenAI-compatible
    server at its base_url: here a fake one, on a free port instead of 8000."""
    (catalog,) = [b for b in ALL if b.doc == "docs/catalog.md" and b.options.get("file") == "local.yaml"]
    (policy,) = [b for b in ALL if b.doc == "docs/catalog.md" and b.lang == "route" and '"local.yaml"' in b.text]
    documented = "http://127.0.0.1:8000/v1"
    assert f'base_url: "{documented}"' in catalog.text
    with FakeOpenAI() as server:
        (tmp_path / "local.yaml").write_text(catalog.text.replace(documented, server.base_url), encoding="utf-8")
        (tmp_path / "main.route").write_text(policy.text, encoding="utf-8")
        server.script("Qwen/Qwen2.5-7B-Instruct", ["Hello from the local model!"])
        with Engine.load(tmp_path / "main.route") as engine:
            completion = engine.complete("Say hello in five words")
    assert (completion.text, completion.model, completion.provider) == (
        "Hello from the local model!",
        "qwen-local",
        "vllm",
    )
    (request,) = server.requests
    assert request.path == "/v1/chat/completions" and "authorization" not in request.headers
    assert request.body["model"] == "Qwen/Qwen2.5-7B-Instruct"
    assert request.body["messages"][-1] == {"role": "user", "content": "Say hello in five words"}


# ---- bench scripts and examples --------------------------------------------------------------------------

BENCH = REPO / "bench"
EXAMPLES = REPO / "examples"


def _run(args: list[str], *, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120, check=False
    )


def _one_clean_line(proc: subprocess.CompletedProcess[str]) -> str:
    out = (proc.stdout + proc.stderr).strip()
    assert "Traceback" not in out, out
    assert len(out.splitlines()) == 1, out
    return out


@pytest.mark.parametrize("script", ["speed_bench.py", "decide_bench.py"])
def test_bench_without_shared_data_says_what_it_needs(script: str, tmp_path: Path) -> None:
    proc = _run([str(BENCH / script)], env={"MODELROUTE_BENCH_DATA": str(tmp_path / "absent")})
    line = _one_clean_line(proc)
    assert proc.returncode == 2, line
    assert "MODELROUTE_BENCH_DATA" in line and str(tmp_path / "absent") in line, line


@pytest.mark.parametrize("script", ["failover_bench.py", "scaling_bench.py", "metrics_bench.py", "semantic_bench.py"])
def test_bench_explains_itself(script: str) -> None:
    proc = _run([str(BENCH / script), "--help"])
    assert proc.returncode == 0 and "--quick" in proc.stdout, proc.stdout + proc.stderr


def test_metrics_bench_quick_prints_ratios_and_the_verdict() -> None:
    proc = _run([str(BENCH / "metrics_bench.py"), "--quick"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "x  (+" in proc.stdout and "us budget" in proc.stdout, proc.stdout


def test_quality_bench_explains_itself() -> None:
    proc = _run([str(BENCH / "quality_bench.py"), "--help"])
    assert proc.returncode == 0 and "--tasks" in proc.stdout, proc.stdout + proc.stderr


def test_signal_bench_explains_itself_and_says_what_it_needs(tmp_path: Path) -> None:
    proc = _run([str(BENCH / "signal_bench.py"), "--help"])
    assert proc.returncode == 0 and "--embedder" in proc.stdout, proc.stdout + proc.stderr
    proc = _run([str(BENCH / "signal_bench.py"), "--embedder", str(tmp_path / "no-model")])
    assert proc.returncode == 2 and "not a folder" in proc.stderr, proc.stdout + proc.stderr
    proc = _run([str(BENCH / "signal_bench.py")], env={"MODELROUTE_BENCH_DATA": str(tmp_path / "absent")})
    line = _one_clean_line(proc)
    assert proc.returncode == 2 and "MODELROUTE_BENCH_DATA" in line, line


def test_library_ab_bench_explains_itself_and_checks_its_folder(tmp_path: Path) -> None:
    proc = _run([str(BENCH / "library_ab_bench.py"), "--help"])
    assert proc.returncode == 0 and "--old" in proc.stdout, proc.stdout + proc.stderr
    proc = _run([str(BENCH / "library_ab_bench.py"), "--old", str(tmp_path)])
    assert proc.returncode == 2 and "no main.route there" in proc.stderr, proc.stdout + proc.stderr


def test_decide_bench_names_the_synthetic_option(tmp_path: Path) -> None:
    proc = _run([str(BENCH / "decide_bench.py")], env={"MODELROUTE_BENCH_DATA": str(tmp_path)})
    assert "--synthetic" in _one_clean_line(proc)


def test_every_bench_script_is_covered() -> None:
    """A new bench script must get a line in this file's bench tests (so fresh clones keep working)."""
    covered = {"speed_bench.py", "decide_bench.py", "gateway_bench.py", "transport_bench.py"}
    covered |= {"redis_store_bench.py", "reload_bench.py", "handwritten.py", "needs.py"}
    covered |= {"failover_bench.py", "scaling_bench.py", "metrics_bench.py", "tokens_bench.py"}
    covered |= {"semantic_bench.py", "quality_bench.py", "signal_bench.py", "library_ab_bench.py"}
    assert {p.name for p in BENCH.glob("*.py")} == covered


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("redis_store_bench.py", ["--requests", "10"]),
        ("gateway_bench.py", ["--requests", "5", "--warmup", "1", "--no-save", "--redis"]),
    ],
)
def test_bench_without_redis_server_says_what_it_needs(script: str, args: list[str], tmp_path: Path) -> None:
    proc = _run([str(BENCH / script), *args], env={"PATH": str(tmp_path)})  # no redis-server on PATH
    line = _one_clean_line(proc)
    assert proc.returncode == 2 and "redis-server" in line, line


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (.ci/run installs it)")
def test_redis_store_bench_times_the_code_of_another_tree(tmp_path: Path) -> None:
    """--store DIR imports engine/ and providers/ from DIR (a copy of another version), not from this checkout."""
    for package in ("engine", "providers"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    proc = _run([str(BENCH / "redis_store_bench.py"), "--requests", "20", "--store", str(tmp_path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"RedisStore from {tmp_path.resolve()}" in proc.stdout, proc.stdout
    proc = _run([str(BENCH / "redis_store_bench.py"), "--store", str(tmp_path / "absent")])
    assert proc.returncode == 2 and "no providers/state/redis_store.py there" in proc.stderr, proc.stderr


@pytest.mark.parametrize("script", ["handwritten.py", "needs.py"])
def test_bench_helper_module_says_what_it_is(script: str) -> None:
    proc = _run([str(BENCH / script)])
    line = _one_clean_line(proc)
    assert proc.returncode == 0 and line.startswith(f"bench/{script} is "), line


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("transport_bench.py", ["--calls", "20", "--warmup", "2", "--no-save"]),
        ("gateway_bench.py", ["--requests", "20", "--warmup", "2", "--no-save"]),
        ("reload_bench.py", ["--writes", "2", "--seconds", "0.1", "--rounds", "1", "--no-save"]),
        ("tokens_bench.py", ["--quick", "--no-save"]),
    ],
)
def test_bench_smoke_run(script: str, args: list[str]) -> None:
    """A tiny run of each bench that needs no shared data: it finishes, prints its figures, writes nothing."""
    results = {p: p.stat().st_mtime_ns for p in (BENCH / "results").glob("*")}
    proc = _run([str(BENCH / script), *args], env={"MODELROUTE_BENCH_DATA": "/nonexistent"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout.strip(), proc.stdout + proc.stderr
    assert {p: p.stat().st_mtime_ns for p in (BENCH / "results").glob("*")} == results


_NO_TEST_MODULES = """
import os, runpy, sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pytest", "_pytest", "tests"):
            raise ImportError(f"the demo must not import {name}")
        return None
sys.meta_path.insert(0, Blocked())
sys.argv = [sys.argv[1]]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))  # as `python SCRIPT` does
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_fallback_demo_runs_outside_the_checkout(tmp_path: Path) -> None:
    """examples/fallback_demo.py, run from another folder with pytest and tests.* unimportable."""
    proc = _run(["-c", _NO_TEST_MODULES, str(EXAMPLES / "fallback_demo.py")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "answer: 'Paris is the capital of France.' from beta-chat" in out, out
    attempts = [line for line in out.splitlines() if re.match(r"\s+\d\. ", line)]
    assert len(attempts) == 3 and "503" in attempts[0] and "503" in attempts[1], out
    assert "alpha-mini" in attempts[0] and "beta-chat" in attempts[2], out


def test_readme_code_map_matches_the_tree() -> None:
    """Every package under engine/ and providers/ has a row in README's code map, and every row names a real path."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Code map", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    named = {p.strip().strip("`").rstrip("/") for row in rows for p in row.split(",")}
    for path in named:
        assert (REPO / path).exists(), f"README code map names {path}, which is not in the tree"
    packages = {
        p.parent.relative_to(REPO).as_posix()
        for top in ("engine", "providers")
        for p in (REPO / top).glob("*/__init__.py")
        if not p.parent.name.startswith("_")
    }
    assert packages - named == set(), "packages missing from README's code map"
