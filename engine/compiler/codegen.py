"""Rule code generation: the checked AST rules in, their compiled conditions, index guards and Selectors out."""

from __future__ import annotations

import builtins
import datetime
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import CodeType, FunctionType
from typing import Any

from engine.compiler.actions import build_selector, literal, number, retired
from engine.compiler.guards import GUARDS, both
from engine.language import nodes as n
from engine.runtime.index_keys import Guard
from engine.runtime.policy import MISSING, CompiledRule, Entry, get_attr

__all__ = ["Guard", "build_rules", "build_selector", "guard", "literal", "number", "retired"]


class _Gen:
    """Python source for one condition: a template whose constants (attribute names, values, pattern masks) are
    parameters `_k0`, `_k1`..., so rules of the same shape share one compiled code object."""

    def __init__(self, task_masks: Mapping[str, int], pattern_of: Mapping[int, int]):
        self.task_masks, self.pattern_of = task_masks, pattern_of
        self.tmp = 0
        self.consts: list[Any] = []

    def const(self, value: Any) -> str:
        self.consts.append(value)
        return f"_k{len(self.consts) - 1}"

    def attr(self, name: str) -> str:
        return f"A.get({self.const(name)}, _M)" if "." not in name else f"_g(A, {self.const(name)})"

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
        return f"(T {node.op} {gen.const(value)})"
    v = gen.fresh()
    return f"(({v} := {gen.attr(node.left.name)}) is not _M and {v} {node.op} {gen.const(value)})"


def _in_list(gen: _Gen, node: Any) -> str:
    values = tuple(item.value for item in node.right.items)
    if node.left.builtin:
        return f"(T in {gen.const(values)})"
    v = gen.fresh()
    return f"(({v} := {gen.attr(node.left.name)}) is not _M and {v} in {gen.const(values)})"


#: Python source for each condition kind, over M (matched-pattern mask), T (tokens) and A (attributes).
_EXPR: Mapping[type, Callable[[_Gen, Any], str]] = n.exhaustive(
    {
        n.And: _and,
        n.Or: _or,
        n.Not: lambda gen, node: f"(not {gen.expr(node.operand)})",
        n.TaskMatch: lambda gen, node: f"((M >> {gen.const(gen.pattern_of[id(node.pattern)])}) & 1)",
        n.TaskIs: lambda gen, node: f"((M & {gen.const(gen.task_masks[node.name])}) != 0)",
        n.Truthy: lambda gen, node: "(T > 0)" if node.operand.builtin else f"bool({gen.attr(node.operand.name)})",
        n.Compare: _compare,
        n.InList: _in_list,
    },
    "code generation",
)


#: Compiled condition templates: (source, number of constants) -> code. Rules of one shape share a template
#: (a generated 10,000-rule policy has a handful), and templates outlive a compile, so a reload compiles none.
_TEMPLATES: dict[tuple[str, int], CodeType] = {}
_TEMPLATES_MAX = 20_000
#: Templates compiled per call of compile(): one call per function costs ~65 us, one module of thousands is
#: slower still; chunks of a few dozen are the fastest.
CHUNK = 32
_GLOBALS: dict[str, Any] = {"_M": MISSING, "_g": get_attr, "__builtins__": builtins}

Item = tuple[str, str, tuple[Any, ...]]  # (function name, template, constants)


def _functions(items: list[Item]) -> dict[str, Callable[..., Any]]:
    """Functions `name(M, T, A) -> expression` for `(name, template, constants)`: each distinct template is
    compiled once (its constants `_k0`, `_k1`... are parameters with defaults), and each function binds its own
    constants as those defaults."""
    if len(_TEMPLATES) > _TEMPLATES_MAX:
        _TEMPLATES.clear()
    todo = list(dict.fromkeys(key for _, body, consts in items if (key := (body, len(consts))) not in _TEMPLATES))
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start : start + CHUNK]
        source = "".join(
            f"def _t{j}(M, T, A{''.join(f', _k{c}=None' for c in range(k))}):\n    return {body}\n"
            for j, (body, k) in enumerate(chunk)
        )
        namespace: dict[str, Any] = {}
        exec(compile(source, "<rule conditions>", "exec"), dict(_GLOBALS), namespace)
        for j, key in enumerate(chunk):
            _TEMPLATES[key] = namespace[f"_t{j}"].__code__
    return {
        name: FunctionType(_TEMPLATES[(body, len(consts))], _GLOBALS, name, consts or None)
        for name, body, consts in items
    }


def _compiled(name: str, node: n.Cond, task_masks: Mapping[str, int], pattern_of: Mapping[int, int]) -> Item:
    gen = _Gen(task_masks, pattern_of)
    return name, gen.expr(node), tuple(gen.consts)


class _LazyAtoms(Mapping[int, Callable[..., Any]]):
    """id(atom node) -> its function, for traced evaluation (explain) and the mismatched-types fallback of
    decide(): compiled on first use, since most rules are never traced."""

    __slots__ = ("_cond", "_index", "_pattern_of", "_table", "_task_masks")

    def __init__(self, cond: n.Cond, index: int, task_masks: Mapping[str, int], pattern_of: Mapping[int, int]):
        self._cond, self._index, self._task_masks, self._pattern_of = cond, index, task_masks, pattern_of
        self._table: dict[int, Callable[..., Any]] | None = None

    def _load(self) -> dict[int, Callable[..., Any]]:
        table = self._table
        if table is None:  # two threads may both compile: the same functions, and either result is kept
            atoms = list(_atoms(self._cond))
            names = [f"atom_{self._index}_{k}" for k in range(len(atoms))]
            made = _functions(
                [_compiled(name, a, self._task_masks, self._pattern_of) for name, a in zip(names, atoms, strict=True)]
            )
            table = self._table = {id(a): made[name] for name, a in zip(names, atoms, strict=True)}
        return table

    def __getitem__(self, key: int) -> Callable[..., Any]:
        return self._load()[key]

    def __iter__(self) -> Iterator[int]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


def guard(node: n.Cond | None, gen: _Gen) -> Guard | None:
    """A necessary condition for `node` that the rule index can look up, or None (always try the rule): see
    engine/compiler/guards.py."""
    return None if node is None else both(node, gen)[0]


#: The index guard each condition kind gives (engine/compiler/guards.py).
_GUARD = GUARDS


def _atoms(node: n.Cond):
    for x in n.walk_cond(node):
        if isinstance(x, n.ATOMS):
            yield x


def build_rules(
    rules: Sequence[n.Rule],
    entries: Mapping[str, Entry],
    resolve: Callable[[n.ModelRef], Entry],
    task_masks: Mapping[str, int],
    pattern_of: Mapping[int, int],
    cache: dict | None = None,
    *,
    today: datetime.date,
) -> tuple[list[CompiledRule], list[Guard | None]]:
    """Every rule compiled (its condition a Python function, its action a Selector), and each rule's index
    guard. `cache` (one per compile) lets rules with equal actions share their filtered, sorted pools."""
    conds = _functions([_compiled(f"rule_{i}", r.cond, task_masks, pattern_of) for i, r in enumerate(rules) if r.cond])
    gen = _Gen(task_masks, pattern_of)
    compiled, guards = [], []
    for i, rule in enumerate(rules):
        needs_scan = rule.cond is not None and any(isinstance(a, (n.TaskMatch, n.TaskIs)) for a in _atoms(rule.cond))
        atoms = _LazyAtoms(rule.cond, i, task_masks, pattern_of) if rule.cond is not None else {}
        key = f"{rule.span.file}:{rule.span.line}"
        selector = build_selector(rule.action, entries, resolve, key=key, cache=cache, today=today)
        cond = conds.get(f"rule_{i}")
        compiled.append(CompiledRule(i, rule.span, rule.text, rule, cond, atoms, needs_scan, selector))
        guards.append(guard(rule.cond, gen))
    return compiled, guards
