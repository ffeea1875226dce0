"""Model providers: the model catalog (`providers.catalog`) and, in submodules, the HTTP clients.

Importing this package loads only the catalog (pydantic + PyYAML), never httpx, so the decision core can
depend on it and stay pure. The execution names (`Executor`, `Completion`, `RoutingError`, `BudgetExceeded`,
`NoConsensus`, `Attempt`, `Verdict`, `Event`, ...) are loaded on first access.
"""

import typing

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

if typing.TYPE_CHECKING:  # what the lazy names are, for type checkers
    from providers.execution import (
        AsyncCompletionStream,
        Attempt,
        BudgetExceeded,
        Completion,
        CompletionStream,
        Event,
        Executor,
        InvalidOutput,
        NoConsensus,
        RoutingError,
        StreamInterrupted,
        Verdict,
    )

_LAZY = {
    "Attempt": "providers.execution",
    "RoutingError": "providers.execution",
    "NoConsensus": "providers.execution",
    "InvalidOutput": "providers.execution",
    "StreamInterrupted": "providers.execution",
    "BudgetExceeded": "providers.execution",
    "Event": "providers.execution",
    "Executor": "providers.execution",
    "Completion": "providers.execution",
    "CompletionStream": "providers.execution",
    "AsyncCompletionStream": "providers.execution",
    "Verdict": "providers.execution",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'providers' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "KNOWN_FEATURES",
    "PROVIDER_KINDS",
    "STANDARD_CAPABILITIES",
    "AsyncCompletionStream",
    "Attempt",
    "BudgetExceeded",
    "Catalog",
    "CatalogError",
    "CatalogIssue",
    "Completion",
    "CompletionStream",
    "Event",
    "Executor",
    "InvalidOutput",
    "ModelSpec",
    "NoConsensus",
    "ProviderSpec",
    "RoutingError",
    "SourceRef",
    "StreamInterrupted",
    "Verdict",
    "default_catalog",
    "default_catalog_path",
    "default_provider_kind",
    "load_catalog",
]
