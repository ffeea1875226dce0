"""Reuse across compiles: what one compile built from a catalog, settings and patterns in, the same immutable
objects out to the next compile that has equal inputs.

A reload recompiles the whole policy, and most of it is usually unchanged: the edit touched one rule. Each memo
here is keyed by everything its objects depend on, holds a few recent keys (LRU), and hands out objects that are
never mutated after they are built, so two compiles (or two threads) may share them. A memo keyed by an identity
(a catalog, a semantic task, an embedder) keeps that object alive with the value, so the identity is never reused.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from typing import Any

from engine.language import fastparse
from engine.language.load import forget_parses
from engine.runtime.embedder import forget_example_vectors
from engine.runtime.matcher import Matcher, forget_checks
from engine.runtime.policy import Entry
from engine.runtime.semantic import SemanticTask
from engine.runtime.settings import Settings
from providers.catalog.loader import LOADED
from providers.catalog.memo import Lru

__all__ = ["entries_of", "forget", "matcher_of", "selector_cache", "semantic_task"]

#: Catalogs whose entries are kept; selector caches kept (one per catalog, settings, date, ... in use).
ENTRIES_KEPT = 4
SELECTOR_CACHES_KEPT = 4
#: Compiled RE2 sets kept, and semantic tasks kept.
MATCHERS_KEPT = 16
SEMANTIC_KEPT = 256


_entries: Lru[tuple[Any, dict[str, Entry]]] = Lru(ENTRIES_KEPT)
_selectors: Lru[tuple[tuple[Any, ...], dict]] = Lru(SELECTOR_CACHES_KEPT)
_matchers: Lru[Matcher] = Lru(MATCHERS_KEPT)
_semantic: Lru[SemanticTask] = Lru(SEMANTIC_KEPT)


def entries_of(catalog: Any) -> Mapping[str, Entry]:
    """The catalog's models as runtime entries, the same Entry objects for the same catalog object (catalogs are
    immutable, and a reload whose catalog file did not change gets the same one back from the catalog loader)."""
    held = _entries.get(
        id(catalog), lambda: (catalog, {name: Entry.of(spec) for name, spec in catalog.models.items()}), _is(catalog)
    )
    return held[1]


def _is(obj: Any) -> Callable[[Any], bool]:
    return lambda held: held[0] is obj


class _Carried(dict):
    """One compile's selector cache, started from the last compile's with the same inputs (`before`): a key found
    there is copied in when looked up, so when the compile ends the cache holds what it used and what it built,
    nothing older. A cache that outlived every rule that used a key would grow with every edit."""

    def __init__(self, seed: dict, before: dict):
        super().__init__(seed)
        self.before = before

    def __missing__(self, key: Any) -> Any:
        value = self.before[key]
        self[key] = value
        return value

    def __contains__(self, key: object) -> bool:
        if dict.__contains__(self, key):
            return True
        before = self.before
        if key in before:
            self[key] = before[key]
            return True
        return False

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default  # noqa: SIM401 (dict.get would skip the fallback)


def selector_cache(
    entries: Mapping[str, Entry],
    today: datetime.date,
    settings: Settings,
    adhoc: frozenset[str],
    functions: Mapping[str, Any],
    rankers: Mapping[str, Any],
    semantic: Mapping[str, SemanticTask],
    seed: Callable[[], dict],
) -> dict:
    """The cache build_selector shares between rules (engine/compiler/actions.py), started from the cache of the last
    compile whose selectors had the same inputs: the same entries object, date, settings, ad-hoc models and semantic
    tasks. Rules that say the same then get the selector the last compile built. `seed` makes a fresh cache (with the
    values build_selector reads from it). A policy that calls Python functions or rankers never shares: each compile
    wraps them anew, and a wrapper logs its first failure once per policy version. Unhashable settings only turn the
    sharing off."""
    if functions or rankers:
        return seed()
    try:
        key = (
            id(entries),
            today,
            tuple(sorted(settings.by_name.items())),
            settings.limits,
            adhoc,
            tuple(sorted((name, id(task)) for name, task in semantic.items())),
        )
        hash(key)
    except TypeError:
        return seed()
    keep = (entries, tuple(semantic.values()))
    held = _selectors.peek(key)
    before: dict = {}
    if held is not None and held[0][0] is entries:
        before = held[1]
        if isinstance(before, _Carried):
            before.before = {}  # that compile is over (or misses from now on): no chain of older caches
    made = _Carried(seed(), before)
    _selectors.put(key, (keep, made))  # this compile's cache is the next one's start
    return made


def matcher_of(sources: tuple[str, ...], display: tuple[str, ...]) -> Matcher:
    """The policy's RE2 set: compiled sets are immutable, so a reload whose patterns did not change reuses the last
    one. Keyed by a hash of the patterns, not the patterns (a key holding them kept ~1.8 MB per 10,000 phrases alive
    besides each set); a hit is checked against the set's own patterns, so a collision only compiles a new set."""
    return _matchers.get(
        hash((sources, display)),
        lambda: Matcher(sources, display),
        lambda m: m.sources == sources and m.display == display,
    )


def semantic_task(task: SemanticTask) -> SemanticTask:
    """An equal semantic task an earlier compile made (the same examples at the same places, the same vectors
    object, threshold, embedder and file), or this one: a reload that leaves the examples alone keeps the object,
    and with it the selectors that rank by its similarity."""
    key = (task.name, task.examples, task.spans, id(task.rows), task.threshold, id(task.embedder), task.file)

    def same(held: SemanticTask) -> bool:
        return held.rows is task.rows and held.embedder is task.embedder

    return _semantic.get(key, lambda: task, same)


def forget() -> None:
    """Forget everything compiles kept for later compiles: these memos, the parsed files and the fast parser's
    statements, the pattern checks, the example files read, the example vectors and the parsed catalog files. The
    next compile is then a first one (benchmarks that time a compile call this first; tests)."""
    from engine.compiler.semantic import forget_examples

    for memo in (_entries, _selectors, _matchers, _semantic, LOADED):
        memo.clear()
    fastparse.forget()
    forget_parses()
    forget_checks()
    forget_examples()
    forget_example_vectors()
