"""Action code generation: one checked AST action and the catalog entries in, its runtime Selector out.

One builder per action kind (`use`, `prefer`, and the groups), chosen from a table that names every kind.
Request-independent `where` constraints are applied here, once, and their rejections kept for explain.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.language import nodes as n
from engine.runtime.constraints import NEGATED, OPS, Code, CostLimit, Limit, Reason, price_known
from engine.runtime.functions import CustomRank
from engine.runtime.limits import AttrLimit
from engine.runtime.policy import Entry, PriceGroup, RankKey
from engine.runtime.qualified import context_known
from engine.runtime.scores import HealthRank, ScoreRank, Term
from engine.runtime.selectors import (
    BalanceSelector,
    BestOfSelector,
    CheapestPrefer,
    ConsensusSelector,
    GenericPrefer,
    RaceSelector,
    Selector,
    SplitSelector,
    StaticPrefer,
    TieredPrefer,
    UseSelector,
)
from engine.runtime.settings import setting
from engine.runtime.units import fmt_count, fmt_ms, fmt_price, fmt_value

__all__ = [
    "ADHOC_KEY",
    "FUNCTIONS_KEY",
    "RANKERS_KEY",
    "SEMANTIC_KEY",
    "SETTINGS_KEY",
    "build_selector",
    "literal",
    "number",
    "on_request",
    "retired",
    "static_reason",
]

#: The key under which the compile's Settings travel in build_selector's `cache` (health window and weights).
SETTINGS_KEY = "settings"
#: The key under which the names of the compile's ad-hoc models (`provider:model`, not in the catalog) travel.
ADHOC_KEY = "adhoc"
#: The keys under which the compile's Python functions and rankers (engine/runtime/functions.py) travel, by name.
FUNCTIONS_KEY = "functions"
RANKERS_KEY = "rankers"
SEMANTIC_KEY = "semantic"  # the policy's semantic tasks by name, for `score(similarity(X))`


def on_request(c: n.Constraint) -> bool:
    """Whether a `where` constraint compares with a request attribute (a bare name on the right): checked per
    request, like a `where cost` limit."""
    return isinstance(c.value, n.Literal) and c.value.kind == "name" and c.metric not in ("provider", "supports")


def number(value: object) -> float:
    """A numeric literal's value as a float (the checks before code generation let only numbers through)."""
    if isinstance(value, (int, float)):
        return float(value)
    raise TypeError(f"expected a number, got {value!r}")


def literal(value: n.Value | None) -> n.Literal:
    """The single value after a comparison or in a numeric constraint (pass_types refuses lists there)."""
    if not isinstance(value, n.Literal):
        raise TypeError(f"expected one value, got {value!r}")
    return value


def retired(spec: Any, today: datetime.date) -> bool:
    """Whether a catalog model (a ModelSpec) is past its deprecation date on `today` (the date itself counts)."""
    return spec.deprecation_date is not None and spec.deprecation_date <= today


def static_reason(e: Entry, c: n.Constraint) -> Reason | None:
    """Why a model fails a request-independent `where` constraint, or None when it passes (and for a constraint
    on a request attribute, which only a request can decide)."""
    if on_request(c):
        return None
    value = c.value.value if isinstance(c.value, n.Literal) else None
    if c.metric in ("price", "latency") and not math.isfinite(e.ip if c.metric == "price" else e.latency_ms):
        return Reason(Code.PRICE if c.metric == "price" else Code.LATENCY, f"{c.metric} unknown (not in the catalog)")
    if c.metric == "provider":
        names = [str(i.value) for i in c.value.items] if isinstance(c.value, n.ListLit) else []
        return (
            None if e.provider in names else Reason(Code.PROVIDER, f"provider {e.provider} not in [{', '.join(names)}]")
        )
    if c.metric == "supports":
        return None if value in e.spec.supports else Reason(Code.SUPPORTS, f"no {value} support")
    code: Code
    if c.metric == "capability":
        score = e.spec.capability(c.capability)
        if score is None:
            return Reason(Code.CAPABILITY, f"no {c.capability} score")
        code, actual, shown = Code.CAPABILITY, score, f"capability({c.capability}) {score:g}"
    elif c.metric == "latency":
        code, actual, shown = Code.LATENCY, e.latency_ms / 1000, f"latency {fmt_ms(e.latency_ms)}"
    elif c.metric == "price":  # compared in $/1M rounded to 1e-9: $0.45/1M and $0.00045/1k are the same price
        actual, shown = round(e.ip * 1e6, 9), f"price {fmt_price(e.ip)}"
        per_million = round(number(value) * 1e6, 9)
        if OPS[c.op](actual, per_million):
            return None
        return Reason(Code.PRICE, f"{shown} {NEGATED[c.op]} {fmt_value('price', per_million / 1e6)}")
    elif c.metric == "context":
        code, actual, shown = Code.CONTEXT_LIMIT, e.context, f"context {fmt_count(e.context)}"
    else:
        return None
    if OPS[c.op](actual, value):
        return None
    return Reason(code, f"{shown} {NEGATED[c.op]} {fmt_value(literal(c.value).kind, value)}")


def unknown_needs(
    rankings: tuple[RankKey, ...], limits: tuple[Limit, ...], static: Sequence[n.Constraint] = ()
) -> tuple[bool, bool, bool]:
    """Whether a rule ranks or limits by (cost or price, latency, context): the numbers an ad-hoc model lacks.
    Part of the rule's pool cache key, since the pool then leaves out the models whose number is unknown."""
    by_cost = any(r.kind == "cheapest" for r in rankings) or any(lim.code in (Code.COST, Code.PRICE) for lim in limits)
    by_latency = any(r.kind == "fastest" for r in rankings) or any(lim.code is Code.LATENCY for lim in limits)
    by_context = any(lim.code is Code.CONTEXT_LIMIT for lim in limits) or any(c.metric == "context" for c in static)
    for r in rankings:
        if isinstance(r, ScoreRank):
            by_cost |= any(t.factor in ("cost", "price") for t in r.terms)
            by_latency |= any(t.factor == "latency" for t in r.terms)
            by_context |= any(t.factor == "context" for t in r.terms)
    return by_cost, by_latency, by_context


def _unknown_numbers(needs: tuple[bool, bool, bool]) -> Callable[[Entry], Reason | None] | None:
    """For a rule that ranks or limits by cost, price, latency or context (unknown_needs): why a model whose
    number is unknown (an ad-hoc `provider:model`) is skipped; None when nothing the rule does needs them."""
    by_cost, by_latency, by_context = needs

    def unknown(e: Entry) -> Reason | None:
        if by_cost and not price_known(e):
            return Reason(Code.PRICE, "price unknown (not in the catalog): cost-ranked choices skip it")
        if by_latency and not math.isfinite(e.latency_ms):
            return Reason(Code.LATENCY, "latency unknown (not in the catalog): latency-ranked choices skip it")
        if by_context and not context_known(e):
            return Reason(Code.CONTEXT_LIMIT, "context unknown (not in the catalog): context-ranked choices skip it")
        return None

    return unknown if any(needs) else None


def _static_key(static: list[n.Constraint]) -> tuple:
    def value(v: n.Value | None) -> object:
        return tuple(str(i.value) for i in v.items) if isinstance(v, n.ListLit) else (v.value if v else None)

    return tuple((c.metric, c.op, value(c.value), c.capability) for c in static)


@dataclass
class _Parts:
    """What every action kind shares, computed once per rule before its kind's builder runs."""

    action: n.Action
    resolve: Callable[[n.ModelRef], Entry]
    pool: tuple[Entry, ...]  # shared with every rule of the same static constraints (the cache's own tuple)
    rejects: tuple[tuple[Entry, Reason], ...]
    skey: tuple
    costs: tuple[Limit, ...]
    fallbacks: tuple[Entry, ...]
    key: str
    cache: dict
    rankings: tuple[RankKey, ...] = ()
    fitting: tuple[Entry, ...] = ()

    def common(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "static_rejects": self.rejects,
            "cost_limits": self.costs,
            "fallbacks": self.fallbacks,
            "fitting": self.fitting,
        }


def _use(p: _Parts) -> Selector:
    assert p.action.model is not None
    return UseSelector(use=p.resolve(p.action.model), **p.common())


_PIVOTS = ("cheapest", "least_busy")  # rankings that depend on the request


def _per_request(r: RankKey) -> bool:
    """A ranking whose order is computed per request and cannot be walked in a precomputed order: healthiest
    (state), custom (a Python ranker), a score with a cost or a function term."""
    return r.kind in ("healthiest", "custom") or (isinstance(r, ScoreRank) and r.dynamic)


def rank_key(r: n.Ranking, entries: Mapping[str, Entry], cache: dict) -> RankKey:
    """One `prefer` ranking as the runtime's rank key (a score's per-model sums are computed once per compile)."""
    settings = cache.get(SETTINGS_KEY)
    if r.kind == "score":
        functions = cache.get(FUNCTIONS_KEY) or {}
        terms = tuple(
            Term(
                t.coef,
                t.factor,
                t.name.upper() if t.factor == "capability" and t.name else t.name,
                functions.get(t.name) if t.factor == "call" else None,
                (cache.get(SEMANTIC_KEY) or {}).get(t.name) if t.factor == "similarity" else None,
            )
            for t in r.terms
        )
        key = ("score", terms)
        if key not in cache:
            cache[key] = ScoreRank.build(terms, entries.values())
        return cache[key]
    if r.kind == "healthiest":
        return HealthRank("healthiest", None, float(setting(settings, "health.window")))
    if r.kind == "custom":
        name = str(r.ranker)
        return CustomRank("custom", None, name, (cache.get(RANKERS_KEY) or {}).get(name))
    return RankKey(r.kind, r.capability.upper() if r.capability else None)


def _prefer(p: _Parts) -> Selector:
    rankings = p.rankings
    rkey = ("order", p.skey, rankings)
    measured = any(r.kind == "fastest" for r in rankings)
    cache = p.cache
    if any(_per_request(r) for r in rankings):
        nkey = ("by name", p.skey)
        if nkey not in cache:
            cache[nkey] = tuple(sorted(p.pool, key=lambda e: e.name))
        p.pool = cache[nkey]
        return GenericPrefer(rankings=rankings, measured=measured, **p.common())
    if all(r.kind not in _PIVOTS for r in rankings):
        if rkey not in cache:
            cache[rkey] = tuple(sorted(p.pool, key=lambda e: (*(r.key(e, None) for r in rankings), e.name)))
        p.pool = cache[rkey]
        return StaticPrefer(rankings=rankings, measured=measured, **p.common())
    nkey = ("by name", p.skey)
    if nkey not in cache:
        cache[nkey] = tuple(sorted(p.pool, key=lambda e: e.name))
    p.pool = cache[nkey]
    at = next(i for i, r in enumerate(rankings) if r.kind in _PIVOTS)
    prefix, pivot, rest = rankings[:at], rankings[at], rankings[at + 1 :]
    if pivot.kind == "least_busy" and any(r.kind == "cheapest" for r in rest):
        return GenericPrefer(rankings=rankings, measured=measured, **p.common())  # no order to walk: rank them all
    if rkey not in cache:
        cache[rkey] = tuple(_tier(pivot.kind, members, rest) for members in _tiers(p.pool, prefix))
    tiers = cache[rkey]
    if not prefix and pivot.kind == "cheapest":
        by_input, by_output = tiers[0] if tiers else ((), ())
        return CheapestPrefer(
            rankings=rankings,
            measured=measured,
            by_input=by_input,
            by_output=by_output,
            dynamic_rest=any(r.kind == "least_busy" for r in rest),
            **p.common(),
        )
    return TieredPrefer(
        rankings=rankings,
        measured=measured,
        pivot_kind=pivot.kind,
        tiers=tiers,
        dynamic_rest=any(r.kind in _PIVOTS for r in rest),
        # measured latency reorders a `fastest` before the pivot, or after least_busy (whose members are walked
        # in a fixed order): then the pick ranks the pool in full
        static_prefix=not any(r.kind == "fastest" for r in (prefix if pivot.kind == "cheapest" else rankings)),
        **p.common(),
    )


def _tiers(pool: Sequence[Entry], prefix: tuple[RankKey, ...]) -> list[list[Entry]]:
    """The pool split by equal keys of the request-independent rankings before the pivot, best tier first."""
    tiers: dict[tuple, list[Entry]] = {}
    for e in pool:
        tiers.setdefault(tuple(r.key(e, None) for r in prefix), []).append(e)
    return [tiers[key] for key in sorted(tiers)]


def _tier(pivot: str, members: list[Entry], rest: tuple[RankKey, ...]) -> tuple:
    """One tier, ready for its pivot: `cheapest` -> price groups in input and in output price order (each
    group's members sorted by the later request-independent rankings, then name); `least_busy` -> the members
    sorted by the later rankings, then name."""
    static_rest = [r for r in rest if r.kind not in _PIVOTS]

    def by_rest(e: Entry) -> tuple:
        return (*(r.key(e, None) for r in static_rest), e.name)

    if pivot == "least_busy":
        return tuple(sorted(members, key=by_rest))
    groups: dict[tuple[float, float], list[Entry]] = {}
    for e in members:
        groups.setdefault((e.ip, e.op), []).append(e)
    price_groups = [PriceGroup(ip, op, tuple(sorted(ms, key=by_rest))) for (ip, op), ms in groups.items()]
    return tuple(sorted(price_groups, key=lambda g: g.ip)), tuple(sorted(price_groups, key=lambda g: g.op))


def _balance(p: _Parts) -> Selector:
    mode = str(p.action.mode.value) if p.action.mode else None
    settings = p.cache.get(SETTINGS_KEY)
    health = (
        float(setting(settings, "health.window")),
        float(setting(settings, "health.success_weight")),
        float(setting(settings, "health.latency_weight")),
    )
    return BalanceSelector(mode=mode, key=p.key, health=health, **p.common())


def _split(p: _Parts) -> Selector:
    given = (number(w.value) for w in p.action.weights)
    weights = dict(zip((p.resolve(m) for m in p.action.members), given, strict=False))
    name = p.action.experiment
    return SplitSelector(
        weights=tuple(weights.get(e, 0.0) for e in p.pool),
        key=p.key,
        experiment=str(name.value) if name is not None else None,
        **p.common(),
    )


def _best_of(p: _Parts) -> Selector:
    judge = p.resolve(p.action.judge) if p.action.judge else None
    return BestOfSelector(judge=judge, key=p.key, **p.common())


#: The builder for each action kind (the grammar's action keywords).
BUILDERS: Mapping[str, Callable[[_Parts], Selector]] = {
    "use": _use,
    "prefer": _prefer,
    "balance": _balance,
    "split": _split,
    "race": lambda p: RaceSelector(key=p.key, **p.common()),
    "consensus": lambda p: ConsensusSelector(
        min_agreement=int(number(p.action.min_agreement.value)) if p.action.min_agreement else 1,
        key=p.key,
        **p.common(),
    ),
    "best_of": _best_of,
}
if set(BUILDERS) != {"use", "prefer"} | n.GROUP_ACTIONS:
    raise TypeError(f"action builders do not match the action kinds: {sorted(BUILDERS)}")


def build_selector(
    action: n.Action,
    entries: Mapping[str, Entry],
    resolve: Callable[[n.ModelRef], Entry],
    key: str = "",
    cache: dict | None = None,
    *,
    today: datetime.date,
) -> Selector:
    """`cache` (one per compile) shares the filtered and sorted catalog between rules with equal constraints
    and rankings: a 1,000-rule policy over a 4,000-model catalog then filters and sorts a handful of times.
    `today` is the compile's date: a `prefer` over the catalog never ranks a model deprecated on or before it."""
    cache = {} if cache is None else cache
    static = [c for c in action.where if c.metric != "cost" and not on_request(c)]
    costs: tuple[Limit, ...] = tuple(
        AttrLimit(c.metric, c.op, str(literal(c.value).value), c.capability.upper() if c.capability else None)
        if on_request(c)
        else CostLimit(c.op, number(literal(c.value).value), literal(c.value).text)
        for c in action.where
        if c.metric == "cost" or on_request(c)
    )
    fallbacks = tuple(dict.fromkeys(resolve(f) for f in action.fallbacks))
    listed = action.members or action.among
    if action.kind == "use" and action.model:
        candidates = [resolve(action.model)]
    elif listed:
        candidates = list(dict.fromkeys(resolve(m) for m in listed))
    else:
        candidates = list(entries.values())
    whole_catalog = not (action.kind == "use" or listed)
    among = tuple(e.name for e in candidates) if action.among else None
    rankings = tuple(rank_key(r, entries, cache) for r in action.rankings)
    needs = unknown_needs(rankings, costs, static)
    # the pool depends on the static constraints, the list ranked, and which unknown numbers the rule skips
    skey = ("filter", _static_key(static), among, needs)
    # a `use` or `prefer` selector depends only on what this says (no state key): rules that say the same share it
    sig = None
    if action.kind in ("use", "prefer"):
        model = resolve(action.model).name if action.model else None
        sig = ("selector", action.kind, model, rankings, skey, costs, tuple(f.name for f in fallbacks))
        if sig in cache:
            return cache[sig]
    pool: list[Entry] = []
    rejects: list[tuple[Entry, Reason]] = []
    adhoc = cache.get(ADHOC_KEY) or frozenset()
    if whole_catalog and adhoc:  # a model the catalog does not list is ranked only where a rule names it
        candidates = [e for e in candidates if e.name not in adhoc]
    unknown = _unknown_numbers(needs)
    if whole_catalog and skey in cache:
        shared_pool, shared_rejects = cache[skey]
    else:
        for e in candidates:
            if whole_catalog and retired(e.spec, today):
                # `prefer` never ranks a model past its deprecation date; `use` and `fallback` still may (W108)
                rejects.append((e, Reason(Code.DEPRECATED, f"deprecated since {e.spec.deprecation_date}")))
                continue
            why = next((r for c in static if (r := static_reason(e, c))), None) or (
                unknown(e) if unknown is not None else None
            )
            if why:
                rejects.append((e, why))
            else:
                pool.append(e)
        shared_pool, shared_rejects = tuple(pool), tuple(rejects)
        if whole_catalog:
            cache[skey] = (shared_pool, shared_rejects)
    fitting = tuple(
        f for f in fallbacks if not any(static_reason(f, c) for c in static) and (unknown is None or unknown(f) is None)
    )
    parts = _Parts(action, resolve, shared_pool, shared_rejects, skey, costs, fallbacks, key, cache, rankings, fitting)
    selector = BUILDERS[action.kind](parts)
    if sig is not None:
        cache[sig] = selector
    return selector
