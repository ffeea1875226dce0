"""What every command shares: the default policy (a given path or none in, the policy path to use out), `--attr
KEY=VALUE` parsing, rendered policy diagnostics on a rich console, and the exit codes (the shared options: options.py).

Exit codes: 0 ok; 1 the input does not pass (a policy error, a failing check or test, no route, a changed
decision with --fail-on-change, a gateway that cannot listen); 2 usage (bad options or option values, files
given as options that cannot be read or parsed); 3 a bug in modelroute (an internal error); 130 Ctrl-C."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape

from engine.api import DECIDE_ARGUMENTS
from engine.diagnostics import PolicyError, Sources, render
from engine.language.load import bundled_policy_dir, resolve_entry
from engine.runtime.jsoninput import TooDeepError, load_json
from engine.runtime.policy import not_an_attribute

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_BUG = 0, 1, 2, 3


def _console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=True, no_color=bool(os.environ.get("NO_COLOR")))


def default_policy() -> Path:
    """The policy a command uses when given none: ./main.route, else ./policies/main.route, else the bundled one."""
    if Path("main.route").is_file():
        return Path("main.route")
    if (Path("policies") / "main.route").is_file():
        return Path("policies")
    return bundled_policy_dir()


def policy_or_default(given: Path | None) -> Path:
    """`given`, or the default policy, which every command finds this way and names in one line on stderr
    (stdout stays clean for --json)."""
    if given is not None:
        return given
    path = default_policy()
    entry = resolve_entry(path)
    shown = f"{entry} (bundled)" if entry.is_absolute() else f"./{entry.as_posix()}"
    click.echo(f"using policy {shown}", err=True)
    return path


def read_stdin() -> str:
    """All of standard input (`-` as a file or prompt); a usage error when there is none to read (a daemon, `<&-`)."""
    if sys.stdin is None:
        raise click.UsageError("stdin is closed: pass the text as an argument or a file instead of `-`")
    return sys.stdin.read()


def parse_attr(item: str) -> tuple[str, Any]:
    """`k=v` from the command line: v as JSON when it parses (true, 3, 0.5, ["a"]), else as a string."""
    if "=" not in item:
        raise click.BadParameter(f"expected key=value, got {item!r}", param_hint="--attr")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise click.BadParameter(f"empty attribute name in {item!r}", param_hint="--attr")
    if key in DECIDE_ARGUMENTS:
        raise click.BadParameter(
            f"`{key}` is the request itself, not an attribute: give the prompt as an argument, -f or --messages",
            param_hint="--attr",
        )
    why = not_an_attribute(key)
    if why is not None:
        raise click.BadParameter(why, param_hint="--attr")
    try:
        value = load_json(raw)
    except TooDeepError as exc:
        raise click.BadParameter(f"the value of {key} is {exc}", param_hint="--attr") from None
    except ValueError:
        value = raw
    return key, value


def print_diagnostics(err: PolicyError, console: Console) -> None:
    sources = err.sources if isinstance(err.sources, Sources) else Sources()
    for i, diag in enumerate(err.diagnostics):
        if i:
            console.print()
        text = escape(render(diag, sources))
        head, _, rest = text.partition("\n")
        color = "red" if diag.is_error else "yellow"
        console.print(f"[bold {color}]{head}[/]" + (f"\n{rest}" if rest else ""))
    errors = sum(1 for d in err.diagnostics if d.is_error)
    console.print(f"\n[bold red]{errors} error{'s' if errors != 1 else ''}[/]")


def exit_on_policy_error(err: PolicyError, as_json: bool = False) -> NoReturn:
    """Report a policy that does not compile (JSON on stdout, or rendered diagnostics on stderr) and exit 1."""
    if as_json:
        click.echo(err.to_json())
    else:
        print_diagnostics(err, _console(stderr=True))
    sys.exit(EXIT_ERRORS)
