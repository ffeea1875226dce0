"""The shipped policy stays clean: it compiles without warnings, is in fmt's layout, and its own tests pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "args",
    [
        ["check", "--strict", "policies"],
        ["fmt", "--check", "policies"],
        ["test", "policies"],
    ],
)
def test_bundled_policy_is_clean(args: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_readme_example_policy_compiles() -> None:
    from engine import compile_source

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    marker = "# example.route (the bundled default policy is policies/main.route)\n"
    block = readme.split(marker, 1)[1].split("\n```\n", 1)[0]
    policy = compile_source(block, "example.route")
    assert len(policy.rules) == 7
