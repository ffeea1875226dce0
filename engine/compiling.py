"""Compiling for the API: a policy path or policy text (with the functions, rankers and embedder it calls) in, a
CompiledPolicy out; engine.api re-exports compile_policy and compile_source."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from engine.compiler.passes import compile_loaded
from engine.language.load import Loaded, bundled_policy_dir, load, load_source, one_reading
from engine.options import extension_functions
from engine.runtime.embedder import Embedder
from engine.runtime.policy import CompiledPolicy


def compile_policy(
    path: str | Path | None = None,
    *,
    catalog: Any = None,
    today: datetime.date | None = None,
    functions: Mapping[str, Callable[..., Any]] | None = None,
    rankers: Mapping[str, Callable[..., Any]] | None = None,
    embedder: Embedder | None = None,
) -> CompiledPolicy:
    """Load and compile a policy file or directory (default: the bundled policy). Raises PolicyError.

    `today` is the date deprecations count from (default: the date now): `prefer` never ranks a catalog model
    whose deprecation_date is on or before it. `functions` / `rankers`: the Python functions and rankers the
    policy calls (see Engine.functions); a call to one not given is an error (E313, E314). `embedder`: embeds the
    examples of semantic tasks (`like`) and the requests (see Engine.embedder; None: the default, when needed)."""
    with one_reading():
        return _compile(
            load(path if path is not None else bundled_policy_dir()), catalog, today, functions, rankers, embedder
        )


def compile_source(
    text: str,
    file: str = "<string>",
    *,
    catalog: Any = None,
    today: datetime.date | None = None,
    functions: Mapping[str, Callable[..., Any]] | None = None,
    rankers: Mapping[str, Callable[..., Any]] | None = None,
    embedder: Embedder | None = None,
) -> CompiledPolicy:
    """Compile policy text (includes, catalog and example file paths resolve from the working directory); see
    compile_policy."""
    with one_reading():
        return _compile(load_source(text, file), catalog, today, functions, rankers, embedder)


def _compile(
    loaded: Loaded,
    catalog: Any,
    today: datetime.date | None,
    functions: Mapping[str, Callable[..., Any]] | None,
    rankers: Mapping[str, Callable[..., Any]] | None,
    embedder: Embedder | None,
) -> CompiledPolicy:
    """compile_policy's and compile_source's one body: the extensions checked, then every compiler pass."""
    return compile_loaded(
        loaded,
        catalog,
        today=today,
        functions=_given("functions", functions),
        rankers=_given("rankers", rankers),
        embedder=_embedder(embedder),
    )


def _embedder(embedder: Embedder | None) -> Embedder | None:
    """`embedder=` checked: a callable (texts in, one vector per text out) or None."""
    if embedder is not None and not callable(embedder):
        raise TypeError(f"embedder must be a callable taking a list of texts, not {type(embedder).__name__}")
    return embedder


def _given(kind: str, given: Mapping[str, Callable[..., Any]] | None) -> Mapping[str, Callable[..., Any]] | None:
    """`functions=` / `rankers=` checked (engine/options.py); None when there are none, so that a call names
    what is not provided."""
    return extension_functions(kind, given) or None
