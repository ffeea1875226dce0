"""Review 28 attacks on the tooling commands (diff, graph, test, explain options, catalog, keys) with bad or odd
input: broken and identical policies, odd prompts files, unwritable outputs, huge policies and test files, control
characters and unicode, conflicting options and malformed keys files. The standard: no traceback and never exit 3
(a bug in modelroute); exit codes as documented (0 ok, 1 the input does not pass, 2 usage); --json output is valid
JSON; nothing is written to disk unless the command says so."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

GOOD = 'when tier == "a" use gpt-4o\notherwise use gpt-4o-mini\n'
OTHER = 'when tier == "a" use gpt-4o\notherwise use gpt-4o\n'
BROKEN = "when tier == \n"
HOSTILE_LABELS = (
    'when tier == "ü\\"<b>]\\n%% x" use gpt-4o\n'
    'when task ~ "a|b]}{#\\\\" use gpt-4o\n'
    'when tier == "a;\\"} ]; x [label=" use gpt-4o\n'
    "otherwise use gpt-4o-mini\n"
)


def clean(proc: subprocess.CompletedProcess, *codes: int) -> str:
    """The run exited with one of `codes` and printed no traceback or internal error; returns stdout + stderr."""
    out = proc.stdout + proc.stderr
    assert proc.returncode in codes, f"exit {proc.returncode}\n{out}"
    assert "Traceback" not in out and "internal error" not in out and "bug in modelroute" not in out, out
    return out


def strict_json(text: str) -> Any:
    """Parse JSON as the standard has it: no NaN or Infinity (json.loads alone accepts both)."""

    def refuse(constant: str) -> object:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, *requests: dict) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in requests))


# ---- diff -------------------------------------------------------------------------------------------------


def test_diff_of_a_policy_against_itself_changes_nothing(cli, tmp_path: Path) -> None:
    write(tmp_path / "p.route", GOOD)
    jsonl(tmp_path / "c.jsonl", {"prompt": "hi"}, {"prompt": "hi", "attrs": {"tier": "a"}}, {"prompt": "x" * 5000})
    proc = cli("diff", "p.route", "p.route", "--prompts", "c.jsonl", "--json", "--fail-on-change")
    clean(proc, 0)
    data = strict_json(proc.stdout)
    assert data["requests"] == 3 and data["changed"] == 0 and data["changes"] == []
    assert data["cost"]["delta"] == 0


def test_diff_reports_the_errors_of_both_broken_policies(cli, tmp_path: Path) -> None:
    write(tmp_path / "old.route", BROKEN)
    write(tmp_path / "new.route", "otherwise use nope-model\n")
    jsonl(tmp_path / "c.jsonl", {"prompt": "hi"})
    out = clean(cli("diff", "old.route", "new.route", "--prompts", "c.jsonl"), 1)
    assert "--> old.route:1:" in out and "--> new.route:1:" in out, out
    assert "E100" in out and "E300" in out


def test_diff_of_a_good_policy_against_a_broken_one_fails_on_the_broken_side(cli, tmp_path: Path) -> None:
    write(tmp_path / "good.route", GOOD)
    write(tmp_path / "bad.route", BROKEN)
    jsonl(tmp_path / "c.jsonl", {"prompt": "hi"})
    out = clean(cli("diff", "good.route", "bad.route", "--prompts", "c.jsonl"), 1)
    assert "--> bad.route:1:" in out and "good.route" not in out


@pytest.mark.parametrize("kind", ["directory", "binary", "missing"])
def test_diff_prompts_that_cannot_be_read_are_usage_errors(cli, tmp_path: Path, kind: str) -> None:
    write(tmp_path / "p.route", GOOD)
    prompts = tmp_path / "prompts"
    if kind == "directory":
        prompts.mkdir()
    elif kind == "binary":
        prompts.write_bytes(b'{"prompt": "\xff\xfe\x00\xcb"}\n')
    out = clean(cli("diff", "p.route", "p.route", "--prompts", "prompts"), 2)
    assert "--prompts" in out


def test_diff_escapes_control_characters_and_keeps_unicode(cli, tmp_path: Path) -> None:
    write(tmp_path / "old.route", GOOD)
    write(tmp_path / "new.route", OTHER)
    hostile = "\x1b]0;PWNED\x07\x1b[2J\x00\u2028line"
    jsonl(tmp_path / "c.jsonl", {"prompt": hostile, "attrs": {"tïer": "ü\x1b[31m"}})
    text = cli("diff", "old.route", "new.route", "--prompts", "c.jsonl")
    clean(text, 0)
    assert "\x1b" not in text.stdout and "\x00" not in text.stdout and "\x07" not in text.stdout
    as_json = cli("diff", "old.route", "new.route", "--prompts", "c.jsonl", "--json")
    clean(as_json, 0)
    change = strict_json(as_json.stdout)["changes"][0]
    assert change["attrs"] == {"tïer": "ü\x1b[31m"}


def test_diff_negative_limit_is_usage_or_lists_every_change(cli, tmp_path: Path) -> None:
    write(tmp_path / "old.route", GOOD)
    write(tmp_path / "new.route", OTHER)
    jsonl(tmp_path / "c.jsonl", {"prompt": "first"}, {"prompt": "second"})
    proc = cli("diff", "old.route", "new.route", "--prompts", "c.jsonl", "--limit", "-1")
    out = clean(proc, 0, 2)
    if proc.returncode == 0:  # accepted: then no changed request may go missing from the list
        assert '"first"' in out and '"second"' in out, out


def test_diff_json_stays_json_for_an_absurd_max_tokens(cli, tmp_path: Path) -> None:
    write(tmp_path / "old.route", 'when tier == "x" use gpt-4o-mini\n')
    write(tmp_path / "new.route", "otherwise use gpt-4o\n")
    jsonl(
        tmp_path / "c.jsonl", {"prompt": "a", "attrs": {"tier": "x"}}, {"prompt": "a", "attrs": {"max_tokens": 1.7e308}}
    )
    proc = cli("diff", "old.route", "new.route", "--prompts", "c.jsonl", "--json")
    clean(proc, 0, 2)
    if proc.returncode == 0:
        strict_json(proc.stdout)


@pytest.mark.parametrize(
    "command",
    [
        ["diff", "bad.route", "good.route", "--prompts", "c.jsonl", "--json"],
        ["catalog", "bad.route", "--json"],
        ["explain", "-p", "bad.route", "hi", "--json"],
    ],
    ids=["diff", "catalog", "explain"],
)
def test_json_of_a_broken_policy_is_json_like_check_and_test(cli, tmp_path: Path, command: list[str]) -> None:
    write(tmp_path / "good.route", GOOD)
    write(tmp_path / "bad.route", BROKEN)
    jsonl(tmp_path / "c.jsonl", {"prompt": "hi"})
    for reference in (["check", "bad.route", "--json"], ["test", "bad.route", "--json"]):
        assert strict_json(cli(*reference).stdout)["diagnostics"][0]["code"] == "E100"
    proc = cli(*command)
    clean(proc, 1)
    data = strict_json(proc.stdout)
    assert "E100" in json.dumps(data)


# ---- graph ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "# only a comment\n"], ids=["empty", "comment"])
def test_graph_of_an_empty_policy_goes_straight_to_no_route(cli, tmp_path: Path, text: str) -> None:
    write(tmp_path / "p.route", text)
    mermaid = cli("graph", "p.route")
    clean(mermaid, 0)
    assert mermaid.stdout.startswith("flowchart TD") and "req --> noroute" in mermaid.stdout
    dot = cli("graph", "p.route", "--format", "dot")
    clean(dot, 0)
    assert dot.stdout.rstrip().endswith("}") and "req -> noroute;" in dot.stdout


def test_graph_of_5000_rules_draws_every_rule(cli, tmp_path: Path) -> None:
    rules = [f'when tier == "t{i}" use gpt-4o' for i in range(5000)] + ["otherwise use gpt-4o-mini"]
    write(tmp_path / "big.route", "\n".join(rules) + "\n")
    mermaid = cli("graph", "big.route", timeout=60)
    clean(mermaid, 0)
    assert "r5000{" in mermaid.stdout and "r5001([" in mermaid.stdout
    dot = cli("graph", "big.route", "--format", "dot", "-o", "big.dot", timeout=60)
    clean(dot, 0)
    text = (tmp_path / "big.dot").read_text(encoding="utf-8")
    assert text.count(" -> ") > 10_000 and text.rstrip().endswith("}")


def test_graph_escapes_quotes_brackets_and_markup_in_labels(cli, tmp_path: Path) -> None:
    write(tmp_path / "p.route", HOSTILE_LABELS)
    dot = cli("graph", "p.route", "--format", "dot")
    clean(dot, 0)
    label = re.compile(r'^\s+\w+ \[label="(?:[^"\\]|\\.)*"(?:, \w+=(?:"[^"]*"|\w+))*\];$')
    for line in dot.stdout.splitlines():
        if "[label=" in line and " -> " not in line:
            assert label.match(line), line  # one well-formed statement per node: no quote ends a label early
    mermaid = cli("graph", "p.route")
    clean(mermaid, 0)
    for line in mermaid.stdout.splitlines():
        m = re.match(r'^\s+r\d+\{"(.*)"\}$', line)
        if m:
            assert '"' not in m.group(1) and "<b>" not in m.group(1), line


def test_graph_output_that_is_a_directory_is_usage(cli, tmp_path: Path) -> None:
    write(tmp_path / "p.route", GOOD)
    (tmp_path / "out").mkdir()
    clean(cli("graph", "p.route", "-o", "out"), 2)


@pytest.mark.parametrize("target", ["no/such/dir/graph.mmd", "p.route/graph.mmd"], ids=["missing-dir", "under-a-file"])
def test_graph_output_that_cannot_be_written_is_an_error_not_a_bug(cli, tmp_path: Path, target: str) -> None:
    write(tmp_path / "p.route", GOOD)
    out = clean(cli("graph", "p.route", "-o", target), 1, 2)
    assert "graph.mmd" in out


def test_graph_of_a_broken_policy_writes_no_output_file(cli, tmp_path: Path) -> None:
    write(tmp_path / "bad.route", BROKEN)
    out = clean(cli("graph", "bad.route", "-o", "out.mmd"), 1)
    assert "--> bad.route:1:" in out
    assert not (tmp_path / "out.mmd").exists()


# ---- test -------------------------------------------------------------------------------------------------


def test_coverage_without_tests_or_examples(cli, tmp_path: Path) -> None:
    write(tmp_path / "main.route", GOOD)
    text = cli("test", ".", "--coverage")
    clean(text, 0)
    assert "no tests in" in text.stdout and "0/2 rules" in text.stdout
    assert text.stdout.rstrip().endswith("0 passed, 0 failed")
    proc = cli("test", ".", "--coverage", "--json")
    clean(proc, 0)
    cov = strict_json(proc.stdout)["coverage"]
    assert cov["rules"]["total"] == 2 and cov["rules"]["exercised"] == 0
    assert cov["examples"] == {"total": 0, "exercised": 0, "unexercised": []}


def test_a_test_file_with_10000_expects(cli, tmp_path: Path) -> None:
    write(tmp_path / "main.route", GOOD)
    expects = [f'  expect "hello {i}" with tier="a" -> gpt-4o' for i in range(10_000)]
    write(tmp_path / "main_test.route", 'test "many" {\n' + "\n".join(expects) + "\n}\n")
    proc = cli("test", ".", "--json", "--coverage", timeout=80)
    clean(proc, 0)
    data = strict_json(proc.stdout)
    assert data["passed"] == 10_000 and data["failed"] == 0
    assert data["coverage"]["rules"]["unexercised"][0]["rule"] == 2


def test_every_bad_model_in_every_test_file_is_reported_with_a_caret(cli, tmp_path: Path) -> None:
    write(tmp_path / "main.route", GOOD)
    write(
        tmp_path / "a_test.route", 'test "a" {\n  expect "hi" -> gpt-4oo\n  expect "hi" -> gpt-4o fallback gpt-5x\n}\n'
    )
    write(tmp_path / "b_test.route", 'test "b" {\n  expect "hi" -> claude-opus-4-6x\n}\n')
    out = clean(cli("test", "."), 1)
    for at in ("a_test.route:2:18", "a_test.route:3:34", "b_test.route:2:18"):
        assert f"--> {at}" in out, out
    assert out.count("^^^") >= 3 and out.count("help: did you mean") == 3
    assert "3 errors" in out


def test_a_malformed_attribute_value_in_an_expect_names_its_column(cli, tmp_path: Path) -> None:
    write(tmp_path / "main.route", GOOD)
    write(tmp_path / "main_test.route", 'test "t" {\n  expect "hi" with tokens=-5 -> gpt-4o-mini\n}\n')
    out = clean(cli("test", "."), 1)
    assert "--> main_test.route:2:27" in out and "^" in out and "help:" in out
    proc = cli("test", ".", "--json")
    clean(proc, 1)
    diag = strict_json(proc.stdout)["diagnostics"][0]
    assert (diag["file"], diag["line"], diag["col"]) == ("main_test.route", 2, 27)


def test_odd_test_files_neither_hang_nor_crash(cli, tmp_path: Path) -> None:
    write(tmp_path / "main.route", GOOD + 'test "own" {\n  expect "hi" -> gpt-4o-mini\n}\n')
    (tmp_path / "dir_test.route").mkdir()
    os.mkfifo(tmp_path / "fifo_test.route")
    (tmp_path / "z_test.route").write_bytes(b"test \xff\xfe\x00 {\n")
    out = clean(cli("test", ".", timeout=30), 1)
    assert "cannot read test file z_test.route: not valid UTF-8" in out


# ---- explain options --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "markdown", "html", "json"])
def test_explain_never_prints_raw_control_characters(cli, tmp_path: Path, fmt: str) -> None:
    write(tmp_path / "p.route", GOOD)
    write(tmp_path / "prompt.txt", "x\x1b]0;PWNED\x07\x1b[2J\x00\x08y" * 3)
    proc = cli("explain", "-p", "p.route", "-f", "prompt.txt", "--format", fmt, "--attr", "t=\x1b[31mRED")
    clean(proc, 0)
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", proc.stdout), repr(proc.stdout[:500])


@pytest.mark.parametrize("fmt", ["markdown", "html"])
def test_explain_a_1mb_prompt_in_markdown_and_html(cli, tmp_path: Path, fmt: str) -> None:
    write(tmp_path / "p.route", "otherwise use gemini-2.5-flash\n")  # a 1M-token window holds ~262k tokens
    write(tmp_path / "prompt.txt", "implement a function " * 50_000)
    proc = cli("explain", "-p", "p.route", "-f", "prompt.txt", "--format", fmt)
    clean(proc, 0)
    assert "gemini-2.5-flash" in proc.stdout and len(proc.stdout) < 200_000


@pytest.mark.parametrize("kind", ["directory", "binary"])
def test_explain_prompt_file_that_cannot_be_read_is_usage(cli, tmp_path: Path, kind: str) -> None:
    write(tmp_path / "p.route", GOOD)
    target = tmp_path / "prompt"
    if kind == "directory":
        target.mkdir()
    else:
        target.write_bytes(b"\xff\xfe\xcb\x00")
    for option in ("-f", "--messages"):
        clean(cli("explain", "-p", "p.route", option, "prompt"), 2)


def test_explain_json_and_another_format_conflict(cli, tmp_path: Path) -> None:
    write(tmp_path / "p.route", GOOD)
    out = clean(cli("explain", "-p", "p.route", "hi", "--json", "--format", "html"), 2)
    assert "--format" in out


# ---- catalog ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options", [["--sort", ""], ["--supports", ""], ["--provider", "nöbody"], ["--limit", "x"]], ids=str
)
def test_catalog_odd_option_values_are_usage(cli, tmp_path: Path, options: list[str]) -> None:
    write(tmp_path / "p.route", GOOD)
    proc = cli("catalog", "p.route", *options)
    clean(proc, 2)
    assert proc.stdout == ""


# ---- keys -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["keys: [\n", "- 1\n- 2\n", "keys:\n  - name: 5\n    sha256: 12\n"],
    ids=["bad-yaml", "a-list", "bad-entry"],
)
def test_keys_on_a_malformed_file_refuse_and_leave_it_alone(cli, tmp_path: Path, text: str) -> None:
    keys = write(tmp_path / "keys.yaml", text)
    for command in (["list"], ["list", "--json"], ["add", "team-a"], ["revoke", "team-a"]):
        proc = cli("keys", *command, "--keys", "keys.yaml")
        out = clean(proc, 1)
        assert "keys.yaml" in out and "does not pass the gateway's checks" in out
        assert proc.stdout == ""
    assert keys.read_text(encoding="utf-8") == text
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["keys.yaml"]


def test_keys_add_under_a_path_that_is_a_file_is_usage(cli, tmp_path: Path) -> None:
    write(tmp_path / "p.route", GOOD)
    proc = cli("keys", "add", "team-a", "--keys", "p.route/keys.yaml")
    clean(proc, 2)
    assert proc.stdout == "" and (tmp_path / "p.route").read_text(encoding="utf-8") == GOOD


def test_keys_revoke_of_a_missing_file_writes_nothing(cli, tmp_path: Path) -> None:
    out = clean(cli("keys", "revoke", "team-a", "--keys", "keys.yaml"), 2)
    assert "no such keys file" in out
    assert list(tmp_path.iterdir()) == []
