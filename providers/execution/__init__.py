"""Execution: an Engine's Decision and the request in, provider calls with retries, failover, budget holds and
events, middleware and health checks out; the package exports what the engine and the gateway use."""

from providers.execution import calls
from providers.execution.budget import BudgetExceeded, Budgets, Reservation
from providers.execution.events import Event, EventBus, usage_summary
from providers.execution.executor import Executor
from providers.execution.health import ProbeResult, health_summary, probe_all
from providers.execution.middleware import MiddlewareRequest, Middlewares, answer
from providers.execution.outcome import Completion, Result, Run, Verdict
from providers.execution.resilience import Attempt, InvalidOutput, RoutingError, StreamInterrupted
from providers.execution.strategies import NoConsensus
from providers.execution.streaming import AsyncCompletionStream, CompletionStream

__all__ = [
    "AsyncCompletionStream",
    "Attempt",
    "BudgetExceeded",
    "Budgets",
    "Completion",
    "CompletionStream",
    "Event",
    "EventBus",
    "Executor",
    "InvalidOutput",
    "MiddlewareRequest",
    "Middlewares",
    "NoConsensus",
    "ProbeResult",
    "Reservation",
    "Result",
    "RoutingError",
    "Run",
    "StreamInterrupted",
    "Verdict",
    "answer",
    "calls",
    "health_summary",
    "probe_all",
    "usage_summary",
]
