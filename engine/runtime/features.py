"""Feature names: the catalog's one list of known features (`KNOWN_FEATURES`) in, the names and maps the runtime
checks a request against out.

Every feature the engine names is taken from that list here (an import-time check fails on a name it lacks), so
renaming a feature in providers/catalog/models.py cannot leave a stale copy behind.
"""

from __future__ import annotations

from providers.catalog.models import KNOWN_FEATURES

__all__ = [
    "AUDIO",
    "EMBEDDINGS",
    "FEATURES",
    "FILES",
    "FORMAT_FEATURES",
    "JSON",
    "JSON_SCHEMA",
    "PART_FEATURES",
    "TOOLS",
    "VISION",
]

#: Every feature a catalog model may list in `supports`.
FEATURES: frozenset[str] = frozenset(KNOWN_FEATURES)


def _known(name: str) -> str:
    if name not in FEATURES:
        raise ImportError(f"feature {name!r} is not in the catalog's KNOWN_FEATURES")
    return name


TOOLS = _known("tools")
VISION = _known("vision")
JSON = _known("json")
JSON_SCHEMA = _known("json_schema")
EMBEDDINGS = _known("embeddings")  # an embedding model's feature (not the request's `endpoint`: see reserved.py)
AUDIO = _known("audio")
FILES = _known("files")

#: The catalog feature each value of the request attribute `response_format` needs.
FORMAT_FEATURES: dict[str, str] = {JSON_SCHEMA: JSON_SCHEMA, JSON: JSON}
#: The catalog feature a content part needs, by the part's wire `type` (dicts) or its read `type` (parts).
PART_FEATURES: dict[str, str] = {"input_audio": AUDIO, "file": FILES, "audio": AUDIO}
