"""`prefer` selectors: a rule's compiled `prefer` action and a Request in, its best viable model (or its ranked
candidates) out.

The pool is already in rank order (StaticPrefer), walked as price groups (`cheapest` first: CheapestPrefer), in
tiers ordered by a request-dependent ranking (TieredPrefer), or ranked by a key computed per request
(GenericPrefer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from engine.runtime.constraints import violation
from engine.runtime.policy import Entry, PriceGroup, Request
from engine.runtime.selector_base import Selector

__all__ = ["CheapestPrefer", "GenericPrefer", "StaticPrefer", "TieredPrefer"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StaticPrefer(Selector):
    """`prefer` by rankings that do not depend on the request: the pool is sorted once, at compile time."""

    kind: ClassVar[str] = "prefer"
    measured: bool = False  # type: ignore[misc]  # ranks by `fastest`: measured latency may reorder the pool
    ordered: ClassVar[bool] = True

    def pick(self, req: Request) -> Entry | None:
        if self.measured and req.latency:
            return _best(self, req)
        limits = self.cost_limits
        for e in self.pool:
            if violation(e, req, limits) is None:
                return e
        return None

    def alternatives(self, req: Request, chosen: Entry, depth: int) -> list[tuple[Entry, str]]:
        if depth <= 0:
            return []
        if self.measured and req.latency:
            return self._ranked(req, chosen, depth, self._top(req, depth + 1))
        top: list[Entry] = []
        limits = self.cost_limits
        for e in self.pool:  # already in rank order: the first viable ones are the best
            if violation(e, req, limits) is None:
                top.append(e)
                if len(top) > depth:
                    break
        return self._ranked(req, chosen, depth, top)


@dataclass(frozen=True, slots=True, kw_only=True)
class GenericPrefer(Selector):
    """`prefer` whose first ranking depends on the request (least_busy): the best key, computed per request."""

    kind: ClassVar[str] = "prefer"
    measured: bool = False  # type: ignore[misc]

    def pick(self, req: Request) -> Entry | None:
        return _best(self, req)

    def alternatives(self, req: Request, chosen: Entry, depth: int) -> list[tuple[Entry, str]]:
        return self._ranked(req, chosen, depth, self._top(req, depth + 1)) if depth > 0 else []


def _best(sel: Selector, req: Request) -> Entry | None:
    best, best_key = None, None
    for e in sel.pool:
        if sel.viable(e, req):
            k = sel.full_key(e, req)
            if best_key is None or k < best_key:
                best, best_key = e, k
    return best


@dataclass(frozen=True, slots=True, kw_only=True)
class CheapestPrefer(Selector):
    """`prefer cheapest ...`: a threshold walk over price groups sorted by input and by output price."""

    kind: ClassVar[str] = "prefer"
    by_input: tuple[PriceGroup, ...] = ()
    by_output: tuple[PriceGroup, ...] = ()
    dynamic_rest: bool = False  # a later ranking depends on the request (least_busy)
    measured: bool = False  # type: ignore[misc]

    def pick(self, req: Request) -> Entry | None:
        dynamic = self.dynamic_rest or (self.measured and bool(req.latency))
        return _cheapest_pick(self, self.by_input, self.by_output, req, dynamic)

    def alternatives(self, req: Request, chosen: Entry, depth: int) -> list[tuple[Entry, str]]:
        if depth <= 0:
            return []
        dynamic = self.dynamic_rest or (self.measured and bool(req.latency))
        return self._ranked(
            req, chosen, depth, _cheapest_top(self, self.by_input, self.by_output, req, depth + 1, dynamic)
        )


def _cheapest_pick(
    sel: Selector, by_input: tuple[PriceGroup, ...], by_output: tuple[PriceGroup, ...], req: Request, dynamic: bool
) -> Entry | None:
    """The best viable model of these price groups, cheapest first (ties: the selector's later rankings).

    Models with the same input and output price always cost the same, so the walk is over distinct prices: a
    group not yet seen costs at least tokens*A[k].ip + out*B[k].op, so once that exceeds the best cost the search
    can stop. Big catalogs repeat prices a lot (every $0 local model is one group)."""
    t, o = req.tokens, req.out_tokens
    limits = sel.cost_limits
    e: Entry | None  # a group's best viable model (None: none is viable)
    first = by_input[0] if by_input else None
    if first is not None and first is by_output[0] and t > 0 and o > 0 and not dynamic:
        # One price group is cheapest on both input and output (a free local model, say): with tokens > 0 and
        # output tokens > 0 every other group costs strictly more, so its best viable member is the answer.
        for e in first.members:
            if violation(e, req, limits) is None:
                return e
    best_cost = float("inf")
    ties: list[Entry] = []
    for ga, gb in zip(by_input, by_output, strict=True):
        if t * ga.ip + o * gb.op > best_cost:
            break
        for g in (ga,) if ga is gb else (ga, gb):  # a group met twice just ties with itself
            c = t * g.ip + o * g.op
            if c > best_cost:
                continue
            if dynamic:
                e = _group_best(sel, g, req)
            else:
                for e in g.members:
                    if violation(e, req, limits) is None:
                        break
                else:
                    continue
            if e is None:
                continue
            if c < best_cost:
                best_cost, ties = c, [e]
            elif e not in ties:
                ties.append(e)
    if not ties:
        return None
    if len(ties) == 1:
        return ties[0]
    return min(ties, key=lambda e: sel.full_key(e, req))


def _cheapest_top(
    sel: Selector,
    by_input: tuple[PriceGroup, ...],
    by_output: tuple[PriceGroup, ...],
    req: Request,
    k: int,
    dynamic: bool,
) -> list[Entry]:
    """The `k` best viable models of these price groups: _cheapest_pick's walk, stopped once no unseen group can
    beat the k-th best cost found (an unseen group costs at least tokens*A[i].ip + out*B[i].op)."""
    t, o = req.tokens, req.out_tokens
    limits = sel.cost_limits
    found: list[tuple[tuple, Entry]] = []
    seen: set[int] = set()
    kth = float("inf")
    for ga, gb in zip(by_input, by_output, strict=True):
        if t * ga.ip + o * gb.op > kth:
            break
        for g in (ga, gb):
            if id(g) in seen or t * g.ip + o * g.op > kth:
                continue
            seen.add(id(g))
            taken = 0
            for e in g.members:  # sorted by the later rankings unless they depend on the request
                if violation(e, req, limits) is None:
                    found.append((sel.full_key(e, req), e))
                    taken += 1
                    if taken == k and not dynamic:
                        break
            if len(found) >= k:
                found.sort(key=lambda p: p[0])
                del found[k:]
                kth = found[-1][0][sel.pivot]
    found.sort(key=lambda p: p[0])
    return [e for _, e in found[:k]]


def _group_best(sel: Selector, g: PriceGroup, req: Request) -> Entry | None:
    """The best viable model of a price group when a later ranking depends on the request."""
    limits = sel.cost_limits
    viable = [e for e in g.members if violation(e, req, limits) is None]
    return min(viable, key=lambda e: sel.full_key(e, req)) if viable else None


def _in_flight(req: Request, e: Entry) -> int:
    """In-flight requests on a model (counts below zero count as zero; no state store: zero)."""
    return max(0, int(req.state.in_flight(e.name))) if req.state is not None else 0


def _least_busy_pick(sel: Selector, members: tuple[Entry, ...], req: Request) -> Entry | None:
    """The viable member with the fewest requests in flight; ties in the order of `members` (already sorted by
    the later rankings and the name). The first idle viable member wins outright: no count is below zero, so
    the walk stops there, reading the counts of the busy members before it only (a handful, however large the
    pool)."""
    limits = sel.cost_limits
    best: Entry | None = None
    best_count = 0
    for e in members:
        if violation(e, req, limits) is None:
            c = _in_flight(req, e)
            if c == 0:
                return e
            if best is None or c < best_count:
                best, best_count = e, c
    return best


def _least_busy_top(sel: Selector, members: tuple[Entry, ...], req: Request, k: int) -> list[Entry]:
    """The `k` viable members with the fewest requests in flight, in rank order: the walk stops once it has seen
    k idle ones (they beat every busy one)."""
    limits = sel.cost_limits
    idle: list[Entry] = []
    busy: list[tuple[int, int, Entry]] = []
    for at, e in enumerate(members):
        if violation(e, req, limits) is None:
            c = _in_flight(req, e)
            if c == 0:
                idle.append(e)
                if len(idle) == k:
                    return idle
            else:
                busy.append((c, at, e))
    busy.sort(key=lambda x: (x[0], x[1]))
    return (idle + [e for _, _, e in busy])[:k]


@dataclass(frozen=True, slots=True, kw_only=True)
class TieredPrefer(Selector):
    """`prefer R1 ... then P then ...` where R1... do not depend on the request (capability, catalog latency) and
    the pivot P does (cheapest, least_busy): the pool is split at compile time into tiers of equal R1... keys,
    best tier first, each tier ready for P (price groups for cheapest; members in the order of the rankings
    after least_busy). The pick walks the best tier first and stops at the first tier with a viable model."""

    kind: ClassVar[str] = "prefer"
    pivot_kind: str = "cheapest"  # cheapest | least_busy
    tiers: tuple[tuple[tuple[PriceGroup, ...], tuple[PriceGroup, ...]] | tuple[Entry, ...], ...] = ()
    dynamic_rest: bool = False  # a ranking after the pivot depends on the request
    static_prefix: bool = True  # False: a ranking before the pivot is `fastest`, which measured latency reorders
    measured: bool = False  # type: ignore[misc]

    @property
    def pivot(self) -> int:
        return next(i for i, r in enumerate(self.rankings) if r.kind == self.pivot_kind)

    def _generic(self, req: Request) -> bool:
        """Whether this request needs a full ranking: measured latencies reorder a `fastest` before the pivot."""
        return not self.static_prefix and bool(req.latency)

    def pick(self, req: Request) -> Entry | None:
        if self._generic(req):
            return _best(self, req)
        dynamic = self.dynamic_rest or (self.measured and bool(req.latency))
        for tier in self.tiers:
            if self.pivot_kind == "cheapest":
                e = _cheapest_pick(self, tier[0], tier[1], req, dynamic)  # type: ignore[arg-type]
            else:
                e = _least_busy_pick(self, tier, req)  # type: ignore[arg-type]
            if e is not None:
                return e
        return None

    def alternatives(self, req: Request, chosen: Entry, depth: int) -> list[tuple[Entry, str]]:
        if depth <= 0:
            return []
        k = depth + 1
        if self._generic(req):
            return self._ranked(req, chosen, depth, self._top(req, k))
        dynamic = self.dynamic_rest or (self.measured and bool(req.latency))
        top: list[Entry] = []
        for tier in self.tiers:  # every model of a tier ranks before every model of the next
            if self.pivot_kind == "cheapest":
                top += _cheapest_top(self, tier[0], tier[1], req, k - len(top), dynamic)  # type: ignore[arg-type]
            else:
                top += _least_busy_top(self, tier, req, k - len(top))  # type: ignore[arg-type]
            if len(top) >= k:
                break
        return self._ranked(req, chosen, depth, top)
