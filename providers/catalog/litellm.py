"""LiteLLM import: LiteLLM's `model_prices_and_context_window.json` (plus an optional YAML overlay) in, a Catalog out.

What is imported, per entry of the JSON object:

- skipped: `sample_spec` (documentation), entries whose `mode` is not `chat` (embeddings, images, audio...),
  entries without a mode unless they have token prices, entries without a context window
  (`max_input_tokens`, else `max_tokens`) and entries without both token prices (an unpriced model would
  look free to `cheapest`). `import_litellm()` returns the counts with the catalog.
- `input_cost_per_token` / `output_cost_per_token` -> prices (already USD per token),
  `max_input_tokens` (fallback `max_tokens`) -> context, `max_output_tokens` -> max_output,
  `supports_function_calling` or `supports_tool_choice` -> tools, `supports_vision` -> vision,
  `supports_response_schema` -> json, `supports_audio_input` -> audio, `supports_pdf_input` -> files,
  `deprecation_date`, `litellm_provider` -> provider.
- names are kept as given (they may contain `/`; a policy writes them as strings: `use "openrouter/x/y"`).
- latency is unknown in LiteLLM's file: every model gets DEFAULT_LATENCY_MS unless the overlay says otherwise.

The overlay is YAML: ``models: {NAME: {capabilities: {...}, latency_ms: ..., aliases: [...], ...}}``; each
entry is merged field by field onto the imported model (any field of the modelroute catalog format may be
given). A name the JSON does not define is an error with a did-you-mean.
"""

from __future__ import annotations

import datetime
import difflib
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node

from providers.catalog.files import LARGE_FILE_BYTES, read_text
from providers.catalog.issues import CatalogError, CatalogIssue, SourceRef
from providers.catalog.loader import LOADED
from providers.catalog.models import Catalog, ModelSpec
from providers.catalog.nodes import compose
from providers.catalog.yaml_reader import MODEL_FIELDS, CatalogReader

__all__ = ["DEFAULT_LATENCY_MS", "ImportStats", "import_litellm", "load_litellm"]

#: Latency assumed for every imported model: LiteLLM's file has none. Set `latency_ms` in the overlay.
DEFAULT_LATENCY_MS = 1000.0

_FIRST_KEY = re.compile(r'\A\s*\{[ \t]*\r?\n([ \t]+)"')


@dataclass
class ImportStats:
    """What an import kept and skipped (for `modelroute catalog` and the docs)."""

    entries: int = 0
    imported: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def load_litellm(path: str | Path, overlay: str | Path | None = None) -> Catalog:
    """Import LiteLLM's price file (and merge an overlay); raises CatalogError with file:line:col. An import of the
    same files with the same content (a reload) gets the catalog imported before (about 65 ms for LiteLLM's 4,000
    entries): each file is read once, and the texts that are parsed are the texts that key the memo."""
    text = _read(Path(path))
    extra = None if overlay is None else _read(Path(overlay))
    key = (str(path), str(overlay), _sha(text), None if extra is None else _sha(extra))
    return LOADED.get(key, lambda: import_litellm(path, overlay, text=text, overlay_text=extra)[0])


def _sha(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def import_litellm(
    path: str | Path, overlay: str | Path | None = None, *, text: str | None = None, overlay_text: str | None = None
) -> tuple[Catalog, ImportStats]:
    """Import LiteLLM's price file and an overlay, read from disk unless their texts are given."""
    file = str(path)
    text = _read(Path(path)) if text is None else text
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(
            [
                CatalogIssue(
                    file,
                    exc.lineno,
                    exc.colno,
                    "",
                    f"invalid JSON: {exc.msg}",
                    "LiteLLM's file is one JSON object keyed by model name",
                )
            ],
            sources={file: text},
        ) from None
    if not isinstance(data, dict):
        raise CatalogError(
            [
                CatalogIssue(
                    file,
                    1,
                    1,
                    "",
                    f"expected a JSON object, got {type(data).__name__}",
                    "LiteLLM's file is one JSON object keyed by model name",
                )
            ],
            sources={file: text},
        )
    positions = _positions(text)
    stats = ImportStats(entries=len(data))
    specs: dict[str, dict[str, Any]] = {}
    for name, entry in data.items():
        fields = _fields(name, entry, stats)
        if fields is not None:
            line, col = positions.get(name, (0, 0))
            fields["source"] = SourceRef(file, line, col) if line else None
            specs[name] = fields
    files = [file]
    if overlay is not None:
        _apply_overlay(str(overlay), specs, overlay_text)
        files.append(str(overlay))
    models = [ModelSpec.model_construct(**f) if f.pop("_trusted", False) else ModelSpec(**f) for f in specs.values()]
    stats.imported = len(models)
    return Catalog(models, (), files), stats


def _read(path: Path) -> str:
    file = str(path)
    try:
        return read_text(path, LARGE_FILE_BYTES, "utf-8-sig")  # a regular file only, never a FIFO or a device
    except FileNotFoundError:
        raise CatalogError(
            [CatalogIssue(file, 0, 0, "", "catalog file not found", "paths are relative to the policy file")]
        ) from None
    except UnicodeDecodeError as exc:
        raise CatalogError([CatalogIssue(file, 0, 0, "", f"not UTF-8 text: {exc.reason}", None)]) from None
    except OSError as exc:
        raise CatalogError(
            [CatalogIssue(file, 0, 0, "", f"cannot read the catalog: {exc.strerror or exc}", None)]
        ) from None


def _positions(text: str) -> dict[str, tuple[int, int]]:
    """Line and column of each top-level key (the keys indented like the first one); {} for minified JSON."""
    first = _FIRST_KEY.search(text)
    if first is None:
        return {}
    indent = first.group(1)
    key_re = re.compile(r"\n" + re.escape(indent) + r'"((?:[^"\\\n]|\\.)*)"[ \t]*:[ \t]*\{')
    out: dict[str, tuple[int, int]] = {}
    line, last = 1, 0
    for m in key_re.finditer(text, first.start() - 1 if first.start() else 0):
        line += text.count("\n", last, m.start() + 1)
        last = m.start() + 1
        key = m.group(1)
        out.setdefault(json.loads(f'"{key}"') if "\\" in key else key, (line, len(indent) + 1))
    return out


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _tokens(value: Any) -> int | None:
    number = _num(value)
    return int(number) if number is not None and number >= 1 else None


def _fields(name: str, entry: Any, stats: ImportStats) -> dict[str, Any] | None:
    """ModelSpec fields for one LiteLLM entry, or None (counted in stats) when it is not a usable chat model."""
    if name == "sample_spec":
        stats.skip("sample_spec")
        return None
    if not isinstance(entry, dict) or not name.strip():
        stats.skip("not an object")
        return None
    mode = entry.get("mode")
    ip, op = _num(entry.get("input_cost_per_token")), _num(entry.get("output_cost_per_token"))
    if mode is not None and mode != "chat":
        stats.skip(f"mode {mode}" if isinstance(mode, str) and len(mode) < 40 else "other mode")
        return None
    if ip is None or op is None or ip < 0 or op < 0:
        stats.skip("no token prices")
        return None
    context = _tokens(entry.get("max_input_tokens")) or _tokens(entry.get("max_tokens"))
    if context is None:
        stats.skip("no context window")
        return None
    provider = entry.get("litellm_provider")
    supports = set()
    if entry.get("supports_function_calling") is True or entry.get("supports_tool_choice") is True:
        supports.add("tools")
    if entry.get("supports_vision") is True:
        supports.add("vision")
    if entry.get("supports_response_schema") is True:
        supports.add("json")
    if entry.get("supports_audio_input") is True:
        supports.add("audio")
    if entry.get("supports_pdf_input") is True:
        supports.add("files")
    deprecation = None
    raw_date = entry.get("deprecation_date")
    if isinstance(raw_date, str):
        try:
            deprecation = datetime.date.fromisoformat(raw_date.strip())
        except ValueError:
            deprecation = None
    return {
        "name": name,
        "id": name,
        "aliases": (),
        "provider": provider if isinstance(provider, str) and provider.strip() else "unknown",
        "context": context,
        "max_output": _tokens(entry.get("max_output_tokens")),
        "input_price": ip,
        "output_price": op,
        "latency_ms": DEFAULT_LATENCY_MS,
        "capabilities": {},
        "supports": frozenset(supports),
        "deprecation_date": deprecation,
        "_trusted": True,  # every value above was checked here: skip pydantic validation (4,000 entries)
    }


# ---- the overlay ------------------------------------------------------------------------------------------


class _OverlayReader(CatalogReader):
    """Reads the overlay with the catalog reader's field checks (same messages, positions and hints)."""

    def read_overlay(self, specs: dict[str, dict[str, Any]]) -> None:
        try:
            root = compose(self.text)
        except yaml.MarkedYAMLError as exc:
            raise self.fail_syntax(exc) from None
        if root is None:
            return
        if not isinstance(root, MappingNode):
            self.expected(root, "", "a mapping with a `models:` section")
            raise self.fail()
        for key, knode, vnode in self.pairs(root, "", "section"):
            if key == "models":
                self.overlay_models(vnode, specs)
            elif not key.startswith("x-"):
                self.issue(knode, key, f"unknown top-level section `{key}`", "an overlay has one `models:` section")
        if self.issues:
            raise self.fail()

    def overlay_models(self, node: Node, specs: dict[str, dict[str, Any]]) -> None:
        if node.tag == "tag:yaml.org,2002:null":
            return
        if not isinstance(node, MappingNode):
            self.expected(node, "models", "a mapping from model name to the fields to add")
            return
        taken: dict[str, str] = {}
        for name, knode, vnode in self.pairs(node, "models", "model name"):
            at = f"models.{name}"
            if name not in specs:
                close = difflib.get_close_matches(name, specs, n=1, cutoff=0.6)
                self.issue(
                    knode,
                    at,
                    f"unknown model `{name}`: not in the LiteLLM file (or not a chat model "
                    "with prices and a context window)",
                    f"did you mean `{close[0]}`?" if close else "overlay keys are LiteLLM model names",
                )
                continue
            if not isinstance(vnode, MappingNode):
                self.expected(
                    vnode,
                    at,
                    f"the fields to merge onto `{name}` (a mapping)",
                    "e.g. `{capabilities: {REASONING: 8}, latency_ms: 900}`",
                )
                continue
            self.overlay_fields(name, vnode, specs, taken)

    def overlay_fields(
        self, name: str, node: MappingNode, specs: dict[str, dict[str, Any]], taken: dict[str, str]
    ) -> None:
        path = f"models.{name}"
        update: dict[str, Any] = {}
        before = len(self.issues)
        for key, fnode, vnode in self.pairs(node, path, "field"):
            at = f"{path}.{key}"
            if key in ("provider", "id"):
                update[key] = self.text_value(vnode, at, f"a {key}")
            elif key == "aliases":
                names = self.names_list(vnode, at, "an alias", "aliases", "[sonnet]") or []
                for alias, anode, aat in names:
                    owner = taken.get(alias)
                    if alias in specs:
                        self.issue(
                            anode,
                            aat,
                            f"alias `{alias}` is already a model name",
                            "an alias must differ from every model name",
                        )
                    elif owner is not None and owner != name:
                        self.issue(
                            anode,
                            aat,
                            f"alias `{alias}` is already an alias of `{owner}`",
                            "an alias can point to one model only",
                        )
                    else:
                        taken[alias] = name
                update["aliases"] = tuple(dict.fromkeys(a for a, _, _ in names))
            elif key == "context":
                update["context"] = self.count(vnode, at, "a context window in tokens")
            elif key == "max_output":
                update["max_output"] = self.count(vnode, at, "a maximum output in tokens")
            elif key == "price":
                price: dict[str, Any] = {}
                self.price(vnode, at, price)
                update.update(price)
            elif key == "latency_ms":
                latency = self.number(vnode, at, "a latency in milliseconds", "e.g. `latency_ms: 800`")
                if latency is not None and latency < 0:
                    self.issue(vnode, at, f"latency_ms can't be negative, got {vnode.value}")
                update["latency_ms"] = latency
            elif key == "capabilities":
                caps = self.capabilities(vnode, at)
                update["capabilities"] = {**specs[name]["capabilities"], **caps}
            elif key == "supports":
                update["supports"] = self.supports(vnode, at)
            elif key == "deprecation_date":
                update["deprecation_date"] = self.date(vnode, at)
            else:
                self.unknown_field(fnode, at, key, f"model `{name}`", MODEL_FIELDS, {})
        if len(self.issues) == before:
            fields = specs[name]
            fields.update({k: v for k, v in update.items() if v is not None})
            fields["_trusted"] = False  # values from YAML: let pydantic check the merged spec


def _apply_overlay(file: str, specs: dict[str, dict[str, Any]], text: str | None = None) -> None:
    text = _read(Path(file)) if text is None else text
    _OverlayReader(file, text).read_overlay(specs)
