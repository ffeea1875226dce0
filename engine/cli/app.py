"""Command line: the click group `main` (every failure in, a message and an exit code out), with `modelroute explain`
(dry-run a decision), `modelroute check` (compile and report) and `modelroute warmup` (probe each model); what every
command shares (the default policy, `--attr` parsing, diagnostics, the exit codes) is in common.py, the shared options
in options.py."""

from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from engine.api import Engine, RequestError
from engine.cli.common import (
    EXIT_BUG,
    EXIT_ERRORS,
    EXIT_OK,
    _console,
    exit_on_policy_error,
    parse_attr,
    policy_or_default,
    print_diagnostics,
    read_stdin,
)
from engine.cli.options import extension_options, policy_option, today_option
from engine.compiler.passes import as_date
from engine.diagnostics import PolicyError, render
from engine.language.load import display_name, resolve_entry
from engine.runtime.decision import NoRouteError
from engine.runtime.embedder import Embedder
from engine.runtime.jsoninput import TooDeepError, check_messages, load_json
from engine.runtime.report import Report
from engine.tools.explain import render_text


class _Group(click.Group):
    """Turns every failure into a message and an exit code: no traceback reaches the user."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except PolicyError as err:
            print_diagnostics(err, _console(stderr=True))
            ctx.exit(EXIT_ERRORS)
        except KeyboardInterrupt:
            ctx.exit(130)
        except Exception as exc:  # a bug: say so plainly
            if os.environ.get("MODELROUTE_DEBUG"):
                raise
            _console(stderr=True).print(
                f"[bold red]internal error[/]: {escape(type(exc).__name__)}: {escape(str(exc))}\n"
                "this is a bug in modelroute: please report it (rerun with MODELROUTE_DEBUG=1 for the traceback)"
            )
            ctx.exit(EXIT_BUG)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="modelroute", prog_name="modelroute")
def main() -> None:
    """modelroute: declarative routing of LLM requests.

    \b
    Examples:
      modelroute explain "Implement a function that merges two sorted lists" --attr tier=pro
      modelroute check policies/
    """


@main.command()
@policy_option
@click.argument("prompt", required=False)
@click.option(
    "-f", "--file", "prompt_file", type=click.Path(path_type=Path, dir_okay=False), help="Read the prompt from a file."
)
@click.option(
    "--messages",
    "messages_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Read OpenAI-format chat messages (a JSON list) from a file.",
)
@click.option(
    "-a",
    "--attr",
    "attrs",
    multiple=True,
    metavar="KEY=VALUE",
    help='A request attribute; VALUE is parsed as JSON when it can be (true, 3, "x"). Repeatable.',
)
@click.option("--json", "as_json", is_flag=True, help="Print the decision report as JSON (same as --format json).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "markdown", "html"]),
    default=None,
    help="Output format: text (default), json, markdown, or a self-contained html page.",
)
@click.option("--color/--no-color", default=None, help="Force colour on or off (default: on a terminal).")
@click.option("--watch", is_flag=True, help="Explain again every time a policy file is saved.")
@today_option
@extension_options
def explain(
    policy: Path | None,
    prompt: str | None,
    prompt_file: Path | None,
    messages_file: Path | None,
    attrs: tuple[str, ...],
    as_json: bool,
    fmt: str | None,
    color: bool | None,
    watch: bool,
    today: datetime.date | None,
    functions: Any,
    rankers: Any,
    embedder: Embedder | None,
) -> None:
    """Dry-run a decision and show why the model was chosen and why every other model lost.

    \b
    Examples:
      modelroute explain "Summarize this article" --attr tier=free
      modelroute explain -p policies/ -f prompt.txt --json
      cat prompt.txt | modelroute explain - --attr tools=true
      modelroute explain --watch "Summarize this" (re-runs on every save of the policy)
      modelroute explain "Fix this bug" --functions myrouting:FUNCTIONS (a policy that calls complexity())
      modelroute explain "Draft an NDA" --embedder myrouting:embed (semantic tasks with your own embedder)
    """
    if as_json and fmt not in (None, "json"):
        raise click.UsageError(f"--json conflicts with --format {fmt}: give one of them")
    given = [x for x in (prompt is not None, prompt_file is not None, messages_file is not None) if x]
    if len(given) > 1:
        raise click.UsageError("give the prompt once: as an argument, with -f FILE, - for stdin, or --messages")
    messages = None
    if prompt == "-":
        prompt = read_stdin()
    elif prompt_file is not None:
        prompt = _read(prompt_file)
    elif messages_file is not None:
        try:
            data = load_json(_read(messages_file))
        except TooDeepError as exc:
            raise click.BadParameter(f"{messages_file} is {exc}", param_hint="--messages") from None
        except ValueError as exc:
            raise click.BadParameter(f"{messages_file} is not JSON: {exc}", param_hint="--messages") from None
        try:
            messages = check_messages(data)
        except ValueError as exc:
            raise click.BadParameter(f"{messages_file}: {exc}", param_hint="--messages") from None
    elif prompt is None:
        raise click.UsageError("no prompt: pass PROMPT, -f FILE, - (stdin) or --messages FILE")
    attributes = dict(parse_attr(a) for a in attrs)
    path = policy_or_default(policy)
    console = _console()
    out = "json" if as_json else fmt or "text"

    def show(engine: Engine) -> bool:
        try:
            decision = _timed_decide(engine, prompt, messages, dict(attributes))
        except NoRouteError as err:
            click.echo(_render(err.report(), out, _use_color(console, color)), color=color)
            return False
        except RequestError as exc:
            raise click.BadParameter(str(exc), param_hint="--attr") from None
        click.echo(_render(decision.report(), out, _use_color(console, color)), color=color)
        return True

    python = {"functions": functions, "rankers": rankers, "embedder": embedder}  # --functions, --rankers, --embedder
    if watch:
        follow_policy(
            path, lambda compiled: show(Engine(compiled, path=path, today=today, **python)), console, today, **python
        )
        return
    try:
        engine = Engine.load(path, today=today, **python)
    except PolicyError as err:
        exit_on_policy_error(err, out == "json")
    if not show(engine):
        sys.exit(EXIT_ERRORS)


def follow_policy(
    path: Path,
    show: Any,
    console: Console,
    today: datetime.date | None = None,
    functions: Any = None,
    rankers: Any = None,
    embedder: Embedder | None = None,
) -> None:
    """Run `show(compiled_policy)` now and after every save (diagnostics instead while it does not compile).
    `today`: the date each compile counts deprecations from (None: the date of that compile); `functions` /
    `rankers` / `embedder`: what the policy's Python calls and semantic tasks use (--functions, --rankers,
    --embedder)."""
    from engine.reload import follow

    given: dict[str, Any] = {"functions": functions, "rankers": rankers, "embedder": embedder}
    shown = display_name(resolve_entry(path))
    try:
        for result in follow(path, today=today, **given):
            console.rule(f"{time.strftime('%H:%M:%S')} {shown}", style="dim")
            if isinstance(result, PolicyError):
                print_diagnostics(result, console)
            else:
                show(result)
            console.print(f"[dim]watching {shown} and the files it uses; Ctrl-C to stop[/]")
    except KeyboardInterrupt:
        return


def _render(report: Report, fmt: str, color: bool) -> str:
    if fmt == "json":
        return report.model_dump_json(indent=2)
    if fmt == "text":
        return render_text(report, color=color)
    from engine.tools import render  # markdown and html (jinja2 templates)

    return render.render_markdown(report) if fmt == "markdown" else render.render_html(report)


def _timed_decide(engine: Engine, prompt: str | None, messages: Any, attrs: dict[str, Any]):
    """Decide once, then repeat for ~20 ms to report a steady median time rather than a cold first call."""
    decision = engine.decide(prompt, messages=messages, **attrs)
    samples: list[int] = []
    deadline = time.perf_counter() + 0.02
    while len(samples) < 1000 and (time.perf_counter() < deadline or len(samples) < 5):
        samples.append(engine.decide(prompt, messages=messages, **attrs).elapsed_ns)
    decision.elapsed_ns = int(statistics.median(samples))
    return decision


def _use_color(console: Console, flag: bool | None) -> bool:
    if flag is not None:
        return flag
    return console.is_terminal and not os.environ.get("NO_COLOR")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


@main.command()
@click.argument("policy", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print diagnostics (errors and warnings) as JSON.")
@click.option("--strict", is_flag=True, help="Treat lint warnings as errors: exit 1 when there are any.")
@today_option
@click.option("--watch", is_flag=True, help="Check again every time a policy file is saved.")
@extension_options
def check(
    policy: Path | None,
    as_json: bool,
    strict: bool,
    today: datetime.date | None,
    watch: bool,
    functions: Any,
    rankers: Any,
    embedder: Embedder | None,
) -> None:
    """Compile a policy, lint it, and report every diagnostic. Exit 0 when clean, 1 on errors.

    Warnings (codes W100-W109, see docs/check.md) do not fail the check unless --strict is given.

    \b
    Examples:
      modelroute check
      modelroute check policies/main.route --json
      modelroute check --strict
      modelroute check --watch      (re-checks on every save)
      modelroute check --functions myrouting:FUNCTIONS --rankers myrouting:RANKERS
      modelroute check --embedder myrouting:embed   (semantic tasks embedded by your own embedder)
    """
    path = policy_or_default(policy)
    given = {"functions": functions, "rankers": rankers, "embedder": embedder}
    if watch:  # each compile, and the lint after it, count from `today` or else from the date of that compile
        report = lambda compiled: _report_check(compiled, path, as_json, strict, today)  # noqa: E731
        follow_policy(path, report, _console(), today, **given)
        return
    day = as_date(today)  # one date for the compile and the lint
    try:
        engine = Engine.load(path, today=day, **given)
    except PolicyError as err:
        exit_on_policy_error(err, as_json)
    sys.exit(_report_check(engine.policy, path, as_json, strict, day))


def _report_check(p: Any, path: Path, as_json: bool, strict: bool, today: datetime.date | None) -> int:
    """Lint a compiled policy and print the result; returns the exit code."""
    import dataclasses

    from engine.tools.lint import lint

    warnings = lint(p, today=today)
    if strict:
        warnings = [dataclasses.replace(w, severity="error") for w in warnings]
    failed = strict and bool(warnings)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": not failed,
                    "policy": p.entry,
                    "version": p.version,
                    "rules": len(p.rules),
                    "tasks": len(p.tasks),
                    "models": len(p.models),
                    "diagnostics": [w.to_dict() for w in warnings],
                },
                indent=2,
            )
        )
        return EXIT_ERRORS if failed else EXIT_OK
    if warnings:
        console = _console(stderr=True)
        for i, diag in enumerate(warnings):
            text = escape(render(diag, p.sources))
            head, _, rest = text.partition("\n")
            color = "red" if diag.is_error else "yellow"
            console.print(("\n" if i else "") + f"[bold {color}]{head}[/]" + (f"\n{rest}" if rest else ""))
        word = "error" if strict else "warning"
        console.print(
            f"\n[bold {'red' if strict else 'yellow'}]{len(warnings)} {word}{'s' if len(warnings) != 1 else ''}[/]"
        )
    if failed:
        return EXIT_ERRORS
    shown = display_name(resolve_entry(path))
    click.echo(
        f"ok: {shown} ({len(p.rules)} rules, {len(p.tasks)} tasks, {len(p.models)} models, "
        f"{len(p.files)} files, version {p.version})"
    )
    return EXIT_OK


@main.command()
@policy_option
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@extension_options
def warmup(policy: Path | None, as_json: bool, **python: Any) -> None:
    """Probe each model the policy uses once with a one-token request and print how each answered.

    A model whose provider has no API key (or whose circuit is open) is skipped. Exit 0 when no probe failed,
    1 when one did. `modelroute serve --warmup` does the same before serving and logs it.

    \b
    Examples:
      modelroute warmup -p policies/
      modelroute warmup --json
    """
    engine = Engine.load(policy_or_default(policy), **python)
    try:
        results = engine.warmup()
    finally:
        engine.close()
    if as_json:
        click.echo(json.dumps([vars(r) | {"ok": r.ok} for r in results], indent=2))
    else:
        from rich.table import Table

        table = Table("model", "provider", "status", "latency", "detail", box=None, pad_edge=False)
        colors = {"ok": "green", "failed": "red", "skipped": "yellow"}
        for r in results:
            latency = f"{r.latency_ms:.0f} ms" if r.latency_ms is not None else ""
            detail = " ".join(x for x in (r.error if r.status == "failed" else None, r.detail) if x)
            table.add_row(r.model, r.provider, f"[{colors[r.status]}]{r.status}[/]", latency, escape(detail))
        _console().print(table)
        count = {status: sum(r.status == status for r in results) for status in colors}
        click.echo(f"{len(results)} models: {count['ok']} ok, {count['failed']} failed, {count['skipped']} skipped")
    sys.exit(EXIT_ERRORS if any(r.status == "failed" for r in results) else EXIT_OK)
