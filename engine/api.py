"""The Engine: a policy path in, a thread-safe object whose decide() returns a Decision out."""

from __future__ import annotations

import datetime
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

from engine.compiler.passes import compile_loaded
from engine.language.load import bundled_policy_dir, load, load_source
from engine.runtime.budget import BudgetBook
from engine.runtime.decision import Decision, NoRouteError
from engine.runtime.evaluate import decide as _decide
from engine.runtime.pinned import pinned_decision, resolve_model
from engine.runtime.plan import decide_all_open
from engine.runtime.policy import DEFAULT_OUTPUT_TOKENS, CompiledPolicy, Request
from engine.runtime.state import ExecutionStore, MemoryStore, StateStore
from engine.runtime.tokens import TokenCount, TokenEstimator, count_request, estimate_tokens, from_messages, has_images

if TYPE_CHECKING:
    from engine.diagnostics import PolicyError
    from engine.reload import Reloader, ReloadEvent
    from providers.execution import AsyncCompletionStream, Completion, CompletionStream, Event, Executor


#: decide()'s own arguments: a request's prompt or messages, never one of its attributes.
DECIDE_ARGUMENTS = ("prompt", "messages")


class RequestError(ValueError):
    """A request the engine cannot decide as given (e.g. `tokens="many"`); the message says what to change."""


def _token_count(value: Any) -> int:
    """The `tokens=N` override as an int; RequestError for anything but a finite number >= 0 (or its digits)."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise RequestError(f"tokens must be a number of tokens (0 or more), not {value!r}")
    return int(value)


def _output_tokens(policy: CompiledPolicy) -> float:
    settings = policy.settings
    return float(settings["output_tokens"]) if settings is not None else float(DEFAULT_OUTPUT_TOKENS)


def compile_policy(
    path: str | Path | None = None, *, catalog: Any = None, today: datetime.date | None = None
) -> CompiledPolicy:
    """Load and compile a policy file or directory (default: the bundled policy). Raises PolicyError.

    `today` is the date deprecations count from (default: the date now): `prefer` never ranks a catalog model
    whose deprecation_date is on or before it."""
    return compile_loaded(load(path if path is not None else bundled_policy_dir()), catalog, today=today)


def compile_source(
    text: str, file: str = "<string>", *, catalog: Any = None, today: datetime.date | None = None
) -> CompiledPolicy:
    """Compile policy text (includes and catalog paths resolve from the working directory); see compile_policy."""
    return compile_loaded(load_source(text, file), catalog, today=today)


class Engine:
    """Routes requests with a compiled policy. Safe to share between threads: the policy is immutable and
    swapped as one reference."""

    def __init__(
        self,
        policy: CompiledPolicy,
        *,
        token_estimator: TokenEstimator | None = None,
        path: str | Path | None = None,
        catalog: Any = None,
        state: StateStore | None = None,
        today: datetime.date | None = None,
        **execution: Any,
    ):
        """`path`, `catalog` and `today` are what recompile() (reload) compiles with; `today=None` means the date
        at each recompile. `execution` configures complete()/stream() (see providers.execution.Executor): `providers`
        (provider name -> ProviderSpec, overriding the catalog's), `api_keys` (provider name -> key, instead of
        the environment), `transport` / `async_transport` (httpx transports), `limits` (httpx.Limits
        per provider connection pool), `sleep` (async sleep for
        retries), `wall` (epoch clock for budget periods)."""
        self._policy = policy
        self._estimate = token_estimator or estimate_tokens
        self._path = path
        self._catalog = catalog
        self._today = today
        self._reload: Reloader | None = None
        self.state: StateStore = state if state is not None else MemoryStore()
        self._execution = execution
        self._exec: Executor | None = None
        self._budgets: BudgetBook | None = None

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        catalog: Any = None,
        token_estimator: TokenEstimator | None = None,
        watch: bool = False,
        poll: bool = False,
        state: StateStore | None = None,
        today: datetime.date | None = None,
        **execution: Any,
    ) -> Engine:
        """A .route file, or a directory with main.route; None loads the bundled default policy.

        With watch=True, every file the policy uses is watched and reloaded on change (see watch()).
        `today` is the date deprecations count from; None (the default) means the date at each compile, reloads
        included, so a long-running engine stops ranking a model at its first reload after the model's date."""
        path = path if path is not None else bundled_policy_dir()
        engine = cls(
            compile_policy(path, catalog=catalog, today=today),
            token_estimator=token_estimator,
            path=path,
            catalog=catalog,
            state=state,
            today=today,
            **execution,
        )
        return engine.watch(poll=poll) if watch else engine

    @classmethod
    def from_source(
        cls,
        text: str,
        *,
        file: str = "<string>",
        catalog: Any = None,
        token_estimator: TokenEstimator | None = None,
        state: StateStore | None = None,
        today: datetime.date | None = None,
        **execution: Any,
    ) -> Engine:
        return cls(
            compile_source(text, file, catalog=catalog, today=today),
            token_estimator=token_estimator,
            state=state,
            today=today,
            **execution,
        )

    @property
    def policy(self) -> CompiledPolicy:
        return self._policy

    @property
    def path(self) -> str | Path | None:
        """The policy file or directory recompile() reads; None for an engine built from source text."""
        return self._path

    # -- hot reload (engine/reload.py does the work) --------------------------------------------------
    @property
    def reloader(self) -> Reloader:
        """This engine's Reloader (created on first use): reload(), watchers, callbacks, `poll_interval_s`."""
        if self._reload is None:
            from engine.reload import Reloader

            self._reload = Reloader(self)
        return self._reload

    def swap(self, policy: CompiledPolicy) -> None:
        """Install a compiled policy: one reference assignment, so each decide() sees one version. The reloader
        calls it with each policy that compiled; callers may too (e.g. to install a policy compiled elsewhere)."""
        self._policy = policy

    def recompile(self) -> CompiledPolicy:
        """Compile the policy from its path again (raises PolicyError); does not install it."""
        if self._path is None:
            raise ValueError("this engine was built from source text, not a path: nothing to reload")
        return compile_policy(self._path, catalog=self._catalog, today=self._today)

    def reload(self) -> bool:
        """Recompile now and swap in the result if it compiles; False (last good policy kept) if not."""
        return self.reloader.reload()

    def watch(self, *, poll: bool = False, debounce_ms: int = 50) -> Engine:
        """Watch every file the policy uses and reload on change, in a background thread."""
        self.reloader.start(poll=poll, debounce_ms=debounce_ms)
        return self

    async def awatch(self, *, poll: bool = False, debounce_ms: int = 50) -> None:
        """The asyncio form of watch(): runs until cancelled."""
        await self.reloader.awatch(poll=poll, debounce_ms=debounce_ms)

    def stop(self) -> None:
        if self._reload is not None:
            self._reload.stop()

    def on_reload(self, callback: Callable[[ReloadEvent], None]) -> None:
        """Call `callback(event)` after every reload attempt (success or rejection)."""
        self.reloader.callbacks.append(callback)

    @property
    def last_error(self) -> PolicyError | None:
        """The PolicyError of the last rejected reload, or None after a good one."""
        return self._reload.last_error if self._reload is not None else None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()

    @property
    def version(self) -> str:
        return self._policy.version

    @property
    def token_estimator(self) -> TokenEstimator:
        """The text estimator `fn(text) -> int` every count of this engine uses (`token_estimator=` or the default
        one token per four characters)."""
        return self._estimate

    def count_tokens(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Any] | None = None,
        system: str | None = None,
        tools: Any = None,
        response_format: Any = None,
    ) -> TokenCount:
        """The one token counter (engine/runtime/tokens.py) on a request as it is sent: every message part (a
        prompt is one user message), the system text, the tools and the response-format schema (JSON text, or
        already serialised), images per provider kind. `.for_kind("openai")`, `.worst`."""
        msgs = messages if messages is not None else [{"role": "user", "content": prompt or ""}]
        return count_request(msgs, self._estimate, system=system, tools=tools, response_format=response_format)

    def request(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        policy: CompiledPolicy | None = None,
        **attrs: Any,
    ) -> Request:
        """The Request decide() evaluates (exposed for tools that trace without deciding).

        `tokens=N` overrides the estimate (for callers that count tokens exactly); RequestError if it is not a
        number of tokens."""
        policy = policy or self._policy
        images_in_messages = False
        if messages is not None:
            text, tokens = from_messages(messages if isinstance(messages, list) else list(messages), self._estimate)
            images_in_messages = has_images(messages)
            if images_in_messages and "images" not in attrs:
                attrs["images"] = True
        else:
            text = prompt or ""
            tokens = self._estimate(text)
        state = self.state
        if not attrs and not policy.budgets:  # the common case, kept short: decide() is on the hot path
            return Request(
                text,
                tokens,
                attrs,
                False,
                images_in_messages,
                _output_tokens(policy),
                state.unavailable(),
                state,
                state.latency_ms(),
            )
        if "tokens" in attrs:
            tokens = _token_count(attrs.pop("tokens"))
        out = attrs.get("max_tokens")
        if not (isinstance(out, (int, float)) and not isinstance(out, bool) and out > 0):
            out = _output_tokens(policy)
        if policy.budgets:
            for name, value in self.budget_book.request_attrs(policy.budgets, attrs).items():
                attrs.setdefault(name, value)
        # images found in the messages need a vision model even if the caller says images=False
        return Request(
            text,
            tokens,
            attrs,
            bool(attrs.get("tools")),
            bool(attrs.get("images")) or images_in_messages,
            float(out),
            state.unavailable(),
            state,
            state.latency_ms(),
        )

    def decide(
        self, prompt: str | None = None, *, messages: Sequence[Mapping[str, Any]] | None = None, **attrs: Any
    ) -> Decision:
        """Pick a model for a prompt (or OpenAI-format messages) and request attributes.

        Raises NoRouteError when no rule yields a viable model, RequestError for an unusable `tokens`."""
        start = time.perf_counter_ns()
        policy = self._policy  # one read: the whole decision uses one policy version
        if messages is None and not attrs and not policy.budgets:  # the common case, without the detour
            text = prompt or ""
            state = self.state
            req = Request(
                text,
                self._estimate(text),
                attrs,
                False,
                False,
                _output_tokens(policy),
                state.unavailable(),
                state,
                state.latency_ms(),
            )
        else:
            req = self.request(prompt, messages=messages, policy=policy, **attrs)
        result = _decide(policy, req)
        if result is None:
            if req.unavailable:  # open circuits may be all that stands in the way: probe or fail (plan.py)
                return decide_all_open(policy, req, start)
            raise NoRouteError(policy, req)
        rule, entry, fallbacks, matched, scanned, stood_in = result
        return Decision(policy, rule, entry, fallbacks, req, matched, scanned, time.perf_counter_ns() - start, stood_in)

    def pin(
        self,
        model: str,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        **attrs: Any,
    ) -> Decision:
        """A Decision for a model the caller names instead of the policy's rules (no fallbacks; its report says
        so). Raises PinError (`.code`: model_not_found, model_override_disabled, model_unsuitable) when the
        policy does not know the model, does not `set overrides = true`, or the model cannot serve the request.
        An open circuit is not a refusal here: execution skips the model and says why."""
        start = time.perf_counter_ns()
        policy = self._policy
        return pinned_decision(
            policy,
            model,
            lambda: self.request(prompt, messages=messages, policy=policy, **attrs),
            start,
        )

    def resolve_model(self, name: str) -> str | None:
        """The policy's canonical name for a model name or catalog alias, or None when it has no such model."""
        return resolve_model(self._policy, name)

    @property
    def budget_book(self) -> BudgetBook:
        """Which budgets apply to a request and what is left of them, in this engine's state store; the executor
        reserves and settles against the same book."""
        if self._budgets is None:
            # budgets read spend (ExecutionStore.spent): a policy with budgets needs a store that keeps it
            store = cast(ExecutionStore, self.state)
            self._budgets = BudgetBook(store, self._execution.get("wall") or time.time)
        return self._budgets

    # -- execution (providers.execution does the work; httpx is imported only there, on first use) ---------
    @property
    def executor(self) -> Executor:
        """The executor complete()/stream() and the gateway run requests on (created on first use)."""
        if self._exec is None:
            self._exec = _execution().Executor(self, budgets=self.budget_book, **self._execution)
        return self._exec

    def complete(
        self,
        prompt: str | None = None,
        *,
        messages: list[Any] | None = None,
        schema: Any = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | None = None,
        stop: list[str] | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        extra: dict[str, Any] | None = None,
        **attrs: Any,
    ) -> Completion:
        """Decide, then call the decided model(s) with retries and fallbacks; returns a Completion.

        `attrs` are the policy's request attributes. `schema` (a pydantic model) asks for JSON and validates
        it into `.parsed`. `timeout` bounds each attempt (connect to last byte), `deadline` the whole request in
        seconds (it can shorten the policy's `set deadline`, never lengthen it; ValueError when not > 0). Raises
        NoRouteError, BudgetExceeded (before any call) or RoutingError (every attempt failed or the deadline
        passed; `.attempts` says why)."""
        ex = self.executor
        options = _options(locals())
        run = ex.prepare(prompt, messages, schema, options, attrs)
        work = ex.run(run)
        try:
            return ex.run_sync(work)
        finally:
            if inspect.getcoroutinestate(work) == inspect.CORO_CREATED:  # never started: release its hold here
                work.close()
                ex.settle(run)

    async def acomplete(
        self,
        prompt: str | None = None,
        *,
        messages: list[Any] | None = None,
        schema: Any = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | None = None,
        stop: list[str] | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        extra: dict[str, Any] | None = None,
        **attrs: Any,
    ) -> Completion:
        """The async complete()."""
        ex = self.executor
        options = _options(locals())
        return await ex.run(ex.prepare(prompt, messages, schema, options, attrs))

    def stream(
        self,
        prompt: str | None = None,
        *,
        messages: list[Any] | None = None,
        schema: Any = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | None = None,
        stop: list[str] | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        extra: dict[str, Any] | None = None,
        **attrs: Any,
    ) -> CompletionStream:
        """Decide now (raising NoRouteError / BudgetExceeded here), then iterate the returned CompletionStream
        for StreamEvents. A model that fails before its first token is retried / fallen back from; a failure
        after it raises StreamInterrupted (no text is repeated). `.completion` is set at the end."""
        ex = self.executor
        options = _options(locals())
        return _execution().CompletionStream(ex, ex.prepare(prompt, messages, schema, options, attrs))

    def astream(
        self,
        prompt: str | None = None,
        *,
        messages: list[Any] | None = None,
        schema: Any = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | None = None,
        stop: list[str] | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        extra: dict[str, Any] | None = None,
        **attrs: Any,
    ) -> AsyncCompletionStream:
        """The async stream(): `async for event in engine.astream(...)` (an AsyncCompletionStream)."""
        ex = self.executor
        options = _options(locals())
        return _execution().AsyncCompletionStream(ex, ex.prepare(prompt, messages, schema, options, attrs))

    def on_event(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call `callback(event)` for every execution event (providers.execution.Event); returns an unsubscribe
        function. Events are also logged to the "modelroute.execute" logger."""
        return self.executor.events.subscribe(callback)

    def usage(self) -> dict[str, Any]:
        """Calls, failures, success rate, tokens, cost and latency per model and per provider, plus totals; and
        `estimated_calls` / `estimated_cost`: calls settled from an estimate because the upstream reported no
        usage (counted by this process)."""
        estimated = self._exec.estimated if self._exec is not None else None
        return _execution().usage_summary(self.state, estimated)

    def close(self) -> None:
        """Close the HTTP clients (and the sync API's background loop)."""
        if self._exec is not None:
            self._exec.close()

    async def aclose(self) -> None:
        """Close the HTTP clients of the running event loop."""
        if self._exec is not None:
            await self._exec.aclose()


#: The request options of complete()/acomplete()/stream()/astream() (every other keyword is a request attribute).
OPTIONS = ("system", "temperature", "max_tokens", "tools", "tool_choice", "stop", "timeout", "deadline", "extra")


def _options(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The request options among a complete()/stream() call's arguments (its `locals()`), as the executor's
    prepare() takes them."""
    return {name: arguments[name] for name in OPTIONS}


def _execution() -> ModuleType:
    """providers.execution, imported on first use: the engine's one edge into execution (httpx and the clients
    load only when a request is executed, never for decide())."""
    import providers.execution

    return providers.execution
