"""Selectors: a rule's compiled action and a Request in, the model it picks (or its ranked candidates) out.

One small class per action shape: `use` one model; `prefer` over a pool already in rank order, over price
groups (`cheapest` first), or by a key computed per request; the groups `balance` and `split` (pick one
member by state or chance) and `race`, `consensus` and `best_of` (execution calls every viable member).
Every class decides viability with the one hard-constraint check, engine.runtime.constraints.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import ClassVar

from engine.language.nodes import FANOUT_GROUPS, PICK_GROUPS
from engine.runtime.constraints import CostLimit, Reason, check, violation
from engine.runtime.policy import Entry, PriceGroup, RankKey, Request


@dataclass(frozen=True, slots=True, kw_only=True)
class Selector:
    """A rule's action, compiled: which models it may pick and in what order. Subclasses say how it picks."""

    kind: ClassVar[str] = ""  # the action keyword: use | prefer | balance | split | race | consensus | best_of
    pool: tuple[Entry, ...]  # models that pass every static `where` constraint
    static_rejects: tuple[tuple[Entry, Reason], ...] = ()  # models a static constraint excludes, with the reason
    rankings: tuple[RankKey, ...] = ()
    cost_limits: tuple[CostLimit, ...] = ()
    fallbacks: tuple[Entry, ...] = ()
    key: str = ""  # state key (round-robin position, split stickiness) for this rule

    use: ClassVar[Entry | None] = None
    judge: ClassVar[Entry | None] = None
    mode: ClassVar[str | None] = None
    weights: ClassVar[tuple[float, ...]] = ()
    measured: ClassVar[bool] = False
    ordered: ClassVar[bool] = False  # the pool is already in rank order

    @property
    def grouped(self) -> bool:
        """The action names a group of models (balance, split, race, consensus, best_of)."""
        return self.kind in PICK_GROUPS or self.kind in FANOUT_GROUPS

    @property
    def stateful(self) -> bool:
        """The pick depends on state or chance, so a trace must be told what was picked."""
        return self.kind in PICK_GROUPS

    def viable(self, e: Entry, req: Request) -> bool:
        return violation(e, req, self.cost_limits) is None

    def pick(self, req: Request) -> Entry | None:
        """The best viable model for this request, or None. Must agree with rank()[0]."""
        raise NotImplementedError

    def group(self, req: Request) -> tuple[str, ...]:
        """For race, consensus and best_of: every viable member, in the order listed."""
        limits = self.cost_limits
        return tuple(e.name for e in self.pool if violation(e, req, limits) is None)

    def full_key(self, e: Entry, req: Request) -> tuple:
        return (*(r.key(e, req) for r in self.rankings), e.name)

    def rank(self, req: Request) -> tuple[list[Entry], list[tuple[Entry, Reason]]]:
        """Every pool model: the viable ones best first, and the rejected ones with a reason (for explain)."""
        viable: list[Entry] = []
        rejected: list[tuple[Entry, Reason]] = []
        for e in self.pool:
            why = check(e, req, self.cost_limits)
            if why is not None:
                rejected.append((e, why))
            else:
                viable.append(e)
        if not self.grouped:
            viable.sort(key=lambda e: self.full_key(e, req))
        return viable, rejected

    def viable_fallbacks(self, req: Request, chosen: Entry) -> tuple[str, ...]:
        """The fallbacks that can serve the request (the rule's cost limits do not apply to them)."""
        return tuple(f.name for f in self.fallbacks if f is not chosen and violation(f, req) is None)


@dataclass(frozen=True, slots=True, kw_only=True)
class UseSelector(Selector):
    """`use <model>`: that model, when it can serve the request."""

    kind: ClassVar[str] = "use"
    use: Entry | None = None  # type: ignore[misc]
    ordered: ClassVar[bool] = True

    def pick(self, req: Request) -> Entry | None:
        return self.use if self.pool and self.viable(self.pool[0], req) else None


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


@dataclass(frozen=True, slots=True, kw_only=True)
class GenericPrefer(Selector):
    """`prefer` whose first ranking depends on the request (least_busy): the best key, computed per request."""

    kind: ClassVar[str] = "prefer"
    measured: bool = False  # type: ignore[misc]

    def pick(self, req: Request) -> Entry | None:
        return _best(self, req)


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
        # Models with the same input and output price always cost the same, so the walk is over distinct prices:
        # a group not yet seen costs at least tokens*A[k].ip + out*B[k].op, so once that exceeds the best cost
        # the search can stop. Big catalogs repeat prices a lot (every $0 local model is one group).
        t, o = req.tokens, req.out_tokens
        dynamic = self.dynamic_rest or (self.measured and bool(req.latency))
        limits = self.cost_limits
        e: Entry | None  # a group's best viable model (None: none is viable)
        first = self.by_input[0] if self.by_input else None
        if first is not None and first is self.by_output[0] and t > 0 and o > 0 and not dynamic:
            # One price group is cheapest on both input and output (a free local model, say): with tokens > 0 and
            # output tokens > 0 every other group costs strictly more, so its best viable member is the answer.
            for e in first.members:
                if violation(e, req, limits) is None:
                    return e
        best_cost = float("inf")
        ties: list[Entry] = []
        for ga, gb in zip(self.by_input, self.by_output, strict=True):
            if t * ga.ip + o * gb.op > best_cost:
                break
            for g in (ga,) if ga is gb else (ga, gb):  # a group met twice just ties with itself
                c = t * g.ip + o * g.op
                if c > best_cost:
                    continue
                if dynamic:
                    e = self._group_best(g, req)
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
        return min(ties, key=lambda e: self.full_key(e, req))

    def _group_best(self, g: PriceGroup, req: Request) -> Entry | None:
        """The best viable model of a price group when a later ranking depends on the request."""
        limits = self.cost_limits
        viable = [e for e in g.members if violation(e, req, limits) is None]
        return min(viable, key=lambda e: self.full_key(e, req)) if viable else None


@dataclass(frozen=True, slots=True, kw_only=True)
class BalanceSelector(Selector):
    """`balance <mode> [...]`: spread requests over the viable members."""

    kind: ClassVar[str] = "balance"
    mode: str | None = None  # type: ignore[misc]  # round_robin | random | least_busy

    def pick(self, req: Request) -> Entry | None:
        limits = self.cost_limits
        viable = [e for e in self.pool if violation(e, req, limits) is None]
        if not viable:
            return None
        if self.mode == "round_robin":
            i = req.state.next_index(self.key) if req.state is not None else 0
            return viable[i % len(viable)]
        if self.mode == "random":
            return random.choice(viable)
        if req.state is None:
            return viable[0]
        return min(viable, key=lambda e: req.state.in_flight(e.name))  # least_busy; ties: list order


@dataclass(frozen=True, slots=True, kw_only=True)
class SplitSelector(Selector):
    """`split [a 80%, b 20%]`: a weighted pick, sticky per `user` when the request passes one."""

    kind: ClassVar[str] = "split"
    weights: tuple[float, ...] = ()  # type: ignore[misc]  # one weight per pool model (same order)

    def pick(self, req: Request) -> Entry | None:
        limits = self.cost_limits
        pairs = [(e, w) for e, w in zip(self.pool, self.weights, strict=False) if violation(e, req, limits) is None]
        if not pairs:
            return None
        user = req.attrs.get("user")
        if user is not None:  # sticky per user, so an A/B test keeps each user on one arm
            x = zlib.crc32(f"{self.key}:{user}".encode()) / 2**32
        else:
            x = random.random()
        x *= sum(w for _, w in pairs)
        for e, w in pairs:
            x -= w
            if x < 0:
                return e
        return pairs[-1][0]


@dataclass(frozen=True, slots=True, kw_only=True)
class FanoutSelector(Selector):
    """race / consensus / best_of: execution calls every viable member; the first one stands for the group."""

    def pick(self, req: Request) -> Entry | None:
        limits = self.cost_limits
        for e in self.pool:
            if violation(e, req, limits) is None:
                return e
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class RaceSelector(FanoutSelector):
    kind: ClassVar[str] = "race"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsensusSelector(FanoutSelector):
    kind: ClassVar[str] = "consensus"


@dataclass(frozen=True, slots=True, kw_only=True)
class BestOfSelector(FanoutSelector):
    kind: ClassVar[str] = "best_of"
    judge: Entry | None = None  # type: ignore[misc]
