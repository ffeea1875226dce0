"""Compiler context: a loaded policy in, the shared state every pass reads and extends (its declarations, patterns,
catalog lookups and diagnostics) out."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.diagnostics import Diagnostic, did_you_mean
from engine.language import nodes as n
from engine.language.load import Loaded
from engine.runtime.functions import Function, Ranker
from engine.runtime.qualified import adhoc_spec, known_providers, resolve_qualified, split_name
from engine.runtime.semantic import SemanticTask
from providers.catalog.models import Catalog, ModelSpec


@dataclass
class Context:
    """State shared by the passes; each pass reads it, adds to it and appends diagnostics."""

    loaded: Loaded
    today: datetime.date  # models deprecated on or before it are not ranked (compile_loaded passes it)
    catalog: Catalog | None = None
    given_catalog: Catalog | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    tasks: dict[str, n.TaskDecl] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # policy alias -> canonical model name
    pids: dict[str, int] = field(default_factory=dict)  # re2 source -> pattern id
    pattern_of: dict[int, int] = field(default_factory=dict)  # id(Pattern node) -> pattern id
    pattern_text: list[str] = field(default_factory=list)
    display: list[str] = field(default_factory=list)  # pid -> RE2 source that explain searches for matched text
    rules: list[n.Rule] = field(default_factory=list)
    settings: dict[str, n.Setting] = field(default_factory=dict)
    budgets: list[n.Budget] = field(default_factory=list)
    limits: list[n.RateLimit] = field(default_factory=list)
    tests: list[n.TestBlock] = field(default_factory=list)
    adhoc: dict[str, ModelSpec] = field(default_factory=dict)  # `provider:model` names the catalog does not list
    functions: Mapping[str, Function] | None = None  # Engine.load(functions=...); None: none were provided
    rankers: Mapping[str, Ranker] | None = None  # Engine.load(rankers=...); None: none were provided
    embedder: Any = None  # Engine.load(embedder=...); None: the default one, asked for only when a task has `like`
    #: task -> (its `like`, its examples, their spans, its example file or None, its threshold): pass_semantic
    examples: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    semantic: dict[str, SemanticTask] = field(default_factory=dict)  # pass_embed: the tasks with examples, embedded
    embedder_used: Any = None  # the embedder the semantic tasks were embedded with

    @functools.cached_property
    def adhoc_allowed(self) -> bool:
        """`set adhoc_models = true` anywhere in the policy (the last `set` wins, as for every setting)."""
        value = False
        for stmt in self.loaded.body:
            if isinstance(stmt, n.Setting) and stmt.name == "adhoc_models" and isinstance(stmt.value, n.Literal):
                value = stmt.value.value is True
        return value

    def lookup(self, name: str) -> ModelSpec | None:
        """The model a reference names: a policy alias, a catalog name or alias, `provider:model`, or an ad-hoc
        model already allowed."""
        assert self.catalog is not None
        name = self.aliases.get(name, name)
        spec = self.catalog.resolve(name)
        if spec is None and ":" in name:
            spec = resolve_qualified(self.catalog, name) or self.adhoc.get(name)
        return spec

    def error(
        self,
        code: str,
        message: str,
        span: n.Span | None,
        label: str = "",
        hint: str | None = None,
        notes: tuple[str, ...] = (),
    ) -> None:
        self.diagnostics.append(Diagnostic(code, message, span, label, hint, notes))

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.diagnostics)

    def resolve_model(self, ref: n.ModelRef) -> str | None:
        """The canonical catalog name for a model reference; reports E300 when unknown (E305 / E312 for a
        `provider:model` name whose provider is unknown, or whose model the catalog does not list)."""
        assert self.catalog is not None
        spec = self.lookup(ref.name)
        if spec is not None:
            return spec.name
        parts = split_name(self.aliases.get(ref.name, ref.name))
        if parts is not None:
            return self._qualified(ref, *parts)
        names = [*self.catalog.names(), *self.aliases]
        self.error(
            "E300",
            f"unknown model `{ref.name}`",
            ref.span,
            "not in the catalog",
            did_you_mean(ref.name, names) or "run `modelroute catalog` to list the models",
        )
        return None

    def _qualified(self, ref: n.ModelRef, provider: str, model: str) -> str | None:
        """A `provider:model` name the catalog does not list: an ad-hoc model when the policy allows them."""
        assert self.catalog is not None
        providers = known_providers(self.catalog)
        if provider not in providers:
            self.error(
                "E305",
                f"unknown provider `{provider}` in `{ref.name}`",
                ref.span,
                "no such provider",
                did_you_mean(provider, providers) or "providers: " + ", ".join(sorted(providers)),
            )
            return None
        if self.adhoc_allowed:
            spec = self.adhoc[f"{provider}:{model}"] = adhoc_spec(provider, model)
            return spec.name
        listed = [f"{provider}:{m.name}" for m in self.catalog.models.values() if m.provider == provider]
        self.error(
            "E312",
            f"`{ref.name}`: the catalog lists no {provider} model `{model}`",
            ref.span,
            f"no such {provider} model",
            did_you_mean(ref.name, listed)
            or f"`set adhoc_models = true` sends it to {provider} as model id `{model}` (its price is unknown)",
        )
        return None
