"""A hand-written Python router doing the bundled policy's job the way teams write it today: a loop of
`re.search` calls over the prompt for task detection, then an if/elif chain with capability scoring over
the catalog. It is the baseline the benchmarks compare `Engine.decide()` against (and must agree with it)."""

from __future__ import annotations

import datetime
import re
from typing import Any

from providers.catalog.models import default_catalog

OUT_TOKENS = 500  # the same output estimate the engine uses for cost


def _phrase(words: str) -> str:
    body = r"\s+".join(re.escape(w) for w in words.split())
    start = r"\b" if (words[0].isalnum() or words[0] == "_") else ""
    end = r"\b" if (words[-1].isalnum() or words[-1] == "_") else ""
    return start + body + end


TASKS: dict[str, list[re.Pattern[str]]] = {
    "code": [
        re.compile(p, re.I)
        for p in (
            r"(write|create|generate) (a |an |the |some )?(\w+ ){0,2}"
            r"(code|function|class|script|program|tests?|method|query|component)",
            r"implement",
            r"refactor",
            _phrase("debug"),
            _phrase("stack trace"),
            _phrase("traceback"),
            r"```\w+",
            r"\bdef \w+\(",
            r"\bfunction \w+\(",
        )
    ],
    "summarize": [re.compile(_phrase(p), re.I) for p in ("summarize", "summarise", "summary", "tl;dr", "key points")],
    "math": [
        re.compile(p, re.I)
        for p in (
            _phrase("prove"),
            _phrase("theorem"),
            _phrase("integral"),
            _phrase("derivative"),
            r"\bsolve\b.*\bequation",
        )
    ],
    "translate": [
        re.compile(p, re.I)
        for p in (
            r"translate (this|the following|it|into|to)",
            _phrase("in french"),
            _phrase("in spanish"),
            _phrase("in german"),
        )
    ],
    "creative": [
        re.compile(p, re.I)
        for p in (r"write (a |an )?(poem|story|song|haiku|limerick|novel)", _phrase("brainstorm"), _phrase("slogan"))
    ],
    "legal": [re.compile(_phrase(p), re.I) for p in ("contract", "nda", "indemnif", "liability", "clause")],
}


class HandwrittenRouter:
    def __init__(self) -> None:
        self.models = list(default_catalog().models.values())
        self.today = datetime.date.today()

    def detect(self, prompt: str) -> set[str]:
        return {name for name, pats in TASKS.items() if any(p.search(prompt) for p in pats)}

    def route(self, prompt: str, **attrs: Any) -> str:
        tokens = (len(prompt) + 3) // 4
        tasks = self.detect(prompt)
        tier = attrs.get("tier")
        tools = bool(attrs.get("tools"))

        def fits(m) -> bool:
            return m.context >= tokens and (not tools or "tools" in m.supports)

        def cost(m) -> float:
            return tokens * m.input_price + OUT_TOKENS * m.output_price

        def cap(m, name: str) -> float:
            return m.capabilities.get(name, 0)

        def best(models, key) -> str | None:
            ranked = sorted(models, key=lambda m: (key(m), m.name))
            return ranked[0].name if ranked else None

        by_name = {m.name: m for m in self.models}
        current = [m for m in self.models if m.deprecation_date is None or m.deprecation_date > self.today]
        choice = None
        if tokens > 150_000:
            choice = best([m for m in current if m.context >= 1_000_000 and fits(m)], cost)
        if choice is None and tier in ("pro", "enterprise") and "legal" in tasks and fits(by_name["claude-opus-4-6"]):
            choice = "claude-opus-4-6"
        if choice is None and "code" in tasks and tokens > 30_000:
            choice = best(
                [m for m in current if fits(m) and m.context >= 200_000], lambda m: (-cap(m, "CODING"), cost(m))
            )
        if choice is None and "code" in tasks:
            ok = [m for m in current if fits(m) and m.latency_ms <= 2000 and m.input_price <= 5e-6]
            choice = best(ok, lambda m: (-cap(m, "CODING"), cost(m)))
        if choice is None and "math" in tasks:
            choice = best(
                [m for m in current if fits(m) and m.input_price <= 20e-6], lambda m: (-cap(m, "REASONING"), cost(m))
            )
        if choice is None and tier in ("free", "trial"):
            choice = best([m for m in current if fits(m)], lambda m: (cost(m), -cap(m, "REASONING")))
        if choice is None and "summarize" in tasks and not tools:
            choice = best([m for m in current if fits(m) and cap(m, "REASONING") >= 7], lambda m: m.latency_ms)
        if choice is None and "translate" in tasks:
            choice = best([m for m in current if fits(m) and cap(m, "CREATIVITY") >= 7], cost)
        if choice is None and "creative" in tasks:
            choice = best(
                [m for m in current if fits(m) and cost(m) <= 0.02], lambda m: (-cap(m, "CREATIVITY"), cost(m))
            )
        if choice is None and fits(by_name["gpt-4o-mini"]):
            choice = "gpt-4o-mini"
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
