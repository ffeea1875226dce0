"""Computed rankings: a catalog model and a Request in, the rank key of `prefer score(...)` and of `prefer
healthiest`, and the weight of `balance weighted`, out (with the text explain shows for each).

`score(3 * capability(REASONING) - 100 * cost)` is a linear score, higher is better. Its request-independent
part (capability points, price in USD per 1M input tokens, catalog latency in ms, context in tokens) is summed
per model at compile time; at request time only the cost term (USD for this request, on the model's prices)
and the request's own numbers (tokens, numeric attributes: the same for every model) are added.

`healthiest` ranks by success rate over `set health.window` (the state store's success_rates()), ties by
measured latency (the catalog's until enough calls are measured), then name. A model with no call in the
window, or a store that does not report success rates, counts as healthy (1.0): unknown health is neutral.
"""

from __future__ import annotations

import decimal
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from engine.runtime.functions import Failed, Function, number_of
from engine.runtime.policy import MISSING, RankKey, get_attr
from engine.runtime.semantic import similarity_of
from engine.runtime.units import finite, fmt_money, fmt_plain, fmt_seconds

if TYPE_CHECKING:
    from engine.runtime.policy import Entry, Request

__all__ = ["HealthRank", "ScoreRank", "Term", "health_weights", "success_rates"]

#: Success rate of a model the store knows nothing about (no call in the window): neutral, i.e. healthy.
UNKNOWN_SUCCESS = 1.0

_EMPTY: Mapping[str, float] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Term:
    """`coef * factor` of a score: factor capability (name: the capability), cost, price, latency, context,
    tokens, attr (name: the request attribute), call (name: the Python function, `fn` it) or similarity (name: the
    semantic task, `task` its engine.runtime.semantic.SemanticTask)."""

    coef: float
    factor: str
    name: str | None = None
    fn: Function | None = field(default=None, compare=False, hash=False)
    task: Any = field(default=None, compare=False, hash=False)

    @property
    def text(self) -> str:
        what = {
            "capability": f"capability({self.name})",
            "attr": str(self.name),
            "call": f"{self.name}()",
            "similarity": f"similarity({self.name})",
        }.get(self.factor, self.factor)
        return f"{fmt_plain(abs(self.coef))} * {what}" if abs(self.coef) != 1 else what

    def static_value(self, e: Entry) -> float | None:
        """The term's factor for a model when it does not depend on the request (None: it does)."""
        f = self.factor
        if f == "capability":
            score = e.spec.capability(self.name)
            return float(score) if score is not None else 0.0  # no score counts as 0 points
        if f == "price":
            return e.ip * 1e6
        if f == "latency":
            return e.latency_ms
        if f == "context":
            return float(e.context)
        return None


def _request_number(req: Request, name: str) -> float | None:
    value: Any = get_attr(req.attrs, name)
    if value is MISSING or isinstance(value, bool) or not isinstance(value, (numbers.Real, decimal.Decimal)):
        return None
    number = finite(value)
    return number if math.isfinite(number) else None


def _static_sum(terms: tuple[Term, ...], e: Entry) -> float:
    return sum(t.coef * v for t in terms if (v := t.static_value(e)) is not None)


@dataclass(frozen=True, slots=True)
class ScoreRank(RankKey):
    """`score(...)`: the rank key is minus the score (lower keys rank first)."""

    terms: tuple[Term, ...] = ()
    static: Mapping[str, float] = field(default_factory=dict, compare=False, hash=False)  # model -> compile-time part

    @classmethod
    def build(cls, terms: tuple[Term, ...], models: Any) -> ScoreRank:
        """The ranking with its request-independent part computed for every model of `models` (Entries)."""
        static = {e.name: _static_sum(terms, e) for e in models}
        return cls("score", None, terms, MappingProxyType(static))

    @property
    def label(self) -> str:
        parts = []
        for i, t in enumerate(self.terms):
            if i == 0:
                parts.append(f"-{t.text}" if t.coef < 0 else t.text)
            else:
                parts.append(f"{'-' if t.coef < 0 else '+'} {t.text}")
        return f"score({' '.join(parts)})"

    @property
    def dynamic(self) -> bool:
        """Whether the order depends on the request (a cost term, or a function call, whose failure makes every
        score unknown): model-independent terms (tokens, request attributes) add the same to every model."""
        return any(t.factor in ("cost", "call") for t in self.terms)

    def _static(self, e: Entry) -> float:
        value = self.static.get(e.name)
        return value if value is not None else _static_sum(self.terms, e)

    def model_part(self, e: Entry, req: Request | None) -> float:
        """The part of the score that differs between models (capability, price, latency, context, cost): the
        rank key. NaN when a function term has no value (every model's score is then unknown)."""
        total = self._static(e)
        if req is None:
            return total
        for t in self.terms:
            if t.factor == "cost":
                total += t.coef * e.cost(req.tokens, req.out_tokens)
            elif t.factor == "call":
                called = number_of(req, t.fn) if t.fn is not None else None
                if called is None or isinstance(called, Failed):
                    return math.nan
        return total

    def request_part(self, req: Request) -> float:
        """The part the request adds to every model's score alike (tokens, request attributes, function values,
        similarities; an attribute that is not a finite number adds 0). NaN when a function term has no value."""
        total = 0.0
        for t in self.terms:
            if t.factor == "tokens":
                total += t.coef * req.tokens
            elif t.factor == "similarity":
                total += t.coef * similarity_of(req, t.task)
            elif t.factor == "attr":
                v = _request_number(req, t.name or "")
                if v is not None:
                    total += t.coef * v
            elif t.factor == "call":
                called = number_of(req, t.fn) if t.fn is not None else None
                if called is None or isinstance(called, Failed):
                    return math.nan
                total += t.coef * called
        return total

    def score(self, e: Entry, req: Request | None) -> float:
        """The whole score, for explain (inf when the request's numbers are too large to add up)."""
        model = self.model_part(e, req)
        return model if req is None else model + self.request_part(req)

    def key(self, e: Entry, req: Request | None) -> float:
        """Minus the model part rounded to 9 decimal places (the same sum added up in another order is the same
        score); inf (last) when it is unknown or not finite. The request part adds the same to every model, so
        it never changes the order, and a huge request number cannot make models tie or every score unknown."""
        value = self.model_part(e, req)
        return -round(value, 9) + 0.0 if math.isfinite(value) else math.inf

    def shown(self, e: Entry, req: Request) -> str:
        """`score 46.5 = +30 (3 x REASONING 10) +18 (2 x CODING 9) -1.5 (-100 x cost $0.015)`."""
        parts = []
        for t in self.terms:
            what = t.name if t.factor in ("capability", "attr") else t.factor
            v = t.static_value(e)
            if v is not None:
                if t.factor == "capability" and e.spec.capability(t.name) is None:
                    parts.append(f"+0 (no {t.name} score)")
                    continue
                shown = f"{v:g}"
            elif t.factor == "cost":
                v = e.cost(req.tokens, req.out_tokens)
                shown = fmt_money(v)
            elif t.factor == "tokens":
                v, shown = float(req.tokens), f"{req.tokens}"
            elif t.factor == "similarity":
                v = similarity_of(req, t.task)
                shown, what = f"{v:.3f}", f"similarity({t.name})"
            elif t.factor == "call":
                called = number_of(req, t.fn) if t.fn is not None else Failed("is not provided")
                if isinstance(called, Failed):
                    parts.append(f"{t.name}() {called.why}: the score is unknown (ranks last)")
                    continue
                v, shown, what = called, f"{called:g}", f"{t.name}()"
            else:
                v = _request_number(req, t.name or "")
                if v is None:
                    parts.append(f"+0 ({t.name} is not a finite number)")
                    continue
                shown = f"{v:g}"
            parts.append(f"{t.coef * v + 0.0:+.6g} ({fmt_plain(t.coef)} x {what} {shown})")  # + 0.0: no "-0"
        model, extra = self.model_part(e, req), self.request_part(req)
        if not math.isfinite(model):
            return "score unknown = " + " ".join(parts)
        total = model + extra
        text = (f"score {total:.6g} = " if math.isfinite(total) else "score too large to add up = ") + " ".join(parts)
        if not math.isfinite(total) or round(total - extra, 6) != round(model, 6):  # the total hides the order
            text += f"; ranked by {model:.6g} (the terms that differ between models)"
        return text


def success_rates(req: Request, window: float) -> Mapping[str, float]:
    """Each model's success rate over the last `window` seconds, from the request's state store (empty when the
    store keeps none, or does not report them)."""
    read = getattr(req.state, "success_rates", None)
    if read is None:
        return _EMPTY
    rates: Mapping[str, float] = read(window)
    return rates


def _latency(e: Entry, req: Request) -> float:
    """Measured latency, else the catalog's; inf when neither is known (an ad-hoc model before its first call)."""
    measured = req.latency.get(e.name) if req.latency else None
    lat = measured if measured is not None else e.latency_ms
    return lat if math.isfinite(lat) else math.inf


@dataclass(frozen=True, slots=True)
class HealthRank(RankKey):
    """`healthiest`: success rate over the window (higher first), then measured latency."""

    window: float = 300.0

    def key(self, e: Entry, req: Request | None) -> Any:  # a pair: (minus the success rate, latency)
        if req is None:
            return (-UNKNOWN_SUCCESS, e.latency_ms if math.isfinite(e.latency_ms) else math.inf)
        rate = success_rates(req, self.window).get(e.name, UNKNOWN_SUCCESS)
        return (-rate, _latency(e, req))

    def shown(self, e: Entry, req: Request) -> str:
        rate = success_rates(req, self.window).get(e.name)
        measured = req.latency.get(e.name) if req.latency else None
        if measured is not None:
            lat = f"latency {measured:.0f}ms (measured)"
        else:
            lat = f"latency {e.latency_ms:g}ms" if math.isfinite(e.latency_ms) else "latency unknown (ranks last)"
        if rate is None:
            return f"success unknown in {fmt_seconds(self.window)} (counts as 100%), {lat}"
        return f"success {rate * 100:.1f}% in {fmt_seconds(self.window)}, {lat}"


def health_weights(
    members: list[Entry], req: Request, window: float, success_weight: float, latency_weight: float
) -> list[tuple[float, float, float]]:
    """`balance weighted`: per member (weight, success rate, latency score), weight = success_weight x success
    rate + latency_weight x latency score, where the latency score is the fastest member's latency over this
    member's (1 for the fastest; measured latency, the catalog's until measured; 0 when neither is known: an
    ad-hoc model before its first call). Every weight is finite and at least 0."""
    rates = success_rates(req, window)
    latencies = [_latency(e, req) for e in members]
    fastest = min((x for x in latencies if x > 0), default=0.0)
    out = []
    for e, lat in zip(members, latencies, strict=True):
        rate = rates.get(e.name, UNKNOWN_SUCCESS)
        rate = rate if math.isfinite(rate) else UNKNOWN_SUCCESS
        speed = 0.0 if math.isinf(lat) else 1.0 if lat <= 0 else fastest / lat
        out.append((success_weight * rate + latency_weight * speed, rate, speed))
    return out
