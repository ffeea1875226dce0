"""Rule code generation: one checked AST rule in, its compiled condition, index guard and Selector out."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from typing import Any

from engine.language import nodes as n
from engine.runtime.policy import (
    MISSING,
    NEGATED,
    OPS,
    CompiledRule,
    CostLimit,
    Entry,
    PriceGroup,
    RankKey,
    Selector,
    get_attr,
)
from engine.runtime.units import fmt_count, fmt_ms, fmt_price, fmt_value

Guard = tuple  # ("patterns", frozenset[int]) | ("attr", name, frozenset[value])


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


class _Gen:
    def __init__(self, task_masks: Mapping[str, int], pattern_of: Mapping[int, int]):
        self.task_masks, self.pattern_of = task_masks, pattern_of
        self.tmp = 0

    def attr(self, name: str) -> str:
        return f"A.get({name!r}, _M)" if "." not in name else f"_g(A, {name!r})"

    def expr(self, node: n.Cond) -> str:
        if isinstance(node, n.And):
            return "(" + " and ".join(self.expr(x) for x in node.operands) + ")"
        if isinstance(node, n.Or):
            return "(" + " or ".join(self.expr(x) for x in node.operands) + ")"
        if isinstance(node, n.Not):
            return f"(not {self.expr(node.operand)})"
        if isinstance(node, n.TaskMatch):
            return f"((M >> {self.pattern_of[id(node.pattern)]}) & 1)"
        if isinstance(node, n.TaskIs):
            return f"((M & {self.task_masks[node.name]}) != 0)"
        if isinstance(node, n.Truthy):
            return "(T > 0)" if node.operand.builtin else f"bool({self.attr(node.operand.name)})"
        if isinstance(node, n.Compare):
            value = literal(node.right).value
            if node.left.builtin:
                return f"(T {node.op} {value!r})"
            self.tmp += 1
            v = f"_v{self.tmp}"
            return f"(({v} := {self.attr(node.left.name)}) is not _M and {v} {node.op} {value!r})"
        if isinstance(node, n.InList):
            values = tuple(item.value for item in node.right.items)
            if node.left.builtin:
                return f"(T in {values!r})"
            self.tmp += 1
            v = f"_v{self.tmp}"
            return f"(({v} := {self.attr(node.left.name)}) is not _M and {v} in {values!r})"
        raise TypeError(f"not a condition node: {node!r}")


def _function(body: str, name: str) -> Callable[..., Any]:
    namespace: dict[str, Any] = {"_M": MISSING, "_g": get_attr}
    exec(compile(f"def {name}(M, T, A):\n    return {body}\n", f"<rule {name}>", "exec"), namespace)
    return namespace[name]


def guard(node: n.Cond | None, gen: _Gen) -> Guard | None:
    """A necessary condition for `node` that the rule index can look up, or None (always try the rule)."""
    if node is None:
        return None
    if isinstance(node, n.TaskMatch):
        return ("patterns", frozenset({gen.pattern_of[id(node.pattern)]}))
    if isinstance(node, n.TaskIs):
        mask = gen.task_masks[node.name]
        return ("patterns", frozenset(i for i in range(mask.bit_length()) if mask >> i & 1))
    if isinstance(node, n.Compare) and node.op == "==" and not node.left.builtin:
        return _attr_guard(node.left.name, (literal(node.right).value,))
    if isinstance(node, n.InList) and not node.left.builtin:
        return _attr_guard(node.left.name, tuple(i.value for i in node.right.items))
    if isinstance(node, n.And):
        found = [g for g in (guard(x, gen) for x in node.operands) if g is not None]
        found.sort(key=lambda g: (g[0] != "patterns", len(g[-1])))
        return found[0] if found else None
    if isinstance(node, n.Or):
        each = [guard(x, gen) for x in node.operands]
        parts = [p for p in each if p is not None]
        if len(parts) != len(each):
            return None
        kinds = {p[:-1] for p in parts}
        if len(kinds) != 1:
            return None
        return (*parts[0][:-1], frozenset().union(*(p[-1] for p in parts)))
    return None


def _attr_guard(name: str, values: tuple) -> Guard | None:
    try:
        return ("attr", name, frozenset(values))
    except TypeError:
        return None


def _atoms(node: n.Cond):
    for x in n.walk_cond(node):
        if isinstance(x, n.ATOMS):
            yield x


# ---- selectors ------------------------------------------------------------------------------------


def static_reason(e: Entry, c: n.Constraint) -> str | None:
    """Why a model fails a request-independent `where` constraint, or None when it passes."""
    value = c.value.value if isinstance(c.value, n.Literal) else None
    if c.metric == "provider":
        names = [str(i.value) for i in c.value.items] if isinstance(c.value, n.ListLit) else []
        return None if e.provider in names else f"provider {e.provider} not in [{', '.join(names)}]"
    if c.metric == "supports":
        return None if value in e.spec.supports else f"no {value} support"
    if c.metric == "capability":
        score = e.spec.capability(c.capability)
        if score is None:
            return f"no {c.capability} score"
        actual, shown = score, f"capability({c.capability}) {score:g}"
    elif c.metric == "latency":
        actual, shown = e.latency_ms / 1000, f"latency {fmt_ms(e.latency_ms)}"
    elif c.metric == "price":  # compared in $/1M rounded to 1e-9: $0.45/1M and $0.00045/1k are the same price
        actual, shown = round(e.ip * 1e6, 9), f"price {fmt_price(e.ip)}"
        per_million = round(number(value) * 1e6, 9)
        if OPS[c.op](actual, per_million):
            return None
        return f"{shown} {NEGATED[c.op]} {fmt_value('price', per_million / 1e6)}"
    elif c.metric == "context":
        actual, shown = e.context, f"context {fmt_count(e.context)}"
    else:
        return None
    if OPS[c.op](actual, value):
        return None
    return f"{shown} {NEGATED[c.op]} {fmt_value(literal(c.value).kind, value)}"


def retired(spec: Any, today: datetime.date) -> bool:
    """Whether a catalog model (a ModelSpec) is past its deprecation date on `today` (the date itself counts)."""
    return spec.deprecation_date is not None and spec.deprecation_date <= today


def _static_key(static: list[n.Constraint]) -> tuple:
    def value(v: n.Value | None) -> object:
        return tuple(str(i.value) for i in v.items) if isinstance(v, n.ListLit) else (v.value if v else None)

    return tuple((c.metric, c.op, value(c.value), c.capability) for c in static)


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
    static = [c for c in action.where if c.metric != "cost"]
    costs = tuple(
        CostLimit(c.op, number(literal(c.value).value), literal(c.value).text)
        for c in action.where
        if c.metric == "cost"
    )
    fallbacks = tuple(dict.fromkeys(resolve(f) for f in action.fallbacks))
    if action.kind == "use" and action.model:
        candidates = [resolve(action.model)]
    elif action.members:
        candidates = list(dict.fromkeys(resolve(m) for m in action.members))
    else:
        candidates = list(entries.values())
    whole_catalog = not (action.kind == "use" or action.members)
    skey = ("filter", _static_key(static))
    if whole_catalog and skey in cache:
        pool, rejects = (list(x) for x in cache[skey])
    else:
        pool, rejects = [], []
        for e in candidates:
            if whole_catalog and retired(e.spec, today):
                # `prefer` never ranks a model past its deprecation date; `use` and `fallback` still may (W108)
                rejects.append((e, f"deprecated since {e.spec.deprecation_date}"))
                continue
            why = next((r for c in static if (r := static_reason(e, c))), None)
            if why:
                rejects.append((e, why))
            else:
                pool.append(e)
        if whole_catalog:
            cache[skey] = (tuple(pool), tuple(rejects))
    rankings = tuple(RankKey(r.kind, r.capability.upper() if r.capability else None) for r in action.rankings)
    rkey = ("order", skey, rankings)
    if action.kind == "use":
        return Selector("use", candidates[0], tuple(pool), tuple(rejects), (), "static", costs, fallbacks)
    if action.members:
        given = (number(w.value) for w in action.weights)
        weights = dict(zip((resolve(m) for m in action.members), given, strict=False))
        return Selector(
            action.kind,
            None,
            tuple(pool),
            tuple(rejects),
            (),
            "static",
            costs,
            fallbacks,
            mode=str(action.mode.value) if action.mode else None,
            weights=tuple(weights.get(e, 0.0) for e in pool),
            judge=resolve(action.judge) if action.judge else None,
            key=key,
        )
    measured = any(r.kind == "fastest" for r in rankings)
    if all(r.kind not in ("cheapest", "least_busy") for r in rankings):
        if rkey not in cache:
            cache[rkey] = tuple(sorted(pool, key=lambda e: (*(r.key(e, None) for r in rankings), e.name)))
        pool = list(cache[rkey])
        return Selector(
            "prefer", None, tuple(pool), tuple(rejects), rankings, "static", costs, fallbacks, measured=measured
        )
    pool.sort(key=lambda e: e.name)
    if rankings[0].kind == "cheapest" and rkey in cache:
        by_input, by_output = cache[rkey]
        return Selector(
            "prefer",
            None,
            tuple(pool),
            tuple(rejects),
            rankings,
            "cheapest",
            costs,
            fallbacks,
            by_input,
            by_output,
            measured=measured,
            dynamic_rest=any(r.kind == "least_busy" for r in rankings[1:]),
        )
    if rankings[0].kind == "cheapest":
        rest = rankings[1:]
        groups: dict[tuple[float, float], list[Entry]] = {}
        for e in pool:
            groups.setdefault((e.ip, e.op), []).append(e)
        static_rest = [r for r in rest if r.kind not in ("least_busy", "cheapest")]

        def by_rest(e: Entry) -> tuple:
            return (*(r.key(e, None) for r in static_rest), e.name)

        price_groups = [PriceGroup(ip, op, tuple(sorted(members, key=by_rest))) for (ip, op), members in groups.items()]
        by_input = tuple(sorted(price_groups, key=lambda g: g.ip))
        by_output = tuple(sorted(price_groups, key=lambda g: g.op))
        cache[rkey] = (by_input, by_output)
        return Selector(
            "prefer",
            None,
            tuple(pool),
            tuple(rejects),
            rankings,
            "cheapest",
            costs,
            fallbacks,
            by_input,
            by_output,
            measured=measured,
            dynamic_rest=any(r.kind == "least_busy" for r in rest),
        )
    return Selector(
        "prefer", None, tuple(pool), tuple(rejects), rankings, "generic", costs, fallbacks, measured=measured
    )


def build_rule(
    index: int,
    rule: n.Rule,
    entries: Mapping[str, Entry],
    resolve: Callable[[n.ModelRef], Entry],
    task_masks: Mapping[str, int],
    pattern_of: Mapping[int, int],
    cache: dict | None = None,
    *,
    today: datetime.date,
) -> tuple[CompiledRule, Guard | None]:
    gen = _Gen(task_masks, pattern_of)
    cond = atoms = None
    needs_scan = False
    if rule.cond is not None:
        cond = _function(gen.expr(rule.cond), f"rule_{index}")
        atoms = {id(a): _function(gen.expr(a), f"atom_{index}") for a in _atoms(rule.cond)}
        needs_scan = any(isinstance(a, (n.TaskMatch, n.TaskIs)) for a in _atoms(rule.cond))
    selector = build_selector(
        rule.action, entries, resolve, key=f"{rule.span.file}:{rule.span.line}", cache=cache, today=today
    )
    compiled = CompiledRule(index, rule.span, rule.text, rule, cond, atoms or {}, needs_scan, selector)
    return compiled, guard(rule.cond, gen)
