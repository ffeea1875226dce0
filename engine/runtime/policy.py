"""Compiled policy: the immutable decision structure the compiler builds and the evaluator walks."""

from __future__ import annotations

import operator
import random
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from engine.language import nodes as n
from engine.runtime.matcher import Matcher
from engine.runtime.units import fmt_count, fmt_money

#: Output tokens assumed for cost estimates when the request does not pass `max_tokens`.
DEFAULT_OUTPUT_TOKENS = 500

GROUPS = frozenset({"balance", "split", "race", "consensus", "best_of"})

OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
NEGATED = {"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}


class _Missing:
    """An attribute the caller did not pass: falsy, and every comparison with it is false."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "missing"


MISSING: Any = _Missing()


def get_attr(attrs: Mapping[str, Any], name: str) -> Any:
    """A request attribute by (possibly dotted) name: a flat key first, then nested mappings/objects."""
    value = attrs.get(name, MISSING)
    if value is MISSING and "." in name:
        value = attrs
        for part in name.split("."):
            value = value.get(part, MISSING) if isinstance(value, Mapping) else getattr(value, part, MISSING)
            if value is MISSING:
                break
    return value


_EMPTY: Mapping[str, float] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Entry:
    """A catalog model with the numbers selection needs, flattened for speed."""

    name: str
    provider: str
    context: int
    ip: float  # input USD per token
    op: float  # output USD per token
    latency_ms: float
    tools: bool
    vision: bool
    spec: Any  # providers.catalog.ModelSpec

    def cost(self, tokens: float, out_tokens: float) -> float:
        return tokens * self.ip + out_tokens * self.op


class Request:
    """What one decide() call knows about the request; the evaluator's only input besides the policy.

    Treat as immutable (a plain slotted class rather than a frozen dataclass: it is built on every decide())."""

    __slots__ = (
        "attrs",
        "latency",
        "need_tools",
        "need_vision",
        "out_tokens",
        "state",
        "text",
        "tokens",
        "unavailable",
    )

    def __init__(
        self,
        text: str,
        tokens: int,
        attrs: Mapping[str, Any],
        need_tools: bool,
        need_vision: bool,
        out_tokens: float,
        unavailable: frozenset[str] = frozenset(),
        state: Any = None,
        latency: Mapping[str, float] = _EMPTY,
    ):
        self.text = text
        self.tokens = tokens
        self.attrs = attrs
        self.need_tools = need_tools
        self.need_vision = need_vision
        self.out_tokens = out_tokens
        self.unavailable = unavailable  # models to skip (open circuits)
        self.state = state  # engine.state.StateStore: round-robin positions, in-flight counts
        self.latency = latency  # measured latency (ms) by model, for `fastest`


def hard_reason(e: Entry, req: Request) -> str | None:
    """Why a model cannot serve this request at all (context, tools, vision, availability), or None."""
    if req.tokens > e.context:
        return f"context {fmt_count(e.context)} < {fmt_count(req.tokens)} tokens"
    if req.need_tools and not e.tools:
        return "no tools support (request has tools)"
    if req.need_vision and not e.vision:
        return "no vision support (request has images)"
    if e.name in req.unavailable:
        until = None
        circuit = getattr(req.state, "circuit", None)
        if circuit is not None:
            until = getattr(circuit(e.name), "until", None)
        if until:
            return f"circuit open until {time.strftime('%H:%M:%S', time.localtime(until))}"
        return "unavailable (circuit open)"
    return None


@dataclass(frozen=True, slots=True)
class RankKey:
    kind: str  # capability | cheapest | fastest
    capability: str | None

    @property
    def label(self) -> str:
        return f"capability({self.capability})" if self.kind == "capability" else self.kind

    def key(self, e: Entry, req: Request | None) -> float:
        if self.kind == "capability":
            score = e.spec.capabilities.get(self.capability)
            return -float(score) if score is not None else 0.0
        if self.kind == "fastest":
            return req.latency.get(e.name, e.latency_ms) if req is not None and req.latency else e.latency_ms
        assert req is not None
        if self.kind == "least_busy":
            return float(req.state.in_flight(e.name)) if req.state is not None else 0.0
        return e.cost(req.tokens, req.out_tokens)

    def shown(self, e: Entry, req: Request) -> str:
        if self.kind == "capability":
            score = e.spec.capabilities.get(self.capability)
            return f"{self.capability} {score:g}" if score is not None else f"{self.capability} (no score)"
        if self.kind == "fastest":
            measured = req.latency.get(e.name) if req.latency else None
            return f"latency {measured:.0f}ms (measured)" if measured is not None else f"latency {e.latency_ms:g}ms"
        if self.kind == "least_busy":
            return f"{self.key(e, req):g} in flight"
        return f"cost {fmt_money(self.key(e, req))}"


@dataclass(frozen=True, slots=True)
class PriceGroup:
    """Catalog models with the same input and output price, best first by the rule's later rankings."""

    ip: float
    op: float
    members: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class CostLimit:
    op: str
    value: float
    text: str

    def reason(self, e: Entry, req: Request) -> str | None:
        cost = e.cost(req.tokens, req.out_tokens)
        if OPS[self.op](cost, self.value):
            return None
        return f"cost {fmt_money(cost)} {NEGATED[self.op]} {self.text}"


@dataclass(frozen=True, slots=True)
class Selector:
    """A rule's action, compiled: which models it may pick and in what order."""

    kind: str  # "use" | "prefer"
    use: Entry | None
    pool: tuple[Entry, ...]  # models that pass every static `where` constraint
    static_rejects: tuple[tuple[Entry, str], ...]  # models a static constraint excludes, with the reason
    rankings: tuple[RankKey, ...]
    order: str  # "static": pool is already in rank order | "cheapest" | "generic"
    cost_limits: tuple[CostLimit, ...]
    fallbacks: tuple[Entry, ...]
    by_input: tuple[PriceGroup, ...] = ()  # for "cheapest": price groups sorted by input price
    by_output: tuple[PriceGroup, ...] = ()  # and by output price
    dynamic_rest: bool = False  # a later ranking depends on the request (least_busy)
    mode: str | None = None  # balance: round_robin | random | least_busy
    weights: tuple[float, ...] = ()  # split: one weight per pool model (same order)
    judge: Entry | None = None  # best_of
    key: str = ""  # state key (round-robin position) for this rule
    measured: bool = False  # ranks by `fastest`: measured latency may reorder the static pool

    @property
    def grouped(self) -> bool:
        """The action names a group of models (balance, split, race, consensus, best_of)."""
        return self.kind in GROUPS

    @property
    def stateful(self) -> bool:
        """The pick depends on state or chance, so a trace must be told what was picked."""
        return self.kind in ("balance", "split")

    def _ok(self, e: Entry, req: Request) -> bool:
        if req.tokens > e.context or (req.need_tools and not e.tools) or (req.need_vision and not e.vision):
            return False
        if req.unavailable and e.name in req.unavailable:
            return False
        return not self.cost_limits or all(c.reason(e, req) is None for c in self.cost_limits)

    def pick(self, req: Request) -> Entry | None:
        """The best viable model for this request, or None. Must agree with rank()[0]."""
        if self.kind == "use":
            return self.use if self.pool and self._ok(self.pool[0], req) else None
        if self.kind in GROUPS:
            return self._pick_group(req)
        if self.order == "static" and not (self.measured and req.latency):
            for e in self.pool:
                if self._ok(e, req):
                    return e
            return None
        if self.order == "cheapest":
            return self._cheapest(req)
        best, best_key = None, None
        for e in self.pool:
            if self._ok(e, req):
                k = self.full_key(e, req)
                if best_key is None or k < best_key:
                    best, best_key = e, k
        return best

    def _pick_group(self, req: Request) -> Entry | None:
        viable = [e for e in self.pool if self._ok(e, req)]
        if not viable:
            return None
        if self.kind == "balance":
            if self.mode == "round_robin":
                i = req.state.next_index(self.key) if req.state is not None else 0
                return viable[i % len(viable)]
            if self.mode == "random":
                return random.choice(viable)
            if req.state is None:
                return viable[0]
            return min(viable, key=lambda e: req.state.in_flight(e.name))  # least_busy; ties: list order
        if self.kind == "split":
            weights = [w for e, w in zip(self.pool, self.weights, strict=False) if self._ok(e, req)]
            user = req.attrs.get("user")
            if user is not None:  # sticky per user, so an A/B test keeps each user on one arm
                x = zlib.crc32(f"{self.key}:{user}".encode()) / 2**32
            else:
                x = random.random()
            x *= sum(weights)
            for e, w in zip(viable, weights, strict=False):
                x -= w
                if x < 0:
                    return e
            return viable[-1]
        return viable[0]  # race / consensus / best_of: the first viable member stands for the group

    def group(self, req: Request) -> tuple[str, ...]:
        """For race, consensus and best_of: every viable member, in the order listed."""
        return tuple(e.name for e in self.pool if self._ok(e, req))

    def _cheapest(self, req: Request) -> Entry | None:
        # Threshold walk over price groups (models with the same input and output price always cost the same)
        # sorted by input and by output price: a group not yet seen costs at least tokens*A[k].ip + out*B[k].op,
        # so once that exceeds the best cost the search can stop. Big catalogs repeat prices a lot (every $0
        # local model is one group), so the walk is over distinct prices, not models.
        t, o = req.tokens, req.out_tokens
        dynamic = self.dynamic_rest or (self.measured and bool(req.latency))
        ok = self._ok
        e: Entry | None  # a group's best viable model (None: none is viable)
        first = self.by_input[0] if self.by_input else None
        if first is not None and first is self.by_output[0] and t > 0 and o > 0 and not dynamic:
            # One price group is cheapest on both input and output (a free local model, say): with tokens > 0 and
            # output tokens > 0 every other group costs strictly more, so its best viable member is the answer.
            for e in first.members:
                if ok(e, req):
                    return e
        best_cost = float("inf")
        ties: list[Entry] = []
        for ga, gb in zip(self.by_input, self.by_output, strict=True):
            if t * ga.ip + o * gb.op > best_cost:
                break
            for g in (ga,) if ga is gb else (ga, gb):  # a group met twice just ties with itself
                c = t * g.ip + o * g.op
                if c > best_cost:
                    continue
                if dynamic:
                    e = self._group_best(g, req, True)
                else:
                    for e in g.members:
                        if ok(e, req):
                            break
                    else:
                        continue
                if e is None:
                    continue
                if c < best_cost:
                    best_cost, ties = c, [e]
                elif e not in ties:
                    ties.append(e)
        if not ties:
            return None
        if len(ties) == 1:
            return ties[0]
        return min(ties, key=lambda e: self.full_key(e, req))

    def _group_best(self, g: PriceGroup, req: Request, dynamic: bool) -> Entry | None:
        """The best viable model of a price group: members are pre-sorted by the later rankings and name."""
        if not dynamic:
            for e in g.members:
                if self._ok(e, req):
                    return e
            return None
        viable = [e for e in g.members if self._ok(e, req)]
        return min(viable, key=lambda e: self.full_key(e, req)) if viable else None

    def full_key(self, e: Entry, req: Request) -> tuple:
        return (*(r.key(e, req) for r in self.rankings), e.name)

    def rank(self, req: Request) -> tuple[list[Entry], list[tuple[Entry, str]]]:
        """Every pool model: the viable ones best first, and the rejected ones with a reason (for explain)."""
        viable, rejected = [], []
        for e in self.pool:
            why = hard_reason(e, req) or next((r for c in self.cost_limits if (r := c.reason(e, req))), None)
            if why:
                rejected.append((e, why))
            else:
                viable.append(e)
        if self.kind not in GROUPS:
            viable.sort(key=lambda e: self.full_key(e, req))
        return viable, rejected

    def viable_fallbacks(self, req: Request, chosen: Entry) -> tuple[str, ...]:
        return tuple(
            f.name
            for f in self.fallbacks
            if f is not chosen
            and req.tokens <= f.context
            and (not req.need_tools or f.tools)
            and (not req.need_vision or f.vision)
            and f.name not in req.unavailable
        )


@dataclass(frozen=True, slots=True)
class CompiledRule:
    index: int
    span: n.Span
    text: str
    node: n.Rule
    cond: Callable[..., Any] | None  # fast (M, T, A) -> truthy; None for `otherwise`
    atoms: Mapping[int, Callable[..., Any]]  # id(atom node) -> (M, T, A) -> truthy, for traced evaluation
    needs_scan: bool
    selector: Selector

    @property
    def file(self) -> str:
        return self.span.file

    @property
    def line(self) -> int:
        return self.span.line


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """An immutable, thread-safe compiled policy."""

    entry: str
    version: str
    files: tuple[str, ...]
    rules: tuple[CompiledRule, ...]
    models: Mapping[str, Entry]
    tasks: Mapping[str, int]  # task name -> bitmask of its pattern ids
    matcher: Matcher | None
    pattern_text: tuple[str, ...]  # pid -> pattern as written in the policy
    # rule index (see engine/evaluate.py)
    unguarded: int  # bitmask of rules always tried
    first_pattern_rule: int  # lowest rule index guarded by a pattern (len(rules) if none)
    pattern_rules: tuple[int, ...]  # pid -> bitmask of rules guarded by that pattern
    attr_index: tuple[tuple[str, Mapping[Any, int], int], ...]  # (attr name, value -> rule bits, all bits)
    catalog: Any  # providers.catalog.Catalog
    sources: Any  # engine.diagnostics.Sources
    settings: Any = None  # engine.settings.Settings
    budgets: tuple[BudgetSpec, ...] = ()
    tests: tuple[Any, ...] = ()  # engine.nodes.TestBlock, for `modelroute test`


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    """`budget daily $50 per user`: period (hourly | daily | monthly), USD limit, and the attribute it is per."""

    period: str
    limit: float
    per: str | None
    span: n.Span
