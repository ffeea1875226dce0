"""Test kit for semantic tasks: texts in, exact bag-of-words unit vectors out (a deterministic stand-in for WordLlama,
so tests can state exact cosine similarities), plus a counting wrapper to see how often a policy embeds."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

#: The words the test embedder knows, one dimension each; other words are ignored (a text of none: a zero vector).
VOCABULARY = (
    "python",
    "function",
    "parse",
    "dates",
    "stack",
    "trace",
    "error",
    "contract",
    "lawyer",
    "clause",
    "poem",
    "story",
    "weather",
    "today",
    "translate",
    "french",
)
_WORD = re.compile(r"[a-z]+")


def bag(text: str) -> list[float]:
    """The counts of each VOCABULARY word in `text` (lowercased; no normalisation)."""
    words = _WORD.findall(text.lower())
    return [float(words.count(w)) for w in VOCABULARY]


class BagOfWords:
    """An embedder: a list of texts in, one bag-of-words vector per text out; counts every text it embeds."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        return [bag(t) for t in texts]

    @property
    def embedded(self) -> list[str]:
        """Every text embedded so far, in order."""
        return [t for call in self.calls for t in call]


def cosine(a: str, b: str) -> float:
    """The exact cosine similarity the test embedder gives two texts (0.0 when either has no known word)."""
    x, y = bag(a), bag(b)
    nx, ny = math.sqrt(sum(v * v for v in x)), math.sqrt(sum(v * v for v in y))
    if not nx or not ny:
        return 0.0
    return sum(p * q for p, q in zip(x, y, strict=True)) / (nx * ny)


def best(text: str, examples: Sequence[str]) -> tuple[int, float]:
    """The index of the example nearest `text` and its cosine, as the engine should find them."""
    scores = [cosine(text, e) for e in examples]
    i = max(range(len(scores)), key=scores.__getitem__)
    return i, scores[i]
