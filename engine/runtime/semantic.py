"""Semantic tasks at decide time: a request and a policy's semantic tasks in, the request's similarity to each task's
nearest example (and whether it reaches the task's threshold) out.

The request's vector is computed lazily, at most once per request, only when a condition that needs it is evaluated
(`task is X` for a task with examples, once none of its patterns matched; `similarity(X)`; a score with
`similarity(X)`), from engine/runtime/embedder.embed_text (which applies the documented cut of the task text). It
is kept on the Request (`req.semantic`), so decide(), explain's trace and the Decision (`Decision.vector`) share it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.language import nodes as n
from engine.runtime.embedder import Embedder, embed_text, nearest

if TYPE_CHECKING:
    from engine.runtime.policy import Request

__all__ = [
    "DEFAULT_THRESHOLD",
    "Near",
    "SemanticTask",
    "Semantics",
    "nearest_all",
    "semantic_hit",
    "similarity_of",
    "state_of",
]

#: The threshold of `task X = like [...]` written without `>= t`: the cosine similarity between the request and the
#: task's nearest example that makes `task is X` true. With the default embedder (WordLlama) a close paraphrase
#: scores about 0.7-0.8 and a related request about 0.3, so 0.75 catches near-paraphrases only (docs/language.md).
DEFAULT_THRESHOLD = 0.75


@dataclass(frozen=True, slots=True, eq=False)
class SemanticTask:
    """A task with examples: their texts and where each is written, their unit vectors (an (n, d) numpy array, one
    row per example), its threshold, and the embedder that embedded them (the request is embedded by the same)."""

    name: str
    examples: tuple[str, ...]
    spans: tuple[n.Span, ...]
    rows: Any
    threshold: float
    embedder: Embedder = field(repr=False)
    file: str | None = None  # the example file (as the policy names it, resolved), or None for a list


@dataclass(frozen=True, slots=True)
class Near:
    """A request's nearest example of one semantic task: its index and text, the cosine similarity, the task's
    threshold and whether the similarity reaches it."""

    task: str
    index: int
    example: str
    score: float
    threshold: float

    @property
    def hit(self) -> bool:
        return self.score >= self.threshold


class Semantics:
    """One request's semantic state: its vector (computed on first need) and its nearest example per task."""

    __slots__ = ("embedder", "near", "text", "vector")

    def __init__(self, text: str):
        self.text = text
        self.vector: Any = None  # the request's unit vector (numpy float32) once computed
        self.embedder: Embedder | None = None
        self.near: dict[str, Near] = {}

    def nearest(self, task: SemanticTask) -> Near:
        """The task's example nearest the request (the request is embedded on the first call)."""
        found = self.near.get(task.name)
        if found is not None:
            return found
        if self.vector is None or self.embedder is not task.embedder:
            self.vector = embed_text(task.embedder, self.text)
            self.embedder = task.embedder
        index, score = nearest(task.rows, self.vector)
        found = self.near[task.name] = Near(task.name, index, task.examples[index], score, task.threshold)
        return found

    def computed(self, tasks: Mapping[str, SemanticTask]) -> list[Near]:
        """The nearest example of every semantic task, once the vector exists (none before: nothing is embedded)."""
        if self.vector is None:
            return []
        return [self.nearest(t) for t in tasks.values()]


def state_of(req: Request) -> Semantics:
    """The request's semantic state, made on first use."""
    state: Semantics | None = req.semantic
    if state is None:
        state = req.semantic = Semantics(req.text)
    return state


def similarity_of(req: Request | None, task: SemanticTask) -> float:
    """`similarity(X)`: the cosine similarity of the request to X's nearest example (0.0 without a request)."""
    if req is None:
        return 0.0
    return state_of(req).nearest(task).score


def semantic_hit(req: Request | None, task: SemanticTask) -> bool:
    """Whether the request is as close to one of the task's examples as its threshold asks (`task is X` once no
    pattern of X matched)."""
    return req is not None and state_of(req).nearest(task).hit


def nearest_all(req: Request, tasks: Mapping[str, SemanticTask]) -> list[Near]:
    """Every semantic task's nearest example for the request (embeds it if nothing did yet): explain, tests."""
    state = state_of(req)
    return [state.nearest(t) for t in tasks.values()]
