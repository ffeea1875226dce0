"""Policy diff: two compiled policies and a corpus of requests in, the decisions that change (and the cost) out.

Each request is decided by both engines. A decision *changes* when the chosen model differs, or when one side
finds a route and the other does not; a changed deciding rule (same model) and changed fallbacks are counted
separately. Costs use the engine's own estimate: `tokens x input price + output tokens x output price`
(Entry.cost with Request.out_tokens), summed over the corpus.

Rules are matched across the two policies by RuleId: the file relative to the policy's root (the entry file's
directory; the entry file itself matches the other entry file whatever their names), the rule's text (one line,
comments dropped) and its index among the rules of that file with that text. The line number is only shown, so
two copies of one policy in different folders compare equal, and comments, blank lines or moved lines change
nothing.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.api import DECIDE_ARGUMENTS, Engine
from engine.runtime.decision import NoRouteError
from engine.runtime.jsoninput import TooDeepError, check_messages, load_json
from engine.runtime.policy import CompiledPolicy

NO_ROUTE = "(no route)"


class CorpusError(ValueError):
    """A line of the prompts file is not a request; message says which line and why."""


@dataclass(frozen=True)
class Request:
    line: int
    prompt: str | None
    messages: list[Mapping[str, Any]] | None
    attrs: dict[str, Any]

    @property
    def preview(self) -> str:
        text = self.prompt
        if text is None and self.messages:
            users = [m for m in self.messages if m.get("role") == "user"] or self.messages
            content = users[-1].get("content")
            text = content if isinstance(content, str) else json.dumps(content)
        text = " ".join((text or "").split())
        return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class RuleId:
    """A rule's identity across two copies of a policy: equal for the same rule wherever the policy lives and
    however comments, blank lines and other rules move it. `shown` (file:line) is for people and takes no part
    in comparisons."""

    file: str  # relative to the policy's root, "/"-separated; "" for the entry file
    text: str  # the rule as written, on one line, without comments
    index: int  # among the rules of `file` with this `text`, in policy order (0 for the first)
    shown: str = field(compare=False)

    def __str__(self) -> str:
        return self.shown


def rule_ids(policy: CompiledPolicy) -> dict[int, RuleId]:
    """The RuleId of every rule of a compiled policy, by rule index."""
    root = Path(policy.entry).resolve().parent
    entry = Path(policy.entry).resolve()
    names: dict[str, tuple[str, str]] = {}  # rule.file as loaded -> (file for identity, file for display)
    seen: Counter[tuple[str, str]] = Counter()
    ids: dict[int, RuleId] = {}
    for rule in policy.rules:
        if rule.file not in names:
            real = Path(rule.file).resolve()
            try:
                relative = Path(os.path.relpath(real, root)).as_posix()
            except ValueError:  # on another drive (Windows)
                relative = real.as_posix()
            names[rule.file] = ("" if real == entry else relative, relative)
        file, shown = names[rule.file]
        index = seen[(file, rule.text)]
        seen[(file, rule.text)] += 1
        ids[rule.index] = RuleId(file, rule.text, index, f"{shown}:{rule.line}")
    return ids


@dataclass(frozen=True)
class Outcome:
    """One side's decision for one request."""

    model: str | None
    rule: str | None  # the deciding rule as shown: file (relative to the policy's root):line
    fallbacks: tuple[str, ...]
    cost: float  # estimated USD (0 when there is no route)
    rule_id: RuleId | None = None  # what rule changes are judged by (None when there is no route)


@dataclass
class RequestDiff:
    request: Request
    old: Outcome
    new: Outcome

    @property
    def model_changed(self) -> bool:
        return self.old.model != self.new.model

    @property
    def rule_changed(self) -> bool:
        return not self.model_changed and self.old.rule_id != self.new.rule_id

    @property
    def fallbacks_changed(self) -> bool:
        return not self.model_changed and self.old.fallbacks != self.new.fallbacks


@dataclass
class DiffResult:
    old_policy: str
    new_policy: str
    rows: list[RequestDiff] = field(default_factory=list)

    @property
    def changed(self) -> list[RequestDiff]:
        return [r for r in self.rows if r.model_changed]

    def transitions(self) -> list[tuple[str, str, int]]:
        """(old model, new model, count) for every change, most frequent first."""
        counts = Counter((r.old.model or NO_ROUTE, r.new.model or NO_ROUTE) for r in self.changed)
        return [(a, b, c) for (a, b), c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]

    def rule_transitions(self) -> list[tuple[str, str, int]]:
        """(old rule, new rule, count) of the requests whose model changed."""
        counts = Counter((r.old.rule or NO_ROUTE, r.new.rule or NO_ROUTE) for r in self.changed)
        return [(a, b, c) for (a, b), c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]

    @property
    def old_cost(self) -> float:
        return sum(r.old.cost for r in self.rows)

    @property
    def new_cost(self) -> float:
        return sum(r.new.cost for r in self.rows)

    def summary(self) -> dict[str, Any]:
        old, new = self.old_cost, self.new_cost
        return {
            "old": self.old_policy,
            "new": self.new_policy,
            "requests": len(self.rows),
            "changed": len(self.changed),
            "rule_changed_same_model": sum(1 for r in self.rows if r.rule_changed),
            "fallbacks_changed_same_model": sum(1 for r in self.rows if r.fallbacks_changed),
            "no_route": {
                "old": sum(1 for r in self.rows if r.old.model is None),
                "new": sum(1 for r in self.rows if r.new.model is None),
            },
            "cost": {"old": old, "new": new, "delta": new - old, "delta_pct": _percent(new - old, old)},
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The result as a strict JSON document (what `modelroute diff --json` prints): a number too large to be
        finite (a cost from an absurd max_tokens) is null, never `Infinity` or `NaN`."""
        return json.dumps(_finite(self.to_dict()), indent=indent, allow_nan=False)

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data: the summary, the transitions and every changed request. `cost.delta_pct`
        is null when the old cost is 0 or the percentage is not a finite number."""
        return {
            **self.summary(),
            "transitions": [{"from": a, "to": b, "count": c} for a, b, c in self.transitions()],
            "rule_transitions": [{"from": a, "to": b, "count": c} for a, b, c in self.rule_transitions()],
            "changes": [
                {
                    "line": r.request.line,
                    "prompt": r.request.preview,
                    "attrs": r.request.attrs,
                    "old": _outcome_json(r.old),
                    "new": _outcome_json(r.new),
                }
                for r in self.changed
            ],
        }


def _percent(delta: float, base: float) -> float | None:
    """`delta` as a percentage of `base`; None when base is 0 or the result is not finite."""
    if not base or not math.isfinite(base) or not math.isfinite(delta):
        return None
    try:
        pct = delta / base * 100
    except (OverflowError, ZeroDivisionError):
        return None
    return pct if math.isfinite(pct) else None


def _finite(value: Any) -> Any:
    """`value` with every non-finite float (inf, -inf, nan) in it, at any depth, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _outcome_json(o: Outcome) -> dict[str, Any]:
    return {"model": o.model, "rule": o.rule, "fallbacks": list(o.fallbacks), "cost": o.cost}


# ---- the corpus -------------------------------------------------------------------------------------------


def read_corpus(path: Path) -> list[Request]:
    """Parse a JSONL file of requests; raises CorpusError naming the first bad line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return list(parse_corpus(text.splitlines(), str(path)))


def parse_corpus(lines: Iterable[str], name: str = "<prompts>") -> Iterator[Request]:
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            obj = load_json(raw)
        except TooDeepError as exc:
            raise CorpusError(f"{name}:{number}: {exc}") from None
        except ValueError as exc:
            raise CorpusError(f"{name}:{number}: not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise CorpusError(f'{name}:{number}: expected a JSON object with "prompt" or "messages"')
        prompt, messages, attrs = obj.get("prompt"), obj.get("messages"), obj.get("attrs", {})
        if (prompt is None) == (messages is None):
            raise CorpusError(f'{name}:{number}: give exactly one of "prompt" (a string) or "messages"')
        if prompt is not None and not isinstance(prompt, str):
            raise CorpusError(f'{name}:{number}: "prompt" must be a string')
        checked: list[Mapping[str, Any]] | None = None
        if messages is not None:
            try:
                checked = [*check_messages(messages)]
            except ValueError as exc:
                raise CorpusError(f'{name}:{number}: "messages": {exc}') from None
        if not isinstance(attrs, dict):
            raise CorpusError(f'{name}:{number}: "attrs" must be an object')
        if any(k in attrs for k in DECIDE_ARGUMENTS):
            raise CorpusError(f'{name}:{number}: "prompt" and "messages" cannot be attributes')
        yield Request(number, prompt, checked, attrs)


# ---- deciding ---------------------------------------------------------------------------------------------


def outcome(engine: Engine, req: Request, seed: int, ids: Mapping[int, RuleId] | None = None) -> Outcome:
    """Decide one request. `seed` makes random strategies (balance random, split without a user) pick the
    same arm on both sides of a diff; `ids` is rule_ids(engine.policy), computed when not given."""
    if ids is None:
        ids = rule_ids(engine.policy)
    random.seed(seed)
    try:
        d = engine.decide(req.prompt, messages=req.messages, **req.attrs)
    except NoRouteError:
        return Outcome(None, None, (), 0.0)
    except (TypeError, ValueError) as exc:  # e.g. "tokens": "many"
        raise CorpusError(f"line {req.line}: {exc}") from None
    entry = engine.policy.models[d.model]
    cost = entry.cost(d.request.tokens, d.request.out_tokens)
    rule = ids[d.rule.index]
    return Outcome(d.model, rule.shown, tuple(d.fallbacks), cost, rule)


def diff_policies(old: Engine, new: Engine, corpus: Iterable[Request]) -> DiffResult:
    result = DiffResult(old.policy.entry, new.policy.entry)
    old_ids, new_ids = rule_ids(old.policy), rule_ids(new.policy)
    for i, req in enumerate(corpus):
        result.rows.append(RequestDiff(req, outcome(old, req, i, old_ids), outcome(new, req, i, new_ids)))
    return result


# ---- text report ------------------------------------------------------------------------------------------


def _money(x: float) -> str:
    return f"${x:,.4f}" if abs(x) < 100 else f"${x:,.2f}"


def render_text(result: DiffResult, limit: int = 20) -> str:
    s = result.summary()
    lines = [
        f"{s['requests']} requests: {s['changed']} decisions changed"
        + (f", {s['rule_changed_same_model']} same model by another rule" if s["rule_changed_same_model"] else "")
        + (
            f", {s['fallbacks_changed_same_model']} same model with other fallbacks"
            if s["fallbacks_changed_same_model"]
            else ""
        )
    ]
    if s["no_route"]["old"] or s["no_route"]["new"]:
        lines.append(f"no route: {s['no_route']['old']} before, {s['no_route']['new']} after")
    if result.changed:
        lines += ["", "model changes"]
        width = max(len(a) for a, _, _ in result.transitions())
        for a, b, c in result.transitions():
            lines.append(f"  {c:>6}  {a.ljust(width)} -> {b}")
        lines += ["", "by rule (old -> new)"]
        width = max(len(a) for a, _, _ in result.rule_transitions())
        for a, b, c in result.rule_transitions():
            lines.append(f"  {c:>6}  {a.ljust(width)} -> {b}")
        lines += ["", "changed requests" + (f" (first {limit})" if len(result.changed) > limit else "")]
        for r in result.changed[:limit]:
            attrs = " " + json.dumps(r.request.attrs, sort_keys=True) if r.request.attrs else ""
            lines.append(f"  line {r.request.line}: {json.dumps(r.request.preview)}{attrs}")
            lines.append(
                f"      {r.old.model or NO_ROUTE} ({r.old.rule or '-'}) -> "
                f"{r.new.model or NO_ROUTE} ({r.new.rule or '-'})"
            )
    cost = s["cost"]
    pct = f" ({cost['delta_pct']:+.1f}%)" if cost["delta_pct"] is not None else ""
    lines += [
        "",
        f"projected cost for this corpus: {_money(cost['old'])} -> {_money(cost['new'])}, "
        f"{'+' if cost['delta'] >= 0 else '-'}{_money(abs(cost['delta']))}{pct}",
    ]
    return "\n".join(lines)
