"""Tests for OpenTelemetry tracing (providers/execution/tracing.py): the Python API and the gateway (the official
openai SDK against uvicorn on loopback, upstreams the FakeServer) under the SDK's TracerProvider with an
InMemorySpanExporter in; the request span ("{operation} {model}", GenAI attributes, modelroute.rule / plan /
policy_version), one child span per try with its error class, an incoming `traceparent` continued, out. Once more
end to end: `modelroute serve` in a subprocess configured by OTEL_* variables, exporting to a loopback OTLP/HTTP
receiver that decodes the protobuf it gets. And `configure()`'s opt-in rules.

The SDK allows one global TracerProvider per process: this module installs it once (tracing stays on for the rest of
a test session that runs it, which changes no behaviour)."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
openai = pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")
import httpx  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from engine import Engine  # noqa: E402
from providers.execution import tracing, tracing_setup  # noqa: E402
from providers.gateway.app import create_app  # noqa: E402
from tests.embedserver import EmbedServer, embedding_catalog  # noqa: E402
from tests.engines import KINDS, TEST_KEY, engine_for  # noqa: E402
from tests.fakeserver import FakeServer, Fault, Reply  # noqa: E402
from tests.test_gateway import ThreadServer, write_policy  # noqa: E402
from tests.test_gateway_embeddings import KEYS as EMBEDDING_KEYS  # noqa: E402
from tests.test_gateway_embeddings import specs as embedding_specs  # noqa: E402
from tests.test_redis_store import free_port  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MSG = [{"role": "user", "content": "hello"}]
POLICY = "set retry.attempts = 0\notherwise use alpha-mini fallback beta-chat\n"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def provider() -> TracerProvider:
    """The process's TracerProvider, exporting to EXPORTER (installed once: the SDK allows no second one)."""
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        current = TracerProvider()
        trace.set_tracer_provider(current)
    current.add_span_processor(SimpleSpanProcessor(EXPORTER))
    assert tracing.tracer(recheck=True) is not None
    return current


@pytest.fixture
def spans(provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


def by_name(exported: Any, name: str) -> ReadableSpan:
    """The one request span (not a try's, which is CLIENT) called `name`, once ended: a gateway's span ends just
    after the last byte of its answer is sent, so the client may have it first."""

    def ended() -> list[ReadableSpan]:
        return [s for s in exported.get_finished_spans() if s.name == name and s.kind != SpanKind.CLIENT]

    wait_until(lambda: bool(ended()), f"the span {name!r} to end", timeout=10)
    found = ended()
    assert len(found) == 1, [s.name for s in exported.get_finished_spans()]
    return found[0]


def children(exported: Any, parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return sorted(
        (
            s
            for s in exported.get_finished_spans()
            if s.parent is not None and s.parent.span_id == parent.context.span_id
        ),
        key=lambda s: s.start_time or 0,
    )


# ---- the Python API ---------------------------------------------------------------------------------------
def test_complete_makes_a_request_span_with_one_child_per_try(spans, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Fault.server_error(500))
    fake_server.default = Reply(text="ok", input_tokens=7, output_tokens=3)
    engine = engine_for(fake_server, POLICY)
    try:
        app = trace.get_tracer("app")
        with app.start_as_current_span("handler") as handler:
            done = engine.complete("hello")
    finally:
        engine.close()
    assert done.model == "beta-chat"
    request = by_name(spans, "chat auto")
    assert request.kind == SpanKind.INTERNAL
    assert request.parent is not None and request.parent.span_id == handler.get_span_context().span_id
    attrs = dict(request.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == "auto"
    assert attrs["gen_ai.response.model"] == "beta-chat" and attrs["gen_ai.provider.name"] == "betacorp"
    assert attrs["gen_ai.usage.input_tokens"] == 7 and attrs["gen_ai.usage.output_tokens"] == 3
    assert attrs["modelroute.rule"].endswith(":2") and attrs["modelroute.plan"] == ("alpha-mini", "beta-chat")
    assert attrs["modelroute.policy_version"] == engine.version and attrs["modelroute.outcome"] == "answered"
    failed, ok = children(spans, request)
    assert failed.name == "chat alpha-mini" and failed.kind == SpanKind.CLIENT
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["error.type"] == "ServerError" and failed.attributes["http.response.status_code"] == 500
    assert failed.attributes["modelroute.outcome"] == "error"
    assert ok.name == "chat beta-chat" and ok.status.status_code == StatusCode.UNSET
    assert ok.attributes["gen_ai.usage.output_tokens"] == 3 and ok.attributes["modelroute.outcome"] == "ok"
    assert all(s.context.trace_id == handler.get_span_context().trace_id for s in (request, failed, ok))


def test_a_request_every_model_of_which_fails_ends_its_span_in_error(spans, fake_server: FakeServer) -> None:
    fake_server.default = Fault.server_error(503)
    engine = engine_for(fake_server, POLICY)
    try:
        with pytest.raises(Exception) as raised:
            engine.complete("hello")
    finally:
        engine.close()
    request = by_name(spans, "chat auto")
    assert request.status.status_code == StatusCode.ERROR
    assert request.attributes["error.type"] == type(raised.value).__name__ == "RoutingError"
    assert [s.attributes["error.type"] for s in children(spans, request)] == ["ServerError", "ServerError"]


def test_a_pinned_stream_is_named_by_its_model_and_a_skipped_model_has_a_span(spans, fake_server) -> None:
    engine = engine_for(fake_server, POLICY, api_keys={"betacorp": TEST_KEY})  # acme has no key: alpha-mini skipped
    try:
        text = engine.stream("hello", model="beta-chat", fallback=["alpha-mini"]).text()
        engine.complete("hello")
    finally:
        engine.close()
    assert text
    pinned = by_name(spans, "chat beta-chat")  # the request span of the pinned stream
    assert pinned.attributes["modelroute.rule"] == "override"
    (attempt,) = children(spans, pinned)
    assert attempt.name == "chat beta-chat" and attempt.attributes["modelroute.outcome"] == "ok"
    request = by_name(spans, "chat auto")
    skipped, ok = children(spans, request)
    assert skipped.attributes["modelroute.outcome"] == "skipped"
    assert skipped.attributes["error.type"] == "ProviderUnavailable"
    assert ok.attributes["gen_ai.provider.name"] == "betacorp"


def test_a_race_has_a_span_per_member_and_the_loser_is_cancelled(spans, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Fault.slow(5.0))
    engine = engine_for(fake_server, "set retry.attempts = 0\notherwise race [alpha-mini, beta-chat]\n")
    try:
        assert engine.complete("hello").model == "beta-chat"
    finally:
        engine.close()
    request = by_name(spans, "chat auto")
    assert request.attributes["modelroute.strategy"] == "race"
    assert request.attributes["gen_ai.response.model"] == "beta-chat"
    outcomes = {s.attributes["modelroute.model"]: s.attributes["modelroute.outcome"] for s in children(spans, request)}
    assert outcomes == {"alpha-mini": "cancelled", "beta-chat": "ok"}


# ---- the gateway --------------------------------------------------------------------------------------------
@pytest.fixture
def gateway(fake_server: FakeServer) -> Iterator[Any]:
    engine = engine_for(fake_server, "set overrides = true\n" + POLICY)
    server = ThreadServer(create_app(engine)).__enter__()
    yield server
    server.__exit__(None, None, None)
    engine.close()


def test_the_gateway_continues_an_incoming_traceparent(spans, gateway, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Fault.rate_limited(0))
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(
        model="auto", messages=MSG, extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    )
    assert answer.model == "beta-chat"
    request = by_name(spans, "chat auto")
    assert request.kind == SpanKind.SERVER
    assert f"{request.context.trace_id:032x}" == TRACE_ID and f"{request.parent.span_id:016x}" == PARENT_ID
    attrs = dict(request.attributes or {})
    assert attrs["http.response.status_code"] == 200 and attrs["modelroute.endpoint"] == "chat"
    assert attrs["gen_ai.response.model"] == "beta-chat" and attrs["modelroute.plan"] == ("alpha-mini", "beta-chat")
    failed, ok = children(spans, request)
    assert failed.attributes["error.type"] == "RateLimited" and failed.attributes["http.response.status_code"] == 429
    assert ok.attributes["gen_ai.request.model"] == "beta-chat"
    assert {f"{s.context.trace_id:032x}" for s in (failed, ok)} == {TRACE_ID}


def test_a_gateway_stream_and_the_other_endpoints_are_traced(spans, gateway) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(model="alpha-mini", messages=MSG, stream=True))
    assert chunks
    request = by_name(spans, "chat alpha-mini")
    assert request.attributes["modelroute.rule"] == "override" and request.attributes["gen_ai.usage.output_tokens"] > 0
    assert [s.name for s in children(spans, request)] == ["chat alpha-mini"]
    client.models.list()
    assert by_name(spans, "GET /v1/models").attributes["http.response.status_code"] == 200
    assert httpx.post(gateway.url + "/v1/chat/completions", json={"model": "auto"}).status_code == 400
    bad = by_name(spans, "POST /v1/chat/completions")  # refused before it names a model: its span keeps the path
    assert bad.attributes["http.response.status_code"] == 400 and bad.status.status_code == StatusCode.UNSET
    httpx.get(gateway.url + "/healthz")
    assert not [s for s in spans.get_finished_spans() if "healthz" in s.name]


def test_an_embeddings_request_is_an_embeddings_span(provider: TracerProvider) -> None:
    with EmbedServer() as upstream:
        upstream.fail("embed-small", 503)
        engine = Engine.from_source(
            'set retry.attempts = 0\nwhen endpoint == "embeddings" use embed-small fallback embed-gamma\n'
            "otherwise use alpha-mini\n",
            catalog=embedding_catalog(),
            providers=embedding_specs(upstream),
            api_keys=EMBEDDING_KEYS,
        )
        with ThreadServer(create_app(engine)) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
            EXPORTER.clear()
            assert client.embeddings.create(model="auto", input="abcd").model == "embed-gamma"
        engine.close()
    request = by_name(EXPORTER, "embeddings auto")
    assert request.attributes["gen_ai.operation.name"] == "embeddings"
    assert request.attributes["gen_ai.response.model"] == "embed-gamma"
    assert request.attributes["gen_ai.provider.name"] == "gammalabs"
    failed, ok = children(EXPORTER, request)
    assert failed.name == "embeddings embed-small" and failed.attributes["http.response.status_code"] == 503
    assert ok.name == "embeddings embed-gamma" and ok.attributes["gen_ai.usage.input_tokens"] > 0


# ---- configure(): the opt-in of `modelroute serve` -------------------------------------------------------
@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_SERVICE_NAME": "x"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_EXPORTER": "none"},
    ],
)
def test_serve_installs_nothing_unless_the_variables_ask_for_traces(environ: dict[str, str]) -> None:
    said: list[str] = []
    stop = tracing_setup.configure(said.append, environ)
    stop()
    assert said == []


def test_an_otlp_protocol_the_extra_cannot_speak_is_said_and_skipped() -> None:
    said: list[str] = []
    tracing_setup.configure(said.append, {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert len(said) == 1 and "http/protobuf" in said[0]


@pytest.mark.parametrize("var", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
def test_an_endpoint_that_is_not_a_url_is_a_warning_at_start(var: str) -> None:
    said: list[str] = []
    stop = tracing_setup.configure(said.append, {var: "notaurl"})
    stop()
    assert len(said) == 1 and said[0].startswith("warning: ") and f"{var}='notaurl'" in said[0], said


# ---- end to end: `modelroute serve` exporting to a loopback OTLP/HTTP receiver ------------------------------
class Receiver:
    """A loopback OTLP/HTTP receiver: POST /v1/traces (protobuf, maybe gzip) decoded into (name, attributes, ...)."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        received = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                status = 404
                if self.path == "/v1/traces" and self.headers.get("content-type") == "application/x-protobuf":
                    message = ExportTraceServiceRequest()
                    message.ParseFromString(body)
                    for resource in message.resource_spans:
                        service = {a.key: a.value.string_value for a in resource.resource.attributes}
                        for scope in resource.scope_spans:
                            for span in scope.spans:
                                received.append(
                                    {
                                        "name": span.name,
                                        "kind": span.kind,
                                        "trace_id": span.trace_id.hex(),
                                        "span_id": span.span_id.hex(),
                                        "parent": span.parent_span_id.hex(),
                                        "service": service.get("service.name"),
                                        "attributes": {a.key: _value(a.value) for a in span.attributes},
                                    }
                                )
                    status = 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def test_serve_exports_spans_over_otlp_http(tmp_path: Path, fake_server: FakeServer) -> None:
    receiver = Receiver()
    policy = write_policy(tmp_path, fake_server, POLICY)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        **{f"TEST_{n.upper()}_KEY": TEST_KEY for n in KINDS},
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "gateway-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "serve", "-p", str(policy), "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                return httpx.get(url + "/healthz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, "modelroute serve to answer /healthz", timeout=30, interval=0.05)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        client.chat.completions.create(
            model="auto", messages=MSG, extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
        )
        wait_until(lambda: len(receiver.spans) >= 2, "the spans to reach the OTLP receiver", timeout=20)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        receiver.close()
    assert f"tracing: spans of service gateway-under-test to OTLP/HTTP {receiver.url}/v1/traces" in out
    request = next(s for s in receiver.spans if s["name"] == "chat auto")
    attempt = next(s for s in receiver.spans if s["name"] == "chat alpha-mini")
    assert request["service"] == "gateway-under-test" and request["trace_id"] == TRACE_ID
    assert request["parent"] == PARENT_ID and attempt["parent"] == request["span_id"]
    assert request["attributes"]["gen_ai.response.model"] == "alpha-mini"
    assert request["attributes"]["modelroute.plan"] == ["alpha-mini", "beta-chat"]
    assert attempt["attributes"]["gen_ai.operation.name"] == "chat"


def test_without_the_extra_serve_says_so_and_serves_without_traces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.resources", None)  # as if opentelemetry-sdk were missing
    said: list[str] = []
    tracing_setup.configure(said.append, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})()
    assert len(said) == 1 and "pip install 'modelroute[otel]'" in said[0] and "without traces" in said[0]
