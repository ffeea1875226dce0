"""Tests for engine.language.load's one_reading(): inside one compile each path is resolved once; outside it, and in
the next compile, a symlink swapped in between is followed."""

from __future__ import annotations

import os
from pathlib import Path

from engine.api import Engine, compile_policy
from engine.language import load as load_module
from engine.language.load import display_name, one_reading, real_path

POLICY = 'include "rules.route"\n'


def _rules(model: str) -> str:
    return f"otherwise use {model}\n"


def test_inside_one_reading_a_path_is_resolved_once(tmp_path: Path, monkeypatch) -> None:
    calls: list[str] = []
    resolve = Path.resolve

    def counting(self: Path, strict: bool = False) -> Path:
        calls.append(str(self))
        return resolve(self, strict=strict)

    monkeypatch.setattr(Path, "resolve", counting)
    target = tmp_path / "a.route"
    target.write_text("")
    with one_reading():
        assert real_path(target) == real_path(str(target)) == resolve(target)
        assert display_name(target) == display_name(target)
    assert calls.count(str(target)) == 1
    real_path(target)
    real_path(target)
    assert calls.count(str(target)) == 3  # outside: every call resolves


def test_one_reading_is_a_scope_that_ends(tmp_path: Path) -> None:
    link = tmp_path / "link"
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    os.symlink(tmp_path / "one", link)
    with one_reading():
        assert real_path(link) == (tmp_path / "one").resolve()
        os.unlink(link)
        os.symlink(tmp_path / "two", link)
        assert real_path(link) == (tmp_path / "one").resolve()  # one snapshot per compile
    with one_reading():
        assert real_path(link) == (tmp_path / "two").resolve()
    assert load_module._paths.get() is None


def test_a_symlinked_include_swapped_between_compiles_is_followed(tmp_path: Path) -> None:
    for name, model in (("a", "gpt-4o"), ("b", "gpt-4o-mini")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "rules.route").write_text(_rules(model))
    (tmp_path / "main.route").write_text(POLICY)
    os.symlink(tmp_path / "a" / "rules.route", tmp_path / "rules.route")
    assert Engine(compile_policy(tmp_path)).decide("hi").model == "gpt-4o"
    os.replace(tmp_path / "rules.route", tmp_path / "old")  # a symlink swap: a new link renamed over the old one
    os.symlink(tmp_path / "b" / "rules.route", tmp_path / "new")
    os.replace(tmp_path / "new", tmp_path / "rules.route")
    assert Engine(compile_policy(tmp_path)).decide("hi").model == "gpt-4o-mini"
