"""Request-supplied limits: a rule's `where METRIC op NAME` and a Request in, whether a catalog model is within
the limit the request sets out (a constraint engine.runtime.constraints checks like a `where cost` limit).

In a `where` constraint a bare name on the right is a request attribute, read when the request arrives in the
metric's unit (engine.runtime.units.request_value): a number is latency in ms, cost in USD, price in USD per 1M
input tokens, context in tokens, capability in points; text carries its unit ("2s", "$0.01", "$3/1M", "200k").
An attribute that is missing or of the wrong kind sets no limit: the constraint does not apply (`not_applied`
says why, for explain).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.runtime.constraints import NEGATED, OPS, Code
from engine.runtime.policy import MISSING, get_attr
from engine.runtime.units import KIND_NAMES, METRIC_KIND, fmt_count, fmt_ms, fmt_price, fmt_value, request_value

if TYPE_CHECKING:
    from engine.runtime.policy import Entry, Request

__all__ = ["AttrLimit", "shown_value"]

#: How deep shown_value() renders nested lists, tuples and dicts before it writes `...` in their place.
SHOWN_DEPTH = 8

_CODES = {
    "latency": Code.LATENCY,
    "price": Code.PRICE,
    "cost": Code.COST,
    "context": Code.CONTEXT_LIMIT,
    "capability": Code.CAPABILITY,
}


@dataclass(frozen=True, slots=True)
class AttrLimit:
    """`where latency <= max_latency` (or price, cost, context, capability(X)): the model's value of the metric
    must compare with the request attribute `attr` as `op` says."""

    metric: str  # latency | price | cost | context | capability
    op: str
    attr: str
    capability: str | None = None

    @property
    def code(self) -> Code:
        return _CODES[self.metric]

    @property
    def text(self) -> str:
        """The constraint as written."""
        metric = f"capability({self.capability})" if self.metric == "capability" else self.metric
        return f"{metric} {self.op} {self.attr}"

    def limit(self, req: Request) -> float | None:
        """The request's limit in the metric's normalised unit (seconds, USD per token, USD, number), or None
        when the attribute is missing or of the wrong kind (then the constraint does not apply)."""
        return request_value(METRIC_KIND[self.metric], get_attr(req.attrs, self.attr))

    def actual(self, e: Entry, req: Request) -> float | None:
        """The model's value of the metric, in the same unit as limit() (None: the model has no such score)."""
        m = self.metric
        if m == "latency":
            return e.latency_ms / 1000
        if m == "price":
            return e.ip
        if m == "cost":
            return e.cost(req.tokens, req.out_tokens)
        if m == "context":
            return float(e.context)
        score = e.spec.capability(self.capability)
        return None if score is None else float(score)

    def allows(self, e: Entry, req: Request) -> bool:
        limit = self.limit(req)
        if limit is None:
            return True
        actual = self.actual(e, req)
        if actual is None:
            return False  # a model with no score for the capability cannot satisfy a bound on it
        if self.metric == "price":  # compared in $/1M rounded to 1e-9, as a literal price is
            return OPS[self.op](round(actual * 1e6, 9), round(limit * 1e6, 9))
        return OPS[self.op](actual, limit)

    def reason(self, e: Entry, req: Request) -> str | None:
        """The text of the violation, or None when the model is within the limit (or the limit does not apply)."""
        if self.allows(e, req):
            return None
        limit = self.limit(req)
        actual = self.actual(e, req)
        assert limit is not None
        shown_limit = f"{self.attr} {fmt_value(METRIC_KIND[self.metric], limit)}"
        if actual is None:
            return f"no {self.capability} score ({self.attr} asks capability({self.capability}) {self.op} {limit:g})"
        return f"{self._shown(e, req, actual)} {NEGATED[self.op]} {shown_limit}"

    def _shown(self, e: Entry, req: Request, actual: float) -> str:
        m = self.metric
        if m == "latency":
            return f"latency {fmt_ms(e.latency_ms)}"
        if m == "price":
            return f"price {fmt_price(e.ip)}"
        if m == "cost":
            return f"cost {fmt_value('money', actual)}"
        if m == "context":
            return f"context {fmt_count(e.context)}"
        return f"capability({self.capability}) {actual:g}"

    def not_applied(self, req: Request) -> str | None:
        """Why the constraint does not apply to this request (the attribute is missing or of the wrong kind), or
        None when it does."""
        value: Any = get_attr(req.attrs, self.attr)
        if value is MISSING:
            return f"`where {self.text}` does not apply: {self.attr} was not passed"
        if request_value(METRIC_KIND[self.metric], value) is None:
            want = KIND_NAMES[METRIC_KIND[self.metric]]
            shown = shown_value(value, 40)  # a client's value, perhaps 400 digits: enough of it to recognise
            return f"`where {self.text}` does not apply: {self.attr} is {shown}, not {want}"
        return None


def shown_value(value: Any, width: int | None = None) -> str:
    """A client's value as explain and error messages show it: its repr, except that an int too long for repr
    (sys.get_int_max_str_digits) is "<an int of N digits>", lists, tuples and dicts nested deeper than SHOWN_DEPTH
    or holding themselves show `...` there, and a value whose repr fails is "<a TYPE value>"; cut to `width`
    characters (ending in "...") when given. Never raises."""
    shown = _shown(value, 0, set())
    if width is not None and len(shown) > width:
        shown = shown[: width - 3] + "..."
    return shown


def _shown(value: Any, depth: int, open_ids: set[int]) -> str:
    kind = type(value)
    if kind in (list, tuple, dict):
        left, right = ("[", "]") if kind is list else ("(", ")") if kind is tuple else ("{", "}")
        if depth >= SHOWN_DEPTH or id(value) in open_ids:  # too deep, or a cycle: the marker repr uses for one
            return f"{left}...{right}"
        open_ids.add(id(value))
        try:
            if kind is dict:
                items = [
                    f"{_shown(k, depth + 1, open_ids)}: {_shown(v, depth + 1, open_ids)}" for k, v in value.items()
                ]
            else:
                items = [_shown(v, depth + 1, open_ids) for v in value]
        finally:
            open_ids.discard(id(value))
        tail = "," if kind is tuple and len(items) == 1 else ""
        return f"{left}{', '.join(items)}{tail}{right}"
    try:
        return repr(value)
    except ValueError:
        if isinstance(value, int):  # more digits than repr may write
            return f"<an int of {_digits(value)} digits>"
        return f"<a {kind.__name__} value>"
    except Exception:  # a caller's object whose repr fails (or recurses without end)
        return f"<a {kind.__name__} value>"


def _digits(value: int) -> int:
    """How many decimal digits abs(value) has, without writing it out."""
    value = abs(value)
    digits = max(1, int(value.bit_length() * 0.30102999566398120))
    while value >= 10**digits:
        digits += 1
    while digits > 1 and value < 10 ** (digits - 1):
        digits -= 1
    return digits
