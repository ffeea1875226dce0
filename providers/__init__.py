"""Model providers: the model catalog (`providers.catalog`) and, in submodules, the HTTP clients.

Importing this package loads only the catalog (pydantic + PyYAML), never httpx, so the decision core can
depend on it and stay pure.
"""

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
]
