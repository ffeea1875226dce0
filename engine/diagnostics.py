"""Diagnostics: every compile-time problem as a coded Diagnostic, rendered rustc-style; PolicyError carries them."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from engine.language.nodes import Span
from providers.catalog.files import LARGE_FILE_BYTES, read_regular

#: Stable diagnostic codes. Never renumber; add new ones at the end of their block.
CODES: dict[str, str] = {
    # syntax (raised from engine/parse.py only)
    "E100": "syntax error",
    "E101": "unterminated string",
    "E102": "unterminated regex",
    "E103": "keyword used as a name",
    "E104": "unexpected character",
    "E105": "bad literal",
    "E106": "invalid character (lone surrogate)",
    "E107": "condition nested too deeply",
    # files
    "E200": "missing file",
    "E201": "include cycle",
    "E202": "catalog error",
    "E203": "include too deep",
    "E204": "example file missing or unreadable",
    "E205": "no examples",
    # names
    "E300": "unknown model",
    "E301": "unknown task",
    "E302": "unknown capability",
    "E303": "duplicate task",
    "E304": "duplicate model alias",
    "E305": "unknown provider",
    "E306": "unknown feature",
    "E307": "unknown balance mode",
    "E308": "unknown setting",
    "E309": "unknown budget period",
    "E310": "setting value is not one of its choices",
    "E311": "unknown score term",
    "E312": "model not configured for its provider",
    "E313": "unknown function",
    "E314": "unknown ranker",
    "E315": "unknown rate limit unit",
    "E316": "duplicate rate limit",
    "E317": "tokenizer not available",
    "E318": "two `like` in one task",
    "E319": "similarity of a task without examples",
    "E320": "embedder not available",
    "E321": "embedder failed",
    "E322": "not an example of the task",
    "E323": "too many examples in a semantic task",
    # types and units
    "E400": "unit mismatch",
    "E401": "value out of range",
    "E402": "split weights do not add up to 100%",
    "E403": "model group too small",
    "E404": "min_agreement out of range",
    "E405": "empty experiment name",
    "E406": "rate limit keyed by a count",
    "E407": "similarity threshold or comparison out of range",
    # patterns
    "E500": "bad regex",
    "E501": "regex feature RE2 cannot run",
    "E502": "bad regex flag",
    # rules
    "E600": "rule after otherwise",
    "E601": "duplicate otherwise",
    # limits
    "E700": "policy too large",
}


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    span: Span | None = None
    label: str = ""
    hint: str | None = None
    notes: tuple[str, ...] = ()
    severity: str = "error"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def to_dict(self) -> dict[str, object]:
        span = self.span
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "file": span.file if span else None,
            "line": span.line if span else None,
            "col": span.col if span else None,
            "end_line": span.end_line if span else None,
            "end_col": span.end_col if span else None,
            "label": self.label,
            "hint": self.hint,
            "notes": list(self.notes),
        }


@dataclass
class Sources:
    """Source text by file name, so diagnostics can show the offending line."""

    texts: dict[str, str] = field(default_factory=dict)
    # file -> (the text it was split from, its lines): one split per file, not one per lookup
    _lines: dict[str, tuple[str, list[str]]] = field(default_factory=dict, repr=False, compare=False)

    def add(self, file: str, text: str) -> None:
        self.texts[file] = text

    def forget_lines(self) -> None:
        """Drop the split lines (kept while a compile looks many up); line() splits again when asked."""
        self._lines.clear()

    def line(self, file: str, line: int) -> str | None:
        text = self.texts.get(file)
        if text is None:
            try:
                text = read_regular(file, LARGE_FILE_BYTES).decode("utf-8", errors="replace")
            except OSError:
                return None
            self.texts[file] = text
        cached = self._lines.get(file)
        if cached is None or cached[0] is not text:  # first lookup, or the text was replaced
            cached = self._lines[file] = (text, text.split("\n"))  # the parser's lines: VT, NEL, U+2028 end none
        lines = cached[1]
        if 1 <= line <= len(lines):
            return lines[line - 1]
        return "" if line == len(lines) + 1 else None


def render(diag: Diagnostic, sources: Sources | None = None) -> str:
    """Render one diagnostic as text: header, location, source line with a caret, help."""
    sources = sources or Sources()
    out = [f"{diag.severity}[{diag.code}]: {diag.message}"]
    span = diag.span
    if span is None:
        for note in diag.notes:
            out.append(f"  = note: {note}")
        if diag.hint:
            out.append(f"  = help: {diag.hint}")
        return "\n".join(out)
    src = sources.line(span.file, span.line)
    gutter = len(str(span.line))
    pad = " " * gutter
    out.append(f"{pad}--> {span.file}:{span.line}:{span.col}")
    if src is not None:
        src = src.expandtabs(1)
        start = max(span.col - 1, 0)
        end = span.end_col - 1 if span.end_line == span.line else len(src)
        width = max(end - start, 1)
        out.append(f"{pad} |")
        out.append(f"{span.line} | {src}")
        caret = " " * start + "^" * width
        out.append(f"{pad} | {caret}{' ' + diag.label if diag.label else ''}")
    for note in diag.notes:
        out.append(f"{pad} = note: {note}")
    if diag.hint:
        out.append(f"{pad} = help: {diag.hint}")
    return "\n".join(out)


def render_all(diags: Iterable[Diagnostic], sources: Sources | None = None) -> str:
    diags = list(diags)
    sources = sources or Sources()
    parts = [render(d, sources) for d in diags]
    errors = sum(1 for d in diags if d.is_error)
    warnings = len(diags) - errors
    summary = []
    if errors:
        summary.append(f"{errors} error{'s' if errors != 1 else ''}")
    if warnings:
        summary.append(f"{warnings} warning{'s' if warnings != 1 else ''}")
    if summary:
        parts.append(", ".join(summary))
    return "\n\n".join(parts)


class PolicyError(Exception):
    """A policy (or its catalog) failed to compile; `diagnostics` holds every problem found, in order."""

    def __init__(self, diagnostics: Sequence[Diagnostic], sources: Sources | None = None):
        self.diagnostics = list(diagnostics)
        self.sources = sources or Sources()
        super().__init__(self.render())

    @property
    def codes(self) -> list[str]:
        return [d.code for d in self.diagnostics]

    def render(self) -> str:
        return render_all(self.diagnostics, self.sources)

    def to_json(self) -> str:
        return json.dumps({"ok": False, "diagnostics": [d.to_dict() for d in self.diagnostics]}, indent=2)


def did_you_mean(name: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean X?' hint for a misspelt name, or None when nothing is close."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    if name.lower() in lowered and lowered[name.lower()] != name:
        return f"did you mean {lowered[name.lower()]}?"
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]}?" if close else None
