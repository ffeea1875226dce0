"""Index guards: one rule condition (AST) in, the index keys of which at least one fires whenever it holds out.

A guard is a necessary condition the rule index can look up instead of evaluating the rule: a set of keys, and
the rule can hold only when one of them fires for the request. `guard(cond)` computes it by structural
induction, carrying both polarities, because `not` swaps them: for every condition it knows keys that fire
whenever the condition is true (`pos`) and keys that fire whenever it is false (`neg`).

* `task ~ p`: pos {pattern p matched}, neg {pattern p did not match}; `task is T` likewise over T's patterns, but
  for a task with examples no pos guard (it holds by meaning with no pattern matched): its rule is always tried.
* `similarity(T) ...`: no guard either way (a value only the request's vector gives, like a function's).
* `x == c`, `x in [..]`: pos {x equals a listed value}, neg {x is missing or equals none of them}; `x != c` the
  other way round (plus "x is missing" on the neg side: a comparison with a missing attribute is false).
* `x < c` and the other orderings, on `tokens` or an attribute: a threshold key that holds when the comparison
  does (one bisect over the sorted thresholds per operand at decide time); neg: the threshold key that holds
  unless the comparison does.
* a bare `x`: pos {x truthy}, neg {x missing or falsy}; a bare `tokens` is `tokens > 0`.
* a condition on a Python function (`complexity() > 50`, `is_urgent()`): no guard either way. The function's
  value exists only once it is called, with the request; the index never calls it, so such an atom alone leaves
  its rule tried on every request (an indexable atom beside it under `and` still guards the rule).
* `a and b`: pos is the most selective of the operands' pos guards (any one is necessary); neg is the union of
  their neg guards. `a or b` the other way round. `not a` swaps pos and neg.

None means no guard: the rule is tried on every request. A key may fire when its condition does not hold
(over-approximation only costs an evaluation); it must never stay quiet when the condition can hold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from engine.language import nodes as n
from engine.runtime.index_keys import BUILTIN, Eq, Guard, Key, Missing, NoPattern, NotIn, PatternHit, Range, Truthy

__all__ = ["GUARDS", "both"]

Pair = tuple[Guard | None, Guard | None]  # (pos, neg)


def _one(*keys: Key) -> Guard:
    return Guard(frozenset(keys))


def _union(guards: list[Guard | None]) -> Guard | None:
    if any(g is None for g in guards):
        return None
    return Guard(frozenset().union(*(g.keys for g in guards if g is not None)))


def _best(guards: list[Guard | None]) -> Guard | None:
    found = [g for g in guards if g is not None]
    return min(found, key=lambda g: g.cost) if found else None


def _operand(op: n.Operand) -> str:
    return BUILTIN if op.builtin else op.name


def _hashable(values: tuple) -> bool:
    try:
        hash(values)
    except TypeError:
        return False
    return True


def _equality(node: Any, gen: Any) -> Pair:
    """`x == c` and `x in [..]`."""
    if node.left.call or node.left.task is not None:
        return None, None
    values = tuple(i.value for i in node.right.items) if isinstance(node, n.InList) else (node.right.value,)
    if not _hashable(values):
        return None, None
    x = _operand(node.left)
    return _one(*(Eq(x, v) for v in values)), _one(NotIn(x, frozenset(values)))


def _compare(node: Any, gen: Any) -> Pair:
    if node.op == "==" or node.left.call or node.left.task is not None:
        return _equality(node, gen)
    x = _operand(node.left)
    value = node.right.value
    if node.op == "!=":
        if not _hashable((value,)):
            return None, None
        neg = _one(Eq(x, value)) if node.left.builtin else _one(Eq(x, value), Missing(x))
        return _one(NotIn(x, frozenset((value,)))), neg
    if not _orderable(value):
        return None, None
    return _one(Range(x, node.op, value, True)), _one(Range(x, node.op, value, False))


def _orderable(value: Any) -> bool:
    """Thresholds the index can sort: numbers (bools count) and strings."""
    return type(value) in (int, float, bool, str)


def _truthy(node: Any, gen: Any) -> Pair:
    if node.operand.call or node.operand.task is not None:
        return None, None
    if node.operand.builtin:  # `tokens` alone: tokens > 0
        return _one(Range(BUILTIN, ">", 0, True)), _one(Range(BUILTIN, ">", 0, False))
    x = _operand(node.operand)
    return _one(Truthy(x, True)), _one(Truthy(x, False))


def _task_is(node: Any, gen: Any) -> Pair:
    mask = gen.task_masks[node.name]
    pids = frozenset(i for i in range(mask.bit_length()) if mask >> i & 1)
    neg = _one(NoPattern(pids)) if pids else None
    # a task with examples holds by meaning with no pattern matched: no key says it does (false: no pattern matched)
    if node.name in getattr(gen, "semantic", ()):
        return None, neg
    if not pids:  # cannot happen for a declared task without examples (it has a pattern), but stay safe
        return None, None
    return _one(*(PatternHit(p) for p in pids)), neg


def _task_match(node: Any, gen: Any) -> Pair:
    pid = gen.pattern_of[id(node.pattern)]
    return _one(PatternHit(pid)), _one(NoPattern(frozenset({pid})))


def _and(node: Any, gen: Any) -> Pair:
    parts = [both(x, gen) for x in node.operands]
    return _best([p for p, _ in parts]), _union([q for _, q in parts])


def _or(node: Any, gen: Any) -> Pair:
    parts = [both(x, gen) for x in node.operands]
    return _union([p for p, _ in parts]), _best([q for _, q in parts])


def _not(node: Any, gen: Any) -> Pair:
    pos, neg = both(node.operand, gen)
    return neg, pos


#: The (pos, neg) guards of each condition kind.
GUARDS: Mapping[type, Callable[[Any, Any], Pair]] = n.exhaustive(
    {
        n.And: _and,
        n.Or: _or,
        n.Not: _not,
        n.TaskMatch: _task_match,
        n.TaskIs: _task_is,
        n.Truthy: _truthy,
        n.Compare: _compare,
        n.InList: _equality,
    },
    "the rule index",
)


def both(node: n.Cond, gen: Any) -> Pair:
    """(pos, neg): keys one of which fires whenever `node` is true, and whenever it is false (None: no guard).
    `gen` gives `task_masks` (task name -> pattern mask), `pattern_of` (id(Pattern node) -> pattern id) and
    optionally `semantic` (the names of the tasks with examples)."""
    return GUARDS[type(node)](node, gen)
