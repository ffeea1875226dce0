"""Where the response cache keeps its answers: a key and its stored entry (JSON text) in; the entry, while kept,
out. `MemoryLRU` keeps them in this process, least recently used first out past a bound in bytes; `Remote` is the
shape of a shared store (the Redis of a RedisStore, providers/state/responses.py) that the cache uses instead, the
memory LRU standing in while it is unreachable. ResponseCache (providers/execution/cache.py) uses both.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from engine.runtime.settings import setting

__all__ = ["MemoryLRU", "Remote"]


class Remote(Protocol):
    """A shared store of cached answers (providers/state/responses.py): `fallback` runs while it is unreachable."""

    def get(self, key: str, fallback: Callable[[], str | None]) -> str | None: ...

    def put(self, key: str, value: str, ttl: float, fallback: Callable[[], None]) -> None: ...

    def listen(self, callback: Callable[[str], None]) -> None: ...


class MemoryLRU:
    """Cached answers in this process: least recently used first out once their bytes pass `max_bytes`."""

    def __init__(self, max_bytes: int = int(setting(None, "cache.max_bytes"))):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self.on_evict: Callable[[str], None] | None = None  # called with each key the bound pushed out

    def __len__(self) -> int:
        return len(self._items)

    @staticmethod
    def size(key: str, value: str) -> int:
        return len(key) + len(value.encode())

    def get(self, key: str) -> str | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: str) -> None:
        size = self.size(key, value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= self.size(key, old)
            if size > self.max_bytes:  # larger than the whole cache: not kept
                return
            self._items[key] = value
            self.bytes += size
            evicted = []
            while self.bytes > self.max_bytes:
                k, v = self._items.popitem(last=False)
                self.bytes -= self.size(k, v)
                evicted.append(k)
        self._evicted(evicted)

    def _evicted(self, keys: list[str]) -> None:
        if self.on_evict is not None:
            for k in keys:
                self.on_evict(k)

    def drop(self, key: str) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= self.size(key, old)

    def resize(self, max_bytes: int) -> None:
        """Bound the cache to `max_bytes`, the least recently used entries out until it fits."""
        evicted = []
        with self._lock:
            self.max_bytes = max_bytes
            while self.bytes > self.max_bytes and self._items:
                k, v = self._items.popitem(last=False)
                self.bytes -= self.size(k, v)
                evicted.append(k)
        self._evicted(evicted)
