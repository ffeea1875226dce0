"""The Engine: a policy path in, a thread-safe object whose decide() returns a Decision out."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

from engine.calling import ExecutionMethods
from engine.compiler.passes import compile_loaded
from engine.language.load import bundled_policy_dir, load, load_source
from engine.options import check_execution_options, extension_functions
from engine.runtime.budget import BudgetBook
from engine.runtime.caller_pin import caller_pinned_decision
from engine.runtime.decision import Decision, NoRouteError
from engine.runtime.embedder import Embedder
from engine.runtime.evaluate import decide as _decide
from engine.runtime.messages import request_counts
from engine.runtime.pinned import pinned_decision, resolve_model
from engine.runtime.plan import decide_all_open
from engine.runtime.policy import CompiledPolicy, Request, not_an_attribute
from engine.runtime.state import ExecutionStore, MemoryStore, StateStore
from engine.runtime.tokenizer import load_estimator, policy_estimator
from engine.runtime.tokens import TokenCount, TokenEstimator, count_request, estimate_tokens, from_messages, has_images

if TYPE_CHECKING:
    from engine.diagnostics import PolicyError
    from engine.reload import Reloader, ReloadEvent
    from providers.execution import Executor


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


def compile_policy(
    path: str | Path | None = None,
    *,
    catalog: Any = None,
    today: datetime.date | None = None,
    functions: Mapping[str, Callable[..., Any]] | None = None,
    rankers: Mapping[str, Callable[..., Any]] | None = None,
    embedder: Embedder | None = None,
) -> CompiledPolicy:
    """Load and compile a policy file or directory (default: the bundled policy). Raises PolicyError.

    `today` is the date deprecations count from (default: the date now): `prefer` never ranks a catalog model
    whose deprecation_date is on or before it. `functions` / `rankers`: the Python functions and rankers the
    policy calls (see Engine.functions); a call to one not given is an error (E313, E314). `embedder`: embeds the
    examples of semantic tasks (`like`) and the requests (see Engine.embedder; None: the default, when needed)."""
    return compile_loaded(
        load(path if path is not None else bundled_policy_dir()),
        catalog,
        today=today,
        functions=_given("functions", functions),
        rankers=_given("rankers", rankers),
        embedder=_embedder(embedder),
    )


def compile_source(
    text: str,
    file: str = "<string>",
    *,
    catalog: Any = None,
    today: datetime.date | None = None,
    functions: Mapping[str, Callable[..., Any]] | None = None,
    rankers: Mapping[str, Callable[..., Any]] | None = None,
    embedder: Embedder | None = None,
) -> CompiledPolicy:
    """Compile policy text (includes, catalog and example file paths resolve from the working directory); see
    compile_policy."""
    return compile_loaded(
        load_source(text, file),
        catalog,
        today=today,
        functions=_given("functions", functions),
        rankers=_given("rankers", rankers),
        embedder=_embedder(embedder),
    )


def _embedder(embedder: Embedder | None) -> Embedder | None:
    """`embedder=` checked: a callable (texts in, one vector per text out) or None."""
    if embedder is not None and not callable(embedder):
        raise TypeError(f"embedder must be a callable taking a list of texts, not {type(embedder).__name__}")
    return embedder


def _given(kind: str, given: Mapping[str, Callable[..., Any]] | None) -> Mapping[str, Callable[..., Any]] | None:
    """`functions=` / `rankers=` checked (engine/options.py); None when there are none, so that a call names
    what is not provided."""
    return extension_functions(kind, given) or None


class Engine(ExecutionMethods):
    """Routes requests with a compiled policy. Safe to share between threads: the policy is immutable and
    swapped as one reference."""

    def __init__(
        self,
        policy: CompiledPolicy,
        *,
        token_estimator: TokenEstimator | str | None = None,
        path: str | Path | None = None,
        catalog: Any = None,
        state: StateStore | None = None,
        today: datetime.date | None = None,
        functions: Mapping[str, Callable[..., Any]] | None = None,
        rankers: Mapping[str, Callable[..., Any]] | None = None,
        embedder: Embedder | None = None,
        **execution: Any,
    ):
        """`path`, `catalog` and `today` are what recompile() (reload) compiles with; `today=None` means the date
        at each recompile. `execution` configures complete()/stream() (see providers.execution.Executor): `providers`
        (provider name -> ProviderSpec, overriding the catalog's), `api_keys` (provider name -> key, instead of
        the environment), `transport` / `async_transport` (httpx transports), `limits` (httpx.Limits
        per provider connection pool), `sleep` (async sleep for
        retries), `wall` (epoch clock for budget periods), `max_response_bytes`. Any other keyword is a TypeError
        that names the valid ones. `functions` / `rankers` / `embedder`: see the properties of those names.

        `token_estimator`: `fn(text) -> int`, or a tokenizer spec such as "tiktoken:cl100k_base" (loaded now from
        local files; TokenizerError, a ValueError, when it cannot be): how text is counted under a policy that does
        not `set tokens.estimator` itself (default: one token per four characters)."""
        check_execution_options("Engine()", execution, ENGINE_OPTIONS)
        self._functions = extension_functions("functions", functions)
        self._rankers = extension_functions("rankers", rankers)
        self._embedder = _embedder(embedder)
        if isinstance(token_estimator, str):
            token_estimator = load_estimator(token_estimator)
        self._default_estimate: TokenEstimator = token_estimator or estimate_tokens
        self._estimate = policy_estimator(getattr(policy, "settings", None), self._default_estimate)
        self._policy = policy
        self._path = path
        self._catalog = catalog
        self._today = today
        self._reload: Reloader | None = None
        self.state: StateStore = state if state is not None else MemoryStore()
        self._execution = execution
        self._exec: Executor | None = None
        self._budgets: BudgetBook | None = None
        self._health_watch = False

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        catalog: Any = None,
        token_estimator: TokenEstimator | str | None = None,
        watch: bool = False,
        poll: bool = False,
        state: StateStore | None = None,
        today: datetime.date | None = None,
        functions: Mapping[str, Callable[..., Any]] | None = None,
        rankers: Mapping[str, Callable[..., Any]] | None = None,
        embedder: Embedder | None = None,
        **execution: Any,
    ) -> Engine:
        """A .route file, or a directory with main.route; None loads the bundled default policy.

        With watch=True, every file the policy uses is watched and reloaded on change (see watch()).
        `today` is the date deprecations count from; None (the default) means the date at each compile, reloads
        included, so a long-running engine stops ranking a model at its first reload after the model's date.
        The other keywords are Engine()'s; an unknown one is a TypeError naming the valid ones (before any
        compile)."""
        check_execution_options("Engine.load()", execution, LOAD_OPTIONS)
        path = path if path is not None else bundled_policy_dir()
        functions = extension_functions("functions", functions)  # a TypeError here comes before any compile
        rankers = extension_functions("rankers", rankers)
        embedder = _embedder(embedder)
        engine = cls(
            compile_policy(path, catalog=catalog, today=today, functions=functions, rankers=rankers, embedder=embedder),
            token_estimator=token_estimator,
            path=path,
            catalog=catalog,
            state=state,
            today=today,
            functions=functions,
            rankers=rankers,
            embedder=embedder,
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
        token_estimator: TokenEstimator | str | None = None,
        state: StateStore | None = None,
        today: datetime.date | None = None,
        functions: Mapping[str, Callable[..., Any]] | None = None,
        rankers: Mapping[str, Callable[..., Any]] | None = None,
        embedder: Embedder | None = None,
        **execution: Any,
    ) -> Engine:
        """An Engine for policy text (see Engine.load; an unknown keyword is a TypeError naming the valid ones)."""
        check_execution_options("Engine.from_source()", execution, SOURCE_OPTIONS)
        functions = extension_functions("functions", functions)
        rankers = extension_functions("rankers", rankers)
        embedder = _embedder(embedder)
        return cls(
            compile_source(
                text, file, catalog=catalog, today=today, functions=functions, rankers=rankers, embedder=embedder
            ),
            token_estimator=token_estimator,
            state=state,
            today=today,
            functions=functions,
            rankers=rankers,
            embedder=embedder,
            **execution,
        )

    @property
    def policy(self) -> CompiledPolicy:
        return self._policy

    @property
    def functions(self) -> Mapping[str, Callable[..., Any]]:
        """The `functions=` given at load (read-only): name -> plain function `fn(request)` returning a bool or a
        number, called by the policy's `complexity()` (conditions, `score(...)`) with a read-only view of the
        request (engine.runtime.functions.RequestView: text, messages, tokens, attrs), at most once per request.
        Checked at load (names, callables, no async functions), compiled into the policy and kept across reloads;
        see docs/language.md, "Python functions"."""
        return self._functions

    @property
    def rankers(self) -> Mapping[str, Callable[..., Any]]:
        """The `rankers=` given at load (read-only): name -> plain function `fn(request, model) -> float` (model: the
        catalog's ModelSpec), higher is better, for `prefer custom(NAME)`; checked at load and kept across
        reloads."""
        return self._rankers

    @property
    def embedder(self) -> Embedder | None:
        """The embedder the policy's semantic tasks (`like`) use: the `embedder=` given at load, else the default
        (WordLlama, engine/runtime/embedder.py) when the policy has a task with examples, else None."""
        return self._policy.embedder if self._policy.embedder is not None else self._embedder

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
        calls it with each policy that compiled; callers may too (e.g. to install a policy compiled elsewhere).
        The text counter follows the policy's `tokens.estimator` (its encoder was loaded when it compiled)."""
        self._estimate = policy_estimator(getattr(policy, "settings", None), self._default_estimate)
        self._policy = policy

    def recompile(self) -> CompiledPolicy:
        """Compile the policy from its path again (raises PolicyError); does not install it."""
        if self._path is None:
            raise ValueError("this engine was built from source text, not a path: nothing to reload")
        return compile_policy(
            self._path,
            catalog=self._catalog,
            today=self._today,
            functions=self._functions,
            rankers=self._rankers,
            embedder=self._embedder,
        )

    def reload(self) -> bool:
        """Recompile now and swap in the result if it compiles; False (last good policy kept) if not."""
        return self.reloader.reload()

    def watch(self, *, poll: bool = False, debounce_ms: int = 50) -> Engine:
        """Watch every file the policy uses and reload on change, in a background thread. A policy that sets
        `health.interval` (now or after a reload) also gets its background health checks (see health())."""
        self.reloader.start(poll=poll, debounce_ms=debounce_ms)
        if not self._health_watch:
            self._health_watch = True
            self.on_reload(lambda event: self._watch_health())
        self._watch_health()
        return self

    def _watch_health(self) -> None:
        """Start the background health checks on the sync API's loop when the policy sets `health.interval`."""
        settings = self._policy.settings
        if settings is not None and settings.get("health.interval"):
            ex = self.executor
            ex.health.ensure(ex.background_loop())

    async def awatch(self, *, poll: bool = False, debounce_ms: int = 50) -> None:
        """The asyncio form of watch(): runs until cancelled."""
        await self.reloader.awatch(poll=poll, debounce_ms=debounce_ms)

    def stop(self) -> None:
        """Stop watching (files and health checks)."""
        if self._reload is not None:
            self._reload.stop()
        if self._exec is not None:
            self._exec.health.stop()

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
        """The text estimator `fn(text) -> int` every count of this engine uses: the policy's `tokens.estimator`,
        else `token_estimator=`, else the default one token per four characters."""
        return self._estimate

    @staticmethod
    def tokenizer(spec: str) -> TokenEstimator:
        """The exact text counter a tokenizer spec names ("tiktoken:cl100k_base", "tiktoken:gpt-4"), loaded from
        local files once per process (never downloaded); TokenizerError (a ValueError with `.hint`) when it
        cannot be loaded. `modelroute serve --tokenizer` checks its option with it."""
        return load_estimator(spec)

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
        for name in attrs:
            if (why := not_an_attribute(name)) is not None:
                raise RequestError(why)
        images_in_messages = False
        if messages is not None:
            text, tokens = from_messages(messages if isinstance(messages, list) else list(messages), self._estimate)
            images_in_messages = has_images(messages)
            if images_in_messages and "images" not in attrs:
                attrs["images"] = True
        else:
            text = prompt or ""
            tokens = self._estimate(text)
        if policy.counts:  # messages / turns / words: derived here, never taken from the caller (reserved)
            attrs.update(request_counts(text, messages, policy.counts))
        state = self.state
        if not attrs and not policy.budgets:  # the common case, kept short: decide() is on the hot path
            return Request(
                text,
                tokens,
                attrs,
                False,
                images_in_messages,
                policy.out_tokens,
                state.unavailable(),
                state,
                state.latency_ms(),
                messages,
            )
        if "tokens" in attrs:
            tokens = _token_count(attrs.pop("tokens"))
        out = attrs.get("max_tokens")
        if not (isinstance(out, (int, float)) and not isinstance(out, bool) and out > 0):
            out = policy.out_tokens
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
            messages,
        )

    def decide(
        self, prompt: str | None = None, *, messages: Sequence[Mapping[str, Any]] | None = None, **attrs: Any
    ) -> Decision:
        """Pick a model for a prompt (or OpenAI-format messages) and request attributes.

        Raises NoRouteError when no rule yields a viable model, RequestError for an unusable `tokens`."""
        start = time.perf_counter_ns()
        policy = self._policy  # one read: the whole decision uses one policy version
        if messages is None and not attrs and not policy.budgets and not policy.counts:  # the common case
            text = prompt or ""
            state = self.state
            req = Request(
                text,
                self._estimate(text),
                attrs,
                False,
                False,
                policy.out_tokens,
                state.unavailable(),
                state,
                state.latency_ms(),
            )
        else:
            req = self.request(prompt, messages=messages, policy=policy, **attrs)
        result = _decide(policy, req, True)
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

    def pin_model(
        self,
        model: str,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        fallback: Sequence[str] = (),
        **attrs: Any,
    ) -> Decision:
        """A Decision for a model the Python caller names (complete(model=...) uses it): no `set overrides`
        needed, the hard constraints still apply. The first of `model`, then `fallback`, that can serve the request
        answers and the others that can follow it. Raises PinError (a ValueError): model_not_found, with a
        did-you-mean hint, for a name the policy does not know; model_unsuitable when none of them can serve the
        request. An open circuit is not a refusal here: execution skips the model and says why."""
        start = time.perf_counter_ns()
        policy = self._policy
        return caller_pinned_decision(
            policy, model, fallback, lambda: self.request(prompt, messages=messages, policy=policy, **attrs), start
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

    def close(self) -> None:
        """Close the HTTP clients (and the sync API's background loop)."""
        if self._exec is not None:
            self._exec.close()

    async def aclose(self) -> None:
        """Close the HTTP clients of the running event loop."""
        if self._exec is not None:
            await self._exec.aclose()


#: The keyword arguments of Engine(), Engine.load() and Engine.from_source() besides the execution options.
ENGINE_OPTIONS = ("token_estimator", "path", "catalog", "state", "today", "functions", "rankers", "embedder")
LOAD_OPTIONS = ("catalog", "token_estimator", "watch", "poll", "state", "today", "functions", "rankers", "embedder")
SOURCE_OPTIONS = ("file", "catalog", "token_estimator", "state", "today", "functions", "rankers", "embedder")


def _execution() -> ModuleType:
    """providers.execution, imported on first use: the engine's one edge into execution (httpx and the clients
    load only when a request is executed, never for decide())."""
    import providers.execution

    return providers.execution
