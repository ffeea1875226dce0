"""Model field values check: the YAML nodes of a model's `price`, `service_tiers`, `capabilities` and `supports`
fields in, checked values out (prices per token, price multipliers, capability scores, features), with an issue
for every unusable one.

`ModelValueReader` is one part of `providers.catalog.yaml_reader.CatalogReader` (which the LiteLLM overlay reader
extends), on top of `NodeReader`'s node parsers (`providers.catalog.nodes`).
"""

import difflib
import re
from typing import Any

from yaml.nodes import MappingNode, Node

from providers.catalog.models import KNOWN_FEATURES, PER_MILLION, STANDARD_CAPABILITIES
from providers.catalog.nodes import NULL_TAG, NodeReader

__all__ = ["ModelValueReader"]


_PRICE_FIELDS = ("input", "output")
_PRICE_SYNONYMS = {"in": "input", "prompt": "input", "out": "output", "completion": "output"}
_CAPABILITY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ModelValueReader(NodeReader):
    """Reads the values of a model's price, service tier, capability and feature fields."""

    def price(self, node: Node, path: str, fields: dict[str, Any]) -> None:
        if not isinstance(node, MappingNode):
            self.expected(node, path, "a mapping like {input: 3.00, output: 15.00} (USD per 1M tokens)")
            return
        found = set()
        for key, knode, vnode in self.pairs(node, path, "field"):
            at = f"{path}.{key}"
            if key not in _PRICE_FIELDS:
                self.unknown_field(knode, at, key, "price", _PRICE_FIELDS, _PRICE_SYNONYMS)
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
