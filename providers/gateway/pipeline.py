"""The gateway's request pipeline, shared by every endpoint that answers with a chat model (chat, messages,
responses, completions): an HTTP request and its endpoint's Wire in; the gateway key checked, the body read by the
wire into a ChatCall, the `endpoint` attribute set, the middleware run, the call routed by the policy and executed
(plan, retries, budgets, key budget, metrics), and the answer (JSON or SSE) or error in the wire's format out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.responses import Response

from engine import NoRouteError
from providers.execution.cache import SIMILARITY_HEADER, bypass_of
from providers.execution.tracing import gateway_request
from providers.gateway.hangup import ClientGone
from providers.gateway.jsonbody import internal_error
from providers.gateway.metrics import cost_headers
from providers.gateway.middleware import after_stream, answered_headers, before
from providers.gateway.openai_wire import ApiError, dropped_header
from providers.gateway.ratelimits import admit, rate_headers, settle, settle_stream
from providers.gateway.run import (
    fallbacks_used,
    headers,
    hold_key_budget,
    prepare,
    release_key_budget,
    routing_error,
    until_answered,
)
from providers.gateway.streamed import (
    CLIENT_CLOSED,
    answered_response,
    cache_headers,
    cached_response,
    hung_up,
    stream_response,
)
from providers.gateway.wire import json_response

if TYPE_CHECKING:
    from starlette.requests import Request

    from engine import Engine
    from providers.execution import Executor, Run
    from providers.gateway.app import Gateway
    from providers.gateway.keyformat import GatewayKey
    from providers.gateway.openai_wire import ChatCall
    from providers.gateway.wire import Wire

__all__ = ["held_lookup", "routed", "serve"]

log = logging.getLogger("modelroute.gateway")
_T = TypeVar("_T")


def routed(
    gw: Gateway, ex: Executor, engine: Engine, call: ChatCall, attrs: dict[str, Any], key: GatewayKey | None
) -> Run:
    """The call decided and reserved (run.prepare; the key's `models` filter the plan), with a true hold and a
    bounded output when the key has a daily budget; refusals as the API's errors; the deciding rule counted."""
    from providers.execution.budget import BudgetExceeded
    from providers.execution.holds import UnsendableRequest

    if key is not None and key.daily_budget is not None:
        call.options["budgeted"] = True  # a bounded output (budget.max_output_tokens) and a true hold
    try:
        run = prepare(ex, engine, call, attrs, key)
    except (NoRouteError, BudgetExceeded) as exc:
        raise routing_error(exc, ex.state) from None
    except UnsendableRequest as exc:  # the wires refuse these first; the executor checks again
        raise ApiError(400, str(exc), code="invalid_value") from None
    rule = run.decision.rule
    gw.metrics.decisions.inc("override" if rule.index < 0 else f"{rule.file}:{rule.line}", run.decision.model)
    return run


def held_lookup(
    ex: Executor, key: GatewayKey | None, run: Run, lookup: Callable[[Run], _T | None]
) -> tuple[tuple[str, float] | None, _T | None, dict[str, str]]:
    """The key's budget held, then the cache looked up: (the hold, the cached answer or None, the cache's headers
    for a miss). The key's budget comes before the cache, as the policy's (held by prepare): an exhausted budget
    refuses even a cached answer; a hit gives the hold back (it spends nothing). Anything raised releases both."""
    try:
        hold = hold_key_budget(ex, key, run)
        try:
            hit = lookup(run)
            state = cache_headers(ex.cache.status(run)) if hit is None else {}
        except BaseException:
            release_key_budget(ex, hold, run)
            raise
    except BaseException:
        ex.settle(run)  # nothing was called: release the policy's hold and the cache's and tallies' entries
        raise
    return hold, hit, state


async def serve(gw: Gateway, request: Request, wire: Wire) -> Response:
    """One request of an endpoint that executes a chat call (chat, messages, responses, completions): read by
    `wire`, routed, executed (plan, retries, budgets, keys, middleware, metrics) and answered in its format."""
    t0 = time.perf_counter()
    status = 200
    gw.active += 1
    streaming = False
    limits = run = None  # the request's rate limit ticket (providers/gateway/ratelimits.py) and its Run
    try:
        key = gw._auth(request)
        call = wire.parse(await gw._body(request), request.headers)
        call.options["cache"] = bypass_of(request.headers.get("cache-control"))  # no-cache / no-store
        gateway_request(wire.endpoint, call.model)  # names the request's span, when tracing is on
        attrs = gw._attrs(call, key, wire.endpoint)
        engine, policy_name = gw._route(call, key)
        limits = admit(gw, engine, policy_name, call, key, attrs)  # 429 over a limit; sets ratelimit.left
        ex = engine.executor
        mreq = None
        if ex.middleware:  # the operator's middleware: may rewrite the request, or answer it
            mreq, answered = await before(ex, call, attrs)
            attrs = dict(mreq.attributes)
            attrs["endpoint"] = wire.endpoint
            if answered is not None:
                answered = await ex.middleware.aafter(mreq, answered)
                gw.metrics.decisions.inc("middleware", answered.model)
                if call.stream:
                    return answered_response(wire, answered, policy_name)
                hdrs = answered_headers(answered, policy_name)
                hdrs.update(cost_headers(answered.cost, answered.estimated_cost))
                return json_response(wire.answer(answered), 200, hdrs)
        run = routed(gw, ex, engine, call, attrs, key)
        hold, hit, cached = held_lookup(ex, key, run, ex.cached)
        if hit is not None:
            similarity = ex.cache.similarity(run)  # found by meaning (`cache.semantic`): how close; read before settle
            release_key_budget(ex, hold, run)
            ex.settle(run)
            gw.metrics.spent(run.decision.request.attrs, 0.0)  # a request of its key and user, as usage() counts it
            if mreq is not None:
                hit = await ex.middleware.aafter(mreq, hit)
            answer = cached_response(wire, run, hit, call.stream, policy_name)
            answer.headers.update(rate_headers(limits))
            if similarity is not None:
                answer.headers[SIMILARITY_HEADER] = f"{similarity:.4f}"
            return answer
        if call.stream:
            sink = ex.watch(run) if mreq is not None else None
            try:
                response = await stream_response(gw, request, wire, run, ex, hold, t0, policy_name)
            except BaseException:
                ex.unwatch(run)
                raise
            if mreq is not None and sink is not None:
                after_stream(response, ex, run, mreq, sink)
            settle_stream(response, limits, run)
            streaming = True
            return response
        c = await until_answered(gw, request, ex, run, hold, ex.run(run))
        fallbacks = fallbacks_used(run.decision, c.model, c.attempts)
        gw.account(run, c.model, c.cost, c.usage, fallbacks)
        hdrs = headers(run.decision, c.model, c.attempts, policy=policy_name, fallbacks=fallbacks)
        hdrs.update(dropped_header(ex, run, c.model))  # request fields its provider kind had no counterpart for
        hdrs.update(cost_headers(c.cost, run.estimated_cost))
        hdrs.update(rate_headers(limits))
        hdrs.update(cached)
        if mreq is not None:
            c = await ex.middleware.aafter(mreq, c)
        return json_response(wire.answer(c), 200, hdrs)
    except ApiError as err:
        status = err.status
        return gw._error(err, wire)
    except ClientGone:  # nobody is listening: nothing is sent; counted as nginx's 499 "client closed request"
        status = CLIENT_CLOSED
        return hung_up()
    except Exception:
        status = 500
        log.exception("internal error handling a request to %s", request.url.path)
        return gw._error(
            internal_error(),
            wire,
        )
    finally:
        if not streaming:
            settle(limits, run)
            gw.active -= 1
            gw.done(wire.endpoint, status, t0)
