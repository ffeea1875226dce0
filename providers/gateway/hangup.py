"""Client hang-ups during a non-streamed request: the ASGI receive channel of a request whose body was read in;
the cancellation of the handler's task (and with it the upstream call it awaits) when the client disconnects out.

Once the body is read, the server's `receive()` has nothing more to give until the connection is lost (then it
returns `http.disconnect`) or the response is complete. One small task waits on it while the handler awaits the
execution: no polling, and nothing to do per request when the answer comes first (the task is cancelled).
Cancelling the handler's own task, rather than running the execution in a task of its own, keeps the cost to
one task, and the executor's finally blocks (cancelled attempts, in-flight counts, budget settlement) run as the
CancelledError passes through them. Streams need none of this: Starlette's StreamingResponse watches for the
disconnect itself and closes the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["ClientGone", "HangUp"]


class ClientGone(Exception):
    """The client hung up before its answer was ready: nothing is sent (the request is counted as 499)."""


class HangUp:
    """Watches for the client hanging up while the current task awaits something; `with HangUp(receive) as h:`.

    On a disconnect the current task is cancelled and `h.happened` is set: the handler catches the
    CancelledError and checks `h.happened` (a cancellation from anywhere else is not its to swallow). Leaving the
    block stops the watch; a CancelledError that was the hang-up's is "uncancelled" there (Python 3.11+), so the
    task is not left marked as cancelling."""

    __slots__ = ("_task", "_watcher", "happened")

    def __init__(self, receive: Callable[[], Awaitable[Any]]) -> None:
        self.happened = False
        task = asyncio.current_task()
        assert task is not None, "HangUp needs a running task"
        self._task = task
        self._watcher = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Callable[[], Awaitable[Any]]) -> None:
        try:
            while (await receive()).get("type") != "http.disconnect":
                pass
        except Exception:  # a server whose receive() fails after the body: no hang-up detection, no harm
            return
        self.happened = True
        self._task.cancel()

    def __enter__(self) -> HangUp:
        return self

    def __exit__(self, *exc: object) -> None:
        self._watcher.cancel()
        if self.happened:
            uncancel = getattr(self._task, "uncancel", None)  # Python 3.11+: undo this hang-up's cancel()
            if uncancel is not None:
                uncancel()
