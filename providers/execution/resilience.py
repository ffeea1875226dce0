"""Resilience rules: a provider error (or a skip reason) in, an `Attempt` record, a retry delay and a
"what next" verdict (retry / fall back / skip the provider) out; plus `RoutingError` when every attempt fails.

Transient errors (rate limited, timeout, connection, server error, malformed reply) are retried on the same
model up to `retry.attempts` times with exponential backoff and full jitter in [delay/2, delay], where
delay = retry.backoff * 2**n; a Retry-After from the provider replaces the computed delay. Every wait is
capped by retry.max_backoff. Bad request and auth errors are never retried, and the rest of that provider's
models are skipped; context-too-long skips every later model whose context is not larger; content filtered
and invalid output fall back at once. Only transient errors count towards a model's circuit breaker.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from providers.errors import AuthError, BadRequest, ContextTooLong, ProviderError

if TYPE_CHECKING:
    from engine import Decision

NO_RETRY_PROVIDER = (AuthError, BadRequest)


class InvalidOutput(ProviderError):
    """The answer did not validate against the requested schema (counts as a failure and falls back)."""


class StreamInterrupted(ProviderError):
    """A stream failed after its first token: the text already delivered is kept and nothing is retried."""


@dataclass(frozen=True)
class Attempt:
    """One try (or skip) of one model. outcome: ok | error | skipped | cancelled. `retry` counts tries of the
    same model before this one; `wait_s` is the backoff slept after it; `message` is redacted text."""

    model: str
    provider: str
    outcome: str
    error: str | None = None
    status: int | None = None
    latency_s: float = 0.0
    retry: int = 0
    message: str = ""
    wait_s: float = 0.0

    def __str__(self) -> str:
        if self.outcome == "ok":
            return f"{self.model} ({self.provider}): ok in {self.latency_s * 1000:.0f}ms"
        what = self.error or self.outcome
        status = f" {self.status}" if self.status is not None else ""
        retry = f" (retry {self.retry})" if self.retry else ""
        text = f": {self.message}" if self.message else ""
        return f"{self.model} ({self.provider}){retry}: {self.outcome} {what}{status}{text}"


def failed(model: str, provider: str, error: ProviderError, latency_s: float, retry: int) -> Attempt:
    return Attempt(model, provider, "error", type(error).__name__, error.status, latency_s, retry, error.message)


class RoutingError(RuntimeError):
    """Every model of the decision's plan failed or was skipped, or the request's deadline passed first
    (`deadline_passed`); `.attempts` lists each try, in order."""

    def __init__(
        self,
        attempts: list[Attempt],
        decision: Decision | None = None,
        message: str | None = None,
        *,
        deadline_passed: bool = False,
    ):
        self.attempts, self.decision, self.deadline_passed = list(attempts), decision, deadline_passed
        lines = "\n".join(f"  {i}. {a}" for i, a in enumerate(self.attempts, 1)) or "  (no model was tried)"
        head = message or f"every model failed ({len(self.attempts)} attempts)"
        super().__init__(f"{head}:\n{lines}")

    @property
    def last_error(self) -> str | None:
        return next((a.error for a in reversed(self.attempts) if a.error), None)


@dataclass(frozen=True)
class RetryPolicy:
    """`retry.*` settings: how many retries of a transient error, the first delay and the cap."""

    attempts: int = 2
    backoff: float = 0.2
    max_backoff: float = 5.0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None) -> RetryPolicy:
        if settings is None:
            return cls()
        return cls(
            int(settings["retry.attempts"]), float(settings["retry.backoff"]), float(settings["retry.max_backoff"])
        )

    def delay(self, error: ProviderError, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `retry + 1` (Retry-After wins; always <= max_backoff)."""
        if error.retry_after is not None:
            return min(max(0.0, error.retry_after), self.max_backoff)
        base = min(self.backoff * (2**retry), self.max_backoff)
        return (rng or random).uniform(base / 2, base)

    def should_retry(self, error: ProviderError, retry: int) -> bool:
        return error.transient and retry < self.attempts


def circuit_outcome(error: ProviderError) -> Literal["fail", "neutral"]:
    """How a failure counts for the circuit breaker: "fail" (transient) or "neutral" (a request problem)."""
    return "fail" if error.transient else "neutral"


class Skips:
    """Models later in the chain that an earlier failure rules out (same provider after auth/bad request,
    too-small context after context-too-long)."""

    def __init__(self) -> None:
        self.providers: dict[str, str] = {}
        self.max_context: tuple[int, str] | None = None

    def note(self, error: ProviderError, provider: str, model: str, context: int) -> None:
        if isinstance(error, NO_RETRY_PROVIDER):
            self.providers.setdefault(provider, f"{type(error).__name__} from {provider} on {model}")
        if isinstance(error, ContextTooLong) and (self.max_context is None or context > self.max_context[0]):
            self.max_context = (context, model)

    def reason(self, provider: str, context: int) -> str | None:
        if provider in self.providers:
            return f"not retried on this provider after {self.providers[provider]}"
        if self.max_context is not None and context <= self.max_context[0]:
            return f"context {context:,} is not larger than {self.max_context[1]}'s, which was too small"
        return None
