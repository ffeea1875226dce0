"""Cached answers in Redis: a state store and the response cache's keys and entries in, the entries kept under the
store's prefix (`<prefix>cache:<sha256>`, expiring with their TTL) out, so every replica on that Redis shares them;
while Redis is unreachable the caller's fallback (the in-process LRU) stands in (providers/execution/cache.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["RedisResponses", "remote_for"]


class RedisResponses:
    """The response cache's shared store on the Redis of a RedisStore (its prefix, its outage detection)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def _key(self, key: str) -> str:
        return str(self.store._k("cache", key))

    def get(self, key: str, fallback: Callable[[], str | None]) -> str | None:
        def remote() -> str | None:
            value = self.store._redis.get(self._key(key))
            return None if value is None else str(value)

        found: str | None = self.store._do(remote, fallback, flush=False)
        return found

    def put(self, key: str, value: str, ttl: float, fallback: Callable[[], None]) -> None:
        def remote() -> None:
            self.store._redis.set(self._key(key), value, px=max(1, int(ttl * 1000)))

        self.store._do(remote, fallback, flush=False)


def remote_for(store: Any) -> RedisResponses | None:
    """The shared store of cached answers for a RedisStore; None for any other store (answers stay in memory)."""
    from providers.state.redis_store import RedisStore

    return RedisResponses(store) if isinstance(store, RedisStore) else None
