"""Provider settings check: the `providers:` section of a catalog (YAML nodes) in, checked `ProviderSpec`s out
(kind, base URL, API key variable, timeout, response size cap, headers, API version), with an issue for every
unusable field.

`ProviderReader` is one part of `providers.catalog.yaml_reader.CatalogReader`, on top of `NodeReader`'s node
parsers (`providers.catalog.nodes`).
"""

import re
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode

from providers.catalog.models import PROVIDER_KINDS, ProviderSpec, default_provider_kind
from providers.catalog.nodes import NULL_TAG, NodeReader, suggest

__all__ = ["ProviderReader"]


_PROVIDER_FIELDS = ("kind", "base_url", "api_key_env", "timeout_s", "max_response_bytes", "headers", "api_version")
_PROVIDER_SYNONYMS = {
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
}
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_URL_RE = re.compile(r"https?://[^\s/]+\S*")


class ProviderReader(NodeReader):
    """Reads a catalog's `providers:` section: each provider's settings, every field checked."""

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
                self.unknown_field(knode, at, key, f"provider `{name}`", _PROVIDER_FIELDS, _PROVIDER_SYNONYMS)
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
