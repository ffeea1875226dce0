"""A deliberately simple reference interpreter of the .route language, for the differential test.

It is written from the language reference (README.md, "A policy" and "Language tour"), not from
engine/evaluate.py: no rule index, no RE2 set, no compile-time filtering, no threshold search. It re-reads
the parsed statements on every call and does everything the slow, obvious way:

* every rule is tried in file order; a rule decides when its condition holds and at least one model survives;
* patterns run one by one with Python's `re` (ASCII mode, so `\\b`, `\\w` and `\\s` mean what they mean in RE2);
* `prefer` ranks every catalog model with Python's `sorted` on a key tuple ending in the model name;
* Python functions (`complexity()`) and rankers (`prefer custom(NAME)`) are called every time they are read, with
  a plain namespace as the request (docs/language.md, "Python functions": the text, messages, tokens, attributes).

Parsing is shared with the engine (engine.load.load_source / engine.parse.parse give the statements); the
semantics here are independent. The interpreter assumes the policy compiles (names resolve, units check).
"""

from __future__ import annotations

import decimal
import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping
from types import SimpleNamespace
from typing import Any

from engine.language import nodes as n

DEFAULT_OUTPUT_TOKENS = 500  # README, "Cost": output tokens are max_tokens when given, else 500

_MISSING = object()


# ---- request ---------------------------------------------------------------------------------------------


def estimate_tokens(text: str) -> int:
    """README, "Tokens": ceil(characters / 4)."""
    return math.ceil(len(text) / 4)


def lookup(attrs: Mapping[str, Any], name: str) -> Any:
    """A request attribute; dotted names look into nested dicts. _MISSING when the caller did not pass it."""
    if name in attrs:
        return attrs[name]
    if "." not in name:
        return _MISSING
    value: Any = attrs
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


# ---- patterns --------------------------------------------------------------------------------------------


def python_regex(pattern: n.Pattern) -> re.Pattern[str]:
    """The policy pattern as a Python regex with RE2's meaning (for the simple patterns the tests use)."""
    flags = re.ASCII
    if "c" not in pattern.flags:
        flags |= re.IGNORECASE  # case-insensitive unless /.../c
    if pattern.is_regex:
        source = pattern.source
        if "s" in pattern.flags:
            flags |= re.DOTALL
        if "m" in pattern.flags:
            flags |= re.MULTILINE
        else:
            # RE2 without (?m): `$` is the very end of the text (Python's `$` also matches before a final \n).
            source = re.sub(r"(?<!\\)\$", r"\\Z", source)
        return re.compile(source, flags)
    # A phrase: its words in order, separated by any whitespace, not inside a longer word.
    words = pattern.source.split()
    body = r"\s+".join(re.escape(w) for w in words)
    if re.match(r"\w", words[0][0], re.ASCII):
        body = r"(?<!\w)" + body
    if re.match(r"\w", words[-1][-1], re.ASCII):
        body += r"(?!\w)"
    return re.compile(body, flags)


def found(pattern: n.Pattern, prompt: str) -> bool:
    return python_regex(pattern).search(prompt) is not None


# ---- conditions ------------------------------------------------------------------------------------------


def literal_value(lit: n.Literal) -> Any:
    return lit.value  # already normalised by the parser (k/M applied, units to per-token / seconds / USD)


def _compare(left: Any, op: str, right: Any) -> bool:
    try:
        if op == "==":
            return bool(left == right)
        if op == "!=":
            return bool(left != right)
        if op == "<":
            return bool(left < right)
        if op == "<=":
            return bool(left <= right)
        if op == ">":
            return bool(left > right)
        if op == ">=":
            return bool(left >= right)
    except TypeError:  # README: a comparison between mismatched types is false
        return False
    raise ValueError(op)


Functions = Mapping[str, Callable[..., Any]]


def _failed(value: Any) -> bool:
    """docs/language.md, "Python functions": a call has no value unless it returns a bool or a number."""
    return not isinstance(value, (bool, int, float))


class Request:
    def __init__(
        self,
        prompt: str,
        attrs: Mapping[str, Any],
        tasks: Mapping[str, n.TaskDecl],
        functions: Functions | None = None,
        rankers: Functions | None = None,
    ):
        self.prompt = prompt
        self.functions = functions or {}
        self.rankers = rankers or {}
        # README, "Request counts": a prompt is one message, one turn; words are runs of non-space characters.
        # They are derived from the request, never taken from the caller.
        self.attrs = {**attrs, "messages": 1, "turns": 1, "words": len(prompt.split())}
        self.tasks = tasks
        self.tokens = estimate_tokens(prompt)
        out = attrs.get("max_tokens")
        given = isinstance(out, (int, float)) and not isinstance(out, bool) and out > 0
        self.out_tokens = out if given else DEFAULT_OUTPUT_TOKENS
        self.tools = bool(attrs.get("tools"))
        self.images = bool(attrs.get("images"))

    def view(self) -> SimpleNamespace:
        """What a function sees: the prompt as one user message, the tokens, the attributes the caller passed and
        the ones derived from the request."""
        messages = ({"role": "user", "content": self.prompt},)
        return SimpleNamespace(text=self.prompt, messages=messages, tokens=self.tokens, attrs=dict(self.attrs))

    def call(self, name: str) -> Any:
        """A function's value, or _MISSING when it raises or returns neither a bool nor a number."""
        try:
            value = self.functions[name](self.view())
        except Exception:
            return _MISSING
        return _MISSING if _failed(value) else value

    def rank(self, name: str, spec: Any) -> float | None:
        """A ranker's number for a model, or None when it raises or returns no finite number."""
        try:
            value = self.rankers[name](self.view(), spec)
        except Exception:
            return None
        return float(value) if not _failed(value) and math.isfinite(value) else None

    def operand(self, op: n.Operand) -> Any:
        if op.call:
            return self.call(op.name)
        return self.tokens if op.builtin else lookup(self.attrs, op.name)

    def holds(self, cond: n.Cond | None) -> bool:
        if cond is None:  # otherwise
            return True
        if isinstance(cond, n.And):
            return all(self.holds(c) for c in cond.operands)
        if isinstance(cond, n.Or):
            return any(self.holds(c) for c in cond.operands)
        if isinstance(cond, n.Not):
            return not self.holds(cond.operand)
        if isinstance(cond, n.TaskMatch):
            return found(cond.pattern, self.prompt)
        if isinstance(cond, n.TaskIs):
            return any(found(p, self.prompt) for p in self.tasks[cond.name].patterns)
        if isinstance(cond, n.Truthy):
            value = self.operand(cond.operand)
            return value is not _MISSING and bool(value)
        if isinstance(cond, n.Compare):
            value = self.operand(cond.left)
            if value is _MISSING:
                return False  # every comparison with a missing attribute is false
            return _compare(value, cond.op, literal_value(cond.right))  # type: ignore[arg-type]
        if isinstance(cond, n.InList):
            value = self.operand(cond.left)
            if value is _MISSING:
                return False
            return any(_compare(value, "==", literal_value(item)) for item in cond.right.items)
        raise TypeError(cond)

    def cost(self, spec: Any) -> float:
        return self.tokens * spec.input_price + self.out_tokens * spec.output_price

    def hard_ok(self, spec: Any) -> bool:
        """Hard constraints: context holds the tokens; tools/images need tools/vision support; an embedding request
        needs an embedding model and a chat request any other; a response_format needs its JSON feature."""
        if spec.context < self.tokens:
            return False
        if self.tools and "tools" not in spec.supports:
            return False
        if (self.attrs.get("endpoint") == "embeddings") != ("embeddings" in spec.supports):
            return False
        wanted = {"json_schema": "json_schema", "json": "json"}.get(self.attrs.get("response_format"))  # type: ignore[arg-type]
        if wanted is not None and wanted not in spec.supports:
            return False
        return not (self.images and "vision" not in spec.supports)


# ---- actions ---------------------------------------------------------------------------------------------

# README, "Limits from the request": a bare name on the right of a `where` constraint is a request attribute. A
# number is in the metric's unit (latency ms, cost USD, price USD per 1M input tokens, context tokens, capability
# points); text is written with its unit like a policy literal. Converted here to the literals' own units
# (latency seconds, price USD per token).
_TEXT_UNITS = {
    "latency": (r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}),
    "cost": (r"\$([0-9]+(?:\.[0-9]+)?)()", {"": 1.0}),
    "price": (r"\$([0-9]+(?:\.[0-9]+)?)/([0-9]+(?:\.[0-9]+)?[kM]?|[kM])", None),
    "context": (r"([0-9]+(?:\.[0-9]+)?)([kM]?)", {"": 1.0, "k": 1e3, "M": 1e6}),
    "capability": (r"([0-9]+(?:\.[0-9]+)?)([kM]?)", {"": 1.0, "k": 1e3, "M": 1e6}),
}
_PLAIN_UNIT = {"latency": 0.001, "cost": 1.0, "price": 1e-6, "context": 1.0, "capability": 1.0}


def _per_tokens(text: str) -> float:
    scale = {"k": 1e3, "M": 1e6}
    if text in scale:
        return scale[text]
    if text[-1:] in scale:
        return float(text[:-1]) * scale[text[-1]]
    return float(text)


def request_limit(metric: str, value: Any) -> float | None:
    """A request attribute as a limit on `metric`, or None when it is missing or of the wrong kind."""
    if value is _MISSING or isinstance(value, bool):
        return None
    if isinstance(value, (numbers.Real, decimal.Decimal)):  # ints, floats, Decimals, numpy numbers
        try:
            number = float(value) * _PLAIN_UNIT[metric]
        except OverflowError:  # an int too large for a float: no limit
            return None
        return number if math.isfinite(number) else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if metric != "context" and metric != "capability" and re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
        number = float(text) * _PLAIN_UNIT[metric]
        return number if math.isfinite(number) else None
    pattern, units = _TEXT_UNITS[metric]
    m = re.fullmatch(pattern, text)
    if m is None:
        return None
    if metric == "price":
        per = _per_tokens(m.group(2))
        number = float(m.group(1)) / per if per else math.nan
    else:
        assert units is not None
        number = float(m.group(1)) * units[m.group(2)]
    return number if math.isfinite(number) else None  # too large for a float: no limit


def passes(spec: Any, c: n.Constraint, req: Request) -> bool:
    """One `where` constraint."""
    if c.metric == "provider":
        return spec.provider in [str(i.value) for i in c.value.items]  # type: ignore[union-attr]
    if c.metric == "supports":
        return c.value.value in spec.supports  # type: ignore[union-attr]
    if c.value.kind == "name":  # type: ignore[union-attr]
        want = request_limit(c.metric, lookup(req.attrs, c.value.value))  # type: ignore[union-attr, arg-type]
        if want is None:
            return True  # the constraint does not apply
        if c.metric == "price":
            return _compare(round(spec.input_price * 1e6, 9), c.op, round(want * 1e6, 9))
    else:
        want = c.value.value  # type: ignore[union-attr, assignment]
    if c.metric == "latency":
        have = spec.latency_ms / 1000  # the literal is in seconds
    elif c.metric == "price":
        have = spec.input_price
    elif c.metric == "cost":
        have = req.cost(spec)
    elif c.metric == "context":
        have = spec.context
    elif c.metric == "capability":
        have = spec.capabilities.get(c.capability)
        if have is None:
            return False  # a model with no score for the capability cannot satisfy a bound on it
    else:
        raise ValueError(c.metric)
    return _compare(have, c.op, want)


def score(spec: Any, terms: Iterable[n.ScoreTerm], req: Request) -> float:
    """docs/language.md, "Scores": models are ranked by the terms whose value differs between models (capability,
    cost, price, latency, context): the terms the request adds to every model alike (tokens, request attributes,
    function values) cannot change the order, so they are left out here. A model with no score for a capability
    has 0 points there; a function call with no value makes the score unknown (-inf: the model ranks after every
    model with a score), as does a sum that is not finite."""
    total = 0.0
    for t in terms:
        if t.factor in ("tokens", "attr"):
            continue  # the same for every model
        if t.factor == "capability":
            value = spec.capabilities.get(t.name.upper(), 0)  # type: ignore[union-attr]
        elif t.factor == "cost":
            value = req.cost(spec)
        elif t.factor == "price":
            value = spec.input_price * 1e6  # USD per 1M input tokens
        elif t.factor == "latency":
            value = spec.latency_ms
        elif t.factor == "context":
            value = spec.context
        elif t.factor == "tokens":
            value = req.tokens
        elif t.factor == "call":  # a function that has no finite value makes the whole score unknown
            got = req.call(t.name or "")
            if got is _MISSING or not math.isfinite(got):
                return -math.inf
            continue  # its value is the same for every model
        else:
            raise ValueError(t.factor)
        total += t.coef * value
    return total if math.isfinite(total) else -math.inf


def rank_key(spec: Any, rankings: Iterable[n.Ranking], req: Request) -> tuple:
    key: list[Any] = []
    for r in rankings:
        if r.kind == "score":
            key.append(-round(score(spec, r.terms, req), 9))  # higher is better; equal to 9 decimal places
        elif r.kind == "custom":  # higher is better; a model the ranker fails on ranks last
            got = req.rank(r.ranker or "", spec)
            key.append(math.inf if got is None else -got)
        elif r.kind == "healthiest":
            # README, "Health": success rate in the window (no call yet: healthy), then latency; these requests
            # run on a fresh engine, with nothing measured
            key.append((-1.0, spec.latency_ms))
        elif r.kind == "capability":
            key.append(-spec.capabilities.get(r.capability, 0))  # higher is better; unscored ranks last
        elif r.kind == "cheapest":
            key.append(req.cost(spec))
        elif r.kind == "fastest":
            key.append(spec.latency_ms)
        else:
            raise ValueError(r.kind)
    key.append(spec.name)  # final tie-break: model name, alphabetical
    return tuple(key)


class Policy:
    """The statements of a loaded policy, as the reference reads them."""

    def __init__(
        self, body: Iterable[n.Stmt], catalog: Any, functions: Functions | None = None, rankers: Functions | None = None
    ):
        self.catalog = catalog
        self.functions, self.rankers = functions, rankers
        self.tasks: dict[str, n.TaskDecl] = {}
        self.aliases: dict[str, str] = {}
        self.rules: list[n.Rule] = []
        self.depth = 2  # README, "Failover plan": `set failover.depth`, default 2
        for stmt in body:
            if isinstance(stmt, n.Setting) and stmt.name == "failover.depth":
                self.depth = int(stmt.value.value)  # type: ignore[union-attr, arg-type]
            if isinstance(stmt, n.TaskDecl):
                self.tasks.setdefault(stmt.name, stmt)
            elif isinstance(stmt, n.ModelAlias):
                self.aliases[stmt.name] = stmt.target.name
            elif isinstance(stmt, n.Rule):
                self.rules.append(stmt)

    def model(self, name: str) -> Any:
        name = self.aliases.get(name, name)
        spec = self.catalog.models.get(name)
        if spec is None:
            spec = self.catalog.models[self.catalog.aliases[name]]
        return spec

    def decide(self, prompt: str, attrs: Mapping[str, Any]) -> tuple[str, int, list[str], list[str]] | None:
        """(model, line of the deciding rule, fallbacks, plan) or None when no rule yields a viable model.

        README, "Failover plan": the plan is the chosen model, then the next `failover.depth` models of the same
        ranking that pass every constraint, then the fallbacks that can serve the request, each model once. When
        the request rules out every model the rule's `where` leaves (too long, tools, images), the first
        fallback that can serve it stands in (and the plan has no ranked models)."""
        req = Request(prompt, attrs, self.tasks, self.functions, self.rankers)
        for rule in self.rules:
            if not req.holds(rule.cond):
                continue
            action = rule.action
            if action.kind == "use":
                candidates = [self.model(action.model.name)]  # type: ignore[union-attr]
            elif action.among:  # README, "Ranking a list": only the listed models, each once
                candidates = list({id(s): s for s in (self.model(ref.name) for ref in action.among)}.values())
            else:
                candidates = list(self.catalog.models.values())
            allowed = [s for s in candidates if all(passes(s, c, req) for c in action.where)]
            viable = [s for s in allowed if req.hard_ok(s)]
            listed = [self.model(ref.name) for ref in action.fallbacks]
            if viable:
                ranked = sorted(viable, key=lambda s: rank_key(s, action.rankings, req))
                chosen, following = ranked[0], ranked[1 : 1 + self.depth] if action.kind == "prefer" else []
            else:
                # docs/language.md, "Fallbacks": the first fallback that can serve the request and passes every
                # `where` constraint; when none passes them, the first that can serve it
                can_serve = [f for f in listed if req.hard_ok(f)] if allowed else []
                within = [f for f in can_serve if all(passes(f, c, req) for c in action.where)]
                stand_in = (within or can_serve or [None])[0]
                if stand_in is None:
                    continue  # a matching rule with no viable model (and no fallback to stand in) does not decide
                chosen, following = stand_in, []
            fallbacks: list[str] = []
            for spec in listed:
                if spec.name != chosen.name and spec.name not in fallbacks and req.hard_ok(spec):
                    fallbacks.append(spec.name)
            plan = list(dict.fromkeys([chosen.name, *(s.name for s in following), *fallbacks]))
            return chosen.name, rule.span.line, fallbacks, plan
        return None


def reference_decide(
    body: Iterable[n.Stmt],
    catalog: Any,
    prompt: str,
    attrs: Mapping[str, Any] | None = None,
    functions: Functions | None = None,
    rankers: Functions | None = None,
) -> tuple[str, int, list[str], list[str]] | None:
    """Decide with the reference semantics: (model, rule line, fallbacks, plan) or None. `functions` / `rankers`:
    the Python functions and rankers the policy calls."""
    return Policy(body, catalog, functions, rankers).decide(prompt, attrs or {})
