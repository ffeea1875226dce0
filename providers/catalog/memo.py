"""Memos: a key and a way to build a value in, the value built for that key before (or now) out; small, LRU and
thread-safe. The catalog loaders keep parsed catalogs by file content with it, and the compiler keeps what one
compile can hand the next (engine/compiler/reuse.py)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["Lru"]

V = TypeVar("V")


class Lru(Generic[V]):
    """At most `size` values by key, the least recently used dropped first. get() builds a missing value outside the
    lock (building may take long: an RE2 set, a 4,000-model catalog), so two threads may both build one; the later
    one is kept. A build that raises keeps nothing."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[Hashable, V] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], V], valid: Callable[[V], bool] | None = None) -> V:
        """The value kept for `key` (when `valid` accepts it), else make() kept and returned."""
        with self.lock:
            found = self.items.get(key)
            if found is not None and (valid is None or valid(found)):
                self.items.move_to_end(key)
                return found
        return self.put(key, make())

    def peek(self, key: Hashable) -> V | None:
        """The value kept for `key`, or None; its place in the order stays."""
        with self.lock:
            return self.items.get(key)

    def put(self, key: Hashable, value: V) -> V:
        """Keep `value` for `key` (replacing what was kept) as the most recently used; returns it."""
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self.items)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
