"""Stream cleanup for the gateway: a streamed answer's body and the cleanups registered on it (upstream close, key
budget, metrics, rate-limit settle, middleware `after` hooks) in; a StreamingResponse that runs each cleanup exactly
once when it is done being sent (whether its body began or not: a client gone before the headers, a failed send)
out, plus the stream's last-event cost fields (`cost`, `cost_estimated`) its writers add.

A body generator's `finally` is not enough: an async generator that was never started never runs it, and Starlette
cancels the body before its first step when the client is already gone (or `send` fails on the headers)."""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
from starlette.responses import StreamingResponse

if TYPE_CHECKING:
    from starlette.responses import ContentStream
    from starlette.types import Receive, Scope, Send

    from providers.execution import Completion

__all__ = ["COST_FIELD", "Cleanup", "ClosingResponse", "add_to_frame", "closing", "cost_fields", "run_cleanups"]

log = logging.getLogger("modelroute.gateway")

#: The top-level field of a chat / completions stream's finish chunk with the cost, when the client asked for no
#: usage chunk: `{"usd": <float>, "estimated": <bool>}`.
COST_FIELD = "x_modelroute_cost"

#: One cleanup: a function of no arguments, plain or async.
Cleanup = Callable[[], Awaitable[None] | None]


async def run_cleanups(cleanups: list[Cleanup]) -> None:
    """Run `cleanups` in order, emptying the list first (so each runs once); one that raises is logged and the
    rest still run. Shielded from cancellation: a client that hung up must not cut the accounting short."""
    todo = list(cleanups)
    cleanups.clear()
    with anyio.CancelScope(shield=True):
        for cleanup in todo:
            try:
                result = cleanup()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("a streamed answer's cleanup failed (the others still ran)")


class ClosingResponse(StreamingResponse):
    """A StreamingResponse whose cleanups (`on_close`) run once, in order, when `__call__` ends however it ends;
    the body iterator is closed first, so its own `finally` has run before them."""

    def __init__(
        self, content: ContentStream, headers: Mapping[str, str] | None = None, media_type: str = "text/event-stream"
    ) -> None:
        super().__init__(content, headers=headers, media_type=media_type)
        self.cleanups: list[Cleanup] = []

    def on_close(self, cleanup: Cleanup) -> None:
        """Run `cleanup` after the ones registered before it, once the response is done."""
        self.cleanups.append(cleanup)

    async def close(self) -> None:
        """Close the body and run the cleanups; later calls do nothing."""
        body = self.body_iterator
        aclose = getattr(body, "aclose", None)
        if aclose is not None and self.cleanups:
            with anyio.CancelScope(shield=True):
                try:
                    await aclose()
                except Exception:
                    log.debug("closing a streamed body failed", exc_info=True)
        await run_cleanups(self.cleanups)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.close()


def closing(response: Any) -> ClosingResponse:
    """`response` as the ClosingResponse every streamed model answer is (providers/gateway/streamed.py)."""
    if not isinstance(response, ClosingResponse):
        raise TypeError(f"a streamed answer must be a ClosingResponse, not {type(response).__name__}")
    return response


def cost_fields(done: Completion | None) -> dict[str, Any]:
    """The cost fields of a stream's last event: `cost` (USD) and `cost_estimated` (true when some of it was
    estimated because an upstream reported no usage), as `x-modelroute-cost` / `-estimated` say for JSON answers;
    none without a Completion."""
    if done is None:
        return {}
    return {"cost": done.cost, "cost_estimated": bool(done.estimated_cost)}


def add_to_frame(frame: bytes, key: str | None, fields: Mapping[str, Any]) -> bytes:
    """One `data: {...}` SSE line with `fields` added to its object's `key` object (the object itself for None)."""
    head, sep, rest = frame.partition(b"data: ")
    obj = json.loads(rest)
    (obj if key is None else obj[key]).update(fields)
    return head + sep + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
