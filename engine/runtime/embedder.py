"""Text embedding for semantic tasks: texts in, unit vectors out (numpy float32 rows), through a pluggable
embedder (`Engine.load(..., embedder=callable)`) or the default, WordLlama's 256-d static model from the `semantic`
extra, loaded once per process, offline.

Also the one cut of a request's task text (`task_text`: its first HEAD_CHARS and last TAIL_CHARS characters, so
no prompt makes decide() slow), the embeddings of a policy's examples (`embed_examples`, cached by content across
reloads) and the nearest example (`nearest`). numpy is imported only here and only when a policy uses `like`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
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
    "WordLlamaEmbedder",
    "default_embedder",
    "embed_examples",
    "embed_text",
    "forget_example_vectors",
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
EMBEDDERS_KEPT = 8  # embedders whose example vectors are kept (the least recently used one's go first)


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
            root = logging.getLogger()
            handlers, level = root.handlers[:], root.level
            try:
                import wordllama
                from wordllama import WordLlama
            except ImportError as exc:
                raise EmbedderUnavailable(
                    f"no default embedder (the `semantic` extra is not installed): {EXTRA_HINT}, "
                    "or pass Engine.load(embedder=...)"
                ) from exc
            finally:  # importing wordllama calls logging.basicConfig(level=INFO): undo it, logging is the app's
                root.handlers[:] = handlers
                root.setLevel(level)
            model = WordLlama.load(cache_dir=os.path.dirname(wordllama.__file__), disable_download=True)
            _default = WordLlamaEmbedder(model)
        return _default


#: Word pieces whose token ids WordLlamaEmbedder keeps (then it starts over), and the longest piece it keeps.
PIECE_CACHE = 50_000
PIECE_CHARS = 40
_PIECE = re.compile("\u2581*[^\u2581]+|\u2581+")  # a run of word marks (normalised spaces) and the word after it


class WordLlamaEmbedder:
    """A WordLlama model as an Embedder: the vectors of `model.embed(texts, norm=True)` (to float rounding), faster.

    WordLlama's vector is the mean of the text's token embeddings. Its tokenizer (Llama's BPE) marks spaces with
    U+2581 and treats the whole text as one word, which costs about 0.25 us a character; but no token of its
    vocabulary holds a mark after another character, so no merge crosses the start of a word, and tokenizing word
    by word gives the same tokens. This class does that, with the token ids of each word cached. It checks the
    tokenizer when built and falls back to `model.embed` when that reasoning does not hold (another tokenizer), and
    for texts that hold a special token's text (`<s>`), which the tokenizer would read as that token."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.weights = model.embedding
        self.tokenizer = model.tokenizer
        self.specials = tuple(t.content for t in self.tokenizer.get_added_tokens_decoder().values())
        self.pieces: dict[str, list[int]] = {}
        self.wordwise = _splits_at_words(self.tokenizer.to_str())

    def token_ids(self, text: str) -> list[int]:
        """The tokenizer's ids for `text` (without special tokens), word by word."""
        tokenize, pieces = self.tokenizer.model.tokenize, self.pieces
        ids: list[int] = []
        for piece in _PIECE.findall("\u2581" + text.replace(" ", "\u2581") if text else ""):
            found = pieces.get(piece)
            if found is None:
                found = [t.id for t in tokenize(piece)]
                if len(piece) <= PIECE_CHARS:
                    if len(pieces) >= PIECE_CACHE:
                        pieces.clear()
                    pieces[piece] = found
            ids += found
        return ids

    def __call__(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        rows = np.zeros((len(texts), self.weights.shape[1]), dtype=np.float32)
        for i, text in enumerate(texts):
            if not self.wordwise or ("<" in text and any(s in text for s in self.specials)):
                rows[i] = np.nan_to_num(self.model.embed([text], norm=True)[0])
                continue
            ids = self.token_ids(text)
            if ids:
                # WordLlama clips ids to its vocabulary too
                vectors = self.weights.take(np.array(ids, dtype=np.intp), axis=0, mode="clip")
                mean = vectors.sum(axis=0) / np.float32(len(ids))
                norm = np.sqrt(mean @ mean)
                if norm > 0:
                    rows[i] = mean / norm
        return rows


def _splits_at_words(config_json: str) -> bool:
    """Whether a tokenizer (its JSON) gives the same tokens word by word as for the whole text: Llama's normaliser
    (prepend a word mark, spaces become marks), no pre-tokenizer, a plain BPE whose tokens hold marks only at their
    start."""
    config = json.loads(config_json)
    mark = "\u2581"
    normalizer = config.get("normalizer") or {}
    expected = [
        {"type": "Prepend", "prepend": mark},
        {"type": "Replace", "pattern": {"String": " "}, "content": mark},
    ]
    model = config.get("model") or {}
    if (
        normalizer.get("type") != "Sequence"
        or normalizer.get("normalizers") != expected
        or config.get("pre_tokenizer") is not None
        or model.get("type") != "BPE"
        or model.get("dropout")
        or model.get("continuing_subword_prefix")
        or model.get("end_of_word_suffix")
        or model.get("ignore_merges")  # a word found whole in the vocabulary would skip the merges
    ):
        return False
    return all(mark not in token.lstrip(mark) for token in model.get("vocab", {}))


def _unit_rows(result: Any, count: int) -> np.ndarray:
    """An embedder's answer as float32 unit rows; ValueError when it is not `count` finite vectors of one length."""
    import numpy as np

    rows = np.asarray(result, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[0] != count or rows.shape[1] == 0:
        raise ValueError(f"the embedder returned shape {rows.shape}, expected ({count}, d): one vector per text")
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise ValueError(f"the embedder returned a vector with NaN or infinite numbers (for text {bad + 1} of {count})")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return rows / norms


def embed_text(embedder: Embedder, text: str) -> np.ndarray:
    """One request's vector: its task text, cut (task_text), embedded."""
    return _unit_rows(embedder([task_text(text)]), 1)[0]


class _Cache:
    """Example vectors of one embedder by the sha256 of their text (LRU, EXAMPLE_CACHE entries), and whole
    example matrices by the sha256 of the list (LRU, EXAMPLE_CACHE rows in all): a reload that leaves a task's
    examples alone gets the same read-only matrix without hashing or stacking each example again."""

    def __init__(self) -> None:
        self.vectors: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.matrices: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.lock = threading.Lock()

    def matrix(self, key: bytes) -> np.ndarray | None:
        with self.lock:
            found = self.matrices.get(key)
            if found is not None:
                self.matrices.move_to_end(key)
            return found

    def keep(self, key: bytes, matrix: np.ndarray) -> np.ndarray:
        matrix.flags.writeable = False  # shared by every compile of the same examples
        with self.lock:
            self.matrices[key] = matrix
            while len(self.matrices) > 1 and sum(len(m) for m in self.matrices.values()) > EXAMPLE_CACHE:
                self.matrices.popitem(last=False)
        return matrix


_caches: OrderedDict[int, tuple[Embedder, _Cache]] = OrderedDict()
_caches_lock = threading.Lock()


def forget_example_vectors() -> None:
    """Drop every embedder's kept example vectors and matrices (engine/compiler/reuse.py's forget)."""
    with _caches_lock:
        _caches.clear()


def embed_examples(embedder: Embedder, examples: Sequence[str]) -> np.ndarray:
    """The unit vectors of a task's examples, one row each; an example embedded before by this embedder (an earlier
    compile, a reload) is not embedded again."""
    import numpy as np

    with _caches_lock:
        held = _caches.get(id(embedder))
        if held is None or held[0] is not embedder:
            held = _caches[id(embedder)] = (embedder, _Cache())
        _caches.move_to_end(id(embedder))
        while len(_caches) > EMBEDDERS_KEPT:
            _caches.popitem(last=False)
    cache = held[1]
    whole = hashlib.sha256("".join(f"{len(e)}\0{e}" for e in examples).encode("utf-8", "surrogatepass")).digest()
    known = cache.matrix(whole)
    if known is not None:
        return known
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
    return cache.keep(whole, np.stack([found[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32))


def nearest(examples: np.ndarray, vector: np.ndarray) -> tuple[int, float]:
    """The index of the example closest to `vector` and its cosine similarity (both unit vectors); ValueError naming
    the embedder when the request's vector and the examples' differ in length."""
    if vector.shape != examples.shape[1:]:
        raise ValueError(
            f"the embedder returned a vector of {vector.shape[-1] if vector.ndim else 0} numbers for the request "
            f"but of {examples.shape[1]} for the examples: an embedder must give vectors of one length"
        )
    scores = examples @ vector
    best = int(scores.argmax())
    return best, float(scores[best])
