"""`modelroute test`: a policy path and options in, per-expect pass/fail text (or JSON) and an exit code out."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from engine.cli.common import (
    EXIT_ERRORS,
    EXIT_OK,
    _console,
    exit_on_policy_error,
    policy_or_default,
)
from engine.cli.options import extension_options, today_option
from engine.diagnostics import PolicyError
from engine.runtime.embedder import Embedder
from engine.tools.explain import render_markup
from engine.tools.testing import CaseResult, Coverage, RunResult, compile_with_tests, run_tests


@click.command("test")
@click.argument("policy", required=False, type=click.Path(path_type=Path))
@click.option(
    "--coverage",
    "show_coverage",
    is_flag=True,
    help="Also list the rules no expect was decided by, the task patterns no prompt matched and the examples of "
    "semantic tasks that were never the nearest to any prompt.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results (and coverage) as JSON.")
@click.option(
    "-k",
    "pattern",
    metavar="PATTERN",
    help="Run only expects whose test name or prompt contains PATTERN (case-insensitive).",
)
@today_option
@extension_options
def test_command(
    policy: Path | None,
    show_coverage: bool,
    as_json: bool,
    pattern: str | None,
    today: datetime.date | None,
    functions: Any,
    rankers: Any,
    embedder: Embedder | None,
) -> None:
    """Run the policy's tests: `test` blocks in the policy and in *_test.route files beside it.

    Each `expect` is one case. A failure shows the explain of what happened instead. The last line is
    `N passed, N failed`. Exit 0 when every case passes, 1 on a failure or a policy error, 2 on usage errors.

    \b
    Examples:
      modelroute test
      modelroute test policies/ --coverage
      modelroute test policies/main_test.route -k legal
      modelroute test --json
      modelroute test --functions myrouting:FUNCTIONS (a policy that calls complexity())
      modelroute test --embedder myrouting:embed (semantic tasks embedded by your own embedder)
    """
    path = policy_or_default(policy)
    try:
        compiled, files = compile_with_tests(path, today=today, functions=functions, rankers=rankers, embedder=embedder)
    except PolicyError as err:
        exit_on_policy_error(err, as_json)
    result = run_tests(compiled, pattern, tuple(files))
    if pattern is not None and result.total and not result.cases:
        raise click.UsageError(f"-k {pattern!r} matched none of the {result.total} expects")
    if as_json:
        click.echo(json.dumps(result.to_dict(coverage=show_coverage), indent=2))
    else:
        _print(result, show_coverage)
    sys.exit(EXIT_ERRORS if result.failed else EXIT_OK)


def _print(result: RunResult, show_coverage: bool) -> None:
    console = _console()
    if not result.total:
        console.print(
            f"no tests in {escape(result.policy.entry)}: write `test` blocks in the policy or in "
            "*_test.route files beside it (see docs/test.md)"
        )
    block = None
    for case in result.cases:
        if case.test != block:
            block = case.test
            console.print(f"[bold]test[/] {escape(_quote(case.test))}")
        console.print(_case(case))
    if show_coverage:
        console.print()
        console.print(_coverage(result.coverage))
    console.print()
    console.print(f"{result.passed} passed, {result.failed} failed", markup=False, highlight=False)


def _case(c: CaseResult) -> str:
    at = f"{c.span.file}:{c.span.line}"
    if c.passed:
        return f"  [green]PASS[/]  [cyan]{escape(at)}[/]  {escape(c.source)}"
    lines = [f"  [bold red]FAIL[/]  [cyan]{escape(at)}[/]  {escape(c.source)}"]
    lines += [f"        [red]{escape(p)}[/]" for p in c.problems]
    if c.report is not None:
        lines.append(f"        got {escape(c.actual())}; what happened:")
        lines += [f"          {line}" if line else "" for line in render_markup(c.report).splitlines()]
    return "\n".join(lines)


def _coverage(cov: Coverage) -> str:
    rules_hit = cov.rules - len(cov.unused_rules)
    pats_hit = cov.patterns - len(cov.unused_patterns)
    lines = [
        f"[bold]coverage[/]  {rules_hit}/{cov.rules} rules decided some expect, "
        f"{pats_hit}/{cov.patterns} patterns matched some prompt"
        + (
            f", {cov.examples - len(cov.unused_examples)}/{cov.examples} examples were the nearest to some prompt"
            if cov.examples
            else ""
        )
    ]
    if cov.unused_rules:
        lines.append("  rules no expect exercised:")
        lines += [f"    [cyan]{escape(at)}[/]  rule {i + 1}  {escape(text)}" for i, at, text in cov.unused_rules]
    if cov.unused_patterns:
        lines.append("  patterns no prompt matched:")
        lines += [
            f"    [cyan]{escape(at)}[/]  {escape(pat)}  [dim]({escape(where)})[/]"
            for pat, at, where in cov.unused_patterns
        ]
    if cov.unused_examples:
        lines.append("  examples never the nearest to a prompt:")
        lines += [
            f"    [cyan]{escape(at)}[/]  {escape(_quote(text))}  [dim]({escape(where)})[/]"
            for text, at, where in cov.unused_examples
        ]
    return "\n".join(lines)


def _quote(name: str) -> str:
    return json.dumps(name, ensure_ascii=False)  # quotes, backslashes, tabs and newlines escaped
