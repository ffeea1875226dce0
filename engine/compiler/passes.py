"""Compilation: loaded statements, a catalog and a date in, a CompiledPolicy (or every diagnostic) out, in named
passes. The date decides which models are past their deprecation date; `current_date()` is the one place the
compiler reads the clock, and only when the caller gives no date."""

from __future__ import annotations

import datetime
import functools
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from engine.compiler.actions import ADHOC_KEY, FUNCTIONS_KEY, RANKERS_KEY, SETTINGS_KEY, on_request
from engine.compiler.codegen import build_rules, literal, number, retired
from engine.compiler.ratelimits import check_limits, limit_specs
from engine.diagnostics import Diagnostic, PolicyError, did_you_mean
from engine.language import nodes as n
from engine.language.load import Loaded, display_name
from engine.language.parse import gc_paused
from engine.runtime.functions import Function, Ranker
from engine.runtime.index import build_index
from engine.runtime.matcher import FLAGS, Matcher, check, to_re2
from engine.runtime.policy import BudgetSpec, CompiledPolicy, Entry, not_an_attribute
from engine.runtime.qualified import PolicyModels, adhoc_spec, known_providers, resolve_qualified, split_name
from engine.runtime.settings import SETTINGS, Settings, coerce
from engine.runtime.tokenizer import TokenizerError, load_estimator
from engine.runtime.units import EXAMPLES, KIND_NAMES, METRIC_KIND, fmt_seconds
from providers.catalog.models import KNOWN_FEATURES, Catalog, CatalogError, ModelSpec, default_catalog, load_catalog

MAX_RULES = 10_000
FEATURES = frozenset(KNOWN_FEATURES)


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


@dataclass
class Context:
    """State shared by the passes; each pass reads it, adds to it and appends diagnostics."""

    loaded: Loaded
    today: datetime.date = field(default_factory=current_date)  # models deprecated on or before it are not ranked
    catalog: Catalog | None = None
    given_catalog: Catalog | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    tasks: dict[str, n.TaskDecl] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # policy alias -> canonical model name
    pids: dict[str, int] = field(default_factory=dict)  # re2 source -> pattern id
    pattern_of: dict[int, int] = field(default_factory=dict)  # id(Pattern node) -> pattern id
    pattern_text: list[str] = field(default_factory=list)
    display: list[str] = field(default_factory=list)  # pid -> RE2 source that explain searches for matched text
    rules: list[n.Rule] = field(default_factory=list)
    settings: dict[str, n.Setting] = field(default_factory=dict)
    budgets: list[n.Budget] = field(default_factory=list)
    limits: list[n.RateLimit] = field(default_factory=list)
    tests: list[n.TestBlock] = field(default_factory=list)
    adhoc: dict[str, ModelSpec] = field(default_factory=dict)  # `provider:model` names the catalog does not list
    functions: Mapping[str, Function] | None = None  # Engine.load(functions=...); None: none were provided
    rankers: Mapping[str, Ranker] | None = None  # Engine.load(rankers=...); None: none were provided

    @functools.cached_property
    def adhoc_allowed(self) -> bool:
        """`set adhoc_models = true` anywhere in the policy (the last `set` wins, as for every setting)."""
        value = False
        for stmt in self.loaded.body:
            if isinstance(stmt, n.Setting) and stmt.name == "adhoc_models" and isinstance(stmt.value, n.Literal):
                value = stmt.value.value is True
        return value

    def lookup(self, name: str) -> ModelSpec | None:
        """The model a reference names: a policy alias, a catalog name or alias, `provider:model`, or an ad-hoc
        model already allowed."""
        assert self.catalog is not None
        name = self.aliases.get(name, name)
        spec = self.catalog.resolve(name)
        if spec is None and ":" in name:
            spec = resolve_qualified(self.catalog, name) or self.adhoc.get(name)
        return spec

    def error(
        self,
        code: str,
        message: str,
        span: n.Span | None,
        label: str = "",
        hint: str | None = None,
        notes: tuple[str, ...] = (),
    ) -> None:
        self.diagnostics.append(Diagnostic(code, message, span, label, hint, notes))

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.diagnostics)

    def resolve_model(self, ref: n.ModelRef) -> str | None:
        """The canonical catalog name for a model reference; reports E300 when unknown (E305 / E312 for a
        `provider:model` name whose provider is unknown, or whose model the catalog does not list)."""
        assert self.catalog is not None
        spec = self.lookup(ref.name)
        if spec is not None:
            return spec.name
        parts = split_name(self.aliases.get(ref.name, ref.name))
        if parts is not None:
            return self._qualified(ref, *parts)
        names = [*self.catalog.names(), *self.aliases]
        self.error(
            "E300",
            f"unknown model `{ref.name}`",
            ref.span,
            "not in the catalog",
            did_you_mean(ref.name, names) or "run `modelroute catalog` to list the models",
        )
        return None

    def _qualified(self, ref: n.ModelRef, provider: str, model: str) -> str | None:
        """A `provider:model` name the catalog does not list: an ad-hoc model when the policy allows them."""
        assert self.catalog is not None
        providers = known_providers(self.catalog)
        if provider not in providers:
            self.error(
                "E305",
                f"unknown provider `{provider}` in `{ref.name}`",
                ref.span,
                "no such provider",
                did_you_mean(provider, providers) or "providers: " + ", ".join(sorted(providers)),
            )
            return None
        if self.adhoc_allowed:
            spec = self.adhoc[f"{provider}:{model}"] = adhoc_spec(provider, model)
            return spec.name
        listed = [f"{provider}:{m.name}" for m in self.catalog.models.values() if m.provider == provider]
        self.error(
            "E312",
            f"`{ref.name}`: the catalog lists no {provider} model `{model}`",
            ref.span,
            f"no such {provider} model",
            did_you_mean(ref.name, listed)
            or f"`set adhoc_models = true` sends it to {provider} as model id `{model}` (its price is unknown)",
        )
        return None


# ---- passes ---------------------------------------------------------------------------------------


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
                    ctx.loaded.sources.add(f, Path(f).read_text(encoding="utf-8"))
                except OSError:
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


def _patterns(ctx: Context):
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


def _unit_error(ctx: Context, what: str, want: str, lit: n.Value, more: str = "") -> None:
    got = "list" if isinstance(lit, n.ListLit) else lit.kind
    ctx.error(
        "E400",
        f"{what} compares with {KIND_NAMES[want]}, not {KIND_NAMES[got]}",
        lit.span,
        f"this is {KIND_NAMES[got]}",
        f"write {EXAMPLES[want]}{more}",
    )


def pass_types(ctx: Context) -> None:
    for rule in ctx.rules:
        if rule.cond is not None:
            for node in n.walk_cond(rule.cond):
                if isinstance(node, n.Compare):
                    if isinstance(node.right, n.ListLit):
                        ctx.error(
                            "E400",
                            f"`{node.op}` compares with one value, not a list",
                            node.right.span,
                            "a list",
                            f"to test membership write `{node.left.name} in [...]`",
                        )
                    elif node.left.builtin and node.right.kind != "count":
                        _unit_error(ctx, "`tokens`", "count", node.right)
                elif isinstance(node, n.InList) and node.left.builtin:
                    for item in node.right.items:
                        if item.kind != "count":
                            _unit_error(ctx, "`tokens`", "count", item)
        for c in rule.action.where:
            if c.metric in METRIC_KIND and c.value is not None:
                want = METRIC_KIND[c.metric]
                if on_request(c):
                    if c.value.value == "tokens":  # type: ignore[union-attr]
                        attr = f"max_{c.metric}" if c.op.startswith("<") else f"min_{c.metric}"
                        ctx.error(
                            "E400",
                            f"`{c.metric} {c.op} tokens`: `tokens` is the request's size, not a request attribute",
                            c.value.span,
                            "not a request attribute",
                            "every model must already hold the request (a hard constraint); compare with "
                            f"{EXAMPLES[want]}, or an attribute the caller passes (`{c.metric} {c.op} {attr}`)",
                        )
                    continue  # a request attribute: read in the metric's unit when the request arrives
                if not isinstance(c.value, n.Literal) or c.value.kind != want:
                    attr = f"max_{c.metric}" if c.op.startswith("<") else f"min_{c.metric}"
                    more = f", or a request attribute's name (`{c.metric} {c.op} {attr}`)"
                    _unit_error(ctx, f"`{c.metric}`", want, c.value, more)
                elif c.metric == "capability" and not 0 <= number(c.value.value) <= 10:
                    ctx.error(
                        "E401",
                        f"capability scores run from 1 to 10, not {c.value.text}",
                        c.value.span,
                        "out of range",
                        "use a score between 1 and 10",
                    )
        _check_cache(ctx, rule.action.cache)


def _check_cache(ctx: Context, lit: n.Literal | None) -> None:
    """`cache 10m` or `cache off` on an action: a positive duration, or the word `off`."""
    hint = "write a duration such as `cache 10m`, or `cache off` to keep this rule's answers out of the cache"
    if lit is None or (lit.kind == "name" and lit.value == "off"):
        return
    if lit.kind != "duration":
        what = f"`{lit.text}`" if lit.kind == "name" else KIND_NAMES[lit.kind]
        ctx.error("E400", f"`cache` takes a duration or `off`, not {what}", lit.span, "not a duration", hint)
    elif not number(lit.value) > 0:
        ctx.error("E401", "a rule's cache TTL must be longer than 0", lit.span, "caches nothing", hint)


BALANCE_MODES = ("round_robin", "random", "least_busy", "weighted")
BUDGET_PERIODS = ("hourly", "daily", "monthly")


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
        if not isinstance(setting.value, n.Literal) or setting.value.kind != spec.kind:
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


PASSES: tuple[tuple[str, Callable[[Context], None]], ...] = (
    ("catalog", pass_catalog),
    ("declarations", pass_declarations),
    ("patterns", pass_patterns),
    ("names", pass_names),
    ("types", pass_types),
    ("strategies", pass_strategies),
    ("rules", pass_rules),
    ("tests", pass_tests),
)


def compile_loaded(
    loaded: Loaded,
    catalog: Catalog | None = None,
    *,
    today: datetime.date | None = None,
    functions: Mapping[str, Callable[..., Any]] | None = None,
    rankers: Mapping[str, Callable[..., Any]] | None = None,
) -> CompiledPolicy:
    """Run every pass; raise PolicyError with all diagnostics, or return the compiled policy.

    `today` (default: current_date() now) is the date deprecations count from: `prefer` over the catalog never
    ranks a model whose deprecation_date is on or before it. `functions` / `rankers`: the Python functions
    (`complexity()`) and rankers (`prefer custom(NAME)`) the policy may call, by name (engine/options.py checks
    them); None means none were provided, and each call is an error that says so (E313, E314)."""
    ctx = Context(
        loaded=loaded,
        today=as_date(today),
        given_catalog=catalog,
        diagnostics=list(loaded.diagnostics),
        functions=None if functions is None else {k: Function(k, fn) for k, fn in functions.items()},
        rankers=None if rankers is None else {k: Ranker(k, fn) for k, fn in rankers.items()},
    )
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


def build(ctx: Context) -> CompiledPolicy:
    """The last pass: turn the checked AST into the immutable decision structure."""
    assert ctx.catalog is not None
    entries = {name: _entry(spec) for name, spec in ctx.catalog.models.items()}
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
    selector_cache: dict = {
        SETTINGS_KEY: settings,
        ADHOC_KEY: frozenset(ctx.adhoc),
        FUNCTIONS_KEY: ctx.functions or {},
        RANKERS_KEY: ctx.rankers or {},
    }
    rules, guards = build_rules(
        ctx.rules,
        entries,
        resolve,
        task_masks,
        ctx.pattern_of,
        selector_cache,
        today=ctx.today,
        functions=ctx.functions,
    )
    index = build_index(guards, len(ctx.pids))
    digest = ctx.loaded.digest()
    gone = sorted(e.name for e in entries.values() if retired(e.spec, ctx.today))
    if gone:  # the same files decide differently once a model retires: that is a new version (and a reload swaps)
        digest.update(b"retired\0" + "\0".join(gone).encode())
    matcher = _matcher(tuple(ctx.pids), tuple(ctx.display)) if ctx.pids else None
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
    )


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


def _settings(ctx: Context) -> Settings:
    values = dict(Settings.defaults())
    for name, setting in ctx.settings.items():
        values[name] = coerce(name, literal(setting.value).value)
    return Settings(values, limit_specs(ctx.limits))


#: The last few compiled RE2 sets, by the hash of their patterns (see _matcher).
_MATCHERS: OrderedDict[int, Matcher] = OrderedDict()
_MATCHERS_MAX = 16
_matchers_lock = threading.Lock()


def _matcher(sources: tuple[str, ...], display: tuple[str, ...]) -> Matcher:
    """Compiled RE2 sets are immutable: a reload whose patterns did not change reuses the last one. The cache is
    keyed by a hash of the patterns, not by the patterns themselves (a key that held them kept ~1.8 MB per 10,000
    phrases alive besides each set); a hit is checked against the set's own patterns, so a hash collision only
    compiles a new set."""
    key = hash((sources, display))
    with _matchers_lock:
        found = _MATCHERS.get(key)
        if found is not None and found.sources == sources and found.display == display:
            _MATCHERS.move_to_end(key)
            return found
    made = Matcher(sources, display)
    with _matchers_lock:
        _MATCHERS[key] = made
        _MATCHERS.move_to_end(key)
        while len(_MATCHERS) > _MATCHERS_MAX:
            _MATCHERS.popitem(last=False)
    return made


def _entry(spec: ModelSpec) -> Entry:
    return Entry.of(spec)
