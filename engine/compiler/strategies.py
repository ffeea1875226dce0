"""Strategy and rule passes: the rules' actions and their order in, a diagnostic for every unknown mode, bad split,
group too small and unreachable rule out (settings, budgets and limits: engine/compiler/settingchecks.py)."""

from __future__ import annotations

from engine.compiler.codegen import number
from engine.compiler.context import Context
from engine.compiler.settingchecks import check_settings
from engine.compiler.typecheck import _unit_error
from engine.diagnostics import did_you_mean
from engine.language import nodes as n

MAX_RULES = 10_000
BALANCE_MODES = ("round_robin", "random", "least_busy", "weighted")


def pass_strategies(ctx: Context) -> None:
    for rule in ctx.rules:
        act = rule.action
        if act.kind == "balance" and act.mode is not None and act.mode.value not in BALANCE_MODES:
            ctx.error(
                "E307",
                f"unknown balance mode `{act.mode.value}`",
                act.mode.span,
                "not a mode",
                did_you_mean(str(act.mode.value), BALANCE_MODES) or "modes: " + ", ".join(BALANCE_MODES),
            )
        if act.experiment is not None and not str(act.experiment.value).strip():
            ctx.error(
                "E405",
                "the experiment has no name",
                act.experiment.span,
                "empty",
                'name it, e.g. `as "prompt-v2"`: usage and metrics report each experiment by its name',
            )
        if act.kind == "split":
            total = sum(number(w.value) for w in act.weights)
            if abs(total - 1.0) > 1e-9:
                shown = ", ".join(w.text for w in act.weights)
                ctx.error(
                    "E402",
                    f"split weights add up to {total * 100:g}%, not 100%",
                    act.span,
                    f"{shown}",
                    "make the percentages add up to 100%",
                )
        if act.min_agreement is not None:
            need = act.min_agreement
            if need.kind != "count":
                _unit_error(ctx, "`min_agreement`", "count", need)
            elif not 1 <= number(need.value) <= len(act.members) or number(need.value) != int(number(need.value)):
                value = number(need.value)
                why = (
                    "is not a whole number"
                    if value != int(value)
                    else "needs at least one agreeing answer"
                    if value < 1
                    else "asks for more agreeing answers than the group can give"
                )
                ctx.error(
                    "E404",
                    f"`min_agreement {need.text}` {why}",
                    need.span,
                    f"the group has {len(act.members)} models",
                    f"write a whole number from 1 to {len(act.members)}",
                )
        if act.kind in n.FANOUT_GROUPS and len(act.members) < 2:
            ctx.error(
                "E403",
                f"`{act.kind}` needs at least two models",
                act.span,
                "one model",
                f"list two or more models, or write `use {act.members[0].name}`" if act.members else None,
            )
    check_settings(ctx)


def pass_rules(ctx: Context) -> None:
    if len(ctx.rules) > MAX_RULES:
        ctx.error(
            "E700",
            f"the policy has {len(ctx.rules):,} rules; the limit is {MAX_RULES:,}",
            ctx.rules[MAX_RULES].span,
            "over the limit",
            "split routing across several policies",
        )
    otherwise: n.Rule | None = None
    for rule in ctx.rules:
        if otherwise is not None:
            code = "E601" if rule.cond is None else "E600"
            hint = (
                "`otherwise` must be the last rule: move this rule above it"
                if rule.cond
                else "a policy has one `otherwise`: remove this one or merge it into the first"
            )
            ctx.error(
                code,
                "rule after `otherwise` can never be reached"
                if rule.cond
                else "second `otherwise` can never be reached",
                rule.span,
                "unreachable",
                hint,
                (f"`otherwise` is at {otherwise.span}",),
            )
        elif rule.cond is None:
            otherwise = rule
