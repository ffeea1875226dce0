"""Name passes: the declared rules and test blocks in, a diagnostic for every model, task, capability, provider,
feature, function, ranker and score term they name that does not exist out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.compiler.context import Context
from engine.diagnostics import did_you_mean
from engine.language import nodes as n
from engine.runtime.features import FEATURES
from engine.runtime.policy import not_an_attribute


def pass_names(ctx: Context) -> None:
    if ctx.catalog is None:
        return
    caps = ctx.catalog.capability_names()
    providers = {m.provider for m in ctx.catalog.models.values()}
    features = FEATURES | {f for m in ctx.catalog.models.values() for f in m.supports}

    def cap(name: str | None, span: n.Span) -> None:
        if name is not None and name.upper() not in caps and name not in caps:
            ctx.error(
                "E302",
                f"unknown capability `{name}`",
                span,
                "no catalog model scores this",
                did_you_mean(name, caps) or "capabilities: " + ", ".join(sorted(caps)),
            )

    for rule in ctx.rules:
        for call in n.calls_in(rule.cond):
            _provided(ctx, "function", call.name, call.span, ctx.functions)
        if rule.cond is not None:
            for node in n.walk_cond(rule.cond):
                if isinstance(node, n.TaskIs) and node.name not in ctx.tasks:
                    ctx.error(
                        "E301",
                        f"unknown task `{node.name}`",
                        node.name_span,
                        "no such task declared",
                        did_you_mean(node.name, ctx.tasks) or f'declare it first: task {node.name} = /.../, "phrase"',
                    )
        act = rule.action
        for ref in (act.model, act.judge, *act.members, *act.among, *act.fallbacks):
            if ref is not None:
                ctx.resolve_model(ref)
        for r in act.rankings:
            cap(r.capability, r.span)
            if r.ranker is not None:
                _provided(ctx, "ranker", r.ranker, r.span, ctx.rankers)
            for term in r.terms:
                if term.factor == "capability":
                    cap(term.name, term.span)
                elif term.factor == "attr":
                    _score_attr(ctx, term)
                elif term.factor == "call":
                    _provided(ctx, "function", str(term.name), term.span, ctx.functions)
        for c in act.where:
            if c.metric == "capability":
                cap(c.capability, c.metric_span)
            elif c.metric == "provider" and isinstance(c.value, n.ListLit):
                for item in c.value.items:
                    if str(item.value) not in providers:
                        ctx.error(
                            "E305",
                            f"unknown provider `{item.value}`",
                            item.span,
                            "no catalog model has it",
                            did_you_mean(str(item.value), providers) or "providers: " + ", ".join(sorted(providers)),
                        )
            elif c.metric == "supports" and isinstance(c.value, n.Literal) and c.value.value not in features:
                ctx.error(
                    "E306",
                    f"unknown feature `{c.value.value}`",
                    c.value.span,
                    "not a feature",
                    did_you_mean(str(c.value.value), features) or "features: " + ", ".join(sorted(features)),
                )


#: What the engine's keyword gives, for each kind of Python extension point.
_EXTENSION = {"function": ("E313", "functions"), "ranker": ("E314", "rankers")}


def _provided(ctx: Context, kind: str, name: str, span: n.Span, given: Mapping[str, Any] | None) -> None:
    """E313 (a function call) / E314 (`prefer custom(NAME)`) when the engine was given no such Python function or
    ranker; `given` None: the compile was given none at all (e.g. `modelroute check` without --functions)."""
    if given is not None and name in given:
        return
    code, keyword = _EXTENSION[kind]
    shown = f"{name}()" if kind == "function" else f"custom({name})"
    called = f"{name}()" if kind == "function" else name
    if given is None:
        ctx.error(
            code,
            f"{kind} `{called}` is not provided",
            span,
            f"calls Python code: {shown}",
            f'give it to the engine: Engine.load(..., {keyword}={{"{name}": fn}}); from the command line: '
            f"--{keyword} module:NAME (a dict of {keyword} in an importable module)",
        )
        return
    ctx.error(
        code,
        f"unknown {kind} `{called}`",
        span,
        f"not one of the {keyword} given",
        did_you_mean(name, given)
        or (f"{keyword} given: " + ", ".join(sorted(given)) if given else f"the engine was given no {keyword}"),
    )


#: Words that read as a request attribute inside `score(...)` but are surely meant as something else.
_NOT_SCORE_TERMS = frozenset({"cheapest", "fastest", "least_busy", "healthiest", "provider"})
#: Every term `score(...)` knows besides a request attribute, as written.
SCORE_TERMS = ("capability(NAME)", *n.SCORE_FACTORS[1:])


def _score_attr(ctx: Context, term: n.ScoreTerm) -> None:
    """A bare name in `score(...)` is a request attribute, unless it is a ranking word or a misspelt factor
    (`costs`, `latncy`): then E311 with what it may have meant."""
    name = str(term.name)
    factors = n.SCORE_FACTORS[1:]
    close = did_you_mean(name, factors) if name.lower() not in factors else f"write `{name.lower()}`"
    if name not in _NOT_SCORE_TERMS and (close is None or "." in name):
        return
    hint = close or (
        "for speed write `- latency`, for price `- cost` or `- price`" if name in ("fastest", "cheapest") else None
    )
    ctx.error(
        "E311",
        f"unknown score term `{name}`",
        term.span,
        "not a score term",
        hint or "score terms: " + ", ".join(SCORE_TERMS) + ", or a request attribute",
    )


def pass_tests(ctx: Context) -> None:
    if ctx.catalog is None:
        return
    for block in ctx.tests:
        for exp in block.expects:
            for ref in (exp.model, *(exp.fallbacks or ()), *(exp.plan or ())):
                if ref is not None:
                    ctx.resolve_model(ref)
            _check_semantic_expect(ctx, exp)
            for a in exp.attrs:
                why = not_an_attribute(a.name) if a.name != "messages" else None  # `messages`: the test runner's
                if why is not None:
                    ctx.error(
                        "E401",
                        f"a test case cannot pass `{a.name}`",
                        a.span,
                        "not a request attribute",
                        "a test checks the policy's own choice: leave `model` out"
                        if a.name == "model"
                        else f"{why}: write the prompt the case needs instead",
                    )


def _check_semantic_expect(ctx: Context, exp: n.Expect) -> None:
    """`task T` names a declared task; `nearest T "example"` a task with examples, and one of them (E322)."""
    for ref in (*exp.tasks, *(task for task, _ in exp.nearest)):
        if ref.name not in ctx.tasks:
            ctx.error(
                "E301",
                f"unknown task `{ref.name}`",
                ref.span,
                "no such task declared",
                did_you_mean(ref.name, ctx.tasks) or "an expect checks the tasks the policy declares",
            )
    for ref, example in exp.nearest:
        task = ctx.tasks.get(ref.name)
        if task is None:
            continue
        if not task.likes:
            ctx.error(
                "E319",
                f"task `{ref.name}` has no examples, so it has no nearest example",
                ref.span,
                "patterns only",
                f"check it with `task {ref.name}` instead, or give it examples: like [...]",
            )
        elif ref.name in ctx.examples and example not in ctx.examples[ref.name][1]:
            ctx.error(
                "E322",
                f'"{example}" is not an example of task `{ref.name}`',
                ref.span,
                "not one of its examples",
                did_you_mean(example, ctx.examples[ref.name][1]) or "write one of the task's examples exactly",
            )
