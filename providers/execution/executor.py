"""Execution: an Engine plus a prompt (or messages) and request attributes in, a `Completion` (or a stream of
events) out, produced by calling the decided models over HTTP with retries, fallbacks, circuit breaking,
budgets and the policy's strategy.

One async core does the work; the sync API (`complete`, `stream`) runs it on a private background event loop, so
sync and async callers share one behaviour. Async clients are kept per event loop (an httpx AsyncClient belongs to
the loop that created it) and per provider, and reused (connection pooling): both in
providers/execution/connections.py. Attempts follow the decision's failover plan: `decision.chain` (the plan's
models) for single-model rules; for race / consensus / best_of the group (providers/execution/strategies.py), then
the plan's other models. Every attempt and the whole request are bounded in time (providers/execution/deadlines.py).
Streaming (`CompletionStream`, `AsyncCompletionStream`, re-exported here) lives in providers/execution/streaming.py;
`Run`, `Completion` and `Result` in providers/execution/outcome.py.
See docs/execution.md.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from engine.runtime.settings import setting
from engine.runtime.state import ExecutionStore
from providers.clients import ProviderClient
from providers.errors import ProviderError, register_secret
from providers.execution import prepare as preparing
from providers.execution import tracing
from providers.execution.attempts import Accounting, Flight
from providers.execution.budget import Budgets, label
from providers.execution.cache import cache_for
from providers.execution.connections import Connections, _LoopThread
from providers.execution.deadlines import attempt_timeout, call_within, out_of_time, routing_error
from providers.execution.events import EventBus
from providers.execution.experiments import ExperimentTally
from providers.execution.health import HealthMonitor, HealthTally
from providers.execution.metering import EstimatedSpend
from providers.execution.middleware import Middlewares
from providers.execution.outcome import Completion, Result, Run, Verdict, to_messages, validate
from providers.execution.spending import SpendTally
from providers.execution.streaming import AsyncCompletionStream, CompletionStream
from providers.types import ChatRequest

if TYPE_CHECKING:
    from engine import BudgetBook, Decision, Engine
    from engine.runtime.policy import Entry

__all__ = [
    "AsyncCompletionStream",
    "Completion",
    "CompletionStream",
    "Executor",
    "Flight",
    "Result",
    "Run",
    "Send",
    "to_messages",
    "validate",
]

#: One try's own call for Executor.try_model: (the provider's client, the model, the try's timeout) -> the response.
Send = Callable[[ProviderClient, "Entry", "float | None"], Awaitable[Any]]


class Executor(Connections, Accounting):
    """Executes requests for one Engine (created by Engine on first use; see engine/api.py); the accounting of each
    try (gate, in flight, usage, circuit, events) is providers/execution/attempts.py, the providers, pooled clients
    and background loop providers/execution/connections.py."""

    def __init__(
        self,
        engine: Engine,
        *,
        providers: Mapping[str, Any] | None = None,
        api_keys: Mapping[str, str] | None = None,
        transport: Any = None,
        async_transport: Any = None,
        limits: Any = None,
        sleep: Callable[[float], Awaitable[Any]] | None = None,
        wall: Callable[[], float] = time.time,
        budgets: BudgetBook | None = None,
        max_response_bytes: int | None = None,
    ):
        """`budgets` is the engine's budget book (Engine.executor hands it over): reservations go against the
        same keys decide() reads `budget.left` from. Without it, a book on the engine's state and `wall`.
        `max_response_bytes` caps every answer of this engine's providers whose catalog entry sets none (default:
        the process default, 32 MiB). Every key in `api_keys` is redacted from error text and logs at once."""
        self.engine = engine
        self.state = cast(ExecutionStore, engine.state)
        self.events = EventBus()
        self.budgets = Budgets.of(budgets) if budgets is not None else Budgets(self.state, wall)
        self.estimated = EstimatedSpend()  # calls settled from estimates (no usage reported), per model
        self.tally = HealthTally()  # recent outcomes and mean latency per model (providers/execution/health.py)
        self.events.subscribe(self.tally.observe)
        self.health = HealthMonitor(self)  # the background checks of `set health.interval`
        self.experiments = ExperimentTally()  # requests, errors, latency, cost per experiment and variant
        self.spending = SpendTally()  # requests, errors, cost per gateway key and per user
        self.cache = cache_for(self.state)  # the response cache (providers/execution/cache.py)
        self.middleware = Middlewares()  # engine.use(): run around every request (providers/execution/middleware.py)
        self._watched: dict[int, list[Completion]] = {}
        self._providers = dict(providers or {})
        self._keys = dict(api_keys or {})
        for secret in self._keys.values():
            register_secret(secret)
        self._max_response_bytes = max_response_bytes
        self._transport, self._async_transport, self._limits = transport, async_transport, limits
        self.sleep = sleep or asyncio.sleep
        self._clients: weakref.WeakKeyDictionary[Any, dict[str, ProviderClient]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._bg: _LoopThread | None = None

    def __repr__(self) -> str:
        return f"Executor(providers={sorted(self._providers)}, api_keys={sorted(self._keys)} (values hidden))"

    # ---- preparing a request ------------------------------------------------------------------------
    def prepare(
        self,
        prompt: str | None,
        messages: list[Any] | None,
        schema: Any,
        options: Mapping[str, Any],
        attrs: dict[str, Any],
        *,
        decide: Callable[[dict[str, Any]], Decision] | None = None,
    ) -> Run:
        """Decide, build the ChatRequest, and hold budget (providers/execution/prepare.py). Raises before any
        call: UnsendableRequest (a ValueError: part of the request cannot be serialised), NoRouteError,
        BudgetExceeded (UnknownPrice: a model without a known price under a budget), ValueError for a
        `deadline` that is not a number of seconds > 0.

        `decide`, when given, makes the Decision instead of `engine.decide()`: it gets the request attributes
        completed from the options (`tools`, `max_tokens` from the body, `tokens` counted from what is sent); the
        gateway uses it to pin a model the request names. `options["deadline"]` (seconds) shortens the policy's
        `set deadline`. `options["budgeted"]` says a budget outside the policy applies (a gateway key's): an
        output bound is sent and `run.max_cost` is computed, as under the policy's own budgets."""
        run = preparing.prepare(self, prompt, messages, schema, options, attrs, decide)
        self.experiments.start(id(run), run.decision)
        tracing.start(run)  # a span from the decision to the settlement, when tracing is on
        self.spending.start(id(run), run.decision)
        self.cache.begin(run, options, attrs)  # cacheable by the policy: its key
        return run

    def estimate(self, decision: Decision) -> float:
        """The most a request may cost judged from its decision (`tokens`, and `max_tokens` else `output_tokens`),
        over every model its plan may call: the dearest model of the plan, or for a group every member (and the
        judge) plus the dearest of the plan's other models. A prepared Run's `max_cost` is the bound from what is
        actually sent."""
        return preparing.estimate(self, decision)

    def settle(self, run: Run) -> None:
        """Replace the request's hold by what it spent (once; later calls do nothing). The request has ended: it
        is counted for its experiment, if any."""
        self.cache.end(run)
        self.experiments.finish(id(run), run.cost)
        tracing.finish(run)
        self.spending.finish(id(run), run.cost, run.estimated_cost)
        if run.reservation is None:
            return
        warn = float(setting(run.policy.settings, "budget.warn"))
        for spec, spent, limit in self.budgets.settle(run.reservation, run.cost, warn):
            self.events.emit(
                "budget_warning",
                f"{label(spec)}: ${spent:.4f} spent of ${limit:.2f} ({spent / limit:.0%}, warning at {warn:.0%})",
                data={"budget": label(spec), "spent": spent, "limit": limit},
            )

    # ---- one model ----------------------------------------------------------------------------------
    async def try_model(
        self,
        run: Run,
        name: str,
        *,
        chat: ChatRequest | None = None,
        retries: bool = True,
        validate_schema: bool = True,
        send: Send | None = None,
    ) -> Result | None:
        """Call one model, retrying transient errors; None when it failed or was skipped (all recorded), or when
        the request's deadline left no time to start. Each try is bounded from connect to last byte. `send` makes
        one try's call itself (`send(client, entry, timeout)`; POST /v1/embeddings), instead of a chat call with
        `chat` or the run's request."""
        if out_of_time(run):
            return None
        entry = self.gate(run, name)
        if entry is None:
            return None
        try:
            return await self._tries(run, entry, chat, retries, validate_schema, send)
        finally:
            self.release_probe(run, entry)

    async def _tries(
        self,
        run: Run,
        entry: Entry,
        chat: ChatRequest | None,
        retries: bool,
        validate_schema: bool,
        send: Send | None,
    ) -> Result | None:
        client = self.client(run.policy, entry.provider)
        timeout = attempt_timeout(run, self.provider_spec(run.policy, entry.provider))
        retry = 0
        while True:
            flight = self.started(run, entry, retry)
            counted = False
            try:
                if send is not None:
                    call = send(client, entry, timeout)
                else:
                    call = client.achat(entry.spec, chat or run.chat, timeout=timeout)
                response = await call_within(run, entry, call, timeout)
                counted = True
                schema = run.schema if validate_schema else None
                return self.succeeded(run, entry, response, flight, retry, schema, chat)
            except ProviderError as error:
                wait = self.failed(run, entry, error, flight, retry, counted=counted, may_retry=retries)
            except asyncio.CancelledError:
                if not counted:
                    self.cancelled(run, entry, flight, retry)
                raise
            finally:  # whatever raised where (a bug, a store, a callback): the try is no longer in flight
                flight.release()
            if wait is None:
                return None
            await self.sleep(wait)
            if out_of_time(run):
                return None
            retry += 1

    # ---- a whole request ----------------------------------------------------------------------------
    async def run(self, run: Run) -> Completion:
        """Execute a prepared request by its decision's strategy; settles the budget; raises RoutingError (with
        `deadline_passed` when the request's deadline passed first)."""
        try:
            hit = self.cached(run)  # a cached answer: no attempt, nothing spent
            if hit is not None:
                return hit
            if run.decision.strategy != "single":
                return await self.run_group_or_chain(run)
            done = await self._chain(run, run.decision.chain)
            if done is None:
                raise routing_error(run)
            return done
        finally:
            self.settle(run)

    async def _chain(self, run: Run, names: list[str]) -> Completion | None:
        previous = None
        for name in names:
            if out_of_time(run):  # the request's deadline passed: no further model starts
                return None
            if previous is not None or run.attempts:
                self.events.emit(
                    "fallback",
                    f"falling back to {name}" + (f" after {previous}" if previous else ""),
                    model=name,
                    data={"from": previous},
                )
            result = await self.try_model(run, name)
            if result is not None:
                return self.completion(run, result)
            previous = name
        return None

    def completion(
        self,
        run: Run,
        result: Result,
        *,
        agreement: float | None = None,
        answers: dict[str, str] | None = None,
        judge: Verdict | None = None,
    ) -> Completion:
        done = Completion(
            result.response.text,
            result.parsed,
            run.usage,
            run.cost,
            result.model,
            result.provider,
            run.decision,
            list(run.attempts),
            run.decision.strategy,
            result.response,
            agreement,
            answers or {},
            judge,
            run.estimated_cost,
        )
        self.experiments.answered(id(run))
        tracing.answered(run, done)
        self.spending.answered(id(run))
        self.cache.store(run, done)
        sink = self._watched.get(id(run)) if self._watched else None
        if sink is not None:
            sink.append(done)
        return done

    def cached(self, run: Run) -> Completion | None:
        """The response cache's answer to `run` (providers/execution/cache.py), counted as its answer; None on a
        miss or when the request is not cached. The caller settles the run (releasing its hold: nothing spent)."""
        hit = self.cache.lookup(run)
        if hit is not None:
            self.experiments.answered(id(run))
            tracing.answered(run, hit)
            self.spending.answered(id(run))
        return hit

    def watch(self, run: Run) -> list[Completion]:
        """A list that receives the Completion of `run` when it is made (the gateway's streams: middleware sees the
        assembled answer at the end); call unwatch(run) when done."""
        return self._watched.setdefault(id(run), [])

    def unwatch(self, run: Run) -> None:
        self._watched.pop(id(run), None)

    def circuit_changed(self, change: str | None, entry: Entry) -> None:
        """Announce a circuit that a recorded call opened or closed (circuit_opened / circuit_closed events)."""
        self._circuit(change, entry)

    async def run_group_or_chain(self, run: Run) -> Completion:
        """The group, then the plan's other models, as one Completion (a streamed group answers as a whole)."""
        from providers.execution import strategies

        done = await strategies.run_group(self, run)
        if done is None:
            done = await self._chain(run, after_group(run.decision))
        if done is None:
            raise routing_error(run)
        return done


def after_group(decision: Decision) -> list[str]:
    """What a race / consensus / best_of tries once its group has not answered: the plan's models that are not
    group members (its fallbacks, and a half-open probe that is not a member), in plan order."""
    group = set(decision.group)
    return [step.model for step in decision.plan if step.model not in group]
