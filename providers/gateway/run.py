"""Gateway execution glue: a checked ChatCall and the caller's gateway key in, a prepared execution Run (routed
by the policy, or pinned to a model the request names when `set overrides = true`), the per-key daily budget
hold, the execution awaited until it answers or the client hangs up, the `x-modelroute-*` response headers and
OpenAI-style errors for routing failures out (a request no configured provider could serve names the environment
variables to set). Also the start-up report of which
providers have keys and which policy models can therefore not be served (`provider_report`)."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from engine import Decision, Engine, NoRouteError, PinError
from providers.execution.outcome import decide_messages
from providers.gateway.hangup import ClientGone, HangUp
from providers.gateway.keyfields import allowed_plan
from providers.gateway.openai_wire import ApiError, ChatCall

if TYPE_CHECKING:
    from starlette.requests import Request

    from engine.runtime.state import ExecutionStore
    from providers.execution import Attempt, Executor, Run
    from providers.gateway.app import Gateway
    from providers.gateway.keys import GatewayKey

T = TypeVar("T")

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


def prepare(ex: Executor, engine: Engine, call: ChatCall, attrs: dict[str, Any], key: GatewayKey | None = None) -> Run:
    """Decide and reserve (the executor's prepare), pinned to the named model when the request names one; the plan
    restricted to the gateway key's `models` when it lists some (403 model_not_allowed when nothing is left)."""
    decide = None if call.auto else (lambda completed: pinned_decision(engine, call, completed))
    if key is not None and key.models is not None:
        by = decide or (lambda completed: engine.decide(messages=decide_messages(call.messages), **completed))
        models, name = key.models, key.name
        decide = lambda completed: allowed_plan(name, models, by(completed))  # noqa: E731
    return ex.prepare(None, call.messages, None, call.options, attrs, decide=decide)


def key_budget_key(name: str, now: float) -> str:
    return f"gateway:daily:{time.strftime('%Y-%m-%d', time.gmtime(now))}:key={name}"


def hold_key_budget(ex: Executor, key: GatewayKey | None, run: Run) -> tuple[str, float] | None:
    """Reserve the request's maximum cost on the key's daily budget; raises ApiError 429 (after releasing the
    policy's own budget hold) when it would be exceeded. Returns (budget key, amount held)."""
    if key is None or key.daily_budget is None:
        return None
    bkey = key_budget_key(key.name, time.time())
    amount = run.max_cost if run.max_cost is not None else ex.estimate(run.decision)
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


async def until_answered(
    gw: Gateway, request: Request, ex: Executor, run: Run, hold: tuple[str, float] | None, call: Awaitable[T]
) -> T:
    """`call`'s result (the run's execution), cancelled if the client hangs up; the key budget hold released either
    way. A routing failure is accounted and raised as its OpenAI-style error, a hang-up accounted and raised as
    ClientGone."""
    from providers.execution.resilience import RoutingError

    hangup = HangUp(request.receive)  # a client that hangs up cancels the upstream call
    result = None
    try:
        with hangup:
            result = await call
    except RoutingError as exc:
        gw.account(run, None, 0.0)
        raise routing_error(exc, ex.state) from None
    except asyncio.CancelledError:
        if not hangup.happened:
            raise
    finally:
        release_key_budget(ex, hold, run)
    if hangup.happened or result is None:
        gw.account(run, None, 0.0)
        raise ClientGone
    return result


def fallbacks_used(decision: Decision, answered: str | None, attempts: list[Attempt]) -> int:
    """How many entries of the failover plan were tried (or skipped) before the one that answered: the answering
    model's index in `decision.chain`, where the members of a race / consensus / best_of group (called together)
    are one entry, so a group member's answer is 0 and the first fallback after the group is 1. Without an answer,
    the index of the last entry reached (0 when only the first was)."""
    plan = decision.plan
    if answered is not None and plan and plan[0].model == answered and plan[0].role != "group":
        return 0  # the common case, without walking the plan
    entries: dict[str, int] = {}
    index, grouped = -1, False
    for step in plan:
        if not (grouped and step.role == "group"):
            index += 1
        grouped = step.role == "group"
        entries[step.model] = index
    if answered is not None:
        found = entries.get(answered)
        if found is not None:
            return found
        models = list(dict.fromkeys(a.model for a in attempts))  # not in the plan: count the models before it
        return models.index(answered) if answered in models else len(models)
    return max((entries.get(a.model, 0) for a in attempts), default=0)


def retry_after(state: ExecutionStore, models: Iterable[str], now: float | None = None) -> int | None:
    """Whole seconds until the first open circuit among `models` half-opens (at least 1); None when none of
    them has an open circuit (skipped for another reason: no API key, a half-open probe already running)."""
    now = time.time() if now is None else now
    waits = []
    for model in set(models):
        info = state.circuit(model)
        if info.state == "open" and info.until is not None:
            waits.append(info.until - now)
    return max(1, math.ceil(min(waits))) if waits else None


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
    decision: Decision,
    model: str,
    attempts: list[Attempt],
    calls: int | None = None,
    policy: str = "auto",
    fallbacks: int | None = None,
) -> dict[str, str]:
    rule = decision.rule
    where = "override" if rule.index < 0 else f"{rule.file.rsplit('/', 1)[-1]}:{rule.line}"
    tried = calls if calls is not None else sum(a.outcome in ("ok", "error", "cancelled") for a in attempts)
    if fallbacks is None:
        fallbacks = fallbacks_used(decision, model, attempts)
    return {
        "x-modelroute-model": model,
        "x-modelroute-rule": where.encode("ascii", "replace").decode(),
        "x-modelroute-policy": policy,
        "x-modelroute-policy-version": decision.policy_version,
        "x-modelroute-attempts": str(tried),
        "x-modelroute-fallbacks": str(fallbacks),
    }


REFUSED_CREDENTIALS = "the provider refused the gateway's credentials"
UPSTREAM_TEXT_MAX = 500  # characters of a provider's own error message a client may see
_REQUEST_FAULTS = (400, 413, 422)  # statuses with which a provider says the request itself is wrong


def upstream_text(a: Attempt) -> str:
    """What a client may read about a failed attempt beyond its error class and status: the provider's own message
    only for a 4xx the request itself caused (bad parameters, context too long), redacted and cut to
    UPSTREAM_TEXT_MAX characters; a fixed sentence when the provider refused the gateway's credentials (401/403);
    nothing for anything else (5xx, rate limits, timeouts, broken or oversized answers, interrupted streams)."""
    from providers.errors import redact

    if a.outcome == "skipped" and a.error == "ProviderUnavailable":
        return a.message  # the gateway's own words: a missing key by its variable's name, or missing settings
    if a.outcome != "error":
        return ""
    if a.error == "AuthError" or a.status in (401, 403):
        return REFUSED_CREDENTIALS
    # a BadRequest without a status is the gateway's own refusal before sending (a request a wire format cannot carry)
    faulty = a.status in _REQUEST_FAULTS or a.status is None
    if a.message and (a.error == "ContextTooLong" or (a.error == "BadRequest" and faulty)):
        text = " ".join(redact(a.message).split())  # one line
        return text if len(text) <= UPSTREAM_TEXT_MAX else text[: UPSTREAM_TEXT_MAX - 3] + "..."
    return ""


def _summary(attempts: list[Attempt]) -> str:
    parts = []
    for a in attempts:
        text = upstream_text(a)
        status = f" {a.status}" if a.status else ""
        parts.append(f"{a.model}: {a.error or a.outcome}{status}{f' ({text})' if text else ''}")
    return "; ".join(parts) or "no model could be tried"


def routing_error(exc: BaseException, state: ExecutionStore | None = None, now: float | None = None) -> ApiError:
    """The OpenAI-style error for a routing failure: no route (400), open circuits in the way (503
    models_unavailable with Retry-After), a budget (429), the request's deadline (504 deadline_exceeded), every
    model skipped (503) or failed (502, or 400 when every provider refused the request itself), answers that did not
    reach `min_agreement` (502 no_consensus). `state` gives the
    circuits a RoutingError's Retry-After is read from (at wall-clock time `now`, default the current time)."""
    from providers.execution.budget import BudgetExceeded
    from providers.execution.resilience import RoutingError
    from providers.execution.strategies import NoConsensus

    if isinstance(exc, NoRouteError):
        if not exc.unavailable:
            return ApiError(400, f"{exc} (POST /v1/route/explain shows the full trace)", code="no_route")
        err = ApiError(
            503,
            f"every model that could serve the request is unavailable: {', '.join(sorted(exc.unavailable))} "
            "(open circuits)",
            type="upstream_error",
            code="models_unavailable",
        )
        if exc.retry_after is not None:
            err.headers["retry-after"] = str(max(1, math.ceil(exc.retry_after)))
        return err
    if isinstance(exc, BudgetExceeded):
        return ApiError(429, str(exc), type="insufficient_quota", code="budget_exceeded")
    if isinstance(exc, RoutingError):
        attempts = exc.attempts
        wait, configuration = None, False
        if exc.deadline_passed:
            status, code = 504, "deadline_exceeded"
            message = f"the request's deadline passed before a model answered: {_summary(attempts)}"
        elif attempts and all(a.outcome == "skipped" and a.error == "ProviderUnavailable" for a in attempts):
            status, code = 503, "models_unavailable"  # the code of every "nothing could be called"
            message, configuration = not_configured(attempts), True
        elif attempts and all(a.outcome == "skipped" for a in attempts):
            status, code = 503, "models_unavailable"
            message = f"no model could be called: {_summary(attempts)}"
            if state is not None:
                wait = retry_after(state, (a.model for a in attempts), now)
        elif isinstance(exc, NoConsensus):
            status, code = 502, "no_consensus"
            message = str(exc).splitlines()[0].rstrip(":")
        elif (errors := [a for a in attempts if a.outcome == "error"]) and all(
            a.error in ("BadRequest", "ContextTooLong") for a in errors
        ):
            status, code = 400, "upstream_rejected_request"
            message = f"every model failed: {_summary(attempts)}"
        else:
            status, code = 502, "upstream_failed"
            message = f"every model failed: {_summary(attempts)}"
        err = ApiError(status, message, type="upstream_error", code=code)
        if exc.decision is not None:
            err.headers = headers(
                exc.decision, exc.decision.model, attempts, fallbacks=fallbacks_used(exc.decision, None, attempts)
            )
        if wait is not None:
            err.headers["retry-after"] = str(wait)
        if configuration:  # a missing key does not come back by retrying: the SDKs read this and do not retry
            err.headers[SHOULD_RETRY] = "false"
        return err
    raise exc


# ---- providers without keys ---------------------------------------------------------------------------------
#: The response header the openai and anthropic SDKs obey over their status rules ("false": never retried).
SHOULD_RETRY = "x-should-retry"


def not_configured(attempts: list[Attempt]) -> str:
    """The message of a request that no model could be called for because no provider of its plan is configured:
    which environment variable to set for which models (the variable's name, as the skip names it; never a value)."""
    wanted: dict[str, list[str]] = {}  # variable (or the provider's own complaint) -> models
    variables_found: set[str] = set()
    for a in attempts:
        variable = _variable(a.message)
        if variable:
            variables_found.add(variable)
        models = wanted.setdefault(variable or a.message, [])
        if a.model not in models:
            models.append(a.model)
    variables = [f"{need} (for {', '.join(models)})" for need, models in wanted.items() if need in variables_found]
    others = [f"{', '.join(models)}: {need}" for need, models in wanted.items() if need not in variables_found]
    parts = []
    if variables:
        parts.append(
            "no provider of this request's models has an API key: set "
            + " or ".join(variables)
            + " in the gateway's environment and restart it"
        )
    parts += others
    return "; ".join(parts) + " (the gateway's start-up log lists every provider without a key)"


_NO_KEY = re.compile(r"environment variable (\S+) is not set")  # the executor's words for a provider without its key


def provider_report(engines: Iterable[Engine]) -> list[str]:
    """The start-up lines that say which providers of the engines' policies have keys and which do not (by their
    environment variables' names, never the values), and which models can therefore not be served; a warning when
    no provider with a key is configured. What "configured" means is the executor's (`Executor.unconfigured`)."""
    keyed: dict[str, str] = {}  # provider -> its variable
    keyless: dict[str, str] = {}  # provider -> its URL (a local server: needs no key)
    missing: dict[str, tuple[str, list[str]]] = {}  # provider -> (why, models)
    for engine in engines:
        policy, ex = engine.policy, engine.executor
        for name, entry in policy.models.items():
            provider = entry.provider
            if provider in keyed or provider in keyless or (provider in missing and name in missing[provider][1]):
                continue
            why = ex.unconfigured(policy, provider)
            if why is not None:
                missing.setdefault(provider, (why, []))[1].append(name)
                continue
            spec = ex.provider_spec(policy, provider)
            if spec.api_key_env:
                keyed[provider] = spec.api_key_env
            else:
                keyless[provider] = spec.base_url or "its default URL"
    lines = []
    if keyed:
        lines.append("providers with keys: " + ", ".join(f"{p} ({env})" for p, env in sorted(keyed.items())))
    if keyless:
        lines.append("providers without keys (local): " + ", ".join(f"{p} ({u})" for p, u in sorted(keyless.items())))
    for provider, (why, models) in sorted(missing.items()):
        shown = ", ".join(models[:8]) + (f" and {len(models) - 8} more" if len(models) > 8 else "")
        lines.append(f"provider {provider}: {why}; models it cannot serve: {shown}")
    if missing and not keyed:
        lines.append(
            "warning: no provider has an API key: requests routed to their models get 503 naming the variable to "
            "set (set one of "
            + ", ".join(sorted({_variable(why) for why, _ in missing.values()} - {""}))
            + ", and restart)"
        )
    return lines


def _variable(why: str) -> str:
    """The environment variable a `no API key` reason names ("" for another reason)."""
    found = _NO_KEY.search(why)
    return found.group(1) if found else ""
