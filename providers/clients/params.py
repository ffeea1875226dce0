"""Chat-completions parameters per provider kind: a ChatRequest's `params` (the OpenAI fields beyond the ones
ChatRequest holds itself) and a provider kind in; which of them that kind translates, which it drops, and the
numbers a translation uses (reasoning budgets) out.

One table for the clients (what they put on the wire), the gateway (the `x-modelroute-dropped-params` header,
`set params.unsupported = reject`) and docs/gateway.md. An OpenAI-kind provider (openai, azure, any
OpenAI-compatible server) gets every field as the client sent it, unknown ones too, except the EXTENSIONS (fields
chat completions does not have, carried from Anthropic's Messages API) and UNSENT; Anthropic and Gemini get the
fields listed for them in TRANSLATED, translated, and every other field is dropped.

Thinking: an Anthropic `thinking` object (`enabled` with its exact `budget_tokens`, `disabled`, `adaptive`) goes to
Anthropic as it is and to Gemini as that exact `thinkingBudget` (0 for disabled, -1 dynamic for adaptive); only an
OpenAI kind gets it as a reasoning_effort (EFFORT_OF_BUDGET). A reasoning_effort goes to Anthropic and Gemini as a
budget (_ANTHROPIC_BUDGET, _GEMINI_BUDGET). Gemini counts thinking against maxOutputTokens, so with a max_tokens
the budget is cut below it (as on Anthropic); a budget cut under GEMINI_MIN_BUDGET is not sent and is named.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from providers.types import ChatRequest

__all__ = [
    "ANTHROPIC_MIN_BUDGET",
    "CORE_FIELDS",
    "EFFORT_OF_BUDGET",
    "EXTENSIONS",
    "FANOUT_KINDS",
    "GEMINI_MIN_BUDGET",
    "JSON_TOOL",
    "OPENAI_FIELDS",
    "REASONING_EFFORTS",
    "TRANSLATED",
    "UNSENT",
    "anthropic_thinking",
    "choices",
    "dropped",
    "gemini_thinking",
    "json_tool",
    "openai_params",
    "thinking_of",
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
#: Fields chat completions does not have, carried from Anthropic's Messages API (`top_k`, `thinking`, the top-level
#: `cache_control`, as Anthropic defines them): Anthropic takes them, Gemini translates `top_k` and `thinking`, an
#: OpenAI kind is not sent them (see openai_params). A content part's `cache_control` goes to Anthropic only too.
EXTENSIONS = ("cache_control", "thinking", "top_k")
#: Fields carried from another wire that no chat-completions provider takes (the Responses API's max_tool_calls):
#: never sent, always named as dropped.
UNSENT = ("max_tool_calls",)
#: OpenAI's reasoning_effort values (the gateway refuses any other).
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
#: An Anthropic thinking budget as an OpenAI reasoning_effort, for OpenAI kinds only: the first effort whose bound
#: the budget is under, else "high".
EFFORT_OF_BUDGET = ((4096, "low"), (16384, "medium"))
#: The `params` each non-OpenAI kind translates (kinds not listed take every field as sent). `metadata` is
#: routing attributes first: it is never named as dropped (the Anthropic `metadata.user_id` comes from `user`).
TRANSLATED: dict[str, frozenset[str]] = {
    "anthropic": frozenset(
        {"metadata", "n", "parallel_tool_calls", "reasoning_effort", "response_format", "safety_identifier", "top_p"}
        | {"user", *EXTENSIONS}
    ),
    "gemini": frozenset(
        {"frequency_penalty", "logprobs", "metadata", "n", "presence_penalty", "reasoning_effort"}
        | {"response_format", "seed", "top_logprobs", "top_p", "thinking", "top_k"}
    ),
}
#: Kinds without a native `n`: a request for n answers is n calls (or refused with `set n.fanout = false`).
FANOUT_KINDS = frozenset({"anthropic"})
#: The tool that carries a JSON answer on an Anthropic model without native structured output: forced, and its
#: input is returned as the message's text.
JSON_TOOL = "modelroute_json_response"
#: reasoning_effort as an Anthropic `thinking.budget_tokens` (the API's minimum is 1024) and a Gemini
#: `thinkingBudget` (Google's OpenAI-compatible mapping; 0 turns thinking off where the model allows it).
_ANTHROPIC_BUDGET = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096, "xhigh": 8192}
_GEMINI_BUDGET = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576}
ANTHROPIC_MIN_BUDGET = 1024
#: The smallest thinkingBudget sent to Gemini after cutting it below max_tokens (Gemini 2.5 Pro's minimum).
GEMINI_MIN_BUDGET = 128


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


def thinking_of(params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The Anthropic `thinking` object a request carries (the gateway checked it), or None."""
    value = params.get("thinking")
    return value if isinstance(value, dict) and value.get("type") in ("enabled", "disabled", "adaptive") else None


def anthropic_thinking(req: ChatRequest, supports: Collection[str], max_tokens: int | None) -> dict[str, Any] | None:
    """The `thinking` object for `req` on an Anthropic model, or None (none sent): the request's own `thinking`
    as it is; else reasoning_effort as a budget, None for "none", a forced tool choice or the forced JSON tool
    (Anthropic refuses thinking with them), or an explicit max_tokens too small to leave room for 1024 thinking
    tokens. With an explicit max_tokens an effort's budget is cut to fit below it, so max_tokens stays the bound
    on the output a budget hold counts."""
    given = thinking_of(req.params)
    if given is not None:
        return given
    effort = req.params.get("reasoning_effort")
    budget = _ANTHROPIC_BUDGET.get(effort) if isinstance(effort, str) else None
    forced = req.tool_choice not in (None, "auto", "none")
    if budget is None or forced or json_tool(req, supports):
        return None
    if max_tokens is not None:
        budget = min(budget, max_tokens - 1)
    return {"type": "enabled", "budget_tokens": budget} if budget >= ANTHROPIC_MIN_BUDGET else None


def _thinks(thinking: Mapping[str, Any] | None) -> bool:
    return thinking is not None and thinking.get("type") != "disabled"


def gemini_thinking(req: ChatRequest) -> int | None:
    """The Gemini `thinkingBudget` for `req` (None: none sent): its `thinking` object's exact budget (0 disabled,
    -1 adaptive), else its reasoning_effort's (_GEMINI_BUDGET); cut below an explicit max_tokens (thinking counts
    against maxOutputTokens), and None when that leaves less than GEMINI_MIN_BUDGET."""
    given = thinking_of(req.params)
    if given is not None:
        kind = given["type"]
        raw = given.get("budget_tokens") if kind == "enabled" else {"disabled": 0, "adaptive": -1}[kind]
        budget = raw if isinstance(raw, int) else None
    else:
        effort = req.params.get("reasoning_effort")
        budget = _GEMINI_BUDGET.get(effort) if isinstance(effort, str) else None
    if budget is not None and budget > 0 and req.max_tokens is not None:
        budget = min(budget, req.max_tokens - 1)
        return budget if budget >= GEMINI_MIN_BUDGET else None
    return budget


def openai_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The params an OpenAI-kind provider is sent: every one but the EXTENSIONS, and an enabled `thinking` as a
    reasoning_effort (EFFORT_OF_BUDGET) when the request has none of its own."""
    out = {name: value for name, value in params.items() if name not in EXTENSIONS and name not in UNSENT}
    given = thinking_of(params)
    budget = given.get("budget_tokens") if given is not None and given["type"] == "enabled" else None
    if isinstance(budget, int) and "reasoning_effort" not in out:
        out["reasoning_effort"] = next((e for bound, e in EFFORT_OF_BUDGET if budget < bound), "high")
    return out


def user_id(params: Mapping[str, Any]) -> str | None:
    """The end-user id for Anthropic's `metadata.user_id`: `safety_identifier`, else `user`."""
    for name in ("safety_identifier", "user"):
        value = params.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def dropped(req: ChatRequest, kind: str, supports: Collection[str] = ()) -> list[str]:
    """The request fields a provider of `kind` (a model that `supports` these catalog features) has no
    counterpart for, sorted: they are not sent. For OpenAI-kind providers only the EXTENSIONS openai_params does
    not translate. On Anthropic, thinking does not combine with `temperature`, `top_p` or `top_k`: they are
    dropped then; reasoning_effort is dropped when thinking cannot be used (see anthropic_thinking) or the request
    has its own `thinking`. On Gemini a reasoning_effort or thinking that gemini_thinking does not send is dropped."""
    known = TRANSLATED.get(kind)
    cached = kind != "anthropic" and any(m.cached() for m in req.messages)  # a part's cache breakpoint
    if known is None:
        given = thinking_of(req.params)
        mapped = given is not None and given["type"] == "enabled" and "reasoning_effort" not in req.params
        unsent = (*EXTENSIONS, *UNSENT)
        found = {name for name in unsent if name in req.params and not (name == "thinking" and mapped)}
        return sorted(found | ({"cache_control"} if cached else set()))
    out = {name for name in req.params if name not in known} | ({"cache_control"} if cached else set())
    wants = "thinking" if thinking_of(req.params) is not None else "reasoning_effort"
    asked = wants == "thinking" or req.params.get("reasoning_effort") not in (None, "none")
    if wants == "thinking" and "reasoning_effort" in req.params:
        out.add("reasoning_effort")
    if kind == "anthropic" and asked:
        thinking = anthropic_thinking(req, supports, req.max_tokens)
        if thinking is None:
            out.add(wants)
        elif _thinks(thinking):
            out.update(name for name in ("top_p", "top_k") if name in req.params)
            if req.temperature is not None:
                out.add("temperature")
    if kind == "gemini" and wants in req.params and gemini_thinking(req) is None:
        out.add(wants)
    return sorted(out)
