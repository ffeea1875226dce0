"""Model providers: the model catalog (`providers.catalog`) and, in submodules, the HTTP clients.

Importing this package loads only the catalog (pydantic + PyYAML), never httpx, so the decision core can
depend on it and stay pure. The execution names (`Executor`, `Completion`, `RoutingError`, `BudgetExceeded`,
`Attempt`, `Event`, ...) are loaded on first access.
"""

from typing import Any

from .catalog import (
    KNOWN_FEATURES,
    PROVIDER_KINDS,
    STANDARD_CAPABILITIES,
    Catalog,
    CatalogError,
    CatalogIssue,
    ModelSpec,
    ProviderSpec,
    SourceRef,
    default_catalog,
    default_catalog_path,
    default_provider_kind,
    load_catalog,
)

_LAZY = {
    "Attempt": "providers.execution.resilience",
    "RoutingError": "providers.execution.resilience",
    "InvalidOutput": "providers.execution.resilience",
    "StreamInterrupted": "providers.execution.resilience",
    "BudgetExceeded": "providers.execution.budget",
    "Event": "providers.execution.events",
    "Executor": "providers.execution.executor",
    "Completion": "providers.execution.executor",
    "CompletionStream": "providers.execution.streaming",
    "AsyncCompletionStream": "providers.execution.streaming",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'providers' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "KNOWN_FEATURES",
    "PROVIDER_KINDS",
    "STANDARD_CAPABILITIES",
    "Catalog",
    "CatalogError",
    "CatalogIssue",
    "ModelSpec",
    "ProviderSpec",
    "SourceRef",
    "default_catalog",
    "default_catalog_path",
    "default_provider_kind",
    "load_catalog",
    *_LAZY,
]
