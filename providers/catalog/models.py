"""Catalog types: model and provider settings (from a checked YAML catalog file, or made in Python) in, an
immutable `Catalog` of `ModelSpec`s and `ProviderSpec`s with alias lookup out; `default_catalog()` is the bundled one.

The YAML format::

    providers:                  # optional; settings for the HTTP clients
      anthropic: {kind: anthropic, base_url: "https://api.anthropic.com", api_key_env: ANTHROPIC_API_KEY}
      azure: {kind: azure, base_url: "https://RESOURCE.openai.azure.com", api_key_env: AZURE_API_KEY,
              api_version: "2024-10-21"}     # a model's `id` is its deployment name
    models:
      claude-3-5-sonnet:
        provider: anthropic
        id: claude-3-5-sonnet-20241022        # provider's model id; defaults to the name
        aliases: [sonnet]
        context: 200k                          # int, or a string with a k / M suffix
        max_output: 8k                         # optional
        price: {input: 3.00, output: 15.00}    # USD per 1M tokens (stored per token)
        latency_ms: 1500
        capabilities: {REASONING: 9, CODING: 10}   # open set of names, scores 1-10
        supports: [tools, vision, json]        # known: tools, vision, json, json_schema, streaming, embeddings,
                                               # audio (input_audio parts), files (PDF file parts)
        service_tiers: {flex: 0.5, priority: 2.0}   # optional: price multiplier per OpenAI service_tier
        deprecation_date: 2025-10-22           # optional

Required model fields: provider, context, price, latency_ms. Capability names are case-insensitive and
stored upper-case. Top-level keys starting with `x-` are ignored (a place for YAML anchors), and YAML merge
keys (`<<: *defaults`) work. This module holds the types; `providers.catalog.loader` reads a catalog file
(`load_catalog()`), the YAML checks live in `providers.catalog.yaml_reader` (sections and fields),
`providers.catalog.provider_fields` (the `providers:` section), `providers.catalog.model_values` (model field
values) and `providers.catalog.nodes` (node parsers), and `providers.catalog.issues` holds `CatalogError`. All of
them are pure: no network, no httpx.
"""

import atexit
import datetime
import functools
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from providers.catalog.issues import CatalogError, CatalogIssue, SourceRef
from providers.catalog.loader import load_catalog

__all__ = [
    "KNOWN_FEATURES",
    "PROVIDER_KINDS",
    "STANDARD_CAPABILITIES",
    "Catalog",
    "Feature",
    "ModelSpec",
    "ProviderKind",
    "ProviderSpec",
    "default_catalog",
    "default_catalog_path",
    "default_provider_kind",
]

# the wire formats a provider can speak (each has its client in providers.clients) and the features a model can
# list in `supports`: defined here once, everything else imports them
ProviderKind = Literal["openai", "anthropic", "gemini", "azure"]
PROVIDER_KINDS: tuple[ProviderKind, ...] = get_args(ProviderKind)
Feature = Literal["tools", "vision", "json", "json_schema", "streaming", "embeddings", "audio", "files"]
KNOWN_FEATURES: tuple[Feature, ...] = get_args(Feature)
STANDARD_CAPABILITIES: tuple[str, ...] = (
    "REASONING",
    "CODING",
    "CREATIVITY",
    "SPEED",
    "CONTEXT",
    "COST",
    "VISION",
    "TOOLS",
)
PER_MILLION = 1_000_000


# ---- specs -----------------------------------------------------------------------------------------------


def default_provider_kind(name: str) -> ProviderKind:
    """The API kind of a provider without an explicit `kind`: its own name if that is a kind, else openai."""
    return next((kind for kind in PROVIDER_KINDS if kind == name), "openai")


class ProviderSpec(BaseModel):
    """How to reach one provider's API (used by the HTTP clients, not by the decision core)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    kind: ProviderKind
    base_url: str | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    headers: dict[str, str] = {}
    # kind azure: the `api-version` query parameter of deployment URLs (None: the client's default, see
    # providers/clients/azure.py); the v1 form (a base_url ending in /openai/v1) sends none unless it is set
    api_version: str | None = None
    # the largest answer (a body, or a stream in total) accepted from this provider, in bytes; None: the process
    # default (32 MiB, `modelroute serve --max-response-bytes`). Past it: ResponseTooLarge, the next model is tried
    max_response_bytes: int | None = Field(default=None, gt=0)

    def __hash__(self) -> int:
        return hash(
            (
                self.name,
                self.kind,
                self.base_url,
                self.api_key_env,
                self.timeout_s,
                tuple(sorted(self.headers.items())),
                self.max_response_bytes,
                self.api_version,
            )
        )

    @classmethod
    def default_for(cls, name: str) -> "ProviderSpec":
        """Settings for a provider with no `providers:` entry: default kind, no URL, no key."""
        return cls(name=name, kind=default_provider_kind(name))


Score = Annotated[float, Field(ge=1, le=10)]


class ModelSpec(BaseModel):
    """One model the router can pick. Prices are USD per token; the YAML gives them per 1M tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    provider: str = Field(min_length=1)
    id: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    context: int = Field(gt=0)
    max_output: int | None = Field(default=None, gt=0)
    input_price: float = Field(ge=0)
    output_price: float = Field(ge=0)
    latency_ms: float = Field(ge=0)
    capabilities: dict[str, Score] = {}
    supports: frozenset[str] = frozenset()
    service_tiers: dict[str, float] = {}
    deprecation_date: datetime.date | None = None
    source: SourceRef | None = None

    def __hash__(self) -> int:  # capabilities is a dict, so hash the identifying fields only
        return hash((self.name, self.provider, self.id, self.context, self.input_price, self.output_price))

    def tier_factor(self, tier: str | None) -> float:
        """The price multiplier of an OpenAI `service_tier` (1 without a tier or without `service_tiers`); a tier
        the catalog does not list is priced at the highest listed multiplier (a hold must be a bound)."""
        tiers = self.service_tiers
        if not tiers or tier is None:
            return 1.0
        found = tiers.get(tier)
        return float(found) if found is not None else float(max(tiers.values()))

    def capability(self, name: str) -> float | None:
        """The model's score (1-10) for a capability, or None if unscored; the name is case-insensitive."""
        score = self.capabilities.get(name)
        return self.capabilities.get(name.upper()) if score is None else score


# ---- the catalog -----------------------------------------------------------------------------------------


class Catalog:
    """An immutable set of models and provider settings, with alias lookup.

    `models` keeps definition order; `aliases` maps each alias to its model's canonical name. Names and
    aliases are unique across the catalog: the constructor raises `CatalogError` on a clash."""

    __slots__ = ("_capability_names", "aliases", "files", "models", "providers")

    models: Mapping[str, ModelSpec]
    providers: Mapping[str, ProviderSpec]
    aliases: Mapping[str, str]
    files: tuple[str, ...]
    _capability_names: frozenset[str] | None  # computed on first use

    def __init__(
        self,
        models: Iterable[ModelSpec] = (),
        providers: Iterable[ProviderSpec] | Mapping[str, ProviderSpec] = (),
        files: Iterable[str] = (),
    ) -> None:
        file_names = tuple(files)
        by_name: dict[str, ModelSpec] = {}
        issues: list[CatalogIssue] = []
        for spec in models:
            if spec.name in by_name:
                issues.append(
                    _spec_issue(
                        spec, file_names, f"duplicate model name `{spec.name}`", "each model name may be defined once"
                    )
                )
            else:
                by_name[spec.name] = spec
        aliases: dict[str, str] = {}
        for spec in by_name.values():
            for alias in spec.aliases:
                owner = aliases.get(alias)
                if alias in by_name:
                    issues.append(
                        _spec_issue(
                            spec,
                            file_names,
                            f"alias `{alias}` of model `{spec.name}` is also a model name",
                            "aliases must differ from every model name",
                        )
                    )
                elif owner is not None and owner != spec.name:
                    issues.append(
                        _spec_issue(
                            spec,
                            file_names,
                            f"alias `{alias}` is used by both `{owner}` and `{spec.name}`",
                            "aliases must be unique",
                        )
                    )
                else:
                    aliases[alias] = spec.name
        if issues:
            raise CatalogError(issues)
        if isinstance(providers, Mapping):
            providers = providers.values()
        set_ = object.__setattr__
        set_(self, "models", MappingProxyType(by_name))
        set_(self, "providers", MappingProxyType({p.name: p for p in providers}))
        set_(self, "aliases", MappingProxyType(aliases))
        set_(self, "files", file_names)
        set_(self, "_capability_names", None)

    @classmethod
    def from_models(
        cls,
        models: Iterable[ModelSpec],
        providers: Iterable[ProviderSpec] | Mapping[str, ProviderSpec] = (),
        files: Iterable[str] = (),
    ) -> "Catalog":
        """Build a catalog from specs made in Python (e.g. by an importer); raises CatalogError on clashes."""
        return cls(models, providers, files)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Catalog is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Catalog is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (Catalog, (tuple(self.models.values()), tuple(self.providers.values()), self.files))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Catalog):
            return NotImplemented
        return (
            list(self.models.items()) == list(other.models.items())
            and dict(self.providers) == dict(other.providers)
            and self.files == other.files
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        files = ", ".join(self.files) or "no file"
        return f"<Catalog {len(self.models)} models, {len(self.providers)} providers from {files}>"

    def __len__(self) -> int:
        return len(self.models)

    def __contains__(self, name: object) -> bool:
        return name in self.models or name in self.aliases

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self.models.values())

    def resolve(self, name: str) -> ModelSpec | None:
        """The model with this canonical name or alias, or None."""
        spec = self.models.get(name)
        if spec is None:
            canonical = self.aliases.get(name)
            if canonical is not None:
                spec = self.models[canonical]
        return spec

    def names(self) -> list[str]:
        """Every canonical name, then every alias (candidates for "did you mean")."""
        return [*self.models, *self.aliases]

    def capability_names(self) -> frozenset[str]:
        """Every capability scored by at least one model."""
        names = self._capability_names
        if names is None:
            names = frozenset(c for spec in self.models.values() for c in spec.capabilities)
            object.__setattr__(self, "_capability_names", names)
        return names

    def provider_spec(self, provider: str) -> ProviderSpec:
        """The settings for a provider: its `providers:` entry, or the defaults when it has none."""
        spec = self.providers.get(provider)
        return spec if spec is not None else ProviderSpec.default_for(provider)

    def merged(self, other: "Catalog") -> "Catalog":
        """This catalog overlaid with `other`: other's models and providers replace same-named entries
        (whole entries, aliases included) and add new ones. A name or alias that `other` defines always
        wins: this catalog's aliases that clash with it are dropped, and so is a model of this catalog
        whose name `other` uses as an alias. Never raises."""
        taken = set(other.models).union(other.aliases)
        models: dict[str, ModelSpec] = {}
        for name, spec in self.models.items():
            if name in other.models:
                models[name] = other.models[name]
            elif name not in taken:
                kept = tuple(a for a in spec.aliases if a not in taken)
                if kept != spec.aliases:
                    spec = spec.model_copy(update={"aliases": kept})
                models[name] = spec
        for name, spec in other.models.items():
            models.setdefault(name, spec)
        providers = {**self.providers, **other.providers}
        return Catalog(models.values(), providers, dict.fromkeys((*self.files, *other.files)))


def _spec_issue(spec: ModelSpec, files: tuple[str, ...], message: str, hint: str | None) -> CatalogIssue:
    if spec.source is not None:
        return CatalogIssue(spec.source.file, spec.source.line, spec.source.col, f"models.{spec.name}", message, hint)
    return CatalogIssue(files[0] if files else "<catalog>", 0, 0, f"models.{spec.name}", message, hint)


# ---- the bundled catalog ---------------------------------------------------------------------------------

_RESOURCE_FILES = ExitStack()
atexit.register(_RESOURCE_FILES.close)


@functools.cache
def default_catalog_path() -> Path:
    """The bundled `providers/catalog.yaml`, from a checkout or an installed package."""
    ref = resources.files(__package__ or "providers").joinpath("catalog.yaml")
    if isinstance(ref, Path):
        return ref
    # Installed as a zip: extract to a temporary file that lives until the interpreter exits.
    return Path(_RESOURCE_FILES.enter_context(resources.as_file(ref)))


@functools.cache
def default_catalog() -> Catalog:
    """The bundled catalog, loaded once per process (a Catalog is immutable, so sharing it is safe)."""
    return load_catalog(default_catalog_path())
