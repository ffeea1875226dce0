"""Command-line options that several commands share: the option text in (`--today YYYY-MM-DD`, `-p POLICY`,
`--functions` / `--rankers` / `--embedder MODULE:NAME`), the value a command is called with out (a date, a path,
checked read-only mappings of functions, an embedder callable), or click.BadParameter (exit 2, no traceback)."""

from __future__ import annotations

import datetime
import importlib
import os
import sys
from pathlib import Path
from typing import Any, cast

import click

from engine.options import extension_functions
from engine.runtime.embedder import Embedder

__all__ = ["embedder_option", "extension_options", "policy_option", "today_option"]


def _to_date(ctx: click.Context, param: click.Parameter, value: datetime.datetime | None) -> datetime.date | None:
    return value.date() if value is not None else None


#: `--today YYYY-MM-DD`, shared by every command that compiles a policy for an answer (check, explain, test, diff,
#: graph): the date deprecations count from, instead of the date now.
today_option = click.option(
    "--today",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    metavar="YYYY-MM-DD",
    callback=_to_date,
    help="Compile as if it were this date (default: today): `prefer` skips models deprecated on or before it, "
    "and check warns (W108) about those deprecated within 30 days of it.",
)


def _import_attr(value: str, what: str) -> Any:
    """NAME of importable MODULE from `MODULE:NAME` (the working directory is searched first); click.BadParameter
    (exit 2, no traceback) when it is not written so or cannot be imported. `what` says what NAME should be."""
    module, sep, name = value.partition(":")
    if not (sep and module and name):
        raise click.BadParameter(f"write MODULE:NAME ({what} in an importable module), not {value!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return getattr(importlib.import_module(module), name)
    except Exception as exc:  # any import problem is the user's: say which, no traceback
        raise click.BadParameter(f"cannot load {value}: {type(exc).__name__}: {exc}") from None


def _extensions(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """`--functions MODULE:NAME` / `--rankers MODULE:NAME`: the dict NAME of an importable module (the working
    directory is searched first), checked as Engine.load checks it; None when the option is not given."""
    if value is None:
        return None
    found = _import_attr(value, "a dict")
    try:
        return extension_functions(str(param.name), found)
    except TypeError as exc:
        raise click.BadParameter(str(exc)) from None


def _embedder(ctx: click.Context, param: click.Parameter, value: str | None) -> Embedder | None:
    """`--embedder MODULE:NAME`: the embedder NAME of an importable module (the working directory is searched
    first), a callable taking a list of texts and returning one vector per text, as `Engine.load(embedder=)`
    takes it; None when the option is not given (the default embedder)."""
    if value is None:
        return None
    found = _import_attr(value, "a callable")
    if not callable(found):
        raise click.BadParameter(
            f"{value} is not callable ({type(found).__name__}): give a function taking a list of texts and "
            "returning one vector per text"
        )
    return cast("Embedder", found)


#: `--embedder MODULE:NAME`, shared by every command that compiles a policy (explain, check, test, diff, graph,
#: warmup, serve): the embedder of the policy's semantic tasks (`like`), instead of the default (WordLlama).
embedder_option = click.option(
    "--embedder",
    metavar="MODULE:NAME",
    callback=_embedder,
    help="The embedder of semantic tasks (`like`): the callable NAME of importable MODULE, a list of texts in, "
    "one vector per text out (e.g. myrouting:embed; default: WordLlama).",
)


#: `-p/--policy`: which policy a command reads (policy_or_default resolves the default).
policy_option = click.option(
    "-p",
    "--policy",
    "policy",
    type=click.Path(path_type=Path),
    help="A .route file or a directory with main.route (default: ./main.route, else ./policies, else the bundled one).",
)


def extension_options(command: Any) -> Any:
    """The `--functions`, `--rankers` and `--embedder` options: the Python functions, rankers and embedder a
    policy uses."""
    command = embedder_option(command)
    command = click.option(
        "--rankers",
        metavar="MODULE:NAME",
        callback=_extensions,
        help="The rankers `prefer custom(NAME)` calls: the dict NAME of importable MODULE.",
    )(command)
    return click.option(
        "--functions",
        metavar="MODULE:NAME",
        callback=_extensions,
        help="The Python functions the policy calls (`complexity()`): the dict NAME of importable MODULE "
        "(e.g. myrouting:FUNCTIONS).",
    )(command)
