"""Selectors: a rule's compiled action and a Request in, the model it picks (or its ranked candidates) out.

One small class per action shape: `use` one model; `prefer` over a pool already in rank order, over price
groups (`cheapest` first), or by a key computed per request; the groups `balance` and `split` (pick one
member by state or chance) and `race`, `consensus` and `best_of` (execution calls every viable member).
Every class decides viability with the one hard-constraint check, engine.runtime.constraints.
"""

from __future__ import annotations

import heapq
import random
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from engine.language.nodes import FANOUT_GROUPS, PICK_GROUPS
from engine.runtime.constraints import Limit, Reason, check, violation
from engine.runtime.policy import Entry, PriceGroup, RankKey, Request
from engine.runtime.report import Experiment
from engine.runtime.scores import health_weights

if TYPE_CHECKING:
    from engine.runtime.report import PlanStep


@dataclass(frozen=True, slots=True, kw_only=True)
class Selector:
    """A rule's action, compiled: which models it may pick and in what order. Subclasses say how it picks."""

    kind: ClassVar[str] = ""  # the action keyword: use | prefer | balance | split | race | consensus | best_of
    pool: tuple[Entry, ...]  # models that pass every static `where` constraint
    static_rejects: tuple[tuple[Entry, Reason], ...] = ()  # models a static constraint excludes, with the reason
    rankings: tuple[RankKey, ...] = ()
    cost_limits: tuple[Limit, ...] = ()  # limits checked per request: `where cost`, `where METRIC op attribute`
    fallbacks: tuple[Entry, ...] = ()
    fitting: tuple[Entry, ...] = ()  # the fallbacks that pass the rule's static `where` constraints
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

    @property
    def pivot(self) -> int:
        """The position of the request-dependent ranking a walk is ordered by (see TieredPrefer)."""
        return 0

    def notes(self, req: Request) -> list[str]:
        """What explain should know about how this rule read the request: each `where` limit on a request
        attribute that does not apply (the attribute is missing or of the wrong kind)."""
        out = []
        for c in self.cost_limits:
            not_applied = getattr(c, "not_applied", None)
            if not_applied is not None and (why := not_applied(req)) is not None:
                out.append(why)
        return out

    def experiment_for(self, chosen: Entry) -> Experiment | None:
        """The experiment a decision by this rule belongs to (`split ... as "name"`), its variant the chosen model."""
        return None

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

    def plan(self, chosen: Entry, req: Request, settings: Any, stand_in: str | None) -> list[PlanStep]:
        """The failover plan of a decision by this rule (engine/runtime/plan.py)."""
        from engine.runtime.plan import build_plan

        return build_plan(self, chosen, req, settings, stand_in)

    def stand_in(self, req: Request) -> Entry | None:
        """When no model of the rule can serve the request only because of the request itself (its size, tools,
        images, or an open circuit) while the rule's `where` limits leave some model, a fallback stands in: the
        first that can serve the request and passes every `where` constraint (static and per request), else the
        first that can serve it. None when there is none, or when the `where` limits leave no model at all."""
        if not self.fallbacks:
            return None
        limits = self.cost_limits
        if not any(all(c.allows(e, req) for c in limits) for e in self.pool):
            return None
        for f in self.fitting:
            if violation(f, req, limits) is None:
                return f
        for f in self.fallbacks:
            if violation(f, req) is None:
                return f
        return None

    def alternatives(self, req: Request, chosen: Entry, depth: int) -> list[tuple[Entry, str]]:
        """Up to `depth` viable models that follow `chosen` in this action's order of preference, each with why
        it is there: the ranked or group entries of the failover plan (engine/runtime/plan.py). None for `use`
        (one model) and for race / consensus / best_of (the whole group is called together)."""
        return []

    def _ranked(self, req: Request, chosen: Entry, depth: int, top: list[Entry]) -> list[tuple[Entry, str]]:
        """`top` (viable models best first) as plan entries after `chosen`, each labelled with its rank."""
        labels = " then ".join(r.label for r in self.rankings)
        return [(e, f"rank {i} by {labels}") for i, e in enumerate(top, 1) if e is not chosen][:depth]

    def _top(self, req: Request, k: int) -> list[Entry]:
        """The `k` best viable pool models by the full ranking key (a heap: no full sort of a big catalog)."""
        limits = self.cost_limits
        viable = (e for e in self.pool if violation(e, req, limits) is None)
        return heapq.nsmallest(k, viable, key=lambda e: self.full_key(e, req))


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


@dataclass(frozen=True, slots=True, kw_only=True)
class BalanceSelector(Selector):
    """`balance <mode> [...]`: spread requests over the viable members."""

    kind: ClassVar[str] = "balance"
    mode: str | None = None  # type: ignore[misc]  # round_robin | random | least_busy | weighted
    health: tuple[float, float, float] = (300.0, 0.7, 0.3)  # weighted: window (s), success and latency weights

    def weights_for(self, viable: list[Entry], req: Request) -> list[tuple[float, float, float]]:
        """`balance weighted`: each viable member's (weight, success rate, latency score)."""
        window, success_weight, latency_weight = self.health
        return health_weights(viable, req, window, success_weight, latency_weight)

    def pick(self, req: Request) -> Entry | None:
        limits = self.cost_limits
        viable = [e for e in self.pool if violation(e, req, limits) is None]
        if not viable:
            return None
        if self.mode == "weighted":
            weights = [w for w, _, _ in self.weights_for(viable, req)]
            if sum(weights) <= 0:
                return random.choice(viable)
            return random.choices(viable, weights)[0]
        if self.mode == "round_robin":
            i = req.state.next_index(self.key) if req.state is not None else 0
            return viable[i % len(viable)]
        if self.mode == "random":
            return random.choice(viable)
        if req.state is None:
            return viable[0]
        return min(viable, key=lambda e: req.state.in_flight(e.name))  # least_busy; ties: list order

    def alternatives(self, req: Request, chosen: Entry, depth: int) -> list[tuple[Entry, str]]:
        limits = self.cost_limits
        viable = [e for e in self.pool if violation(e, req, limits) is None]
        if depth <= 0 or not viable:
            return []
        if self.mode == "weighted":
            weighed = [(e, w) for e, (w, _, _) in zip(viable, self.weights_for(viable, req), strict=True)]
            rest_w = sorted((p for p in weighed if p[0] is not chosen), key=lambda p: -p[1])  # stable: ties as listed
            return [(e, f"next by health weight {w:.2f} (balance weighted)") for e, w in rest_w[:depth]]
        if self.mode == "least_busy" and req.state is not None:
            state = req.state
            rest = sorted((e for e in viable if e is not chosen), key=lambda e: state.in_flight(e.name))
            return [(e, f"next least busy ({state.in_flight(e.name)} in flight)") for e in rest[:depth]]
        at = viable.index(chosen) if chosen in viable else -1  # the members after the chosen one, in rotation
        rest = [e for e in viable[at + 1 :] + viable[: max(at, 0)] if e is not chosen]
        return [(e, f"next in rotation (balance {self.mode})") for e in rest[:depth]]


@dataclass(frozen=True, slots=True, kw_only=True)
class SplitSelector(Selector):
    """`split [a 80%, b 20%]`: a weighted pick, sticky per `user` when the request passes one."""

    kind: ClassVar[str] = "split"
    weights: tuple[float, ...] = ()  # type: ignore[misc]  # one weight per pool model (same order)
    experiment: str | None = None  # `split ... as "name"`

    def experiment_for(self, chosen: Entry) -> Experiment | None:
        """None when the chosen model is not a variant (a fallback standing in)."""
        if self.experiment is None or chosen not in self.pool:
            return None
        return Experiment(self.experiment, chosen.name)

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

    def alternatives(self, req: Request, chosen: Entry, depth: int) -> list[tuple[Entry, str]]:
        limits = self.cost_limits
        pairs = [(e, w) for e, w in zip(self.pool, self.weights, strict=False) if violation(e, req, limits) is None]
        rest = sorted((p for p in pairs if p[0] is not chosen), key=lambda p: -p[1])  # stable: ties as listed
        return [(e, f"next by weight (split {w * 100:g}%)") for e, w in rest[:depth]] if depth > 0 else []


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
    min_agreement: int = 1  # agreeing answers needed (`consensus [...] min_agreement N`)


@dataclass(frozen=True, slots=True, kw_only=True)
class BestOfSelector(FanoutSelector):
    kind: ClassVar[str] = "best_of"
    judge: Entry | None = None  # type: ignore[misc]
