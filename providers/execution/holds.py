"""Budget holds: a request as it will be sent upstream (its token count, output bound and choices) and its
decision in, the most that request may cost (the amount held on its budgets) out; also the refusals that come
before any call: `UnsendableRequest` (the request cannot be serialised) and `UnknownPrice` (a model without a
known price under a budget).

What a hold covers, per model: input tokens as counted by the engine's one token counter for that model's
provider kind (every message part, tools, the response-format schema, images), at most the caller's own
`tokens=` count when larger, times `n` on a provider kind that answers `n` with n calls (FANOUT_KINDS);
output tokens = the body's `max_tokens` (capped by the model's `max_output` when the catalog gives one) times
`n`, at the model's catalog prices, times the price multiplier of the request's `service_tier` when the model
lists `service_tiers` (a tier it does not list: its highest multiplier). Reasoning tokens are output tokens
(every provider bounds them by the same `max_tokens`). See docs/execution.md, "Budgets".
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.runtime.constraints import price_known
from providers.clients.params import FANOUT_KINDS
from providers.execution.budget import BudgetExceeded, label
from providers.types import tier_factor

if TYPE_CHECKING:
    from engine import Decision
    from engine.runtime.budget import Applicable
    from engine.runtime.policy import BudgetSpec, Entry
    from engine.runtime.tokens import TokenCount
    from providers.types import ChatRequest

__all__ = [
    "OUTPUT_KEYS",
    "Bound",
    "UnknownPrice",
    "UnsendableRequest",
    "check_chat",
    "choices_of",
    "model_cost",
    "output_of",
    "plan_cost",
    "sendable",
]

#: `extra` keys that replace the output bound on the wire (OpenAI chat, OpenAI responses, Anthropic)
OUTPUT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


class UnsendableRequest(ValueError):
    """The request cannot be sent: a part of it cannot be serialised as JSON in UTF-8 (NaN or infinity, a lone
    surrogate, a value JSON has no form for, nesting too deep). The caller's mistake: raised by prepare, before
    any decision is executed, any money is held or any call is made."""


class UnknownPrice(BudgetExceeded):
    """A budget applies and a model the plan may call has no known price, so the request cannot be held; refused
    before any call. `set budget.unknown_price_hold = $X` holds $X per call of such a model instead."""

    def __init__(self, model: str, items: list[Applicable], key: str | None = None):
        spec = items[0].spec if items else None
        self.budget: BudgetSpec | None = spec  # type: ignore[assignment]  # None: a budget outside the policy
        self.key, self.model = key or (items[0].key if items else ""), model
        self.used, self.needed, self.limit = 0.0, math.inf, float(spec.limit) if spec is not None else 0.0
        what = label(spec) if spec is not None else "a budget"
        Exception.__init__(
            self,
            f"model {model} has no known price, so a request that may call it cannot be held against {what}; "
            f"refused before any call. Give it a price in the catalog, or set budget.unknown_price_hold = $X "
            f"to hold $X for each call of it",
        )


def sendable(value: Any, what: str) -> str:
    """`value` as the JSON text the clients will send; raises UnsendableRequest naming `what`."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsendableRequest(
            f"{what} holds text that is not valid Unicode (a lone surrogate?): it cannot be sent"
        ) from None
    except RecursionError:
        raise UnsendableRequest(f"{what} is nested too deeply to be sent as JSON") from None
    except (ValueError, TypeError) as exc:
        raise UnsendableRequest(f"{what} cannot be sent as JSON: {exc}") from None
    return text


def check_chat(chat: ChatRequest) -> str:
    """Raises UnsendableRequest when any part of `chat` cannot be serialised; returns the tools' JSON text (what
    the token counter counts)."""
    sendable([m.model_dump(mode="python") for m in chat.messages], "a message")
    sendable([chat.system, chat.stop, chat.tool_choice], "the system text, stop sequences or tool choice")
    if chat.response_format is not None:
        sendable(chat.response_format.json_schema, "the response schema")
    sendable(chat.extra, "`extra`")
    sendable(chat.params, "a request field")
    return sendable(chat.tools, "a tool definition") if chat.tools else ""


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def output_of(max_tokens: int | None, extra: Mapping[str, Any]) -> int | None:
    """The output bound per choice a hold counts: `max_tokens`, or more when `extra` sets a larger output key, never
    less. An `extra` key may be one the model's wire format does not read (`max_output_tokens` to an OpenAI chat
    model) while `max_tokens` goes on the wire as it is, so a smaller one cannot lower the bound; None (no bound)
    wins."""
    bounds = [max_tokens, *(_count(extra.get(k)) for k in OUTPUT_KEYS if k in extra)]
    config = extra.get("generationConfig")
    if isinstance(config, Mapping) and "maxOutputTokens" in config:
        bounds.append(_count(config.get("maxOutputTokens")))
    return None if None in bounds else max(b for b in bounds if b is not None)


def choices_of(options: Mapping[str, Any], extra: Mapping[str, Any]) -> int:
    """How many answers one call asks for (`n`, or Gemini's `candidateCount`): each is billed as output."""
    config = extra.get("generationConfig")
    found = [options.get("n"), extra.get("n"), config.get("candidateCount") if isinstance(config, Mapping) else None]
    return max([1, *(c for c in map(_count, found) if c is not None)])


@dataclass(frozen=True)
class Bound:
    """What a request's cost depends on: `tokens(kind)` its input tokens on a provider of that kind, `output`
    output tokens per answer (None: not bounded), `choices` answers per call, `judge_prompt` the tokens of the
    best_of judge's own prompt text."""

    tokens: Callable[[str | None], int]
    output: float | None
    choices: int = 1
    judge_prompt: int = 0
    tier: str | None = None  # the OpenAI service_tier asked for

    @classmethod
    def of(
        cls,
        count: TokenCount,
        output: float | None,
        choices: int,
        floor: int = 0,
        judge: int = 0,
        tier: str | None = None,
    ) -> Bound:
        """A bound from a token count; `floor` (the caller's own `tokens=` count) can only raise the input, which
        a provider kind that answers `choices` with as many calls receives that many times."""

        def tokens(kind: str | None) -> int:
            sent = max(floor, count.for_kind(kind))
            return sent * choices if kind in FANOUT_KINDS else sent

        return cls(tokens, output, choices, judge, tier)


def model_cost(
    entry: Entry,
    kind: str | None,
    bound: Bound,
    unknown_hold: float | None,
    *,
    input_tokens: float | None = None,
    output: float | None = None,
    choices: int | None = None,
) -> float:
    """The most one call of `entry` may cost: input tokens (the bound's for the model's provider kind, or
    `input_tokens`) and `output` (default: the bound's, capped by the model's `max_output`) times `choices`.
    A model without a known price costs `unknown_hold`; raises LookupError (its name) when that is None too."""
    if not price_known(entry):
        if unknown_hold is None:
            raise LookupError(entry.name)
        return float(unknown_hold)
    out = bound.output if output is None else output
    if out is None:
        raise ValueError(f"the output of {entry.name} is not bounded")
    cap = getattr(entry.spec, "max_output", None)
    if isinstance(cap, int) and cap > 0 and output is None:
        out = min(out, cap)
    tokens = bound.tokens(kind) if input_tokens is None else input_tokens
    cost = tokens * entry.ip + out * (bound.choices if choices is None else choices) * entry.op
    return cost * tier_factor(entry.spec, bound.tier)


def plan_cost(
    decision: Decision,
    cost: Callable[[str], float],
    judge: Callable[[str], float] | None,
    after_group: list[str],
) -> float:
    """The most a request may cost over every model its plan may call: the dearest model of the plan for a single
    rule; for a group every member, the judge (`judge(name)`) and the dearest of the plan's other models."""
    models = decision.policy.models
    chain = [name for name in decision.chain if name in models]
    if decision.strategy == "single":
        return max((cost(name) for name in chain), default=0.0)
    total = sum(cost(m) for m in decision.group)
    if decision.judge and judge is not None:
        total += judge(decision.judge)
    return total + max((cost(m) for m in after_group if m in chain), default=0.0)
