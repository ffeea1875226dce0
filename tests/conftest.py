"""Shared fixtures for the decision-core tests: paths, the fixture catalog, policy writers, a CLI
runner and golden-file comparison; also the suite's hypothesis profile.

Golden files live in tests/golden/; regenerate them with `UPDATE_GOLDEN=1 python -m pytest tests/` and review
the diff before committing.

Hypothesis runs without its per-example deadline and without the too_slow health check: both fail a test when
the machine is busy rather than when the code is wrong (tests that can hang have their own watchdog; speed is
measured in bench/). Waiting for another thread or process: tests/waiting.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.fakeserver import fake_server  # noqa: F401  (the provider tests' fixture)

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
FIXTURES = TESTS / "fixtures" / "policies"
GOLDEN = TESTS / "golden"
FIXTURE_CATALOG = FIXTURES / "catalog.yaml"

UPDATE_GOLDEN = bool(os.environ.get("UPDATE_GOLDEN"))

settings.register_profile("modelroute", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("modelroute")

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _mask_explain(text: str) -> str:
    """Explain text with the run-dependent parts masked: the decide time and the policy version hash."""
    text = re.sub(r"(?m)^time( +).*$", r"time\1<masked>", text)
    return re.sub(r"\(version [0-9a-f]{12}\)", "(version <hash>)", text)


@pytest.fixture(scope="session")
def fixture_catalog():
    """The test catalog (tests/fixtures/policies/catalog.yaml): 8 invented models with round numbers."""
    from providers.catalog.loader import load_catalog

    return load_catalog(FIXTURE_CATALOG)


@pytest.fixture
def write_policy(tmp_path: Path) -> Callable[..., Path]:
    """Write `main.route` (plus extra files) into a fresh directory next to copies of the fixture catalog
    (as catalog.yaml and models.yaml, the name the issue's card example uses); return the directory."""

    def write(text: str, files: Mapping[str, str] | None = None, name: str = "main.route") -> Path:
        root = tmp_path / "policy"
        root.mkdir(exist_ok=True)
        for copy in ("catalog.yaml", "models.yaml"):
            shutil.copyfile(FIXTURE_CATALOG, root / copy)
        for rel, body in (files or {}).items():
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(body, encoding="utf-8")
        (root / name).write_text(text, encoding="utf-8")
        return root

    return write


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NO_COLOR", "FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE", "MODELROUTE_DEBUG")
    }
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "200"
    env.update(extra or {})
    return env


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run `python -m engine.cli ARGS...` in a subprocess (default cwd: an empty temp dir)."""

    def run(
        *args: str,
        cwd: Path | None = None,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "engine.cli", *args],
            cwd=cwd or tmp_path,
            input=input,
            env=_env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture
def golden() -> Callable[[Path, str], None]:
    """Compare text with a golden file; with UPDATE_GOLDEN=1, (re)write the file instead."""

    def check(path: Path, actual: str) -> None:
        actual = actual.rstrip("\n") + "\n"
        if UPDATE_GOLDEN:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(actual, encoding="utf-8")
            return
        assert path.is_file(), f"missing golden file {path}: run UPDATE_GOLDEN=1 python -m pytest {TESTS}"
        expected = path.read_text(encoding="utf-8")
        assert actual == expected, f"{path.name} differs from the golden file (UPDATE_GOLDEN=1 to regenerate)"

    return check


@pytest.fixture
def clean_env() -> Callable[..., dict[str, str]]:
    """The environment the CLI tests use, for tests that spawn other programs: `clean_env({"K": "v"})`."""
    return _env


@pytest.fixture
def strip_ansi() -> Callable[[str], str]:
    return _strip_ansi


@pytest.fixture
def mask_explain() -> Callable[[str], str]:
    return _mask_explain
