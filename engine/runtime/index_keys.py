"""Index keys: what a rule's guard can ask the rule index (engine/compiler/guards.py derives them from a condition;
engine/runtime/index.py looks them up per request)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["BUILTIN", "Eq", "Guard", "Key", "Missing", "NoPattern", "NotIn", "PatternHit", "Range", "Truthy"]

BUILTIN = "tokens"


@dataclass(frozen=True, slots=True)
class PatternHit:
    """Fires when pattern `pid` matched the prompt."""

    pid: int


@dataclass(frozen=True, slots=True)
class NoPattern:
    """Fires when none of the patterns `pids` matched the prompt."""

    pids: frozenset[int]


@dataclass(frozen=True, slots=True)
class Eq:
    """Fires when the operand equals `value` (a dict lookup)."""

    operand: str
    value: Any


@dataclass(frozen=True, slots=True)
class NotIn:
    """Fires unless the operand is present and equals one of `values` (so also when it is missing)."""

    operand: str
    values: frozenset


@dataclass(frozen=True, slots=True)
class Range:
    """`operand op value` (op one of < <= > >=): with holds=True fires when the comparison is true, with
    holds=False fires unless it is true (missing, mismatched types and NaN included)."""

    operand: str
    op: str
    value: Any
    holds: bool


@dataclass(frozen=True, slots=True)
class Truthy:
    """With truthy=True fires when the operand is present and truthy; with truthy=False when it is missing or
    falsy."""

    operand: str
    truthy: bool


@dataclass(frozen=True, slots=True)
class Missing:
    """Fires when the operand was not passed."""

    operand: str


Key = PatternHit | NoPattern | Eq | NotIn | Range | Truthy | Missing

#: How selective each kind of key tends to be (lower: fires for fewer requests); `and` keeps the most selective.
_RANK: Mapping[type, int] = {PatternHit: 0, Eq: 1, Range: 2, Truthy: 3, NoPattern: 4, NotIn: 4, Missing: 4}


def _rank(key: Key) -> int:
    return 4 if type(key) is Truthy and not key.truthy else _RANK[type(key)]


@dataclass(frozen=True, slots=True)
class Guard:
    """A rule can hold only when one of `keys` fires."""

    keys: frozenset

    @property
    def cost(self) -> tuple[int, int]:
        """(the least selective kind of key in it, how many keys): `and` keeps the guard with the lowest cost."""
        return max(_rank(k) for k in self.keys), len(self.keys)

    @property
    def needs_scan(self) -> bool:
        """Whether a key depends on the pattern scan."""
        return any(isinstance(k, (PatternHit, NoPattern)) for k in self.keys)
