"""Rule index: every rule's guard (engine/compiler/guards.py) in, for one request the streams of candidate rules
(ascending rule indices) out, so decide() never walks a rule whose guard says it cannot hold.

What a request fires, and the stream it gives:
* rules with no guard: one sorted tuple. A condition on a Python function (`complexity() > 50`, `is_urgent()`)
  has no guard: its value exists only once the function is called with the request, and the index never calls
  it, so a rule whose only test is a function call is tried on every request (docs/performance.md);
* `x == c` / `x in [..]`: a dict lookup of x's value, a sorted tuple;
* thresholds (`tokens > N`, `score <= N`, and their negations): per operand and comparison, the thresholds are
  sorted at compile time, so one bisect gives the fired ones (engine/runtime/streams.py: RangeFamily);
* truthy, falsy and missing attributes: a sorted tuple each;
* negations (`not x == c`, `not task ~ p`): the family's rules in order, skipping the few that the value (or
  the matched patterns) rule out (streams.py: NegatedFamily); when nothing is ruled out, the sorted tuple;
* once the prompt is scanned: the rules of the patterns that matched.

A stream is a sorted tuple of rule indices, or an object with `after(i)`: the first candidate rule above i
(BIG when there is none). A rule may appear in several streams; decide() skips duplicates. The index may
name a rule whose condition turns out false; it never leaves out a rule whose condition can hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from engine.runtime.index_keys import BUILTIN, Eq, Guard, Key, Missing, NoPattern, NotIn, PatternHit, Range, Truthy
from engine.runtime.policy import MISSING, get_attr
from engine.runtime.streams import BIG, NegatedFamily, RangeFamily, Stream

__all__ = [
    "ALL",
    "BIG",
    "BUILTIN",
    "PLAIN",
    "SMALL_RULES",
    "Eq",
    "Guard",
    "Key",
    "Missing",
    "NoPattern",
    "NotIn",
    "PatternHit",
    "Range",
    "RangeFamily",
    "RuleIndex",
    "SmallIndex",
    "Truthy",
    "build_index",
]

PLAIN = frozenset({str, int, float, bool, type(None)})  # types whose hash agrees with ==: safe dict lookups
ALL = object()  # key of `equalities` tables: every rule of the table (for values whose hash may disagree with ==)


class OperandIndex:
    """Everything the index keys on one operand (`tokens` or an attribute, maybe dotted)."""

    __slots__ = ("builtin", "dotted", "eq", "eq_all", "falsy", "missing", "name", "not_in", "ranges", "truthy")

    def __init__(self, name: str):
        self.name, self.builtin, self.dotted = name, name == BUILTIN, "." in name
        self.eq: dict[Any, tuple[int, ...]] = {}
        self.eq_all: tuple[int, ...] = ()
        self.ranges: tuple[RangeFamily, ...] = ()
        self.truthy: tuple[int, ...] = ()
        self.falsy: tuple[int, ...] = ()
        self.missing: tuple[int, ...] = ()
        self.not_in: NegatedFamily | None = None  # rules with a NotIn key on this operand

    def streams(self, v: Any, out: list[Stream]) -> None:
        """Append the streams value v fires (v is MISSING when the request does not have the attribute)."""
        plain = type(v) in PLAIN
        if self.eq_all and v is not MISSING:
            seq = self.eq.get(v) if plain else self.eq_all
            if seq:
                out.append(seq)
        for fam in self.ranges:
            s = fam.stream(v)
            if s is not None:
                out.append(s)
        if self.truthy or self.falsy:
            try:
                truth = bool(v)
            except Exception:  # an object that will not say: its rules decide for themselves
                out.extend(s for s in (self.truthy, self.falsy) if s)
            else:
                seq = self.truthy if truth else self.falsy
                if seq:
                    out.append(seq)
        if self.missing and v is MISSING:
            out.append(self.missing)
        if self.not_in is not None:
            # a value whose hash may disagree with == (or a missing one) rules nothing out
            out.append(self.not_in.stream((v,) if plain and v is not MISSING else ()))


#: Policies with at most this many rules, whose guards are patterns, equalities, thresholds on `tokens` or nothing,
#: also get a SmallIndex.
SMALL_RULES = 64


class SmallIndex:
    """The rule index of a small policy as bitmasks (bit i: rule i), for evaluate.decide: with a few dozen
    rules, OR-ing machine-word ints beats merging streams. Built from the same guards as the streams."""

    __slots__ = ("equalities", "first_pattern_rule", "pattern_masks", "token_ranges", "unguarded")

    def __init__(self, ix: RuleIndex):
        self.unguarded = _mask(ix.unguarded)
        # (thresholds, bisect, masks): masks[k] is the rules the family fires when bisect puts the tokens at k
        self.token_ranges = tuple((fam.ts, fam.bisect, _cut_masks(fam)) for fam in ix.token_ranges)
        # (name, dotted, value -> mask, with ALL -> the mask of every rule of the table)
        self.equalities = tuple(
            (name, dotted, MappingProxyType({v: _mask(rules) for v, rules in eq.items()}))
            for name, dotted, eq in ix.equalities
        )
        self.pattern_masks = tuple(_mask(rules) for rules in ix.pattern_rules)
        self.first_pattern_rule = ix.first_pattern_rule


def _cut_masks(fam: RangeFamily) -> tuple[int, ...]:
    out = []
    for cut in range(fam.m + 1):
        fired = [r for r, rank in zip(fam.rr, fam.rank, strict=True) if (rank < cut) == fam.prefix]
        out.append(_mask(fired))
    return tuple(out)


def _mask(rules: Sequence[int]) -> int:
    out = 0
    for r in rules:
        out |= 1 << r
    return out


class RuleIndex:
    """The compiled rule index of a policy (immutable once built)."""

    __slots__ = (
        "equalities",
        "first_pattern_hit",
        "first_pattern_rule",
        "no_pattern",
        "operands",
        "pattern_rules",
        "small",
        "token_ranges",
        "unguarded",
    )

    def __init__(self) -> None:
        self.unguarded: tuple[int, ...] = ()
        self.first_pattern_rule = 0  # the lowest rule whose guard depends on the pattern scan (BIG: none)
        self.pattern_rules: tuple[tuple[int, ...], ...] = ()  # pattern id -> the rules it fires
        self.first_pattern_hit = BIG  # the lowest rule with a PatternHit key (BIG: none)
        self.no_pattern: NegatedFamily | None = None  # rules with a NoPattern key
        self.operands: tuple[OperandIndex, ...] = ()  # operands with keys other than Eq (tokens: see token_ranges)
        self.token_ranges: tuple[RangeFamily, ...] = ()  # the threshold families of `tokens` (an int)
        self.small: SmallIndex | None = None  # the same index as bitmasks, for small policies (see SmallIndex)
        self.equalities: tuple[tuple[str, bool, Mapping[Any, tuple[int, ...]]], ...] = ()  # (name, dotted, eq)

    def start(self, attrs: Mapping[str, Any], tokens: int, streams: list[Stream], heads: list[int]) -> None:
        """Append the streams of candidate rules that do not depend on the pattern scan, and each one's first
        rule to `heads`. (evaluate.decide runs it inline but for start_operands.)"""
        if self.unguarded:
            streams.append(self.unguarded)
            heads.append(self.unguarded[0])
        for name, dotted, eq in self.equalities:  # operands keyed by equality only: the common case
            v = get_attr(attrs, name) if dotted else attrs.get(name, MISSING)
            if v is not MISSING:
                seq = eq.get(v) if type(v) in PLAIN else eq[ALL]
                if seq:
                    streams.append(seq)
                    heads.append(seq[0])
        for fam in self.token_ranges:  # `tokens > N` and the like: one bisect per family
            seq = fam.cut(fam.bisect(fam.ts, tokens)) if type(tokens) is int else fam.stream(tokens)
            if seq is not None:
                streams.append(seq)
                heads.append(seq[0] if type(seq) is tuple else seq.after(-1))
        if self.operands:
            self.start_operands(attrs, tokens, streams, heads)

    def start_operands(self, attrs: Mapping[str, Any], tokens: int, streams: list[Stream], heads: list[int]) -> None:
        """start() for the operands with keys other than equality."""
        known = len(streams)
        for op in self.operands:
            if op.builtin:
                v = tokens
            elif op.dotted:
                v = get_attr(attrs, op.name)
            else:
                v = attrs.get(op.name, MISSING)
            op.streams(v, streams)
        heads += [s[0] if type(s) is tuple else s.after(-1) for s in streams[known:]]

    def scanned(self, hits: Sequence[int], streams: list[Stream], heads: list[int]) -> None:
        """Append the streams of the rules the matched patterns `hits` fire (and their first rules to `heads`)."""
        rules = self.pattern_rules
        if len(hits) <= 8:  # a few matched patterns: a stream each
            for p in hits:
                seq = rules[p]
                if seq:
                    streams.append(seq)
                    heads.append(seq[0])
        elif self.first_pattern_hit < BIG:  # many: one merged stream, so the walk stays one comparison per stream
            seq = tuple(sorted({r for p in hits for r in rules[p]}))
            if seq:
                streams.append(seq)
                heads.append(seq[0])
        if self.no_pattern is not None:
            stream = self.no_pattern.stream(frozenset(hits) if len(hits) > 8 else hits)
            streams.append(stream)
            heads.append(stream[0] if type(stream) is tuple else stream.after(-1))


def build_index(guards: Sequence[Guard | None], npat: int) -> RuleIndex:
    """The index of rules with these guards (guards[i] is rule i's; None: always a candidate)."""
    ix = RuleIndex()
    unguarded: list[int] = []
    pattern_rules: list[list[int]] = [[] for _ in range(npat)]
    no_pattern: dict[int, list[frozenset]] = {}
    operands: dict[str, dict[str, Any]] = {}
    first_pattern = BIG

    def slot(name: str) -> dict[str, Any]:
        return operands.setdefault(name, {"eq": {}, "ranges": {}, "truthy": [], "falsy": [], "missing": [], "ne": {}})

    for i, guard in enumerate(guards):
        if guard is None:
            unguarded.append(i)
            continue
        if guard.needs_scan:
            first_pattern = min(first_pattern, i)
        for key in guard.keys:
            if type(key) is PatternHit:
                pattern_rules[key.pid].append(i)
            elif type(key) is NoPattern:
                no_pattern.setdefault(i, []).append(key.pids)
            elif type(key) is Eq:
                slot(key.operand)["eq"].setdefault(key.value, []).append(i)
            elif type(key) is NotIn:
                slot(key.operand)["ne"].setdefault(i, []).append(key.values)
            elif type(key) is Range:
                kind = "str" if isinstance(key.value, str) else "num"
                slot(key.operand)["ranges"].setdefault((key.op, key.holds, kind), []).append((i, key.value))
            elif type(key) is Truthy:
                slot(key.operand)["truthy" if key.truthy else "falsy"].append(i)
            elif type(key) is Missing:
                slot(key.operand)["missing"].append(i)
            else:  # pragma: no cover - every key kind is handled above
                raise TypeError(f"the rule index has no case for {key!r}")
    ix.unguarded = tuple(unguarded)
    ix.first_pattern_rule = first_pattern
    ix.pattern_rules = tuple(tuple(sorted(set(r))) for r in pattern_rules)
    ix.first_pattern_hit = min((r[0] for r in ix.pattern_rules if r), default=BIG)
    ix.no_pattern = NegatedFamily(no_pattern) if no_pattern else None
    built, equalities = [], []
    for name, parts in operands.items():
        op = OperandIndex(name)
        op.eq = {v: tuple(sorted(set(rs))) for v, rs in parts["eq"].items()}
        op.eq_all = tuple(sorted({r for rs in parts["eq"].values() for r in rs}))
        op.ranges = tuple(RangeFamily(o, holds, entries) for (o, holds, _), entries in sorted(parts["ranges"].items()))
        op.truthy, op.falsy = tuple(sorted(set(parts["truthy"]))), tuple(sorted(set(parts["falsy"])))
        op.missing = tuple(sorted(set(parts["missing"])))
        op.not_in = NegatedFamily(parts["ne"]) if parts["ne"] else None
        if op.eq and not (op.builtin or op.ranges or op.truthy or op.falsy or op.missing or op.not_in):
            equalities.append((name, op.dotted, MappingProxyType({**op.eq, ALL: op.eq_all})))
        elif op.builtin and not (op.eq or op.truthy or op.falsy or op.missing or op.not_in):
            ix.token_ranges = op.ranges
        else:
            built.append(op)
    ix.operands = tuple(built)
    ix.equalities = tuple(equalities)
    if len(guards) <= SMALL_RULES and not (ix.operands or ix.no_pattern):
        ix.small = SmallIndex(ix)
    return ix
