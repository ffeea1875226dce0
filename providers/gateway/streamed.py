"""Streamed answers for the gateway: a prepared Run and the endpoint's Wire in; an SSE response in the endpoint's
format (for chat, `chat.completion.chunk` lines then `data: [DONE]`; or one `stream_interrupted` error event) out,
whose headers are known once the first event came (the model streaming then): they carry no `x-modelroute-cost`
(known only at the end: the stream's last event carries it, see docs/gateway.md), except a middleware's own
answer's. A client that hangs up before the first event cancels the upstream call (providers/gateway/hangup.py);
after it, Starlette's StreamingResponse notices the disconnect and stops the body, and the response's cleanups
(providers/gateway/closing.py) close the stream. Either way the request is counted with status 499."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING

from starlette.responses import Response, StreamingResponse

from providers.gateway.closing import ClosingResponse, run_cleanups
from providers.gateway.hangup import ClientGone, HangUp
from providers.gateway.metrics import cost_headers
from providers.gateway.middleware import answered_headers
from providers.gateway.openai_wire import ApiError, dropped_header
from providers.gateway.run import headers, release_key_budget, routing_error, streaming_model
from providers.gateway.wire import json_response
from providers.types import StreamEvent

if TYPE_CHECKING:
    from starlette.requests import Request

    from providers.execution import Completion, Executor, Run
    from providers.gateway.app import Gateway
    from providers.gateway.wire import Wire

log = logging.getLogger("modelroute.gateway")
CLIENT_CLOSED = 499  # nginx's "client closed request": the status counted for a client that hung up


def hung_up() -> Response:
    """The answer to a request whose client hung up (before its body was read in, or before its answer was ready):
    nothing reaches it; the status is what the request is counted as."""
    return Response(status_code=CLIENT_CLOSED)


def interrupted(exc: BaseException, run: Run) -> str:
    """The client's message for a stream that failed after it began: the failure's class and status, never the
    provider's own text (it may quote anything, keys included)."""
    from providers.execution.resilience import RoutingError

    failed = next((a for a in reversed(run.attempts) if a.outcome == "error"), None)
    if failed is not None and failed.error:
        what = f"{failed.model}: {failed.error}{f' {failed.status}' if failed.status else ''}"
    else:
        what = "every model failed" if isinstance(exc, RoutingError) else type(exc).__name__
    return f"upstream stream failed after it began ({what}); the text already sent is all there is"


async def stream_response(
    gw: Gateway,
    request: Request,
    wire: Wire,
    run: Run,
    ex: Executor,
    hold: tuple[str, float] | None,
    t0: float,
    policy_name: str,
) -> Response:
    """The SSE response of a streamed request. Once it is returned, it accounts the request (upstream close,
    key budget, metrics, `gw.active`) when it is done being sent, whether its body began or not (its cleanups:
    providers/gateway/closing.py); before that (an error, a hang-up) this function releases the upstream side and
    the caller counts the request."""
    from providers.errors import ProviderError
    from providers.execution.resilience import RoutingError
    from providers.execution.streaming import AsyncCompletionStream

    cached = cache_headers(ex.cache.status(run))  # before the stream settles the run
    stream = AsyncCompletionStream(ex, run)
    events = stream.__aiter__()
    hangup = HangUp(request.receive)
    try:
        with hangup:
            first = await events.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException as exc:
        release_key_budget(ex, hold, run)
        await stream.aclose()
        if isinstance(exc, RoutingError):
            gw.account(run, None, 0.0)
            raise routing_error(exc, ex.state) from None
        if hangup.happened and isinstance(exc, asyncio.CancelledError):
            gw.account(run, None, 0.0)
            raise ClientGone from None
        raise
    status = CLIENT_CLOSED  # unless the stream reaches its end (or its error event)

    async def close_upstream() -> None:
        try:
            await stream.aclose()
        except Exception:
            log.debug("closing an upstream stream failed", exc_info=True)
        finally:
            release_key_budget(ex, hold, run)
            done = stream.completion
            gw.account(run, done.model if done else None, run.cost, done.usage if done else None)

    def count() -> None:
        gw.active -= 1
        gw.done(wire.endpoint, status, t0)

    try:
        if stream.completion is not None:
            model = stream.completion.model
        else:
            model = run.decision.model if run.decision.strategy != "single" else streaming_model(run)
        calls = sum(a.outcome in ("ok", "error", "cancelled") for a in run.attempts)
        hdrs = headers(run.decision, model, run.attempts, calls=calls + (stream.completion is None), policy=policy_name)
        hdrs.update(dropped_header(ex, run, model))
        hdrs.update(cached)
        writer = wire.writer(model)
    except BaseException:  # no response to close: the upstream side here, the count by the caller
        await run_cleanups([close_upstream])
        raise

    async def body() -> AsyncIterator[bytes]:
        nonlocal status
        yield writer.start()
        event = first
        try:
            while event is not None:
                chunk = writer.event(event)
                if chunk is not None:
                    yield chunk
                try:
                    event = await events.__anext__()
                except StopAsyncIteration:
                    event = None
        except (ProviderError, RoutingError) as exc:
            status = 502
            yield writer.error(ApiError(502, interrupted(exc, run), type="upstream_error", code="stream_interrupted"))
            return
        status = 200
        done = stream.completion
        yield writer.end(None if done is None else replace(done, cost=run.cost, estimated_cost=run.estimated_cost))

    response = ClosingResponse(body(), headers={**hdrs, "cache-control": "no-cache", "x-accel-buffering": "no"})
    response.on_close(close_upstream)  # a client that hung up cancels the body: these still run, once
    response.on_close(count)
    return response


def answered_response(wire: Wire, c: Completion, policy_name: str) -> Response:
    """The SSE response for a middleware's own answer: its text as one delta, the end frames."""
    writer = wire.writer(c.model)

    async def body() -> AsyncIterator[bytes]:
        yield writer.start()
        for event in (StreamEvent(kind="delta", text=c.text), StreamEvent(kind="done", finish_reason="stop")):
            frames = writer.event(event)
            if frames is not None:
                yield frames
        yield writer.end(c)

    hdrs = {**answered_headers(c, policy_name), **cost_headers(c.cost, c.estimated_cost), "cache-control": "no-cache"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=hdrs)


def cache_headers(status: str | None) -> dict[str, str]:
    """`x-modelroute-cache: hit | miss` for a request the response cache was consulted for (none otherwise)."""
    from providers.execution.cache import CACHE_HEADER

    return {} if status is None else {CACHE_HEADER: status}


def cached_response(wire: Wire, run: Run, c: Completion, stream: bool, policy_name: str) -> Response:
    """The response cache's answer in the endpoint's format: JSON, or its SSE stream replayed through the endpoint's
    own writer (deltas, tool calls, usage, end). No attempt was made and nothing was spent: the cost is 0."""
    from providers.execution.calls import answer_events

    hdrs = {**headers(run.decision, c.model, [], calls=0, policy=policy_name), **cost_headers(0.0, 0.0)}
    hdrs.update(cache_headers("hit"))
    if not stream:
        return json_response(wire.answer(c), 200, hdrs)
    writer = wire.writer(c.model)

    async def body() -> AsyncIterator[bytes]:
        yield writer.start()
        for event in answer_events(c):
            frames = writer.event(event)
            if frames is not None:
                yield frames
        yield writer.end(replace(c, cost=0.0, estimated_cost=0.0))  # a replay spent nothing

    return StreamingResponse(body(), media_type="text/event-stream", headers={**hdrs, "cache-control": "no-cache"})
