"""Diagnostics fixes: a `limit` without its unit (E315 at the number, no cascade onto the next lines, both parsers
agreeing), a statement cut short by the next line (E100 "unexpected end of line"), a limit too large to ever bind
(W112), `set cache.semantic = 0` (E401) and `modelroute keys add --model` names the catalog does not list."""

from __future__ import annotations

import datetime
import importlib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine import Diagnostic, PolicyError, compile_source
from engine.cli import main
from engine.compiler.ratelimits import LIMIT_CODES, NEVER_BINDS, limit_warnings
from engine.language import nodes as n
from engine.language.fastparse import parse_fast
from engine.language.fmt import format_source
from engine.language.parse import parse
from engine.language.syntax_errors import LIMIT_FORM
from engine.runtime.settings import RATE_UNITS
from engine.tools.lint import LINT_CODES, lint
from providers.gateway.keys import KeyRing
from tests.engines import CATALOG

HEAD = f'catalog "{CATALOG}"\ntask code = /implement/\n'
HEAD_LINES = HEAD.count("\n")
TODAY = datetime.date(2026, 1, 1)
keys_cli = importlib.import_module("engine.cli.keys")


def errors(text: str) -> list[Diagnostic]:
    with pytest.raises(PolicyError) as info:
        compile_source(HEAD + text, "p.route", today=TODAY)
    return info.value.diagnostics


def where(d: Diagnostic) -> tuple[str, int, int]:
    """A diagnostic's code and place, its line counted within the text after HEAD."""
    assert d.span is not None
    return d.code, d.span.line - HEAD_LINES, d.span.col


def parsers_agree(text: str) -> tuple[n.Stmt, ...]:
    """Lark's statements for `text`; the fast parser, when it reads the text, gives the same."""
    lark = parse(text, "f.route", fast=False).body
    quick = parse_fast(text, "f.route")
    assert quick is None or quick == lark
    return lark


# ---- a limit without its unit ----------------------------------------------------------------------------------


def test_a_limit_without_a_unit_is_one_error_at_the_number_and_the_next_lines_read_as_written() -> None:
    found = errors("limit 60\nwhen task is code use alpha-mini\notherwise use alpha-mini\n")
    assert [where(d) for d in found] == [("E315", 1, 7)]
    d = found[0]
    assert d.message == "`limit 60` has no unit"
    assert all(f"`{unit}`" in d.label for unit in RATE_UNITS)  # the units, from the one list
    assert d.hint is not None and "`limit 60 rpm per key`" in d.hint
    assert d.span is not None and d.span.end_col == 9  # the whole number


@pytest.mark.parametrize(
    ("text", "full_form"),
    [
        ("limit 60 per key\n", "`limit 60 rpm per key`"),
        ("limit 100k per user\n", "`limit 100k rpm per user`"),
        ("limit 60\nlimit 5 rpm\n", "`limit 60 rpm per key`"),
        ("limit 60 # no unit\n\nmodel fast = alpha-mini\n", "`limit 60 rpm per key`"),
        ('limit 60 when tier == "pro" use alpha-mini\n', "`limit 60 rpm per key`"),
    ],
)
def test_every_form_without_a_unit_is_e315_alone(text: str, full_form: str) -> None:
    found = errors(text + "otherwise use alpha-mini\n")
    assert [d.code for d in found] == ["E315"]
    assert found[0].hint is not None and full_form in found[0].hint


def test_both_parsers_read_a_missing_unit_alike() -> None:
    body = parsers_agree("limit 60\nlimit 100k per user\notherwise use m\n")
    first, second = body[0], body[1]
    assert isinstance(first, n.RateLimit) and isinstance(second, n.RateLimit)
    assert (first.unit, first.per, first.unit_span) == ("", None, first.amount.span)
    assert (second.unit, second.per) == ("", "user")
    # a word that only looks like a keyword is a unit, as the fast parser reads it too
    for text in ["limit 60 whenever\n", "limit 60 rpm per key\nwhen a use b\n", "limit 6 testx per per_x\n"]:
        stmt = parsers_agree(text)[0]
        assert isinstance(stmt, n.RateLimit) and stmt.unit not in ("", "per", "when")
    assert format_source("limit  60   per user\n") == "limit 60 per user\n"


def test_a_missing_number_or_a_glued_unit_is_a_syntax_error_with_the_full_form() -> None:
    found = errors("limit rpm\notherwise use alpha-mini\n")
    assert [where(d) for d in found] == [("E100", 1, 7)]
    assert found[0].hint == LIMIT_FORM and "`limit 60 rpm per key`" in LIMIT_FORM
    found = errors("limit 60rpm\notherwise use alpha-mini\n")
    assert [d.code for d in found] == ["E105"]
    assert found[0].hint is not None and "`limit 60 rpm`" in found[0].hint
    found = errors("limit\nwhen task is code use alpha-mini\notherwise use alpha-mini\n")
    assert [where(d) for d in found] == [("E100", 1, 1)]
    assert found[0].message == "unexpected end of line" and LIMIT_FORM in (found[0].hint or "")


# ---- a statement cut short by the next line --------------------------------------------------------------------


def test_a_statement_cut_by_the_next_line_is_reported_at_its_end_of_line_not_of_file() -> None:
    found = errors('when tier == "pro" use\notherwise use alpha-mini\n')
    assert [where(d) for d in found] == [("E100", 1, 20)]
    d = found[0]
    assert d.message == "unexpected end of line" and d.label == "the statement is not finished"
    assert d.hint is not None and "a name" in d.hint and f"line {2 + HEAD_LINES} starts the next statement" in d.hint
    # blank lines and comments between: the next statement's line is named; each unfinished statement once
    found = errors("model fast =\n\n# a comment\nwhen fast use alpha-mini\nbudget daily\notherwise use alpha-mini\n")
    assert [where(d) for d in found] == [("E100", 1, 12), ("E100", 5, 8)]
    assert f"line {4 + HEAD_LINES} starts" in (found[0].hint or "")
    assert f"line {6 + HEAD_LINES} starts" in (found[1].hint or "")


def test_the_end_of_the_file_is_still_called_so() -> None:
    found = errors('otherwise use alpha-mini\nwhen tier == "pro" use\n')
    assert [(d.code, d.message) for d in found] == [("E100", "unexpected end of file")]
    assert "starts the next statement" not in (found[0].hint or "")


def test_an_error_inside_the_next_statement_is_still_its_own() -> None:
    found = errors("model fast = alpha-mini\nwhen tier = 1 use fast\notherwise use alpha-mini\n")
    assert [where(d) for d in found] == [("E100", 2, 11)]
    assert found[0].message == "unexpected `=`"


# ---- W112: a limit too large to ever bind ----------------------------------------------------------------------


def limit_of(text: str) -> n.RateLimit:
    stmt = parse(text, "f.route").body[0]
    assert isinstance(stmt, n.RateLimit)
    return stmt


def test_a_limit_above_the_bound_is_warned_about_at_its_amount() -> None:
    assert set(LIMIT_CODES) <= set(LINT_CODES) and NEVER_BINDS == 1_000_000_000
    found = limit_warnings([limit_of("limit 100000000000 rpm per key\n"), limit_of("limit 2000M tpm\n")])
    assert [(d.code, d.severity, d.span.col if d.span else 0) for d in found] == [("W112", "warning", 7)] * 2
    assert "1,000,000,000 requests a minute" in found[0].message and "never binds" in found[0].message
    assert "tokens a minute" in found[1].message
    assert found[0].hint and found[0].label
    at_the_bound = ["limit 1000M rpm\n", "limit 1000000000 tpm per user\n", "limit 60 rpm\n", "limit 5000M rqm\n"]
    assert limit_warnings([limit_of(t) for t in at_the_bound]) == []  # not above it, or not a known unit


def test_check_reports_w112_through_lint() -> None:
    policy = compile_source(HEAD + "limit 100000000000 rpm per key\notherwise use alpha-mini\n", today=TODAY)
    assert [d.code for d in lint(policy, today=TODAY) if d.code.startswith("W112")] == ["W112"]


# ---- cache.semantic = 0 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "0.0", "0%"])
def test_a_semantic_threshold_of_0_is_refused(value: str) -> None:
    found = errors(f"set cache.ttl = 1h\nset cache.semantic = {value}\notherwise use alpha-mini\n")
    assert [where(d) for d in found] == [("E401", 2, 22)]
    assert "any request from any cached answer" in found[0].message
    assert found[0].hint is not None and "`set cache.semantic = 0.95`" in found[0].hint


def test_a_negative_threshold_cannot_be_written_and_a_small_one_is_allowed() -> None:
    assert [d.code for d in errors("set cache.semantic = -0.5\notherwise use alpha-mini\n")] == ["E100"]
    compile_source(HEAD + "set cache.ttl = 1h\nset cache.semantic = 0.01\notherwise use alpha-mini\n")


# ---- keys add --model ------------------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Path:
    """A policy over the test catalog (alpha-mini, its alias gpt-4o-mini, beta-chat...)."""
    path = tmp_path / "served.route"
    path.write_text(f'catalog "{CATALOG}"\notherwise use alpha-mini\n')
    return path


def keys(*args: str) -> Any:
    return CliRunner().invoke(main, ["keys", *args])


def test_an_unknown_model_is_refused_with_a_suggestion_and_the_file_is_unchanged(tmp_path: Path, served: Path) -> None:
    file = tmp_path / "keys.yaml"
    assert keys("add", "first", "--keys", str(file)).exit_code == 0
    before = file.read_bytes()
    result = keys("add", "bot", "--keys", str(file), "--model", "alpha-mni", "--catalog-of", str(served))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "--model alpha-mni is not a model of the catalog of" in result.stderr
    assert "did you mean alpha-mini?" in result.stderr and "unchanged" in result.stderr
    assert result.stdout == "" and file.read_bytes() == before
    # no suggestion: the command that lists the models is named instead
    result = keys("add", "bot", "--keys", str(file), "--model", "zzz", "--catalog-of", str(served))
    assert result.exit_code == 1 and "modelroute catalog" in result.stderr and file.read_bytes() == before
    # a provider-qualified name of a listed model never matches a plan's model: its canonical name is suggested
    result = keys("add", "bot", "--keys", str(file), "--model", "acme:alpha-mini", "--catalog-of", str(served))
    assert result.exit_code == 1 and "did you mean alpha-mini?" in result.stderr


def test_names_and_aliases_of_the_catalog_are_accepted(tmp_path: Path, served: Path) -> None:
    file = tmp_path / "keys.yaml"
    models = ["--model", "alpha-mini", "--model", "gpt-4o-mini"]  # a name and an alias
    result = keys("add", "bot", "--keys", str(file), *models, "--catalog-of", str(served))
    assert result.exit_code == 0 and "warning" not in result.stderr
    found = KeyRing.load(file, poll_interval_s=None).check(result.stdout.strip())
    assert found is not None and found.models == frozenset({"alpha-mini", "gpt-4o-mini"})


def test_ad_hoc_names_are_accepted_when_the_policy_allows_them(tmp_path: Path) -> None:
    policy = tmp_path / "adhoc.route"
    policy.write_text(f'catalog "{CATALOG}"\nset adhoc_models = true\notherwise use alpha-mini\n')
    file = tmp_path / "keys.yaml"
    result = keys("add", "bot", "--keys", str(file), "--model", "acme:brand-new", "--catalog-of", str(policy))
    assert result.exit_code == 0, result.output
    result = keys("add", "bot2", "--keys", str(file), "--model", "nobody:brand-new", "--catalog-of", str(policy))
    assert result.exit_code == 1  # an unknown provider


def test_without_a_policy_an_unknown_model_is_only_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./main.route: the default policy is the bundled one
    result = keys("add", "bot", "--keys", "keys.yaml", "--model", "gpt-4o-mni")
    assert result.exit_code == 0 and result.stdout.startswith("mr-")
    assert "warning: --model gpt-4o-mni is not a model of the catalog of the default policy" in result.stderr
    assert "did you mean gpt-4o-mini?" in result.stderr and "--catalog-of POLICY" in result.stderr
    assert "gpt-4o-mni" in (tmp_path / "keys.yaml").read_text()


def test_a_policy_that_does_not_load_is_a_usage_error(tmp_path: Path, served: Path) -> None:
    file = tmp_path / "keys.yaml"
    result = keys("add", "bot", "--keys", str(file), "--model", "alpha-mini", "--catalog-of", str(tmp_path / "none"))
    assert result.exit_code == 2 and "does not load" in result.stderr and "Traceback" not in result.output
    assert not file.exists()
    assert keys_cli.EXIT_USAGE == 2
