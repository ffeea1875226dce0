"""Usage metering: a provider's answer, the model that gave it and what was sent in; the answer with its usage and
cost out, as the provider reported them or, when the upstream omitted them, estimated (never $0); plus the tally
of estimated calls and spend per model that `engine.usage()` reports.

Many OpenAI-compatible servers send no `usage`, and a stream that ignores `stream_options` never does. Then the
input tokens are the request's count by the engine's one token counter (what was sent, for this model's
provider kind) and the output tokens the counter's count of the answer's text and tool calls. A reported side is
kept; a missing one (0) is estimated, the input always, the output when the answer has text or tool calls. A
model whose price the catalog does not know costs `budget.unknown_price_hold` per call, or has no cost (None:
unknown) when the policy sets no hold. Such usage carries
`estimated=True` (on the ChatResponse's and the Completion's Usage) and is counted separately.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.runtime.constraints import price_known
from providers.types import Usage, tier_factor

if TYPE_CHECKING:
    from engine.runtime.policy import Entry
    from providers.types import ChatResponse

__all__ = ["EstimatedSpend", "Tally", "meter"]


def _answer_tokens(response: ChatResponse, count: Callable[[str], int]) -> int:
    total = count(response.text) if response.text else 0
    for call in response.tool_calls:
        total += count(call.name) + (count(call.arguments) if call.arguments else 0)
    return total


def meter(
    response: ChatResponse,
    entry: Entry,
    sent: Callable[[], int],
    count: Callable[[str], int],
    unknown_hold: float | None,
) -> tuple[ChatResponse, bool]:
    """(the response with usage and cost, whether they were estimated). `sent()` is the request's input tokens for
    this model, `count` the engine's text estimator."""
    usage = response.usage
    tokens_in, tokens_out = usage.input_tokens, usage.output_tokens
    estimated = False
    if tokens_in <= 0:
        tokens_in, estimated = max(0, int(sent())), True
    if tokens_out <= 0 and (response.text or response.tool_calls):
        tokens_out, estimated = max(0, int(_answer_tokens(response, count))), True
    known = price_known(entry)
    if not estimated and known and response.cost is not None:
        return response, False
    cost: float | None
    if known:  # at the price multiplier of the service tier it was served at (the catalog's `service_tiers`)
        cost = (tokens_in * entry.ip + tokens_out * entry.op) * tier_factor(entry.spec, response.service_tier)
    else:  # the price is unknown: the hold when the policy sets one, else no cost at all (None, never $0)
        cost, estimated = (float(unknown_hold) if unknown_hold is not None else None), True
    metered = Usage(input_tokens=tokens_in, output_tokens=tokens_out, estimated=estimated)
    return response.model_copy(update={"usage": metered, "cost": cost}), estimated


@dataclass
class Tally:
    """Estimated calls of one model and their cost."""

    provider: str
    calls: int = 0
    cost: float = 0.0


class EstimatedSpend:
    """Per model, the calls settled from an estimate and their cost, in this process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, Tally] = {}

    def add(self, model: str, provider: str, cost: float) -> None:
        with self._lock:
            tally = self._models.setdefault(model, Tally(provider))
            tally.calls += 1
            tally.cost += cost

    def snapshot(self) -> dict[str, Tally]:
        with self._lock:
            return {m: Tally(t.provider, t.calls, t.cost) for m, t in self._models.items()}
