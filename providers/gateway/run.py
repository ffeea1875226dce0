"""Gateway execution glue: a checked ChatCall and the caller's gateway key in, a prepared execution Run (routed
by the policy, or pinned to a model the request names when `set overrides = true`), the per-key daily budget
hold, the `x-modelroute-*` response headers and OpenAI-style errors for routing failures out."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from engine import Decision, Engine, NoRouteError, PinError
from providers.gateway.openai_wire import ApiError, ChatCall

if TYPE_CHECKING:
    from providers.execution import Attempt, Executor, Run
    from providers.gateway.keys import GatewayKey

_PIN_STATUS = {"model_not_found": 404, "model_override_disabled": 400, "model_unsuitable": 400}


def pin_error(err: PinError) -> ApiError:
    """The OpenAI-style error for a model the policy refuses to pin (by the refusal's code)."""
    if err.code == "model_not_found":
        message = f'model `{err.model}` is not in the catalog; use "auto" or one of GET /v1/models'
    elif err.code == "model_override_disabled":
        message = (
            f"this gateway's policy does not allow naming a model (`{err.model}`): send "
            'model "auto", or add `set overrides = true` to the policy'
        )
    else:
        message = f"model `{err.model}` cannot serve this request: {err.reason}"
    return ApiError(_PIN_STATUS[err.code], message, code=err.code, param="model")


def pinned_decision(engine: Engine, call: ChatCall, attrs: dict[str, Any]) -> Decision:
    """Decide for a request that names a concrete model; raises ApiError when the policy does not allow it."""
    try:
        return engine.pin(call.model, messages=call.messages, **attrs)
    except PinError as err:
        raise pin_error(err) from None


def prepare(ex: Executor, engine: Engine, call: ChatCall, attrs: dict[str, Any]) -> Run:
    """Decide and reserve (the executor's prepare), pinned to the named model when the request names one."""
    pin = None if call.auto else (lambda completed: pinned_decision(engine, call, completed))
    return ex.prepare(None, call.messages, None, call.options, attrs, decide=pin)


def key_budget_key(name: str, now: float) -> str:
    return f"gateway:daily:{time.strftime('%Y-%m-%d', time.gmtime(now))}:key={name}"


def hold_key_budget(ex: Executor, key: GatewayKey | None, run: Run) -> tuple[str, float] | None:
    """Reserve the request's maximum cost on the key's daily budget; raises ApiError 429 (after releasing the
    policy's own budget hold) when it would be exceeded. Returns (budget key, amount held)."""
    if key is None or key.daily_budget is None:
        return None
    bkey = key_budget_key(key.name, time.time())
    amount = ex.estimate(run.decision)
    ok, used = ex.state.reserve(bkey, amount, key.daily_budget)
    if not ok:
        ex.settle(run)
        raise ApiError(
            429,
            f"the daily budget of gateway key `{key.name}` (${key.daily_budget:.2f}) would be "
            f"exceeded: ${used:.4f} spent or held, this request may cost up to ${amount:.4f}",
            type="insufficient_quota",
            code="budget_exceeded",
        )
    return bkey, amount


def release_key_budget(ex: Executor, hold: tuple[str, float] | None, run: Run) -> None:
    if hold is not None:
        ex.state.settle(hold[0], hold[1], run.cost)


def fallbacks_used(attempts: list[Attempt], answered: str | None) -> int:
    """How many models were tried (or skipped) before the one that answered."""
    models = list(dict.fromkeys(a.model for a in attempts))
    if answered in models:
        return models.index(answered)
    return len(models)


def streaming_model(run: Run) -> str:
    """The model a single-model stream is coming from, judged from the attempts recorded before its first
    token: the chain's next model after the last one that failed for good (or the same one being retried)."""
    chain, attempts = run.decision.chain, run.attempts
    if not attempts:
        return chain[0]
    last = attempts[-1]
    if last.wait_s:
        return last.model
    i = chain.index(last.model) if last.model in chain else -1
    return chain[i + 1] if i + 1 < len(chain) else last.model


def headers(
    decision: Decision, model: str, attempts: list[Attempt], calls: int | None = None, policy: str = "auto"
) -> dict[str, str]:
    rule = decision.rule
    where = "override" if rule.index < 0 else f"{rule.file.rsplit('/', 1)[-1]}:{rule.line}"
    tried = calls if calls is not None else sum(a.outcome in ("ok", "error", "cancelled") for a in attempts)
    return {
        "x-modelroute-model": model,
        "x-modelroute-rule": where.encode("ascii", "replace").decode(),
        "x-modelroute-policy": policy,
        "x-modelroute-policy-version": decision.policy_version,
        "x-modelroute-attempts": str(tried),
        "x-modelroute-fallbacks": str(fallbacks_used(attempts, model)),
    }


def routing_error(exc: BaseException) -> ApiError:
    """The OpenAI-style error for a routing failure (no route, budget, every attempt failed)."""
    from providers.execution.budget import BudgetExceeded
    from providers.execution.resilience import RoutingError

    if isinstance(exc, NoRouteError):
        return ApiError(400, f"{exc} (POST /v1/route/explain shows the full trace)", code="no_route")
    if isinstance(exc, BudgetExceeded):
        return ApiError(429, str(exc), type="insufficient_quota", code="budget_exceeded")
    if isinstance(exc, RoutingError):
        attempts = exc.attempts
        summary = (
            "; ".join(f"{a.model}: {a.error or a.outcome}{f' {a.status}' if a.status else ''}" for a in attempts)
            or "no model could be tried"
        )
        if attempts and all(a.outcome == "skipped" for a in attempts):
            status, code = 503, "models_unavailable"
        elif attempts and all(a.error in ("BadRequest", "ContextTooLong") for a in attempts if a.outcome == "error"):
            status, code = 400, "upstream_rejected_request"
        else:
            status, code = 502, "upstream_failed"
        err = ApiError(status, f"every model failed: {summary}", type="upstream_error", code=code)
        err.headers = headers(exc.decision, exc.decision.model, attempts) if exc.decision is not None else {}
        return err
    raise exc
