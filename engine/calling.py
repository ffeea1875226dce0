"""The Engine's execution methods: a prompt or messages, options, request attributes and a pin in; a Completion
(complete / acomplete), a stream (stream / astream), usage, health and warm-up results out, through the engine's
executor and middleware (providers.execution, reached only through engine.api's one lazy edge).

`ExecutionMethods` is a base class of engine.api.Engine: the methods live here so engine/api.py stays about
deciding."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from engine.runtime.policy import CompiledPolicy
    from engine.runtime.state import StateStore
    from providers.execution import (
        AsyncCompletionStream,
        Completion,
        CompletionStream,
        Event,
        Executor,
        ProbeResult,
    )

__all__ = ["OPTIONS", "ExecutionMethods"]


def _execution() -> ModuleType:
    """providers.execution, through engine.api's one lazy edge into it."""
    from engine.api import _execution as providers_execution

    return providers_execution()


class ExecutionMethods:
    """complete(), acomplete(), stream(), astream(), use(), on_event(), usage(), health(), warmup(), awarmup();
    the Engine provides `executor`, `state` and its executor once made (`_exec`)."""

    state: StateStore
    _snapshot: tuple[CompiledPolicy, Any]
    _exec: Executor | None

    @property
    def executor(self) -> Executor:
        raise NotImplementedError

    def complete(
        self,
        prompt: str | None = None,
        *,
        messages: list[Any] | None = None,
        schema: Any = None,
        model: str | None = None,
        fallback: Sequence[str] = (),
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | None = None,
        stop: list[str] | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        extra: dict[str, Any] | None = None,
        cache: bool = True,
        **attrs: Any,
    ) -> Completion:
        """Decide, then call the decided model(s) with retries and fallbacks; returns a Completion.

        `attrs` are the policy's request attributes. `schema` (a pydantic model) asks for JSON and validates
        it into `.parsed`. `model` pins a model (name or alias) instead of the policy's rules, `fallback` lists the
        models to fall back to (see pin_model(): hard constraints apply; PinError for an unknown model). `timeout`
        bounds each attempt (connect to last byte), `deadline` the whole request in seconds (it can shorten the
        policy's `set deadline`, never lengthen it; ValueError when not > 0). `cache=False` skips the response
        cache's lookup (the fresh answer is still stored; docs/cache.md). Middleware (use()) runs around it.
        Raises NoRouteError, BudgetExceeded (before any call) or RoutingError (every attempt failed or the deadline
        passed; `.attempts` says why)."""
        ex, calls = self.executor, _execution().calls
        return cast(
            "Completion",
            calls.complete(ex, calls.Call(_pin(model, fallback), prompt, messages, schema, _options(locals()), attrs)),
        )

    async def acomplete(
        self,
        prompt: str | None = None,
        *,
        messages: list[Any] | None = None,
        schema: Any = None,
        model: str | None = None,
        fallback: Sequence[str] = (),
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | None = None,
        stop: list[str] | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        extra: dict[str, Any] | None = None,
        cache: bool = True,
        **attrs: Any,
    ) -> Completion:
        """The async complete() (plain middleware hooks run in a worker thread)."""
        ex, calls = self.executor, _execution().calls
        pin, options = _pin(model, fallback), _options(locals())
        return cast(
            "Completion",
            await calls.acomplete(ex, calls.Call(pin, prompt, messages, schema, options, attrs)),
        )

    def stream(
        self,
        prompt: str | None = None,
        *,
        messages: list[Any] | None = None,
        schema: Any = None,
        model: str | None = None,
        fallback: Sequence[str] = (),
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | None = None,
        stop: list[str] | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        extra: dict[str, Any] | None = None,
        cache: bool = True,
        **attrs: Any,
    ) -> CompletionStream:
        """Decide now (raising NoRouteError / BudgetExceeded here), then iterate the returned CompletionStream
        for StreamEvents. A model that fails before its first token is retried / fallen back from; a failure
        after it raises StreamInterrupted (no text is repeated). `.completion` is set at the end. `model` and
        `fallback` pin as in complete(); middleware's `after` hooks see the assembled answer once the stream ends
        (docs/middleware.md)."""
        ex, calls = self.executor, _execution().calls
        pin, options = _pin(model, fallback), _options(locals())
        return cast(
            "CompletionStream",
            calls.stream(ex, calls.Call(pin, prompt, messages, schema, options, attrs)),
        )

    def astream(
        self,
        prompt: str | None = None,
        *,
        messages: list[Any] | None = None,
        schema: Any = None,
        model: str | None = None,
        fallback: Sequence[str] = (),
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | None = None,
        stop: list[str] | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        extra: dict[str, Any] | None = None,
        cache: bool = True,
        **attrs: Any,
    ) -> AsyncCompletionStream:
        """The async stream(): `async for event in engine.astream(...)` (an AsyncCompletionStream). With
        middleware registered, the decision (and its errors) comes with the first event."""
        ex, calls = self.executor, _execution().calls
        pin, options = _pin(model, fallback), _options(locals())
        return cast(
            "AsyncCompletionStream",
            calls.astream(ex, calls.Call(pin, prompt, messages, schema, options, attrs)),
        )

    def use(self, middleware: Any) -> Callable[[], None]:
        """Register middleware: an object with `before(request)` and/or `after(request, response)`, sync or
        async, run in registration order around complete(), acomplete(), stream(), astream() and the gateway's
        requests (providers/execution/middleware.py, docs/middleware.md). Returns a function that removes it;
        TypeError when it has neither method."""
        return self.executor.middleware.add(middleware)

    def on_event(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call `callback(event)` for every execution event (providers.execution.Event); returns an unsubscribe
        function. Events are also logged to the "modelroute.execute" logger."""
        return self.executor.events.subscribe(callback)

    def usage(self) -> dict[str, Any]:
        """Calls, failures, success rate, tokens, cost, latency (EWMA) and mean latency per model and per provider,
        plus totals; `estimated_calls` / `estimated_cost`: calls settled from an estimate because the upstream
        reported no usage; "experiments": requests, errors, latency and cost per experiment and variant; "keys"
        and "users": requests, errors and cost per gateway key and per `user` attribute (counted by this process)."""
        ex = self._exec
        if ex is None:
            return cast("dict[str, Any]", _execution().usage_summary(self.state))
        summary = _execution().usage_summary(self.state, ex.estimated, ex.tally, ex.experiments, ex.spending)
        return cast("dict[str, Any]", summary)

    def health(self) -> dict[str, Any]:
        """Per model and per provider: healthy, circuit state, calls, error rate and mean latency over
        `health.window`, the latency EWMA and the last probe (providers/execution/health.py, docs/health.md)."""
        return cast("dict[str, Any]", _execution().health_summary(self.executor))

    def warmup(self, models: Sequence[str] | str | None = None) -> list[ProbeResult]:
        """Probe each model the policy uses (or `models`: names, catalog aliases or `provider:model` names, or one
        such name) once with a one-token request, a few at a time; the results feed circuits and health. Returns
        a ProbeResult per model (status ok | failed | skipped). An unknown name is a PinError (a ValueError)
        with a did-you-mean hint, before any probe."""
        names = _warmup_names(self._snapshot[0], models)
        ex = self.executor
        return cast("list[ProbeResult]", ex.run_sync(self.awarmup(names)))

    async def awarmup(self, models: Sequence[str] | str | None = None) -> list[ProbeResult]:
        """The async warmup()."""
        names = _warmup_names(self._snapshot[0], models)
        ex = self.executor
        results = await _execution().probe_all(ex, names)
        ex.health.last_round = time.monotonic()
        return cast("list[ProbeResult]", results)


#: The request options of complete()/acomplete()/stream()/astream() (every other keyword is a request attribute).
OPTIONS = (
    "system",
    "temperature",
    "max_tokens",
    "tools",
    "tool_choice",
    "stop",
    "timeout",
    "deadline",
    "extra",
    "cache",
)


def _warmup_names(policy: Any, models: Sequence[str] | str | None) -> list[str] | None:
    """warmup()'s models as the policy's canonical names (a str is one model); None: every model it uses."""
    if models is None:
        return None
    from engine.runtime.caller_pin import known_model

    return list(dict.fromkeys(known_model(policy, m) for m in ([models] if isinstance(models, str) else models)))


def _pin(model: str | None, fallback: Sequence[str]) -> tuple[str, Sequence[str]] | None:
    """complete(model=..., fallback=[...]) as the executor's pin; fallback without a model is a TypeError."""
    if model is None:
        if fallback:
            raise TypeError("fallback= needs model=: the policy's own rules name their fallbacks")
        return None
    if isinstance(fallback, str):
        raise TypeError("fallback= takes a list of model names, not one string")
    return model, tuple(fallback)


def _options(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The request options among a complete()/stream() call's arguments (its `locals()`), as the executor's
    prepare() takes them."""
    return {name: arguments[name] for name in OPTIONS}
