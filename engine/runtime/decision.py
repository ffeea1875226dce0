"""Decisions: the fast evaluator's result in, a Decision out whose reasons (the trace) are built only when asked."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from engine.language.nodes import FANOUT_GROUPS, Span
from engine.runtime.policy import CompiledPolicy, Entry, Request
from engine.runtime.report import Candidate, Experiment, PlanStep, Report
from engine.runtime.semantic import Near


class DecidingSelector(Protocol):
    """What a Decision reads of its rule's action (an engine.runtime.selectors class, or a pinned one)."""

    @property
    def kind(self) -> str: ...

    @property
    def judge(self) -> Entry | None: ...

    def group(self, req: Request) -> tuple[str, ...]: ...

    def plan(self, chosen: Entry, req: Request, settings: Any, stand_in: str | None) -> list[PlanStep]: ...


class DecidingRule(Protocol):
    """What a Decision reads of its deciding rule (a policy's CompiledRule, or runtime.pinned's PinnedRule)."""

    @property
    def index(self) -> int: ...

    @property
    def file(self) -> str: ...

    @property
    def line(self) -> int: ...

    @property
    def text(self) -> str: ...

    @property
    def span(self) -> Span: ...

    @property
    def selector(self) -> DecidingSelector: ...


@dataclass(frozen=True, slots=True)
class RuleSource:
    """The rule that decided, as written: `file`, `line`, `col`, `text`, `span` (its whole extent) and `index`
    (its position in the policy's rule list, -1 for a model the request named)."""

    index: int
    file: str
    line: int
    col: int
    text: str
    span: Span

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class Decision:
    """Which model answers a request, which rule chose it, the fallbacks, and (lazily) why."""

    __slots__ = (
        "_entry",
        "_fallbacks",
        "_matched",
        "_plan",
        "_report",
        "_rule",
        "_scanned",
        "_stood_in",
        "elapsed_ns",
        "policy",
        "probe",
        "request",
    )

    def __init__(
        self,
        policy: CompiledPolicy,
        rule: DecidingRule,
        entry: Entry,
        fallbacks: Sequence[str] | None,
        request: Request,
        matched: int,
        scanned: bool,
        elapsed_ns: int,
        stood_in: bool = False,
    ):
        self.policy = policy
        self._rule = rule
        self._entry = entry
        self._fallbacks = fallbacks  # made a list on first read (None: worked out then)
        self.request = request
        self._matched = matched
        self._scanned = scanned
        self.elapsed_ns = elapsed_ns
        self._stood_in = stood_in
        self._report: Report | None = None
        self._plan: list[PlanStep] | None = None
        #: The model tried as a half-open probe because every circuit of the plan is open
        #: (`set circuit.when_all_open = probe`); None for an ordinary decision.
        self.probe: str | None = None

    # -- the answer ------------------------------------------------------------------------------
    @property
    def fallbacks(self) -> list[str]:
        """The rule's fallbacks that can serve the request, in the order listed (without the chosen model).
        Engine.decide() leaves them to be worked out here, on first read, from the same request."""
        fallbacks = self._fallbacks
        if type(fallbacks) is not list:
            if fallbacks is None:
                sel: Any = self._rule.selector  # only a policy rule's selector is ever left to work them out
                fallbacks = sel.viable_fallbacks(self.request, self._entry)
            fallbacks = self._fallbacks = list(fallbacks)
        return fallbacks

    @fallbacks.setter
    def fallbacks(self, value: list[str]) -> None:
        self._fallbacks = value

    @property
    def model(self) -> str:
        return self._entry.name

    @property
    def provider(self) -> str:
        return self._entry.provider

    @property
    def model_id(self) -> str:
        """The provider's id for the model (what goes on the wire)."""
        return self._entry.spec.id

    @property
    def spec(self) -> Any:
        return self._entry.spec

    @property
    def rule(self) -> RuleSource:
        """The deciding rule, as written: `.file`, `.line`, `.col`, `.text`, `.span`, `.index`."""
        r = self._rule
        return RuleSource(r.index, r.file, r.line, r.span.col, r.text, r.span)

    @property
    def cache_ttl(self) -> float | None:
        """The deciding rule's response-cache TTL in seconds (`cache 10m`: 600.0, `cache off`: 0.0), or None when
        the rule sets none and the policy's `set cache.ttl` applies (also for a model the request named)."""
        node = getattr(self._rule, "node", None)  # a policy rule's syntax; a pinned model has none
        return None if node is None else node.action.cache_ttl

    @property
    def tokens(self) -> int:
        return self.request.tokens

    @property
    def policy_version(self) -> str:
        return self.policy.version

    @property
    def tasks(self) -> list[str]:
        """Names of the declared tasks whose patterns match the prompt, and, once the request's vector was computed
        (decide() needed it), the semantic tasks it is close enough to in meaning; in declaration order."""
        if not self._scanned and self.policy.matcher is not None:
            self._matched, self._scanned = self.policy.matcher.scan(self.request.text), True
        near = {x.task for x in self.nearest if x.hit}
        return [name for name, mask in self.policy.tasks.items() if mask & self._matched or name in near]

    @property
    def vector(self) -> Any:
        """The unit vector (numpy float32) of the request's task text when decide() computed one (a semantic task
        or `similarity()` was evaluated), else None: reuse it rather than embedding the request again."""
        state = self.request.semantic
        return None if state is None else state.vector

    @property
    def nearest(self) -> list[Near]:
        """For each semantic task, the example nearest the request (`index`, `example`), its `score` (cosine), the
        task's `threshold` and `hit`; empty when the request's vector was not computed."""
        state = self.request.semantic
        return [] if state is None else state.computed(self.policy.semantic)

    @property
    def strategy(self) -> str:
        """How execution uses the decision: "single" (chain of model then fallbacks), "race", "consensus"
        or "best_of" (the whole group is called)."""
        kind = self._rule.selector.kind
        return kind if kind in FANOUT_GROUPS else "single"

    @property
    def group(self) -> list[str]:
        """The models a race / consensus / best_of calls together (viable ones, as listed); else [model]."""
        if self.strategy == "single":
            return [self.model]
        return list(self._rule.selector.group(self.request))

    @property
    def judge(self) -> str | None:
        """The judge model of a best_of rule."""
        judge = self._rule.selector.judge
        return judge.name if judge is not None else None

    @property
    def min_agreement(self) -> int:
        """Agreeing answers a consensus needs (`consensus [...] min_agreement N`; 1 otherwise)."""
        return int(getattr(self._rule.selector, "min_agreement", 1))

    @property
    def plan(self) -> list[PlanStep]:
        """The failover plan: the models execution tries, in order, each with its `role` and `reason` (the
        chosen model; the next ones of the rule's ranking or group, up to `set failover.depth`; the fallbacks).
        Built on first use (engine/runtime/plan.py), then cached."""
        if self._plan is None:
            stand_in = None
            if self._stood_in:
                from engine.runtime.evaluate import stand_in_reason

                stand_in = stand_in_reason(self._rule.selector, self.request, self._entry)  # type: ignore[arg-type]
            self._plan = self._rule.selector.plan(self._entry, self.request, self.policy.settings, stand_in)
        return self._plan

    @property
    def experiment(self) -> Experiment | None:
        """The experiment this decision belongs to (`split 50% a, 50% b as "name"`), its variant the chosen model;
        None for every other rule."""
        experiment_for = getattr(self._rule.selector, "experiment_for", None)
        return experiment_for(self._entry) if experiment_for is not None else None

    @property
    def chain(self) -> list[str]:
        """The attempt order for execution: the models of the plan (`[step.model for step in plan]`)."""
        return [step.model for step in self.plan]

    # -- the reasons -----------------------------------------------------------------------------
    def report(self) -> Report:
        """The full traced evaluation (built on first use, then cached)."""
        if self._report is None:
            from engine.runtime.evaluate import trace

            report = trace(self.policy, self.request, self.elapsed_ns / 1000, (self._rule.index, self.model))
            report.plan = list(self.plan)
            report.experiment = self.experiment
            report.cache_ttl = self.cache_ttl
            if self.probe is not None:
                report.model, report.provider = self.model, self.provider
                report.note = self.plan[0].reason
            elif self._stood_in:
                report.note = self.plan[0].reason
            self._report = report
        return self._report

    @property
    def candidates(self) -> list[Candidate]:
        return self.report().candidates

    def explain(self, color: bool = False) -> str:
        from engine.runtime.explain import render_text

        return render_text(self.report(), color=color)

    def model_dump(self) -> dict[str, Any]:
        """The full explain report (engine.runtime.report.Report) as JSON-ready data: the decision (`model`,
        `provider`, `rule`, `ranking`, `strategy`, `group`, `judge`, `fallbacks`, `fallback_checks`, `candidates`),
        the request (`tasks`, `tokens`, `prompt_chars`, `attrs`), every rule tried (`rules`, `rules_not_reached`)
        and `policy`, `policy_version`, `elapsed_us`. It runs the traced evaluation on first use (then cached);
        `modelroute explain --json` prints the same data. docs/explain.md describes every field."""
        return self.report().model_dump(mode="json")

    def to_json(self, indent: int | None = 2) -> str:
        """model_dump() as a JSON string."""
        return json.dumps(self.model_dump(), indent=indent)

    def __repr__(self) -> str:
        return (
            f"Decision(model={self.model!r}, provider={self.provider!r}, "
            f"rule={self._rule.file}:{self._rule.line}, fallbacks={self.fallbacks!r})"
        )


class NoRouteError(LookupError):
    """No rule produced a viable model for the request; `.report()` / `.explain()` say why.

    `unavailable` names the models whose open circuits alone stopped a rule from deciding (empty when circuits
    are not the reason): with `set circuit.when_all_open = fail`, or when no probe could be chosen. `retry_after`
    is then the seconds until the first of those circuits half-opens (None when unknown)."""

    def __init__(
        self,
        policy: CompiledPolicy,
        request: Request,
        *,
        unavailable: frozenset[str] = frozenset(),
        retry_after: float | None = None,
    ):
        self.policy, self.request = policy, request
        self.unavailable, self.retry_after = unavailable, retry_after
        self._report: Report | None = None
        if unavailable:
            wait = f"; the first half-opens in {retry_after:.0f}s" if retry_after is not None else ""
            text = (
                f"no route: every model that could serve the request has an open circuit "
                f"({', '.join(sorted(unavailable))}){wait}; call .explain() to see why"
            )
        else:
            text = (
                f"no route: none of the {len(policy.rules)} rules of {policy.entry} matched with a viable model "
                f"(prompt of {request.tokens} tokens); call .explain() to see why"
            )
        super().__init__(text)

    def report(self) -> Report:
        if self._report is None:
            from engine.runtime.evaluate import trace

            self._report = trace(self.policy, self.request)
        return self._report

    def explain(self, color: bool = False) -> str:
        from engine.runtime.explain import render_text

        return render_text(self.report(), color=color)
