"""Files a policy names (includes, example files, catalogs, test files): a FIFO or a device in, a clear error out,
never a hang or an exhausted memory (providers/catalog/files.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import Engine, PolicyError
from providers.catalog.files import FileTooLarge, read_regular, read_text

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")


def test_read_regular_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        read_regular(fifo, 100)  # returns at once: no writer is waited for
    with pytest.raises(IsADirectoryError):
        read_regular(tmp_path, 100)
    with pytest.raises(OSError, match="not a regular file"):
        read_regular("/dev/zero", 100)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(FileTooLarge):
        read_regular(big, 100)
    crlf = tmp_path / "crlf"
    crlf.write_bytes(b"\xef\xbb\xbfa\r\nb\rc\n")
    assert read_text(crlf, 100, "utf-8-sig") == "a\nb\nc\n"


def _check(policy: Path) -> subprocess.CompletedProcess[str]:
    """`modelroute check` in a child with a deadline: a hang fails the test instead of stalling the suite."""
    code = "import sys; from engine.cli import main; sys.argv[0] = 'modelroute'; main()"
    return subprocess.run(
        [sys.executable, "-c", code, "check", str(policy)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=policy.parent,
    )


@pytest.mark.parametrize(
    ("statement", "code"),
    [
        ('task t = /x/, like "fifo"', "E204"),
        ('catalog "fifo"', "E202"),
        ('catalog "/dev/zero"', "E202"),
    ],
)
def test_a_policy_naming_a_fifo_or_a_device_is_an_error_not_a_hang(tmp_path: Path, statement: str, code: str) -> None:
    os.mkfifo(tmp_path / "fifo")
    policy = tmp_path / "main.route"
    policy.write_text(f"{statement}\notherwise use gpt-4o-mini\n", encoding="utf-8")
    proc = _check(policy)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "regular file" in proc.stdout + proc.stderr


def test_a_fifo_swapped_in_for_an_example_file_does_not_stall_the_reload(tmp_path: Path) -> None:
    (tmp_path / "ex.txt").write_text("write a python function\n", encoding="utf-8")
    policy = tmp_path / "main.route"
    policy.write_text('task code = /def /, like "ex.txt" >= 0.9\notherwise use gpt-4o-mini\n', encoding="utf-8")
    from tests.semantic_kit import BagOfWords

    engine = Engine.load(policy, embedder=BagOfWords())
    before = engine.version
    (tmp_path / "ex.txt").unlink()
    os.mkfifo(tmp_path / "ex.txt")
    assert engine.reload() is False  # the broken edit keeps the last good policy, at once
    assert engine.version == before and "regular file" in str(engine.reloader.last_error)


def test_loading_still_reads_ordinary_files(tmp_path: Path) -> None:
    (tmp_path / "tasks.route").write_bytes(b"task code = /def /\r\n")
    main = 'include "tasks.route"\nwhen task is code use gpt-4o\notherwise use gpt-4o-mini\n'
    (tmp_path / "main.route").write_text(main, encoding="utf-8")
    assert Engine.load(tmp_path / "main.route").decide("def f(): pass").model == "gpt-4o"
    with pytest.raises(PolicyError):
        Engine.load(tmp_path / "nowhere.route")
