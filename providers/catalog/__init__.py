"""The model catalog: YAML files (ours, or LiteLLM's price list) in, an immutable `Catalog` out."""

from providers.catalog.issues import CatalogError, CatalogIssue, SourceRef
from providers.catalog.loader import load_catalog
from providers.catalog.models import (
    KNOWN_FEATURES,
    PROVIDER_KINDS,
    STANDARD_CAPABILITIES,
    Catalog,
    Feature,
    ModelSpec,
    ProviderKind,
    ProviderSpec,
    default_catalog,
    default_catalog_path,
    default_provider_kind,
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
