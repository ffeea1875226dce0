"""Provider-qualified model names: `provider:model` and a catalog in, the catalog model it names (or, when the
policy allows ad-hoc models, a model the catalog does not list) out.

`P:X` names the catalog model whose provider is P and whose name, alias or provider id is X, in that order: a
name wins over an alias, an alias over an id. With `set adhoc_models = true`, an X the catalog does not list is
allowed for a provider P the catalog knows (a `providers:` entry or a model of P): it is sent to P as model id
X, its prices and latency are unknown (NaN), so cost- and latency-ranked choices skip it and a budget refuses it
unless `budget.unknown_price_hold` is set, and it has no capability scores.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping
from typing import Any

from engine.runtime.features import EMBEDDINGS, FEATURES
from engine.runtime.policy import Entry
from providers.catalog.models import ModelSpec

__all__ = [
    "UNKNOWN_CONTEXT",
    "PolicyModels",
    "adhoc_spec",
    "context_known",
    "known_providers",
    "resolve_qualified",
    "split_name",
]

#: The context window assumed for an ad-hoc model (unknown: no request is too long for it here; the provider
#: answers if it is).
UNKNOWN_CONTEXT = 1_000_000_000


def context_known(entry: Any) -> bool:
    """Whether a model's context window is known (an ad-hoc model's is not: UNKNOWN_CONTEXT stands for it, large
    enough that no request is too long for it, but never ranked or limited by as a real number)."""
    return bool(entry.spec.context != UNKNOWN_CONTEXT)


def split_name(name: str) -> tuple[str, str] | None:
    """`openai:gpt-4o` -> ("openai", "gpt-4o"); None for a name without a provider part."""
    provider, sep, model = name.partition(":")
    return (provider, model) if sep and provider and model else None


def known_providers(catalog: Any) -> set[str]:
    """Every provider the catalog knows: its `providers:` entries and the providers of its models."""
    return {*catalog.providers, *(m.provider for m in catalog.models.values())}


def resolve_qualified(catalog: Any, name: str) -> ModelSpec | None:
    """The catalog model `provider:model` names (see the module docstring), or None."""
    parts = split_name(name)
    if parts is None:
        return None
    provider, model = parts
    mine = [m for m in catalog.models.values() if m.provider == provider]
    for test in (lambda m: m.name == model, lambda m: model in m.aliases, lambda m: m.id == model):
        found = next((m for m in mine if test(m)), None)
        if found is not None:
            return found
    return None


def adhoc_spec(provider: str, model: str) -> ModelSpec:
    """A model the catalog does not list, named `provider:model`, sent to the provider as id `model`: unknown
    prices and latency (NaN), no capability scores, every known feature (the provider refuses what it lacks)."""
    nan = math.nan
    return ModelSpec.model_construct(
        name=f"{provider}:{model}",
        provider=provider,
        id=model,
        aliases=(),
        context=UNKNOWN_CONTEXT,
        max_output=None,
        input_price=nan,
        output_price=nan,
        latency_ms=nan,
        capabilities={},
        supports=FEATURES - {EMBEDDINGS},  # a chat model, its features unknown: not held against it
        deprecation_date=None,
        source=None,
    )


@functools.lru_cache(maxsize=256)
def _adhoc_entry(provider: str, model: str) -> Entry:
    """One entry per ad-hoc name (selectors and execution compare entries by identity), the last few kept."""
    return Entry.of(adhoc_spec(provider, model))


class PolicyModels(Mapping[str, Entry]):
    """A compiled policy's models by name: the catalog's (and the ad-hoc models its rules name). With `set
    adhoc_models = true`, looking up a `provider:model` name the catalog does not list, for a provider it knows,
    gives that ad-hoc model (made on demand: the API and the gateway may name one no rule names); iterating
    lists only the compiled models."""

    __slots__ = ("_catalog", "_entries", "_providers")

    def __init__(self, entries: Mapping[str, Entry], catalog: Any, *, adhoc: bool) -> None:
        self._entries = dict(entries)
        self._catalog = catalog
        self._providers = frozenset(known_providers(catalog)) if adhoc and catalog is not None else frozenset()

    def __getitem__(self, name: str) -> Entry:
        found = self._entries.get(name)
        if found is not None:
            return found
        parts = split_name(name) if self._providers and isinstance(name, str) else None
        if parts is None or parts[0] not in self._providers:
            raise KeyError(name)
        spec = resolve_qualified(self._catalog, name)
        if spec is not None and spec.name in self._entries:
            return self._entries[spec.name]
        return _adhoc_entry(*parts)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"PolicyModels({len(self._entries)} models)"
