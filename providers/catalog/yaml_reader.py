"""Catalog schema check: the text of a catalog file in, a checked `Catalog` out, or a `CatalogError` listing
every problem with its line, column, key path and hint.

`CatalogReader` walks the `providers:` and `models:` sections on top of `NodeReader`'s node parsers
(`providers.catalog.nodes`); the LiteLLM overlay reader extends it. The format itself is described in
`providers.catalog`, whose `load_catalog()` reads the file and calls `read_catalog()`.
"""

import difflib
import re
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode

from providers.catalog.models import (
    KNOWN_FEATURES,
    PER_MILLION,
    PROVIDER_KINDS,
    STANDARD_CAPABILITIES,
    Catalog,
    CatalogError,
    CatalogIssue,
    ModelSpec,
    ProviderSpec,
    SourceRef,
    default_provider_kind,
)
from providers.catalog.nodes import MERGE_TAG, NULL_TAG, NodeReader, compose, suggest

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
_PROVIDER_FIELDS = ("kind", "base_url", "api_key_env", "timeout_s", "max_response_bytes", "headers", "api_version")
_PRICE_FIELDS = ("input", "output")
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
    "provider": {
        "type": "kind",
        "api": "kind",
        "url": "base_url",
        "endpoint": "base_url",
        "api_base": "base_url",
        "api_key": "api_key_env",
        "key_env": "api_key_env",
        "env": "api_key_env",
        "timeout": "timeout_s",
        "header": "headers",
        "version": "api_version",
        "api-version": "api_version",
    },
    "price": {"in": "input", "prompt": "input", "out": "output", "completion": "output"},
    "top": {"model": "models", "provider": "providers"},
}
_REQUIRED_HINTS = {
    "provider": "add `provider: <name>`, e.g. `provider: openai`",
    "context": "add the context window in tokens, e.g. `context: 128k`",
    "price": "add `price: {input: <USD per 1M input tokens>, output: <USD per 1M output tokens>}`",
    "latency_ms": "add the typical latency in milliseconds, e.g. `latency_ms: 800`",
}
_CAPABILITY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_URL_RE = re.compile(r"https?://[^\s/]+\S*")


def read_catalog(file: str, text: str) -> Catalog:
    """Check the text of catalog file `file`; raises CatalogError listing every problem."""
    return CatalogReader(file, text).read()


class CatalogReader(NodeReader):
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

    # -- providers --

    def providers(self, node: Node) -> list[ProviderSpec]:
        if node.tag == NULL_TAG:
            return []
        if not isinstance(node, MappingNode):
            self.expected(
                node,
                "providers",
                "a mapping from provider name to its settings",
                'e.g. `openai: {base_url: "https://api.openai.com/v1", api_key_env: OPENAI_API_KEY}`',
            )
            return []
        out = []
        for name, knode, vnode in self.pairs(node, "providers", "provider"):
            path = f"providers.{name}"
            if self.text_value(knode, path, "a provider name") is None:
                continue
            spec = self.provider(name, vnode, path)
            if spec is not None:
                out.append(spec)
        return out

    def provider(self, name: str, node: Node, path: str) -> ProviderSpec | None:
        fields: dict[str, Any] = {"name": name, "kind": default_provider_kind(name)}
        if node.tag == NULL_TAG:
            return ProviderSpec(**fields)
        if not isinstance(node, MappingNode):
            self.expected(
                node,
                path,
                f"the settings of provider `{name}` (a mapping)",
                'e.g. `{kind: openai, base_url: "https://...", api_key_env: MY_API_KEY}`',
            )
            return None
        before = len(self.issues)
        for key, knode, vnode in self.pairs(node, path, "field"):
            at = f"{path}.{key}"
            if key == "kind":
                kind = self.text_value(vnode, at, "a provider kind")
                if kind is not None and kind not in PROVIDER_KINDS:
                    self.issue(
                        vnode,
                        at,
                        f"unknown provider kind `{kind}`",
                        suggest(kind, PROVIDER_KINDS)
                        or "kinds: openai (any OpenAI-compatible chat completions API), anthropic, gemini, azure",
                    )
                elif kind is not None:
                    fields["kind"] = kind
            elif key == "base_url":
                if vnode.tag != NULL_TAG:
                    url = vnode.value if isinstance(vnode, ScalarNode) else None
                    if url is None or not _URL_RE.fullmatch(url):
                        self.expected(vnode, at, 'an http(s) URL like "https://api.openai.com/v1"')
                    else:
                        fields["base_url"] = url
            elif key == "api_key_env":
                if vnode.tag != NULL_TAG:
                    self.key_env(vnode, at, fields)
            elif key == "max_response_bytes":
                size = self.number(vnode, at, "a size in bytes", "e.g. `max_response_bytes: 33554432`")
                if size is not None and (size <= 0 or size != int(size)):
                    self.issue(
                        vnode,
                        at,
                        f"max_response_bytes must be a whole number of bytes greater than 0, got {vnode.value}",
                    )
                elif size is not None:
                    fields["max_response_bytes"] = int(size)
            elif key == "timeout_s":
                timeout = self.number(vnode, at, "a timeout in seconds", "e.g. `timeout_s: 60`")
                if timeout is not None and timeout <= 0:
                    self.issue(vnode, at, f"timeout_s must be greater than 0, got {vnode.value}")
                elif timeout is not None:
                    fields["timeout_s"] = timeout
            elif key == "headers":
                fields["headers"] = self.headers(vnode, at)
            elif key == "api_version":
                version = self.text_value(vnode, at, 'an API version like "2024-10-21"')
                if version is not None:
                    fields["api_version"] = version
            else:
                self.unknown_field(knode, at, key, f"provider `{name}`", _PROVIDER_FIELDS, _SYNONYMS["provider"])
        if fields["kind"] == "azure" and not fields.get("base_url") and len(self.issues) == before:
            self.issue(
                node,
                path,
                f"provider `{name}` of kind azure needs a base_url",
                'the resource endpoint, e.g. `base_url: "https://RESOURCE.openai.azure.com"` (deployment URLs with '
                'api-version) or `"https://RESOURCE.openai.azure.com/openai/v1"` (the v1 API)',
            )
        if len(self.issues) > before:
            return None
        return ProviderSpec(**fields)

    def key_env(self, node: Node, path: str, fields: dict[str, Any]) -> None:
        value = node.value if isinstance(node, ScalarNode) else None
        if isinstance(value, str) and _ENV_RE.fullmatch(value):
            fields["api_key_env"] = value
            return
        if isinstance(value, str) and (value.startswith(("sk-", "gsk_", "AIza")) or len(value) >= 30):
            self.secrets.append(value)  # never echo what may be a secret
            self.issue(
                node,
                path,
                "expected the name of an environment variable like OPENAI_API_KEY, "
                "got a value that looks like an API key",
                "`api_key_env` names the variable that holds the key; keep the key itself out of "
                "the catalog (and rotate it if this file was shared)",
            )
            return
        self.expected(node, path, "the name of an environment variable like OPENAI_API_KEY")

    def headers(self, node: Node, path: str) -> dict[str, str]:
        if node.tag == NULL_TAG:
            return {}
        if not isinstance(node, MappingNode):
            self.expected(
                node, path, "a mapping of HTTP header names to values", 'e.g. `{anthropic-version: "2023-06-01"}`'
            )
            return {}
        out = {}
        for key, knode, vnode in self.pairs(node, path, "header"):
            at = f"{path}.{key}"
            if not _HEADER_RE.fullmatch(key):
                self.issue(
                    knode, at, f"`{key}` is not a valid HTTP header name", "header names are letters, digits and `-`"
                )
            elif not isinstance(vnode, ScalarNode) or vnode.tag == NULL_TAG:
                self.expected(vnode, at, "a header value (text)")
            else:
                out[key] = vnode.value
        return out

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

    def price(self, node: Node, path: str, fields: dict[str, Any]) -> None:
        if not isinstance(node, MappingNode):
            self.expected(node, path, "a mapping like {input: 3.00, output: 15.00} (USD per 1M tokens)")
            return
        found = set()
        for key, knode, vnode in self.pairs(node, path, "field"):
            at = f"{path}.{key}"
            if key not in _PRICE_FIELDS:
                self.unknown_field(knode, at, key, "price", _PRICE_FIELDS, _SYNONYMS["price"])
                continue
            found.add(key)
            value = self.number(vnode, at, "a number of USD per 1M tokens")
            if value is not None and value < 0:
                self.issue(vnode, at, f"a price can't be negative, got {vnode.value}", "use 0 for a free model")
            elif value is not None:
                fields[f"{key}_price"] = value / PER_MILLION
        for missing in _PRICE_FIELDS:
            if missing not in found:
                self.issue(
                    node,
                    f"{path}.{missing}",
                    f"price is missing `{missing}`",
                    f"add `{missing}: <USD per 1M {missing} tokens>` (0 if free)",
                )

    def service_tiers(self, node: Node, path: str) -> dict[str, float]:
        """`{flex: 0.5, priority: 2.0}`: the price multiplier of each OpenAI `service_tier` (more than 0)."""
        if node.tag == NULL_TAG:
            return {}
        if not isinstance(node, MappingNode):
            self.expected(node, path, "a mapping of price multipliers like {flex: 0.5, priority: 2.0}")
            return {}
        out: dict[str, float] = {}
        for key, _, vnode in self.pairs(node, path, "service tier"):
            at = f"{path}.{key}"
            factor = self.number(vnode, at, "a price multiplier", "e.g. `priority: 2.0`")
            if factor is not None and factor <= 0:
                self.issue(vnode, at, f"a price multiplier must be more than 0, got {vnode.value}")
            elif factor is not None:
                out[key] = factor
        return out

    def capabilities(self, node: Node, path: str) -> dict[str, float]:
        if node.tag == NULL_TAG:
            return {}
        if not isinstance(node, MappingNode):
            self.expected(node, path, "a mapping of capability scores like {REASONING: 8, CODING: 9}")
            return {}
        out: dict[str, float] = {}
        for key, knode, vnode in self.pairs(node, path, "capability"):
            at = f"{path}.{key}"
            name = key.upper()
            if not _CAPABILITY_RE.fullmatch(key):
                self.issue(
                    knode, at, f"`{key}` is not a valid capability name", "use letters, digits and `_`, e.g. REASONING"
                )
                continue
            if name in out:
                self.issue(knode, at, f"capability `{name}` is listed twice", "names are case-insensitive")
                continue
            if name not in STANDARD_CAPABILITIES:
                close = difflib.get_close_matches(name, STANDARD_CAPABILITIES, n=1, cutoff=0.8)
                if close:
                    self.issue(knode, at, f"unknown capability `{key}`", f"did you mean `{close[0]}`?")
                    continue
            score = self.number(vnode, at, "a capability score from 1 to 10")
            if score is None:
                continue
            if not 1 <= score <= 10:
                hint = "scores run from 1 (weakest) to 10 (strongest)"
                if 20 <= score <= 100:
                    hint += f"; on a 1-100 scale, {vnode.value} would be {score / 10:g}"
                self.issue(vnode, at, f"capability score must be between 1 and 10, got {vnode.value}", hint)
                continue
            out[name] = score
        return out

    def supports(self, node: Node, path: str) -> frozenset[str]:
        if node.tag == NULL_TAG:
            return frozenset()
        items = self.names_list(node, path, "a feature", "features", "[tools, vision]") or []
        out = set()
        for feature, fnode, at in items:
            feature = feature.lower()
            if feature not in KNOWN_FEATURES:
                close = difflib.get_close_matches(feature, KNOWN_FEATURES, n=1, cutoff=0.75)
                if close:
                    self.issue(fnode, at, f"unknown feature `{feature}`", f"did you mean `{close[0]}`?")
                    continue
            out.add(feature)
        return frozenset(out)

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
