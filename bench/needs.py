"""Preflight checks for the bench scripts: shared data files, Python packages and programs each one needs. A
script checks first and, when something is missing, prints one line saying what and how to get it, then exits 2.
Also where a bench saves its report (`save`: bench/results/<name>).

The shared data folder is `../shared/data` beside the checkout, or the folder the environment variable
MODELROUTE_BENCH_DATA names.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

DATA_ENV = "MODELROUTE_BENCH_DATA"
EXIT_MISSING = 2


def data_dir() -> Path:
    """The shared data folder: $MODELROUTE_BENCH_DATA, else ../shared/data beside the checkout."""
    configured = os.environ.get(DATA_ENV)
    return Path(configured) if configured else Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def missing_data(*names: str) -> list[str]:
    """The given files that are not in the shared data folder."""
    folder = data_dir()
    return [name for name in names if not (folder / name).is_file()]


def missing_modules(*names: str) -> list[str]:
    """The given Python packages that cannot be imported."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def missing_programs(*names: str) -> list[str]:
    """The given programs that are not on PATH."""
    return [name for name in names if shutil.which(name) is None]


def stop(script: str, message: str) -> None:
    """Print `bench/SCRIPT: MESSAGE` as one line on stderr and exit 2."""
    print(f"bench/{script}: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(EXIT_MISSING)


def require_data(script: str, *names: str, alternative: str = "") -> None:
    """Stop unless every named file is in the shared data folder."""
    absent = missing_data(*names)
    if absent:
        stop(
            script,
            f"needs {', '.join(absent)} in {data_dir()} (the shared data folder; set {DATA_ENV}=DIR to use "
            f"another){alternative}",
        )


def require_modules(script: str, *names: str, install: str = "python -m pip install -e '.[test]'") -> None:
    """Stop unless every named package can be imported."""
    absent = missing_modules(*names)
    if absent:
        stop(script, f"needs the Python package(s) {', '.join(absent)}: {install}")


def require_programs(script: str, *names: str, install: str) -> None:
    """Stop unless every named program is on PATH."""
    absent = missing_programs(*names)
    if absent:
        stop(script, f"needs {', '.join(absent)} on PATH: {install}")


if __name__ == "__main__":
    print(f"bench/needs.py is a helper of the bench scripts; shared data folder: {data_dir()}")


RESULTS = Path(__file__).resolve().parent / "results"


def save(name: str, text: str) -> Path:
    """Write a bench's report to bench/results/`name` (the file README and docs quote) and return its path."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / name
    out.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    return out
