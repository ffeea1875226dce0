"""The Engine: a policy path in, a thread-safe object whose decide() returns a Decision out."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

from engine.calling import ExecutionMethods
from engine.compiling import _embedder, compile_policy, compile_source
from engine.language.load import bundled_policy_dir
from engine.options import check_execution_options, extension_functions
from engine.reloading import ReloadMethods
from engine.request_building import RequestError as RequestError
from engine.request_building import RequestMethods, prompt_text
from engine.runtime.budget import BudgetBook
from engine.runtime.caller_pin import caller_pinned_decision
from engine.runtime.decision import Decision, NoRouteError
from engine.runtime.embedder import Embedder
from engine.runtime.evaluate import decide as _decide
from engine.runtime.pinned import pinned_decision, resolve_model
from engine.runtime.plan import decide_all_open
from engine.runtime.policy import CompiledPolicy, Request
from engine.runtime.state import ExecutionStore, MemoryStore, StateStore
from engine.runtime.tokenizer import load_estimator, policy_estimator
from engine.runtime.tokens import TokenEstimator, estimate_tokens

if TYPE_CHECKING:
    from engine.reload import Reloader
    from providers.execution import Executor


#: decide()'s own arguments: a request's prompt or messages, never one of its attributes.
DECIDE_ARGUMENTS = ("prompt", "messages")


class Engine(RequestMethods, ReloadMethods, ExecutionMethods):
    """Routes requests with a compiled policy. Safe to share between threads: the policy is immutable and
    swapped, with the text estimator it counts with, as one reference (`_snapshot`)."""

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
        estimate = policy_estimator(getattr(policy, "settings", None), self._default_estimate)
        #: (policy, text estimator): read as one, so a decision never mixes one version's rules with another's
        #: token counter (`policy` reads the first)
        self._snapshot: tuple[CompiledPolicy, TokenEstimator] = (policy, estimate)
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
        return self._snapshot[0]

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
        policy = self._snapshot[0]
        return policy.embedder if policy.embedder is not None else self._embedder

    @property
    def path(self) -> str | Path | None:
        """The policy file or directory recompile() reads; None for an engine built from source text."""
        return self._path

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()

    @property
    def version(self) -> str:
        return self._snapshot[0].version

    def decide(
        self, prompt: str | None = None, *, messages: Sequence[Mapping[str, Any]] | None = None, **attrs: Any
    ) -> Decision:
        """Pick a model for a prompt (or OpenAI-format messages) and request attributes.

        Raises NoRouteError when no rule yields a viable model; RequestError (a ValueError saying what is
        accepted) for a prompt that is not text, `messages` that are not a list of message objects, or a `tokens`
        that is not a number of tokens from 0 to 10**308."""
        start = time.perf_counter_ns()
        policy, estimate = self._snapshot  # one read: the whole decision uses one policy version and its counter
        if messages is None and not attrs and not policy.budgets and not policy.counts:  # the common case
            text = prompt if type(prompt) is str else prompt_text(prompt)
            state = self.state
            req = Request(
                text,
                estimate(text),
                attrs,
                False,
                False,
                policy.out_tokens,
                state.unavailable(),
                state,
                state.latency_ms(),
            )
        else:
            req = self.build_request(prompt, messages, policy, estimate, attrs)
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
        policy, estimate = self._snapshot
        return pinned_decision(
            policy, model, lambda: self.build_request(prompt, messages, policy, estimate, attrs), start
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
        policy, estimate = self._snapshot
        return caller_pinned_decision(
            policy, model, fallback, lambda: self.build_request(prompt, messages, policy, estimate, attrs), start
        )

    def resolve_model(self, name: str) -> str | None:
        """The policy's canonical name for a model name or catalog alias, or None when it has no such model."""
        return resolve_model(self._snapshot[0], name)

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
