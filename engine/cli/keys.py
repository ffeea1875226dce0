"""The `modelroute keys` commands (add, revoke, list): command-line options in, the gateway keys file edited
atomically through providers/gateway/keyfile.py (imported when a command runs) and a new key (printed once) or
a table of keys (never a key or its digest) out; `add` checks its `--model` names against a policy's catalog."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from engine.cli.common import EXIT_ERRORS, EXIT_USAGE, default_policy
from engine.diagnostics import did_you_mean
from engine.language.literals import LITERAL_PATTERNS, count_value
from engine.language.load import display_name

if TYPE_CHECKING:
    from types import ModuleType

_wall = time.time  # the wall clock: expiry is judged by it (tests replace it)

keys_file_option = click.option(
    "--keys",
    "keys_file",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="MODELROUTE_KEYS",
    default="keys.yaml",
    show_default=True,
    help="The gateway keys file, as given to `modelroute serve --keys` (env MODELROUTE_KEYS).",
)


class PerMinute(click.ParamType):
    """A whole number above 0, written as the policy language writes a count (`60`, `10k`, `1.5M`), as in
    `limit 100k tpm`."""

    name = "N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value).strip()
        number = count_value(text) if re.fullmatch(LITERAL_PATTERNS["count"], text) else 0.0
        if number < 1 or number != int(number):
            self.fail(f"{value!r} is not a whole number above 0, like 60, 10k or 1M", param, ctx)
        return int(number)


def _keyfile() -> ModuleType:
    """The keys-file editor of the gateway (the command's one edge into providers/gateway, taken when it runs)."""
    from providers.gateway import keyfile

    return keyfile


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(EXIT_USAGE if getattr(exc, "usage", False) else EXIT_ERRORS)


def _attr(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise click.BadParameter(f"`{text}` is not NAME=VALUE", param_hint="--attr")
    try:
        value: Any = json.loads(raw)  # numbers, true/false, null and "quoted" text are JSON
    except ValueError:
        value = raw  # anything else is text: --attr tier=pro
    return name.strip(), value


def _budget(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip().lstrip("$"))
    except ValueError:
        raise click.BadParameter(
            f"`{text}` is not an amount of USD, like 5 or $5.00", param_hint="--daily-budget"
        ) from None
    if not value >= 0 or value == float("inf"):
        raise click.BadParameter("must be a finite amount of USD, 0 or more", param_hint="--daily-budget")
    return value


@click.group()
def keys() -> None:
    """Add, revoke and list the gateway's keys (the file `modelroute serve --keys FILE` follows).

    \b
    The file is edited atomically and the running gateway applies the change within 0.25 s, with no restart.
    A new key is printed once: only its sha256 is stored.

    \b
    Examples:
      modelroute keys add team-a --attr tier=pro --policy auto --expires 2026-12-31 --daily-budget 5
      modelroute keys add bot --model gpt-4o-mini --rpm 60 --keys /etc/modelroute/keys.yaml
      modelroute keys add bot --model gpt-4o-mini --catalog-of policies/   # refuse a model it does not list
      modelroute keys list --json
      modelroute keys revoke team-a
    """


def _catalog_of(policy: Path) -> tuple[Any, bool] | str:
    """The catalog of `policy` (its `catalog` statements, else the bundled one) and whether it allows ad-hoc
    `provider:model` names (`set adhoc_models = true`); a sentence saying why not when the policy does not load.
    Only the statements are read: no compile, so no embedder runs."""
    from engine.compiler.context import Context
    from engine.compiler.declarations import pass_catalog
    from engine.compiler.passes import current_date
    from engine.language.load import load

    loaded = load(policy)
    ctx = Context(loaded=loaded, today=current_date(), diagnostics=list(loaded.diagnostics))
    if ctx.ok:
        pass_catalog(ctx)
    first = next((d for d in ctx.diagnostics if d.is_error), None)
    if first is not None or ctx.catalog is None:
        why = f"{first.code} {first.message}" if first is not None else "no catalog"
        return f"{display_name(policy)} does not load ({why}): run `modelroute check {display_name(policy)}`"
    return ctx.catalog, ctx.adhoc_allowed


def _unknown_models(models: tuple[str, ...], catalog: Any, adhoc: bool) -> list[tuple[str, str | None]]:
    """The `--model` names the gateway would never match, each with a "did you mean" (or None). A key lists
    canonical catalog names or catalog aliases (providers/gateway/keyfields.py `canonical_models`), or, when the
    policy allows ad-hoc models, `provider:model` of a known provider that the catalog does not list."""
    from engine.runtime.qualified import known_providers, resolve_qualified, split_name

    out = []
    for model in models:
        if model in catalog.models or model in catalog.aliases:
            continue
        parts = split_name(model)
        listed = resolve_qualified(catalog, model) if parts is not None else None
        if parts is not None and listed is None and adhoc and parts[0] in known_providers(catalog):
            continue
        hint = f"did you mean {listed.name}?" if listed is not None else did_you_mean(model, catalog.names())
        out.append((model, hint))
    return out


def _check_models(name: str, models: tuple[str, ...], policy: Path | None) -> None:
    """Refuse (exit 1, the file unchanged) `--model` names that the catalog of `--catalog-of POLICY` does not
    list. Without that option the keys command cannot know which policy the gateway serves: names that the default
    policy's catalog does not list are only warned about."""
    if not models:
        return
    given = policy is not None
    path = policy if policy is not None else default_policy()
    found = _catalog_of(path)
    if isinstance(found, str):
        if given:
            click.echo(f"error: --catalog-of: {found} (the keys file is unchanged)", err=True)
            sys.exit(EXIT_USAGE)
        click.echo(f"warning: --model names not checked: the default policy {found}", err=True)
        return
    shown = display_name(path)
    unknown = _unknown_models(models, *found)
    for model, hint in unknown:
        help_text = hint or f"`modelroute catalog {shown}` lists its models"
        if given:
            click.echo(
                f"error: key `{name}`: --model {model} is not a model of the catalog of {shown}: {help_text} "
                "(the keys file is unchanged)",
                err=True,
            )
        else:
            click.echo(
                f"warning: --model {model} is not a model of the catalog of the default policy {shown}: {help_text}; "
                "if the gateway serves another policy, pass it as --catalog-of POLICY to check against its catalog",
                err=True,
            )
    if given and unknown:
        sys.exit(EXIT_ERRORS)


@keys.command("add")
@click.argument("name")
@keys_file_option
@click.option("--attr", "attrs", multiple=True, metavar="NAME=VALUE", help="Bind a request attribute (repeat).")
@click.option(
    "--policy", "policies", multiple=True, metavar="POLICY", help="A policy it may use (repeat; default: all)."
)
@click.option("--model", "models", multiple=True, metavar="MODEL", help="A model it may use (repeat; default: all).")
@click.option(
    "--catalog-of",
    "catalog_of",
    type=click.Path(path_type=Path),
    metavar="POLICY",
    help="The policy the gateway serves: a --model its catalog does not list is refused (exit 1). Without it the "
    "names are checked against the default policy's catalog and only warned about.",
)
@click.option(
    "--expires",
    metavar="DATE",
    help="ISO 8601 date or datetime from which it is refused (a date: the end of that day UTC; no offset: UTC).",
)
@click.option("--rpm", type=PerMinute(), help="Requests per minute for this key (429 beyond it), like 60 or 1k.")
@click.option("--tpm", type=PerMinute(), help="Tokens per minute for this key (429 beyond it), like 100k or 1M.")
@click.option("--daily-budget", "daily_budget", metavar="$X", help="USD per UTC day for this key.")
@click.option("--json", "as_json", is_flag=True, help="Print name, key and file as JSON.")
def add(
    name: str,
    keys_file: Path,
    attrs: tuple[str, ...],
    policies: tuple[str, ...],
    models: tuple[str, ...],
    catalog_of: Path | None,
    expires: str | None,
    rpm: int | None,
    tpm: int | None,
    daily_budget: str | None,
    as_json: bool,
) -> None:
    """Add a key named NAME and print it (once: the file stores only its sha256)."""
    keyfile = _keyfile()
    if not name.strip() or any(c.isspace() or not c.isprintable() for c in name):
        raise click.BadParameter("a key name is printable text without spaces, like team-a", param_hint="NAME")
    _check_models(name, models, catalog_of)
    now = _wall()
    if expires is not None:
        try:
            instant = keyfile.parse_expires(expires)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--expires") from None
        if instant <= now:
            raise click.BadParameter(
                f"{expires} is already past (it ends at {keyfile.expires_text(instant)})", param_hint="--expires"
            )
    try:
        done = keyfile.add_key(
            keys_file,
            name,
            attributes=dict(_attr(a) for a in attrs),
            policies=list(policies) or None,
            models=list(models) or None,
            expires=expires,
            rpm=rpm,
            tpm=tpm,
            daily_budget=_budget(daily_budget),
            now=now,
        )
    except keyfile.KeyEditError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps({"name": name, "key": done.secret, "file": str(keys_file)}))
    else:
        click.echo(done.secret)
    click.echo(
        f"added gateway key `{name}` to {keys_file}" + (" (new file)" if done.created else "") + ": the key above is "
        "shown only this once (only its sha256 is stored); `modelroute serve --keys` applies it within 0.25 s",
        err=True,
    )
    _notes(done)


def _notes(done: Any) -> None:
    if not done.kept:
        click.echo(f"note: {done.path} was rewritten from its data: its comments were not kept", err=True)


@keys.command("revoke")
@click.argument("name")
@keys_file_option
def revoke(name: str, keys_file: Path) -> None:
    """Remove the key named NAME: the running gateway refuses it within 0.25 s."""
    keyfile = _keyfile()
    try:
        done = keyfile.revoke_key(keys_file, name)
    except keyfile.KeyEditError as exc:
        _fail(exc)
        return
    click.echo(f"revoked gateway key `{name}` in {keys_file}", err=True)
    _notes(done)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(value)
    if isinstance(value, dict):
        return ",".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in value.items()) or "-"
    if isinstance(value, float):
        return f"${value:.2f}"
    return str(value)


@keys.command("list")
@keys_file_option
@click.option("--json", "as_json", is_flag=True, help="Print the keys as a JSON list.")
def list_keys(keys_file: Path, as_json: bool) -> None:
    """List the keys: name, expiry, allowed policies and models, limits, budget, attributes (never the key or its
    digest)."""
    keyfile = _keyfile()
    try:
        rows = keyfile.key_rows(keyfile.read_keys(keys_file), _wall())
    except keyfile.KeyEditError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no keys in {keys_file}", err=True)
        return
    # one word per cell (the expiry state is a column of its own): `awk '{print $3}'` reads the same column per row
    head = ["NAME", "EXPIRES", "STATE", "POLICIES", "MODELS", "RPM", "TPM", "DAILY_BUDGET", "ATTRIBUTES"]
    table = [
        [
            r["name"],
            r["expires"] or "-",
            "expired" if r["expired"] else "active",
            _cell(r["policies"]),
            _cell(r["models"]),
            _cell(r["rpm"]),
            _cell(r["tpm"]),
            _cell(r["daily_budget"]),
            _cell(r["attributes"]),
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [head, *table]) for i in range(len(head))]
    for line in [head, *table]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
