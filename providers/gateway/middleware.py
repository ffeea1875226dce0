"""The gateway's middleware glue: a checked ChatCall, its attributes and the engine's middleware
(providers/execution/middleware.py) in; the call rewritten by the `before` hooks (plain hooks in a worker thread,
never on the event loop), the headers for a middleware's own answer, and a streamed response
whose `after` hooks run with the assembled answer once its body has been sent, out."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from providers.execution import MiddlewareRequest
from providers.gateway.closing import closing

if TYPE_CHECKING:
    from providers.execution import Completion, Executor, Run
    from providers.gateway.openai_wire import ChatCall

__all__ = ["after_stream", "answered_headers", "before"]

log = logging.getLogger("modelroute.gateway")


async def before(ex: Executor, call: ChatCall, attrs: dict[str, Any]) -> tuple[MiddlewareRequest, Completion | None]:
    """Run the `before` hooks; the call takes the messages and options they leave (the attributes are the
    returned request's). Returns the request and a middleware's answer (or None)."""
    seen = MiddlewareRequest(list(call.messages), attrs, dict(call.options), call.stream, "gateway")
    mreq, answered = await ex.middleware.abefore(seen)
    call.messages, call.options = list(mreq.messages), dict(mreq.options)
    return mreq, answered


def answered_headers(c: Completion, policy_name: str) -> dict[str, str]:
    """The `x-modelroute-*` headers of a middleware's own answer (no rule evaluated, no model called)."""
    return {
        "x-modelroute-model": c.model,
        "x-modelroute-rule": "middleware",
        "x-modelroute-policy": policy_name,
        "x-modelroute-attempts": "0",
        "x-modelroute-fallbacks": "0",
    }


def after_stream(response: Response, ex: Executor, run: Run, mreq: MiddlewareRequest, sink: list[Completion]) -> None:
    """Make a streamed response run the `after` hooks with the assembled answer once it is done being sent
    (`sink` receives the run's Completion: Executor.watch; the watch ends even when the body never began). What
    they return cannot change what was sent; an exception in one is logged."""

    async def after() -> None:
        ex.unwatch(run)
        if sink:
            try:
                await ex.middleware.aafter(mreq, sink[-1])
            except Exception:
                log.exception("middleware after() failed on a streamed answer (already sent)")

    closing(response).on_close(after)
