"""Declaration passes: the loaded statements in, the catalog, the declarations sorted into the context and every
task pattern checked and numbered out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from engine.compiler.context import Context
from engine.language import nodes as n
from engine.language.load import display_name
from engine.runtime.matcher import FLAGS, check, to_re2
from providers.catalog.files import LARGE_FILE_BYTES, read_text
from providers.catalog.issues import CatalogError
from providers.catalog.loader import load_catalog
from providers.catalog.models import Catalog, default_catalog


def pass_catalog(ctx: Context) -> None:
    refs = [s for s in ctx.loaded.body if isinstance(s, n.CatalogRef)]
    if ctx.given_catalog is not None:
        ctx.catalog = ctx.given_catalog
        return
    catalog: Catalog | None = None
    for ref in refs:
        try:
            loaded = _load_catalog_ref(ref)
            if loaded is None:
                ctx.error(
                    "E202",
                    f"unknown catalog format `{ref.format}`",
                    ref.span,
                    "not a format",
                    "formats: litellm (LiteLLM's model_prices_and_context_window.json); "
                    "leave it out for modelroute YAML",
                )
                continue
        except CatalogError as err:
            for issue in err.issues:
                where = f" (at `{issue.key_path}`)" if issue.key_path else ""
                if issue.line:
                    span = n.Span(issue.file, issue.line, issue.col, issue.line, issue.col + 1)
                    ctx.error(
                        "E202", f"{issue.message}{where}", span, "", issue.hint, (f"catalog loaded by {ref.span}",)
                    )
                else:  # no position in the catalog (e.g. the file is missing): point at the `catalog` line
                    shown = display_name(Path(ref.path))
                    code = "E200" if not Path(issue.file or ref.path).exists() else "E202"
                    ctx.error(
                        code,
                        f"{issue.message}{where} ({shown})",
                        ref.span,
                        "catalog loaded here",
                        issue.hint or "catalog paths are relative to the policy file",
                    )
            continue
        catalog = loaded if catalog is None else catalog.merged(loaded)
        for f in loaded.files:
            if f not in ctx.loaded.files:
                ctx.loaded.files.append(f)
                try:
                    ctx.loaded.sources.add(f, read_text(f, LARGE_FILE_BYTES))
                except (OSError, UnicodeDecodeError):
                    pass
    if catalog is None and not refs:
        catalog = default_catalog()
    ctx.catalog = catalog


def _load_catalog_ref(ref: n.CatalogRef) -> Catalog | None:
    """Load one `catalog` statement's catalog (and overlay); None for an unknown format."""
    if ref.format is None:
        catalog = load_catalog(ref.path)
        return catalog if ref.overlay is None else catalog.merged(load_catalog(ref.overlay))
    if ref.format == "litellm":
        from providers.catalog.litellm import load_litellm

        return load_litellm(ref.path, overlay=ref.overlay)
    return None


def pass_declarations(ctx: Context) -> None:
    for stmt in ctx.loaded.body:
        if isinstance(stmt, n.TaskDecl):
            first = ctx.tasks.get(stmt.name)
            if first is not None:
                ctx.error(
                    "E303",
                    f"task `{stmt.name}` is declared twice",
                    stmt.name_span,
                    "declared again here",
                    "merge the patterns into one declaration",
                    (f"first declared at {first.name_span}",),
                )
            else:
                ctx.tasks[stmt.name] = stmt
        elif isinstance(stmt, n.ModelAlias):
            if ctx.catalog is None:
                continue
            if stmt.name in ctx.aliases:
                ctx.error(
                    "E304",
                    f"model alias `{stmt.name}` is declared twice",
                    stmt.name_span,
                    "declared again here",
                    "keep one declaration",
                )
                continue
            target = ctx.resolve_model(stmt.target)
            clash = ctx.catalog.resolve(stmt.name)
            if clash is not None and target is not None and clash.name != target:
                ctx.error(
                    "E304",
                    f"`{stmt.name}` already names catalog model `{clash.name}`",
                    stmt.name_span,
                    "name taken",
                    "pick another alias name",
                )
                continue
            if target is not None:
                ctx.aliases[stmt.name] = target
        elif isinstance(stmt, n.Rule):
            ctx.rules.append(stmt)
        elif isinstance(stmt, n.Setting):
            ctx.settings[stmt.name] = stmt  # a later `set` overrides an earlier one (e.g. from an include)
        elif isinstance(stmt, n.Budget):
            ctx.budgets.append(stmt)
        elif isinstance(stmt, n.RateLimit):
            ctx.limits.append(stmt)
        elif isinstance(stmt, n.TestBlock):
            ctx.tests.append(stmt)


def _patterns(ctx: Context) -> Iterator[n.Pattern]:
    for task in ctx.tasks.values():
        yield from task.patterns
    for rule in ctx.rules:
        if rule.cond is not None:
            for node in n.walk_cond(rule.cond):
                if isinstance(node, n.TaskMatch):
                    yield node.pattern


def pass_patterns(ctx: Context) -> None:
    sources = ctx.loaded.sources
    for pat in _patterns(ctx):
        line = sources.line(pat.span.file, pat.span.line) or ""
        raw = line[pat.span.col - 1 : pat.span.end_col - 1] if pat.span.end_line == pat.span.line else ""
        problem = check(pat, raw)
        if problem:
            code, message, offset, width = problem
            col = pat.span.col + offset if raw else pat.span.col
            span = n.Span(pat.span.file, pat.span.line, col, pat.span.line, col + width) if code != "E500" else pat.span
            hints = {
                "E500": "see https://github.com/google/re2/wiki/Syntax for the supported syntax",
                "E501": "a prompt is untrusted input, so policies only run linear-time (RE2) regexes; "
                "rewrite without it, or split it into several patterns",
                "E502": "flags: " + ", ".join(f"{k} ({v})" for k, v in FLAGS.items()),
            }
            ctx.error(code, message, span, "here", hints[code])
            continue
        src = to_re2(pat)
        if src not in ctx.pids:
            ctx.pids[src] = len(ctx.pids)
            ctx.pattern_text.append(_shown_pattern(pat))
            ctx.display.append(to_re2(pat, bounded=False))
        ctx.pattern_of[id(pat)] = ctx.pids[src]


def _shown_pattern(p: n.Pattern) -> str:
    return f"/{p.source}/{p.flags}" if p.is_regex else f'"{p.source}"'
