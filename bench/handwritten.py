"""Hand-written routers, the baselines bench/decide_bench.py times `Engine.decide()` against: the bundled policy's
job done the way teams write it today (task regexes in, a model name out), and a generic loop over (patterns, model)
rules.

HandwrittenRouter mirrors policies/main.route rule by rule in an if/elif chain with capability scoring over the
catalog, after a loop of `re.search` calls (Python's re, not RE2) that detects every task of policies/tasks.route.
Like any hand-written router it has its own regex list: the pattern strings (patterns only: no detection by
meaning, so it stands for the bundled policy with its `like` items removed) are read from policies/tasks.route at
start-up, so the two never drift apart, and compiled here; the rule logic is written out by hand below.
decide_bench checks that it picks the same model as decide() on every prompt it times.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

from engine.language import nodes
from engine.language.load import bundled_policy_dir
from engine.language.parse import parse
from providers.catalog.models import ModelSpec, default_catalog

OUT_TOKENS = 500  # the same output estimate the engine uses for cost
#: the providers main.route lets free and trial users reach
FREE_PROVIDERS = ("openai", "anthropic", "gemini", "groq", "deepseek", "mistral")


def _phrase(words: str) -> str:
    body = r"\s+".join(re.escape(w) for w in words.split())
    start = r"\b" if (words[0].isalnum() or words[0] == "_") else ""
    end = r"\b" if (words[-1].isalnum() or words[-1] == "_") else ""
    return start + body + end


#: RE2's end of text `\z` (not preceded by an escaping backslash) is Python's `\Z`
_END = re.compile(r"(?<!\\)((?:\\\\)*)\\z")


def _compile(p: nodes.Pattern) -> re.Pattern[str]:
    flags = re.ASCII  # RE2's \b, \w, \s and \d are ASCII-only, like re.ASCII's
    flags |= 0 if "c" in p.flags else re.IGNORECASE
    flags |= re.DOTALL if "s" in p.flags else 0
    flags |= re.MULTILINE if "m" in p.flags else 0
    source = _END.sub(r"\1\\Z", p.source) if p.is_regex else _phrase(p.source)
    return re.compile(source, flags)


def task_patterns(path: Path | None = None) -> dict[str, list[re.Pattern[str]]]:
    """Each task's patterns from a task library (default: the bundled policies/tasks.route), compiled with
    Python's re; `like` items are left out."""
    path = path or bundled_policy_dir() / "tasks.route"
    body = parse(path.read_text(encoding="utf-8"), str(path)).body
    return {s.name: [_compile(p) for p in s.patterns] for s in body if isinstance(s, nodes.TaskDecl)}


class HandwrittenRouter:
    def __init__(self) -> None:
        self.tasks = task_patterns()
        catalog = default_catalog()
        self.today = datetime.date.today()
        #: chat models past no deprecation date (embedding models serve embedding requests only)
        self.models = [
            m
            for m in catalog.models.values()
            if "embeddings" not in m.supports and (m.deprecation_date is None or m.deprecation_date > self.today)
        ]
        self.by_name = {m.name: m for m in catalog.models.values()}

    def detect(self, prompt: str) -> set[str]:
        return {name for name, pats in self.tasks.items() if any(p.search(prompt) for p in pats)}

    def route(self, prompt: str, **attrs: Any) -> str:
        tokens = (len(prompt) + 3) // 4
        tier = attrs.get("tier")
        tools = bool(attrs.get("tools"))
        if attrs.get("endpoint") == "embeddings":
            return "text-embedding-3-small"
        tasks = self.detect(prompt)

        def fits(m: ModelSpec) -> bool:
            return m.context >= tokens and (not tools or "tools" in m.supports)

        def cost(m: ModelSpec) -> float:
            return tokens * m.input_price + OUT_TOKENS * m.output_price

        def cap(m: ModelSpec, name: str) -> float:
            return m.capabilities.get(name, 0)

        def best(models: list[ModelSpec], key: Any, fallback: str | None = None) -> str | None:
            ranked = sorted(models, key=lambda m: (key(m), m.name))
            if ranked:
                return ranked[0].name
            return fallback if fallback and fits(self.by_name[fallback]) else None

        def use(name: str, fallback: str | None = None) -> str | None:
            if fits(self.by_name[name]):
                return name
            return fallback if fallback and fits(self.by_name[fallback]) else None

        ok = [m for m in self.models if fits(m)]
        choice = None
        if tokens > 150_000:
            choice = best([m for m in ok if m.context >= 1_000_000], cost)
        if choice is None and tier in ("pro", "enterprise") and "legal" in tasks:
            choice = use("claude-opus-4-6", "gpt-5")
        if choice is None and "code" in tasks and tokens > 30_000:
            choice = best(
                [m for m in ok if m.context >= 200_000], lambda m: (-cap(m, "CODING"), cost(m)), "gemini-2.5-flash"
            )
        if choice is None and "code" in tasks:
            fast = [m for m in ok if m.latency_ms <= 2000 and m.input_price <= 5e-6]
            choice = best(fast, lambda m: (-cap(m, "CODING"), cost(m)), "gpt-5-mini")
        if choice is None and "math" in tasks:
            choice = best(
                [m for m in ok if m.input_price <= 20e-6],
                lambda m: (-cap(m, "REASONING"), cost(m)),
                "deepseek-reasoner",
            )
        if choice is None and "complex" in tasks:
            choice = best(
                [m for m in ok if m.input_price <= 20e-6],
                lambda m: (-cap(m, "REASONING"), cost(m)),
                "claude-sonnet-4-6",
            )
        if choice is None and tier in ("free", "trial") and attrs.get("local"):
            choice = best(ok, lambda m: (cost(m), -cap(m, "REASONING")))
        if choice is None and tier in ("free", "trial"):
            choice = best([m for m in ok if m.provider in FREE_PROVIDERS], lambda m: (cost(m), -cap(m, "REASONING")))
        if choice is None and "summarize" in tasks and not tools:
            choice = best([m for m in ok if cap(m, "REASONING") >= 7], lambda m: m.latency_ms)
        if choice is None and "translate" in tasks:
            choice = best([m for m in ok if cap(m, "CREATIVITY") >= 7], cost)
        if choice is None and "creative" in tasks:
            choice = best([m for m in ok if cost(m) <= 0.02], lambda m: (-cap(m, "CREATIVITY"), cost(m)), "gpt-5-mini")
        if choice is None and "extract" in tasks:
            choice = best([m for m in ok if cap(m, "REASONING") >= 7], lambda m: (cost(m), m.latency_ms))
        if choice is None and "advice" in tasks:
            choice = best(
                [m for m in ok if m.input_price <= 5e-6], lambda m: (-cap(m, "REASONING"), cost(m)), "gpt-5-mini"
            )
        if choice is None:
            choice = use("gpt-4o-mini", "claude-haiku-4-5")
        if choice is None:
            raise LookupError("no route")
        return choice


class HandwrittenRuleLoop:
    """The generic form teams reach for with many rules: a list of (patterns, model) checked in order."""

    def __init__(self, rules: list[tuple[list[str], str | None, str]], default: str):
        self.rules = [([re.compile(p, re.I) for p in pats], tier, model) for pats, tier, model in rules]
        self.default = default

    def route(self, prompt: str, **attrs: Any) -> str:
        tier = attrs.get("tier")
        for pats, want_tier, model in self.rules:
            if (want_tier is None or tier == want_tier) and any(p.search(prompt) for p in pats):
                return model
        return self.default


if __name__ == "__main__":
    print("bench/handwritten.py is the hand-written router that bench/decide_bench.py times; run that instead")
