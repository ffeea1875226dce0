"""Pins from Python: a compiled policy, the model (and fallbacks) a trusted Python caller names and the request in,
a Decision for the first of them that passes the hard constraints (the rest after it as its failover plan) or a
PinError out. Unlike a client's pin (engine/runtime/pinned.py) no `set overrides = true` is needed."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.diagnostics import did_you_mean
from engine.runtime.constraints import Code, check
from engine.runtime.decision import Decision
from engine.runtime.pinned import PinError, PinnedDecision, PinnedRule, PinnedSelector, resolve_model
from engine.runtime.policy import CompiledPolicy, Entry, Request
from engine.runtime.report import PlanStep

__all__ = ["caller_pinned_decision", "known_model"]


@dataclass(frozen=True)
class CallerSelector(PinnedSelector):
    """The action of a caller's pin: the chosen model, then the caller's fallbacks that can serve the request."""

    fallbacks: tuple[Entry, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()  # (model, why) of the named models that cannot serve the request

    def plan(self, chosen: Entry, req: Request, settings: Any, stand_in: str | None) -> list[PlanStep]:
        why = "named by the caller (model=)"
        if self.skipped:
            why += "; " + "; ".join(f"{m} skipped: {reason}" for m, reason in self.skipped)
        steps = [PlanStep(model=chosen.name, provider=chosen.provider, role="chosen", reason=why)]
        for i, f in enumerate(self.fallbacks, 1):
            steps.append(
                PlanStep(model=f.name, provider=f.provider, role="fallback", reason=f"fallback {i} (fallback=)")
            )
        return steps


@dataclass(frozen=True)
class CallerRule(PinnedRule):
    """Stands in for a policy rule when the Python caller named the model."""

    selector: PinnedSelector = field(default_factory=CallerSelector)

    @property
    def text(self) -> str:
        return f"model {self.model} named by the caller (engine.complete(model=...))"


def known_model(policy: CompiledPolicy, name: str) -> str:
    """The policy's canonical name for `name` (a model name or catalog alias); PinError model_not_found (a
    ValueError) with a did-you-mean hint when the policy has no such model."""
    found = resolve_model(policy, name) if isinstance(name, str) else None
    if found is not None:
        return found
    choices = list(policy.models)
    if policy.catalog is not None:
        choices += [a for a, target in policy.catalog.aliases.items() if target in policy.models]
    hint = did_you_mean(name, choices) if isinstance(name, str) else None
    raise PinError(
        "model_not_found",
        str(name),
        f"model `{name}` is not in the catalog" + (f": {hint}" if hint else " (engine.policy.models lists them)"),
    )


def caller_pinned_decision(
    policy: CompiledPolicy,
    model: str,
    fallback: Sequence[str],
    request: Callable[[], Request],
    start_ns: int,
) -> Decision:
    """Decide for a request whose Python caller names `model` (then `fallback`, in order). Every name must be
    known (PinError model_not_found otherwise, before the request is built); the first that passes the hard
    constraints answers and the others that pass follow it; PinError model_unsuitable when none passes. An open
    circuit is no refusal here: execution skips the model and says why."""
    if isinstance(fallback, str):
        raise TypeError("fallback= takes a list of model names, not one string")
    names = list(dict.fromkeys(known_model(policy, n) for n in [model, *fallback]))
    req = request()
    viable: list[Entry] = []
    skipped: list[tuple[str, str]] = []
    for name in names:
        entry = policy.models[name]
        why = check(entry, req)
        if why is not None and why.code is not Code.UNAVAILABLE:
            skipped.append((name, str(why)))
        else:
            viable.append(entry)
    if not viable:
        reasons = "; ".join(f"{m}: {why}" for m, why in skipped)
        raise PinError("model_unsuitable", names[0], f"no named model can serve this request ({reasons})", reasons)
    chosen, *rest = viable
    selector = CallerSelector(fallbacks=tuple(rest), skipped=tuple(skipped))
    rule = CallerRule(chosen.name, selector=selector)
    fallbacks = tuple(e.name for e in rest)
    return PinnedDecision(policy, rule, chosen, fallbacks, req, 0, True, time.perf_counter_ns() - start_ns)
