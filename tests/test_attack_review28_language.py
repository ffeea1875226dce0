"""Review 28 attacks on how the policy language takes bad input: deep nesting, huge numbers, symlink loops, byte-order
marks, CR line endings, invisible characters, closed stdin, broken example files and reloads of all of these. The
standard: a clear error at file:line:col (exit 1 for a policy error, 2 for usage), never exit 3 or a traceback, and a
rejected reload keeps the last good policy serving (engine.reload() returns False and sets last_error)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import Engine, PolicyError, compile_source

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "policies"
GOOD = 'when tier == "a" use gpt-4o\notherwise use gpt-4o-mini\n'
POSITION = re.compile(r"--> \S+:\d+:\d+")


def clean(proc: subprocess.CompletedProcess, *codes: int) -> str:
    """The run exited with one of `codes` and printed no traceback or internal error; returns stdout + stderr."""
    out = proc.stdout + proc.stderr
    assert proc.returncode in codes, out
    assert "Traceback" not in out and "internal error" not in out and "bug in modelroute" not in out, out
    return out


def nested_parens(depth: int) -> str:
    return "when " + "(" * depth + 'tier == "a"' + ")" * depth + " use gpt-4o\notherwise use gpt-4o-mini\n"


def nested_nots(depth: int) -> str:
    return "when " + "not " * depth + 'tier == "a" use gpt-4o\notherwise use gpt-4o-mini\n'


def huge_limit() -> str:
    return "limit " + "9" * 400 + " rpm\n" + GOOD


def symlink_loop(tmp_path: Path) -> None:
    os.symlink(tmp_path / "loop2", tmp_path / "loop1")
    os.symlink(tmp_path / "loop1", tmp_path / "loop2")


def run_closed_stdin(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI with file descriptor 0 closed (a daemon, `cmd <&-`): sys.stdin is None in the child."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    env.pop("MODELROUTE_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.close(0),
    )


# ---- nesting: the fast parser recurses once per level ------------------------------------------------------------


def test_moderately_nested_conditions_still_compile(cli, tmp_path: Path) -> None:
    """The baseline the two attacks below go past: 100 levels of parentheses and a 5,000-term `and` are fine."""
    (tmp_path / "p.route").write_text(nested_parens(100), encoding="utf-8")
    clean(cli("check", "p.route"), 0)
    long_and = " and ".join(f'tier != "t{i}"' for i in range(5000))
    (tmp_path / "q.route").write_text(f"when {long_and} use gpt-4o\notherwise use gpt-4o-mini\n", encoding="utf-8")
    clean(cli("check", "q.route"), 0)


@pytest.mark.parametrize("text", [nested_parens(400), nested_nots(400)], ids=["parens", "nots"])
def test_deeply_nested_condition_is_a_policy_error_not_a_crash(cli, tmp_path: Path, text: str) -> None:
    (tmp_path / "p.route").write_text(text, encoding="utf-8")
    out = clean(cli("check", "p.route"), 1)
    assert POSITION.search(out), out


# ---- huge numbers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("when tokens > 1e309 use gpt-4o\n", "E105"),
        ('task c = like ["a b"] >= ' + "9" * 400 + "\nwhen task is c use gpt-4o\n", "E407"),
        ('when tier == "x" split ' + "9" * 400 + "% gpt-4o, 1% gpt-4o-mini\n", "E402"),
        ("set cache.ttl = " + "9" * 400 + "h\n", "E401"),
    ],
    ids=["exponent", "threshold", "split", "ttl"],
)
def test_huge_numeric_literals_are_positioned_errors(cli, tmp_path: Path, text: str, code: str) -> None:
    (tmp_path / "p.route").write_text(text + "otherwise use gpt-4o-mini\n", encoding="utf-8")
    out = clean(cli("check", "p.route"), 1)
    assert f"[{code}]" in out and POSITION.search(out), out


def test_huge_rate_limit_amount_is_a_policy_error(cli, tmp_path: Path) -> None:
    (tmp_path / "p.route").write_text(huge_limit(), encoding="utf-8")
    out = clean(cli("check", "p.route"), 0, 1)  # E401 (not a whole number it can keep) or W112 (never binds)
    assert "E401" in out or "W112" in out, out


# ---- files that are not what they claim -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda d: (d / "ex").mkdir(), "E204"),
        (lambda d: (d / "ex").write_bytes(b"\x00\x01\xff\xfe binary"), "E204"),
        (lambda d: (d / "ex").write_bytes(b""), "E205"),
        (lambda d: (d / "ex").write_bytes(b"# only a comment\r\n\r\n   \r\n"), "E205"),
    ],
    ids=["directory", "binary", "empty", "comments-only-crlf"],
)
def test_example_file_that_is_not_examples_is_positioned(cli, tmp_path: Path, make, code: str) -> None:
    make(tmp_path)
    (tmp_path / "p.route").write_text('task c = /x/, like "ex"\nwhen task is c use gpt-4o\n' + GOOD, encoding="utf-8")
    out = clean(cli("check", "p.route"), 1)
    assert f"[{code}]" in out and "p.route:1:20" in out, out


def test_a_file_that_includes_itself_is_a_cycle(cli, tmp_path: Path) -> None:
    (tmp_path / "p.route").write_text('include "./p.route"\n' + GOOD, encoding="utf-8")
    out = clean(cli("check", "p.route"), 1)
    assert "[E201]" in out and "p.route:1:1" in out, out


@pytest.mark.parametrize(
    ("statement", "code"),
    [('include "loop1"', "E200"), ('task c = /x/, like "loop1"', "E204"), ('catalog "loop1"', "E200")],
    ids=["include", "like", "catalog"],
)
def test_a_symlink_loop_is_a_policy_error(cli, tmp_path: Path, statement: str, code: str) -> None:
    symlink_loop(tmp_path)
    (tmp_path / "p.route").write_text(f"{statement}\n" + GOOD, encoding="utf-8")
    out = clean(cli("check", "p.route"), 1)
    assert f"[{code}]" in out and "p.route:1:" in out, out


def test_invalid_utf8_in_a_policy_file_is_positioned(cli, tmp_path: Path) -> None:
    (tmp_path / "p.route").write_bytes(b'when tier == "caf\xe9" use gpt-4o\notherwise use gpt-4o-mini\n')
    out = clean(cli("check", "p.route"), 1)
    assert "p.route:1:18" in out and "check the path" not in out, out


# ---- line endings, BOMs and invisible characters -----------------------------------------------------------------


def test_cr_only_file_positions_errors_on_their_own_lines(cli, tmp_path: Path) -> None:
    (tmp_path / "p.route").write_bytes(b'when tier == "x" use gpt-4o-mni\rotherwise use claude-sonet-4\r')
    out = clean(cli("check", "p.route"), 1)
    assert "p.route:1:22" in out and "p.route:2:15" in out, out
    assert "did you mean gpt-4o-mini?" in out


def test_cr_only_source_text_positions_errors_on_their_own_lines() -> None:
    with pytest.raises(PolicyError) as info:
        compile_source('when tier == "x" use gpt-4o-mni\rotherwise use claude-sonet-4\r')
    assert [(d.span.line, d.span.col) for d in info.value.diagnostics if d.span] == [(1, 22), (2, 15)]


def test_fmt_of_a_file_with_a_bom_that_check_accepts(cli, tmp_path: Path) -> None:
    (tmp_path / "p.route").write_bytes(b"\xef\xbb\xbfotherwise   use gpt-4o-mini\r\n")
    clean(cli("check", "p.route"), 0)
    clean(cli("fmt", "p.route"), 0)
    assert (tmp_path / "p.route").read_text(encoding="utf-8-sig") == "otherwise use gpt-4o-mini\n"


@pytest.mark.parametrize(("char", "code"), [("\u00a0", "U+00A0"), ("\u2028", "U+2028"), ("\x0b", "U+000B")])
def test_an_invisible_unexpected_character_is_named_by_its_code(char: str, code: str) -> None:
    with pytest.raises(PolicyError) as info:
        compile_source(f'when tier == "x"{char}use gpt-4o\notherwise use gpt-4o-mini\n')
    [diag] = info.value.diagnostics
    assert code in diag.message, diag.message
    assert diag.span is not None and (diag.span.line, diag.span.col) == (1, 17)


# ---- the CLI's own inputs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "text"),
    [
        (lambda d: (d / "f").write_bytes(b"\x00\xff\xfe binary"), "cannot read"),
        (lambda d: (d / "f").mkdir(), "is a directory"),
        (lambda d: None, "cannot read"),
    ],
    ids=["binary", "directory", "missing"],
)
def test_explain_file_that_is_no_prompt_is_usage(cli, tmp_path: Path, make, text: str) -> None:
    make(tmp_path)
    out = clean(cli("explain", "-p", str(FIXTURES), "-f", "f"), 2)
    assert text in out, out


@pytest.mark.parametrize("args", [("explain", "-p", str(FIXTURES), "-"), ("fmt", "-")], ids=["explain", "fmt"])
def test_closed_stdin_is_a_clear_error(tmp_path: Path, args: tuple[str, ...]) -> None:
    proc = run_closed_stdin(*args, cwd=tmp_path)
    assert "stdin" in clean(proc, 1, 2)


def test_explain_ten_megabytes_of_pathological_text_stays_fast(cli, tmp_path: Path) -> None:
    """RE2 patterns that backtrack exponentially elsewhere, over 10 MB of input: one answer, no traceback."""
    (tmp_path / "p.route").write_text(
        "task t = /(a+)+$/, /(a|aa)*b/, /(x+x+)+y/\nwhen task is t use gpt-4o\notherwise use gpt-4o-mini\n",
        encoding="utf-8",
    )
    prompt = "a" * 5_000_000 + "!" + "x" * 5_000_000
    out = clean(cli("explain", "-p", "p.route", "-", input=prompt, timeout=60), 0, 1)
    assert "10,000,001 chars" in out


def test_decide_on_pathological_prompts_is_linear() -> None:
    engine = Engine.from_source("task t = /(a+)+$/, /(a|aa)*c/\nwhen task is t use gpt-4o\notherwise use gpt-4o-mini\n")
    for prompt in ("a" * 400_000 + "!", "(" * 200_000 + ")" * 200_000, "\x00" * 400_000):  # under 128k tokens
        best = min(_timed(engine, prompt) for _ in range(3))
        assert best < 1.0, (prompt[:10], best)


def _timed(engine: Engine, prompt: str) -> float:
    start = time.perf_counter()
    assert engine.decide(prompt).model == "gpt-4o-mini"
    return time.perf_counter() - start


# ---- reloads of the same bad input -------------------------------------------------------------------------------


def test_example_file_replaced_by_a_directory_keeps_the_last_good_policy(tmp_path: Path) -> None:
    from tests.semantic_kit import BagOfWords

    (tmp_path / "ex.txt").write_text("write a python function\n", encoding="utf-8")
    policy = tmp_path / "main.route"
    policy.write_text('task code = /def /, like "ex.txt" >= 0.9\nwhen task is code use gpt-4o\n' + GOOD)
    engine = Engine.load(policy, embedder=BagOfWords())
    before = engine.version
    (tmp_path / "ex.txt").unlink()
    assert engine.reload() is False and engine.last_error is not None and engine.last_error.codes == ["E204"]
    (tmp_path / "ex.txt").mkdir()
    assert engine.reload() is False and engine.last_error.codes == ["E204"]
    assert engine.version == before and engine.decide("python function").model == "gpt-4o"


@pytest.mark.parametrize("bad", ["nesting", "limit", "symlink"])
def test_a_reload_that_crashes_the_compiler_is_a_rejection(tmp_path: Path, bad: str) -> None:
    policy = tmp_path / "main.route"
    policy.write_text(GOOD, encoding="utf-8")
    engine = Engine.load(policy)
    before = engine.version
    if bad == "symlink":
        symlink_loop(tmp_path)
    text = {"nesting": nested_parens(400), "limit": huge_limit(), "symlink": 'include "loop1"\n' + GOOD}[bad]
    policy.write_text(text, encoding="utf-8")
    assert engine.reload() is False
    assert engine.version == before and isinstance(engine.last_error, PolicyError)
    assert engine.decide("hi", tier="a").model == "gpt-4o"
