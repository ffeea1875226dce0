"""Tracing set-up for `modelroute serve`: the OTEL_* environment variables in; a TracerProvider (a BatchSpanProcessor
with the OTLP/HTTP or console exporter) installed for providers/execution/tracing.py's spans, or a one-line reason
why not, out. A bad value never stops `serve`: it is a warning and the gateway serves without traces."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from providers.execution.tracing import tracer

__all__ = ["DEFAULT_ENDPOINT", "configure"]

DEFAULT_ENDPOINT = "http://localhost:4318"  # the OTLP/HTTP exporter's default


def _http_url(text: str) -> bool:
    try:
        parts = urlsplit(text.strip())
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


#: The BatchSpanProcessor's arguments its errors name; each is read from OTEL_BSP_<name without _millis>.
_BATCH_ARGS = ("max_queue_size", "max_export_batch_size", "schedule_delay_millis", "export_timeout_millis")


def configure(echo: Callable[[str], None] | None = None, environ: Mapping[str, str] = os.environ) -> Callable[[], None]:
    """Install a TracerProvider (BatchSpanProcessor, OTLP/HTTP exporter) when the OTEL_* variables ask for traces:
    OTEL_TRACES_EXPORTER (otlp, console; none turns it off) or an OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), unless OTEL_SDK_DISABLED is true; the exporter, the batching, the sampler
    and the resource read their own variables. `echo` gets one line saying where spans go, or why they do not.
    Returns what flushes and stops it (a no-op when nothing was installed)."""
    say = echo or (lambda line: None)

    def nothing() -> None:
        return None

    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return nothing
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not names and endpoint:
        names = ["otlp"]
    if not names or "none" in names:
        return nothing
    for name in names:
        if name not in ("otlp", "console"):
            say(f"warning: OTEL_TRACES_EXPORTER: {name!r} is not an exporter modelroute has (otlp, console)")
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if "otlp" in names and protocol not in (None, "", "http/protobuf"):
        say(f"warning: OTLP protocol {protocol!r}: modelroute[otel] exports traces over http/protobuf only; no OTLP")
        names.remove("otlp")
    for var in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        url = environ.get(var)
        if "otlp" in names and url and not _http_url(url):
            say(f"warning: {var}={url!r} is not an http:// or https:// URL (like http://collector:4318): no OTLP")
            names.remove("otlp")
    names = [n for n in names if n in ("otlp", "console")]
    if not names:
        return nothing
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        if "otlp" in names:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        say(
            f"warning: the OTEL_* variables ask for traces but {exc.name} is not installed "
            "(pip install 'modelroute[otel]'): serving without traces"
        )
        return nothing
    if tracer(recheck=True) is not None:  # a provider is installed already (opentelemetry-instrument): spans go to it
        say("tracing: spans go to the TracerProvider this process already has")
        return nothing
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "modelroute"}))
    provider = TracerProvider(resource=resource)
    where = []
    try:  # the exporters and the batching read their own OTEL_* variables, and refuse bad values with ValueError
        if "otlp" in names:
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            traces = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_ENDPOINT
            where.append(f"OTLP/HTTP {traces or base.rstrip('/') + '/v1/traces'}")
        if "console" in names:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
            where.append("the console")
    except ValueError as exc:
        provider.shutdown()  # stops a processor already started
        bsp = ["OTEL_BSP_" + arg.removesuffix("_millis").upper() for arg in _BATCH_ARGS if arg in str(exc)]
        named = ", ".join(f"{var}={environ[var]!r}" for var in bsp if var in environ) or "an OTEL_* variable"
        say(f"warning: {named}: {str(exc).rstrip('.')}: serving without traces")
        return nothing
    trace.set_tracer_provider(provider)
    tracer(recheck=True)  # seen at once, whatever the last look found
    say(f"tracing: spans of service {resource.attributes.get(SERVICE_NAME)} to {' and '.join(where)}")
    return provider.shutdown
