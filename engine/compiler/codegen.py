"""Rule code generation: the checked AST rules in, their compiled conditions, index guards and Selectors out."""

from __future__ import annotations

import builtins
import datetime
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import CodeType, FunctionType
from typing import Any, overload

from engine.compiler.actions import build_selector, literal, number, retired
from engine.compiler.guards import GUARDS, both
from engine.language import nodes as n
from engine.runtime.functions import Function, call_value
from engine.runtime.index_keys import Guard
from engine.runtime.policy import MISSING, CompiledRule, Entry, get_attr
from engine.runtime.semantic import SemanticTask, semantic_hit, similarity_of

__all__ = ["Guard", "build_rules", "build_selector", "guard", "literal", "number", "retired"]


class _Gen:
    """Python source for one condition: a template whose constants (attribute names, values, pattern masks, the
    policy's Python functions) are parameters `_k0`, `_k1`..., so rules of the same shape share one compiled code
    object."""

    def __init__(
        self,
        task_masks: Mapping[str, int],
        pattern_of: Mapping[int, int],
        functions: Mapping[str, Function] | None = None,
        semantic: Mapping[str, SemanticTask] | None = None,
    ):
        self.task_masks, self.pattern_of = task_masks, pattern_of
        self.functions: Mapping[str, Function] = functions or {}
        self.semantic: Mapping[str, SemanticTask] = semantic or {}
        self.tmp = 0
        self.consts: list[Any] = []

    def const(self, value: Any) -> str:
        self.consts.append(value)
        return f"_k{len(self.consts) - 1}"

    def attr(self, name: str) -> str:
        return f"A.get({self.const(name)}, _M)" if "." not in name else f"_g(A, {self.const(name)})"

    def operand(self, op: n.Operand) -> str:
        """An attribute's value, a function call's (`_c(R, fn)`: MISSING when the call has no value) or a semantic
        task's similarity (`_sim(R, task)`, engine/runtime/semantic.py)."""
        if op.task is not None:
            return f"_sim(R, {self.const(self.semantic[op.task])})"
        if op.call:
            return f"_c(R, {self.const(self.functions[op.name])})"
        return self.attr(op.name)

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
    if node.left.task is not None:  # similarity(X): NaN when the embedder failed, and then every comparison is false
        return f"(({v} := {gen.operand(node.left)}) == {v} and {v} {node.op} {gen.const(value)})"
    return f"(({v} := {gen.operand(node.left)}) is not _M and {v} {node.op} {gen.const(value)})"


def _in_list(gen: _Gen, node: Any) -> str:
    values = tuple(item.value for item in node.right.items)
    if node.left.builtin:
        return f"(T in {gen.const(values)})"
    v = gen.fresh()
    return f"(({v} := {gen.operand(node.left)}) is not _M and {v} in {gen.const(values)})"


def _task_is(gen: _Gen, node: Any) -> str:
    """Any pattern of the task matched (M), or, for a task with examples, the request is close enough in meaning:
    the patterns are checked first, so a match never embeds the request."""
    patterns = f"((M & {gen.const(gen.task_masks[node.name])}) != 0)"
    task = gen.semantic.get(node.name)
    if task is None:
        return patterns
    meaning = f"_sh(R, {gen.const(task)})"
    return f"({patterns} or {meaning})" if gen.task_masks[node.name] else meaning


#: Python source for each condition kind, over M (matched-pattern mask), T (tokens), A (attributes) and R (the
#: Request, which only function calls and semantic tasks read).
_EXPR: Mapping[type, Callable[[_Gen, Any], str]] = n.exhaustive(
    {
        n.And: _and,
        n.Or: _or,
        n.Not: lambda gen, node: f"(not {gen.expr(node.operand)})",
        n.TaskMatch: lambda gen, node: f"((M >> {gen.const(gen.pattern_of[id(node.pattern)])}) & 1)",
        n.TaskIs: _task_is,
        n.Truthy: lambda gen, node: "(T > 0)" if node.operand.builtin else f"bool({gen.operand(node.operand)})",
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
_GLOBALS: dict[str, Any] = {
    "_M": MISSING,
    "_g": get_attr,
    "_c": call_value,
    "_sh": semantic_hit,
    "_sim": similarity_of,
    "__builtins__": builtins,
}

Item = tuple[str, tuple[Any, ...]]  # (template, constants)


def _functions(items: list[Item]) -> list[Callable[..., Any]]:
    """Functions `(M, T, A, R=None) -> expression` for `(template, constants)`, in order: each distinct template is
    compiled once (its constants `_k0`, `_k1`... are parameters with defaults), and each function binds its own
    constants as those defaults. `constants` starts with R's default (None): see _compiled."""
    if len(_TEMPLATES) > _TEMPLATES_MAX:
        _TEMPLATES.clear()
    todo = list(dict.fromkeys(key for body, consts in items if (key := (body, len(consts))) not in _TEMPLATES))
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start : start + CHUNK]
        source = "".join(
            f"def _t{j}(M, T, A, R=None{''.join(f', _k{c}=None' for c in range(k - 1))}):\n    return {body}\n"
            for j, (body, k) in enumerate(chunk)
        )
        namespace: dict[str, Any] = {}
        exec(compile(source, "<rule conditions>", "exec"), dict(_GLOBALS), namespace)
        for j, key in enumerate(chunk):
            _TEMPLATES[key] = namespace[f"_t{j}"].__code__
    # each function takes its name from its template's code object (`_t0`...): a name of its own per rule would
    # be one more string per rule kept for the policy's lifetime
    return [FunctionType(_TEMPLATES[(body, len(consts))], _GLOBALS, None, consts) for body, consts in items]


def _compiled(
    node: n.Cond, task_masks: Mapping[str, int], pattern_of: Mapping[int, int], functions: Any, semantic: Any = None
) -> Item:
    """A condition's template and its parameters' defaults: None for R, then its constants."""
    gen = _Gen(task_masks, pattern_of, functions, semantic)
    return gen.expr(node), (None, *gen.consts)


class AtomBook:
    """For every rule of one policy: id(atom node) -> its function, for traced evaluation (explain) and the
    mismatched-types fallback of decide(). A rule's table is compiled on first use, since most rules are never
    traced; one book serves the whole policy, so a rule carries no lazy table of its own."""

    __slots__ = ("_functions", "_pattern_of", "_semantic", "_tables", "_task_masks")

    def __init__(
        self, task_masks: Mapping[str, int], pattern_of: Mapping[int, int], functions: Any = None, semantic: Any = None
    ):
        self._task_masks, self._pattern_of, self._functions = task_masks, pattern_of, functions
        self._semantic = semantic
        self._tables: dict[int, dict[int, Callable[..., Any]]] = {}

    def of(self, index: int, cond: n.Cond | None) -> Mapping[int, Callable[..., Any]]:
        table = self._tables.get(index)
        if table is None:  # two threads may both compile: the same functions, and either result is kept
            atoms = list(_atoms(cond)) if cond is not None else []
            made = _functions(
                [_compiled(a, self._task_masks, self._pattern_of, self._functions, self._semantic) for a in atoms]
            )
            table = self._tables[index] = {id(a): f for a, f in zip(atoms, made, strict=True)}
        return table


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
    functions: Mapping[str, Function] | None = None,
    semantic: Mapping[str, SemanticTask] | None = None,
) -> tuple[list[CompiledRule], Guards]:
    """Every rule compiled (its condition a Python function, its action a Selector), and each rule's index
    guard. `cache` (one per compile) lets rules with equal actions share their filtered, sorted pools.
    `functions`: the policy's Python functions by name (every call the rules make names one); `semantic`: the tasks
    with examples by name (engine/runtime/semantic.py)."""
    made = iter(_functions([_compiled(r.cond, task_masks, pattern_of, functions, semantic) for r in rules if r.cond]))
    compiled = []
    book = AtomBook(task_masks, pattern_of, functions, semantic)
    for i, rule in enumerate(rules):
        needs_scan = rule.cond is not None and any(_reads_patterns(a, task_masks) for a in _atoms(rule.cond))
        key = f"{rule.span.file}:{rule.span.line}"
        selector = build_selector(rule.action, entries, resolve, key=key, cache=cache, today=today)
        cond = next(made) if rule.cond is not None else None
        compiled.append(CompiledRule(i, rule, cond, book, needs_scan, selector))
    return compiled, Guards(rules, _Gen(task_masks, pattern_of, functions, semantic))


def _reads_patterns(atom: n.Cond, task_masks: Mapping[str, int]) -> bool:
    """Whether an atom reads the prompt's pattern matches (a task with examples only reads its meaning)."""
    return isinstance(atom, n.TaskMatch) or (isinstance(atom, n.TaskIs) and task_masks[atom.name] != 0)


class Guards(Sequence["Guard | None"]):
    """Each rule's index guard, worked out when read. build_index reads each one once, so the guards of a big
    policy are never all alive at once: built up front, 10,000 rules' guards took 4 MB, interleaved with the
    compiled rules, and their freed memory stayed behind in the process as a fragmented heap."""

    __slots__ = ("_gen", "_rules")

    def __init__(self, rules: Sequence[n.Rule], gen: _Gen):
        self._rules, self._gen = rules, gen

    def __len__(self) -> int:
        return len(self._rules)

    @overload
    def __getitem__(self, i: int) -> Guard | None: ...
    @overload
    def __getitem__(self, i: slice) -> list[Guard | None]: ...
    def __getitem__(self, i: int | slice) -> Guard | list[Guard | None] | None:
        if isinstance(i, slice):
            return [guard(r.cond, self._gen) for r in self._rules[i]]
        return guard(self._rules[i].cond, self._gen)

    def __iter__(self) -> Iterator[Guard | None]:
        gen = self._gen
        for rule in self._rules:
            yield guard(rule.cond, gen)
