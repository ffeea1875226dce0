"""Packaging: a non-editable `pip install` into a fresh venv finds the grammar, the bundled policy and the
bundled catalog from any directory; and a checkout finds grammar/route.lark at the repo top.

The venv uses --system-site-packages (the runtime dependencies are already on the machine) and the package is
installed with --no-deps --no-build-isolation from a copy of the source tree (so no build/ or *.egg-info lands
in the checkout). When the machine's setuptools cannot build a wheel (pyproject asks for setuptools>=68 and
wheel), those two are first installed into the venv with pip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "engine", "providers", "grammar", "policies")

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["NO_COLOR"] = "1"
    return env


def _run(args: list, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(venv bin dir, venv site-packages) with modelroute installed non-editable from a copy of the repo."""
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.is_file():
            shutil.copy2(path, src / name)
    if not (src / "README.md").exists():  # pyproject names it as the long description
        (src / "README.md").write_text("modelroute\n")
    venv = root / "venv"
    proc = _run([sys.executable, "-m", "venv", "--system-site-packages", venv], cwd=root)
    assert proc.returncode == 0, proc.stderr
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    probe = _run([python, "-c", "import setuptools, wheel; print(setuptools.__version__)"], cwd=root)
    major = int(probe.stdout.split(".")[0]) if probe.returncode == 0 else 0
    if major < 68:
        proc = _run([python, "-m", "pip", "install", "--quiet", "setuptools>=68", "wheel"], cwd=root)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = _run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", src], cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
    return bindir, Path(site.stdout.strip())


def test_installed_package_is_used_not_the_checkout(installed, tmp_path: Path) -> None:
    bindir, site = installed
    code = (
        "import engine, engine.parse, engine.load, providers.catalog as c; "
        "print(engine.__file__); print(engine.parse.grammar_path()); print(engine.load.bundled_policy_dir()); "
        "print(c.default_catalog_path())"
    )
    proc = _run([bindir / "python", "-c", code], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    module, grammar, policies, catalog = (Path(line) for line in proc.stdout.split())
    for path in (module, grammar, policies, catalog):
        assert site in path.parents, f"{path} is not inside the venv ({site})"
    assert grammar.read_text(encoding="utf-8") == (REPO / "grammar" / "route.lark").read_text(encoding="utf-8")
    assert (policies / "main.route").is_file() and (policies / "tasks.route").is_file()


def test_installed_explain_uses_bundled_policy_from_another_directory(installed, tmp_path: Path) -> None:
    bindir, site = installed
    assert not (tmp_path / "policies").exists()
    proc = _run([bindir / "modelroute", "explain", "hello"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    policy = re.search(r"^policy\s+(\S+) \(version [0-9a-f]{12}\)$", proc.stdout, re.M)
    assert policy, proc.stdout
    assert Path(policy.group(1)) == site / "engine" / "_policies" / "main.route"
    decision = re.search(r"^decision\s+(\S+) \((\w+)\) by rule (\S+):(\d+)$", proc.stdout, re.M)
    assert decision, proc.stdout
    assert decision.group(3).endswith("main.route")

    as_json = _run(
        [
            bindir / "modelroute",
            "explain",
            "Implement a function that merges two sorted lists",
            "--attr",
            "tier=pro",
            "--json",
        ],
        cwd=tmp_path,
    )
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["model"] and data["tasks"] == ["code"]
    assert Path(data["policy"]).parent == site / "engine" / "_policies"


def test_installed_check_bundled_policy(installed, tmp_path: Path) -> None:
    bindir, site = installed
    proc = _run([bindir / "modelroute", "check"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"ok: {site / 'engine' / '_policies' / 'main.route'} (")
    bad = tmp_path / "bad.route"
    bad.write_text("otherwise use gpt-4o-mni\n")
    proc = _run([bindir / "modelroute", "check", "bad.route"], cwd=tmp_path)
    assert proc.returncode == 1
    assert "error[E300]" in proc.stderr and "did you mean gpt-4o-mini?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_grammar_is_found_from_the_checkout() -> None:
    from engine.load import bundled_policy_dir
    from engine.parse import grammar_path

    assert grammar_path().resolve() == (REPO / "grammar" / "route.lark").resolve()
    assert bundled_policy_dir().resolve() == (REPO / "policies").resolve()


def test_grammar_is_found_from_the_checkout_in_a_fresh_process(tmp_path: Path) -> None:
    env = _env()
    env["PYTHONPATH"] = str(REPO)
    code = (
        "from engine.parse import grammar_path; from engine import Engine; print(grammar_path()); "
        "print(Engine.load().decide('hello').model)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    grammar, model = proc.stdout.split()
    assert Path(grammar).resolve() == (REPO / "grammar" / "route.lark").resolve()
    assert model
