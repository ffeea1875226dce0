"""Build: a checked context in, the immutable CompiledPolicy (rules, index, RE2 set, settings) out."""

from __future__ import annotations

from types import MappingProxyType

from engine.compiler.actions import ADHOC_KEY, FUNCTIONS_KEY, RANKERS_KEY, SEMANTIC_KEY, SETTINGS_KEY
from engine.compiler.codegen import build_rules, literal, number, retired
from engine.compiler.context import Context
from engine.compiler.ratelimits import limit_specs
from engine.compiler.reuse import entries_of, matcher_of
from engine.compiler.reuse import selector_cache as selector_cache_of
from engine.language import nodes as n
from engine.runtime.index import build_index
from engine.runtime.policy import BudgetSpec, CompiledPolicy, Entry
from engine.runtime.qualified import PolicyModels
from engine.runtime.settings import Settings, coerce


def build(ctx: Context) -> CompiledPolicy:
    """The last pass: turn the checked AST into the immutable decision structure."""
    assert ctx.catalog is not None
    entries = entries_of(ctx.catalog)
    task_masks = {}
    for name, task in ctx.tasks.items():
        mask = 0
        for p in task.patterns:
            mask |= 1 << ctx.pattern_of[id(p)]
        task_masks[name] = mask

    def resolve(ref: n.ModelRef) -> Entry:
        spec = ctx.lookup(ref.name)
        assert spec is not None, f"{ref.name} passed pass_names but does not resolve"
        return entries[spec.name]

    settings = _settings(ctx)
    # the health settings and the ad-hoc models reach the selectors through the cache
    adhoc, functions, rankers = frozenset(ctx.adhoc), ctx.functions or {}, ctx.rankers or {}
    semantic = dict(ctx.semantic)
    selector_cache = selector_cache_of(
        entries,
        ctx.today,
        settings,
        adhoc,
        functions,
        rankers,
        semantic,
        lambda: {
            SETTINGS_KEY: settings,
            ADHOC_KEY: adhoc,
            FUNCTIONS_KEY: functions,
            RANKERS_KEY: rankers,
            SEMANTIC_KEY: semantic,
        },
    )
    rules, guards = build_rules(
        ctx.rules,
        entries,
        resolve,
        task_masks,
        ctx.pattern_of,
        selector_cache,
        today=ctx.today,
        functions=ctx.functions,
        semantic=ctx.semantic,
    )
    index = build_index(guards, len(ctx.pids))
    digest = ctx.loaded.digest()
    gone = sorted(e.name for e in entries.values() if retired(e.spec, ctx.today))
    if gone:  # the same files decide differently once a model retires: that is a new version (and a reload swaps)
        digest.update(b"retired\0" + "\0".join(gone).encode())
    matcher = matcher_of(tuple(ctx.pids), tuple(ctx.display)) if ctx.pids else None
    return CompiledPolicy(
        entry=ctx.loaded.entry,
        version=digest.hexdigest()[:12],
        files=tuple(ctx.loaded.files),
        rules=tuple(rules),
        models=PolicyModels(entries, ctx.catalog, adhoc=ctx.adhoc_allowed),
        tasks=MappingProxyType(task_masks),
        matcher=matcher,
        pattern_text=tuple(ctx.pattern_text),
        index=index,
        catalog=ctx.catalog,
        sources=ctx.loaded.sources,
        settings=settings,
        budgets=tuple(BudgetSpec(b.period, number(b.amount.value), b.per, b.span) for b in ctx.budgets),
        tests=tuple(ctx.tests),
        semantic=MappingProxyType(dict(ctx.semantic)),
        embedder=ctx.embedder_used if ctx.semantic else ctx.embedder,
    )


def _settings(ctx: Context) -> Settings:
    values = dict(Settings.defaults())
    for name, setting in ctx.settings.items():
        values[name] = coerce(name, literal(setting.value).value)
    return Settings(values, limit_specs(ctx.limits))
