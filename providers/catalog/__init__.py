"""The model catalog: YAML files (ours, or LiteLLM's price list) in, an immutable `Catalog` out."""

from providers.catalog.models import (
    KNOWN_FEATURES,
    PROVIDER_KINDS,
    STANDARD_CAPABILITIES,
    Catalog,
    CatalogError,
    CatalogIssue,
    Feature,
    ModelSpec,
    ProviderKind,
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
    "Feature",
    "ModelSpec",
    "ProviderKind",
    "ProviderSpec",
    "SourceRef",
    "default_catalog",
    "default_catalog_path",
    "default_provider_kind",
    "load_catalog",
]
