"""Gateway keys file format: a keys file's bytes (YAML or JSON) in, its checked GatewayKeys (name, digest, bound
attributes, daily budget, allowed policies and models, expiry, rpm / tpm) or a KeysFileError naming `file:line` and
the problem out. Keys are stored as sha256 hex digests, never in clear; the fields are described in
providers/gateway/keys.py, which follows the file for the gateway."""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from providers.catalog.nodes import compose_data, duplicate_key, error_line
from providers.gateway.keyfields import model_names, parse_expires, per_minute
from providers.gateway.openai_wire import RESERVED_ATTRS, reserved

__all__ = ["GatewayKey", "KeysFileError", "hash_key", "keys_from", "new_key", "parse_keys"]

_HEX = re.compile(r"^[0-9a-f]{64}$")
_FIELDS = ("name", "sha256", "attributes", "daily_budget", "policies", "models", "expires", "rpm", "tpm", "created")


class KeysFileError(ValueError):
    """The keys file is missing, unreadable or malformed (the message says where: `file:line: ...`)."""


def hash_key(key: str) -> str:
    """The sha256 hex digest of a gateway key, as the keys file stores it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh random gateway key (`mr-` + 43 URL-safe characters, 256 bits)."""
    return "mr-" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class GatewayKey:
    name: str
    digest: str = field(repr=False)
    attributes: Mapping[str, Any] = field(default_factory=dict)
    daily_budget: float | None = None
    policies: frozenset[str] | None = None  # the policies it may use (`auto` and named ones); None: all of them
    models: frozenset[str] | None = None  # the models its plan may keep (keyfields.allowed_plan); None: all of them
    expires: float | None = None  # Unix time from which it is refused (401 key_expired); None: never
    rpm: int | None = None  # requests per minute (enforced by providers/gateway/ratelimits.py)
    tpm: int | None = None  # tokens per minute (likewise)
    created: str | None = None  # when `keys add` made it (informational)


# ---- reading a keys file: text in, keys or a KeysFileError naming file:line out -----------------------------


class _Lines:
    """Line numbers (1-based) of the parts of a composed YAML document, for error messages; None where unknown."""

    def __init__(self, root: Any):
        items = root
        if isinstance(root, MappingNode):
            items = next((v for k, v in root.value if isinstance(k, ScalarNode) and k.value == "keys"), root)
        self.root = items.start_mark.line + 1 if items is not None else None  # where the `keys:` list should be
        self.items: list[tuple[int, dict[str, int]]] = []
        if isinstance(items, SequenceNode):
            for node in items.value:
                fields = {}
                if isinstance(node, MappingNode):
                    fields = {str(k.value): v.start_mark.line + 1 for k, v in node.value if isinstance(k, ScalarNode)}
                self.items.append((node.start_mark.line + 1, fields))

    def item(self, i: int, name: str | None = None) -> int | None:
        if i >= len(self.items):
            return None
        line, fields = self.items[i]
        return fields.get(name, line) if name else line


def _yaml_error(exc: yaml.YAMLError, where: str, text: str) -> KeysFileError:
    line = error_line(exc, text)
    problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    at = f"{where}:{line}" if line else where
    return KeysFileError(f"{at}: not valid YAML: {problem}" + (f" ({context})" if context else ""))


def _parse(raw: bytes, where: str, json_file: bool) -> list[GatewayKey]:
    """The keys of a keys file's bytes, checked; raises KeysFileError naming `where:line` and the problem."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise KeysFileError(f"{where}:{line}: not UTF-8 text (byte {exc.start})") from None
    root = None
    if json_file:
        try:
            data = json.loads(text)
        except RecursionError:
            raise KeysFileError(f"{where}: not valid JSON: nested too deeply") from None
        except ValueError as exc:
            json_line: int | None = getattr(exc, "lineno", None)
            msg = getattr(exc, "msg", None) or str(exc).splitlines()[0]
            raise KeysFileError(
                f"{where}:{json_line}: not valid JSON: {msg}" if json_line else f"{where}: not valid JSON: {msg}"
            ) from None
        try:  # JSON is (nearly always) YAML too: compose it for line numbers and duplicate names, best effort
            root = compose_data(text)[1]
        except yaml.YAMLError:
            root = None
    else:
        try:
            data, root = compose_data(text)
        except yaml.YAMLError as exc:
            raise _yaml_error(exc, where, text) from None
        except ValueError as exc:  # a scalar YAML types but cannot build: a date like 2026-13-01
            raise KeysFileError(f"{where}: not valid YAML: {exc} (quote a value that is not meant as a date)") from None
    if root is not None:
        dup = duplicate_key(root)
        if dup is not None:
            raise KeysFileError(f"{where}:{dup[0]}: `{dup[1]}` is given twice in the same mapping")
    return keys_from(data, where, _Lines(root))


def parse_keys(raw: bytes, where: str, json_file: bool = False) -> list[GatewayKey]:
    """The keys of a keys file's content (`json_file`: read as JSON), checked exactly as the gateway checks them;
    raises KeysFileError naming `where:line` and the problem."""
    return _parse(raw, where, json_file)


def keys_from(data: Any, where: str, lines: _Lines | None = None) -> list[GatewayKey]:
    """The keys of already-parsed keys-file data (a mapping with `keys:`, or the list itself), checked; raises
    KeysFileError naming `where` (and the line, when `lines` knows it)."""
    items = data.get("keys") if isinstance(data, Mapping) else data
    if not isinstance(items, list):
        line = lines.root if lines is not None else None
        raise KeysFileError(
            f"{where}:{line or 1}: expected a `keys:` list" + (" (the file is empty)" if data is None else "")
        )
    keys: list[GatewayKey] = []
    digests: dict[str, int] = {}
    names: dict[str, int] = {}

    def fail(i: int, item: Any, what: str, name: str | None = None) -> KeysFileError:
        line = lines.item(i, name) if lines is not None else None
        label = f" ({item.get('name')})" if isinstance(item, Mapping) and item.get("name") else ""
        return KeysFileError(
            f"{where}:{line}: keys[{i}]{label}: {what}" if line else f"{where}: keys[{i}]{label}: {what}"
        )

    def first(j: int) -> str:
        line = lines.item(j) if lines is not None else None
        return f"keys[{j}]" + (f", line {line}" if line else "")

    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise fail(i, item, "expected a mapping with name and sha256")
        unknown = set(item) - set(_FIELDS)
        if unknown:
            bad = sorted(map(str, unknown))
            raise fail(i, item, f"unknown field(s) {', '.join(bad)} (allowed: {', '.join(_FIELDS)})", bad[0])
        digest = str(item.get("sha256", "")).strip().lower().removeprefix("sha256:")
        if not _HEX.match(digest):
            raise fail(i, item, "sha256 must be 64 hex digits (the key's digest, not the key itself)", "sha256")
        if digest in digests:
            raise fail(i, item, f"duplicate sha256 (the same key as {first(digests[digest])})", "sha256")
        digests[digest] = i
        name = str(item.get("name") or f"key{i}")
        if name in names:
            raise fail(i, item, f"duplicate name {name!r} (also {first(names[name])})", "name")
        names[name] = i
        attrs = item.get("attributes") or {}
        if not isinstance(attrs, Mapping):
            raise fail(i, item, "attributes must be a mapping", "attributes")
        for attr in attrs:
            if not isinstance(attr, str) or reserved(attr):
                raise fail(
                    i,
                    item,
                    f"attributes: `{attr}` cannot be bound to a key (reserved: {', '.join(RESERVED_ATTRS)} and "
                    "names under them)",
                    "attributes",
                )
        odd = _not_json(attrs)
        if odd is not None:
            raise fail(i, item, f"attributes: {odd}", "attributes")
        policies = item.get("policies")
        if policies is not None:
            if not (
                isinstance(policies, list) and policies and all(isinstance(p, str) and p.strip() for p in policies)
            ):
                raise fail(i, item, "policies must be a non-empty list of policy names, like [auto, cheap]", "policies")
            policies = frozenset(p.strip() for p in policies)
        budget = item.get("daily_budget")
        if budget is not None:
            try:
                budget = float(str(budget).lstrip("$"))
            except ValueError:
                raise fail(i, item, "daily_budget must be a number of USD", "daily_budget") from None
            if not budget >= 0:
                raise fail(i, item, "daily_budget must not be negative", "daily_budget")
        extra: dict[str, Any] = {}
        for fname, read, prefix in (("models", model_names, ""), ("expires", parse_expires, "expires: ")):
            if item.get(fname) is not None:
                try:
                    extra[fname] = read(item[fname])
                except ValueError as exc:
                    raise fail(i, item, f"{prefix}{exc}", fname) from None
        for fname in ("rpm", "tpm"):
            if item.get(fname) is not None:
                try:
                    extra[fname] = per_minute(item[fname], fname)
                except ValueError as exc:
                    raise fail(i, item, str(exc), fname) from None
        if item.get("created") is not None:
            extra["created"] = str(item["created"])
        keys.append(GatewayKey(name, digest, dict(attrs), budget, policies, **extra))
    return keys


def _not_json(value: Any) -> str | None:
    """Why a bound attribute value is not plain JSON data (a YAML date, a set, NaN, a key that is not a string),
    or None. Each distinct object once: YAML aliases share objects (and may form cycles)."""
    seen: set[int] = set()
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, (str, bool, int, type(None))):
            continue
        if isinstance(node, float):
            if not math.isfinite(node):
                return "NaN and infinite numbers are not allowed"
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, Mapping):
            if not all(isinstance(k, str) for k in node):
                return "mapping keys must be strings"
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        else:
            return f"{type(node).__name__} values are not allowed (quote a date to make it a string)"
    return None
