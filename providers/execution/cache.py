"""The response cache: a prepared Run (its decision, the ChatRequest it sends, the caller's tenant, endpoint and
bypass) in; a key over everything that changes the answer, and on a hit the stored answer as a Completion that cost
nothing, out. Answers live in an LRU in memory bounded in bytes, or in the Redis of a RedisStore (`serve --redis`),
shared by every replica on it, with the memory LRU standing in while Redis is unreachable (both:
providers/execution/cache_stores.py). See docs/cache.md.

The policy turns it on: `set cache.ttl = 1h` (a rule's own TTL, once the language has one, comes as
`decision.cache_ttl`). Only requests with `temperature` 0 are cached unless `set cache.sampled = true` (an unset
temperature is sampled: OpenAI's default is 1). Each gateway key has its own answers unless `set cache.shared =
true`. `cache=False` (Python) or `cache-control: no-cache` (gateway) skips the lookup but stores the fresh answer;
`cache-control: no-store` neither reads nor stores.

`set cache.semantic = 0.95` adds a lookup by meaning (providers/execution/semantic_cache.py): after an exact miss,
a stored answer to a request of the same scope (the key's material without the text of the last user message)
whose text's vector is at least that close (cosine) answers, by the same rules as an exact hit.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.runtime.settings import setting
from providers.execution.cache_stores import MemoryLRU, Remote
from providers.execution.outcome import Completion, validate
from providers.execution.resilience import InvalidOutput
from providers.execution.semantic_cache import Probe, SemanticIndex, find, probe_of, remember, threshold_of
from providers.types import ChatResponse, Usage

if TYPE_CHECKING:
    from providers.execution.outcome import Run

__all__ = [
    "CACHE_HEADER",
    "SIMILARITY_HEADER",
    "ResponseCache",
    "attach",
    "bypass_of",
    "cache_for",
    "digest",
    "key_material",
]

CACHE_HEADER = "x-modelroute-cache"  # hit | miss, on every answer the cache was consulted (or filled) for
SIMILARITY_HEADER = "x-modelroute-cache-similarity"  # on a hit found by meaning (`cache.semantic`): its cosine
KEY_VERSION = 2  # part of every key: a change of what is stored or of the key's material changes it


@dataclass
class Lookup:
    """One cacheable request: its key, how long its answer is kept, whether it may read and store, whether it
    was looked up already (the gateway looks up before the executor would), and with `cache.semantic` its probe
    and, on a hit by meaning, the cosine it was found at."""

    key: str
    ttl: float
    read: bool
    write: bool
    looked: bool = False
    hit: bool = False
    probe: Probe | None = None
    similarity: float | None = None


def bypass_of(header: str | None) -> bool | str:
    """A `cache-control` request header as the `cache` option: "no-store" (neither read nor store), False
    (`no-cache`: store but do not read), or True."""
    words = {w.strip().lower() for w in (header or "").split(",")}
    if "no-store" in words:
        return "no-store"
    return "no-cache" not in words


def key_material(run: Run, tenant: str | None, endpoint: str | None) -> dict[str, Any]:
    """Everything that changes the answer: the request as sent (messages, system, sampling fields, tools,
    tool_choice, response_format, stop, n and every other body field, the provider extras), the model plan
    (strategy, group, every model in order), the schema, the endpoint and the tenant (None when shared)."""
    d, schema = run.decision, run.schema
    named = None if schema is None else f"{getattr(schema, '__module__', '')}.{getattr(schema, '__qualname__', schema)}"
    return {
        "v": KEY_VERSION,
        "endpoint": endpoint,
        "tenant": tenant,
        "strategy": d.strategy,
        "group": list(d.group),
        "plan": [step.model for step in d.plan],
        "schema": named,
        "chat": run.chat.model_dump(mode="json"),
    }


def digest(material: Mapping[str, Any]) -> str:
    """The exact key of a request's material (sha256 of its canonical JSON)."""
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def ttl_of(run: Run) -> float | None:
    """The request's TTL: its rule's (`decision.cache_ttl`, when the language sets one), else `set cache.ttl`."""
    rule_ttl = getattr(run.decision, "cache_ttl", None)
    if rule_ttl is not None:
        return float(rule_ttl)
    ttl = setting(run.policy.settings, "cache.ttl")
    return None if ttl is None else float(ttl)


RAW_KEPT = ("stop_reason", "stop_sequence")  # what a replayed answer reads of the provider's JSON (anthropic_api)


def compact(response: ChatResponse | None) -> dict[str, Any] | None:
    """An answer as stored: its text once (the provider's JSON `raw` repeats it, so only RAW_KEPT is kept)."""
    if response is None:
        return None
    raw = response.raw
    kept = {k: raw[k] for k in RAW_KEPT if k in raw} if isinstance(raw, dict) else None
    dumped: dict[str, Any] = response.model_copy(update={"raw": kept or None}).model_dump(mode="json")
    return dumped


class ResponseCache:
    """The cache of one state store (cache_for): `begin` when a request is prepared, `lookup` before it runs,
    `store` when it answers, `end` when it is settled. `hits` / `misses` count lookups (`semantic_hits`: the hits
    found by meaning); `clock` is wall time. `index` is the semantic index (per process); `embedder`, when given,
    embeds for `cache.semantic` instead of the engine's (tests)."""

    def __init__(
        self,
        remote: Remote | None = None,
        *,
        clock: Callable[[], float] = time.time,
        embedder: Callable[[list[str]], Any] | None = None,
        index: SemanticIndex | None = None,
    ):
        self.memory = MemoryLRU()
        self.remote, self.clock = remote, clock
        self.embedder = embedder
        self.index = index if index is not None else SemanticIndex()
        self.memory.on_evict = self.index.drop
        self.hits = self.misses = self.semantic_hits = 0
        self._runs: dict[int, Lookup] = {}
        self._bounds: dict[str, int] = {}  # each policy's `cache.max_bytes`, by its entry file
        self._listeners: list[Callable[[str], None]] = []
        if remote is not None:
            remote.listen(self._event)

    def listen(self, callback: Callable[[str], None]) -> None:
        """Call `callback(event)` on every lookup ("hit" | "miss") and every read or write the shared store skipped
        ("skip_read" | "skip_write": Redis above the cache's headroom, or a Redis error) (the gateway's /metrics)."""
        self._listeners.append(callback)

    def bound(self, run: Run) -> None:
        """Note the `cache.max_bytes` of the request's policy: named policies sharing a store share one LRU,
        bounded by the largest of their settings (a reloaded policy replaces its own, by its entry file)."""
        policy = run.policy
        value = int(setting(policy.settings, "cache.max_bytes"))
        name = str(getattr(policy, "entry", ""))
        if self._bounds.get(name) != value:
            self._bounds[name] = value
            self.memory.resize(max(self._bounds.values()))

    # ---- a request's life ---------------------------------------------------------------------------
    def begin(self, run: Run, options: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        """Note a prepared request that the policy lets the cache serve (a TTL, temperature 0 or sampled allowed)."""
        self._runs.pop(id(run), None)  # a run that ended without end() must not lend its entry to a new one
        ttl = ttl_of(run)
        if ttl is None or ttl <= 0:
            return
        settings = run.policy.settings
        temperature = sent_temperature(run.chat.temperature, run.chat.extra)
        if (temperature is None or temperature > 0) and not setting(settings, "cache.sampled"):
            return
        mode = options.get("cache", True)
        if mode == "no-store":
            return
        self.bound(run)
        tenant = None if setting(settings, "cache.shared") else attrs.get("key")
        material = key_material(run, tenant if tenant is None else str(tenant), attrs.get("endpoint"))
        threshold = threshold_of(settings)
        probe = None if threshold is None else probe_of(run, material, threshold, digest)
        self._runs[id(run)] = Lookup(digest(material), ttl, read=mode is not False, write=True, probe=probe)

    def begin_body(
        self, run: Run, sent: Mapping[str, Any], options: Mapping[str, Any], attrs: Mapping[str, Any]
    ) -> Lookup | None:
        """Note a deterministic request answered with a JSON body (embeddings): cached by its TTL alone (no
        temperature rule); `sent` (what goes upstream besides the run's request) joins the key. Returns what
        store_body() takes (the run is settled before its body is made)."""
        self._runs.pop(id(run), None)
        ttl, mode = ttl_of(run), options.get("cache", True)
        if ttl is None or ttl <= 0 or mode == "no-store":
            return None
        settings = run.policy.settings
        self.bound(run)
        tenant = None if setting(settings, "cache.shared") else attrs.get("key")
        material = key_material(run, tenant if tenant is None else str(tenant), attrs.get("endpoint"))
        material["sent"] = dict(sent)
        found = self._runs[id(run)] = Lookup(digest(material), ttl, read=mode is not False, write=True)
        return found

    def lookup_body(self, run: Run) -> Any:
        """The stored body answering `run` (begin_body), or None. Counted once."""
        found = self._runs.get(id(run))
        if found is None or found.looked:
            return None
        found.looked = True
        value = self.get(found.key) if found.read else None
        value = value if value is not None and _fresh(value, found.ttl, self.clock()) else None
        found.hit = value is not None
        self._count("hit" if found.hit else "miss")
        return None if value is None else json.loads(value).get("body")

    def store_body(self, found: Lookup | None, body: Any) -> None:
        """Keep the JSON body answering a request begin_body() noted (`found`: what it returned)."""
        if found is not None and found.write and not found.hit:
            entry = {"expires": self.clock() + found.ttl, "stored": self.clock(), "body": body}
            self.put(found.key, json.dumps(entry, separators=(",", ":"), ensure_ascii=False), found.ttl)

    def status(self, run: Run) -> str | None:
        """`hit` or `miss` for a request the cache was consulted for, else None (the x-modelroute-cache header)."""
        found = self._runs.get(id(run))
        if found is None:
            return None
        return "hit" if found.hit else "miss"

    def lookup(self, run: Run) -> Completion | None:
        """The stored answer to `run` as a Completion costing nothing (no attempts), or None. Counted once."""
        found = self._runs.get(id(run))
        if found is None or found.looked:
            return None
        found.looked = True
        if not found.read:
            self._count("miss")
            return None
        value = self.get(found.key)
        probe = found.probe
        if probe is not None:  # `cache.semantic`: by meaning after an exact miss
            if value is None:
                near = find(self.index, self.embedder, run, probe, self.get, self.clock())
                if near is not None:
                    value, found.similarity = near
            elif found.key not in self.index:  # another replica's answer, served here: found by meaning from now
                expires = float(json.loads(value).get("expires", 0.0))
                remember(self.index, self.embedder, run, probe, found.key, expires, self.clock())
        if value is not None and not _fresh(value, found.ttl, self.clock()):
            value, found.similarity = None, None  # stored for a longer TTL than this request allows
        try:
            done = self.completion(run, value, found.similarity) if value is not None else None
        except InvalidOutput:  # stored for another schema of the same name: this request's answer is not there
            done, found.similarity = None, None
        found.hit = done is not None
        self._count("hit" if found.hit else "miss")
        if found.hit and found.similarity is not None:
            self.semantic_hits += 1
        return done

    def similarity(self, run: Run) -> float | None:
        """The cosine at which `run`'s answer was found by meaning (`cache.semantic`), or None (an exact hit, a
        miss, or a request the cache was not consulted for)."""
        found = self._runs.get(id(run))
        return None if found is None or not found.hit else found.similarity

    def store(self, run: Run, done: Completion) -> None:
        """Keep the answer of a request noted by begin() (a hit is not stored again)."""
        found = self._runs.get(id(run))
        if found is None or not found.write or found.hit:
            return
        entry: dict[str, Any] = {
            "expires": self.clock() + found.ttl,
            "stored": self.clock(),
            "model": done.model,
            "provider": done.provider,
            "strategy": done.strategy,
            "response": compact(done.response),
            "usage": done.usage.model_dump(mode="json"),
        }
        if done.response is None or done.response.text != done.text:
            entry["text"] = done.text
        self.put(found.key, json.dumps(entry, separators=(",", ":"), ensure_ascii=False), found.ttl)
        if found.probe is not None:
            remember(self.index, self.embedder, run, found.probe, found.key, entry["expires"], self.clock())

    def end(self, run: Run) -> None:
        self._runs.pop(id(run), None)

    # ---- storage ------------------------------------------------------------------------------------
    def get(self, key: str) -> str | None:
        """The stored entry of `key` if it has not expired (by `clock`)."""
        value = self.remote.get(key, lambda: self.memory.get(key)) if self.remote is not None else self.memory.get(key)
        if value is None:
            return None
        if float(json.loads(value).get("expires", 0.0)) <= self.clock():
            self.memory.drop(key)
            self.index.drop(key)
            return None
        return value

    def put(self, key: str, value: str, ttl: float) -> None:
        if self.remote is not None:
            self.remote.put(key, value, ttl, lambda: self.memory.put(key, value))
        else:
            self.memory.put(key, value)

    @staticmethod
    def completion(run: Run, value: str, similarity: float | None = None) -> Completion:
        """A stored entry as the answer to `run`: no attempts, no cost, `cached`; usage is the stored answer's;
        `similarity` is the cosine it was found at by meaning (None: an exact hit)."""
        entry = json.loads(value)
        raw = entry.get("response")
        response = ChatResponse.model_validate(raw) if raw is not None else None
        text = str(entry.get("text", response.text if response is not None else ""))
        parsed = validate(run.schema, text) if run.schema is not None else None
        usage = Usage.model_validate(entry.get("usage") or {})
        return Completion(
            text,
            parsed,
            usage,
            0.0,
            str(entry.get("model", "")),
            str(entry.get("provider", "")),
            run.decision,
            [],
            str(entry.get("strategy", "single")),
            response,
            cached=True,
            cache_similarity=similarity,
        )

    def _count(self, result: str) -> None:
        if result == "hit":
            self.hits += 1
        else:
            self.misses += 1
        self._event(result)

    def _event(self, event: str) -> None:
        for callback in list(self._listeners):
            callback(event)


_caches: weakref.WeakKeyDictionary[Any, ResponseCache] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def attach(store: Any, cache: ResponseCache) -> None:
    """Make `cache` the one cache_for(store) gives (tests attach one on an injected clock)."""
    with _registry_lock:
        _caches[store] = cache


def cache_for(store: Any) -> ResponseCache:
    """The one response cache of a state store: in Redis for a RedisStore (providers/state/responses.py), else
    in this process's memory."""
    from providers.state.responses import remote_for

    with _registry_lock:
        found = _caches.get(store)
        if found is None:
            found = _caches[store] = ResponseCache(remote_for(store))
        return found


def _fresh(value: str, ttl: float, now: float) -> bool:
    """Whether a stored entry is young enough for a request whose TTL is `ttl`: an entry lives as long as the TTL
    of the request that stored it, and a rule (or a reload) with a shorter one must not be served an older answer.
    An entry without its storing time (written before it was kept) is judged by its expiry alone."""
    stored = json.loads(value).get("stored")
    return not isinstance(stored, (int, float)) or now - float(stored) <= ttl


def sent_temperature(temperature: float | None, extra: Mapping[str, Any]) -> float | None:
    """The temperature that goes upstream: `extra`'s (merged into the body last, as `temperature` or Gemini's
    `generationConfig.temperature`) over the request's own; None when none is sent (the provider's default, which
    samples), and a value that is not a number counts as sampled."""
    config = extra.get("generationConfig")
    for value in (extra.get("temperature"), config.get("temperature") if isinstance(config, Mapping) else None):
        if value is not None:
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return temperature
