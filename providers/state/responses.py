"""Cached answers in Redis: a state store and the response cache's keys and entries in, the entries kept under the
store's prefix (`<prefix>cache:<sha256>`, always expiring with their TTL) out, so every replica on that Redis shares
them. The cache is best effort and leaves the shared state room: while Redis's `used_memory` is above `headroom` of
its `maxmemory` (read from `INFO memory` at most every `check_every` seconds, plus what the cache wrote since) a write
is skipped, so a cache that fills Redis never makes it refuse the state's own writes. While the store is in its outage
the caller's fallback (the in-process LRU) stands in, and a Redis error on a cache key (OOM under `noeviction`, a
timeout, ...) only skips that read or write: it never goes through the store's outage detection, so the cache never
switches budgets, rate limits and circuits to local state. Every skip is counted (`skipped`, and the listeners'
`skip_write` / `skip_read` events: /metrics), each cause logged once (providers/execution/cache.py, docs/cache.md)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["HEADROOM", "RedisResponses", "remote_for"]

log = logging.getLogger("modelroute.cache")

HEADROOM = 0.8  # the share of Redis's maxmemory the cache writes up to (the rest is the shared state's)
CHECK_EVERY = 1.0  # seconds between two reads of `INFO memory`


class RedisResponses:
    """The response cache's shared store on the Redis of a RedisStore (its prefix; its outage, never caused by
    a cache key's error). `skipped` counts the reads and writes skipped (memory above the headroom, a Redis error);
    `headroom` is the share of `maxmemory` the cache fills at most (1 or more: no limit of its own)."""

    def __init__(
        self,
        store: Any,
        *,
        headroom: float = HEADROOM,
        check_every: float = CHECK_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.headroom, self.check_every, self.clock = headroom, check_every, clock
        self.skipped = 0
        self._lock = threading.Lock()
        self._logged: set[str] = set()
        self._listeners: list[Callable[[str], None]] = []
        self._checked = -float("inf")  # when INFO memory was last read (by `clock`)
        self._used = 0  # used_memory then
        self._written = 0  # the bytes the cache wrote since
        self._limit = 0  # maxmemory * headroom (0: no limit)

    def listen(self, callback: Callable[[str], None]) -> None:
        """Call `callback("skip_write" | "skip_read")` on every skipped write or read (the gateway's /metrics)."""
        self._listeners.append(callback)

    def _key(self, key: str) -> str:
        return str(self.store._k("cache", key))

    def _once(self, cause: str, message: str, *args: Any) -> None:
        with self._lock:
            first = cause not in self._logged
            self._logged.add(cause)
        if first:
            log.warning(message, *args)

    def _skip(self, event: str, cause: str, message: str, *args: Any) -> None:
        with self._lock:
            self.skipped += 1
        self._once(cause, message + "; further ones are counted (modelroute_cache_skipped_total), not logged", *args)
        for callback in list(self._listeners):
            callback(event)

    def _error(self, what: str, exc: BaseException) -> None:
        self._skip(
            "skip_write" if what == "write" else "skip_read",
            f"error {what}",
            "response cache: Redis refused a cache %s (%s: %s); skipping it, shared state is unaffected (size Redis "
            "maxmemory for the cache, see docs/cache.md)",
            what,
            type(exc).__name__,
            str(exc).split("\n")[0][:200],
        )

    def _full(self, size: int) -> bool:
        """Whether a write of `size` bytes would take Redis above the cache's headroom. `INFO memory` is read at most
        every `check_every` seconds, and sooner once the cache has written half the room the last reading left (a
        value takes more memory in Redis than its length, so the estimate between two readings is kept short)."""
        now = self.clock()
        with self._lock:
            room = self._limit - self._used
            fits = self._limit <= 0 or self._written + size <= room
            due = now - self._checked >= self.check_every or (
                self._limit > 0 and fits and 2 * (self._written + size) > room
            )
            if due:
                self._checked = now  # one reader at a time; the others use the last reading
        if due and self.headroom < 1.0:
            self._read_memory()
        with self._lock:
            if self._limit <= 0 or self._used + self._written + size <= self._limit:
                self._written += size
                return False
            used, limit = self._used + self._written, self._limit
        self._skip(
            "skip_write",
            "headroom",
            "response cache: Redis uses %d bytes, above %.0f%% of its maxmemory (%d bytes for the cache); skipping "
            "cache writes until it frees up, so budgets, rate limits and circuits keep their room (docs/cache.md)",
            used,
            self.headroom * 100,
            limit,
        )
        return True

    def _read_memory(self) -> None:
        """used_memory and maxmemory from `INFO memory` (a refused INFO, e.g. renamed away: the last reading stands)."""
        try:
            info = self.store._redis.info("memory")
            used, maxmemory = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
        except self.store._errors as exc:
            self._once(
                "info",
                "response cache: Redis refused INFO memory (%s); the cache's headroom is not checked until it answers",
                str(exc).split("\n")[0][:200],
            )
        except (TypeError, ValueError):
            pass  # an INFO without the fields: no limit known
        else:
            with self._lock:
                self._used, self._written, self._limit = used, 0, int(maxmemory * self.headroom)

    def get(self, key: str, fallback: Callable[[], str | None]) -> str | None:
        if self.store._down:
            return fallback()
        try:
            value = self.store._redis.get(self._key(key))
        except self.store._errors as exc:
            self._error("read", exc)
            return None
        return None if value is None else str(value)

    def put(self, key: str, value: str, ttl: float, fallback: Callable[[], None]) -> None:
        if self.store._down:
            fallback()
            return
        name = self._key(key)
        if self._full(len(name) + len(value.encode())):
            return
        try:
            self.store._redis.set(name, value, px=max(1, int(ttl * 1000)))
        except self.store._errors as exc:
            self._error("write", exc)


def remote_for(store: Any, *, headroom: float = HEADROOM) -> RedisResponses | None:
    """The shared store of cached answers for a RedisStore (filling at most `headroom` of its maxmemory); None for
    any other store (answers stay in memory)."""
    from providers.state.redis_store import RedisStore

    return RedisResponses(store, headroom=headroom) if isinstance(store, RedisStore) else None
