"""AST of the .route language: the parser's output and the compiler's input; every node has a Span."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar


@dataclass(frozen=True, slots=True)
class Span:
    """A region of a source file, 1-based lines and columns, end exclusive."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


# ---- values ------------------------------------------------------------------------------------

# Literal kinds and their normalised Python values:
# count -> float (k/M applied), duration -> float seconds, money -> float USD,
# price -> float USD per token, percent -> float fraction (20% -> 0.2), string -> str,
# name -> str (a bare word), bool -> bool.


@dataclass(frozen=True, slots=True)
class Literal:
    kind: str
    value: object
    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class ListLit:
    items: tuple[Literal, ...]
    span: Span


Value = Literal | ListLit


# ---- patterns ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pattern:
    """A regex `/src/flags` (is_regex) or a phrase `"words"` matched whole-word."""

    source: str
    flags: str
    is_regex: bool
    span: Span


# ---- conditions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskMatch:
    """`task ~ /re/` or `task ~ "phrase"`: search the prompt."""

    pattern: Pattern
    span: Span


@dataclass(frozen=True, slots=True)
class TaskIs:
    """`task is NAME`: any pattern of a declared task matches, or (a task with `like` examples) the request is
    close enough in meaning to its nearest example."""

    name: str
    name_span: Span
    span: Span


@dataclass(frozen=True, slots=True)
class Operand:
    """`tokens` (builtin), a request attribute name (possibly dotted), with `call` a Python function's name:
    `complexity()` calls the function given to Engine.load(functions=...) with the request, or with `task` the
    cosine similarity of the request to a semantic task's nearest example: `similarity(code)`."""

    name: str
    builtin: bool
    span: Span
    call: bool = False
    #: `similarity(code)`: the task named in the parentheses (name is then the function's name, `similarity`; the
    #: compiler checks it), with its span. None for every other operand.
    task: str | None = None
    task_span: Span | None = None


@dataclass(frozen=True, slots=True)
class Compare:
    left: Operand
    op: str
    right: Value
    span: Span


@dataclass(frozen=True, slots=True)
class InList:
    left: Operand
    right: ListLit
    span: Span


@dataclass(frozen=True, slots=True)
class Truthy:
    operand: Operand
    span: Span


@dataclass(frozen=True, slots=True)
class Not:
    operand: Cond
    span: Span


@dataclass(frozen=True, slots=True)
class And:
    operands: tuple[Cond, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Or:
    operands: tuple[Cond, ...]
    span: Span


Cond = TaskMatch | TaskIs | Compare | InList | Truthy | Not | And | Or
ATOMS = (TaskMatch, TaskIs, Compare, InList, Truthy)
#: Every condition kind: each stage that handles conditions dispatches through a table checked by `exhaustive`.
CONDITIONS: tuple[type, ...] = (*ATOMS, Not, And, Or)

_T = TypeVar("_T")


def exhaustive(table: Mapping[type, _T], stage: str, kinds: tuple[type, ...] | None = None) -> Mapping[type, _T]:
    """`table` (node class -> handler), checked at import: raises TypeError when a kind (by default every
    condition kind, CONDITIONS) has no case."""
    missing = [k.__name__ for k in (CONDITIONS if kinds is None else kinds) if k not in table]
    if missing:
        raise TypeError(f"{stage} has no case for: {', '.join(missing)}")
    return table


# ---- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelRef:
    name: str
    span: Span


@dataclass(frozen=True, slots=True)
class ScoreTerm:
    """One term of `score(...)`: `coef * factor`, where factor is capability (with its name), cost, price,
    latency, context, tokens, attr (a request attribute, its name in `name`), call (a Python function,
    `complexity()`, its name in `name`) or similarity (`similarity(code)`, the task's name in `name`; another
    function name before the parentheses is kept in `call` for the compiler to report)."""

    coef: float
    factor: str
    name: str | None
    span: Span
    call: str | None = None  # factor similarity: the function name as written (the compiler checks `similarity`)


#: The factors a `score(...)` term may name (besides a request attribute, factor "attr").
SCORE_FACTORS = ("capability", "cost", "price", "latency", "context", "tokens")


@dataclass(frozen=True, slots=True)
class Ranking:
    """`capability(NAME)`, `cheapest`, `fastest`, `least_busy`, `healthiest`, `score(...)` (its terms) or
    `custom(NAME)` (a Python ranker given to Engine.load(rankers=...), its name in `ranker`)."""

    kind: str
    capability: str | None
    span: Span
    terms: tuple[ScoreTerm, ...] = ()
    ranker: str | None = None


@dataclass(frozen=True, slots=True)
class Constraint:
    """`metric op value`, `provider in [...]` or `supports X` after `where`."""

    metric: str  # latency | price | cost | context | capability | provider | supports
    op: str
    value: Value | None
    capability: str | None
    span: Span
    metric_span: Span


#: Group actions whose pick is one member, chosen by state or chance (execution calls only that one).
PICK_GROUPS = frozenset({"balance", "split"})
#: Group actions execution calls together (race, consensus, best_of).
FANOUT_GROUPS = frozenset({"race", "consensus", "best_of"})
#: Action kinds whose model comes from a listed group rather than the whole catalog: the one list of group kinds.
GROUP_ACTIONS = PICK_GROUPS | FANOUT_GROUPS


@dataclass(frozen=True, slots=True)
class Action:
    kind: str  # "use" | "prefer" | "balance" | "split" | "race" | "consensus" | "best_of"
    model: ModelRef | None
    rankings: tuple[Ranking, ...]
    where: tuple[Constraint, ...]
    fallbacks: tuple[ModelRef, ...]
    span: Span
    members: tuple[ModelRef, ...] = ()  # balance/split/race/consensus/best_of
    weights: tuple[Literal, ...] = ()  # split: one percentage per member
    mode: Literal | None = None  # balance: round_robin | random | least_busy
    judge: ModelRef | None = None  # best_of
    min_agreement: Literal | None = None  # consensus: agreeing answers needed (None: 1)
    among: tuple[ModelRef, ...] = ()  # prefer ... among [...]: the only models ranked (empty: the catalog)
    experiment: Literal | None = None  # split ... as "name": the experiment the split's picks report
    cache: Literal | None = None  # `cache 10m` / `cache off`: the rule's response-cache TTL (None: the policy's)

    @property
    def cache_ttl(self) -> float | None:
        """The rule's response-cache TTL in seconds (`cache 10m`: 600.0, `cache off`: 0.0), or None when the rule
        has no `cache` clause (the policy's `set cache.ttl` applies). The compiler admits only those two forms."""
        if self.cache is None:
            return None
        return 0.0 if self.cache.kind == "name" else float(self.cache.value)  # type: ignore[arg-type]


# ---- statements --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """`when COND ACTION` or, with cond None, `otherwise ACTION`."""

    cond: Cond | None
    action: Action
    span: Span
    text: str = ""


@dataclass(frozen=True, slots=True)
class Example:
    """One example of a semantic task: its text and where it is written (a string in the policy, or a line of an
    example file)."""

    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class Like:
    """`like ["example", ...]` (its examples) or `like "examples.txt"` (`file` as written; the loader sets `path`,
    resolved against the policy file that names it), optionally `>= t` (`op` and `threshold` as written; the
    compiler checks both)."""

    examples: tuple[Example, ...]
    file: str | None
    threshold: Literal | None
    span: Span
    source_span: Span  # the list or the file name
    op: str = ">="
    path: str | None = None


@dataclass(frozen=True, slots=True)
class TaskDecl:
    """`task NAME = pattern, ..., like [...]`: its patterns and its `like` items (the compiler allows one)."""

    name: str
    patterns: tuple[Pattern, ...]
    name_span: Span
    span: Span
    likes: tuple[Like, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelAlias:
    name: str
    target: ModelRef
    name_span: Span
    span: Span


@dataclass(frozen=True, slots=True)
class Include:
    path: str
    span: Span


@dataclass(frozen=True, slots=True)
class CatalogRef:
    """`catalog [FORMAT] "path" [overlay "path"]`; paths are resolved against the policy file by the loader."""

    path: str
    span: Span
    format: str | None = None  # None: modelroute YAML; "litellm": LiteLLM's price file
    overlay: str | None = None


@dataclass(frozen=True, slots=True)
class Setting:
    """`set NAME = value`: an execution setting (see engine/settings.py)."""

    name: str
    value: Value
    name_span: Span
    span: Span


@dataclass(frozen=True, slots=True)
class Budget:
    """`budget daily $50 [per user]`."""

    period: str
    amount: Literal
    per: str | None
    period_span: Span
    span: Span


@dataclass(frozen=True, slots=True)
class RateLimit:
    """`limit 60 rpm [per key]`: `amount` a count literal, `unit` as written (the compiler checks rpm | tpm; "" when
    it was left out, E315), `per` the request attribute whose every value has its own limit (None: one limit for
    every request)."""

    amount: Literal
    unit: str
    per: str | None
    unit_span: Span
    span: Span
    per_span: Span | None = None


@dataclass(frozen=True, slots=True)
class Assign:
    name: str
    value: Value
    span: Span


@dataclass(frozen=True, slots=True)
class Expect:
    """`expect "prompt" [with k=v, ...] -> MODEL [by rule N | by line N] [fallback A, B] [plan A, B, C]
    [task T, U] [nearest T "example"]...` or `-> no route`."""

    prompt: str
    attrs: tuple[Assign, ...]
    model: ModelRef | None
    by: tuple[str, int] | None  # ("rule", ordinal) or ("line", line)
    fallbacks: tuple[ModelRef, ...] | None
    span: Span
    plan: tuple[ModelRef, ...] | None = None  # the whole failover plan, chosen model first
    tasks: tuple[ModelRef, ...] = ()  # `task code, legal`: tasks that must be detected (a ModelRef: name and span)
    nearest: tuple[tuple[ModelRef, str], ...] = ()  # `nearest code "example"`: (task, its expected nearest example)


@dataclass(frozen=True, slots=True)
class TestBlock:
    name: str
    expects: tuple[Expect, ...]
    span: Span


Stmt = Rule | TaskDecl | ModelAlias | Include | CatalogRef | Setting | Budget | RateLimit | TestBlock


@dataclass(frozen=True, slots=True)
class Module:
    """One parsed source file."""

    file: str
    source: str
    body: tuple[Stmt, ...] = field(default_factory=tuple)


def calls_in(cond: Cond | None) -> list[Operand]:
    """The function calls (`complexity()`) a condition makes, in order."""
    if cond is None:
        return []
    out = []
    for node in walk_cond(cond):
        operand = (
            node.operand if isinstance(node, Truthy) else node.left if isinstance(node, (Compare, InList)) else None
        )
        if isinstance(operand, Operand) and operand.call:
            out.append(operand)
    return out


def walk_cond(cond: Cond):
    """Yield every node of a condition tree, parents first."""
    stack = [cond]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (And, Or)):
            stack.extend(reversed(node.operands))
        elif isinstance(node, Not):
            stack.append(node.operand)
