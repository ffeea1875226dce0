"""Preparing a request: the caller's prompt or messages, schema, options and attributes and an Executor in, a
decided Run out whose budget holds are in place (raises before any call: UnsendableRequest, NoRouteError,
BudgetExceeded / UnknownPrice, ValueError for a bad deadline).

Order matters for what may leak: everything that can fail (serialisation check, token count, decision, the
hold's amount) comes before the reservation, which is last; a reservation that fails part-way releases what it
held (providers/execution/budget.py). The attribute `max_tokens` is derived from the body (a caller's own is
dropped), and `tokens` is the one token counter's count of what is sent (unless the caller passed its own count,
which can only raise the hold). When a budget applies and the body sets no `max_tokens`,
`budget.max_output_tokens` is sent, so the hold is a bound.

The gateway's further chat-completions fields come as `options["params"]` (ChatRequest.params) and its
response_format as `options["response_format"]` (a ResponseFormat). Once decided, a request is refused
(UnsendableRequest, before any hold) when a model of the plan would need n calls for its `n` and `set n.fanout =
false` (or `n` is above `set n.max`, default 8), or when `set params.unsupported = reject` and a model of the plan
has no counterpart for one of its fields (providers/clients/params.py); `dropped_params` names those fields for
the model that answered.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from engine.runtime.settings import setting
from engine.runtime.state import CircuitConfig
from providers.clients.params import FANOUT_KINDS, choices, dropped
from providers.execution.deadlines import caller_deadline, request_deadline
from providers.execution.holds import (
    Bound,
    UnknownPrice,
    UnsendableRequest,
    check_chat,
    choices_of,
    model_cost,
    output_of,
    plan_cost,
)
from providers.execution.judging import JUDGE_MAX_TOKENS
from providers.execution.outcome import Run, decide_messages, to_messages
from providers.execution.resilience import RetryPolicy
from providers.types import ChatRequest, ResponseFormat

if TYPE_CHECKING:
    from engine import Decision
    from engine.runtime.budget import Applicable
    from providers.execution.executor import Executor

__all__ = ["dropped_params", "estimate", "hold", "prepare"]


def _chat(prompt: str | None, messages: list[Any] | None, schema: Any, options: Mapping[str, Any]) -> ChatRequest:
    """The ChatRequest as it will be sent (without its `max_tokens`, which depends on the decision)."""
    fmt = options.get("response_format")
    if schema is not None:
        fmt = ResponseFormat(
            type="json_schema", json_schema=schema.model_json_schema(), name=schema.__name__, strict=False
        )
    tools = options.get("tools")
    return ChatRequest(
        messages=to_messages(prompt, messages),
        system=options.get("system"),
        temperature=options.get("temperature"),
        tools=tools if isinstance(tools, list) else [],
        tool_choice=options.get("tool_choice"),
        response_format=fmt,
        stop=options.get("stop") or [],
        extra=options.get("extra") or {},
        params=options.get("params") or {},
    )


def _caller_tokens(value: Any) -> int:
    """The caller's own `tokens=` count (it may only raise the hold); 0 when absent or unusable (decide() then
    refuses an unusable one with RequestError)."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf"):
        return int(value)
    return 0


def prepare(
    ex: Executor,
    prompt: str | None,
    messages: list[Any] | None,
    schema: Any,
    options: Mapping[str, Any],
    attrs: dict[str, Any],
    decide: Callable[[dict[str, Any]], Decision] | None = None,
) -> Run:
    """See Executor.prepare."""
    started = time.monotonic()
    caller = caller_deadline(options)
    chat = _chat(prompt, messages, schema, options)
    tools_json = check_chat(chat)
    fmt = chat.response_format
    count = ex.engine.count_tokens(
        messages=chat.messages,
        system=chat.system,
        tools=tools_json or None,
        response_format=fmt.json_schema if fmt is not None else None,
    )
    held = count  # what the hold counts: on Anthropic a response format may go as a tool, with its tool prompt
    if fmt is not None and fmt.type != "text" and not count.tools:
        held = dataclasses.replace(count, tools=True)
    if chat.tools:
        attrs.setdefault("tools", True)
    attrs.pop("max_tokens", None)  # derived from the body, never the caller's: it sizes the hold
    if options.get("max_tokens") is not None:
        attrs["max_tokens"] = options["max_tokens"]
    floor = _caller_tokens(attrs.get("tokens"))
    attrs.setdefault("tokens", count.worst)
    if decide is not None:
        decision = decide(attrs)
    else:
        decision = ex.engine.decide(prompt, messages=decide_messages(messages), **attrs)
    policy = decision.policy
    settings = policy.settings
    _check_params(ex, decision, chat.model_copy(update={"max_tokens": options.get("max_tokens")}))
    budgeted = bool(policy.budgets) or bool(options.get("budgeted"))
    max_tokens = options.get("max_tokens")
    if max_tokens is None and budgeted:  # the hold must be a bound: send one
        max_tokens = int(setting(settings, "budget.max_output_tokens"))
    chat = chat.model_copy(update={"max_tokens": max_tokens})
    output = output_of(max_tokens, chat.extra)
    if output is None and budgeted:
        raise UnsendableRequest("under a budget, `extra` may not remove the output bound (max_tokens)")
    judge_prompt = 0
    if decision.judge:
        template = str(setting(settings, "judge.prompt"))
        judge_prompt = ex.engine.count_tokens(template).worst
    tier = chat.params.get("service_tier")
    bound = Bound.of(
        held, output, choices_of(options, chat.extra), floor, judge_prompt, tier if isinstance(tier, str) else None
    )
    deadline_s = request_deadline(settings, caller)
    run = Run(
        decision,
        chat,
        schema,
        options.get("timeout"),
        CircuitConfig.from_settings(settings),
        RetryPolicy.from_settings(settings),
        None,
        deadline=None if deadline_s is None else started + deadline_s,
        deadline_s=deadline_s,
        bound=bound,
    )
    items = ex.budgets.applicable(policy.budgets, decision.request.attrs) if policy.budgets else []
    if items or options.get("budgeted"):
        run.max_cost = amount = hold(ex, run, items)
        if items:  # last: nothing after this may fail and leave the money held
            run.reservation = ex.budgets.reserve_on(items, amount)
    return run


def _check_params(ex: Executor, decision: Decision, chat: ChatRequest) -> None:
    """Refuse a request the policy says not to send as it would be sent: `n` answers as n calls under `set
    n.fanout = false`, a field a model of the plan has no counterpart for under `set params.unsupported =
    reject`. Raises UnsendableRequest naming the model, its provider kind and the fields."""
    settings = decision.policy.settings
    n = choices(chat.params)
    fanout = bool(setting(settings, "n.fanout"))
    most = int(setting(settings, "n.max"))
    reject = setting(settings, "params.unsupported") == "reject"
    if n == 1 and not reject:
        return
    for name in dict.fromkeys(decision.chain):
        kind = _kind(ex, decision, name)
        if kind is None:
            continue
        if n > 1 and not fanout and kind in FANOUT_KINDS:
            raise UnsendableRequest(
                f"`n` = {n} asks for {n} answers and model {name} ({kind}) has no `n`: it would take {n} calls, "
                "which this policy does not allow (set n.fanout = false)"
            )
        if n > most and kind in FANOUT_KINDS:
            raise UnsendableRequest(
                f"`n` = {n} asks for {n} answers and model {name} ({kind}) has no `n`: it would take {n} calls, "
                f"more than this policy allows (set n.max = {most}); ask for at most {most}"
            )
        supports = getattr(decision.policy.models[name].spec, "supports", ())
        lost = dropped(chat, kind, supports) if reject else []
        if lost:
            fields = ", ".join(f"`{f}`" for f in lost)
            raise UnsendableRequest(
                f"model {name} ({kind}) has no counterpart for {fields}, and this policy refuses a request whose "
                "fields would be dropped (set params.unsupported = reject)"
            )


def dropped_params(ex: Executor, run: Run, model: str) -> list[str]:
    """The fields of `run`'s request that `model` (the one that answered) was not sent: no counterpart on its
    provider kind (providers/clients/params.py)."""
    kind = _kind(ex, run.decision, model)
    entry = run.decision.policy.models.get(model)
    if kind is None or entry is None:
        return []
    return dropped(run.chat, kind, getattr(entry.spec, "supports", ()))


def _kind(ex: Executor, decision: Decision, name: str) -> str | None:
    entry = decision.policy.models.get(name)
    if entry is None:
        return None
    return getattr(ex.provider_spec(decision.policy, entry.provider), "kind", None)


def hold(ex: Executor, run: Run, items: list[Applicable] | None = None) -> float:
    """The most `run` may cost, over every model its plan may call, from what it sends (its Bound); raises
    UnknownPrice when a model has no known price and `budget.unknown_price_hold` is unset."""
    from providers.execution.executor import after_group

    decision, bound = run.decision, run.bound
    assert bound is not None
    models = decision.policy.models
    unknown = setting(decision.policy.settings, "budget.unknown_price_hold")
    answers = bound.output or 0.0

    def cost(name: str) -> float:
        return model_cost(models[name], _kind(ex, decision, name), bound, unknown)

    def judge(name: str) -> float:
        kind = _kind(ex, decision, name)
        prompt = bound.tokens(kind) + bound.judge_prompt + len(decision.group) * answers
        return model_cost(models[name], kind, bound, unknown, input_tokens=prompt, output=JUDGE_MAX_TOKENS, choices=1)

    try:
        return plan_cost(decision, cost, judge, after_group(decision))
    except LookupError as exc:
        raise UnknownPrice(str(exc.args[0]), items or []) from None


def estimate(ex: Executor, decision: Decision) -> float:
    """The most a request may cost judged from its decision alone (`tokens` and the `max_tokens` attribute, else
    `output_tokens`), over every model its plan may call; `hold` is the bound from what is actually sent."""
    from providers.execution.executor import after_group

    req, models = decision.request, decision.policy.models
    unknown = setting(decision.policy.settings, "budget.unknown_price_hold")
    bound = Bound(lambda kind: req.tokens, req.out_tokens)

    def cost(name: str) -> float:
        return model_cost(models[name], None, bound, unknown)

    def judge(name: str) -> float:
        prompt = req.tokens + len(decision.group) * req.out_tokens  # the question and every answer
        return model_cost(models[name], None, bound, unknown, input_tokens=prompt, output=JUDGE_MAX_TOKENS)

    try:
        return plan_cost(decision, cost, judge, after_group(decision))
    except LookupError as exc:
        raise UnknownPrice(str(exc.args[0]), []) from None
