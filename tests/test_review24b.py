"""Review of this session's diagnostics and `keys add --model` changes: every statement kind cut short at every
token (followed by the end of the file, a comment, the next statement, CRLF line ends) and `modelroute keys add
--model X [--catalog-of POLICY]` with bad policies and odd model names, in; the diagnostics (one, at the cut
statement, with a place, a caret and a hint), the exit codes and the keys file out."""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine import PolicyError, compile_source
from engine.cli import main
from engine.diagnostics import render
from tests.engines import CATALOG

TODAY = datetime.date(2026, 1, 1)
HEAD = f'catalog "{CATALOG}"\ntask code = /implement/\n'
STATEMENTS = [
    "model fast = alpha-mini",
    'task math = /integral/, "derivative"',
    'task ex = like ["write code", "fix bug"] >= 0.8',
    "limit 60 rpm per key",
    "budget daily $5 per user",
    "set retries = 2",
    'include "x.route"',
    'catalog "c.yaml" overlay "o.yaml"',
    "when task is code and tokens > 100 use alpha-mini fallback beta-chat",
    'when tier == "pro" prefer cheapest among [alpha-mini, beta-chat]',
    "when not (task ~ /x/ or tokens < 5) use alpha-mini",
    "otherwise use alpha-mini",
    'test "t" { expect "hi" with tier="pro" -> alpha-mini by rule 1 }',
]
TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|/(?:[^/\\]|\\.)+/|\$[\d.]+|->|[\w.\-:]+|\S')
NEXT = ["otherwise use alpha-mini", "when task is code use alpha-mini", "model m2 = alpha-mini", "task t2 = /q/"]
TAILS = ["", "\n", " # a comment\n", *(f"\n{s}\n" for s in NEXT), " # c\n\n" + NEXT[1]]


def cuts() -> list[str]:
    """Every statement cut after each of its tokens but the last."""
    out = []
    for stmt in STATEMENTS:
        ends = [m.end() for m in TOKEN.finditer(stmt)]
        out += [stmt[:end] for end in ends[:-1]]
    return out


def errors_of(text: str) -> tuple[list[Any], Any] | None:
    try:
        compile_source(text, "p.route", today=TODAY)
    except PolicyError as err:
        return [d for d in err.diagnostics if d.is_error], err.sources
    return None


@pytest.mark.parametrize("part", cuts())
def test_a_statement_cut_short_is_one_error_there_with_a_place_a_caret_and_a_hint(part: str) -> None:
    for tail in TAILS:
        for newline in ("\n", "\r\n"):
            text = (HEAD + part + tail).replace("\n", newline)
            found = errors_of(text)
            if found is None:
                continue
            diags, sources = found
            syntax = [d for d in diags if d.code.startswith("E1")]
            if syntax:  # a syntax error: only it, on the cut statement's line
                assert len(diags) == 1 and diags[0].span.line == 3, (text, [str(d.span) for d in diags])
            for d in diags:
                shown = render(d, sources)
                assert d.span is not None and f"p.route:{d.span.line}:{d.span.col}" in shown, shown
                assert "^" in shown and d.hint, shown
                if d.message.startswith("unexpected end of"):
                    where = "line" if tail.strip() and any(tail.strip().startswith(s[:4]) for s in NEXT) else None
                    assert where is None or d.message == "unexpected end of line", (text, shown)


def test_a_lone_minus_where_an_arrow_belongs_has_a_hint() -> None:
    found = errors_of(HEAD + 'test "t" { expect "hi" - alpha-mini }\n')
    assert found is not None and all(d.hint for d in found[0])


def test_an_exponent_in_a_limit_gets_the_exponent_advice() -> None:
    found = errors_of(HEAD + "limit 1e3 rpm\notherwise use alpha-mini\n")
    assert found is not None and "limit 1 e3" not in found[0][0].hint and "exponent" in found[0][0].hint


def test_the_end_of_file_and_the_end_of_line_are_told_apart() -> None:
    eof = errors_of(HEAD + "model fast =")
    eol = errors_of(HEAD + "model fast =\r\n# c\r\n\r\notherwise use alpha-mini\r\n")
    assert eof is not None and [d.message for d in eof[0]] == ["unexpected end of file"]
    assert eol is not None and [d.message for d in eol[0]] == ["unexpected end of line"]
    assert "line 6 starts the next statement" in eol[0][0].hint


@pytest.mark.parametrize(
    "text",
    [
        "limit 60\n",
        "limit 60 per key\r\n",
        "limit 60 # sixty\notherwise use alpha-mini\n",
        "limit 60\nlimit 5 rpm\n",
        "limit 60 per\n",
        "limit\n",
        "limit rpm 60\n",
        "limit 60rpm\n",
        "limit 60 rpm per\n",
    ],
)
def test_limit_mistakes_are_exit_1_with_a_hint_never_a_crash(tmp_path: Path, text: str) -> None:
    (tmp_path / "main.route").write_text(HEAD + text + "otherwise use alpha-mini\n", newline="")
    result = CliRunner().invoke(main, ["check", str(tmp_path / "main.route")])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert "= help:" in result.output and "^" in result.output


def test_limit_without_a_unit_names_both_units_once() -> None:
    found = errors_of(HEAD + "limit 60\nlimit 60 per key\notherwise use alpha-mini\n")
    assert found is not None and [(d.code, d.span.line) for d in found[0]] == [("E315", 3), ("E315", 4)]
    assert all("`rpm`" in d.label and "`tpm`" in d.label and d.hint for d in found[0])


# ---- keys add --model [--catalog-of POLICY] ------------------------------------------------------------------------
def keys(*args: str) -> Any:
    return CliRunner().invoke(main, ["keys", *args])


@pytest.fixture
def served(tmp_path: Path) -> Path:
    path = tmp_path / "served.route"
    path.write_text(f'catalog "{CATALOG}"\nmodel fast = alpha-mini\notherwise use fast\n')
    return path


@pytest.mark.parametrize("model", ["", " ", "alpha-mini ", "ALPHA-MINI", "acme:", ":alpha-mini", "a:b:c", "fast"])
def test_odd_model_names_are_refused_and_the_file_is_unchanged(tmp_path: Path, served: Path, model: str) -> None:
    """A policy's own alias (`model fast = ...`) is no catalog name: the gateway compares catalog names only."""
    file = tmp_path / "keys.yaml"
    assert keys("add", "first", "--keys", str(file)).exit_code == 0
    before = file.read_bytes()
    result = keys("add", "bot", "--keys", str(file), "--model", model, "--catalog-of", str(served))
    assert result.exit_code == 1 and result.stdout == "" and "Traceback" not in result.output
    assert "is not a model of the catalog of" in result.stderr and file.read_bytes() == before


def test_policies_that_do_not_load_are_exit_2_naming_the_cause(tmp_path: Path) -> None:
    file = tmp_path / "keys.yaml"
    (tmp_path / "catdir").mkdir()
    (tmp_path / "bin.yaml").write_bytes(bytes(range(128, 256)))
    (tmp_path / "empty").mkdir()
    broken = {
        "syntax.route": ("model m =\notherwise use m\n", "E100"),
        "include.route": ('include "nowhere.route"\notherwise use alpha-mini\n', "E200"),
        "catdir.route": ('catalog "catdir"\notherwise use alpha-mini\n', "E202"),
        "binary.route": ('catalog "bin.yaml"\notherwise use alpha-mini\n', "E202"),
        "litellm.route": ('catalog litellm "catdir"\notherwise use alpha-mini\n', "E202"),
        "format.route": ('catalog nosuch "x"\notherwise use alpha-mini\n', "E202"),
    }
    targets = [tmp_path / "empty", tmp_path / "missing.route"]
    for name, (text, _) in broken.items():
        (tmp_path / name).write_text(text)
        targets.append(tmp_path / name)
    for target in targets:
        result = keys("add", "bot", "--keys", str(file), "--model", "alpha-mini", "--catalog-of", str(target))
        assert result.exit_code == 2, (target, result.output)
        assert "does not load" in result.stderr and "modelroute check" in result.stderr
        assert "Traceback" not in result.output and not file.exists()
        code = broken.get(target.name, ("", "E200"))[1]
        assert f"({code} " in result.stderr, result.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")
def test_a_fifo_as_the_policy_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.route")
    file = tmp_path / "keys.yaml"
    result = keys(
        "add", "bot", "--keys", str(file), "--model", "alpha-mini", "--catalog-of", str(tmp_path / "fifo.route")
    )
    assert result.exit_code == 2 and "not a regular file" in result.stderr and not file.exists()


def test_a_semantic_task_in_the_policy_embeds_nothing(tmp_path: Path) -> None:
    """--catalog-of reads the statements only: a `like` task whose examples file is missing is no obstacle."""
    policy = tmp_path / "p.route"
    policy.write_text(
        f'catalog "{CATALOG}"\ntask t = like "missing.txt"\nwhen task is t use beta-chat\notherwise use alpha-mini\n'
    )
    file = tmp_path / "keys.yaml"
    result = keys("add", "bot", "--keys", str(file), "--model", "beta-chat", "--catalog-of", str(policy))
    assert result.exit_code == 0 and result.stdout.startswith("mr-") and "beta-chat" in file.read_text()


def test_a_broken_default_policy_only_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "main.route").write_text("model m =\n")  # ./main.route is the default policy
    result = keys("add", "bot", "--keys", "keys.yaml", "--model", "whatever")
    assert result.exit_code == 0 and result.stdout.startswith("mr-")
    assert "warning: --model names not checked: the default policy main.route does not load (E100" in result.stderr


def test_the_model_check_runs_after_the_name_check_and_before_any_write(tmp_path: Path, served: Path) -> None:
    file = tmp_path / "keys.yaml"
    bad_name = keys("add", "a b", "--keys", str(file), "--model", "zzz", "--catalog-of", str(served))
    assert bad_name.exit_code == 2 and "--model" not in bad_name.stderr
    bad_expiry = keys(
        "add", "bot", "--keys", str(file), "--model", "zzz", "--expires", "2000-01-01", "--catalog-of", str(served)
    )
    assert bad_expiry.exit_code == 1 and not file.exists()
