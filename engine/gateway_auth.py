"""Gateway keys: a YAML/JSON keys file in, a KeyRing that turns a presented bearer key into a GatewayKey (name,
bound request attributes, daily budget) or None out. Keys are stored as sha256 hex digests, never in clear.

    keys:
      - name: team-a                       # shown in logs and metrics, and passed as the `key` attribute
        sha256: 9f86d081884c7d659a2f...     # `modelroute serve --hash-key` prints one
        attributes: {tier: pro, team: a}   # bound: they override whatever the request says
        daily_budget: 5.00                 # USD per UTC day for this key (optional)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HEX = re.compile(r"^[0-9a-f]{64}$")


class KeysFileError(ValueError):
    """The keys file is missing, unreadable or malformed (the message says where)."""


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


class KeyRing:
    """Looks presented keys up by their digest; `KeyRing([])` accepts nothing, `None` (no keys file) means an
    open gateway, decided by the caller."""

    def __init__(self, keys: list[GatewayKey]):
        self._by_digest = {k.digest: k for k in keys}
        self.keys = keys

    def __len__(self) -> int:
        return len(self._by_digest)

    def check(self, presented: str | None) -> GatewayKey | None:
        """The key whose digest matches `presented`, or None."""
        if not presented:
            return None
        digest = hash_key(presented)
        found = self._by_digest.get(digest)
        # constant-time confirmation (the dict lookup is on a digest, so it leaks nothing useful either way)
        return found if found is not None and hmac.compare_digest(found.digest, digest) else None

    @classmethod
    def load(cls, path: str | Path) -> KeyRing:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise KeysFileError(f"{path}: cannot read keys file: {exc.strerror or exc}") from None
        import yaml

        kind = "JSON" if path.suffix == ".json" else "YAML"
        try:
            data = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise KeysFileError(f"{path}: not valid {kind}: {str(exc).splitlines()[0]}") from None
        return cls.from_data(data, str(path))

    @classmethod
    def from_data(cls, data: Any, where: str = "<keys>") -> KeyRing:
        items = data.get("keys") if isinstance(data, Mapping) else data
        if not isinstance(items, list):
            raise KeysFileError(f"{where}: expected a `keys:` list")
        keys: list[GatewayKey] = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            at = f"{where}: keys[{i}]"
            if not isinstance(item, Mapping):
                raise KeysFileError(f"{at}: expected a mapping with name and sha256")
            unknown = set(item) - {"name", "sha256", "attributes", "daily_budget"}
            if unknown:
                raise KeysFileError(f"{at}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
            digest = str(item.get("sha256", "")).strip().lower().removeprefix("sha256:")
            if not _HEX.match(digest):
                raise KeysFileError(f"{at}: sha256 must be 64 hex digits (the key's digest, not the key itself)")
            if digest in seen:
                raise KeysFileError(f"{at}: duplicate sha256")
            seen.add(digest)
            attrs = item.get("attributes") or {}
            if not isinstance(attrs, Mapping):
                raise KeysFileError(f"{at}: attributes must be a mapping")
            budget = item.get("daily_budget")
            if budget is not None:
                try:
                    budget = float(str(budget).lstrip("$"))
                except ValueError:
                    raise KeysFileError(f"{at}: daily_budget must be a number of USD") from None
                if budget < 0:
                    raise KeysFileError(f"{at}: daily_budget must not be negative")
            keys.append(GatewayKey(str(item.get("name") or f"key{i}"), digest, dict(attrs), budget))
        return cls(keys)


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer ...` header."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
