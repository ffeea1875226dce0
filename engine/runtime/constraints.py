"""Hard constraints: a catalog model and a Request in, whether the model can serve it at all (and why not) out.

This is the one place that says when a model is out for a request regardless of the rule's ranking: its
context window is too small, the request needs tools or vision it lacks, its messages hold audio (`input_audio`
parts) or documents (`file` parts) and the model's catalog entry does not list `audio` or `files` in `supports`
(read from the request's messages once, engine/runtime/messages.py `input_features`), it is an embedding model and the
request is not an embedding request or the reverse (the reserved attribute `endpoint`), it asks for structured
output (the request attribute `response_format`: `json_schema` or `json`, set by the gateway from the body's
response_format) the model's catalog entry does not list in `supports`, its circuit is open, or a rule's
`where cost ...` limit excludes it. Selection (`violation`, the fast check), explain and execution (`check`,
a `Reason` with a stable code and its text) all use it, so their answers cannot drift apart.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from engine.runtime.features import AUDIO, EMBEDDINGS, FILES, FORMAT_FEATURES
from engine.runtime.messages import input_features
from engine.runtime.reserved import EMBEDDINGS_ENDPOINT
from engine.runtime.units import fmt_count, fmt_money

if TYPE_CHECKING:
    from engine.runtime.policy import Entry, Request

__all__ = [
    "EMBEDDINGS",
    "FORMAT_ATTR",
    "FORMAT_FEATURES",
    "NEGATED",
    "OPS",
    "Code",
    "CostLimit",
    "Limit",
    "Reason",
    "check",
    "embedding_request",
    "price_known",
    "violation",
]


def price_known(entry: Any) -> bool:
    """Whether the catalog knows both of a model's prices (an Entry's `ip` and `op`, USD per token): finite and not
    negative. A price of 0 is known (the model is free); an ad-hoc model (`set adhoc_models`) has none."""
    return all(isinstance(p, (int, float)) and math.isfinite(p) and p >= 0 for p in (entry.ip, entry.op))


OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
NEGATED = {"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}


class Code(str, Enum):
    """Why a model was left out: stable identifiers to branch on (the reason's text is for people)."""

    CONTEXT = "context"  # the prompt does not fit the context window
    TOOLS = "tools"  # the request has tools, the model does not support them
    VISION = "vision"  # the request has images, the model does not support them
    AUDIO = "audio"  # the request has audio parts, the model does not support audio input
    FILES = "files"  # the request has file (PDF) parts, the model does not support document input
    ENDPOINT = "endpoint"  # an embedding request and a chat model, or a chat request and an embedding model
    FORMAT = "response_format"  # the request asks for JSON (json_schema / json) the model does not support
    UNAVAILABLE = "unavailable"  # the model's circuit is open
    COST = "cost"  # a rule's `where cost ...` limit
    # request-independent `where` constraints and the catalog, decided at compile time
    PROVIDER = "provider"
    CONTEXT_LIMIT = "context_limit"  # a rule's `where context ...` (the model's window, whatever the prompt)
    SUPPORTS = "supports"
    CAPABILITY = "capability"
    LATENCY = "latency"
    PRICE = "price"
    DEPRECATED = "deprecated"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a model cannot serve a request: a stable `code` and the human-readable `text` explain shows."""

    code: Code
    text: str

    def __str__(self) -> str:
        return self.text


class Limit(Protocol):
    """A `where` limit checked per request (CostLimit; engine.runtime.limits.AttrLimit): `code` names what it
    limits, `allows` is the fast check, `reason` its text when it does not allow the model."""

    @property
    def code(self) -> Code: ...

    def allows(self, e: Entry, req: Request) -> bool: ...

    def reason(self, e: Entry, req: Request) -> str | None: ...


@dataclass(frozen=True, slots=True)
class CostLimit:
    """A rule's `where cost <op> <money>`: the request's estimated cost on a model must satisfy it."""

    code: ClassVar[Code] = Code.COST
    op: str
    value: float
    text: str

    def allows(self, e: Entry, req: Request) -> bool:
        return OPS[self.op](e.cost(req.tokens, req.out_tokens), self.value)

    def reason(self, e: Entry, req: Request) -> str | None:
        """The text of the violation, or None when the model's cost satisfies the limit."""
        cost = e.cost(req.tokens, req.out_tokens)
        if OPS[self.op](cost, self.value):
            return None
        return f"cost {fmt_money(cost)} {NEGATED[self.op]} {self.text}"


# Module-level aliases: a global read is about half the cost of an Enum member lookup, and violation() runs
# once per candidate on decide()'s hot path.
_CONTEXT, _TOOLS, _VISION, _UNAVAILABLE = Code.CONTEXT, Code.TOOLS, Code.VISION, Code.UNAVAILABLE
_ENDPOINT = Code.ENDPOINT
_FORMAT = Code.FORMAT
#: The request attribute that asks for structured output, and the catalog feature each of its values needs.
FORMAT_ATTR = "response_format"


def _lacks_format(e: Entry, req: Request) -> bool:
    value = req.attrs.get(FORMAT_ATTR)
    feature = FORMAT_FEATURES.get(value) if isinstance(value, str) else None
    return feature is not None and feature not in e.supports


#: The key of a request's input features (`input_features`, computed once) in its per-request memo `req.calls`:
#: an object, so no function or attribute name can collide with it.
_INPUTS = object()
_AUDIO, _FILES = Code.AUDIO, Code.FILES


def _inputs(req: Request) -> frozenset[str]:
    memo = req.calls
    if memo is None:
        memo = req.calls = {}
    found = memo.get(_INPUTS)
    if found is None:
        found = memo[_INPUTS] = input_features(req.messages)
    return found


def _lacks_input(e: Entry, req: Request) -> Code | None:
    """AUDIO or FILES when the request's messages hold parts the model's catalog entry does not support."""
    needs = _inputs(req)
    if not needs:
        return None
    supports = e.supports
    if AUDIO in needs and AUDIO not in supports:
        return _AUDIO
    if FILES in needs and FILES not in supports:
        return _FILES
    return None


def embedding_request(req: Request) -> bool:
    """Whether `req` asks for embeddings (the gateway's POST /v1/embeddings sets `endpoint`)."""
    return req.attrs.get("endpoint") == EMBEDDINGS_ENDPOINT


def violation(e: Entry, req: Request, limits: tuple[Limit, ...] = ()) -> Code | None:
    """The first hard constraint `e` breaks for `req` (checked in a fixed order), or None when it can serve it.

    The fast check selection runs for every candidate: it allocates nothing (but, once per request with
    messages, the set of features its content parts need)."""
    if req.tokens > e.context:
        return _CONTEXT
    if req.need_tools and not e.tools:
        return _TOOLS
    if req.need_vision and not e.vision:
        return _VISION
    if req.messages is not None and (lacks := _lacks_input(e, req)) is not None:
        return lacks
    if (req.attrs.get("endpoint") == EMBEDDINGS_ENDPOINT) is not e.embeds:
        return _ENDPOINT
    if FORMAT_ATTR in req.attrs and _lacks_format(e, req):
        return _FORMAT
    if req.unavailable and e.name in req.unavailable:
        return _UNAVAILABLE
    for c in limits:
        if not c.allows(e, req):
            return c.code
    return None


def check(e: Entry, req: Request, limits: tuple[Limit, ...] = ()) -> Reason | None:
    """Why `e` cannot serve `req` (the same verdict as `violation`, with its text), or None."""
    code = violation(e, req, limits)
    return None if code is None else Reason(code, _text(code, e, req, limits))


def _text(code: Code, e: Entry, req: Request, limits: tuple[Limit, ...]) -> str:
    if code is Code.CONTEXT:
        return f"context {fmt_count(e.context)} < {fmt_count(req.tokens)} tokens"
    if code is Code.TOOLS:
        return "no tools support (request has tools)"
    if code is Code.VISION:
        return "no vision support (request has images)"
    if code is Code.AUDIO:
        return "no audio input support (request has input_audio parts)"
    if code is Code.FILES:
        return "no file input support (request has file parts: PDF documents)"
    if code is Code.ENDPOINT:
        if embedding_request(req):
            return "not an embedding model (request is for embeddings)"
        return "an embedding model (request is not for embeddings)"
    if code is Code.FORMAT:
        fmt = req.attrs[FORMAT_ATTR]
        return f"no {FORMAT_FEATURES[fmt]} support (request has response_format {fmt})"
    if code is Code.UNAVAILABLE:
        circuit = getattr(req.state, "circuit", None)
        until = getattr(circuit(e.name), "until", None) if circuit is not None else None
        if until:
            return f"circuit open until {time.strftime('%H:%M:%S', time.localtime(until))}"
        return "unavailable (circuit open)"
    return next(r for c in limits if (r := c.reason(e, req)))
