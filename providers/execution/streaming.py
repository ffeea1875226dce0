"""Streaming execution: a prepared Run and its Executor in, an async (or sync) iterator of StreamEvents out
(delta / tool_call / usage / done), with the request's Completion available once the stream is done.

A single-model rule streams the first model of the plan that starts answering: a model that fails before its
first token is retried and fallen back from like a non-streamed call; a failure after it raises
StreamInterrupted (no text is repeated). Waits are bounded (providers/execution/deadlines.py): the first token
by `stream.first_token_timeout`, every later chunk by `stream.idle_timeout`, everything by the request's
deadline. A group (race / consensus / best_of) answers as a whole, as one delta. The `usage` event comes just
before `done`, with the answer's usage as accounted (estimated, and marked so, when the upstream sent none).
Whatever ends a try (an answer, a failure, a cancellation, an exception anywhere), its in-flight count is
released.
`AsyncCompletionStream` and `CompletionStream` are also importable from `providers.execution.executor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncGenerator, Iterator
from typing import TYPE_CHECKING

from providers.errors import ProviderError
from providers.execution.deadlines import attempt_timeout, bounded_events, out_of_time, routing_error, stream_bounds
from providers.execution.resilience import Attempt, InvalidOutput, StreamInterrupted
from providers.types import StreamEvent

if TYPE_CHECKING:
    from engine.runtime.policy import Entry
    from providers.execution.executor import Completion, Executor, Run

__all__ = ["AsyncCompletionStream", "CompletionStream", "stream_events"]


async def stream_events(executor: Executor, run: Run, sink: list[Completion]) -> AsyncGenerator[StreamEvent, None]:
    """Stream the first model of the plan that starts answering; appends the Completion to `sink`."""
    try:
        if run.decision.strategy != "single":  # a group answers as a whole: one delta with the result
            done = await executor.run_group_or_chain(run)
            sink.append(done)
            yield StreamEvent(kind="delta", text=done.text)
            yield StreamEvent(kind="usage", usage=done.usage)
            yield StreamEvent(kind="done", finish_reason=done.finish_reason, response=done.response)
            return
        for i, name in enumerate(run.decision.chain):
            if out_of_time(run):  # the request's deadline passed: no further model starts
                break
            if i:
                executor.events.emit("fallback", f"falling back to {name}", model=name)
            entry = executor.gate(run, name)
            if entry is None:
                continue
            try:  # closed here, not when collected: its attempt's in-flight count is released at once
                async with contextlib.aclosing(_stream_model(executor, run, entry, sink)) as events:
                    async for event in events:
                        yield event
            finally:
                executor.release_probe(run, entry)
            if sink:
                return
        raise routing_error(run)
    finally:
        executor.settle(run)


async def _stream_model(
    executor: Executor, run: Run, entry: Entry, sink: list[Completion]
) -> AsyncGenerator[StreamEvent, None]:
    """Stream one model, retrying failures before its first token; appends the Completion to `sink` on success
    and returns without one when the model failed (recorded in `run.attempts`)."""
    client = executor.client(run.policy, entry.provider)
    timeout = attempt_timeout(run, executor.provider_spec(run.policy, entry.provider))
    first_s, idle_s = stream_bounds(run, timeout)
    # the client's own per-read timeouts must not cut a wait these bounds allow
    wire = None if timeout is None else max(timeout, first_s or 0.0, idle_s or 0.0)
    retry = 0
    while True:
        flight = executor.started(run, entry, retry)
        first = accounted = False
        events = None
        usage: StreamEvent | None = None
        delivered: list[str] = []  # what the consumer was given: charged when it closes the stream early
        try:
            events = bounded_events(run, entry, client.astream(entry.spec, run.chat, timeout=wire), first_s, idle_s)
            async for event in events:
                if event.kind == "usage":  # held back: the answer's usage is known (or estimated) at `done`
                    usage = event
                    continue
                if event.kind == "done" and event.response is not None:
                    accounted = True
                    result = executor.succeeded(run, entry, event.response, flight, retry, run.schema)
                    sink.append(executor.completion(run, result))
                    yield StreamEvent(kind="usage", usage=result.response.usage)
                    event = event.model_copy(update={"response": result.response})
                elif usage is not None:
                    yield usage
                    usage = None
                first = first or event.kind in ("delta", "tool_call")
                if event.kind == "delta" and event.text:
                    delivered.append(event.text)
                elif event.kind == "tool_call" and event.tool_call is not None:
                    delivered += [event.tool_call.name, event.tool_call.arguments or ""]
                yield event
            return
        except InvalidOutput as error:
            executor.failed(run, entry, error, flight, retry, counted=True, may_retry=False)
            raise StreamInterrupted(
                f"streamed answer is invalid: {error.message}", provider=entry.provider, model=entry.name
            ) from None
        except ProviderError as error:
            wait = executor.failed(run, entry, error, flight, retry, may_retry=not first)
            if first:
                raise StreamInterrupted(
                    f"stream failed after its first token: {type(error).__name__} {error.message}",
                    provider=entry.provider,
                    model=entry.name,
                    status=error.status,
                ) from None
        except (asyncio.CancelledError, GeneratorExit):
            if not accounted and first:  # the upstream answered: it bills what it was sent and what it gave
                executor.cut_short(run, entry, flight, retry, "".join(delivered))
            elif not accounted:  # nothing came back yet: like a cancelled call, nothing is charged
                executor.cancelled(run, entry, flight, retry)
            raise
        finally:
            flight.release()  # whatever raised where (serialising the request, a store, a callback)
            if events is not None:
                await events.aclose()  # drops the upstream connection of a stream cut short
        if wait is None or out_of_time(run):
            return
        await executor.sleep(wait)
        retry += 1


class AsyncCompletionStream:
    """`async for event in stream` yields StreamEvents (delta / tool_call / usage / done); `.completion` is set
    once the stream is done; `.decision` and `.attempts` are available from the start."""

    def __init__(self, executor: Executor, run: Run):
        self.decision, self._run, self._executor = run.decision, run, executor
        self._sink: list[Completion] = []
        self._events = stream_events(executor, run, self._sink)
        weakref.finalize(self, executor.settle, run)  # a stream never iterated still releases its budget hold

    @property
    def attempts(self) -> list[Attempt]:
        return self._run.attempts

    @property
    def completion(self) -> Completion | None:
        return self._sink[0] if self._sink else None

    def __aiter__(self) -> AsyncCompletionStream:
        return self  # not the inner generator: `async for` must keep this object (and its budget hold) alive

    async def __anext__(self) -> StreamEvent:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        await self._events.aclose()
        self._executor.settle(self._run)

    async def __aenter__(self) -> AsyncCompletionStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class CompletionStream:
    """The sync form of AsyncCompletionStream: iterate for StreamEvents; `.text()` joins the deltas."""

    def __init__(self, executor: Executor, run: Run):
        self._executor = executor
        self._inner = AsyncCompletionStream(executor, run)
        self.decision = run.decision

    @property
    def attempts(self) -> list[Attempt]:
        return self._inner.attempts

    @property
    def completion(self) -> Completion | None:
        return self._inner.completion

    def __iter__(self) -> Iterator[StreamEvent]:
        it = self._inner.__aiter__()
        try:
            while True:
                try:
                    yield self._executor.run_sync(it.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self.close()

    def text(self) -> str:
        return "".join(e.text for e in self if e.kind == "delta")

    def close(self) -> None:
        self._executor.run_sync(self._inner.aclose())

    def __enter__(self) -> CompletionStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
