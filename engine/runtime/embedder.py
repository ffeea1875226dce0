"""Text embedding for semantic tasks: texts in, unit vectors out (numpy float32 rows), through a pluggable
embedder (`Engine.load(..., embedder=callable)`) or the default, WordLlama's 256-d static model from the `semantic`
extra, loaded once per process, offline.

Also the one cut of a request's task text (`task_text`: its first HEAD_CHARS and last TAIL_CHARS characters, so
no prompt makes decide() slow), the embeddings of a policy's examples (`embed_examples`, cached by content across
reloads) and the nearest example (`nearest`). numpy is imported only here and only when a policy uses `like`."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "EXTRA_HINT",
    "HEAD_CHARS",
    "TAIL_CHARS",
    "Embedder",
    "EmbedderUnavailable",
    "default_embedder",
    "embed_examples",
    "embed_text",
    "nearest",
    "task_text",
]

#: An embedder: a list of texts in, one vector per text out (an (n, d) array-like; rows are normalised here).
Embedder = Callable[[list[str]], Any]

EXTRA_HINT = "pip install 'modelroute[semantic]'"
#: The part of a request's task text that is embedded: the first HEAD_CHARS and the last TAIL_CHARS characters
#: (a request's intent is stated at its start and, in long pasted inputs, often again at its end). WordLlama's
#: cost grows with the text (about 0.3 us a character here), so the cut bounds decide() for any prompt:
#: `python bench/semantic_bench.py`.
HEAD_CHARS = 700
TAIL_CHARS = 300
EXAMPLE_CACHE = 20_000  # example vectors kept across reloads, per embedder (by the sha256 of the text)


class EmbedderUnavailable(RuntimeError):
    """No embedder: the `semantic` extra (WordLlama, numpy) is not installed and none was given."""


def task_text(text: str) -> str:
    """The text a request is embedded by: all of it when short, else its head and its tail."""
    if len(text) <= HEAD_CHARS + TAIL_CHARS:
        return text
    return text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]


_default: Embedder | None = None
_default_lock = threading.Lock()


def default_embedder() -> Embedder:
    """WordLlama (256-d, offline: the weights and tokenizer ship in its wheel), loaded once per process; raises
    EmbedderUnavailable naming the extra when it is not installed."""
    global _default
    with _default_lock:
        if _default is None:
            try:
                import os

                import wordllama
                from wordllama import WordLlama
            except ImportError as exc:
                raise EmbedderUnavailable(
                    f"semantic tasks (`like`) need an embedder: {EXTRA_HINT}, or pass Engine.load(embedder=...)"
                ) from exc
            model = WordLlama.load(cache_dir=os.path.dirname(wordllama.__file__), disable_download=True)

            def embed(texts: list[str]) -> Any:
                return model.embed(texts, norm=True)

            _default = embed
        return _default


def _unit_rows(result: Any, count: int) -> np.ndarray:
    """An embedder's answer as float32 unit rows; ValueError when it is not `count` vectors of one length."""
    import numpy as np

    rows = np.asarray(result, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[0] != count or rows.shape[1] == 0:
        raise ValueError(f"the embedder returned shape {rows.shape}, expected ({count}, d): one vector per text")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return rows / norms


def embed_text(embedder: Embedder, text: str) -> np.ndarray:
    """One request's vector: its task text, cut (task_text), embedded."""
    return _unit_rows(embedder([task_text(text)]), 1)[0]


class _Cache:
    """Example vectors of one embedder by the sha256 of their text (LRU, EXAMPLE_CACHE entries)."""

    def __init__(self) -> None:
        self.vectors: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.lock = threading.Lock()


_caches: dict[int, tuple[Embedder, _Cache]] = {}
_caches_lock = threading.Lock()


def embed_examples(embedder: Embedder, examples: Sequence[str]) -> np.ndarray:
    """The unit vectors of a task's examples, one row each; an example embedded before by this embedder (an earlier
    compile, a reload) is not embedded again."""
    import numpy as np

    with _caches_lock:
        held = _caches.get(id(embedder))
        if held is None or held[0] is not embedder:
            held = _caches[id(embedder)] = (embedder, _Cache())
    cache = held[1]
    keys = [hashlib.sha256(e.encode("utf-8", "surrogatepass")).digest() for e in examples]
    with cache.lock:
        found = {k: cache.vectors[k] for k in keys if k in cache.vectors}
    missing = list(dict.fromkeys(k for k in keys if k not in found))
    if missing:
        texts = {k: e for k, e in zip(keys, examples, strict=True)}
        rows = _unit_rows(embedder([texts[k] for k in missing]), len(missing))
        with cache.lock:
            for k, row in zip(missing, rows, strict=True):
                found[k] = cache.vectors[k] = row
                cache.vectors.move_to_end(k)
            while len(cache.vectors) > EXAMPLE_CACHE:
                cache.vectors.popitem(last=False)
    return np.stack([found[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)


def nearest(examples: np.ndarray, vector: np.ndarray) -> tuple[int, float]:
    """The index of the example closest to `vector` and its cosine similarity (both unit vectors)."""
    scores = examples @ vector
    best = int(scores.argmax())
    return best, float(scores[best])
