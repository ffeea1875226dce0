"""Middleware: the hooks registered with `engine.use(mw)` and one request (a `MiddlewareRequest`: messages,
attributes, options) in; the request as the `before` hooks left it (or the answer one of them gave, which then
answers without routing) and the response as the `after` hooks replaced it out.

A middleware is any object with an optional `before(request)` and an optional `after(request, response)`, each
a plain or an async function. They run in registration order. `before` may change `request.messages`,
`request.attributes` and `request.options` in place, return a new MiddlewareRequest, or return an answer (a
Completion, or a str: see `answer()`), which is then the response: no rule is evaluated, no model called, and
the later `before` hooks do not run (every `after` hook still does). `after` may return a Completion (or a str: the
same response with that text) that replaces the response; None keeps it. On the async paths (acomplete, astream,
the gateway) a plain function runs in a worker thread, so it never blocks the event loop; on the sync paths
(complete, stream) it runs on the calling thread. See docs/middleware.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from providers.execution.outcome import Completion
from providers.types import Usage

if TYPE_CHECKING:
    from engine import Decision

__all__ = ["Middleware", "MiddlewareRequest", "Middlewares", "answer"]

#: How the sync API runs an async hook's coroutine (the executor's run_sync).
Runner = Callable[[Coroutine[Any, Any, Any]], Any]
#: The model (and provider) a middleware's own answer reports.
MIDDLEWARE = "middleware"


class Middleware(Protocol):
    """What `engine.use()` takes: an object with `before(request)` and/or `after(request, response)` (both
    optional, each sync or async). Only the presence of the methods is checked."""


@dataclass
class MiddlewareRequest:
    """What middleware sees of one request. `messages`: OpenAI-format message dicts (a Python prompt is one user
    message); `attributes`: the policy's request attributes; `options`: the request options (system, temperature,
    max_tokens, tools, tool_choice, stop, timeout, deadline, extra on the Python API; the body's options at the
    gateway); `stream`: whether the caller streams; `source`: "python" or "gateway"; `state`: a dict that lives
    as long as the request, for a middleware to pass something from its `before` to its `after`."""

    messages: list[Any]
    attributes: dict[str, Any]
    options: dict[str, Any]
    stream: bool = False
    source: Literal["python", "gateway"] = "python"
    state: dict[str, Any] = field(default_factory=dict)
    prompt: str | None = field(default=None, repr=False)  # the Python prompt the messages were made from

    @classmethod
    def of(
        cls,
        prompt: str | None,
        messages: list[Any] | None,
        attrs: dict[str, Any],
        options: Mapping[str, Any],
        *,
        stream: bool,
    ) -> MiddlewareRequest:
        """The request of a Python call (complete / stream and their async forms)."""
        if messages is None:
            msgs: list[Any] = [{"role": "user", "content": prompt or ""}]
            return cls(msgs, attrs, dict(options), stream, "python", prompt=prompt or "")
        return cls(list(messages), attrs, dict(options), stream, "python")

    def call(self) -> tuple[str | None, list[Any] | None]:
        """(prompt, messages) to execute: the original prompt while the messages are still the one user message
        made from it (so a middleware that changes nothing changes nothing), else the messages."""
        if self.prompt is not None and self.messages == [{"role": "user", "content": self.prompt}]:
            return self.prompt, None
        return None, list(self.messages)


def answer(text: str, *, model: str = MIDDLEWARE, usage: Usage | None = None, cost: float = 0.0) -> Completion:
    """A Completion a middleware gives instead of a model (a cache hit, a refusal): `.model` and `.provider` are
    `model` ("middleware" by default), `.strategy` is "middleware", `.attempts` is empty and `.decision` is None
    (no rule was evaluated)."""
    return Completion(
        text,
        None,
        usage or Usage(),
        cost,
        model,
        MIDDLEWARE,
        cast("Decision", None),
        [],
        MIDDLEWARE,
    )


def answered_by_middleware(c: Completion) -> bool:
    """Whether `c` is a middleware's own answer (no model was called)."""
    return c.strategy == MIDDLEWARE


def _hook(mw: Any, name: str) -> Callable[..., Any] | None:
    hook = getattr(mw, name, None)
    if hook is None:
        return None
    if not callable(hook):
        raise TypeError(f"middleware {mw!r}: `{name}` must be a function, not {type(hook).__name__}")
    return cast("Callable[..., Any]", hook)


class Middlewares:
    """An engine's middleware, in registration order; registering is thread-safe and takes effect for requests
    that start after it."""

    def __init__(self) -> None:
        self._items: tuple[Any, ...] = ()
        self._lock = threading.Lock()

    def add(self, mw: Any) -> Callable[[], None]:
        """Register `mw` (TypeError when it has neither `before` nor `after`); returns a function that removes it."""
        before, after = _hook(mw, "before"), _hook(mw, "after")
        if before is None and after is None:
            raise TypeError(f"middleware {mw!r} has neither a before(request) nor an after(request, response) method")
        with self._lock:
            self._items = (*self._items, mw)

        def remove() -> None:
            with self._lock:
                self._items = tuple(m for m in self._items if m is not mw)

        return remove

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def items(self) -> tuple[Any, ...]:
        return self._items

    # ---- sync paths: hooks on the calling thread; an async hook's coroutine runs with `run` --------------
    def before(self, req: MiddlewareRequest, run: Runner) -> tuple[MiddlewareRequest, Any]:
        """Run the `before` hooks; returns the request to execute and the answer one of them gave (or None)."""
        for mw in self._items:
            hook = _hook(mw, "before")
            if hook is None:
                continue
            result = hook(req)
            if inspect.isawaitable(result):
                result = run(_awaited(result))
            req, response = _after_before(mw, req, result)
            if response is not None:
                return req, response
        return req, None

    def after(self, req: MiddlewareRequest, response: Completion, run: Runner) -> Completion:
        """Run the `after` hooks; returns the response as they left it."""
        for mw in self._items:
            hook = _hook(mw, "after")
            if hook is None:
                continue
            result = hook(req, response)
            if inspect.isawaitable(result):
                result = run(_awaited(result))
            response = _replaced(mw, response, result)
        return response

    # ---- async paths: plain hooks in a worker thread ------------------------------------------------------
    async def abefore(self, req: MiddlewareRequest) -> tuple[MiddlewareRequest, Any]:
        """The async form of before()."""
        for mw in self._items:
            hook = _hook(mw, "before")
            if hook is None:
                continue
            req, response = _after_before(mw, req, await _call(hook, req))
            if response is not None:
                return req, response
        return req, None

    async def aafter(self, req: MiddlewareRequest, response: Completion) -> Completion:
        """The async form of after()."""
        for mw in self._items:
            hook = _hook(mw, "after")
            if hook is not None:
                response = _replaced(mw, response, await _call(hook, req, response))
        return response


async def _awaited(value: Awaitable[Any]) -> Any:
    """Any awaitable as a coroutine (what the sync API's loop runs)."""
    return await value


async def _call(hook: Callable[..., Any], *args: Any) -> Any:
    """An async hook awaited; a plain one run in a worker thread (the event loop never waits on it)."""
    if inspect.iscoroutinefunction(hook):
        return await hook(*args)
    result = await asyncio.to_thread(hook, *args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _after_before(mw: Any, req: MiddlewareRequest, result: Any) -> tuple[MiddlewareRequest, Completion | None]:
    """What a `before` hook's return value means: None (go on), a MiddlewareRequest (go on with it), an answer."""
    if result is None:
        return req, None
    if isinstance(result, MiddlewareRequest):
        return result, None
    if isinstance(result, str):
        return req, answer(result)
    if isinstance(result, Completion):
        return req, result
    raise TypeError(
        f"middleware {mw!r}: before() returned {type(result).__name__}; return None, a MiddlewareRequest, or an "
        "answer (a Completion or a str)"
    )


def _replaced(mw: Any, response: Completion, result: Any) -> Completion:
    """What an `after` hook's return value means: None (keep), a Completion (replace), a str (replace the text)."""
    if result is None:
        return response
    if isinstance(result, Completion):
        return result
    if isinstance(result, str):
        return dataclasses.replace(response, text=result)
    raise TypeError(f"middleware {mw!r}: after() returned {type(result).__name__}; return None, a Completion or a str")
