"""Compiled policy: the immutable decision structure the compiler builds and the evaluator walks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from engine.language import nodes as n
from engine.runtime.constraints import NEGATED, OPS, CostLimit
from engine.runtime.features import EMBEDDINGS, TOOLS, VISION
from engine.runtime.matcher import Matcher
from engine.runtime.messages import REQUEST_COUNTS, counts_read
from engine.runtime.units import fmt_money

if TYPE_CHECKING:
    from engine.runtime.index import RuleIndex
    from engine.runtime.selectors import Selector

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "MISSING",
    "NEGATED",
    "OPS",
    "BudgetSpec",
    "CompiledPolicy",
    "CompiledRule",
    "CostLimit",
    "Entry",
    "PriceGroup",
    "RankKey",
    "Request",
    "get_attr",
    "not_an_attribute",
]

#: Output tokens assumed for cost estimates when the request does not pass `max_tokens`.
DEFAULT_OUTPUT_TOKENS = 500


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


def not_an_attribute(name: str) -> str | None:
    """Why a caller (decide()'s keywords, `--attr`, a test's `with`) may not pass the attribute `name`, or None
    when it may: the counts derived from the request itself (messages, turns, words) and `model`, which names a
    model to pin rather than an attribute."""
    if name == "model":
        return "`model` names a model to pin, not a request attribute: use engine.pin_model() or complete(model=...)"
    if name in REQUEST_COUNTS:
        return f"`{name}` is counted from the request itself, so it cannot be passed"
    return None


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
    embeds: bool = False  # an embedding model (`supports: [embeddings]`): never a chat candidate, and the reverse
    #: the catalog features the model lists (`spec.supports`; none when its spec has no such list), read once here
    #: rather than per candidate by every decide() (engine/runtime/constraints.py checks requests against them)
    supports: frozenset[str] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "supports", frozenset(getattr(self.spec, "supports", None) or ()))

    def cost(self, tokens: float, out_tokens: float) -> float:
        return tokens * self.ip + out_tokens * self.op

    @classmethod
    def of(cls, spec: Any) -> Entry:
        """The entry of a catalog model (a ModelSpec)."""
        supports = spec.supports
        return cls(
            spec.name,
            spec.provider,
            spec.context,
            spec.input_price,
            spec.output_price,
            spec.latency_ms,
            TOOLS in supports,
            VISION in supports,
            spec,
            EMBEDDINGS in supports,
        )


class Request:
    """What one decide() call knows about the request; the evaluator's only input besides the policy.

    Treat as immutable (a plain slotted class rather than a frozen dataclass: it is built on every decide())."""

    __slots__ = (
        "attrs",
        "calls",
        "latency",
        "messages",
        "need_tools",
        "need_vision",
        "out_tokens",
        "semantic",
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
        messages: Sequence[Any] | None = None,
        calls: dict[Any, Any] | None = None,
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
        self.messages = messages  # the caller's messages (None: a prompt), for the policy's Python functions
        self.calls = calls  # each Python function's (and ranker's) value for this request (engine/runtime/functions.py)
        #: the request's vector and nearest examples (engine/runtime/semantic.py), made when a condition needs them
        self.semantic: Any = None


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
        if self.kind == "least_busy":  # counts below zero count as zero (prefer.py stops at an idle model)
            return max(0.0, float(req.state.in_flight(e.name))) if req.state is not None else 0.0
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


class AtomSource(Protocol):
    """The compiler's book of atom functions (engine/compiler/codegen.py: AtomBook), one per policy."""

    def of(self, index: int, cond: n.Cond | None) -> Mapping[int, Callable[..., Any]]: ...


@dataclass(frozen=True, slots=True)
class CompiledRule:
    index: int
    node: n.Rule
    cond: Callable[..., Any] | None  # fast (M, T, A, R) -> truthy (R: the Request); None for `otherwise`
    book: AtomSource  # the atoms' functions (see `atoms`), shared by every rule of the policy
    needs_scan: bool
    selector: Selector

    @property
    def span(self) -> n.Span:
        return self.node.span

    @property
    def text(self) -> str:
        return self.node.text

    @property
    def atoms(self) -> Mapping[int, Callable[..., Any]]:
        """id(atom node) -> (M, T, A, R) -> truthy, for traced evaluation (compiled on first use)."""
        return self.book.of(self.index, self.node.cond)

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
    index: RuleIndex  # which rules a request can reach (engine/runtime/index.py)
    catalog: Any  # providers.catalog.Catalog
    sources: Any  # engine.diagnostics.Sources
    settings: Any = None  # engine.settings.Settings
    budgets: tuple[BudgetSpec, ...] = ()
    tests: tuple[Any, ...] = ()  # engine.nodes.TestBlock, for `modelroute test`
    #: task name -> engine.runtime.semantic.SemanticTask, for the tasks with `like` examples (in declaration order)
    semantic: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    embedder: Any = None  # the embedder the semantic tasks use (engine/runtime/embedder.py), None when none does
    #: Output tokens a request counts on when it does not say (`set output_tokens`, else DEFAULT_OUTPUT_TOKENS).
    out_tokens: float = field(init=False, repr=False, compare=False)
    #: The request counts (`messages`, `turns`, `words`) the rules read: the request builder derives only these.
    counts: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        out = self.settings["output_tokens"] if self.settings is not None else DEFAULT_OUTPUT_TOKENS
        object.__setattr__(self, "out_tokens", float(out))
        object.__setattr__(self, "counts", counts_read(self.rules))

    @property
    def unguarded(self) -> tuple[int, ...]:
        """The rules tried on every request (no index guard), ascending."""
        return self.index.unguarded

    @property
    def pattern_rules(self) -> tuple[tuple[int, ...], ...]:
        """Pattern id -> the rules a match of that pattern makes candidates, ascending."""
        return self.index.pattern_rules


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    """`budget daily $50 per user`: period (hourly | daily | monthly), USD limit, and the attribute it is per."""

    period: str
    limit: float
    per: str | None
    span: n.Span
