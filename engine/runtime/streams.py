"""Candidate streams: the compiled families of threshold and negated keys in, for one request value the rules they
fire, in ascending rule order, out (the parts of engine/runtime/index.py that need more than a sorted tuple).

A stream is a sorted tuple of rule indices, or an object with `after(i)`: the first candidate rule above i
(BIG when there is none). Thresholds: one bisect gives the fired thresholds as a prefix or a suffix of their
sorted order; the first fired rule is a precomputed running minimum, the next ones come from a few probes of
the following positions, then a segment tree of ranks (logarithmic, never a walk over the policy). Negated
keys: the family's rules in order, skipping the few the request's values rule out.
"""

from __future__ import annotations

import sys
from bisect import bisect_left, bisect_right
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from engine.runtime.policy import MISSING

__all__ = ["BIG", "NUMBERS", "NegatedFamily", "RangeFamily", "Stream"]

BIG = sys.maxsize  # "no more candidates"
NUMBERS = frozenset({int, float, bool})
Stream = Any  # tuple[int, ...] | an object with after(i) -> int


def _first_below(tree: list[int], size: int, start: int, hi: int) -> int:
    """The first leaf position >= start whose value is < hi in a min segment tree (-1 when none)."""
    if start >= size:
        return -1
    i = start + size
    while tree[i] >= hi:
        while i & 1:
            i >>= 1
        if i == 0:
            return -1
        i += 1
    while i < size:
        i <<= 1
        if tree[i] >= hi:
            i += 1
    return i - size


def _first_at_least(tree: list[int], size: int, start: int, lo: int) -> int:
    """The first leaf position >= start whose value is >= lo in a max segment tree (-1 when none)."""
    if start >= size:
        return -1
    i = start + size
    while tree[i] < lo:
        while i & 1:
            i >>= 1
        if i == 0:
            return -1
        i += 1
    while i < size:
        i <<= 1
        if tree[i] < lo:
            i += 1
    return i - size


def _tree(values: Sequence[int], pad: int, pick: Any) -> tuple[list[int], int]:
    size = 1
    while size < len(values):
        size <<= 1
    tree = [pad] * (2 * size)
    tree[size : size + len(values)] = values
    for i in range(size - 1, 0, -1):
        tree[i] = pick(tree[2 * i], tree[2 * i + 1])
    return tree, size


class RangeFamily:
    """The thresholds of one operand, comparison and polarity (see guards.Range), as a sorted array plus the
    same entries in rule order with each one's rank in the sorted array."""

    __slots__ = (
        "bisect",
        "holds",
        "m",
        "max_tree",
        "min_tree",
        "op",
        "pre_first",
        "prefix",
        "rank",
        "rr",
        "size",
        "strings",
        "suf_first",
        "ts",
    )

    def __init__(self, op: str, holds: bool, entries: list[tuple[int, Any]]):
        self.op, self.holds = op, holds
        # a value v fires the thresholds t with t < v (op >), t <= v (>=), t > v (<) or t >= v (<=): a prefix or
        # a suffix of the sorted thresholds, cut where bisect puts v; the negation fires the other side
        self.bisect = bisect_left if op in (">", "<=") else bisect_right
        self.prefix = (op in (">", ">=")) == holds
        self.strings = isinstance(entries[0][1], str)
        entries.sort(key=lambda e: e[0])
        self.rr = tuple(r for r, _ in entries)  # rule index per position, ascending
        m = self.m = len(entries)
        order = sorted(range(m), key=lambda q: (entries[q][1], q))
        self.ts = [entries[q][1] for q in order]  # thresholds, ascending
        rank = [0] * m
        for r, q in enumerate(order):
            rank[q] = r
        self.rank = rank
        pre = [-1] * (m + 1)  # pre[k]: the first position whose rank is < k
        best = -1
        for k, q in enumerate(order, 1):
            best = q if best < 0 or q < best else best
            pre[k] = best
        suf = [-1] * (m + 1)  # suf[k]: the first position whose rank is >= k
        best = -1
        for k in range(m - 1, -1, -1):
            q = order[k]
            best = q if best < 0 or q < best else best
            suf[k] = best
        self.pre_first, self.suf_first = pre, suf
        self.min_tree, self.size = _tree(rank, BIG, min)
        self.max_tree, _ = _tree(rank, -1, max)

    def stream(self, v: Any) -> Stream | None:
        """The rules this family fires for operand value v (None: none)."""
        t = type(v)
        if t is str if self.strings else (t in NUMBERS and v == v):
            return self.cut(self.bisect(self.ts, v))
        if v is MISSING or t in NUMBERS:  # missing, or NaN: every comparison is false
            return None if self.holds else self.rr
        return self.rr  # another type: mismatched (false) or an exotic number; try them all

    def cut(self, cut: int) -> Stream | None:
        """The rules whose rank is below `cut` (a prefix family) or at least `cut` (a suffix family)."""
        if self.prefix:
            return None if cut == 0 else (self.rr if cut == self.m else _RangeStream(self, True, cut))
        return None if cut == self.m else (self.rr if cut == 0 else _RangeStream(self, False, cut))


class _RangeStream:
    """The rules of a RangeFamily whose rank is below `cut` (prefix) or at least `cut` (suffix)."""

    __slots__ = ("cut", "fam", "prefix")

    def __init__(self, fam: RangeFamily, prefix: bool, cut: int):
        self.fam, self.prefix, self.cut = fam, prefix, cut

    def after(self, i: int) -> int:
        fam, cut = self.fam, self.cut
        rr, rank = fam.rr, fam.rank
        if i < 0:
            q = fam.pre_first[cut] if self.prefix else fam.suf_first[cut]
            return rr[q]
        q = bisect_right(rr, i)
        m = fam.m
        if q >= m:
            return BIG
        end = min(q + 4, m)
        if self.prefix:
            while q < end:  # thresholds usually follow the rule order: the next position tends to fire
                if rank[q] < cut:
                    return rr[q]
                q += 1
            q = _first_below(fam.min_tree, fam.size, q, cut)
        else:
            while q < end:
                if rank[q] >= cut:
                    return rr[q]
                q += 1
            q = _first_at_least(fam.max_tree, fam.size, q, cut)
        return BIG if q < 0 or q >= m else rr[q]


_COMPLEX = object()  # NegatedFamily.single for a rule with more than one key or value


class NegatedFamily:
    """Rules with negated keys (NoPattern, or NotIn on one operand), in rule order, each with its keys' value
    sets: a key fires unless the request has one of its values (a matched pattern, the operand's value)."""

    __slots__ = ("keys", "rr", "single", "values")

    def __init__(self, entries: Mapping[int, list[frozenset]]):
        self.rr = tuple(sorted(entries))
        self.keys = tuple(tuple(entries[r]) for r in self.rr)
        # the lone value of a rule's lone key (the common case: one test for the walk), else _COMPLEX
        self.single = tuple(next(iter(k[0])) if len(k) == 1 and len(k[0]) == 1 else _COMPLEX for k in self.keys)
        self.values = frozenset().union(*(v for sets in self.keys for v in sets))  # every value some key names

    def stream(self, present: Collection[Any]) -> Stream:
        """The rules with a key that fires when the request has exactly the values `present` (of those named)."""
        return self.rr if self.values.isdisjoint(present) else _Excluding(self, present)


class _Excluding:
    """A NegatedFamily's rules in order, skipping those whose every key names a value the request has."""

    __slots__ = ("fam", "present")

    def __init__(self, fam: NegatedFamily, present: Collection[Any]):
        self.fam, self.present = fam, present

    def after(self, i: int) -> int:
        fam, present = self.fam, self.present
        rr, single = fam.rr, fam.single
        q = bisect_right(rr, i) if i >= 0 else 0
        m = len(rr)
        while q < m:
            one = single[q]
            if one is _COMPLEX:
                if any(s.isdisjoint(present) for s in fam.keys[q]):
                    return rr[q]
            elif one not in present:
                return rr[q]
            q += 1
        return BIG
