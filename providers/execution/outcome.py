"""What one request carries and gives back: a Decision and the caller's prompt, messages and schema in, the
`Run` an executor works on and the `Completion` (or per-model `Result`) it returns out; also the message
conversion and the schema validation they use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.runtime.messages import legacy_functions
from engine.runtime.state import CircuitConfig
from providers.execution.budget import Reservation
from providers.execution.resilience import Attempt, InvalidOutput, RetryPolicy, Skips
from providers.types import (
    ChatRequest,
    ChatResponse,
    FinishReason,
    Message,
    ToolCall,
    Usage,
)

if TYPE_CHECKING:
    from engine import Decision
    from engine.runtime.policy import CompiledPolicy
    from providers.execution.holds import Bound

__all__ = ["Completion", "Result", "Run", "Verdict", "decide_messages", "to_messages", "validate"]


@dataclass(frozen=True)
class Verdict:
    """The best_of judge's verdict: the judge `model`, its `scores` (one per answer, in the order of
    Completion.answers; empty when it named a number only), its `reasoning` (the whole reply when it named a
    number instead of answering in JSON) and the `winner` (the model whose answer was chosen)."""

    model: str
    scores: list[float]
    reasoning: str
    winner: str


@dataclass(frozen=True, repr=False)
class Completion:
    """The answer to one request, with how it was obtained. `usage` and `cost` sum every call the request
    made (all race/consensus/best_of legs that answered, the judge, invalid answers); `answers` holds each
    group member's text for consensus and best_of; `agreement` is the consensus vote share; `judge` is the best_of
    judge's Verdict; `cached` says the response cache answered, and `cache_similarity` the cosine when it was found
    by meaning."""

    text: str
    parsed: Any
    usage: Usage
    cost: float
    model: str
    provider: str
    decision: Decision
    attempts: list[Attempt]
    strategy: str = "single"
    response: ChatResponse | None = None
    agreement: float | None = None
    answers: dict[str, str] = field(default_factory=dict)
    judge: Verdict | None = None
    estimated_cost: float = 0.0  # the part of `cost` estimated because an upstream reported no usage
    cached: bool = False  # answered from the response cache (no attempts, no cost)
    cache_similarity: float | None = None  # the cosine a cached answer was found at by meaning (`cache.semantic`)

    @property
    def tool_calls(self) -> list[ToolCall]:
        return self.response.tool_calls if self.response is not None else []

    @property
    def finish_reason(self) -> FinishReason | None:
        return self.response.finish_reason if self.response is not None else None

    def __repr__(self) -> str:
        tried = ", ".join(f"{a.model}:{a.error or a.outcome}" for a in self.attempts)
        hit = ""
        if self.cached:
            hit = "cached, " if self.cache_similarity is None else f"cached at {self.cache_similarity:.3f}, "
        return (
            f"Completion(model={self.model!r}, provider={self.provider!r}, strategy={self.strategy!r}, "
            f"cost=${self.cost:.6f}, tokens={self.usage.input_tokens}/{self.usage.output_tokens}, "
            f"{hit}attempts=[{tried}], text={self.text[:60]!r})"
        )


@dataclass
class Result:
    """One model's successful answer inside a request."""

    model: str
    provider: str
    response: ChatResponse
    parsed: Any = None


@dataclass
class Run:
    """Everything one request carries through its attempts. `timeout` is the caller's per-attempt bound (None:
    the provider's or the policy's); `deadline` is the monotonic time (time.monotonic()) by which the whole
    request must be done and `deadline_s` its length in seconds (both None: no overall bound)."""

    decision: Decision
    chat: ChatRequest
    schema: Any
    timeout: float | None
    cfg: CircuitConfig
    retry: RetryPolicy
    reservation: Reservation | None
    deadline: float | None = None
    deadline_s: float | None = None
    attempts: list[Attempt] = field(default_factory=list)
    skips: Skips = field(default_factory=Skips)
    probing: set[str] = field(default_factory=set)  # models whose half-open probe this request holds
    cost: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    bound: Bound | None = None  # what the request sends that its cost depends on (providers/execution/holds.py)
    max_cost: float | None = None  # the hold: the most this request may cost (set when a budget applies)
    estimated_cost: float = 0.0  # spend settled from estimates (an upstream reported no usage)
    estimated_calls: int = 0

    @property
    def policy(self) -> CompiledPolicy:
        return self.decision.policy

    @property
    def usage(self) -> Usage:
        estimated = self.estimated_calls > 0
        return Usage(input_tokens=self.input_tokens, output_tokens=self.output_tokens, estimated=estimated)


def to_messages(prompt: str | None, messages: list[Any] | None) -> list[Message]:
    """OpenAI-format message dicts (or Message objects) as providers.types Messages, read by the one message reader
    (`engine.runtime.messages`, lenient: bare string parts, `image`/`input_image` parts, unknown parts skipped)."""
    if messages is None:
        return [Message.user(prompt or "")]
    return [Message.from_openai(m) for m in legacy_functions(messages)]


def decide_messages(messages: list[Any] | None) -> list[Any] | None:
    """Messages as decide() reads them: providers.types Messages as OpenAI-format dicts with their parts (so the
    hard constraints see their images, audio and files), dicts as they are."""
    if messages is None:
        return None
    return [m.to_openai() if isinstance(m, Message) else m for m in messages]


def validate(schema: Any, text: str) -> Any:
    """The answer parsed with a pydantic model (tolerating a ```json fence); raises InvalidOutput."""
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[-1].rsplit("```", 1)[0]
    try:
        return schema.model_validate_json(body)
    except ValueError as exc:
        errors = exc.errors() if hasattr(exc, "errors") else []
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'answer'}: {e['msg']}" for e in errors[:3])
        raise InvalidOutput(f"answer does not match {schema.__name__}: {detail or exc}") from None
