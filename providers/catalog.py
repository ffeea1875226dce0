"""Model catalog: reads a YAML catalog file (a path) and returns an immutable `Catalog` of `ModelSpec`s and
`ProviderSpec`s, or raises `CatalogError` listing every problem in the file with its line and column.

The YAML format::

    providers:                  # optional; settings for the HTTP clients
      anthropic: {kind: anthropic, base_url: "https://api.anthropic.com", api_key_env: ANTHROPIC_API_KEY}
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
        supports: [tools, vision, json]        # known: tools, vision, json, streaming
        deprecation_date: 2025-10-22           # optional

Required model fields: provider, context, price, latency_ms. Capability names are case-insensitive and
stored upper-case. Top-level keys starting with `x-` are ignored (a place for YAML anchors), and YAML merge
keys (`<<: *defaults`) work. This module is pure: no network, no httpx.
"""

import atexit
import datetime
import difflib
import functools
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "KNOWN_FEATURES",
    "PROVIDER_KINDS",
    "STANDARD_CAPABILITIES",
    "Catalog",
    "CatalogError",
    "CatalogIssue",
    "ModelSpec",
    "ProviderSpec",
    "SourceRef",
    "default_catalog",
    "default_catalog_path",
    "default_provider_kind",
    "load_catalog",
]

ProviderKind = Literal["openai", "anthropic", "gemini"]
PROVIDER_KINDS: tuple[str, ...] = ("openai", "anthropic", "gemini")
STANDARD_CAPABILITIES: tuple[str, ...] = (
    "REASONING", "CODING", "CREATIVITY", "SPEED", "CONTEXT", "COST", "VISION", "TOOLS",
)
KNOWN_FEATURES: tuple[str, ...] = ("tools", "vision", "json", "streaming")
PER_MILLION = 1_000_000
_MAX_RENDERED = 50  # str(CatalogError) shows at most this many issues; .issues has them all


# ---- positions, issues, errors --------------------------------------------------------------------------


class SourceRef(NamedTuple):
    """Where an entry was defined: file name and 1-based line and column."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class CatalogIssue(NamedTuple):
    """One problem in a catalog. `line`/`col` are 1-based; both are 0 when there is no position (e.g. a
    missing file). `key_path` is like `models.gpt-4o.price.input` ("" for the whole file)."""

    file: str
    line: int
    col: int
    key_path: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        at = f" (at `{self.key_path}`)" if self.key_path else ""
        hint = f"; hint: {self.hint}" if self.hint else ""
        return f"{where}: {self.message}{at}{hint}"


class CatalogError(Exception):
    """A catalog could not be loaded. `issues` holds every problem found, in file order; `str()` renders
    them with the offending source line when the text is known."""

    def __init__(self, issues: Iterable[CatalogIssue], *, sources: Mapping[str, str] | None = None) -> None:
        self.issues: list[CatalogIssue] = list(issues)
        self._sources: dict[str, str] = dict(sources or {})
        super().__init__(self.issues)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_error, (self.issues, self._sources))

    def __str__(self) -> str:
        if not self.issues:
            return "invalid catalog"
        count = len(self.issues)
        files = ", ".join(dict.fromkeys(i.file for i in self.issues))
        head = f"{count} problem{'' if count == 1 else 's'} in catalog {files}:"
        lines_of = {f: t.splitlines() for f, t in self._sources.items()}
        blocks = [_render_issue(i, lines_of.get(i.file)) for i in self.issues[:_MAX_RENDERED]]
        if count > _MAX_RENDERED:
            blocks.append(f"... and {count - _MAX_RENDERED} more (see CatalogError.issues)")
        return head + "\n\n" + "\n\n".join(blocks)


def _rebuild_error(issues: list[CatalogIssue], sources: dict[str, str]) -> CatalogError:
    return CatalogError(issues, sources=sources)


def _render_issue(issue: CatalogIssue, lines: list[str] | None) -> str:
    out = [f"error: {issue.message}"]
    at = f"  (at {issue.key_path})" if issue.key_path else ""
    if issue.line <= 0:
        out.append(f"  --> {issue.file}{at}")
    else:
        out.append(f"  --> {issue.file}:{issue.line}:{issue.col}{at}")
        if lines is not None and issue.line <= len(lines):
            text = lines[issue.line - 1].replace("\t", " ")
            gutter = " " * len(str(issue.line))
            start = max(issue.col - 1, 0)
            out += [f" {gutter} |", f" {issue.line} | {text}",
                    f" {gutter} | {' ' * start}{'^' * _token_width(text, start)}"]
    if issue.hint:
        out.append(f"  = hint: {issue.hint}")
    return "\n".join(out)


def _token_width(line: str, start: int) -> int:
    """How many characters of `line` from `start` to underline: one quoted string or one plain token."""
    rest = line[start:]
    if not rest or rest[0].isspace():
        return 1
    if rest[0] in "'\"":
        end = rest.find(rest[0], 1)
        return end + 1 if end > 0 else len(rest.rstrip())
    match = re.match(r"(?:[^,\]}#:\s]|:(?!\s|$)|\s+(?=[^,\]}#:\s]))+", rest)
    return max(len(match.group(0)) if match else 1, 1)


# ---- specs -----------------------------------------------------------------------------------------------


def default_provider_kind(name: str) -> ProviderKind:
    """The API kind of a provider without an explicit `kind`: its own name if that is a kind, else openai."""
    if name == "anthropic":
        return "anthropic"
    if name == "gemini":
        return "gemini"
    return "openai"


class ProviderSpec(BaseModel):
    """How to reach one provider's API (used by the HTTP clients, not by the decision core)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    kind: ProviderKind
    base_url: str | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    headers: dict[str, str] = {}

    def __hash__(self) -> int:
        return hash((self.name, self.kind, self.base_url, self.api_key_env, self.timeout_s,
                     tuple(sorted(self.headers.items()))))

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
    deprecation_date: datetime.date | None = None
    source: SourceRef | None = None

    def __hash__(self) -> int:  # capabilities is a dict, so hash the identifying fields only
        return hash((self.name, self.provider, self.id, self.context, self.input_price, self.output_price))

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

    def __init__(self, models: Iterable[ModelSpec] = (),
                 providers: Iterable[ProviderSpec] | Mapping[str, ProviderSpec] = (),
                 files: Iterable[str] = ()) -> None:
        file_names = tuple(files)
        by_name: dict[str, ModelSpec] = {}
        issues: list[CatalogIssue] = []
        for spec in models:
            if spec.name in by_name:
                issues.append(_spec_issue(spec, file_names, f"duplicate model name `{spec.name}`",
                                          "each model name may be defined once"))
            else:
                by_name[spec.name] = spec
        aliases: dict[str, str] = {}
        for spec in by_name.values():
            for alias in spec.aliases:
                owner = aliases.get(alias)
                if alias in by_name:
                    issues.append(_spec_issue(
                        spec, file_names, f"alias `{alias}` of model `{spec.name}` is also a model name",
                        "aliases must differ from every model name"))
                elif owner is not None and owner != spec.name:
                    issues.append(_spec_issue(
                        spec, file_names, f"alias `{alias}` is used by both `{owner}` and `{spec.name}`",
                        "aliases must be unique"))
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
    def from_models(cls, models: Iterable[ModelSpec],
                    providers: Iterable[ProviderSpec] | Mapping[str, ProviderSpec] = (),
                    files: Iterable[str] = ()) -> "Catalog":
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
        return (list(self.models.items()) == list(other.models.items())
                and dict(self.providers) == dict(other.providers) and self.files == other.files)

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
        names: frozenset[str] | None = self._capability_names
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
        return CatalogIssue(spec.source.file, spec.source.line, spec.source.col, f"models.{spec.name}",
                            message, hint)
    return CatalogIssue(files[0] if files else "<catalog>", 0, 0, f"models.{spec.name}", message, hint)


# ---- loading ---------------------------------------------------------------------------------------------


def load_catalog(path: str | Path) -> Catalog:
    """Load and check a catalog file; raises CatalogError listing every problem (also for a missing file)."""
    file = str(path)
    target = Path(path)
    try:
        raw = target.read_bytes()
    except FileNotFoundError:
        raise CatalogError([CatalogIssue(file, 0, 0, "", "catalog file not found",
                                         _missing_file_hint(target))]) from None
    except IsADirectoryError:
        raise CatalogError([CatalogIssue(file, 0, 0, "", "expected a catalog file, got a directory",
                                         _directory_hint(target))]) from None
    except OSError as exc:
        raise CatalogError([CatalogIssue(file, 0, 0, "", f"cannot read the catalog: {exc.strerror or exc}",
                                         None)]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise CatalogError([CatalogIssue(file, line, col, "", f"the catalog is not UTF-8 text (byte "
                                         f"0x{raw[exc.start]:02x})", "save the file as UTF-8")]) from None
    return _Reader(file, text).read()


def _missing_file_hint(path: Path) -> str | None:
    folder = path.parent
    if not folder.is_dir():
        return f"the folder `{folder}` does not exist either"
    candidates = {p.stem: p.name for p in folder.iterdir() if p.suffix in (".yaml", ".yml")}
    close = difflib.get_close_matches(path.stem, candidates, n=1, cutoff=0.6)
    if close:
        return f"did you mean `{folder / candidates[close[0]]}`?"
    return None


def _directory_hint(path: Path) -> str | None:
    names = sorted(p.name for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
    return f"pick a file in it, e.g. `{path / names[0]}`" if names else None


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")

_TOP_FIELDS = ("providers", "models")
_MODEL_FIELDS = ("provider", "id", "aliases", "context", "max_output", "price", "latency_ms", "capabilities",
                 "supports", "deprecation_date")
_PROVIDER_FIELDS = ("kind", "base_url", "api_key_env", "timeout_s", "headers")
_PRICE_FIELDS = ("input", "output")
_SYNONYMS = {
    "model": {"max_tokens": "max_output", "max_output_tokens": "max_output", "output_tokens": "max_output",
              "context_window": "context", "context_length": "context", "max_context": "context",
              "input_price": "price", "output_price": "price", "pricing": "price", "cost": "price",
              "prices": "price", "latency": "latency_ms", "ttft_ms": "latency_ms", "alias": "aliases",
              "model": "id", "model_id": "id", "capability": "capabilities", "scores": "capabilities",
              "features": "supports", "support": "supports", "deprecated": "deprecation_date",
              "deprecation": "deprecation_date", "sunset": "deprecation_date"},
    "provider": {"type": "kind", "api": "kind", "url": "base_url", "endpoint": "base_url",
                 "api_base": "base_url", "api_key": "api_key_env", "key_env": "api_key_env",
                 "env": "api_key_env", "timeout": "timeout_s", "header": "headers"},
    "price": {"in": "input", "prompt": "input", "out": "output", "completion": "output"},
    "top": {"model": "models", "provider": "providers"},
}
_REQUIRED_HINTS = {
    "provider": "add `provider: <name>`, e.g. `provider: openai`",
    "context": "add the context window in tokens, e.g. `context: 128k`",
    "price": "add `price: {input: <USD per 1M input tokens>, output: <USD per 1M output tokens>}`",
    "latency_ms": "add the typical latency in milliseconds, e.g. `latency_ms: 800`",
}
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_COUNT_RE = re.compile(r"([+-]?\d+(?:\.\d+)?)\s*([kKM]?)")
_CAPABILITY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_SPACE_RE = re.compile(r"\s")
_URL_RE = re.compile(r"https?://[^\s/]+\S*")
_COUNT_EXAMPLES = "like 128000, 200k or 1M"

_YAML_TERMS = {"flow mapping": "`{...}`", "flow sequence": "`[...]`", "block mapping": "mapping",
               "block collection": "block", "quoted scalar": "quoted string", "simple key": "key"}
_SYNTAX_HINTS = (
    ("mapping values are not allowed", "a value containing `: ` must be quoted, or the line is mis-indented"),
    ("could not find expected ':'", "a `key: value` line is missing its colon, or a quote or bracket is not "
                                     "closed"),
    ("did not find expected key", "check the indentation: fields of one mapping must line up"),
    ("expected <block end>", "check the indentation: fields of one mapping must line up"),
    ("did not find expected ',' or", "a `[...]` or `{...}` is not closed, or two items lack a comma"),
    ("unexpected end of stream", "a quote or bracket is never closed"),
    ("but found another document", "a catalog file holds one YAML document; remove the `---` line"),
    ("undefined alias", "define the anchor with `&name` before using it as `*name`"),
)


def _suggest(word: str, options: Iterable[str], synonyms: Mapping[str, str] | None = None,
             cutoff: float = 0.6) -> str | None:
    """`did you mean ...?` for a misspelt or synonymous name, or None."""
    if synonyms and word.lower() in synonyms:
        return f"did you mean `{synonyms[word.lower()]}`?"
    options = list(options)
    close = difflib.get_close_matches(word, options, n=1, cutoff=cutoff)
    if not close:
        lowered = {o.lower(): o for o in options}
        close = [lowered[c] for c in difflib.get_close_matches(word.lower(), lowered, n=1, cutoff=cutoff)]
    return f"did you mean `{close[0]}`?" if close else None


def _describe(node: Node) -> str:
    """How to show a YAML value in "expected X, got Y"."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    value = node.value
    if node.tag == _NULL_TAG:
        return "nothing" if value in ("", "~") else f"`{value}` (null)"
    if node.tag == _BOOL_TAG:
        return f"`{value}` (a yes/no value in YAML)"
    if value == "":
        return "an empty string"
    shown = value if len(value) <= 60 else value[:57] + "..."
    return shown if node.tag in _NUMBER_TAGS else f"'{shown}'"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Reader:
    """One pass over a composed YAML tree, collecting issues with their node positions."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.text = text
        self.issues: list[CatalogIssue] = []
        self.secrets: list[str] = []  # values that look like API keys: never shown in error text
        self.constructor = yaml.constructor.SafeConstructor()

    # -- reporting --

    def issue(self, node: Node, path: str, message: str, hint: str | None = None) -> None:
        mark = node.start_mark
        self.issues.append(CatalogIssue(self.file, mark.line + 1, mark.column + 1, path, message, hint))

    def expected(self, node: Node, path: str, what: str, hint: str | None = None) -> None:
        self.issue(node, path, f"expected {what}, got {_describe(node)}", hint)

    def fail(self) -> CatalogError:
        issues = sorted(dict.fromkeys(self.issues), key=lambda i: (i.line, i.col))
        text = self.text
        for secret in self.secrets:
            text = text.replace(secret, "<redacted>")
        return CatalogError(issues, sources={self.file: text})

    # -- the document --

    def read(self) -> Catalog:
        try:
            root = yaml.compose(self.text, Loader=_LOADER)
        except yaml.MarkedYAMLError as exc:
            raise self.fail_syntax(exc) from None
        except yaml.YAMLError as exc:
            position = getattr(exc, "position", None)
            line, col = self.position(position) if isinstance(position, int) else (0, 0)
            reason = getattr(exc, "reason", None) or str(exc)
            raise CatalogError([CatalogIssue(self.file, line, col, "", f"invalid YAML: {reason}", None)],
                               sources={self.file: self.text}) from None
        if root is None:
            raise CatalogError([CatalogIssue(self.file, 1, 1, "", "the catalog file is empty",
                                             "add a `models:` section")], sources={self.file: self.text})
        models, providers = self.document(root)
        if self.issues:
            raise self.fail()
        try:
            return Catalog(models, providers, (self.file,))
        except CatalogError as exc:  # pragma: no cover - the checks above report clashes first
            raise CatalogError(exc.issues, sources={self.file: self.text}) from None

    def position(self, index: int) -> tuple[int, int]:
        before = self.text[:index]
        return before.count("\n") + 1, index - (before.rfind("\n") + 1) + 1

    def fail_syntax(self, exc: yaml.MarkedYAMLError) -> CatalogError:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        if exc.context and exc.problem and exc.problem.startswith("but "):
            problem = f"{exc.context}, {exc.problem}"
        hint = next((h for key, h in _SYNTAX_HINTS if key in problem), None)
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        opened = exc.context_mark
        thing = re.match(r"while (?:parsing|scanning) (?:an? )?(.+)", exc.context or "")
        if hint and thing and opened is not None and mark is not None and opened.line != mark.line:
            what = _YAML_TERMS.get(thing[1], thing[1])
            hint += f" (the {what} starts at line {opened.line + 1}, column {opened.column + 1})"
        if mark is not None:
            lines = self.text.splitlines()
            at = lines[mark.line][mark.column:mark.column + 1] if mark.line < len(lines) else ""
            if at == "\t" or "\t" in problem:
                hint = "YAML does not allow tabs here; indent with spaces"
        message = f"invalid YAML: {problem}"
        return CatalogError([CatalogIssue(self.file, line, col, "", message, hint)],
                            sources={self.file: self.text})

    def document(self, root: Node) -> tuple[list[ModelSpec], list[ProviderSpec]]:
        if not isinstance(root, MappingNode):
            self.expected(root, "", "a mapping with `providers:` and `models:` sections")
            return [], []
        sections = {}
        for key, knode, vnode in self.pairs(root, "", "section"):
            if key in _TOP_FIELDS:
                sections[key] = vnode
            elif not key.startswith("x-"):
                hint = _suggest(key, _TOP_FIELDS, _SYNONYMS["top"])
                if hint is None and isinstance(vnode, MappingNode) and any(
                        isinstance(k, ScalarNode) and k.value == "provider" for k, _ in vnode.value):
                    hint = "this looks like a model; put it under `models:`"
                self.issue(knode, key, f"unknown top-level section `{key}`",
                           hint or "a catalog has `providers:` and `models:` sections")
        providers = self.providers(sections["providers"]) if "providers" in sections else []
        provider_names = {p.name for p in providers}
        if isinstance(sections.get("providers"), MappingNode):
            provider_names.update(k.value for k, _ in sections["providers"].value
                                  if isinstance(k, ScalarNode) and k.tag != _MERGE_TAG)
        models = self.models(sections["models"], provider_names) if "models" in sections else []
        return models, providers

    def pairs(self, node: MappingNode, path: str, entry: str,
              duplicates: list[tuple[str, Node, Node]] | None = None,
              merging: frozenset[int] = frozenset()) -> list[tuple[str, Node, Node]]:
        """A mapping's (key, key node, value node) in order, applying `<<` merge keys and reporting
        duplicate keys (`entry` names what a key is, e.g. "model"); the repeats go to `duplicates`."""
        explicit: dict[str, tuple[Node, Node]] = {}
        merged: dict[str, tuple[Node, Node]] = {}
        merging = merging | {id(node)}
        for knode, vnode in node.value:
            if knode.tag == _MERGE_TAG:
                sources = vnode.value if isinstance(vnode, SequenceNode) else [vnode]
                for src in sources:
                    if isinstance(src, MappingNode) and id(src) in merging:
                        self.issue(knode, path, "a mapping can't merge itself (`<<` makes a loop)",
                                   "merge a separate anchored mapping instead")
                    elif isinstance(src, MappingNode):
                        for key, kn, vn in self.pairs(src, path, entry, None, merging):
                            merged.setdefault(key, (kn, vn))
                    else:
                        self.expected(src, path, "an anchored mapping to merge, like `<<: *defaults`")
                continue
            if not isinstance(knode, ScalarNode):
                self.issue(knode, path, f"expected a {entry} name, got {_describe(knode)}",
                           "keys must be plain names")
                continue
            key = knode.value
            first = explicit.get(key)
            if first is not None:
                self.issue(knode, _join(path, key), f"duplicate {entry} `{key}`",
                           f"it was first defined at line {first[0].start_mark.line + 1}; keep one of them")
                if duplicates is not None:
                    duplicates.append((key, knode, vnode))
                continue
            explicit[key] = (knode, vnode)
        items = {k: v for k, v in merged.items() if k not in explicit}
        items.update(explicit)
        return [(k, kn, vn) for k, (kn, vn) in items.items()]

    # -- scalar helpers: each returns None (after reporting) when the value is unusable --

    def scalar(self, node: ScalarNode) -> Any:
        construct = self.constructor.yaml_constructors.get(node.tag)
        if construct is None:
            return node.value
        try:
            return construct(self.constructor, node)
        except (ValueError, yaml.YAMLError):  # e.g. a malformed date such as 2025-13-01
            return node.value

    def text_value(self, node: Node, path: str, what: str) -> str | None:
        """A name-like value: any non-empty scalar, taken as written (so `o1` or `3.5` stay text)."""
        if not isinstance(node, ScalarNode) or node.tag == _NULL_TAG or node.value == "":
            self.expected(node, path, what)
            return None
        if _SPACE_RE.search(node.value):
            self.issue(node, path, f"{what} can't contain spaces, got '{node.value}'",
                       "use `-` or `_` between words")
            return None
        return node.value

    def number(self, node: Node, path: str, what: str, example: str | None = None) -> float | None:
        value = self.scalar(node) if isinstance(node, ScalarNode) else None
        if isinstance(value, str) and _NUMBER_RE.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = example
            if isinstance(value, str) and value.strip().startswith("$"):
                bare = value.strip()[1:].strip()
                if _NUMBER_RE.fullmatch(bare):
                    hint = f"write the number without `$`: {bare}"
            self.expected(node, path, what, hint)
            return None
        if isinstance(value, int):
            value = float(value) if abs(value) < 1e300 else math.inf
        if not math.isfinite(value):
            self.expected(node, path, f"{what} (a finite number)")
            return None
        return value

    def count(self, node: Node, path: str, what: str) -> int | None:
        """A token count: an int, or a string with a k (x1000) or M (x1,000,000) suffix."""
        value = self.scalar(node) if isinstance(node, ScalarNode) else None
        result: int | None = None
        hint: str | None = None
        if isinstance(value, bool):
            pass
        elif isinstance(value, int):
            result = value
        elif isinstance(value, float):
            if value.is_integer():
                result = int(value)
            else:
                hint = "a token count is a whole number"
        elif isinstance(value, str):
            text = value.strip().replace("_", "")
            match = _COUNT_RE.fullmatch(text)
            if match:
                try:
                    amount = Decimal(match[1]) * {"": 1, "k": 1000, "K": 1000, "M": PER_MILLION}[match[2]]
                except InvalidOperation:  # pragma: no cover - the regex admits only plain decimals
                    amount = Decimal("NaN")
                if amount == amount.to_integral_value():
                    result = int(amount)
                else:
                    hint = "a token count is a whole number"
            elif re.fullmatch(r"[+-]?\d+(\.\d+)?\s*m", text):
                hint = "use an upper-case `M` for millions (1M = 1,000,000 tokens)"
            elif re.fullmatch(r"\d{1,3}(,\d{3})+", text):
                hint = f"write it without commas: {text.replace(',', '')}"
        if result is None:
            self.expected(node, path, f"{what} {_COUNT_EXAMPLES}", hint)
            return None
        if result < 0:
            self.issue(node, path, f"{what} can't be negative, got {node.value}")
            return None
        if result == 0:
            self.issue(node, path, f"{what} must be at least 1 token, got {node.value}")
            return None
        return result

    def names_list(self, node: Node, path: str, what: str, plural: str, example: str
                   ) -> list[tuple[str, Node, str]] | None:
        """(text, node, key path) of each usable item of a list of names."""
        if not isinstance(node, SequenceNode):
            hint = None
            if isinstance(node, ScalarNode) and node.value:
                hint = f"write a list, e.g. `[{node.value}]`"
            self.expected(node, path, f"a list of {plural} like {example}", hint)
            return None
        out = []
        for index, item in enumerate(node.value):
            at = f"{path}[{index}]"
            text = self.text_value(item, at, what)
            if text is not None:
                out.append((text, item, at))
        return out

    def unknown_field(self, knode: Node, path: str, key: str, where: str, fields: tuple[str, ...],
                      synonyms: Mapping[str, str]) -> None:
        hint = _suggest(key, fields, synonyms) or "known fields: " + ", ".join(fields)
        self.issue(knode, path, f"unknown field `{key}` in {where}", hint)

    # -- providers --

    def providers(self, node: Node) -> list[ProviderSpec]:
        if node.tag == _NULL_TAG:
            return []
        if not isinstance(node, MappingNode):
            self.expected(node, "providers", "a mapping from provider name to its settings",
                          "e.g. `openai: {base_url: \"https://api.openai.com/v1\", "
                          "api_key_env: OPENAI_API_KEY}`")
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
        if node.tag == _NULL_TAG:
            return ProviderSpec(**fields)
        if not isinstance(node, MappingNode):
            self.expected(node, path, f"the settings of provider `{name}` (a mapping)",
                          "e.g. `{kind: openai, base_url: \"https://...\", api_key_env: MY_API_KEY}`")
            return None
        before = len(self.issues)
        for key, knode, vnode in self.pairs(node, path, "field"):
            at = f"{path}.{key}"
            if key == "kind":
                kind = self.text_value(vnode, at, "a provider kind")
                if kind is not None and kind not in PROVIDER_KINDS:
                    self.issue(vnode, at, f"unknown provider kind `{kind}`",
                               _suggest(kind, PROVIDER_KINDS) or "kinds: openai (any OpenAI-compatible "
                               "chat completions API), anthropic, gemini")
                elif kind is not None:
                    fields["kind"] = kind
            elif key == "base_url":
                if vnode.tag != _NULL_TAG:
                    url = vnode.value if isinstance(vnode, ScalarNode) else None
                    if url is None or not _URL_RE.fullmatch(url):
                        self.expected(vnode, at, "an http(s) URL like \"https://api.openai.com/v1\"")
                    else:
                        fields["base_url"] = url
            elif key == "api_key_env":
                if vnode.tag != _NULL_TAG:
                    self.key_env(vnode, at, fields)
            elif key == "timeout_s":
                timeout = self.number(vnode, at, "a timeout in seconds", "e.g. `timeout_s: 60`")
                if timeout is not None and timeout <= 0:
                    self.issue(vnode, at, f"timeout_s must be greater than 0, got {vnode.value}")
                elif timeout is not None:
                    fields["timeout_s"] = timeout
            elif key == "headers":
                fields["headers"] = self.headers(vnode, at)
            else:
                self.unknown_field(knode, at, key, f"provider `{name}`", _PROVIDER_FIELDS,
                                   _SYNONYMS["provider"])
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
            self.issue(node, path, "expected the name of an environment variable like OPENAI_API_KEY, "
                       "got a value that looks like an API key",
                       "`api_key_env` names the variable that holds the key; keep the key itself out of "
                       "the catalog (and rotate it if this file was shared)")
            return
        self.expected(node, path, "the name of an environment variable like OPENAI_API_KEY")

    def headers(self, node: Node, path: str) -> dict[str, str]:
        if node.tag == _NULL_TAG:
            return {}
        if not isinstance(node, MappingNode):
            self.expected(node, path, "a mapping of HTTP header names to values",
                          "e.g. `{anthropic-version: \"2023-06-01\"}`")
            return {}
        out = {}
        for key, knode, vnode in self.pairs(node, path, "header"):
            at = f"{path}.{key}"
            if not _HEADER_RE.fullmatch(key):
                self.issue(knode, at, f"`{key}` is not a valid HTTP header name",
                           "header names are letters, digits and `-`")
            elif not isinstance(vnode, ScalarNode) or vnode.tag == _NULL_TAG:
                self.expected(vnode, at, "a header value (text)")
            else:
                out[key] = vnode.value
        return out

    # -- models --

    def models(self, node: Node, defined_providers: set[str]) -> list[ModelSpec]:
        if node.tag == _NULL_TAG:
            return []
        if not isinstance(node, MappingNode):
            self.expected(node, "models", "a mapping from model name to its fields",
                          "write each model as `name: {provider: ..., context: ..., price: ...}`")
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

    def model_fields(self, name: str, knode: Node, node: Node, defined_providers: set[str]
                     ) -> dict[str, Any] | None:
        path = f"models.{name}"
        if not isinstance(node, MappingNode):
            self.expected(node, path, f"the fields of model `{name}` (a mapping)",
                          "e.g. `{provider: openai, context: 128k, price: {input: 2.5, output: 10}, "
                          "latency_ms: 800}`")
            return None
        fields: dict[str, Any] = {"name": name, "id": name, "aliases": (), "source": SourceRef(
            self.file, knode.start_mark.line + 1, knode.start_mark.column + 1)}
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
                if vnode.tag != _NULL_TAG:
                    alias_nodes = self.names_list(vnode, at, "an alias", "aliases", "[sonnet]") or []
                    fields["aliases"] = tuple(dict.fromkeys(a for a, _, _ in alias_nodes))
            elif key == "context":
                fields["context"] = self.count(vnode, at, "a context window in tokens")
            elif key == "max_output":
                if vnode.tag != _NULL_TAG:
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
            elif key == "deprecation_date":
                fields["deprecation_date"] = self.date(vnode, at)
            else:
                self.unknown_field(fnode, at, key, f"model `{name}`", _MODEL_FIELDS, _SYNONYMS["model"])
        for required, hint in _REQUIRED_HINTS.items():
            if required not in seen:
                if required == "provider" and defined_providers:
                    hint += "; providers in this file: " + ", ".join(sorted(defined_providers))
                self.issue(knode, f"{path}.{required}", f"model `{name}` is missing the required field "
                           f"`{required}`", hint)
        context, max_output = fields.get("context"), fields.get("max_output")
        if isinstance(context, int) and isinstance(max_output, int) and max_output > context:
            assert max_output_node is not None
            self.issue(max_output_node, f"{path}.max_output",
                       f"max_output ({max_output:,} tokens) is larger than the context window "
                       f"({context:,} tokens)", "the output has to fit in the context")
        fields["_alias_nodes"] = alias_nodes
        return fields

    def check_provider_name(self, provider: str, node: Node, path: str, defined: set[str]) -> None:
        """An undefined provider is fine, unless it is a near miss of a defined one or of a kind."""
        if provider in defined or provider in PROVIDER_KINDS:
            return
        close = difflib.get_close_matches(provider, sorted(defined | set(PROVIDER_KINDS)), n=1, cutoff=0.85)
        if close:
            self.issue(node, path, f"provider `{provider}` looks like a misspelling of `{close[0]}`",
                       f"did you mean `{close[0]}`? (if `{provider}` is another provider, give it an entry "
                       "under `providers:`)")

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
                self.issue(vnode, at, f"a price can't be negative, got {vnode.value}",
                           "use 0 for a free model")
            elif value is not None:
                fields[f"{key}_price"] = value / PER_MILLION
        for missing in _PRICE_FIELDS:
            if missing not in found:
                self.issue(node, f"{path}.{missing}", f"price is missing `{missing}`",
                           f"add `{missing}: <USD per 1M {missing} tokens>` (0 if free)")

    def capabilities(self, node: Node, path: str) -> dict[str, float]:
        if node.tag == _NULL_TAG:
            return {}
        if not isinstance(node, MappingNode):
            self.expected(node, path, "a mapping of capability scores like {REASONING: 8, CODING: 9}")
            return {}
        out: dict[str, float] = {}
        for key, knode, vnode in self.pairs(node, path, "capability"):
            at = f"{path}.{key}"
            name = key.upper()
            if not _CAPABILITY_RE.fullmatch(key):
                self.issue(knode, at, f"`{key}` is not a valid capability name",
                           "use letters, digits and `_`, e.g. REASONING")
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
        if node.tag == _NULL_TAG:
            return frozenset()
        items = self.names_list(node, path, "a feature", "features", "[tools, vision]") or []
        out = set()
        for feature, fnode, at in items:
            feature = feature.lower()
            if feature not in KNOWN_FEATURES:
                close = difflib.get_close_matches(feature, KNOWN_FEATURES, n=1, cutoff=0.75)
                if close:
                    self.issue(fnode, at, f"unknown feature `{feature}`",
                               f"did you mean `{close[0]}`?")
                    continue
            out.add(feature)
        return frozenset(out)

    def date(self, node: Node, path: str) -> datetime.date | None:
        if node.tag == _NULL_TAG:
            return None
        value = self.scalar(node) if isinstance(node, ScalarNode) else None
        if isinstance(value, datetime.datetime):
            return value.date()
        if isinstance(value, datetime.date):
            return value
        hint = None
        if isinstance(value, str):
            try:
                return datetime.date.fromisoformat(value.strip())
            except ValueError as exc:
                if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
                    hint = f"not a real date: {exc}"
        self.expected(node, path, "a date like 2025-10-22", hint)
        return None

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
                    self.issue(anode, at, f"alias `{alias}` of model `{name}` clashes with the model "
                               f"`{alias}` (line {line})", "an alias must differ from every model name; "
                               "rename or remove it")
                elif alias in owners and owners[alias][0] != name:
                    owner, onode = owners[alias]
                    self.issue(anode, at, f"alias `{alias}` is already an alias of model `{owner}` "
                               f"(line {onode.start_mark.line + 1})", "an alias can point to one model only")
                else:
                    owners[alias] = (name, anode)
                listed.add(alias)


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
