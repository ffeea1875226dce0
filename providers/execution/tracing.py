"""Tracing (OpenTelemetry): a gateway request's ASGI scope, a prepared Run and each try of a model in; spans
following the GenAI semantic conventions out (a request span, "{operation} {model}", with one child span per try),
exported by whatever TracerProvider the process has (`modelroute serve` makes one from the OTEL_* variables).

The one module that knows OpenTelemetry, and it imports none of it at import time: tracing is on when the
application imported `opentelemetry.trace` and installed a real TracerProvider (the Python API makes none of its
own); otherwise each hook returns after one dictionary or context-variable look-up. See docs/observability.md.
"""

from __future__ import annotations

import sys
import time
import weakref
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.runtime.policy import Entry
    from providers.errors import ProviderError
    from providers.execution.outcome import Completion, Run
    from providers.types import ChatResponse

__all__ = [
    "OPERATIONS",
    "PROVIDER_NAMES",
    "UNTRACED_PATHS",
    "answered",
    "attempt_ended",
    "attempt_skipped",
    "attempt_started",
    "finish",
    "gateway_request",
    "provider_name",
    "start",
    "traced",
    "tracer",
]

#: gen_ai.provider.name of the providers the conventions name; any other provider is reported by its catalog name.
PROVIDER_NAMES = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "vertex": "gcp.vertex_ai",
    "azure": "azure.ai.openai",
    "bedrock": "aws.bedrock",
    "mistral": "mistral_ai",
    "groq": "groq",
    "deepseek": "deepseek",
    "xai": "x_ai",
    "cohere": "cohere",
    "perplexity": "perplexity",
}
#: gen_ai.operation.name of the gateway endpoints that are not "chat" (chat, messages and responses are).
OPERATIONS = {"completions": "text_completion", "embeddings": "embeddings"}
UNTRACED_PATHS = ("/healthz", "/metrics")  # probes and scrapes: a span every few seconds that says nothing
CANCELLED = ("CancelledError", "GeneratorExit")


def provider_name(provider: str) -> str:
    """gen_ai.provider.name of a catalog provider."""
    return PROVIDER_NAMES.get(provider, provider)


_cached: list[Any] = [None, None]  # [a TracerProvider, its modelroute Tracer]
_off_until = [0.0]  # no provider was installed at the last look: look again after this monotonic time
RECHECK_S = 1.0  # get_tracer_provider() reads os.environ while none is installed (about 1.5 us): once a second


def tracer(*, recheck: bool = False) -> Any | None:
    """The modelroute Tracer of the process's TracerProvider, or None when tracing is off: OpenTelemetry never
    imported by the application, or no provider installed (the API's proxy or no-op provider; a provider installed
    later is seen within RECHECK_S, or at once with `recheck`)."""
    api = sys.modules.get("opentelemetry.trace")
    if api is None:
        return None
    if not recheck and _cached[0] is None and time.monotonic() < _off_until[0]:
        return None
    provider = api.get_tracer_provider()
    if provider is _cached[0]:
        return _cached[1]
    if isinstance(provider, (api.ProxyTracerProvider, api.NoOpTracerProvider)):
        _cached[0] = _cached[1] = None
        _off_until[0] = time.monotonic() + RECHECK_S
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("modelroute")
    except PackageNotFoundError:  # pragma: no cover - run from a checkout without an install
        ours = None
    _cached[0], _cached[1] = provider, provider.get_tracer("modelroute", ours)
    return _cached[1]


class Traced:
    """A traced request: its span (the gateway's server span, or one of its own that `owned` says this module
    ends), its operation and requested model, the spans of its tries in flight (by Flight id) and its answer."""

    __slots__ = ("answer", "claimed", "failed", "model", "operation", "owned", "span", "tracer", "tries")

    def __init__(self, tracer: Any, span: Any, *, owned: bool, operation: str = "chat", model: str = "auto"):
        self.tracer, self.span, self.owned = tracer, span, owned
        self.operation, self.model = operation, model
        self.tries: dict[int, tuple[Any, str]] = {}  # a try's span and the model id it asked for
        self.answer: tuple[str, str] | None = None  # (model, provider)
        self.claimed = False  # a gateway request: its first Run is described on its own span
        self.failed = False


_RUNS: dict[int, Traced] = {}  # the traced Runs in progress, by id
_GATEWAY: ContextVar[Traced | None] = ContextVar("modelroute_gateway_request", default=None)


# ---- the gateway's server span ------------------------------------------------------------------------------
def traced(app: Any) -> Any:
    """The ASGI app `app` with a SERVER span around every HTTP request but /healthz and /metrics, continuing an
    incoming W3C `traceparent` (the process's propagators, OTEL_PROPAGATORS); passes straight through when off."""

    async def entry(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in UNTRACED_PATHS:
            await app(scope, receive, send)
            return
        t = tracer()
        if t is None:
            await app(scope, receive, send)
            return
        await _serve_traced(t, app, scope, receive, send)

    entry.state = getattr(app, "state", None)  # type: ignore[attr-defined]
    return entry


async def _serve_traced(t: Any, app: Any, scope: Any, receive: Any, send: Any) -> None:
    from opentelemetry import propagate, trace

    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
    method, path = str(scope.get("method", "GET")), str(scope.get("path", ""))
    attrs: dict[str, Any] = {"http.request.method": method, "url.path": path, "url.scheme": scope.get("scheme", "http")}
    client = scope.get("client")
    if client:
        attrs["client.address"] = client[0]
    if "user-agent" in headers:
        attrs["user_agent.original"] = headers["user-agent"]
    span = t.start_span(
        f"{method} {path}", context=propagate.extract(headers), kind=trace.SpanKind.SERVER, attributes=attrs
    )
    request = Traced(t, span, owned=False)
    status = 0

    async def sending(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        await send(message)

    token = _GATEWAY.set(request)
    try:
        with trace.use_span(span, record_exception=False, set_status_on_exception=False):
            await app(scope, receive, sending)
    except BaseException as exc:
        _failed(span, type(exc).__name__, None)
        request.failed = True
        raise
    finally:
        _GATEWAY.reset(token)
        if status:
            span.set_attribute("http.response.status_code", status)
        if status >= 500 and not request.failed:
            _failed(span, str(status), None)
        if status == 404:
            span.update_name(method)  # no route: the path would make a span name per URL tried
        span.end()


def gateway_request(endpoint: str, model: str) -> None:
    """The gateway request in progress (if traced) calls a model: its span becomes "{operation} {model}" for the
    `model` the client asked for, on `endpoint` (chat, messages, responses, completions, embeddings)."""
    request = _GATEWAY.get()
    if request is None:
        return
    request.operation, request.model = OPERATIONS.get(endpoint, "chat"), model
    span = request.span
    span.update_name(f"{request.operation} {model}")
    span.set_attributes(
        {"gen_ai.operation.name": request.operation, "gen_ai.request.model": model, "modelroute.endpoint": endpoint}
    )


# ---- a request: from its decision to its settlement -----------------------------------------------------------
def start(run: Run) -> None:
    """A prepared Run begins: described on the gateway request's span (its first Run), else on a span of its own,
    a child of the caller's current span ("chat auto", or "chat <model>" for a pinned model)."""
    gateway = _GATEWAY.get()
    if gateway is not None and not gateway.claimed:
        gateway.claimed = True
        traced_run = gateway
    else:
        t = gateway.tracer if gateway is not None else tracer()
        if t is None:
            return
        from opentelemetry import trace

        if gateway is not None:  # a further Run of one request (several prompts): a child of its span
            operation, model = gateway.operation, gateway.model
            parent, kind = trace.set_span_in_context(gateway.span), trace.SpanKind.INTERNAL
        else:
            operation, model = "chat", run.decision.model if run.decision.rule.index < 0 else "auto"
            parent, kind = None, trace.SpanKind.INTERNAL
        span = t.start_span(
            f"{operation} {model}",
            context=parent,
            kind=kind,
            attributes={"gen_ai.operation.name": operation, "gen_ai.request.model": model},
        )
        traced_run = Traced(t, span, owned=True, operation=operation, model=model)
    decision = run.decision
    rule = decision.rule
    attrs: dict[str, Any] = {
        "modelroute.rule": "override" if rule.index < 0 else f"{rule.file}:{rule.line}",
        "modelroute.policy_version": decision.policy_version,
        "modelroute.plan": [step.model for step in decision.plan],
        "modelroute.strategy": decision.strategy,
    }
    experiment = decision.experiment
    if experiment is not None:
        attrs["modelroute.experiment"], attrs["modelroute.variant"] = experiment.name, experiment.variant
    traced_run.span.set_attributes(attrs)
    key = id(run)
    _RUNS[key] = traced_run
    weakref.finalize(run, _RUNS.pop, key, None)  # a Run never settled leaves no entry behind


def answered(run: Run, done: Completion) -> None:
    """The request has its answer (the model and provider that gave it)."""
    if _RUNS:
        traced_run = _RUNS.get(id(run))
        if traced_run is not None:
            traced_run.answer = (done.model, done.provider)


def finish(run: Run) -> None:
    """The Run is settled: its span gets the request's usage, cost, answer or error (the exception in flight, if
    any: settle runs in a `finally`) and ends, unless it is the gateway's server span (ended with the response)."""
    if not _RUNS:
        return
    traced_run = _RUNS.pop(id(run), None)
    if traced_run is None:
        return
    span = traced_run.span
    for try_span, _ in traced_run.tries.values():  # a try cut short by something other than its own outcome
        try_span.set_attribute("modelroute.outcome", "abandoned")
        try_span.end()
    traced_run.tries.clear()
    attrs: dict[str, Any] = {
        "gen_ai.usage.input_tokens": run.input_tokens,
        "gen_ai.usage.output_tokens": run.output_tokens,
        "modelroute.cost": run.cost,
        "modelroute.attempts": len(run.attempts),
    }
    exc = sys.exc_info()[1]
    answer = traced_run.answer
    if answer is None and exc is None:  # an answer that makes no Completion (embeddings): the try that gave it
        answer = next(((a.model, a.provider) for a in reversed(run.attempts) if a.outcome == "ok"), None)
    if answer is not None:
        model, provider = answer
        attrs.update({"gen_ai.response.model": model, "gen_ai.provider.name": provider_name(provider)})
        attrs["modelroute.outcome"] = "answered"
    elif exc is not None and type(exc).__name__ in CANCELLED:
        attrs["modelroute.outcome"] = "cancelled"
    elif exc is not None:
        attrs["modelroute.outcome"] = "failed"
        _failed(span, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else None)
        traced_run.failed = True
    else:
        attrs["modelroute.outcome"] = "unanswered"
    span.set_attributes(attrs)
    if traced_run.owned:
        span.end()


def _failed(span: Any, error_type: str, message: str | None) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, message))


# ---- one try of one model -------------------------------------------------------------------------------------
def attempt_started(run: Run, entry: Entry, retry: int, flight: object) -> None:
    """A try of `entry` begins (its in-flight count is `flight`): a CLIENT span, a child of the request's span."""
    if not _RUNS:
        return
    traced_run = _RUNS.get(id(run))
    if traced_run is not None:
        span = _try_span(traced_run, entry.name, entry.provider, entry.spec.id, retry)
        traced_run.tries[id(flight)] = (span, entry.spec.id)


def _try_span(traced_run: Traced, model: str, provider: str, model_id: str, retry: int) -> Any:
    from opentelemetry import trace

    return traced_run.tracer.start_span(
        f"{traced_run.operation} {model_id}",
        context=trace.set_span_in_context(traced_run.span),
        kind=trace.SpanKind.CLIENT,
        attributes={
            "gen_ai.operation.name": traced_run.operation,
            "gen_ai.provider.name": provider_name(provider),
            "gen_ai.request.model": model_id,
            "modelroute.model": model,
            "modelroute.provider": provider,
            "modelroute.retry": retry,
        },
    )


def attempt_ended(
    run: Run,
    flight: object,
    *,
    response: ChatResponse | None = None,
    error: ProviderError | None = None,
    wait: float | None = None,
) -> None:
    """The try counted by `flight` ended: answered (`response`, its usage as accounted), failed (`error`, and the
    seconds waited before the same model is tried again) or, with neither, cancelled (another answer won)."""
    if not _RUNS:
        return
    traced_run = _RUNS.get(id(run))
    held = traced_run.tries.pop(id(flight), None) if traced_run is not None else None
    if held is None:
        return
    span, model_id = held
    if response is not None:
        span.set_attributes(
            {
                "gen_ai.response.model": response.model_version or model_id,
                "gen_ai.response.finish_reasons": [response.finish_reason],
                "gen_ai.usage.input_tokens": response.usage.input_tokens,
                "gen_ai.usage.output_tokens": response.usage.output_tokens,
                "modelroute.cost": response.cost or 0.0,
                "modelroute.outcome": "ok",
            }
        )
    elif error is not None:
        span.set_attribute("modelroute.outcome", "error")
        if error.status is not None:
            span.set_attribute("http.response.status_code", error.status)
        if wait is not None:
            span.set_attribute("modelroute.retry_in_s", wait)
        _failed(span, type(error).__name__, error.message)
    else:
        span.set_attribute("modelroute.outcome", "cancelled")
    span.end()


def attempt_skipped(run: Run, entry: Entry, error: str, why: str) -> None:
    """A model of the plan was not tried (`error`: Skipped, ProviderUnavailable, CircuitOpen): a span of no length
    says so, with the reason."""
    if not _RUNS:
        return
    traced_run = _RUNS.get(id(run))
    if traced_run is not None:
        span = _try_span(traced_run, entry.name, entry.provider, entry.spec.id, 0)
        span.set_attributes({"modelroute.outcome": "skipped", "error.type": error, "modelroute.skip_reason": why})
        span.end()
