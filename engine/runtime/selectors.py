"""Selectors: a rule's compiled action and a Request in, the model it picks (or its ranked candidates) out.

One small class per action shape: `use` one model; the groups `balance` and `split` (pick one member by state or
chance) and `race`, `consensus` and `best_of` (execution calls every viable member). The base class is
engine/runtime/selector_base.py and the `prefer` shapes are engine/runtime/prefer.py, both re-exported here, so
every selector is importable from this module. Every class decides viability with the one hard-constraint check,
engine.runtime.constraints.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import ClassVar

from engine.runtime.constraints import violation
from engine.runtime.policy import Entry, Request
from engine.runtime.prefer import CheapestPrefer, GenericPrefer, StaticPrefer, TieredPrefer
from engine.runtime.report import Experiment
from engine.runtime.scores import health_weights
from engine.runtime.selector_base import Selector

__all__ = [
    "BalanceSelector",
    "BestOfSelector",
    "CheapestPrefer",
    "ConsensusSelector",
    "FanoutSelector",
    "GenericPrefer",
    "RaceSelector",
    "Selector",
    "SplitSelector",
    "StaticPrefer",
    "TieredPrefer",
    "UseSelector",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class UseSelector(Selector):
    """`use <model>`: that model, when it can serve the request."""

    kind: ClassVar[str] = "use"
    use: Entry | None = None  # type: ignore[misc]
    ordered: ClassVar[bool] = True

    def pick(self, req: Request) -> Entry | None:
        return self.use if self.pool and self.viable(self.pool[0], req) else None


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
