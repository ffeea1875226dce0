"""Evaluation: a CompiledPolicy and a Request in, the deciding rule and model out (the fast path of decide()).

The fast path walks only the rules the index says can match (engine/runtime/index.py): rules with no index
guard, rules whose guard the request's attributes and token count fire, and, once the prompt has been scanned
(lazily, at most once, by one RE2 set), rules guarded by the patterns that matched or did not match. The traced
path (explain: every rule in order, atom by atom) is engine/runtime/traced.py, re-exported here; tests check that
both always agree.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any, Literal, overload

from engine.runtime.index import ALL, BIG, PLAIN
from engine.runtime.policy import MISSING, CompiledPolicy, CompiledRule, Entry, Request, get_attr
from engine.runtime.traced import cond_value, stand_in_reason, trace

__all__ = ["Decided", "Found", "decide", "stand_in_reason", "trace"]

Decided = tuple[CompiledRule, Entry, tuple[str, ...], int, bool, bool]
#: Decided, but the fallbacks may be None: not computed (Decision works them out when first read).
Found = tuple[CompiledRule, Entry, tuple[str, ...] | None, int, bool, bool]


@overload
def decide(policy: CompiledPolicy, req: Request, lazy: Literal[False] = False) -> Decided | None: ...
@overload
def decide(policy: CompiledPolicy, req: Request, lazy: bool) -> Found | None: ...
def decide(policy: CompiledPolicy, req: Request, lazy: bool = False) -> Found | None:
    """Fast path: (rule, model, fallbacks, matched-pattern mask, scanned, stood in) or None when nothing routes.
    `stood in` says the model is a fallback standing in for a rule pick the request rules out (Selector.stand_in).
    `lazy`: leave the viable fallbacks None when the rule lists some (Engine.decide: Decision finds them on first
    read, from the same request, so they come out the same).

    A small policy (index.SmallIndex) is walked here, its candidates one int, bit i for rule i, from the lowest
    bit; any other over the index's streams (_decide_streams). Both give the same answers (tests/test_index.py)."""
    small = policy.index.small
    tokens = req.tokens
    if small is None or type(tokens) is not int:
        return _decide_streams(policy, req, lazy)
    rules = policy.rules
    attrs = req.attrs
    m = small.unguarded
    for name, dotted, table in small.equalities if attrs else ():  # no attributes: no equality holds
        v = get_attr(attrs, name) if dotted else attrs.get(name, MISSING)
        if v is not MISSING:
            bits = table.get(v) if type(v) in PLAIN else table[ALL]
            if bits:
                m |= bits
    for ts, bisect, masks in small.token_ranges:
        m |= masks[bisect(ts, tokens)]
    matcher = policy.matcher
    scanned = matcher is None
    matched = 0
    first = small.first_pattern_rule
    while True:
        if m:
            low = m & -m
            i = low.bit_length() - 1
            rule = rules[i]
            scan = not scanned and (i >= first or rule.needs_scan)
        elif scanned or first == BIG:
            return None
        else:
            scan = True
        if scan:  # matcher.scan_hits(), inline
            hits = matcher.match_bytes(req.text.encode("utf-8", "surrogatepass"))  # type: ignore[union-attr]
            scanned = True
            if hits:
                entry_pid = matcher.entry_pid  # type: ignore[union-attr]
                if entry_pid is not None:
                    hits = [entry_pid[hits[0]]] if len(hits) == 1 else list({entry_pid[e] for e in hits})
                masks = small.pattern_masks
                for p in hits:
                    m |= masks[p]
                if len(hits) <= 32:
                    for p in hits:
                        matched |= 1 << p
                else:
                    matched = matcher.mask(hits)  # type: ignore[union-attr]
            continue
        m ^= low
        decided = _try(rule, req, matched, scanned, lazy)
        if decided is not None:
            return decided


def _try(rule: CompiledRule, req: Request, matched: int, scanned: bool, lazy: bool) -> Found | None:
    """One candidate rule: its condition, then its pick, or a fallback standing in (Selector.stand_in)."""
    cond = rule.cond
    try:
        holds = cond is None or cond(matched, req.tokens, req.attrs, req)
    except (TypeError, ArithmeticError):  # mismatched types, a Decimal NaN: that comparison is false
        holds = cond_value(rule, rule.node.cond, matched, req.tokens, req.attrs, None, 0, req=req)
    if not holds:
        return None
    sel = rule.selector
    chosen = sel.pick(req)
    stood_in = False
    if chosen is None and sel.fallbacks:
        chosen = sel.stand_in(req)
        stood_in = chosen is not None
    if chosen is None:
        return None
    fallbacks = (None if lazy else sel.viable_fallbacks(req, chosen)) if sel.fallbacks else ()
    return rule, chosen, fallbacks, matched, scanned, stood_in


def _decide_streams(policy: CompiledPolicy, req: Request, lazy: bool = False) -> Found | None:
    """decide() over the index's streams (engine/runtime/index.py), merged in rule order: `heads` holds each
    stream's next rule, the smallest is tried next, and every stream at it moves on past it."""
    rules = policy.rules
    index = policy.index
    tokens, attrs = req.tokens, req.attrs
    # index.start(), inline but for the operands that are more than equalities
    seq: Any = index.unguarded
    streams: list[Any] = [seq] if seq else []
    heads: list[int] = [seq[0]] if seq else []
    for name, dotted, eq in index.equalities:
        v = get_attr(attrs, name) if dotted else attrs.get(name, MISSING)
        if v is not MISSING:
            seq = eq.get(v) if type(v) in PLAIN else eq[ALL]
            if seq:
                streams.append(seq)
                heads.append(seq[0])
    for fam in index.token_ranges:  # thresholds on `tokens`: one bisect per family
        if type(tokens) is int:
            k = fam.bisect(fam.ts, tokens)
            seq = fam.cut(k) if (k if fam.prefix else k < fam.m) else None
        else:
            seq = fam.stream(tokens)
        if seq is not None:
            streams.append(seq)
            heads.append(seq[0] if type(seq) is tuple else seq.after(-1))
    if index.operands:
        index.start_operands(attrs, tokens, streams, heads)
    matcher = policy.matcher
    scanned = matcher is None
    matched = 0
    first = index.first_pattern_rule
    while True:
        i = (heads[0] if len(heads) == 1 else min(heads)) if heads else BIG
        if not scanned and (i >= first or (i != BIG and rules[i].needs_scan)):
            if i == BIG and first == BIG:
                return None
            # matcher.scan_hits(), inline: the set's entries, as pattern ids, and their mask
            hits = matcher.match_bytes(req.text.encode("utf-8", "surrogatepass"))  # type: ignore[union-attr]
            if hits:
                entry_pid = matcher.entry_pid  # type: ignore[union-attr]
                if entry_pid is not None:
                    hits = [entry_pid[hits[0]]] if len(hits) == 1 else list({entry_pid[e] for e in hits})
                if len(hits) <= 32:
                    for p in hits:
                        matched |= 1 << p
                else:
                    matched = matcher.mask(hits)  # type: ignore[union-attr]
            scanned = True
            if len(hits) > 8 or index.no_pattern is not None:
                index.scanned(hits, streams, heads)
            else:  # index.scanned(), inline for a few matched patterns
                for p in hits:
                    seq = index.pattern_rules[p]
                    if seq:
                        streams.append(seq)
                        heads.append(seq[0])
            continue
        if i == BIG:
            return None
        rule = rules[i]
        decided = _try(rule, req, matched, scanned, lazy)
        if decided is not None:
            return decided
        for k, h in enumerate(heads):  # rule i did not decide: every stream at it moves on past it
            if h == i:
                s = streams[k]
                if type(s) is tuple:
                    j = bisect_right(s, i)
                    heads[k] = s[j] if j < len(s) else BIG
                else:
                    heads[k] = s.after(i)
