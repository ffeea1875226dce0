"""The policy test runner (engine/testing.py) and `modelroute test` through a subprocess: expects in the policy and in
*_test.route files, every kind of assertion, failures carrying the Report, coverage, -k, JSON and exit codes."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import pytest

from engine.tools.testing import compile_with_tests, find_test_files, run_tests

REPO = Path(__file__).resolve().parent.parent
#: The bundled policy's tests are run as of this date (after every bundled deprecation date so far).
BUNDLED_TODAY = datetime.date(2026, 6, 1)

POLICY = """catalog "catalog.yaml"
task code = /implement/, "debug"
task legal = "contract", "nda"
model coder = beta-coder
when tokens > 150k prefer cheapest where context >= 1M
when tier == "pro" and task is legal use alpha-large fallback gamma-long
when task is code prefer capability(CODING) where latency <= 1s fallback coder, delta-tiny
otherwise use gpt-4o-mini fallback beta-chat
"""

PASSING = """test "routing" {
  expect "implement a parser" -> beta-coder by rule 3 fallback delta-tiny
  expect "implement a parser" -> coder by line 7
  expect "review this contract" with tier="pro" -> alpha-large by rule 2 fallback gamma-long
  expect "hello" -> alpha-mini by rule 4 fallback beta-chat
  expect "hello" with tokens=200k -> gamma-flash by rule 1
  expect "hello" with tokens=3M -> no route
  expect "implement it" with tools=true, tier="free" -> beta-coder
}
"""


def run(write_policy, policy: str = POLICY, files: dict[str, str] | None = None, pattern: str | None = None):
    root = write_policy(policy, files)
    compiled, added = compile_with_tests(root)
    return run_tests(compiled, pattern, tuple(added))


# ---- the runner ------------------------------------------------------------------------------------------------


def test_every_assertion_kind_passes(write_policy) -> None:
    result = run(write_policy, files={"main_test.route": PASSING})
    assert [c.problems for c in result.cases if not c.passed] == []
    assert (result.passed, result.failed, result.total) == (7, 0, 7)
    assert result.test_files[0].endswith("main_test.route")
    assert all(c.report is None for c in result.cases)


def test_tests_inside_the_policy_run_too(write_policy) -> None:
    result = run(write_policy, POLICY + PASSING.replace("routing", "inline"))
    assert result.passed == 7 and result.cases[0].test == "inline" and result.test_files == ()


@pytest.mark.parametrize(
    "expect, problem",
    [
        ('"hello" -> beta-coder', "expected model beta-coder, got alpha-mini"),
        ('"hello" -> gpt-4o-mini by rule 3', "expected rule 3, decided by rule 4"),
        ('"hello" -> gpt-4o-mini by line 5', "expected the rule at line 5, decided by the rule at"),
        ('"hello" -> gpt-4o-mini fallback delta-tiny', "expected fallbacks [delta-tiny], got [beta-chat]"),
        ('"hello" -> no route', "expected no route, got alpha-mini"),
        ('"hello" with tokens=3M -> alpha-mini', "expected alpha-mini, got no route"),
    ],
)
def test_failures_say_what_happened(write_policy, expect: str, problem: str) -> None:
    result = run(write_policy, files={"x_test.route": f'test "t" {{\n  expect {expect}\n}}\n'})
    (case,) = result.cases
    assert not case.passed and case.problems[0].startswith(problem), case.problems
    assert case.report is not None and case.report.elapsed_us is None
    assert case.report.model == case.model
    assert case.span.line == 2 and case.source == f"expect {expect}"


def test_fallbacks_dropped_by_hard_constraints_are_not_expected(write_policy) -> None:
    # the chosen model is never its own fallback; delta-tiny (8k) cannot hold 20k tokens, so decide() drops it
    test = (
        'test "t" {\n  expect "implement" with tokens=5k -> beta-coder fallback delta-tiny\n'
        '  expect "implement" with tokens=20k -> beta-coder\n}\n'
    )
    result = run(write_policy, files={"x_test.route": test})
    assert result.passed == 2 and result.cases[1].fallbacks == ()


def test_aliases_and_catalog_aliases_resolve(write_policy) -> None:
    test = 'test "t" {\n  expect "implement" -> coder\n  expect "hello" -> gpt-4o-mini fallback beta-chat\n}\n'
    assert run(write_policy, files={"x_test.route": test}).passed == 2


def test_k_selects_by_test_name_or_prompt(write_policy) -> None:
    files = {"main_test.route": PASSING + 'test "legal" {\n  expect "an NDA" with tier="pro" -> alpha-large\n}\n'}
    assert len(run(write_policy, files=files, pattern="LEGAL").cases) == 1
    assert len(run(write_policy, files=files, pattern="hello").cases) == 3
    assert run(write_policy, files=files, pattern="zzz").total == 8


def test_coverage(write_policy) -> None:
    test = 'test "t" {\n  expect "implement" -> beta-coder\n  expect "hello" -> alpha-mini\n}\n'
    cov = run(write_policy, files={"x_test.route": test}).coverage
    assert [i for i, _, _ in cov.unused_rules] == [0, 1]
    assert cov.unused_rules[0][1].endswith("main.route:5")
    assert [(p, w) for p, _, w in cov.unused_patterns] == [
        ('"debug"', "task code"),
        ('"contract"', "task legal"),
        ('"nda"', "task legal"),
    ]
    assert cov.to_dict()["rules"] == {
        "total": 4,
        "exercised": 2,
        "unexercised": [
            {"rule": 1, "at": cov.unused_rules[0][1], "text": cov.unused_rules[0][2]},
            {"rule": 2, "at": cov.unused_rules[1][1], "text": cov.unused_rules[1][2]},
        ],
    }


def test_test_file_statements_other_than_tests_are_errors(write_policy) -> None:
    from engine.diagnostics import PolicyError

    root = write_policy(POLICY, {"bad_test.route": 'include "main.route"\nwhen tier == "x" use alpha-mini\n'})
    with pytest.raises(PolicyError) as info:
        compile_with_tests(root)
    assert info.value.codes == ["E800", "E800"]
    assert "no include is needed" in info.value.diagnostics[0].hint


def test_unknown_model_in_a_test_file_points_into_it(write_policy) -> None:
    from engine.diagnostics import PolicyError

    root = write_policy(POLICY, {"bad_test.route": 'test "t" {\n  expect "x" -> gpt-4o-mni\n}\n'})
    with pytest.raises(PolicyError) as info:
        compile_with_tests(root)
    (d,) = info.value.diagnostics
    assert (d.code, d.span.file.endswith("bad_test.route"), d.span.line) == ("E300", True, 2)


def test_test_file_discovery(write_policy) -> None:
    root = write_policy(POLICY, {"b_test.route": "", "a_test.route": "", "notes.route": ""})
    entry, files = find_test_files(root)
    assert entry == root / "main.route" and [f.name for f in files] == ["a_test.route", "b_test.route"]
    entry, files = find_test_files(root / "b_test.route")
    assert entry == root / "main.route" and [f.name for f in files] == ["b_test.route"]


def test_round_robin_state_does_not_leak_between_expects(write_policy) -> None:
    policy = 'catalog "catalog.yaml"\notherwise balance round_robin [alpha-mini, beta-chat]\n'
    test = 'test "rr" {\n  expect "a" -> alpha-mini\n  expect "b" -> alpha-mini\n}\n'
    assert run(write_policy, policy, {"x_test.route": test}).passed == 2


def test_bundled_policy_tests_pass() -> None:
    compiled, added = compile_with_tests(REPO / "policies", today=BUNDLED_TODAY)
    result = run_tests(compiled, None, tuple(added))
    assert result.failed == 0 and result.passed >= 15
    assert result.coverage.unused_rules == ()


# ---- modelroute test ---------------------------------------------------------------------------------------


def no_traceback(proc) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr and "internal error" not in proc.stdout + proc.stderr


def test_cli_all_pass(cli, write_policy) -> None:
    root = write_policy(POLICY, {"main_test.route": PASSING})
    proc = cli("test", str(root), env={"NO_COLOR": "1"})
    no_traceback(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.rstrip("\n").splitlines()
    assert lines[-1] == "7 passed, 0 failed"
    assert lines[0] == 'test "routing"'
    assert re.match(r"  PASS  \S*main_test\.route:2  expect \"implement a parser\" -> beta-coder by rule 3", lines[1])


def test_cli_failure_shows_the_explain(cli, write_policy) -> None:
    root = write_policy(POLICY, {"x_test.route": 'test "fails" {\n  expect "hello" -> beta-coder by rule 3\n}\n'})
    proc = cli("test", str(root), env={"NO_COLOR": "1"})
    no_traceback(proc)
    assert proc.returncode == 1
    out = proc.stdout
    assert "FAIL" in out and "expected model beta-coder, got alpha-mini" in out
    assert "rules tried" in out and "decision   alpha-mini" in out  # the explain of what happened
    assert out.rstrip("\n").splitlines()[-1] == "0 passed, 1 failed"


def test_cli_coverage_and_json(cli, write_policy) -> None:
    root = write_policy(POLICY, {"x_test.route": 'test "t" {\n  expect "implement" -> beta-coder\n}\n'})
    proc = cli("test", str(root), "--coverage", env={"NO_COLOR": "1"})
    assert proc.returncode == 0
    assert "coverage  1/4 rules decided some expect, 1/4 patterns matched some prompt" in proc.stdout
    assert "rule 4  otherwise use gpt-4o-mini fallback beta-chat" in proc.stdout
    assert '"nda"  (task legal)' in proc.stdout
    data = json.loads(cli("test", str(root), "--coverage", "--json").stdout)
    assert (data["passed"], data["failed"]) == (1, 0)
    assert data["coverage"]["patterns"]["exercised"] == 1 and data["cases"][0]["actual"]["rule"] == 3


def test_cli_exit_codes(cli, write_policy, tmp_path: Path) -> None:
    root = write_policy(POLICY, {"main_test.route": PASSING})
    usage = cli("test", str(root), "-k", "nothing-matches")
    assert usage.returncode == 2 and "matched none of the 7 expects" in usage.stderr
    assert cli("test", str(tmp_path / "missing")).returncode == 1  # E200, as for check and explain
    assert cli("test", "--bogus").returncode == 2
    bad = write_policy(POLICY, {"main_test.route": 'test "t" {\n  expect "x" -> nope\n}\n'})
    proc = cli("test", str(bad))
    no_traceback(proc)
    assert proc.returncode == 1 and "error[E300]: unknown model `nope`" in proc.stderr
    data = json.loads(cli("test", str(bad), "--json").stdout)
    assert data["ok"] is False and data["diagnostics"][0]["code"] == "E300"


def test_cli_no_tests(cli, write_policy) -> None:
    proc = cli("test", str(write_policy(POLICY)))
    assert proc.returncode == 0 and "no tests in" in proc.stdout
    assert proc.stdout.rstrip("\n").splitlines()[-1] == "0 passed, 0 failed"


def test_cli_bundled_policy_and_help(cli) -> None:
    proc = cli("test", str(REPO / "policies"), "--coverage", "--today", BUNDLED_TODAY.isoformat())
    no_traceback(proc)
    assert proc.returncode == 0, proc.stdout
    assert re.search(r"^\d+ passed, 0 failed$", proc.stdout, re.M)
    helptext = cli("test", "--help").stdout
    assert "Examples:" in helptext and "--coverage" in helptext and "-k PATTERN" in helptext
