"""The Python API's calls: an Executor, the engine's middleware, a pin (model=, fallback=) and one call's prompt or
messages, schema, options and attributes in; a Completion (complete / acomplete) or a stream (stream / astream)
out, with the middleware run around the decision and the execution (providers/execution/middleware.py).

A stream's `after` hooks run once it has ended, with the assembled Completion: they cannot change the events
already delivered; what they return becomes `stream.completion`. A `before` hook's answer is streamed as one
delta, its usage and `done`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from providers.execution.middleware import MiddlewareRequest, Middlewares
from providers.execution.outcome import Completion, Run, decide_messages
from providers.execution.streaming import AsyncCompletionStream, CompletionStream
from providers.types import StreamEvent

if TYPE_CHECKING:
    from engine import Decision
    from providers.execution.executor import Executor

__all__ = ["AsyncMiddlewareStream", "Call", "MiddlewareStream", "Pin", "acomplete", "astream", "complete", "stream"]

#: A caller's pin: (model, fallbacks), or None to let the policy decide.
Pin = tuple[str, Sequence[str]] | None


@dataclass(frozen=True)
class Call:
    """One Python API call as the caller made it: its pin, prompt or messages, schema, options and attributes."""

    pin: Pin
    prompt: str | None
    messages: list[Any] | None
    schema: Any
    options: Mapping[str, Any]
    attrs: dict[str, Any]

    def request(self, stream: bool) -> MiddlewareRequest:
        """What the middleware's `before` hooks see."""
        return MiddlewareRequest.of(self.prompt, self.messages, self.attrs, self.options, stream=stream)

    def rewritten(self, req: MiddlewareRequest) -> Call:
        """This call with what the `before` hooks left in `req` (messages, attributes, options)."""
        prompt, messages = req.call()
        return replace(self, prompt=prompt, messages=messages, attrs=dict(req.attributes), options=dict(req.options))

    def prepare(self, ex: Executor) -> Run:
        """Decide (by the policy, or by the pin) and hold the budgets: the Run execution carries out."""
        decide = None
        if self.pin is not None:
            model, fallback = self.pin
            plain = decide_messages(self.messages)
            prompt = self.prompt

            def decide(attrs: dict[str, Any]) -> Decision:
                return ex.engine.pin_model(model, prompt, messages=plain, fallback=fallback, **attrs)

        return ex.prepare(self.prompt, self.messages, self.schema, self.options, self.attrs, decide=decide)


def complete(ex: Executor, call: Call) -> Completion:
    """Engine.complete(): the `before` hooks on the calling thread, decide and execute, the `after` hooks."""
    mws, req = ex.middleware, None
    if mws:
        req, answered = mws.before(call.request(stream=False), ex.run_sync)
        if answered is not None:
            return mws.after(req, answered, ex.run_sync)
        call = call.rewritten(req)
    run = call.prepare(ex)
    work = ex.run(run)
    try:
        done = cast(Completion, ex.run_sync(work))
    finally:
        if inspect.getcoroutinestate(work) == inspect.CORO_CREATED:  # never started: release its hold here
            work.close()
            ex.settle(run)
    return mws.after(req, done, ex.run_sync) if req is not None else done


async def acomplete(ex: Executor, call: Call) -> Completion:
    """Engine.acomplete(): as complete(), with plain hooks in a worker thread."""
    mws, req = ex.middleware, None
    if mws:
        req, answered = await mws.abefore(call.request(stream=False))
        if answered is not None:
            return await mws.aafter(req, answered)
        call = call.rewritten(req)
    done = await ex.run(call.prepare(ex))
    return await mws.aafter(req, done) if req is not None else done


def stream(ex: Executor, call: Call) -> CompletionStream:
    """Engine.stream(): decides now (raising here); a MiddlewareStream when middleware is registered."""
    mws = ex.middleware
    if not mws:
        run = call.prepare(ex)
        hit = cached(ex, run)
        return CompletionStream(ex, run) if hit is None else replay(ex, mws, call.request(stream=True), run, hit)
    req, answered = mws.before(call.request(stream=True), ex.run_sync)
    if answered is not None:
        return MiddlewareStream(ex, mws, req, None, answered)
    run = call.rewritten(req).prepare(ex)
    hit = cached(ex, run)
    return MiddlewareStream(ex, mws, req, run, None) if hit is None else replay(ex, mws, req, run, hit)


def astream(ex: Executor, call: Call) -> AsyncCompletionStream:
    """Engine.astream(): decides now (raising here) without middleware; with middleware, the `before` hooks (which
    need the event loop), the decision and its errors come with the first event."""
    mws = ex.middleware
    if not mws:
        run = call.prepare(ex)
        hit = cached(ex, run)
        if hit is None:
            return AsyncCompletionStream(ex, run)
        replayed = (call.request(stream=True), None, hit)
        stream = AsyncMiddlewareStream(ex, mws, lambda: _ready(replayed))
        stream.decision = run.decision
        return stream

    async def begin() -> tuple[MiddlewareRequest, Run | None, Completion | None]:
        req, answered = await mws.abefore(call.request(stream=True))
        if answered is not None:
            return req, None, answered
        run = call.rewritten(req).prepare(ex)
        hit = cached(ex, run)
        return (req, run, None) if hit is None else (req, None, hit)

    return AsyncMiddlewareStream(ex, mws, begin)


async def _ready(
    value: tuple[MiddlewareRequest, Run | None, Completion | None],
) -> tuple[MiddlewareRequest, Run | None, Completion | None]:
    return value


def cached(ex: Executor, run: Run) -> Completion | None:
    """The response cache's answer to a prepared stream (its hold released: a hit spends nothing), or None."""
    hit = ex.cached(run)
    if hit is not None:
        ex.settle(run)
    return hit


def replay(ex: Executor, mws: Middlewares, req: MiddlewareRequest, run: Run, hit: Completion) -> MiddlewareStream:
    """A cached answer replayed as a stream (its `after` hooks run at the end, as for any stream)."""
    stream = MiddlewareStream(ex, mws, req, None, hit)
    stream.decision = run.decision
    return stream


def answer_events(c: Completion) -> list[StreamEvent]:
    """A whole answer as stream events: one delta, its tool calls, its usage, done."""
    return [
        StreamEvent(kind="delta", text=c.text),
        *(StreamEvent(kind="tool_call", tool_call=call) for call in c.tool_calls),
        StreamEvent(kind="usage", usage=c.usage),
        StreamEvent(kind="done", finish_reason=c.finish_reason or "stop", response=c.response),
    ]


class MiddlewareStream(CompletionStream):
    """A CompletionStream whose middleware's `after` hooks run when it ends (`.completion` is then what they
    returned); or the stream of a `before` hook's answer (`run` None: `.decision` is None, no attempts)."""

    def __init__(self, ex: Executor, mws: Middlewares, req: MiddlewareRequest, run: Run | None, answered: Any):
        self._mws, self._req, self._answered = mws, req, cast("Completion | None", answered)
        self._final: Completion | None = None
        self._ran = run is not None
        if run is not None:
            super().__init__(ex, run)
        else:
            self._executor = ex
            self.decision = cast("Decision", None)

    @property
    def attempts(self) -> list[Any]:
        return super().attempts if self._ran else []

    @property
    def completion(self) -> Completion | None:
        if self._final is not None:
            return self._final
        return super().completion if self._ran else self._answered

    def __iter__(self) -> Iterator[StreamEvent]:
        if self._ran:
            yield from super().__iter__()
        elif self._answered is not None:
            yield from answer_events(self._answered)
        done = self.completion
        if done is not None and self._final is None:
            self._final = self._mws.after(self._req, done, self._executor.run_sync)

    def close(self) -> None:
        if self._ran:
            super().close()


class AsyncMiddlewareStream(AsyncCompletionStream):
    """The async MiddlewareStream: `begin()` runs the `before` hooks and decides, on the first `__anext__` (so
    `.decision` is None until then, and NoRouteError / BudgetExceeded come from the first event)."""

    def __init__(
        self,
        ex: Executor,
        mws: Middlewares,
        begin: Callable[[], Awaitable[tuple[MiddlewareRequest, Run | None, Completion | None]]],
    ):
        self._executor, self._mws, self._begin = ex, mws, begin
        self.decision = cast("Decision", None)
        self._req: MiddlewareRequest | None = None
        self._inner: AsyncCompletionStream | None = None
        self._answered: Completion | None = None
        self._final: Completion | None = None
        self._pending: list[StreamEvent] = []
        self._started = False

    @property
    def attempts(self) -> list[Any]:
        return self._inner.attempts if self._inner is not None else []

    @property
    def completion(self) -> Completion | None:
        if self._final is not None:
            return self._final
        return self._inner.completion if self._inner is not None else self._answered

    def __aiter__(self) -> AsyncMiddlewareStream:
        return self

    async def __anext__(self) -> StreamEvent:
        if not self._started:
            self._started = True
            self._req, run, self._answered = await self._begin()
            if run is not None:
                self._inner = AsyncCompletionStream(self._executor, run)
                self.decision = run.decision
            elif self._answered is not None:
                self._pending = answer_events(self._answered)
        try:
            if self._inner is None:
                if not self._pending:
                    raise StopAsyncIteration
                return self._pending.pop(0)
            return await self._inner.__anext__()
        except StopAsyncIteration:
            done = self.completion
            if done is not None and self._final is None and self._req is not None:
                self._final = await self._mws.aafter(self._req, done)
            raise

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()
