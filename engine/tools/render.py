"""Report rendering: a decision Report in, a markdown document or a self-contained html page out (jinja2)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jinja2

from engine.runtime.report import Report

TEMPLATES = Path(__file__).resolve().parent / "templates"


@functools.lru_cache(maxsize=2)
def _env(html: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=html,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = _md_escape
    env.filters["attr_value"] = _attr_value
    return env


def _md_escape(text: Any) -> str:
    """Text safe inside a markdown table cell or line: pipes, backticks, angle brackets and newlines."""
    out = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    out = out.replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*").replace("_", "\\_")
    return " ".join(out.splitlines())


def _attr_value(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _context(report: Report) -> dict[str, Any]:
    ranked = [c for c in report.candidates if c.rank is not None]
    ranked.sort(key=lambda c: c.rank or 0)
    return {
        "r": report,
        "ranked": ranked,
        "rejected": [c for c in report.candidates if c.status == "rejected"],
        "unnamed": [c for c in report.candidates if c.status == "not named"],
        "outcome_label": {"decided": "decided", "no match": "no match", "no viable model": "matched, no viable model"},
    }


def render_markdown(report: Report) -> str:
    """The explain report as a GitHub-flavoured markdown document."""
    return _env(False).get_template("explain.md.j2").render(**_context(report)).rstrip("\n") + "\n"


def render_html(report: Report) -> str:
    """The explain report as one self-contained html page: inline CSS, no scripts, no external resources."""
    return _env(True).get_template("explain.html.j2").render(**_context(report))
