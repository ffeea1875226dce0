"""Catalog issues: the problems found in a catalog (each with its file, line, column, key path, message and hint)
in, a `CatalogError` out whose text shows every problem under its source line with the offending token underlined.

`SourceRef` is where an entry was defined (kept on each `ModelSpec`); `CatalogIssue` is one problem; `CatalogError`
holds them all. The readers (`providers.catalog.nodes`, `providers.catalog.yaml_reader`), the LiteLLM
importer and its overlay reader (`providers.catalog.litellm`), the file loader (`providers.catalog.loader`) and
`Catalog` itself raise it.
"""

import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

__all__ = ["CatalogError", "CatalogIssue", "SourceRef"]

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
            out += [
                f" {gutter} |",
                f" {issue.line} | {text}",
                f" {gutter} | {' ' * start}{'^' * _token_width(text, start)}",
            ]
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
