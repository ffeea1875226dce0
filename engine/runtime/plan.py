"""Failover plans: a deciding rule, its chosen model and the Request in, the ordered list of models execution will
try (PlanSteps, each with why it is there) out.

The plan is the chosen model; then, for `prefer`, the next models of the same ranking that pass every constraint;
for `balance` / `split`, the other viable members in rotation or weight order (at most `set failover.depth` of
those, default 2); for race / consensus / best_of, every viable member (called together); then the rule's viable
`fallback` models. A model appears once. Decision.plan builds it on first use, so decide() pays nothing for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from engine.language.nodes import FANOUT_GROUPS
from engine.runtime.constraints import price_known
from engine.runtime.report import PlanRole, PlanStep
from engine.runtime.settings import setting

if TYPE_CHECKING:
    from engine.runtime.decision import Decision
    from engine.runtime.policy import CompiledPolicy, Entry, Request
    from engine.runtime.selectors import Selector

__all__ = ["build_plan", "chosen_reason", "decide_all_open", "probe_first", "unblocked"]


def chosen_reason(sel: Selector, chosen: Entry, req: Request) -> str:
    """Why the rule's own pick is first in the plan (and, after `;`, each `where` limit on a request attribute
    that does not apply to this request)."""
    unknown = [] if price_known(chosen) else ["price unknown (not in the catalog)"]
    return "; ".join([_pick_reason(sel, chosen, req), *unknown, *sel.notes(req)])


def _pick_reason(sel: Selector, chosen: Entry, req: Request) -> str:
    kind = sel.kind
    if kind == "use":
        return "named by the rule"
    if kind == "prefer":
        return "rank 1 by " + " then ".join(r.label for r in sel.rankings)
    if kind == "balance" and sel.mode == "weighted":
        from engine.runtime.constraints import violation

        limits = sel.cost_limits
        viable = [e for e in sel.pool if violation(e, req, limits) is None]
        weights = sel.weights_for(viable, req)  # type: ignore[attr-defined]
        total = sum(w for w, _, _ in weights) or 1.0
        for e, (w, rate, speed) in zip(viable, weights, strict=True):
            if e is chosen:
                return (
                    f"picked by balance weighted (chance {w / total * 100:.0f}%: success {rate * 100:.0f}%, "
                    f"latency score {speed:.2f})"
                )
    if kind == "balance":
        return f"picked by balance {sel.mode}"
    if kind == "split":
        weight = dict(zip(sel.pool, sel.weights, strict=False)).get(chosen, 0.0)
        experiment = sel.experiment_for(chosen)
        named = f', experiment "{experiment.name}" variant {experiment.variant}' if experiment is not None else ""
        return f"picked by split ({weight * 100:g}%{named})"
    return f"{kind} member (the group is called together)"


def build_plan(
    sel: Selector,
    chosen: Entry,
    req: Request,
    settings: Mapping[str, Any] | None,
    stand_in: str | None = None,
) -> list[PlanStep]:
    """The failover plan of a decision. `stand_in` is why the chosen model is a fallback standing in for the
    rule's pick (None when the rule picked it)."""
    steps: list[PlanStep] = []
    seen: set[str] = set()

    def add(e: Entry, role: PlanRole, reason: str) -> None:
        if e.name not in seen:
            seen.add(e.name)
            steps.append(PlanStep(model=e.name, provider=e.provider, role=role, reason=reason))

    if stand_in is not None:
        add(chosen, "chosen", stand_in)
    elif sel.kind in FANOUT_GROUPS:
        members = {e.name: e for e in sel.pool}
        for name in sel.group(req):
            add(members[name], "group", f"{sel.kind} member (the group is called together)")
    else:
        add(chosen, "chosen", chosen_reason(sel, chosen, req))
        depth = int(setting(settings, "failover.depth"))
        role: PlanRole = "ranked" if sel.kind == "prefer" else "member"
        for e, why in sel.alternatives(req, chosen, depth):
            add(e, role, why)
    if getattr(sel, "min_agreement", 1) > 1:
        return steps  # a consensus that needs agreeing answers cannot be served by one fallback model
    fallbacks = {f.name: f for f in sel.fallbacks}
    for i, name in enumerate(sel.viable_fallbacks(req, chosen), 1):
        add(fallbacks[name], "fallback", f"fallback {i} (listed by the rule)")
    return steps


def probe_first(steps: Iterable[PlanStep], until: Mapping[str, float]) -> tuple[list[PlanStep], str | None]:
    """An all-open plan reordered for `set circuit.when_all_open = probe`: the model whose circuit opened longest
    ago (the earliest `until`, the end of its open state) first, as the half-open probe. Returns the steps and
    the probe's model (None when no plan model has an open circuit)."""
    steps = list(steps)
    open_steps = [s for s in steps if s.model in until]
    if not open_steps:
        return steps, None
    first = min(open_steps, key=lambda s: until[s.model])
    probe = first.model_copy(
        update={
            "role": "probe",
            "reason": f"half-open probe: every model of the plan has an open circuit; {first.model}'s opened "
            "longest ago",
        }
    )
    return [probe, *(s for s in steps if s is not first)], first.model


def unblocked(req: Request) -> Request:
    """The same request with no model held back by an open circuit (its Python functions' values shared)."""
    from engine.runtime.policy import Request

    copy = Request(
        req.text,
        req.tokens,
        req.attrs,
        req.need_tools,
        req.need_vision,
        req.out_tokens,
        frozenset(),
        req.state,
        req.latency,
        req.messages,
        _calls(req),
    )
    if req.semantic is None:  # the request's vector too is computed once: both copies share its state
        from engine.runtime.semantic import state_of

        state_of(req)
    copy.semantic = req.semantic
    return copy


def _calls(req: Request) -> dict:
    """The request's function and ranker values, shared with a copy of it (each call once per request)."""
    if req.calls is None:
        req.calls = {}
    return req.calls


def _could_serve(sel: Selector, free: Request, plan: list[str]) -> list[str]:
    """Every model the deciding rule could route this request to with its circuit closed: the plan first, then
    the rest of the rule's pool and its fallbacks (beyond `failover.depth`, one may half-open sooner)."""
    from engine.runtime.constraints import violation

    limits = sel.cost_limits
    rest = [e.name for e in sel.pool if violation(e, free, limits) is None]
    rest += [f.name for f in sel.fallbacks if violation(f, free) is None]
    return list(dict.fromkeys([*plan, *rest]))


def decide_all_open(policy: CompiledPolicy, req: Request, start_ns: int) -> Decision:
    """No rule decided while some circuits are open: decide as if every circuit were closed; if that routes, the
    open circuits alone were in the way. Then `set circuit.when_all_open = probe` (the default) returns a Decision
    whose plan starts with the half-open probe (Decision.probe), and `fail` raises NoRouteError with
    `.unavailable` and `.retry_after`. Raises a plain NoRouteError when no rule routes even so."""
    from engine.runtime.decision import Decision, NoRouteError
    from engine.runtime.evaluate import decide

    free = unblocked(req)
    result = decide(policy, free)
    if result is None:
        raise NoRouteError(policy, req)
    rule, entry, fallbacks, matched, scanned, stood_in = result
    decision = Decision(policy, rule, entry, fallbacks, free, matched, scanned, 0, stood_in)
    state = req.state
    until: dict[str, float] = {}  # model -> wall-clock end of its open state (0: unknown, e.g. a probe runs)
    waits: list[float] = []  # seconds until each open circuit half-opens
    for name in _could_serve(rule.selector, free, decision.chain):
        if name in req.unavailable:
            info = state.circuit(name) if state is not None else None
            until[name] = float(getattr(info, "until", None) or 0.0)
            left = getattr(info, "half_open_in", None)
            if left is None and until[name]:
                left = max(0.0, until[name] - time.time())
            if left is not None:
                waits.append(left)
    steps, probe = probe_first(decision.plan, until)  # the probe is a plan model; `until` may name more
    mode = setting(policy.settings, "circuit.when_all_open")
    if probe is None or mode != "probe":
        wait = min(waits) if waits else None
        raise NoRouteError(policy, req, unavailable=frozenset(until) or req.unavailable, retry_after=wait)
    decision._entry = policy.models[probe]
    decision._plan = steps
    decision.fallbacks = [f for f in fallbacks if f != probe]
    decision.probe = probe
    decision.elapsed_ns = time.perf_counter_ns() - start_ns
    return decision
