"""Deadlines: a prepared Run's time bounds (the attempt timeout, a stream's first-token and idle timeouts, the
request's deadline) and one provider call in, that call held to them whatever the upstream's pacing (an expiry
raised as providers.errors.Timeout) or, once the request's deadline has passed, the RoutingError that says so out.

An attempt's `timeout` bounds it from connect to last byte (asyncio's timeout around the client call, so it holds
on every transport); a stream's first-token timeout bounds the wait for its first delta or tool call and its idle
timeout every later wait for a chunk, a piece of output its client holds back (a tool call's pieces, emitted whole)
counting as one (providers.clients.reply.stream_progress). `set deadline` (shortened, never lengthened, by a
caller's `deadline=`) bounds the whole request: each attempt's bound is cut to the time left, no attempt or retry
starts without time left, and a backoff that would sleep past it is not taken (the next plan model is tried at
once instead).
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from engine.runtime.settings import setting
from providers.clients.reply import STREAM_PROGRESS
from providers.errors import Timeout
from providers.execution.resilience import RoutingError

if TYPE_CHECKING:
    from engine.runtime.policy import Entry
    from providers.execution.outcome import Run
    from providers.types import StreamEvent

__all__ = [
    "MIN_LEFT_S",
    "attempt_timeout",
    "bounded_events",
    "call_within",
    "caller_deadline",
    "fits",
    "out_of_time",
    "request_deadline",
    "routing_error",
    "stream_bounds",
    "time_left",
]

T = TypeVar("T")

#: Less time than this left and no attempt (or retry) starts: it could not finish before the deadline.
MIN_LEFT_S = 0.001


class _Wait:
    """A stream's wait for its next event, whose expiry (`when`, loop time; None: none) a piece of output the
    client holds back moves on (`progress`) to a whole idle bound from then."""

    def __init__(self, run: Run, idle_s: float | None) -> None:
        self.run, self.idle_s = run, idle_s
        self.started = False  # output has come: the idle bound applies
        self.by_deadline = False
        self.when: float | None = None
        self.timer: Any = None  # the asyncio.Timeout of the wait under way (Python 3.11+)

    def progress(self) -> None:
        if self.timer is not None and self.timer.expired():
            return  # too late: the wait is being cut
        self.started = True
        seconds, self.by_deadline = _bound(self.run, self.idle_s)
        self.when = None if seconds is None else asyncio.get_running_loop().time() + seconds
        if self.timer is not None:
            self.timer.reschedule(self.when)


if sys.version_info >= (3, 11):

    async def _within(aw: Awaitable[T], seconds: float) -> T:
        async with asyncio.timeout(seconds):
            return await aw

    async def _within_wait(aw: Awaitable[T], wait: _Wait) -> T:
        async with asyncio.timeout_at(wait.when) as timer:
            wait.timer = timer
            try:
                return await aw
            finally:
                wait.timer = None

else:  # pragma: no cover - Python 3.10

    async def _within(aw: Awaitable[T], seconds: float) -> T:
        return await asyncio.wait_for(aw, seconds)

    async def _within_wait(aw: Awaitable[T], wait: _Wait) -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(aw)
        try:
            while not task.done():
                left = None if wait.when is None else wait.when - loop.time()
                if left is not None and left <= 0:
                    raise asyncio.TimeoutError
                await asyncio.wait({task}, timeout=left)
            return task.result()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})


def secs(seconds: float | None) -> str:
    """Seconds as people write them: `2s`, `0.5s`, `0.421s`."""
    if seconds is None:
        return "no limit"
    return f"{seconds:g}s" if round(seconds, 3) == seconds else f"{seconds:.3f}s"


def caller_deadline(options: Mapping[str, Any]) -> float | None:
    """The caller's `options["deadline"]` (seconds) as a float, or None; ValueError for anything but a finite
    number > 0 (a numeric string, as the gateway's x-modelroute-deadline header carries it, is read as one)."""
    value = options.get("deadline")
    if value is None:
        return None
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    try:
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 < float(number) < math.inf:
            raise ValueError
    except (ValueError, OverflowError):  # OverflowError: an int too large for a float (10**400)
        raise ValueError(f"deadline must be a finite number of seconds greater than 0, not {value!r}") from None
    return float(number)


def request_deadline(settings: Mapping[str, Any] | None, caller: float | None) -> float | None:
    """The seconds the whole request may take: the policy's `set deadline`, shortened (never lengthened) by the
    caller's deadline; None when neither sets one."""
    policy = setting(settings, "deadline")
    if policy is None:
        return caller
    return float(policy) if caller is None else min(float(policy), caller)


def time_left(run: Run) -> float | None:
    """Seconds until the request's deadline (may be negative); None without a deadline."""
    return None if run.deadline is None else run.deadline - time.monotonic()


def out_of_time(run: Run) -> bool:
    """Whether the request's deadline has passed (or is too close for another attempt to start)."""
    left = time_left(run)
    return left is not None and left < MIN_LEFT_S


def fits(run: Run, wait: float) -> bool:
    """Whether a backoff sleep of `wait` seconds still leaves time for an attempt before the deadline."""
    left = time_left(run)
    return left is None or left - wait >= MIN_LEFT_S


def _bound(run: Run, seconds: float | None) -> tuple[float | None, bool]:
    """`seconds` cut to the time left before the deadline; and whether the deadline is the tighter bound."""
    left = time_left(run)
    if left is None or (seconds is not None and seconds <= left):
        return seconds, False
    return max(0.0, left), True


def _expired(run: Run, entry: Entry, what: str, seconds: float, by_deadline: bool) -> Timeout:
    """The Timeout of a bound that passed: "`what` within 2s". One cut by the request's deadline is not the
    model's fault: it is not retried and does not count towards the model's circuit (transient=False)."""
    if by_deadline:
        message = f"{what} before the request's deadline of {secs(run.deadline_s)} passed"
        return Timeout(message, provider=entry.provider, model=entry.name, transient=False)
    return Timeout(f"{what} within {secs(seconds)}", provider=entry.provider, model=entry.name)


async def call_within(run: Run, entry: Entry, call: Awaitable[T], timeout: float | None) -> T:
    """Await a non-streamed provider call, bounded from connect to last byte by `timeout` (cut to the time left
    before the deadline); raises providers.errors.Timeout when the bound passes (the call is cancelled)."""
    seconds, by_deadline = _bound(run, timeout)
    if seconds is None:
        return await call
    try:
        return await _within(call, seconds)
    except asyncio.TimeoutError:
        raise _expired(run, entry, "no complete answer", seconds, by_deadline) from None


def attempt_timeout(run: Run, spec: Any) -> float | None:
    """One attempt's bound: the caller's `timeout=`, else the provider's `timeout_s` when its catalog entry (the
    ProviderSpec `spec`) sets one or the policy has no settings, else the policy's `timeout`."""
    if run.timeout is not None:
        return run.timeout
    settings = run.policy.settings
    if "timeout_s" in getattr(spec, "model_fields_set", ()) or settings is None:
        return getattr(spec, "timeout_s", None)
    return float(settings["timeout"])


def stream_bounds(run: Run, timeout: float | None) -> tuple[float | None, float | None]:
    """A stream's (first-token, idle) bounds in seconds: `stream.first_token_timeout` and `stream.idle_timeout`,
    each the attempt `timeout` when unset."""
    settings = run.policy.settings
    first, idle = setting(settings, "stream.first_token_timeout"), setting(settings, "stream.idle_timeout")
    return (timeout if first is None else float(first)), (timeout if idle is None else float(idle))


async def bounded_events(
    run: Run,
    entry: Entry,
    events: AsyncIterator[StreamEvent],
    first_s: float | None,
    idle_s: float | None,
) -> AsyncGenerator[StreamEvent, None]:
    """`events` (a client's stream) with every wait bounded: until the first delta or tool call by `first_s`
    from now, after it by `idle_s` per chunk, each cut to the time left before the deadline. A piece of output
    the client holds back (a tool call's, emitted whole) is output too: it restarts the idle bound (and ends the
    wait for a first token) without being an event here. An expiry raises providers.errors.Timeout; the upstream
    stream is closed (its connection dropped) however this one ends."""
    started = time.monotonic()
    wait = _Wait(run, idle_s)
    try:
        while True:
            if wait.started:
                limit: float | None = idle_s
            else:
                limit = None if first_s is None else max(0.0, first_s - (time.monotonic() - started))
            seconds, wait.by_deadline = _bound(run, limit)
            wait.when = None if seconds is None else asyncio.get_running_loop().time() + seconds
            hook = STREAM_PROGRESS.set(wait.progress)  # this wait's only: reset before the event goes on
            try:
                event = await _within_wait(events.__anext__(), wait)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                what = "no next chunk" if wait.started else "no first token"
                bound = (idle_s if wait.started else first_s) or 0.0  # the setting's value, not what was left of it
                raise _expired(run, entry, what, bound, wait.by_deadline) from None
            finally:
                STREAM_PROGRESS.reset(hook)
            wait.started = wait.started or event.kind in ("delta", "tool_call")
            yield event
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()


def routing_error(run: Run) -> RoutingError:
    """The RoutingError of a request no model answered: it says the deadline passed when it did."""
    if run.deadline is not None and out_of_time(run):
        n = len(run.attempts)
        message = f"deadline of {secs(run.deadline_s)} passed after {n} attempt{'' if n == 1 else 's'}"
        return RoutingError(run.attempts, run.decision, message, deadline_passed=True)
    return RoutingError(run.attempts, run.decision)
