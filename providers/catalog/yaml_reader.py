"""Catalog schema check: the text of a catalog file in, a checked `Catalog` out, or a `CatalogError` listing
every problem with its line, column, key path and hint.

`CatalogReader` walks the `providers:` and `models:` sections on top of `NodeReader`'s node parsers
(`providers.catalog.nodes`); the `providers:` section's settings are `ProviderReader`'s
(`providers.catalog.provider_fields`), the values of a model's price, service tiers, capabilities and features are
`ModelValueReader`'s (`providers.catalog.model_values`). The LiteLLM overlay reader extends it. The format itself
is described in `providers.catalog.models`; `providers.catalog.loader`'s `load_catalog()` reads the file and calls
`read_catalog()`.
"""

import difflib
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode

from providers.catalog.issues import CatalogError, CatalogIssue, SourceRef
from providers.catalog.model_values import ModelValueReader
from providers.catalog.models import PROVIDER_KINDS, Catalog, ModelSpec, ProviderSpec
from providers.catalog.nodes import MERGE_TAG, NULL_TAG, compose, suggest
from providers.catalog.provider_fields import ProviderReader

__all__ = ["CatalogReader", "read_catalog"]


_TOP_FIELDS = ("providers", "models")
#: The fields of a model entry (catalog files and LiteLLM overlays alike).
MODEL_FIELDS = (
    "provider",
    "id",
    "aliases",
    "context",
    "max_output",
    "price",
    "latency_ms",
    "capabilities",
    "supports",
    "service_tiers",
    "deprecation_date",
)
_SYNONYMS = {
    "model": {
        "max_tokens": "max_output",
        "max_output_tokens": "max_output",
        "output_tokens": "max_output",
        "context_window": "context",
        "context_length": "context",
        "max_context": "context",
        "input_price": "price",
        "output_price": "price",
        "pricing": "price",
        "cost": "price",
        "prices": "price",
        "latency": "latency_ms",
        "ttft_ms": "latency_ms",
        "alias": "aliases",
        "model": "id",
        "model_id": "id",
        "capability": "capabilities",
        "scores": "capabilities",
        "features": "supports",
        "support": "supports",
        "deprecated": "deprecation_date",
        "deprecation": "deprecation_date",
        "sunset": "deprecation_date",
    },
    "top": {"model": "models", "provider": "providers"},
}
_REQUIRED_HINTS = {
    "provider": "add `provider: <name>`, e.g. `provider: openai`",
    "context": "add the context window in tokens, e.g. `context: 128k`",
    "price": "add `price: {input: <USD per 1M input tokens>, output: <USD per 1M output tokens>}`",
    "latency_ms": "add the typical latency in milliseconds, e.g. `latency_ms: 800`",
}


def read_catalog(file: str, text: str) -> Catalog:
    """Check the text of catalog file `file`; raises CatalogError listing every problem."""
    return CatalogReader(file, text).read()


class CatalogReader(ProviderReader, ModelValueReader):
    """Reads a catalog document: its `providers:` and `models:` sections, with every field checked."""

    def read(self) -> Catalog:
        try:
            root = compose(self.text)
        except yaml.MarkedYAMLError as exc:
            raise self.fail_syntax(exc) from None
        except yaml.YAMLError as exc:
            position = getattr(exc, "position", None)
            line, col = self.position(position) if isinstance(position, int) else (0, 0)
            reason = getattr(exc, "reason", None) or str(exc)
            raise CatalogError(
                [CatalogIssue(self.file, line, col, "", f"invalid YAML: {reason}", None)],
                sources={self.file: self.text},
            ) from None
        if root is None:
            raise CatalogError(
                [CatalogIssue(self.file, 1, 1, "", "the catalog file is empty", "add a `models:` section")],
                sources={self.file: self.text},
            )
        models, providers = self.document(root)
        if self.issues:
            raise self.fail()
        try:
            return Catalog(models, providers, (self.file,))
        except CatalogError as exc:  # pragma: no cover - the checks above report clashes first
            raise CatalogError(exc.issues, sources={self.file: self.text}) from None

    def document(self, root: Node) -> tuple[list[ModelSpec], list[ProviderSpec]]:
        if not isinstance(root, MappingNode):
            self.expected(root, "", "a mapping with `providers:` and `models:` sections")
            return [], []
        sections = {}
        for key, knode, vnode in self.pairs(root, "", "section"):
            if key in _TOP_FIELDS:
                sections[key] = vnode
            elif not key.startswith("x-"):
                hint = suggest(key, _TOP_FIELDS, _SYNONYMS["top"])
                if (
                    hint is None
                    and isinstance(vnode, MappingNode)
                    and any(isinstance(k, ScalarNode) and k.value == "provider" for k, _ in vnode.value)
                ):
                    hint = "this looks like a model; put it under `models:`"
                self.issue(
                    knode,
                    key,
                    f"unknown top-level section `{key}`",
                    hint or "a catalog has `providers:` and `models:` sections",
                )
        providers = self.providers(sections["providers"]) if "providers" in sections else []
        provider_names = {p.name for p in providers}
        if isinstance(sections.get("providers"), MappingNode):
            provider_names.update(
                k.value for k, _ in sections["providers"].value if isinstance(k, ScalarNode) and k.tag != MERGE_TAG
            )
        models = self.models(sections["models"], provider_names) if "models" in sections else []
        return models, providers

    # -- models --

    def models(self, node: Node, defined_providers: set[str]) -> list[ModelSpec]:
        if node.tag == NULL_TAG:
            return []
        if not isinstance(node, MappingNode):
            self.expected(
                node,
                "models",
                "a mapping from model name to its fields",
                "write each model as `name: {provider: ..., context: ..., price: ...}`",
            )
            return []
        entries: list[tuple[str, Node, dict[str, Any] | None]] = []
        repeats: list[tuple[str, Node, Node]] = []
        for name, knode, vnode in self.pairs(node, "models", "model name", repeats):
            if self.text_value(knode, f"models.{name}", "a model name") is not None:
                entries.append((name, knode, self.model_fields(name, knode, vnode, defined_providers)))
        for name, knode, vnode in repeats:  # already an error, but report what else is wrong with them
            self.model_fields(name, knode, vnode, defined_providers)
        self.check_aliases(entries)
        if self.issues:
            return []
        out = []
        for name, knode, fields in entries:
            if fields is None:  # pragma: no cover - a model without fields always has an issue
                continue
            try:
                out.append(ModelSpec(**fields))
            except ValidationError as exc:  # pragma: no cover - safety net; the checks above come first
                for err in exc.errors():
                    self.issue(knode, f"models.{name}." + ".".join(map(str, err["loc"])), err["msg"])
        return out

    def model_fields(self, name: str, knode: Node, node: Node, defined_providers: set[str]) -> dict[str, Any] | None:
        path = f"models.{name}"
        if not isinstance(node, MappingNode):
            self.expected(
                node,
                path,
                f"the fields of model `{name}` (a mapping)",
                "e.g. `{provider: openai, context: 128k, price: {input: 2.5, output: 10}, latency_ms: 800}`",
            )
            return None
        fields: dict[str, Any] = {
            "name": name,
            "id": name,
            "aliases": (),
            "source": SourceRef(self.file, knode.start_mark.line + 1, knode.start_mark.column + 1),
        }
        alias_nodes: list[tuple[str, Node, str]] = []
        max_output_node: Node | None = None
        seen: set[str] = set()
        for key, fnode, vnode in self.pairs(node, path, "field"):
            at = f"{path}.{key}"
            seen.add(key)
            if key == "provider":
                provider = self.text_value(vnode, at, "a provider name")
                if provider is not None:
                    self.check_provider_name(provider, vnode, at, defined_providers)
                    fields["provider"] = provider
            elif key == "id":
                fields["id"] = self.text_value(vnode, at, "the provider's model id")
            elif key == "aliases":
                if vnode.tag != NULL_TAG:
                    alias_nodes = self.names_list(vnode, at, "an alias", "aliases", "[sonnet]") or []
                    fields["aliases"] = tuple(dict.fromkeys(a for a, _, _ in alias_nodes))
            elif key == "context":
                fields["context"] = self.count(vnode, at, "a context window in tokens")
            elif key == "max_output":
                if vnode.tag != NULL_TAG:
                    max_output_node = vnode
                    fields["max_output"] = self.count(vnode, at, "a maximum output in tokens")
            elif key == "price":
                self.price(vnode, at, fields)
            elif key == "latency_ms":
                latency = self.number(vnode, at, "a latency in milliseconds", "e.g. `latency_ms: 800`")
                if latency is not None and latency < 0:
                    self.issue(vnode, at, f"latency_ms can't be negative, got {vnode.value}")
                fields["latency_ms"] = latency
            elif key == "capabilities":
                fields["capabilities"] = self.capabilities(vnode, at)
            elif key == "supports":
                fields["supports"] = self.supports(vnode, at)
            elif key == "service_tiers":
                fields["service_tiers"] = self.service_tiers(vnode, at)
            elif key == "deprecation_date":
                fields["deprecation_date"] = self.date(vnode, at)
            else:
                self.unknown_field(fnode, at, key, f"model `{name}`", MODEL_FIELDS, _SYNONYMS["model"])
        for required, hint in _REQUIRED_HINTS.items():
            if required not in seen:
                if required == "provider" and defined_providers:
                    hint += "; providers in this file: " + ", ".join(sorted(defined_providers))
                self.issue(
                    knode, f"{path}.{required}", f"model `{name}` is missing the required field `{required}`", hint
                )
        context, max_output = fields.get("context"), fields.get("max_output")
        if isinstance(context, int) and isinstance(max_output, int) and max_output > context:
            assert max_output_node is not None
            self.issue(
                max_output_node,
                f"{path}.max_output",
                f"max_output ({max_output:,} tokens) is larger than the context window ({context:,} tokens)",
                "the output has to fit in the context",
            )
        fields["_alias_nodes"] = alias_nodes
        return fields

    def check_provider_name(self, provider: str, node: Node, path: str, defined: set[str]) -> None:
        """An undefined provider is fine, unless it is a near miss of a defined one or of a kind."""
        if provider in defined or provider in PROVIDER_KINDS:
            return
        close = difflib.get_close_matches(provider, sorted(defined | set(PROVIDER_KINDS)), n=1, cutoff=0.85)
        if close:
            self.issue(
                node,
                path,
                f"provider `{provider}` looks like a misspelling of `{close[0]}`",
                f"did you mean `{close[0]}`? (if `{provider}` is another provider, give it an entry "
                "under `providers:`)",
            )

    def check_aliases(self, entries: list[tuple[str, Node, dict[str, Any] | None]]) -> None:
        """Aliases must be unique and must not shadow any model name."""
        name_nodes = {name: knode for name, knode, _ in entries}
        owners: dict[str, tuple[str, Node]] = {}
        for name, _, fields in entries:
            if fields is None:
                continue
            listed: set[str] = set()
            for alias, anode, at in fields.pop("_alias_nodes"):
                if alias == name:
                    self.issue(anode, at, f"alias `{alias}` is the model's own name", "remove it")
                elif alias in listed:
                    self.issue(anode, at, f"alias `{alias}` is listed twice", "remove one")
                elif alias in name_nodes:
                    line = name_nodes[alias].start_mark.line + 1
                    self.issue(
                        anode,
                        at,
                        f"alias `{alias}` of model `{name}` clashes with the model `{alias}` (line {line})",
                        "an alias must differ from every model name; rename or remove it",
                    )
                elif alias in owners and owners[alias][0] != name:
                    owner, onode = owners[alias]
                    self.issue(
                        anode,
                        at,
                        f"alias `{alias}` is already an alias of model `{owner}` (line {onode.start_mark.line + 1})",
                        "an alias can point to one model only",
                    )
                else:
                    owners[alias] = (name, anode)
                listed.add(alias)
