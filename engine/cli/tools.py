"""Toolchain commands `fmt`, `diff`, `graph` and `catalog`: click commands that `engine.cli` adds to `modelroute`."""

from __future__ import annotations

import datetime
import difflib
import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import JustifyMethod
from rich.markup import escape
from rich.table import Table

from engine.api import Engine
from engine.cli.common import (
    EXIT_ERRORS,
    _console,
    exit_on_policy_error,
    policy_or_default,
    print_diagnostics,
    read_stdin,
)
from engine.cli.options import extension_options, today_option
from engine.compiler.passes import as_date
from engine.diagnostics import PolicyError, Sources, did_you_mean
from engine.language.load import display_name
from providers.catalog import KNOWN_FEATURES

# ---- fmt --------------------------------------------------------------------------------------------------


def _route_files(paths: tuple[Path, ...]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(
                sorted(
                    f for f in p.rglob("*.route") if not any(part.startswith(".") for part in f.relative_to(p).parts)
                )
            )
        elif p.is_file():
            files.append(p)
        else:
            raise click.BadParameter(f"{p}: no such file or directory", param_hint="FILES")
    return list(dict.fromkeys(files))


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if any file is not formatted.")
@click.option("--diff", "show_diff", is_flag=True, help="Write nothing; print a unified diff of the changes.")
def fmt(paths: tuple[Path, ...], check: bool, show_diff: bool) -> None:
    """Rewrite .route files in the one canonical layout (comments kept).

    FILES are .route files or directories (searched recursively); the default is the current directory.
    `-` formats standard input to standard output. A file that does not parse is reported and left alone.
    Exit codes: 0 ok, 1 a file would change (--check) or does not parse, 2 usage errors.

    \b
    Examples:
      modelroute fmt policies/
      modelroute fmt --check policies/        # in CI
      modelroute fmt --diff policies/main.route
      cat main.route | modelroute fmt -
    """
    from engine.language.fmt import FmtError, format_source

    err = _console(stderr=True)
    if paths == (Path("-"),):
        source = read_stdin()
        try:
            click.echo(format_source(source, "<stdin>"), nl=False)
        except PolicyError as exc:
            print_diagnostics(exc, err)
            sys.exit(EXIT_ERRORS)
        except FmtError as exc:
            err.print(f"[bold red]error[/]: {escape(str(exc))}")
            sys.exit(EXIT_ERRORS)
        return
    files = _route_files(paths or (Path("."),))
    changed, failed = [], 0
    for path in files:
        shown = display_name(path)
        try:
            source = path.read_text(encoding="utf-8-sig")  # a byte order mark is dropped, as parse() does
            out = format_source(source, shown)
        except (OSError, UnicodeDecodeError) as exc:
            err.print(f"[bold red]error[/]: cannot read {escape(shown)}: {escape(str(exc))}")
            failed += 1
            continue
        except PolicyError as exc:
            print_diagnostics(exc, err)
            err.print(f"{escape(shown)} left unchanged: it does not parse")
            failed += 1
            continue
        except FmtError as exc:
            err.print(f"[bold red]error[/]: {escape(str(exc))} (this is a bug in modelroute fmt)")
            failed += 1
            continue
        if out == source:
            continue
        changed.append(shown)
        if show_diff:
            click.echo(
                "".join(
                    difflib.unified_diff(
                        source.splitlines(True), out.splitlines(True), f"{shown} (original)", f"{shown} (formatted)"
                    )
                ),
                nl=False,
            )
        elif check:
            click.echo(f"would reformat {shown}")
        else:
            path.write_text(out, encoding="utf-8")
            click.echo(f"formatted {shown}")
    verb = "would be reformatted" if (check or show_diff) else "reformatted"
    err.print(
        f"{len(changed)} file{'s' if len(changed) != 1 else ''} {verb}, "
        f"{len(files) - len(changed) - failed} unchanged" + (f", {failed} with errors" if failed else "")
    )
    if failed or (check and changed):
        sys.exit(EXIT_ERRORS)


# ---- diff -------------------------------------------------------------------------------------------------


@click.command("diff")
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option(
    "--prompts",
    "prompts",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help='JSONL: one request per line, {"prompt": "..."} or {"messages": [...]}, plus "attrs": {...}.',
)
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@click.option("--fail-on-change", is_flag=True, help="Exit 1 if any decision changed (for CI).")
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(min=0),
    help="Changed requests to list in the text report.",
)
@today_option
@extension_options
def diff_cmd(
    old: Path,
    new: Path,
    prompts: Path,
    as_json: bool,
    fail_on_change: bool,
    limit: int,
    today: datetime.date | None,
    **python: Any,
) -> None:
    """Compare the decisions of two policies on a corpus of requests.

    Reports which decisions change, from which model to which, by which rules (old file:line -> new
    file:line), requests with no route on either side, and the projected cost change from catalog prices.
    Exit codes: 0 (also when decisions changed, unless --fail-on-change), 1 policy errors or a change with
    --fail-on-change, 2 usage errors (e.g. a bad prompts file).

    \b
    Examples:
      modelroute diff policies-old/ policies/ --prompts traffic.jsonl
      modelroute diff old.route new.route --prompts traffic.jsonl --fail-on-change
      modelroute diff old.route new.route --prompts traffic.jsonl --json | jq .transitions
      modelroute diff old.route new.route --prompts traffic.jsonl --embedder myrouting:embed
    """
    from engine.tools.diff import CorpusError, diff_policies, read_corpus, render_text

    try:
        corpus = read_corpus(prompts)
    except CorpusError as exc:
        raise click.BadParameter(str(exc), param_hint="--prompts") from None
    old_engine, new_engine = _load_pair(old, new, as_date(today), python, as_json)  # one date for both sides
    try:
        result = diff_policies(old_engine, new_engine, corpus)
    except CorpusError as exc:
        raise click.BadParameter(str(exc), param_hint="--prompts") from None
    if as_json:
        click.echo(result.to_json())
    else:
        click.echo(render_text(result, limit=limit))
    if fail_on_change and result.changed:
        sys.exit(EXIT_ERRORS)


def _load_pair(
    old: Path, new: Path, today: datetime.date, python: dict[str, Any], as_json: bool = False
) -> tuple[Engine, Engine]:
    """Both engines, compiled for one date with the same `python` (--functions, --rankers, --embedder), reporting
    the diagnostics of both policies (as one JSON object with `as_json`, as check --json does) before failing."""
    engines: list[Engine] = []
    errors: list[PolicyError] = []
    for path in (old, new):
        try:
            engines.append(Engine.load(path, today=today, **python))
        except PolicyError as exc:
            errors.append(exc)
    if errors:
        sources = Sources({name: text for err in errors for name, text in err.sources.texts.items()})
        unique = {json.dumps(d.to_dict(), sort_keys=True): d for err in errors for d in err.diagnostics}  # old == new
        exit_on_policy_error(PolicyError(list(unique.values()), sources), as_json)
    return engines[0], engines[1]


# ---- graph ------------------------------------------------------------------------------------------------


@click.command()
@click.argument("policy", required=False, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt_",
    type=click.Choice(["mermaid", "dot"]),
    default="mermaid",
    show_default=True,
    help="Mermaid flowchart (renders in GitHub markdown) or Graphviz DOT.",
)
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Write to a file.")
@today_option
@extension_options
def graph(policy: Path | None, fmt_: str, output: Path | None, today: datetime.date | None, **python: Any) -> None:
    """Draw the compiled decision structure: rules in order, each condition -> selector -> model(s) and
    fallbacks; `no` (or no viable model) goes on to the next rule, and after the last rule, no route.

    \b
    Examples:
      modelroute graph                            # mermaid, for a README or a PR comment
      modelroute graph policies/ --format dot | dot -Tsvg > policy.svg
      modelroute graph -o policy.mmd
    """
    from engine.tools.graph import to_dot, to_mermaid

    compiled = Engine.load(policy_or_default(policy), today=today, **python).policy
    text = to_dot(compiled) if fmt_ == "dot" else to_mermaid(compiled)
    if output is not None:
        if output.resolve() in {Path(f).resolve() for f in (compiled.entry, *compiled.files)}:
            raise click.BadParameter(
                f"{output} is a file of the policy being drawn: writing the graph would overwrite it",
                param_hint="-o/--output",
            )
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(
                f"cannot write {output}: {exc.strerror or exc}", param_hint="-o/--output"
            ) from None
        click.echo(f"wrote {output}")
    else:
        click.echo(text, nl=False)


# ---- catalog ----------------------------------------------------------------------------------------------

_SORTS = ("name", "price", "context", "latency")


def _model_rows(policy_path: Path) -> tuple[list[dict[str, Any]], Any]:
    from engine.language.load import load
    from engine.language.nodes import ModelAlias

    engine = Engine.load(policy_path)
    catalog = engine.policy.catalog
    aliases: dict[str, list[str]] = {}
    for name, target in catalog.aliases.items():
        aliases.setdefault(target, []).append(name)
    for stmt in load(policy_path).body:  # the policy's own `model NAME = ...` aliases
        if isinstance(stmt, ModelAlias):
            spec = catalog.resolve(stmt.target.name)
            if spec is not None:
                aliases.setdefault(spec.name, []).append(stmt.name)
    rows = []
    for spec in catalog:
        rows.append(
            {
                "name": spec.name,
                "provider": spec.provider,
                "context": spec.context,
                "max_output": spec.max_output,
                "input_per_1m": round(spec.input_price * 1e6, 6),
                "output_per_1m": round(spec.output_price * 1e6, 6),
                "latency_ms": spec.latency_ms,
                "capabilities": dict(spec.capabilities),
                "supports": sorted(spec.supports),
                "aliases": aliases.get(spec.name, []),
                "deprecation_date": spec.deprecation_date.isoformat() if spec.deprecation_date else None,
            }
        )
    return rows, catalog


def _count(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000:
        return f"{n / 1000:g}k" if n % 1000 == 0 else f"{n / 1000:.1f}k"
    return str(n)


@click.command()
@click.argument("policy", required=False, type=click.Path(path_type=Path))
@click.option("--provider", "providers", multiple=True, help="Only models of this provider (repeatable).")
@click.option("--supports", "features", multiple=True, help="Only models that support this (tools, vision, json).")
@click.option(
    "--sort",
    "sort",
    default="name",
    show_default=True,
    metavar="price|context|latency|CAPABILITY",
    help="Sort by input price (cheapest first), context (largest first), latency (fastest first) or "
    "a capability score (best first).",
)
@click.option("--limit", type=int, help="Show at most this many models.")
@click.option("--json", "as_json", is_flag=True, help="Print the models as JSON.")
def catalog(
    policy: Path | None,
    providers: tuple[str, ...],
    features: tuple[str, ...],
    sort: str,
    limit: int | None,
    as_json: bool,
) -> None:
    """List the effective model catalog of a policy (its `catalog` statements merged, aliases included).

    \b
    Examples:
      modelroute catalog
      modelroute catalog policies/ --supports tools --sort price
      modelroute catalog --provider anthropic --sort CODING
      modelroute catalog --json | jq '.[].name'
    """
    try:
        rows, cat = _model_rows(policy_or_default(policy))
    except PolicyError as err:
        exit_on_policy_error(err, as_json)
    if providers:
        known = {r["provider"] for r in rows}
        for p in providers:
            if p not in known:
                hint = did_you_mean(p, known) or "providers: " + ", ".join(sorted(known))
                raise click.BadParameter(f"no model has provider {p!r}; {hint}", param_hint="--provider")
        rows = [r for r in rows if r["provider"] in providers]
    for feature in features:
        known_features = {f for r in rows for f in r["supports"]} | set(KNOWN_FEATURES)
        if feature.lower() not in known_features:
            hint = did_you_mean(feature.lower(), known_features) or "features: " + ", ".join(sorted(known_features))
            raise click.BadParameter(f"no model supports {feature!r}; {hint}", param_hint="--supports")
        rows = [r for r in rows if feature.lower() in r["supports"]]
    rows = _sorted(rows, sort, cat.capability_names())
    if limit is not None:
        rows = rows[: max(limit, 0)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _print_table(rows, sort)


def _sorted(rows: list[dict[str, Any]], sort: str, capabilities: frozenset[str]) -> list[dict[str, Any]]:
    key = sort.lower()
    if key == "name":
        return sorted(rows, key=lambda r: r["name"])
    if key == "price":
        return sorted(rows, key=lambda r: (r["input_per_1m"], r["output_per_1m"], r["name"]))
    if key == "context":
        return sorted(rows, key=lambda r: (-r["context"], r["name"]))
    if key == "latency":
        return sorted(rows, key=lambda r: (r["latency_ms"], r["name"]))
    cap = sort.upper()
    if cap not in capabilities:
        options = [*_SORTS, *sorted(capabilities)]
        hint = did_you_mean(sort, options) or "sort by " + ", ".join(options)
        raise click.BadParameter(
            f"{sort!r} is not a sort key or a capability any model scores; {hint}", param_hint="--sort"
        )
    return sorted(rows, key=lambda r: (-(r["capabilities"].get(cap) or 0), r["name"]))


def _print_table(rows: list[dict[str, Any]], sort: str) -> None:
    table = Table(show_edge=False, header_style="bold", pad_edge=False)
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("name", "left"),
        ("provider", "left"),
        ("context", "right"),
        ("$ in/1M", "right"),
        ("$ out/1M", "right"),
        ("latency", "right"),
        ("capabilities", "left"),
        ("supports", "left"),
        ("aliases", "left"),
    )
    for col, justify in columns:
        table.add_column(col, justify=justify, no_wrap=col in ("name", "provider"))
    first = sort.upper()
    deprecated = 0
    for r in rows:
        caps = sorted(r["capabilities"].items(), key=lambda kv: (kv[0] != first, kv[0]))
        name = escape(r["name"])
        if r["deprecation_date"]:
            deprecated += 1
            name = f"[yellow]{name}[/]"
        table.add_row(
            name,
            escape(r["provider"]),
            _count(r["context"]),
            f"{r['input_per_1m']:g}",
            f"{r['output_per_1m']:g}",
            f"{r['latency_ms']:g}ms",
            escape(" ".join(f"{k} {v:g}" for k, v in caps)),
            escape(", ".join(r["supports"])),
            escape(", ".join(r["aliases"])),
        )
    console = _console()
    console.print(table)
    note = f"; [yellow]yellow[/]: {deprecated} with a deprecation date (see --json)" if deprecated else ""
    console.print(f"[dim]{len(rows)} model{'s' if len(rows) != 1 else ''}, sorted by {escape(sort)}[/]{note}")
