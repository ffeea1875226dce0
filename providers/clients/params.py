"""Chat-completions parameters per provider kind: a ChatRequest's `params` (the OpenAI fields beyond the ones
ChatRequest holds itself) and a provider kind in; which of them that kind translates, which it drops, and the
numbers a translation uses (reasoning budgets) out.

One table for the clients (what they put on the wire), the gateway (the `x-modelroute-dropped-params` header,
`set params.unsupported = reject`) and docs/gateway.md. An OpenAI-kind provider (openai, azure, any
OpenAI-compatible server) gets every field as the client sent it, unknown ones too; Anthropic and Gemini get
the fields listed for them in TRANSLATED, translated, and every other field is dropped.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from providers.types import ChatRequest

__all__ = [
    "ANTHROPIC_MIN_BUDGET",
    "CORE_FIELDS",
    "FANOUT_KINDS",
    "JSON_TOOL",
    "OPENAI_FIELDS",
    "TRANSLATED",
    "anthropic_thinking",
    "choices",
    "dropped",
    "gemini_thinking",
    "json_tool",
    "user_id",
]

#: The chat-completions fields the gateway reads into ChatRequest's own fields (or routes by): every provider
#: kind gets them, translated by its client.
CORE_FIELDS = (
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "tools",
    "tool_choice",
    "stop",
    "functions",
    "function_call",
)
#: Every other OpenAI chat-completions field (openai-python's completion_create_params): what `params` holds.
OPENAI_FIELDS = (
    "audio",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "metadata",
    "modalities",
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "store",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
    "web_search_options",
)
#: The `params` each non-OpenAI kind translates (kinds not listed take every field as sent). `metadata` is
#: routing attributes first: it is never named as dropped (the Anthropic `metadata.user_id` comes from `user`).
TRANSLATED: dict[str, frozenset[str]] = {
    "anthropic": frozenset(
        {"metadata", "n", "parallel_tool_calls", "reasoning_effort", "response_format", "safety_identifier", "top_p"}
        | {"user"}
    ),
    "gemini": frozenset(
        {"frequency_penalty", "logprobs", "metadata", "n", "presence_penalty", "reasoning_effort"}
        | {"response_format", "seed", "top_logprobs", "top_p"}
    ),
}
#: Kinds without a native `n`: a request for n answers is n calls (or refused with `set n.fanout = false`).
FANOUT_KINDS = frozenset({"anthropic"})
#: The tool that carries a JSON answer on an Anthropic model without native structured output: forced, and its
#: input is returned as the message's text.
JSON_TOOL = "modelroute_json_response"
#: reasoning_effort as an Anthropic `thinking.budget_tokens` (the API's minimum is 1024) and a Gemini
#: `thinkingBudget` (Google's OpenAI-compatible mapping; 0 turns thinking off where the model allows it).
_ANTHROPIC_BUDGET = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096, "xhigh": 8192, "max": 16384}
_GEMINI_BUDGET = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576, "max": 24576}
ANTHROPIC_MIN_BUDGET = 1024


def choices(params: Mapping[str, Any]) -> int:
    """How many answers the request asks for (`n`, at least 1)."""
    n = params.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def json_tool(req: ChatRequest, supports: Collection[str]) -> bool:
    """Whether an Anthropic model answers `req`'s response_format through the forced JSON tool: the request
    asks for JSON, the model has no native structured output (`json_schema` in its catalog `supports`, or a
    json_object request) and the request has no tools of its own (a forced tool would shut them out; the
    format is then asked for in the system text)."""
    fmt = req.response_format
    if fmt is None or fmt.type == "text" or req.tools:
        return False
    return fmt.type == "json" or "json_schema" not in supports


def anthropic_thinking(req: ChatRequest, supports: Collection[str], max_tokens: int | None) -> int | None:
    """The `thinking.budget_tokens` for `req` on an Anthropic model, or None (no thinking): reasoning_effort
    "none", a forced tool choice or the forced JSON tool (Anthropic refuses thinking with them), or an explicit
    max_tokens too small to leave room for 1024 thinking tokens. With an explicit max_tokens the budget is cut
    to fit below it, so max_tokens stays the bound on the output a budget hold counts."""
    effort = req.params.get("reasoning_effort")
    budget = _ANTHROPIC_BUDGET.get(effort) if isinstance(effort, str) else None
    forced = req.tool_choice not in (None, "auto", "none")
    if budget is None or forced or json_tool(req, supports):
        return None
    if max_tokens is not None:
        budget = min(budget, max_tokens - 1)
    return budget if budget >= ANTHROPIC_MIN_BUDGET else None


def gemini_thinking(req: ChatRequest) -> int | None:
    """The Gemini `thinkingBudget` for `req`'s reasoning_effort (None: not set)."""
    effort = req.params.get("reasoning_effort")
    return _GEMINI_BUDGET.get(effort) if isinstance(effort, str) else None


def user_id(params: Mapping[str, Any]) -> str | None:
    """The end-user id for Anthropic's `metadata.user_id`: `safety_identifier`, else `user`."""
    for name in ("safety_identifier", "user"):
        value = params.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def dropped(req: ChatRequest, kind: str, supports: Collection[str] = ()) -> list[str]:
    """The request fields a provider of `kind` (a model that `supports` these catalog features) has no
    counterpart for, sorted: they are not sent. Empty for OpenAI-kind providers (everything goes as sent).
    On Anthropic, thinking (reasoning_effort) does not combine with `temperature` or `top_p`: they are dropped
    then, and reasoning_effort is dropped when thinking cannot be used (see anthropic_thinking)."""
    known = TRANSLATED.get(kind)
    if known is None:
        return []
    out = {name for name in req.params if name not in known}
    if kind == "anthropic" and req.params.get("reasoning_effort") not in (None, "none"):
        if anthropic_thinking(req, supports, req.max_tokens) is None:
            out.add("reasoning_effort")
        else:
            if req.temperature is not None:
                out.add("temperature")
            if "top_p" in req.params:
                out.add("top_p")
    return sorted(out)
