"""Semantic tasks at decide time: a request and a policy's semantic tasks in, the request's similarity to each task's
nearest example (and whether it reaches the task's threshold) out.

The request's vector is computed lazily, at most once per request, only when a condition that needs it is evaluated
(`task is X` for a task with examples, once none of its patterns matched; `similarity(X)`; a score with
`similarity(X)`), from engine/runtime/embedder.embed_text (which applies the documented cut of the task text). It
is kept on the Request (`req.semantic`), so decide(), explain's trace and the Decision (`Decision.vector`) share it.

An embedder that fails on a request (raises, answers NaN, or a vector of another length than the examples') never
fails decide(): the request has no similarity (NaN: every comparison with it is false, a score with it is
unknown), no semantic task is detected by meaning, the failure is logged once per cause (logger
`modelroute.semantic`) and each Near carries it as its `note` (docs/semantic.md).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.language import nodes as n
from engine.runtime.embedder import Embedder, embed_text, nearest

if TYPE_CHECKING:
    from engine.runtime.policy import Request

__all__ = [
    "DEFAULT_THRESHOLD",
    "EMBEDDER_FAILED",
    "NO_TEXT",
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


#: Near.note when the request's vector is zero (an empty text, or no word the embedder knows): no example is nearer
#: than another, the similarity is 0 and the task is never detected by meaning, whatever its threshold.
NO_TEXT = "no text to compare"
#: Near.note when the embedder failed on the request starts with this (then the reason).
EMBEDDER_FAILED = "the embedder failed"

_log = logging.getLogger("modelroute.semantic")
_warned: set[tuple[int, str]] = set()
_warned_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Near:
    """A request's nearest example of one semantic task: its index and text, the cosine similarity, the task's
    threshold and whether the similarity reaches it. Without a nearest example, `index` is -1, `example` empty and
    `note` says why: NO_TEXT (a zero vector, similarity 0) or EMBEDDER_FAILED and the reason (similarity NaN)."""

    task: str
    index: int
    example: str
    score: float
    threshold: float
    note: str | None = None

    @property
    def hit(self) -> bool:
        return self.index >= 0 and self.score >= self.threshold


class Semantics:
    """One request's semantic state: its vector (computed on first need) and its nearest example per task."""

    __slots__ = ("embedder", "failure", "near", "text", "vector")

    def __init__(self, text: str):
        self.text = text
        self.vector: Any = None  # the request's unit vector (numpy float32) once computed
        self.embedder: Embedder | None = None
        self.failure: str | None = None  # why the embedder gave no usable vector for the request
        self.near: dict[str, Near] = {}

    def nearest(self, task: SemanticTask) -> Near:
        """The task's example nearest the request (the request is embedded on the first call; an embedder failure
        gives a Near without example, similarity NaN)."""
        found = self.near.get(task.name)
        if found is not None:
            return found
        if self.embedder is not task.embedder:
            self.vector, self.failure, self.embedder = None, None, task.embedder
            try:
                self.vector = embed_text(task.embedder, self.text)
            except Exception as exc:  # a user's embedder may fail any way: the request is routed without meaning
                self._failed(task, exc)
        if self.vector is not None:
            try:
                index, score = nearest(task.rows, self.vector)
            except ValueError as exc:  # a vector of another length than the examples'
                self.vector = None
                self._failed(task, exc)
        if self.failure is not None:
            found = Near(task.name, -1, "", math.nan, task.threshold, self.failure)
        elif not self.vector.any():
            found = Near(task.name, -1, "", 0.0, task.threshold, NO_TEXT)
        else:
            found = Near(task.name, index, task.examples[index], score, task.threshold)
        self.near[task.name] = found
        return found

    def _failed(self, task: SemanticTask, exc: Exception) -> None:
        """Record why the request has no vector; log it once per embedder and cause."""
        self.failure = f"{EMBEDDER_FAILED}: {type(exc).__name__}: {exc}"
        key = (id(task.embedder), f"{type(exc).__name__}: {str(exc)[:200]}")
        with _warned_lock:
            if key in _warned:
                return
            _warned.add(key)
        _log.warning(
            "%s on a request (task `%s`): the request is routed without similarity (no task detected by meaning); "
            "logged once per cause",
            self.failure,
            task.name,
        )

    def computed(self, tasks: Mapping[str, SemanticTask]) -> list[Near]:
        """The nearest example of every semantic task, once the vector exists (none before, nor when the embedder
        failed: nothing was embedded)."""
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
    """`similarity(X)`: the cosine similarity of the request to X's nearest example (0.0 without a request, NaN when
    the embedder failed on it: every comparison is then false)."""
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
