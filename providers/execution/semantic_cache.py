"""The response cache's semantic lookup: a cacheable request's key material and its policy's `set cache.semantic`
in; its scope (the material without the text of its last user message), the unit vector of that text, and from a
bounded per-replica index the exact key of a cached answer in the same scope whose text is at least that close
(cosine), out. providers/execution/cache.py consults it after an exact miss; docs/cache.md, "Semantic cache".

numpy and the embedder (engine/runtime/embedder.py) are imported only when a policy sets `cache.semantic`.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.runtime.settings import setting

if TYPE_CHECKING:
    import numpy as np

    from engine.runtime.embedder import Embedder
    from providers.execution.outcome import Run

__all__ = [
    "INDEX_MAX_BYTES",
    "SCOPE_MAX",
    "Probe",
    "SemanticIndex",
    "find",
    "probe_of",
    "remember",
    "threshold_of",
]

log = logging.getLogger("modelroute.cache")

SCOPE_MAX = 1000  # vectors kept per scope (a lookup compares the request with each of them)
INDEX_MAX_BYTES = 16 * 1024 * 1024  # the whole index: vectors, their keys and bookkeeping (15k 256-d vectors)
SCORE_SLACK = 1e-6  # float32 rounding: identical texts score 0.9999999, which must reach a threshold of 1
ROW_BOOKKEEPING = 16  # bytes per row besides its vector and key: its expiry and last use


def threshold_of(settings: Mapping[str, Any] | None) -> float | None:
    """The policy's `set cache.semantic` (a cosine from 0 to 1), or None: exact matches only."""
    value = setting(settings, "cache.semantic")
    return None if value is None else float(value)


@dataclass
class Probe:
    """One request's semantic side: its `scope` key, its task `text` (the last user message's), the `threshold`,
    and once computed its unit `vector` and the `embedder` that made it (or `failed`)."""

    scope: str
    text: str
    threshold: float
    embedder: Any = None
    vector: Any = None
    failed: bool = False


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(cause: str, exc: BaseException) -> None:
    with _warned_lock:
        first = cause not in _warned
        _warned.add(cause)
    if first:
        log.warning(
            "response cache: `cache.semantic` could not embed a request (%s: %s); such requests are cached by their "
            "exact text only (docs/cache.md, Semantic cache)",
            type(exc).__name__,
            str(exc).split("\n")[0][:200],
        )


def _last_user(messages: list[Any]) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], dict) and messages[i].get("role") == "user":
            return i
    return None


def probe_of(run: Run, material: Mapping[str, Any], threshold: float, digest: Callable[[Any], str]) -> Probe | None:
    """The semantic side of a request keyed by `material` (cache.key_material): its scope is the sha256 (`digest`)
    of the material with the text of its last user message left out (its other parts, images and files, stay; a
    text given as parts scopes as the same text given as a string);
    None when there is no such text or it is longer than the embedded cut (the vector would see only part of it,
    so two texts differing in their middle would match: those requests are cached exactly only)."""
    from engine.runtime.embedder import HEAD_CHARS, TAIL_CHARS

    chat = material.get("chat")
    if not isinstance(chat, dict) or not isinstance(messages := chat.get("messages"), list):
        return None
    last = _last_user(messages)
    if last is None:
        return None
    message = dict(messages[last])
    content = message.get("content")
    if isinstance(content, str):
        text, message["content"] = content, ""
    elif isinstance(content, list):
        texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        text = "\n".join(str(t) for t in texts)  # as decide() reads a message's text parts
        rest = [p for p in content if not (isinstance(p, dict) and p.get("type") == "text")]
        message["content"] = rest or ""  # text parts only: the scope of the same text given as a string
    else:
        return None
    if not text.strip() or len(text) > HEAD_CHARS + TAIL_CHARS:
        return None
    others = list(messages)
    others[last] = message
    scope = {**material, "chat": {**chat, "messages": others}, "semantic": True}  # never equal to an exact key
    return Probe(digest(scope), text, threshold)


def vector_of(run: Run, probe: Probe, override: Embedder | None) -> np.ndarray | None:
    """The request's unit vector, made once: decide()'s (`Decision.vector`) when it embedded the same text with the
    policy's embedder and no `override` (ResponseCache(embedder=...)) is given, else the text embedded by the
    override, the policy's embedder or the default one. None when embedding failed (logged once per cause: the
    request is then cached by its exact key only); the index compares only vectors of one embedder."""
    if probe.vector is None and not probe.failed:
        from engine.runtime.embedder import default_embedder, embed_text

        try:
            embedder = override or getattr(run.policy, "embedder", None)
            given = None
            if override is None and embedder is not None:
                decision = run.decision
                given = getattr(decision, "vector", None)
                if given is not None and getattr(decision.request, "text", None) != probe.text:
                    given = None
            probe.embedder = embedder or default_embedder()
            probe.vector = given if given is not None else embed_text(probe.embedder, probe.text)
        except Exception as exc:  # an embedder's failure never fails the request: exact matches only
            probe.failed = True
            _warn_once(type(exc).__name__, exc)
    return None if probe.failed else probe.vector


def find(
    index: SemanticIndex,
    override: Embedder | None,
    run: Run,
    probe: Probe,
    get: Callable[[str], str | None],
    now: float,
) -> tuple[str, float] | None:
    """The stored entry (read by `get`) of the nearest request of the probe's scope within its threshold, and its
    cosine; None when there is none (an entry that vanished or expired is dropped from the index)."""
    vector = vector_of(run, probe, override)
    if vector is None:
        return None
    near = index.nearest(probe.scope, probe.embedder, vector, probe.threshold, now)
    if near is None:
        return None
    value = get(near[0])
    if value is None:
        index.drop(near[0])
        return None
    return value, near[1]


def remember(
    index: SemanticIndex, override: Embedder | None, run: Run, probe: Probe, key: str, expires: float, now: float
) -> None:
    """Index the answer stored (or served) under `key` by its request's vector, until `expires` (wall time)."""
    vector = vector_of(run, probe, override)
    if vector is not None:
        index.add(probe.scope, probe.embedder, vector, key, expires, now)


class _Scope:
    """The vectors of one scope: `rows` (n, d) float32 unit vectors, with each row's exact key, expiry (wall
    time) and last use (the index's tick), and the embedder that made them (vectors of two embedders are never
    compared)."""

    __slots__ = ("embedder", "expires", "keys", "rows", "used")

    def __init__(self, embedder: Any, vector: np.ndarray) -> None:
        import numpy as np

        self.embedder = embedder
        self.rows = np.zeros((0, vector.shape[0]), dtype=np.float32)
        self.keys: list[str] = []
        self.expires = np.zeros(0, dtype=np.float64)
        self.used = np.zeros(0, dtype=np.int64)

    def fits(self, embedder: Any, vector: np.ndarray) -> bool:
        return self.embedder is embedder and vector.shape == self.rows.shape[1:]


def _row_bytes(dim: int, key: str) -> int:
    return 4 * dim + len(key) + ROW_BOOKKEEPING


class SemanticIndex:
    """Per scope, the unit vectors of the cached requests' texts and their exact keys, bounded by `per_scope` rows
    per scope and `max_bytes` in all (the least recently used row of the least recently used scope goes first).
    It lives in this process only: with `--redis` the answers are shared, and a replica finds another's answer by
    meaning once it stored or served that answer itself."""

    def __init__(self, max_bytes: int = INDEX_MAX_BYTES, per_scope: int = SCOPE_MAX) -> None:
        self.max_bytes, self.per_scope = max_bytes, per_scope
        self.bytes = 0
        self._scopes: OrderedDict[str, _Scope] = OrderedDict()
        self._owner: dict[str, str] = {}  # exact key -> its scope
        self._tick = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._owner)

    def __contains__(self, key: str) -> bool:
        return key in self._owner

    @property
    def scopes(self) -> int:
        return len(self._scopes)

    def nearest(
        self, scope: str, embedder: Any, vector: np.ndarray, threshold: float, now: float
    ) -> tuple[str, float] | None:
        """The exact key of the unexpired row of `scope` closest to `vector` and its cosine, when it reaches
        `threshold`; else None (the scope's expired rows leave the index)."""
        with self._lock:
            found = self._scopes.get(scope)
            if found is None or not found.fits(embedder, vector) or not self._purge(scope, found, now):
                return None
            scores = found.rows @ vector  # every row unexpired (purged)
            best = int(scores.argmax())
            score = float(scores[best])
            if not score >= threshold - SCORE_SLACK:  # NaN (a bad vector) never hits
                return None
            self._tick += 1
            found.used[best] = self._tick
            self._scopes.move_to_end(scope)
            return found.keys[best], min(score, 1.0)

    def add(self, scope: str, embedder: Any, vector: np.ndarray, key: str, expires: float, now: float) -> None:
        """Index the answer stored under `key` (expiring at `expires`) by its request's `vector`."""
        import numpy as np

        size = _row_bytes(vector.shape[0], key)
        if size > self.max_bytes:
            return
        with self._lock:
            self._tick += 1
            found = self._scopes.get(scope)
            if found is not None and not found.fits(embedder, vector):  # another embedder: its vectors go
                for i in range(len(found.keys) - 1, -1, -1):
                    self._remove(scope, found, i)
                found = None
            if found is not None and not self._purge(scope, found, now):  # its rows all expired: it went
                found = None
            if found is None:
                found = self._scopes[scope] = _Scope(embedder, vector)
            self._scopes.move_to_end(scope)
            if self._owner.get(key) == scope:  # indexed already: refreshed
                i = found.keys.index(key)
                found.rows[i], found.expires[i], found.used[i] = vector, expires, self._tick
                return
            if key in self._owner:  # under another scope (not made by key_material): moved here
                other = self._scopes[self._owner[key]]
                self._remove(self._owner[key], other, other.keys.index(key))
            if len(found.keys) >= self.per_scope:
                self._remove(scope, found, int(found.used.argmin()))
                if scope not in self._scopes:  # emptied: made anew
                    found = self._scopes[scope] = _Scope(embedder, vector)
            found.rows = np.vstack([found.rows, vector[None, :].astype(np.float32)])
            found.keys.append(key)
            found.expires = np.append(found.expires, expires)
            found.used = np.append(found.used, self._tick)
            self._owner[key] = scope
            self.bytes += size
            while self.bytes > self.max_bytes:
                oldest, victim = next(iter(self._scopes.items()))
                self._remove(oldest, victim, int(victim.used.argmin()))

    def drop(self, key: str) -> None:
        """Forget `key` (its answer expired, was evicted or vanished from the shared store)."""
        with self._lock:
            scope = self._owner.get(key)
            found = self._scopes.get(scope) if scope is not None else None
            if scope is not None and found is not None:
                self._remove(scope, found, found.keys.index(key))

    def _purge(self, scope: str, found: _Scope, now: float) -> bool:
        """Remove the expired rows of `found` (the lock held): an answer that expired leaves the index when its
        scope is next searched or grown. False when the scope was emptied (and went)."""
        import numpy as np

        for i in np.flatnonzero(found.expires <= now)[::-1]:
            self._remove(scope, found, int(i))
        return bool(found.keys)

    def _remove(self, scope: str, found: _Scope, i: int) -> None:
        """Remove row `i` of `found` (the lock held); an emptied scope goes."""
        import numpy as np

        key = found.keys.pop(i)
        found.rows = np.delete(found.rows, i, axis=0)
        found.expires = np.delete(found.expires, i)
        found.used = np.delete(found.used, i)
        self._owner.pop(key, None)
        self.bytes -= _row_bytes(found.rows.shape[1], key)
        if not found.keys:
            del self._scopes[scope]
