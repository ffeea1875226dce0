"""The selector base: a rule's compiled action and a Request in, its viable models, ranking, plan and stand-in out.

Selector holds what every action shape shares (the pool, the static rejects, the rankings, the per-request
`where` limits and the fallbacks); the shapes themselves are engine/runtime/prefer.py (`prefer`) and
engine/runtime/selectors.py (`use` and the groups). Viability is always the one hard-constraint check,
engine.runtime.constraints.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from engine.language.nodes import FANOUT_GROUPS, PICK_GROUPS
from engine.runtime.constraints import Limit, Reason, check, violation
from engine.runtime.policy import Entry, RankKey, Request

if TYPE_CHECKING:
    from engine.runtime.report import Experiment, PlanStep

__all__ = ["Selector"]


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
