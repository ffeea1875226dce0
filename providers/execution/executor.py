"""Execution: an Engine plus a prompt (or messages) and request attributes in, a `Completion` (or a stream of
events) out, produced by calling the decided models over HTTP with retries, fallbacks, circuit breaking,
budgets and the policy's strategy.

One async core does the work; the sync API (`complete`, `stream`) runs it on a private background event loop,
so sync and async callers share one behaviour. Async clients are kept per event loop (an httpx AsyncClient
belongs to the loop that created it) and per provider, and reused (connection pooling). Attempts follow the
decision's failover plan: `decision.chain` (the plan's models) for single-model rules; for race / consensus /
best_of the group (providers/execution/strategies.py), then the plan's other models. Every attempt and the
whole request are bounded in time (providers/execution/deadlines.py). Streaming (`CompletionStream`,
`AsyncCompletionStream`, re-exported here) lives in providers/execution/streaming.py; `Run`, `Completion` and
`Result` in providers/execution/outcome.py.
See docs/execution.md.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Literal, cast

from engine.runtime.settings import setting
from engine.runtime.state import PROBE, CircuitConfig, Claim, ExecutionStore
from providers.clients import ProviderClient, client_for
from providers.errors import ContentFiltered, ProviderError
from providers.execution.budget import Budgets, label
from providers.execution.deadlines import (
    attempt_timeout,
    call_within,
    caller_deadline,
    fits,
    out_of_time,
    request_deadline,
    routing_error,
)
from providers.execution.events import EventBus
from providers.execution.judging import JUDGE_MAX_TOKENS
from providers.execution.outcome import Completion, Result, Run, Verdict, to_messages, validate
from providers.execution.resilience import (
    Attempt,
    InvalidOutput,
    RetryPolicy,
    circuit_outcome,
    failed,
)
from providers.execution.streaming import AsyncCompletionStream, CompletionStream
from providers.types import (
    ChatRequest,
    ChatResponse,
    Message,
    ResponseFormat,
)

if TYPE_CHECKING:
    from engine import BudgetBook, Decision, Engine
    from engine.runtime.policy import CompiledPolicy, Entry

__all__ = [
    "AsyncCompletionStream",
    "Completion",
    "CompletionStream",
    "Executor",
    "Result",
    "Run",
    "to_messages",
    "validate",
]


def _hms(epoch: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch)) if epoch else "?"


class _LoopThread:
    """A private event loop on a daemon thread: the sync API runs the async core here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="modelroute-execute", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if threading.current_thread() is self.thread:
            raise RuntimeError("the sync API cannot be called from an event callback; use the async API")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()


class Executor:
    """Executes requests for one Engine (created by Engine on first use; see engine/api.py)."""

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
    ):
        """`budgets` is the engine's budget book (Engine.executor hands it over): reservations go against the
        same keys decide() reads `budget.left` from. Without it, a book on the engine's state and `wall`."""
        self.engine = engine
        self.state = cast(ExecutionStore, engine.state)
        self.events = EventBus()
        self.budgets = Budgets.of(budgets) if budgets is not None else Budgets(self.state, wall)
        self._providers = dict(providers or {})
        self._keys = dict(api_keys or {})
        self._transport, self._async_transport, self._limits = transport, async_transport, limits
        self.sleep = sleep or asyncio.sleep
        self._clients: weakref.WeakKeyDictionary[Any, dict[str, ProviderClient]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._bg: _LoopThread | None = None

    def __repr__(self) -> str:
        return f"Executor(providers={sorted(self._providers)}, api_keys={sorted(self._keys)} (values hidden))"

    # ---- providers and clients ----------------------------------------------------------------------
    def provider_spec(self, policy: CompiledPolicy, provider: str) -> Any:
        spec = self._providers.get(provider)
        return spec if spec is not None else policy.catalog.provider_spec(provider)

    def unconfigured(self, policy: CompiledPolicy, provider: str) -> str | None:
        """Why `provider` cannot be called (no API key / no settings), or None."""
        spec = self.provider_spec(policy, provider)
        if provider in self._keys:
            return None
        if spec.api_key_env:
            return (
                None
                if os.environ.get(spec.api_key_env)
                else (f"no API key: environment variable {spec.api_key_env} is not set")
            )
        if not spec.base_url:
            return f"provider {provider} is not configured (no base_url or api_key_env under `providers:`)"
        return None

    def client(self, policy: CompiledPolicy, provider: str) -> ProviderClient:
        """The pooled client for `provider` on the running event loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            clients = self._clients.setdefault(loop, {})
            c = clients.get(provider)
            if c is None:
                spec = self.provider_spec(policy, provider)
                c = clients[provider] = client_for(
                    spec,
                    api_key=self._keys.get(provider),
                    transport=self._transport,
                    async_transport=self._async_transport,
                    limits=self._limits,
                )
            return c

    def _background(self) -> _LoopThread:
        with self._lock:
            if self._bg is None:
                self._bg = _LoopThread()
                loop = self._bg.loop  # stop the thread when this executor is garbage-collected unclosed
                weakref.finalize(self, lambda: loop.is_closed() or loop.call_soon_threadsafe(loop.stop))
            return self._bg

    def run_sync(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self._background().run(coro)

    async def aclose(self) -> None:
        """Close the clients of the running event loop."""
        with self._lock:
            clients = self._clients.pop(asyncio.get_running_loop(), {})
        for c in clients.values():
            await c.aclose()

    def close(self) -> None:
        bg = self._bg
        if bg is not None:
            bg.run(self.aclose())
            bg.stop()
            self._bg = None

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
        """Decide, build the ChatRequest, and reserve budget (raises NoRouteError / BudgetExceeded).

        `decide`, when given, makes the Decision instead of `engine.decide()`: it gets the request attributes
        completed from the options (`tools`, `max_tokens`); the gateway uses it to pin a model the request names.
        `options["deadline"]` (seconds) shortens the policy's `set deadline`; ValueError, before anything else,
        when it is not a number of seconds > 0."""
        started = time.monotonic()
        caller = caller_deadline(options)
        tools = options.get("tools")
        if tools:
            attrs.setdefault("tools", True)
        if options.get("max_tokens") is not None:
            attrs.setdefault("max_tokens", options["max_tokens"])
        if decide is not None:
            decision = decide(attrs)
        else:
            plain = None
            if messages is not None:
                plain = [{"role": m.role, "content": m.text()} if isinstance(m, Message) else m for m in messages]
            decision = self.engine.decide(prompt, messages=plain, **attrs)
        policy = decision.policy
        settings = policy.settings
        req = decision.request
        max_tokens = options.get("max_tokens")
        if policy.budgets and max_tokens is None:  # bound the real cost by what will be reserved
            max_tokens = int(req.out_tokens)
        fmt = None
        if schema is not None:
            fmt = ResponseFormat(
                type="json_schema", json_schema=schema.model_json_schema(), name=schema.__name__, strict=False
            )
        chat = ChatRequest(
            messages=to_messages(prompt, messages),
            system=options.get("system"),
            temperature=options.get("temperature"),
            max_tokens=max_tokens,
            tools=tools if isinstance(tools, list) else [],
            tool_choice=options.get("tool_choice"),
            response_format=fmt,
            stop=options.get("stop") or [],
            extra=options.get("extra") or {},
        )
        timeout, deadline_s = options.get("timeout"), request_deadline(settings, caller)
        reservation = None
        if policy.budgets:  # last: nothing after this may fail and leave the money held
            reservation = self.budgets.reserve(policy.budgets, req.attrs, self.estimate(decision))
        return Run(
            decision,
            chat,
            schema,
            timeout,
            CircuitConfig.from_settings(settings),
            RetryPolicy.from_settings(settings),
            reservation,
            deadline=None if deadline_s is None else started + deadline_s,
            deadline_s=deadline_s,
        )

    def estimate(self, decision: Decision) -> float:
        """The most this request may cost, over every model its plan may call: the dearest model of the plan, or
        for a group every member (and the judge) plus the dearest of the plan's other models."""
        req, models = decision.request, decision.policy.models
        cost = {name: models[name].cost(req.tokens, req.out_tokens) for name in decision.chain if name in models}
        if decision.strategy == "single":
            return max(cost.values(), default=0.0)
        total = sum(models[m].cost(req.tokens, req.out_tokens) for m in decision.group)
        if decision.judge:
            prompt = req.tokens + len(decision.group) * req.out_tokens  # the question and every answer
            total += models[decision.judge].cost(prompt, JUDGE_MAX_TOKENS)
        return total + max((cost[m] for m in after_group(decision) if m in cost), default=0.0)

    def settle(self, run: Run) -> None:
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
    def gate(self, run: Run, name: str) -> Entry | None:
        """The model's Entry if it may be tried now; else records a skipped Attempt and returns None."""
        entry = run.policy.models[name]
        provider = entry.provider
        why, error = run.skips.reason(provider, entry.context), "Skipped"
        if why is None and (why := self.unconfigured(run.policy, provider)) is not None:
            error = "ProviderUnavailable"
        if why is None and run.decision.probe == name:  # every circuit of the plan is open: probe this one
            if not self._claim(run, name, self.state.probe(name)):
                why, error = f"a half-open probe of {name} is already running", "CircuitOpen"
        elif why is None and not self._claim(run, name, self.state.allow(name)):
            info = self.state.circuit(name)
            why, error = f"circuit open until {_hms(info.until)}", "CircuitOpen"
        if why is not None:
            run.attempts.append(Attempt(name, provider, "skipped", error, message=why))
            self.events.emit("attempt_failed", f"{name} skipped: {why}", model=name, provider=provider, error=error)
            return None
        return entry

    @staticmethod
    def _claim(run: Run, name: str, claim: Claim) -> bool:
        """Whether the gate let the call through; notes a claimed half-open probe (only its outcome counts)."""
        if claim == PROBE:
            run.probing.add(name)
        return bool(claim)

    @staticmethod
    def _probe(run: Run, name: str) -> bool:
        """Whether this call held `name`'s half-open probe (its recorded outcome ends the probe)."""
        if name in run.probing:
            run.probing.discard(name)
            return True
        return False

    def started(self, run: Run, entry: Entry, retry: int) -> float:
        self.state.add_in_flight(entry.name, 1)
        self.events.emit(
            "attempt_started",
            f"{entry.name} ({entry.provider}) try {retry + 1}",
            model=entry.name,
            provider=entry.provider,
            data={"retry": retry},
        )
        return time.perf_counter()

    def succeeded(
        self, run: Run, entry: Entry, response: ChatResponse, t0: float, retry: int, schema: Any = None
    ) -> Result:
        """Account a successful HTTP answer; validates against the schema (raises InvalidOutput)."""
        latency = time.perf_counter() - t0
        state, used, cost = self.state, response.usage, response.cost or 0.0
        state.add_in_flight(entry.name, -1)
        self._spend(run, response)
        parsed = None
        outcome: Literal["ok", "neutral"] = "neutral"  # an invalid answer is the request's problem, not the model's
        try:
            if schema is not None:
                parsed = validate(schema, response.text)
            outcome = "ok"
        except InvalidOutput as error:
            error.provider, error.model = entry.provider, entry.name
            raise
        finally:
            change = state.record(
                entry.name,
                entry.provider,
                outcome,
                run.cfg,
                latency_ms=latency * 1000 if outcome == "ok" else None,
                input_tokens=used.input_tokens,
                output_tokens=used.output_tokens,
                cost=cost,
                probe=self._probe(run, entry.name),
            )
        self._circuit(change, entry)
        run.attempts.append(Attempt(entry.name, entry.provider, "ok", latency_s=latency, retry=retry))
        self.events.emit(
            "attempt_succeeded",
            f"{entry.name} answered in {latency * 1000:.0f}ms",
            model=entry.name,
            provider=entry.provider,
            data={"latency_s": latency, "cost": response.cost},
        )
        return Result(entry.name, entry.provider, response, parsed)

    def _spend(self, run: Run, response: ChatResponse | None) -> None:
        if response is not None:
            run.cost += response.cost or 0.0
            run.input_tokens += response.usage.input_tokens
            run.output_tokens += response.usage.output_tokens

    def failed(
        self,
        run: Run,
        entry: Entry,
        error: ProviderError,
        t0: float,
        retry: int,
        *,
        counted: bool = False,
        may_retry: bool = True,
    ) -> float | None:
        """Account a failure; returns the seconds to wait before retrying the same model, or None (also when
        the wait would leave no time before the request's deadline: the next model is tried at once)."""
        latency = time.perf_counter() - t0
        state = self.state
        if not counted:  # InvalidOutput was already recorded (and its in-flight released) by succeeded()
            state.add_in_flight(entry.name, -1)
            if isinstance(error, ContentFiltered):
                self._spend(run, error.response)
            outcome, probe = circuit_outcome(error), self._probe(run, entry.name)
            self._circuit(
                state.record(entry.name, entry.provider, outcome, run.cfg, latency_ms=latency * 1000, probe=probe),
                entry,
            )
        wait = None
        if may_retry and run.retry.should_retry(error, retry):
            delay = run.retry.delay(error, retry)
            if fits(run, delay) and self._claim(run, entry.name, state.allow(entry.name)):
                wait = delay
        attempt = failed(entry.name, entry.provider, error, latency, retry)
        if wait is not None:
            attempt = Attempt(**{**vars(attempt), "wait_s": wait})
        run.attempts.append(attempt)
        run.skips.note(error, entry.provider, entry.name, entry.context)
        kind = "retry" if wait is not None else "attempt_failed"
        then = f"; retrying in {wait:.2f}s" if wait is not None else ""
        self.events.emit(
            kind,
            f"{entry.name} failed: {type(error).__name__} {error.message}{then}",
            model=entry.name,
            provider=entry.provider,
            error=type(error).__name__,
            data={"status": error.status, "latency_s": latency, "wait_s": wait},
        )
        return wait

    def cancelled(self, run: Run, entry: Entry, t0: float, retry: int) -> None:
        self.state.add_in_flight(entry.name, -1)
        self.state.record(entry.name, entry.provider, "cancelled", run.cfg, probe=self._probe(run, entry.name))
        run.attempts.append(
            Attempt(
                entry.name,
                entry.provider,
                "cancelled",
                latency_s=time.perf_counter() - t0,
                retry=retry,
                message="another answer won",
            )
        )

    def _circuit(self, change: str | None, entry: Entry) -> None:
        if change == "opened":
            info = self.state.circuit(entry.name)
            self.events.emit(
                "circuit_opened",
                f"circuit of {entry.name} opened until {_hms(info.until)}",
                model=entry.name,
                provider=entry.provider,
                data={"until": info.until},
            )
        elif change == "closed":
            self.events.emit(
                "circuit_closed",
                f"circuit of {entry.name} closed (probe succeeded)",
                model=entry.name,
                provider=entry.provider,
            )

    async def try_model(
        self,
        run: Run,
        name: str,
        *,
        chat: ChatRequest | None = None,
        retries: bool = True,
        validate_schema: bool = True,
    ) -> Result | None:
        """Call one model, retrying transient errors; None when it failed or was skipped (all recorded), or when
        the request's deadline left no time to start. Each try is bounded from connect to last byte."""
        if out_of_time(run):
            return None
        entry = self.gate(run, name)
        if entry is None:
            return None
        try:
            return await self._tries(run, entry, chat, retries, validate_schema)
        finally:
            self.release_probe(run, entry)

    def release_probe(self, run: Run, entry: Entry) -> None:
        """A half-open probe this request claimed but never recorded (a deadline or a cancellation between
        tries, a bug) is released, so the next request can probe: it must never stay claimed."""
        if entry.name in run.probing:
            self.state.record(entry.name, entry.provider, "cancelled", run.cfg, probe=self._probe(run, entry.name))

    async def _tries(
        self, run: Run, entry: Entry, chat: ChatRequest | None, retries: bool, validate_schema: bool
    ) -> Result | None:
        client = self.client(run.policy, entry.provider)
        timeout = attempt_timeout(run, self.provider_spec(run.policy, entry.provider))
        retry = 0
        while True:
            t0 = self.started(run, entry, retry)
            counted = False
            try:
                call = client.achat(entry.spec, chat or run.chat, timeout=timeout)
                response = await call_within(run, entry, call, timeout)
                counted = True
                return self.succeeded(run, entry, response, t0, retry, run.schema if validate_schema else None)
            except ProviderError as error:
                wait = self.failed(run, entry, error, t0, retry, counted=counted, may_retry=retries)
            except asyncio.CancelledError:
                if not counted:
                    self.cancelled(run, entry, t0, retry)
                raise
            except Exception:  # a bug, not a provider failure: release the in-flight slot and surface it
                if not counted:
                    self.state.add_in_flight(entry.name, -1)
                raise
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
        return Completion(
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
        )

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
