"""Gateway execution glue: a checked ChatCall and the caller's gateway key in, a prepared execution Run (routed
by the policy, or pinned to a model the request names when `set overrides = true`), the per-key daily budget
hold, the `x-modelroute-*` response headers and OpenAI-style errors for routing failures out."""

from __future__ import annotations

import time
from typing import Any

from engine.language.nodes import Span
from engine.runtime.decision import Decision, NoRouteError
from engine.runtime.policy import Request, hard_reason
from engine.runtime.report import Report, RuleRef
from providers.gateway.openai_wire import ApiError, ChatCall


class _PinnedSelector:
    kind = "use"
    judge = None

    def group(self, req: Request) -> tuple[str, ...]:
        return ()  # never asked: a pinned decision's strategy is "single"


class _PinnedRule:
    """Stands in for a policy rule when the request named its model (overrides)."""

    index, file, line, col = -1, "<request>", 0, 0
    span = Span("<request>", 0, 0, 0, 0)
    selector = _PinnedSelector()

    def __init__(self, model: str):
        self.text = f"model {model} named by the request (set overrides = true)"


class PinnedDecision(Decision):
    """A Decision for a model the request named: no fallbacks, and a report that says so."""

    def report(self) -> Report:
        if self._report is None:
            r, req = self.rule, self.request
            self._report = Report(
                model=self.model,
                provider=self.provider,
                rule=RuleRef(index=-1, file=r.file, line=0, col=0, text=r.text),
                tokens=req.tokens,
                prompt_chars=len(req.text),
                attrs=dict(req.attrs),
                policy=self.policy.entry,
                policy_version=self.policy.version,
            )
        return self._report


def resolve_model(policy: Any, name: str) -> str | None:
    """The canonical catalog name for a model name or catalog alias, or None."""
    if name in policy.models:
        return name
    alias = policy.catalog.aliases.get(name) if policy.catalog is not None else None
    return alias if alias in policy.models else None


def pinned_decision(engine: Any, call: ChatCall, attrs: dict[str, Any]) -> Decision:
    """Decide for a request that names a concrete model; raises ApiError when the policy does not allow it."""
    policy = engine.policy
    name = resolve_model(policy, call.model)
    if name is None:
        raise ApiError(
            404,
            f'model `{call.model}` is not in the catalog; use "auto" or one of GET /v1/models',
            code="model_not_found",
            param="model",
        )
    settings = policy.settings
    if not (settings is not None and settings.get("overrides")):
        raise ApiError(
            400,
            f"this gateway's policy does not allow naming a model (`{call.model}`): send "
            'model "auto", or add `set overrides = true` to the policy',
            code="model_override_disabled",
            param="model",
        )
    start = time.perf_counter_ns()
    req = engine.request(None, messages=call.messages, policy=policy, **attrs)
    entry = policy.models[name]
    why = hard_reason(entry, req)
    if why is not None and not why.startswith(("circuit", "unavailable")):  # an open circuit is execution's call
        raise ApiError(400, f"model `{name}` cannot serve this request: {why}", code="model_unsuitable", param="model")
    return PinnedDecision(
        policy,
        _PinnedRule(name),
        entry,
        (),
        req,
        0,
        True,
        time.perf_counter_ns() - start,
    )


def prepare(ex: Any, engine: Any, call: ChatCall, attrs: dict[str, Any]) -> Any:
    """Decide and reserve (the executor's prepare), pinned to the named model when the request names one."""
    pin = None if call.auto else (lambda completed: pinned_decision(engine, call, completed))
    return ex.prepare(None, call.messages, None, call.options, attrs, decide=pin)


def key_budget_key(name: str, now: float) -> str:
    return f"gateway:daily:{time.strftime('%Y-%m-%d', time.gmtime(now))}:key={name}"


def hold_key_budget(ex: Any, key: Any, run: Any) -> tuple[str, float] | None:
    """Reserve the request's maximum cost on the key's daily budget; raises ApiError 429 (after releasing the
    policy's own budget hold) when it would be exceeded. Returns (budget key, amount held)."""
    if key is None or key.daily_budget is None:
        return None
    bkey = key_budget_key(key.name, time.time())
    amount = ex.estimate(run.decision)
    ok, used = ex.engine.state.reserve(bkey, amount, key.daily_budget)
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


def release_key_budget(ex: Any, hold: tuple[str, float] | None, run: Any) -> None:
    if hold is not None:
        ex.engine.state.settle(hold[0], hold[1], run.cost)


def fallbacks_used(attempts: list[Any], answered: str | None) -> int:
    """How many models were tried (or skipped) before the one that answered."""
    models = list(dict.fromkeys(a.model for a in attempts))
    if answered in models:
        return models.index(answered)
    return len(models)


def streaming_model(run: Any) -> str:
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
    decision: Any, model: str, attempts: list[Any], calls: int | None = None, policy: str = "auto"
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
