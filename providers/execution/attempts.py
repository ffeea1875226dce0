"""One try's accounting: a Run, the model's catalog Entry and what its call gave (an answer, a provider error, a
cancellation) in; the try's in-flight count (a `Flight`, released exactly once whatever raises), its recorded
outcome (circuit, latency, tokens, cost), the request's spend (usage estimated when the upstream reported none,
providers/execution/metering.py), its Attempt record and its events out. `Accounting` is the part of the Executor
that does it; the gate that skips a model (no key, open circuit, half-open probe taken) is here too.

A request for `n` answers on a provider without `n` (FANOUT_KINDS) is n upstream calls in one try: each call is
recorded as an Attempt (an answer: n "ok"; a failure: the failed call, then the n - 1 others as "cancelled"), so
`x-modelroute-attempts` and `modelroute_attempts_total` count every call. One failed call fails the whole try (the
client cancels the others); the plan then retries or falls back as for any failed try, asking for all n again.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

from engine.runtime.settings import setting
from engine.runtime.state import PROBE, Claim, ExecutionStore
from providers.clients.params import FANOUT_KINDS, choices
from providers.errors import ContentFiltered, ProviderError
from providers.execution import tracing
from providers.execution.deadlines import fits
from providers.execution.events import EventBus
from providers.execution.metering import EstimatedSpend, meter
from providers.execution.outcome import Result, Run, validate
from providers.execution.resilience import Attempt, InvalidOutput, circuit_outcome, failed
from providers.types import ChatRequest, ChatResponse

if TYPE_CHECKING:
    from engine import Engine
    from engine.runtime.policy import CompiledPolicy, Entry

__all__ = ["Accounting", "Flight"]


def _hms(epoch: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch)) if epoch else "?"


class Flight:
    """One try's in-flight count: taken when the try starts (`Executor.started`), given back exactly once by
    `release()`, which every path calls (the try's `finally` included), so no failure anywhere leaks it."""

    __slots__ = ("held", "model", "state", "t0")

    def __init__(self, state: ExecutionStore, model: str) -> None:
        self.state, self.model = state, model
        state.add_in_flight(model, 1)
        self.held = True
        self.t0 = time.perf_counter()

    def release(self) -> None:
        if self.held:
            self.held = False
            self.state.add_in_flight(self.model, -1)


class Accounting:
    """The Executor's accounting of tries (a mixin: the Executor provides the state store, the event bus, the
    engine, the estimated-spend tally and the provider settings)."""

    engine: Engine
    state: ExecutionStore
    events: EventBus
    estimated: EstimatedSpend

    def provider_spec(self, policy: CompiledPolicy, provider: str) -> Any:
        raise NotImplementedError

    def unconfigured(self, policy: CompiledPolicy, provider: str) -> str | None:
        raise NotImplementedError

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
            tracing.attempt_skipped(run, entry, error, why)
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

    def started(self, run: Run, entry: Entry, retry: int) -> Flight:
        """Count a try in flight (its Flight gives the count back) and announce it."""
        flight = Flight(self.state, entry.name)
        try:
            self.events.emit(
                "attempt_started",
                f"{entry.name} ({entry.provider}) try {retry + 1}",
                model=entry.name,
                provider=entry.provider,
                data={"retry": retry},
            )
        except BaseException:  # a callback raised past the bus (not an Exception): nothing stays counted
            flight.release()
            raise
        tracing.attempt_started(run, entry, retry, flight)
        return flight

    def metered(self, run: Run, entry: Entry, response: ChatResponse, chat: ChatRequest | None) -> ChatResponse:
        """The response with its usage and cost: as reported, or estimated when the upstream omitted them
        (providers/execution/metering.py); estimated spend is tallied and announced (`usage_estimated`)."""

        def sent() -> int:
            kind = self._kind(run, entry)
            if chat is not None and chat is not run.chat:  # a call of its own (the best_of judge)
                return self.engine.count_tokens(messages=chat.messages, system=chat.system).for_kind(kind)
            return run.bound.tokens(kind) if run.bound is not None else 0

        unknown = setting(run.policy.settings, "budget.unknown_price_hold")
        response, estimated = meter(response, entry, sent, self.engine.token_estimator, unknown)
        if estimated:
            cost = response.cost or 0.0
            run.estimated_cost += cost
            run.estimated_calls += 1
            self.estimated.add(entry.name, entry.provider, cost)
            used = response.usage
            self.events.emit(
                "usage_estimated",
                f"{entry.name} reported no usage: settled at an estimate of {used.input_tokens}/"
                f"{used.output_tokens} tokens, ${cost:.6f}",
                model=entry.name,
                provider=entry.provider,
                data={"input_tokens": used.input_tokens, "output_tokens": used.output_tokens, "cost": cost},
            )
        return response

    def _kind(self, run: Run, entry: Entry) -> str | None:
        return getattr(self.provider_spec(run.policy, entry.provider), "kind", None)

    def _fanned(self, run: Run, entry: Entry, chat: ChatRequest | None) -> int:
        """The upstream calls one try of `entry` makes: `n` on a provider without it, else 1."""
        return choices((chat or run.chat).params) if self._kind(run, entry) in FANOUT_KINDS else 1

    def succeeded(
        self,
        run: Run,
        entry: Entry,
        response: ChatResponse,
        flight: Flight,
        retry: int,
        schema: Any = None,
        chat: ChatRequest | None = None,
    ) -> Result:
        """Account a successful HTTP answer (its usage estimated when the upstream gave none); validates against
        the schema (raises InvalidOutput). `chat` is what was sent when it is not the run's own request."""
        latency = time.perf_counter() - flight.t0
        flight.release()
        state = self.state
        response = self.metered(run, entry, response, chat)
        used, cost = response.usage, response.cost or 0.0
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
        n = self._fanned(run, entry, chat)
        run.attempts += [
            Attempt(entry.name, entry.provider, "ok", latency_s=latency, retry=retry, message=f"call {i} of n = {n}")
            for i in range(2, n + 1)
        ]
        self.events.emit(
            "attempt_succeeded",
            f"{entry.name} answered in {latency * 1000:.0f}ms",
            model=entry.name,
            provider=entry.provider,
            data={"latency_s": latency, "cost": response.cost, "estimated": used.estimated},
        )
        tracing.attempt_ended(run, flight, response=response)
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
        flight: Flight,
        retry: int,
        *,
        counted: bool = False,
        may_retry: bool = True,
    ) -> float | None:
        """Account a failure; returns the seconds to wait before retrying the same model, or None (also when
        the wait would leave no time before the request's deadline: the next model is tried at once)."""
        latency = time.perf_counter() - flight.t0
        flight.release()
        state = self.state
        if not counted:  # InvalidOutput was already recorded (and its spend counted) by succeeded()
            if isinstance(error, ContentFiltered) and error.response is not None:
                self._spend(run, self.metered(run, entry, error.response, None))
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
        tracing.attempt_ended(run, flight, error=error, wait=wait)
        attempt = failed(entry.name, entry.provider, error, latency, retry)
        if wait is not None:
            attempt = Attempt(**{**vars(attempt), "wait_s": wait})
        run.attempts.append(attempt)
        n = self._fanned(run, entry, None)
        run.attempts += [
            Attempt(
                entry.name, entry.provider, "cancelled", retry=retry, message=f"another of the n = {n} calls failed"
            )
            for _ in range(n - 1)
        ]
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

    def cut_short(self, run: Run, entry: Entry, flight: Flight, retry: int, delivered: str) -> None:
        """A stream its consumer closed before its end (a caller, or a gateway client that hung up): recorded like
        a cancelled try, and charged at an estimate of what the upstream bills for it, the whole input and the
        output delivered so far (`delivered`), so streams closed early are not free."""
        self.cancelled(run, entry, flight, retry, "the stream was closed before its end")
        partial = ChatResponse(text=delivered, provider=entry.provider, model=entry.name)
        self._spend(run, self.metered(run, entry, partial, None))

    def cancelled(
        self, run: Run, entry: Entry, flight: Flight, retry: int, message: str = "another answer won"
    ) -> None:
        flight.release()
        tracing.attempt_ended(run, flight)
        self.state.record(entry.name, entry.provider, "cancelled", run.cfg, probe=self._probe(run, entry.name))
        run.attempts.append(
            Attempt(
                entry.name,
                entry.provider,
                "cancelled",
                latency_s=time.perf_counter() - flight.t0,
                retry=retry,
                message=message,
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

    def release_probe(self, run: Run, entry: Entry) -> None:
        """A half-open probe this request claimed but never recorded (a deadline or a cancellation between
        tries, a bug) is released, so the next request can probe: it must never stay claimed."""
        if entry.name in run.probing:
            self.state.record(entry.name, entry.provider, "cancelled", run.cfg, probe=self._probe(run, entry.name))
