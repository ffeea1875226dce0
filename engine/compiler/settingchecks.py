"""Setting, budget and limit checks: the policy's `set`, `budget` and `limit` statements in, a diagnostic for every
unknown name, wrong unit, value out of range and tokenizer that cannot load out."""

from __future__ import annotations

from engine.compiler.codegen import number
from engine.compiler.context import Context
from engine.compiler.ratelimits import check_limits
from engine.compiler.semantic import fraction
from engine.compiler.typecheck import _unit_error, check_cache_ttl
from engine.diagnostics import did_you_mean
from engine.language import nodes as n
from engine.runtime.settings import SETTINGS
from engine.runtime.tokenizer import TokenizerError, load_estimator
from engine.runtime.units import fmt_seconds

BUDGET_PERIODS = ("hourly", "daily", "monthly")


def check_settings(ctx: Context) -> None:
    """Every `set` against the one list of settings, then the budgets and the rate limits."""
    for setting in ctx.settings.values():
        spec = SETTINGS.get(setting.name)
        if spec is None:
            ctx.error(
                "E308",
                f"unknown setting `{setting.name}`",
                setting.name_span,
                "not a setting",
                did_you_mean(setting.name, SETTINGS) or "settings: " + ", ".join(SETTINGS),
            )
            continue
        if spec.kind == "fraction":
            _check_fraction(ctx, setting)
        elif not isinstance(setting.value, n.Literal) or setting.value.kind != spec.kind:
            _unit_error(ctx, f"`{setting.name}`", spec.kind, setting.value)
        elif spec.positive and not number(setting.value.value) > 0:
            ctx.error(
                "E401",
                f"`{setting.name}` must be longer than 0",
                setting.value.span,
                spec.zero,
                f"write a duration such as `set {setting.name} = {fmt_seconds(max(30.0, spec.minimum))}`, or leave "
                "the setting out",
            )
        elif setting.name == "cache.ttl":
            check_cache_ttl(ctx, "`cache.ttl`", setting.value)
        elif spec.minimum and number(setting.value.value) < spec.minimum:
            ctx.error(
                "E401",
                f"`{setting.name}` must be at least {fmt_seconds(spec.minimum)}",
                setting.value.span,
                "too often: every round probes each model the policy uses",
                f"write a duration such as `set {setting.name} = 60s`, or leave the setting out",
            )
        elif spec.choices and setting.value.value not in spec.choices:
            ctx.error(
                "E310",
                f"`{setting.name}` is one of {', '.join(spec.choices)}, not `{setting.value.value}`",
                setting.value.span,
                "not a choice",
                did_you_mean(str(setting.value.value), spec.choices) or f"write one of {', '.join(spec.choices)}",
            )
    _check_health_weights(ctx)
    _check_tokenizer(ctx)
    for budget in ctx.budgets:
        if budget.period not in BUDGET_PERIODS:
            ctx.error(
                "E309",
                f"unknown budget period `{budget.period}`",
                budget.period_span,
                "not a period",
                did_you_mean(budget.period, BUDGET_PERIODS) or "periods: " + ", ".join(BUDGET_PERIODS),
            )
        if budget.amount.kind != "money":
            _unit_error(ctx, "a budget", "money", budget.amount)
    check_limits(ctx.limits, ctx.diagnostics.append)


def _check_fraction(ctx: Context, setting: n.Setting) -> None:
    """A "fraction" setting (`set cache.semantic = 0.95`): a number from 0 to 1 or a percentage up to 100%; for
    `cache.semantic` above 0 (a cosine of 0 or less would let every cached request match: E401)."""
    value = setting.value
    if not isinstance(value, n.Literal) or value.kind not in ("count", "percent"):
        _unit_error(ctx, f"`{setting.name}`", "fraction", value)
    elif fraction(value) is None:
        ctx.error(
            "E401",
            f"`{setting.name}` is a fraction from 0 to 1, not {value.text}",
            value.span,
            "out of range",
            f"write e.g. `set {setting.name} = 0.95` or `set {setting.name} = 95%`",
        )
    elif setting.name == "cache.semantic" and fraction(value) == 0:
        ctx.error(
            "E401",
            f"`cache.semantic = {value.text}` would answer any request from any cached answer of its scope",
            value.span,
            "no similarity needed",
            "the setting is the least similarity (cosine) a cached request needs: keep it high, e.g. "
            '`set cache.semantic = 0.95` (docs/cache.md, "Choosing the threshold"), or leave it out for exact '
            "matches only",
        )


def _check_tokenizer(ctx: Context) -> None:
    """`set tokens.estimator`: the tokenizer is loaded now, from local files only (E317 when it cannot be), so that
    no request ever waits for it (engine/runtime/tokenizer.py)."""
    setting = ctx.settings.get("tokens.estimator")
    if setting is None or not isinstance(setting.value, n.Literal) or setting.value.kind != "string":
        return
    try:
        load_estimator(str(setting.value.value))
    except TokenizerError as exc:
        ctx.error("E317", str(exc), setting.value.span, exc.label, exc.hint)


def _check_health_weights(ctx: Context) -> None:
    """`balance weighted` weighs by success_weight x success rate + latency_weight x latency score: both weights 0
    would weigh every member 0 (E401)."""
    weights = ("health.success_weight", "health.latency_weight")
    given = {name: ctx.settings[name] for name in weights if name in ctx.settings}
    if not given or any(not isinstance(s.value, n.Literal) or s.value.kind != "count" for s in given.values()):
        return
    values = [number(given[w].value.value) if w in given else SETTINGS[w].default for w in weights]  # type: ignore[union-attr]
    if sum(values) <= 0:
        last = max(given.values(), key=lambda s: (s.span.line, s.span.col))
        ctx.error(
            "E401",
            "`health.success_weight` and `health.latency_weight` are both 0",
            last.value.span,
            "every member of `balance weighted` would weigh 0",
            "give one of them a weight above 0, e.g. `set health.success_weight = 1`",
        )
