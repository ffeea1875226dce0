"""Condition reasoning for lint: one rule condition (AST) in, its disjunctive normal form and three-valued facts
(does an atom always hold, never hold, or is it unknown, given the literals of one conjunction) out."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.language import nodes as n
from engine.runtime.policy import NEGATED, OPS

__all__ = ["MAX_TERMS", "Facts", "Var", "dnf", "holds"]

MAX_TERMS = 64  # a condition whose disjunctive normal form is larger is not reasoned about


# ---- condition reasoning: sound (never claims an implication that does not hold), not complete ------------


@dataclass
class Var:
    """What a conjunction of literals says about one request variable (`tokens` or an attribute)."""

    integer: bool = False
    present: bool = False  # known to be passed
    allowed: list[Any] | None = None  # when present, the value is one of these
    excluded: list[Any] = field(default_factory=list)  # when present, the value is none of these
    lo: float = -math.inf  # numeric bounds when present (open bounds exclude the value itself)
    lo_open: bool = True
    hi: float = math.inf
    hi_open: bool = True
    numeric: bool = False  # when present, the value is a number within the bounds
    truthy: bool | None = None

    def inside(self, x: float) -> bool:  # within the bounds
        return (self.lo, self.lo_open) < (x, True) and (x, False) < (self.hi, not self.hi_open)


def _region(op: str, c: float, integer: bool) -> tuple[float, bool, float, bool]:
    """The values v with `v op c` as (lo, lo_open, hi, hi_open); the integers, when `integer`, as closed bounds."""
    if integer:
        f, ce, inf = math.floor(c), math.ceil(c), math.inf
        return {
            "<": (-inf, True, ce - 1, False),
            "<=": (-inf, True, f, False),
            ">": (f + 1, False, inf, True),
            ">=": (ce, False, inf, True),
            "==": (c, False, c, False),
        }[op]
    return {
        "<": (-math.inf, True, c, True),
        "<=": (-math.inf, True, c, False),
        ">": (c, True, math.inf, True),
        ">=": (c, False, math.inf, True),
        "==": (c, False, c, False),
    }[op]


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _concrete(v: Any, kind: str, op: str, c: Any) -> bool:
    """Python semantics of one atom on a concrete value (v None = missing), as the generated code evaluates it."""
    try:
        return v is not None and bool(v if kind == "truthy" else v in c if kind == "in" else OPS[op](v, c))
    except TypeError:
        return False


class Facts:
    """The literals of one conjunction, queried three-valued: True (always), False (never) or None (unknown)."""

    def __init__(
        self, term: list[tuple[n.Cond, bool]], pids: dict[int, frozenset[int]], semantic: frozenset[str] = frozenset()
    ):
        self.pids = pids
        self.semantic = semantic  # the tasks with examples: `task is X` may hold by meaning, with no pattern matched
        self.pos: list[frozenset[int]] = []  # at least one of these patterns matched
        self.neg: set[int] = set()  # none of these patterns matched
        self.meant: dict[str, bool] = {}  # semantic task -> whether `task is X` holds
        self.vars: dict[str, Var] = {}
        for node, positive in term:
            self._add(node, positive)

    def var(self, op: n.Operand) -> Var:
        # a function call is one value per request (each function is called once), so it reasons like an attribute
        key = "\0tokens" if op.builtin else f"\0call {op.name}" if op.call else op.name
        if op.task is not None:  # `similarity(X)`: one number per request and task
            key = f"\0similarity {op.task}"
        if key not in self.vars:
            tokens = Var(integer=True, present=True, lo=0, lo_open=False, numeric=True)
            self.vars[key] = tokens if op.builtin else Var()
        return self.vars[key]

    def _add(self, node: n.Cond, positive: bool) -> None:
        if isinstance(node, n.TaskIs) and node.name in self.semantic:
            self.meant[node.name] = positive
            if not positive:  # false: none of its patterns matched (true says nothing of them)
                self.neg.update(self.pids[id(node)])
            return
        if isinstance(node, (n.TaskMatch, n.TaskIs)):
            (self.pos.append if positive else self.neg.update)(self.pids[id(node)])
            return
        kind, operand, op, c = _atom(node)
        v = self.var(operand)
        if kind == "truthy":
            v.present |= positive
            v.truthy = positive
            if v.integer and positive:
                v.lo, v.lo_open = max(v.lo, 1), False
            elif v.integer:
                v.hi, v.hi_open = min(v.hi, 0), False
        elif kind == "in":
            if positive:
                v.present = True
                v.allowed = [x for x in (c if v.allowed is None else v.allowed) if x in c]
            else:
                v.excluded.extend(c)
        elif not positive and not v.integer and op not in ("==", "!="):
            return  # `not attr < 5`: missing, a type mismatch, or >= 5 -- nothing usable
        else:
            op = op if positive else NEGATED[op]
            v.present |= positive
            if op == "!=":
                v.excluded.append(c)
            elif op == "==":
                v.allowed = [x for x in (v.allowed if v.allowed is not None else [c]) if x == c]
            if op != "!=" and _num(c):
                lo, lo_open, hi, hi_open = _region(op, c, v.integer)
                v.lo, v.lo_open = max((v.lo, v.lo_open), (lo, lo_open))
                hi, closed = min((v.hi, not v.hi_open), (hi, not hi_open))
                v.hi, v.hi_open, v.numeric = hi, not closed, True

    def candidates(self, v: Var) -> list[Any] | None:
        """Every value the variable may have (None = missing), or None when unbounded."""
        if v.allowed is None:
            if v.integer and v.hi - v.lo <= 64:
                return [x for x in range(int(v.lo), int(v.hi) + 1) if x not in v.excluded]
            return None
        vals = [
            x
            for x in v.allowed
            if x not in v.excluded and (not v.numeric or (isinstance(x, (int, float)) and v.inside(x)))
        ]
        return vals if v.present else [*vals, None]

    def atom(self, node: n.Cond) -> bool | None:
        if isinstance(node, (n.TaskMatch, n.TaskIs)):
            s = self.pids[id(node)]
            if isinstance(node, n.TaskIs) and node.name in self.semantic:
                known = self.meant.get(node.name)
                return known if known is not None else True if any(p - self.neg <= s for p in self.pos) else None
            if any(p - self.neg <= s for p in self.pos):
                return True
            return False if s <= self.neg else None
        kind, operand, op, c = _atom(node)
        v = self.var(operand)
        vals = self.candidates(v)
        if vals is not None:
            got = {_concrete(x, kind, op, c) for x in vals}
            return True if got <= {True} else False if got == {False} else None
        if kind == "truthy":
            return v.truthy if v.truthy is not None else (True if v.present and v.numeric and v.lo > 0 else None)
        if kind == "in":
            return False if all(x in v.excluded for x in c) else None
        if op == "==":
            return False if c in v.excluded or (v.truthy is False and bool(c)) else None
        if op == "!=":
            return True if v.present and c in v.excluded else None
        if not (v.present and v.numeric and _num(c)):
            return None
        lo, lo_open, hi, hi_open = _region(op, c, v.integer)
        if (v.lo, v.lo_open) >= (lo, lo_open) and (v.hi, not v.hi_open) <= (hi, not hi_open):
            return True
        below = v.hi < lo or (v.hi == lo and (v.hi_open or lo_open))
        return False if below or hi < v.lo or (hi == v.lo and (hi_open or v.lo_open)) else None

    def empty(self) -> bool:
        """A contradiction was found (the conjunction can never hold)."""
        return any(
            (v.present or v.integer)
            and (v.lo > v.hi or (v.lo == v.hi and (v.lo_open or v.hi_open)) or self.candidates(v) == [])
            for v in self.vars.values()
        )


def _compare_form(node: n.Compare) -> tuple[str, n.Operand, str, Any]:
    assert isinstance(node.right, n.Literal)  # the compiler refuses a list on the right (E400)
    return "cmp", node.left, node.op, node.right.value


# How lint reads each condition kind: an attribute test as (kind, operand, op, value); pattern atoms are
# decided from the pattern facts (None here); not/and/or are walked by dnf() and holds(). Checked at import.
_FORMS: Mapping[type, Callable[[Any], tuple[str, n.Operand, str, Any]] | None] = n.exhaustive(
    {
        n.TaskMatch: None,
        n.TaskIs: None,
        n.Truthy: lambda c: ("truthy", c.operand, "", None),
        n.InList: lambda c: ("in", c.left, "", [i.value for i in c.right.items]),
        n.Compare: _compare_form,
        n.Not: None,
        n.And: None,
        n.Or: None,
    },
    "lint",
)


def _atom(node: n.Cond) -> tuple[str, n.Operand, str, Any]:
    form = _FORMS[type(node)]
    assert form is not None, f"{type(node).__name__} is not an attribute test"
    return form(node)


def dnf(node: n.Cond | None, positive: bool = True) -> list[list[tuple[n.Cond, bool]]] | None:
    """The condition as a disjunction of conjunctions of (atom, polarity), or None when too large."""
    if node is None or isinstance(node, n.Not):
        return [[]] if node is None else dnf(node.operand, not positive)
    if not isinstance(node, (n.And, n.Or)):
        return [[(node, positive)]]
    each = [dnf(x, positive) for x in node.operands]
    parts = [p for p in each if p is not None]
    if len(parts) != len(each):
        return None
    terms = [t for p in parts for t in p] if isinstance(node, n.And) != positive else [[]]
    for p in parts if isinstance(node, n.And) == positive else ():
        terms = [a + b for a in terms for b in p] if len(terms) * len(p) <= MAX_TERMS else []
    return terms if 0 < len(terms) <= MAX_TERMS else None


def holds(facts: Facts, node: n.Cond | None) -> bool | None:
    """Kleene evaluation of a condition under the facts of one conjunction."""
    if node is None:
        return True
    if isinstance(node, n.Not):
        v = holds(facts, node.operand)
        return None if v is None else not v
    if isinstance(node, (n.And, n.Or)):
        vals = [holds(facts, x) for x in node.operands]
        stop = isinstance(node, n.Or)  # the value that decides: True for or, False for and
        return stop if stop in vals else (None if None in vals else not stop)
    return facts.atom(node)
