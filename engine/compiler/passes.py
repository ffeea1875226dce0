"""Compilation: loaded statements, a catalog and a date in, a CompiledPolicy (or every diagnostic) out, in named
passes. The date decides which models are past their deprecation date; `current_date()` is the one place the
compiler reads the clock, and only when the caller gives no date."""

from __future__ import annotations

import datetime
import functools
import sys
from collections.abc import Callable, Mapping
from typing import Any

from engine.compiler.build import build
from engine.compiler.context import Context
from engine.compiler.declarations import pass_catalog, pass_declarations, pass_patterns
from engine.compiler.names import pass_names, pass_tests
from engine.compiler.semantic import pass_embed, pass_semantic
from engine.compiler.strategies import pass_rules, pass_strategies
from engine.compiler.typecheck import pass_types
from engine.diagnostics import PolicyError
from engine.language.load import Loaded
from engine.language.parse import gc_paused
from engine.runtime.functions import Function, Ranker
from engine.runtime.policy import CompiledPolicy
from providers.catalog.models import Catalog


def current_date() -> datetime.date:
    """Today's local date: what a compile (and lint) without an explicit `today` uses, read at each call."""
    return datetime.date.today()


def as_date(today: datetime.date | None) -> datetime.date:
    """`today` as a plain date (a datetime counts by its date); None means current_date(). Raises TypeError."""
    if today is None:
        return current_date()
    if isinstance(today, datetime.datetime):
        return today.date()
    if isinstance(today, datetime.date):
        return today
    raise TypeError(f"today must be a datetime.date, not {type(today).__name__}")


PASSES: tuple[tuple[str, Callable[[Context], None]], ...] = (
    ("catalog", pass_catalog),
    ("declarations", pass_declarations),
    ("patterns", pass_patterns),
    ("names", pass_names),
    ("semantic", pass_semantic),
    ("types", pass_types),
    ("strategies", pass_strategies),
    ("rules", pass_rules),
    ("tests", pass_tests),
    ("embed", pass_embed),
)


def compile_loaded(
    loaded: Loaded,
    catalog: Catalog | None = None,
    *,
    today: datetime.date | None = None,
    functions: Mapping[str, Callable[..., Any]] | None = None,
    rankers: Mapping[str, Callable[..., Any]] | None = None,
    embedder: Callable[[list[str]], Any] | None = None,
) -> CompiledPolicy:
    """Run every pass; raise PolicyError with all diagnostics, or return the compiled policy.

    `today` (default: current_date() now) is the date deprecations count from: `prefer` over the catalog never
    ranks a model whose deprecation_date is on or before it. `functions` / `rankers`: the Python functions
    (`complexity()`) and rankers (`prefer custom(NAME)`) the policy may call, by name (engine/options.py checks
    them); None means none were provided, and each call is an error that says so (E313, E314). `embedder`: what
    embeds the examples of tasks with `like` (engine/runtime/embedder.py; None: the default, WordLlama, asked for
    only when a task has examples)."""
    ctx = Context(
        loaded=loaded,
        today=as_date(today),
        given_catalog=catalog,
        diagnostics=list(loaded.diagnostics),
        functions=None if functions is None else {k: Function(k, fn) for k, fn in functions.items()},
        rankers=None if rankers is None else {k: Ranker(k, fn) for k, fn in rankers.items()},
        embedder=embedder,
    )
    if not any(d.is_error for d in loaded.diagnostics):
        # a file that could not be read or parsed contributes no statement: checking the rest would report each
        # name it declares as unknown, so only the load errors (every file's) are reported
        with gc_paused():  # a big policy allocates many objects, none of them garbage: see gc_paused
            for _name, run in PASSES:
                run(ctx)
    if not ctx.ok or ctx.catalog is None:
        if ctx.catalog is None and ctx.ok:
            ctx.error("E202", "no catalog could be loaded", None)
        order = {f: i for i, f in enumerate(loaded.files)}
        ctx.diagnostics.sort(
            key=lambda d: (order.get(d.span.file, len(order)), d.span.line, d.span.col) if d.span else (-1, 0, 0)
        )
        raise PolicyError(ctx.diagnostics, loaded.sources)
    if ctx.adhoc:  # the models `provider:model` names that the catalog does not list join the policy's catalog
        ctx.catalog = ctx.catalog.merged(Catalog(ctx.adhoc.values()))
    with gc_paused():
        policy = build(ctx)
    loaded.sources.forget_lines()  # the compiled policy keeps the sources, not their line table
    if len(ctx.rules) >= TRIM_RULES:
        _give_back_memory()
    return policy


#: Policies with this many rules hand freed memory back to the operating system after compiling (see below).
TRIM_RULES = 1_000


def _give_back_memory() -> None:
    """Return freed heap memory to the operating system (glibc's malloc_trim; nothing elsewhere).

    Compiling a big policy frees a lot: lark's parse trees, RE2's parsed patterns (a 10,000-rule policy frees
    tens of MB while RE2 builds its set). glibc keeps freed memory in the process for reuse, so without this
    the process's resident memory stays as high as at the peak of the compile."""
    try:
        libc = _libc()
    except OSError:
        return
    if libc is not None:
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    if sys.platform != "linux":
        return None
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    return libc if hasattr(libc, "malloc_trim") else None
