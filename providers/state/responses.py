"""Cached answers in Redis: a state store and the response cache's keys and entries in, the entries kept under the
store's prefix (`<prefix>cache:<sha256>`, always expiring with their TTL) out, so every replica on that Redis shares
them. The cache is best effort: while the store is in its outage the caller's fallback (the in-process LRU) stands
in, and a Redis error on a cache key (OOM under `noeviction`, a timeout, ...) only skips that read or write
(counted in `skipped`, logged once): it never goes through the store's outage detection, so a full Redis never
switches budgets, rate limits and circuits to local state (providers/execution/cache.py, docs/cache.md)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["RedisResponses", "remote_for"]

log = logging.getLogger("modelroute.cache")


class RedisResponses:
    """The response cache's shared store on the Redis of a RedisStore (its prefix; its outage, never caused by
    a cache key's error). `skipped` counts the reads and writes a Redis error skipped."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.skipped = 0
        self._lock = threading.Lock()

    def _key(self, key: str) -> str:
        return str(self.store._k("cache", key))

    def _skip(self, what: str, exc: BaseException) -> None:
        with self._lock:
            self.skipped += 1
            first = self.skipped == 1
        if first:
            log.warning(
                "response cache: Redis refused a %s (%s: %s); skipping it, shared state is unaffected "
                "(size Redis maxmemory for the cache, see docs/cache.md); further ones are counted, not logged",
                what,
                type(exc).__name__,
                str(exc).split("\n")[0][:200],
            )

    def get(self, key: str, fallback: Callable[[], str | None]) -> str | None:
        if self.store._down:
            return fallback()
        try:
            value = self.store._redis.get(self._key(key))
        except self.store._errors as exc:
            self._skip("cache read", exc)
            return None
        return None if value is None else str(value)

    def put(self, key: str, value: str, ttl: float, fallback: Callable[[], None]) -> None:
        if self.store._down:
            fallback()
            return
        try:
            self.store._redis.set(self._key(key), value, px=max(1, int(ttl * 1000)))
        except self.store._errors as exc:
            self._skip("cache write", exc)


def remote_for(store: Any) -> RedisResponses | None:
    """The shared store of cached answers for a RedisStore; None for any other store (answers stay in memory)."""
    from providers.state.redis_store import RedisStore

    return RedisResponses(store) if isinstance(store, RedisStore) else None
