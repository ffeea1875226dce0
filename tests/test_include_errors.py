"""Load errors in included files: a policy whose include cannot be parsed or read in, only the load errors out."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import Engine, PolicyError


def _codes(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as info:
        Engine.load(path)
    return [d.code for d in info.value.diagnostics]


def test_a_syntax_error_in_an_include_does_not_make_its_names_unknown(tmp_path: Path) -> None:
    """The included file fails to parse: its syntax error is reported, and the rules of main.route that name its
    tasks are not (before: one E301 `unknown task` for each, although `code` was declared without a fault)."""
    (tmp_path / "tasks.route").write_text("task code = /python/\ntask math = /a|b/ /c/d/\n", encoding="utf-8")
    (tmp_path / "main.route").write_text(
        'include "tasks.route"\nwhen task is code use gpt-4o-mini\nwhen task is math use gpt-4o-mini\n'
        "otherwise use gpt-4o-mini\n",
        encoding="utf-8",
    )
    assert _codes(tmp_path / "main.route") == ["E100"]


def test_every_file_s_syntax_errors_are_reported_in_one_run(tmp_path: Path) -> None:
    (tmp_path / "a.route").write_text("task a = /x/ /y/\n", encoding="utf-8")
    (tmp_path / "b.route").write_text("model m = \n", encoding="utf-8")
    (tmp_path / "main.route").write_text(
        'include "a.route"\ninclude "b.route"\nwhen task is a use m\notherwise use gpt-4o-mini\n', encoding="utf-8"
    )
    codes = _codes(tmp_path / "main.route")
    assert len(codes) == 2 and all(c.startswith("E1") for c in codes)


def test_a_missing_include_is_the_only_error(tmp_path: Path) -> None:
    (tmp_path / "main.route").write_text(
        'include "nowhere.route"\nwhen task is code use gpt-4o-mini\notherwise use gpt-4o-mini\n', encoding="utf-8"
    )
    assert _codes(tmp_path / "main.route") == ["E200"]


def test_without_load_errors_the_compiler_still_reports_every_error(tmp_path: Path) -> None:
    (tmp_path / "main.route").write_text(
        "when task is code use gpt-4o-mini\nwhen task is math use gpt-4o-minii\notherwise use gpt-4o-mini\n",
        encoding="utf-8",
    )
    codes = _codes(tmp_path / "main.route")
    assert codes.count("E301") == 2 and len(codes) >= 3
