"""Pinned decisions: a compiled policy, a model the caller names and the request in, a Decision for that model
(no rule, no fallbacks, a report that says so) or a PinError saying why the policy refuses it out."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.language.nodes import Span
from engine.runtime.constraints import Code, check
from engine.runtime.decision import Decision
from engine.runtime.policy import CompiledPolicy, Entry, Request
from engine.runtime.qualified import resolve_qualified
from engine.runtime.report import PlanStep, Report, RuleRef

_REQUEST = Span("<request>", 0, 0, 0, 0)

PinRefusal = Literal["model_not_found", "model_override_disabled", "model_unsuitable"]


class PinError(ValueError):
    """The policy refuses a named model: `code` says why (model_not_found, model_override_disabled,
    model_unsuitable), `model` is the name asked for and `reason` the hard constraint that fails (unsuitable)."""

    def __init__(self, code: PinRefusal, model: str, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.code: PinRefusal = code
        self.model = model
        self.reason = reason


@dataclass(frozen=True)
class PinnedSelector:
    """The action of a pinned rule: one model, no group (its strategy is "single")."""

    kind: str = "use"
    judge: Entry | None = None

    def group(self, req: Request) -> tuple[str, ...]:
        return ()

    def plan(self, chosen: Entry, req: Request, settings: Any, stand_in: str | None) -> list[PlanStep]:
        return [PlanStep(model=chosen.name, provider=chosen.provider, role="chosen", reason="named by the request")]


@dataclass(frozen=True)
class PinnedRule:
    """Stands in for a policy rule when the request named its model."""

    model: str
    index: int = -1
    file: str = "<request>"
    line: int = 0
    col: int = 0
    span: Span = _REQUEST
    selector: PinnedSelector = field(default_factory=PinnedSelector)

    @property
    def text(self) -> str:
        return f"model {self.model} named by the request (set overrides = true)"


class PinnedDecision(Decision):
    """A Decision for a model the request named: no fallbacks, and a report that says so."""

    __slots__ = ()

    def report(self) -> Report:
        if self._report is None:
            r, req = self.rule, self.request
            self._report = Report(
                model=self.model,
                provider=self.provider,
                rule=RuleRef(index=-1, file=r.file, line=0, col=0, text=r.text),
                tokens=req.tokens,
                prompt_chars=len(req.text),
                attrs=dict(req.attrs),
                policy=self.policy.entry,
                policy_version=self.policy.version,
                plan=list(self.plan),
            )
        return self._report


def resolve_model(policy: CompiledPolicy, name: str) -> str | None:
    """The canonical catalog name for a model name, a catalog alias or a `provider:model` name (with `set
    adhoc_models = true`, also one the catalog does not list, for a provider it knows), or None."""
    # a model name first; with `set adhoc_models = true` the policy's models (PolicyModels) also resolve a
    # `provider:model` name, making an ad-hoc model when the catalog does not list it
    entry = policy.models.get(name)
    if entry is not None:
        return entry.name
    catalog = policy.catalog
    if catalog is None:
        return None
    alias = catalog.aliases.get(name)
    if alias is None and ":" in name:
        spec = resolve_qualified(catalog, name)
        alias = spec.name if spec is not None else None
    return alias if alias in policy.models else None


def pinned_decision(policy: CompiledPolicy, model: str, request: Callable[[], Request], start_ns: int) -> Decision:
    """Decide for a request that names `model`; `request()` builds the Request (only once the name is allowed).
    Raises PinError when the policy does not know the model, does not allow naming one, or the model cannot
    serve the request."""
    name = resolve_model(policy, model)
    if name is None:
        raise PinError("model_not_found", model, f"model `{model}` is not in the catalog")
    settings = policy.settings
    if not (settings is not None and settings.get("overrides")):
        raise PinError("model_override_disabled", model, f"the policy does not allow naming a model (`{model}`)")
    req = request()
    entry = policy.models[name]
    why = check(entry, req)
    # an open circuit is no refusal: execution skips the model and says so
    if why is not None and why.code is not Code.UNAVAILABLE:
        raise PinError("model_unsuitable", name, f"model `{name}` cannot serve this request: {why}", why.text)
    return PinnedDecision(policy, PinnedRule(name), entry, (), req, 0, True, time.perf_counter_ns() - start_ns)
