"""Rule code generation: one checked AST rule in, its compiled condition, index guard and Selector out."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.compiler.actions import build_selector, literal, number, retired
from engine.language import nodes as n
from engine.runtime.policy import MISSING, CompiledRule, Entry, get_attr

__all__ = ["Guard", "build_rule", "build_selector", "guard", "literal", "number", "retired"]


@dataclass(frozen=True, slots=True)
class Guard:
    """A necessary condition for a rule that the rule index can look up: one of `patterns` matched (kind
    "patterns"), or the request attribute `attr` has one of `values` (kind "attr")."""

    kind: str  # "patterns" | "attr"
    values: frozenset  # pattern ids, or attribute values
    attr: str = ""

    @property
    def family(self) -> tuple[str, str]:
        """Guards of one family can be merged by a union of their values (an `or` of them)."""
        return self.kind, self.attr


class _Gen:
    def __init__(self, task_masks: Mapping[str, int], pattern_of: Mapping[int, int]):
        self.task_masks, self.pattern_of = task_masks, pattern_of
        self.tmp = 0

    def attr(self, name: str) -> str:
        return f"A.get({name!r}, _M)" if "." not in name else f"_g(A, {name!r})"

    def fresh(self) -> str:
        self.tmp += 1
        return f"_v{self.tmp}"

    def expr(self, node: n.Cond) -> str:
        return _EXPR[type(node)](self, node)


def _and(gen: _Gen, node: Any) -> str:
    return "(" + " and ".join(gen.expr(x) for x in node.operands) + ")"


def _or(gen: _Gen, node: Any) -> str:
    return "(" + " or ".join(gen.expr(x) for x in node.operands) + ")"


def _compare(gen: _Gen, node: Any) -> str:
    value = literal(node.right).value
    if node.left.builtin:
        return f"(T {node.op} {value!r})"
    v = gen.fresh()
    return f"(({v} := {gen.attr(node.left.name)}) is not _M and {v} {node.op} {value!r})"


def _in_list(gen: _Gen, node: Any) -> str:
    values = tuple(item.value for item in node.right.items)
    if node.left.builtin:
        return f"(T in {values!r})"
    v = gen.fresh()
    return f"(({v} := {gen.attr(node.left.name)}) is not _M and {v} in {values!r})"


#: Python source for each condition kind, over M (matched-pattern mask), T (tokens) and A (attributes).
_EXPR: Mapping[type, Callable[[_Gen, Any], str]] = n.exhaustive(
    {
        n.And: _and,
        n.Or: _or,
        n.Not: lambda gen, node: f"(not {gen.expr(node.operand)})",
        n.TaskMatch: lambda gen, node: f"((M >> {gen.pattern_of[id(node.pattern)]}) & 1)",
        n.TaskIs: lambda gen, node: f"((M & {gen.task_masks[node.name]}) != 0)",
        n.Truthy: lambda gen, node: "(T > 0)" if node.operand.builtin else f"bool({gen.attr(node.operand.name)})",
        n.Compare: _compare,
        n.InList: _in_list,
    },
    "code generation",
)


def _function(body: str, name: str) -> Callable[..., Any]:
    namespace: dict[str, Any] = {"_M": MISSING, "_g": get_attr}
    exec(compile(f"def {name}(M, T, A):\n    return {body}\n", f"<rule {name}>", "exec"), namespace)
    return namespace[name]


def guard(node: n.Cond | None, gen: _Gen) -> Guard | None:
    """A necessary condition for `node` that the rule index can look up, or None (always try the rule)."""
    return None if node is None else _GUARD[type(node)](node, gen)


def _guard_and(node: Any, gen: _Gen) -> Guard | None:
    found = [g for g in (guard(x, gen) for x in node.operands) if g is not None]
    found.sort(key=lambda g: (g.kind != "patterns", len(g.values)))
    return found[0] if found else None


def _guard_or(node: Any, gen: _Gen) -> Guard | None:
    each = [guard(x, gen) for x in node.operands]
    parts = [p for p in each if p is not None]
    if len(parts) != len(each) or len({p.family for p in parts}) != 1:
        return None
    return Guard(parts[0].kind, frozenset().union(*(p.values for p in parts)), parts[0].attr)


def _guard_task_is(node: Any, gen: _Gen) -> Guard:
    mask = gen.task_masks[node.name]
    return Guard("patterns", frozenset(i for i in range(mask.bit_length()) if mask >> i & 1))


def _guard_compare(node: Any, gen: _Gen) -> Guard | None:
    if node.op != "==" or node.left.builtin:
        return None
    return _attr_guard(node.left.name, (literal(node.right).value,))


def _guard_in_list(node: Any, gen: _Gen) -> Guard | None:
    return None if node.left.builtin else _attr_guard(node.left.name, tuple(i.value for i in node.right.items))


def _attr_guard(name: str, values: tuple) -> Guard | None:
    try:
        return Guard("attr", frozenset(values), name)
    except TypeError:
        return None


#: The index guard each condition kind gives (None: the rule must always be tried).
_GUARD: Mapping[type, Callable[[Any, _Gen], Guard | None]] = n.exhaustive(
    {
        n.And: _guard_and,
        n.Or: _guard_or,
        n.Not: lambda node, gen: None,
        n.TaskMatch: lambda node, gen: Guard("patterns", frozenset({gen.pattern_of[id(node.pattern)]})),
        n.TaskIs: _guard_task_is,
        n.Truthy: lambda node, gen: None,
        n.Compare: _guard_compare,
        n.InList: _guard_in_list,
    },
    "the rule index",
)


def _atoms(node: n.Cond):
    for x in n.walk_cond(node):
        if isinstance(x, n.ATOMS):
            yield x


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
