"""Decision reports: the structured result of a traced evaluation, the data behind explain text and JSON."""

from __future__ import annotations

import json
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field, field_serializer


class Experiment(NamedTuple):
    """The experiment a decision belongs to (`split 50% a, 50% b as "prompt-v2"`): its name and the variant, the
    model the split picked."""

    name: str
    variant: str


CandidateStatus = Literal["chosen", "eligible", "rejected", "not named"]
#: Why a model is in a decision's failover plan: the rule's pick, the next models of its ranking or group, the
#: members a race / consensus / best_of calls together, a listed fallback, or the half-open probe of an all-open plan.
PlanRole = Literal["chosen", "ranked", "member", "group", "fallback", "probe"]
RuleOutcome = Literal["decided", "no match", "no viable model"]


class RuleRef(BaseModel):
    index: int
    file: str
    line: int
    col: int
    text: str


class Atom(BaseModel):
    """One node of a rule's condition and its value; `depth` nests atoms under all of / any of / not."""

    depth: int
    text: str
    value: bool
    note: str | None = None


class Candidate(BaseModel):
    model: str
    provider: str
    status: CandidateStatus
    rank: int | None = None
    reason: str | None = None
    code: str | None = None  # the reason's stable code (engine.runtime.constraints.Code), for programs
    scores: list[str] = Field(default_factory=list)


class RuleTrace(BaseModel):
    rule: RuleRef
    matched: bool
    outcome: RuleOutcome
    conditions: list[Atom] = Field(default_factory=list)
    candidates: list[Candidate] = Field(default_factory=list)
    note: str | None = None


class FallbackCheck(BaseModel):
    model: str
    status: Literal["kept", "skipped"]
    reason: str | None = None


class PlanStep(BaseModel, frozen=True):
    """One entry of a decision's failover plan: execution tries the entries in order (engine/runtime/plan.py)."""

    model: str
    provider: str
    role: PlanRole
    reason: str


class Similar(BaseModel):
    """A semantic task (one with `like` examples) for the request: the nearest example (`example`, its 0-based
    `index` among the task's examples), its cosine similarity `score`, the task's `threshold`, and how `task is X`
    came out: by a `pattern`, by `meaning` (score >= threshold) or `no`."""

    task: str
    example: str
    index: int
    score: float | None  # None: no similarity (the embedder failed on the request)
    threshold: float
    matched_by: Literal["pattern", "meaning", "no"]

    @property
    def line(self) -> str:
        """`code  0.816 >= 0.75 by meaning, nearest example 1 "write a python function..."`."""
        return self.text()

    def text(self, width: int = 0) -> str:
        """`line` with the task name padded to `width` (explain lines the scores up). The example is quoted as a
        JSON string (quotes, tabs, newlines escaped); without one (index -1) the line says why: no text to compare
        (a zero vector), or no similarity because the embedder failed."""
        how = {"pattern": "by a pattern", "meaning": "by meaning", "no": "not detected"}[self.matched_by]
        if self.score is None or self.score != self.score:  # the embedder failed on the request
            return f"{self.task:<{width}}  (no similarity: the embedder failed, see the log) {how}"
        op = ">=" if self.index >= 0 and self.score >= self.threshold else "<"
        threshold = f"{self.threshold:g}".ljust(4 if width else 0)
        score = f"{self.task:<{width}}  {self.score:.3f} {op.ljust(2 if width else 0)} {threshold}"
        if self.index < 0:
            return f"{score} {how}, no text to compare"
        example = self.example if len(self.example) <= 60 else self.example[:57] + "..."
        return f"{score} {how}, nearest example {self.index + 1} {json.dumps(example, ensure_ascii=False)}"


class Report(BaseModel):
    """Everything explain shows; `modelroute explain --json` prints exactly this."""

    model: str | None = None
    provider: str | None = None
    rule: RuleRef | None = None
    ranking: list[str] = Field(default_factory=list)
    strategy: str | None = None  # balance | split | race | consensus | best_of (None: a single pick)
    group: list[str] = Field(default_factory=list)  # race / consensus / best_of members that are viable
    judge: str | None = None
    fallbacks: list[str] = Field(default_factory=list)
    fallback_checks: list[FallbackCheck] = Field(default_factory=list)
    plan: list[PlanStep] = Field(default_factory=list)  # the models execution tries, in order, each with why
    note: str | None = None  # how the decision was reached when not by its rule's own pick (stand-in, probe)
    experiment: Experiment | None = None  # `split ... as "name"`: the experiment and variant the decision is in
    cache_ttl: float | None = None  # the deciding rule's `cache 10m` in seconds (0: `cache off`; None: the policy's)
    candidates: list[Candidate] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)
    semantic: list[Similar] = Field(default_factory=list)  # each semantic task: nearest example, score, threshold
    tokens: int
    prompt_chars: int
    attrs: dict[str, Any] = Field(default_factory=dict)
    rules: list[RuleTrace] = Field(default_factory=list)
    rules_not_reached: int = 0
    policy: str
    policy_version: str
    elapsed_us: float | None = None

    @field_serializer("experiment")
    def _experiment(self, value: Experiment | None) -> dict[str, str] | None:
        return {"name": value.name, "variant": value.variant} if value is not None else None
