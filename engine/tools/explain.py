"""Explain rendering for the toolchain: a Report in, rich markup or plain/colored text out.

The renderer itself is engine.runtime.explain (a Decision explains itself without the toolchain); this
module is the toolchain's name for it."""

from __future__ import annotations

from engine.runtime.explain import render_markup, render_text

__all__ = ["render_markup", "render_text"]
