"""The YAML reader with positions: YAML text in, composed nodes (each with its line and column) and checked
Python values out, with a `CatalogIssue` (line, column, key path, message, hint) for every unusable value.

`compose`, `compose_data`, `duplicate_key` and `error_line` are the one YAML parsing entry point of the project
(catalog files, the LiteLLM overlay, gateway keys files).

`NodeReader` is the base of the catalog reader (`providers.catalog.yaml_reader.CatalogReader`) and of the LiteLLM
overlay reader (`providers.catalog.litellm`): issue reporting and the final `CatalogError`, YAML syntax errors, mapping
pairs with `<<` merge keys and duplicate-key detection, and parsers for names, numbers, token counts, lists of
names and dates. Every parser returns None (after recording an issue) when the value is unusable.
"""

import datetime
import difflib
import math
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from providers.catalog.issues import CatalogError, CatalogIssue
from providers.catalog.models import PER_MILLION

__all__ = [
    "LOADER",
    "MERGE_TAG",
    "NULL_TAG",
    "NodeReader",
    "compose",
    "compose_data",
    "describe",
    "duplicate_key",
    "error_line",
    "suggest",
]

MERGE_TAG = "tag:yaml.org,2002:merge"
NULL_TAG = "tag:yaml.org,2002:null"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")

LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser when PyYAML has it: same nodes, faster

_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_COUNT_RE = re.compile(r"([+-]?\d+(?:\.\d+)?)\s*([kKM]?)")
_SPACE_RE = re.compile(r"\s")
_COUNT_EXAMPLES = "like 128000, 200k or 1M"

_YAML_TERMS = {
    "flow mapping": "`{...}`",
    "flow sequence": "`[...]`",
    "block mapping": "mapping",
    "block collection": "block",
    "quoted scalar": "quoted string",
    "simple key": "key",
}
_SYNTAX_HINTS = (
    ("mapping values are not allowed", "a value containing `: ` must be quoted, or the line is mis-indented"),
    ("could not find expected ':'", "a `key: value` line is missing its colon, or a quote or bracket is not closed"),
    ("did not find expected key", "check the indentation: fields of one mapping must line up"),
    ("expected <block end>", "check the indentation: fields of one mapping must line up"),
    ("did not find expected ',' or", "a `[...]` or `{...}` is not closed, or two items lack a comma"),
    ("unexpected end of stream", "a quote or bracket is never closed"),
    ("but found another document", "a catalog file holds one YAML document; remove the `---` line"),
    ("undefined alias", "define the anchor with `&name` before using it as `*name`"),
)


def suggest(
    word: str, options: Iterable[str], synonyms: Mapping[str, str] | None = None, cutoff: float = 0.6
) -> str | None:
    """`did you mean ...?` for a misspelt or synonymous name, or None."""
    if synonyms and word.lower() in synonyms:
        return f"did you mean `{synonyms[word.lower()]}`?"
    options = list(options)
    close = difflib.get_close_matches(word, options, n=1, cutoff=cutoff)
    if not close:
        lowered = {o.lower(): o for o in options}
        close = [lowered[c] for c in difflib.get_close_matches(word.lower(), lowered, n=1, cutoff=cutoff)]
    return f"did you mean `{close[0]}`?" if close else None


def describe(node: Node) -> str:
    """How to show a YAML value in "expected X, got Y"."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    value = node.value
    if node.tag == NULL_TAG:
        return "nothing" if value in ("", "~") else f"`{value}` (null)"
    if node.tag == _BOOL_TAG:
        return f"`{value}` (a yes/no value in YAML)"
    if value == "":
        return "an empty string"
    shown = value if len(value) <= 60 else value[:57] + "..."
    return shown if node.tag in _NUMBER_TAGS else f"'{shown}'"


# ---- the YAML reader with positions: text in, nodes (each with its line and column) and values out -----------


def compose(text: str) -> Node | None:
    """The root node of a one-document YAML text (None when empty); raises yaml.YAMLError."""
    return yaml.compose(text, Loader=LOADER)


def compose_data(text: str) -> tuple[Any, Node | None]:
    """(data, root node) of a one-document YAML text, parsed once; raises yaml.YAMLError."""
    loader = LOADER(text)
    try:
        root = loader.get_single_node()
        return (loader.construct_document(root) if root is not None else None), root
    finally:
        loader.dispose()


def duplicate_key(root: Node | None) -> tuple[int, str] | None:
    """(line, key) of the first mapping key written twice anywhere under `root` (YAML would keep the last)."""
    todo = [root] if root is not None else []
    done: set[int] = set()  # an alias is the same node object again: visit each node once (cycles, alias bombs)
    while todo:
        n = todo.pop()
        if id(n) in done:
            continue
        done.add(id(n))
        if isinstance(n, MappingNode):
            seen: set[str] = set()
            for k, v in n.value:
                if isinstance(k, ScalarNode) and k.tag != MERGE_TAG:
                    if k.value in seen:
                        return k.start_mark.line + 1, k.value
                    seen.add(k.value)
                todo += (k, v)
        elif isinstance(n, SequenceNode):
            todo += n.value
    return None


def error_line(exc: yaml.YAMLError, text: str) -> int | None:
    """The 1-based line a YAML error points at (its mark, or the character position of a reader error)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        return int(mark.line) + 1
    position = getattr(exc, "position", None)
    return text.count("\n", 0, position) + 1 if isinstance(position, int) else None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class NodeReader:
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
        self.issue(node, path, f"expected {what}, got {describe(node)}", hint)

    def fail(self) -> CatalogError:
        issues = sorted(dict.fromkeys(self.issues), key=lambda i: (i.line, i.col))
        text = self.text
        for secret in self.secrets:
            text = text.replace(secret, "<redacted>")
        return CatalogError(issues, sources={self.file: text})

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
            at = lines[mark.line][mark.column : mark.column + 1] if mark.line < len(lines) else ""
            if at == "\t" or "\t" in problem:
                hint = "YAML does not allow tabs here; indent with spaces"
        message = f"invalid YAML: {problem}"
        return CatalogError([CatalogIssue(self.file, line, col, "", message, hint)], sources={self.file: self.text})

    def pairs(
        self,
        node: MappingNode,
        path: str,
        entry: str,
        duplicates: list[tuple[str, Node, Node]] | None = None,
        merging: frozenset[int] = frozenset(),
    ) -> list[tuple[str, Node, Node]]:
        """A mapping's (key, key node, value node) in order, applying `<<` merge keys and reporting
        duplicate keys (`entry` names what a key is, e.g. "model"); the repeats go to `duplicates`."""
        explicit: dict[str, tuple[Node, Node]] = {}
        merged: dict[str, tuple[Node, Node]] = {}
        merging = merging | {id(node)}
        for knode, vnode in node.value:
            if knode.tag == MERGE_TAG:
                sources = vnode.value if isinstance(vnode, SequenceNode) else [vnode]
                for src in sources:
                    if isinstance(src, MappingNode) and id(src) in merging:
                        self.issue(
                            knode,
                            path,
                            "a mapping can't merge itself (`<<` makes a loop)",
                            "merge a separate anchored mapping instead",
                        )
                    elif isinstance(src, MappingNode):
                        for key, kn, vn in self.pairs(src, path, entry, None, merging):
                            merged.setdefault(key, (kn, vn))
                    else:
                        self.expected(src, path, "an anchored mapping to merge, like `<<: *defaults`")
                continue
            if not isinstance(knode, ScalarNode):
                self.issue(knode, path, f"expected a {entry} name, got {describe(knode)}", "keys must be plain names")
                continue
            key = knode.value
            first = explicit.get(key)
            if first is not None:
                self.issue(
                    knode,
                    _join(path, key),
                    f"duplicate {entry} `{key}`",
                    f"it was first defined at line {first[0].start_mark.line + 1}; keep one of them",
                )
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
        if not isinstance(node, ScalarNode) or node.tag == NULL_TAG or node.value == "":
            self.expected(node, path, what)
            return None
        if _SPACE_RE.search(node.value):
            self.issue(node, path, f"{what} can't contain spaces, got '{node.value}'", "use `-` or `_` between words")
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

    def names_list(
        self, node: Node, path: str, what: str, plural: str, example: str
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

    def date(self, node: Node, path: str) -> datetime.date | None:
        if node.tag == NULL_TAG:
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

    def unknown_field(
        self, knode: Node, path: str, key: str, where: str, fields: tuple[str, ...], synonyms: Mapping[str, str]
    ) -> None:
        hint = suggest(key, fields, synonyms) or "known fields: " + ", ".join(fields)
        self.issue(knode, path, f"unknown field `{key}` in {where}", hint)
