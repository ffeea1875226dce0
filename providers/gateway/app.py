"""The HTTP gateway (ASGI, starlette): HTTP requests in; routing by the Engine's policy, execution through
providers/, and JSON / SSE responses in each endpoint's own format with `x-modelroute-*` headers out.

Endpoints: POST /v1/chat/completions, POST /v1/messages (Anthropic) and /v1/messages/count_tokens,
POST /v1/responses, POST /v1/completions, POST /v1/embeddings, GET /v1/models, GET /v1/models/{id},
POST /v1/route/explain, GET /healthz, GET /metrics. Every endpoint that answers with a chat model reads its request
into the one chat call (providers/gateway/wire.py) and runs the same pipeline.
`create_app(engine, keys=KeyRing.load(path))` builds the app; `modelroute serve` runs it under uvicorn
(providers/gateway/server.py). The endpoints that execute nothing (models, count_tokens, explain, healthz, metrics)
are providers/gateway/reports.py. Not imported by `import engine` (it needs starlette and httpx). See docs/gateway.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from engine import Engine
from providers.execution.tracing import traced
from providers.gateway.anthropic_api import MessagesWire
from providers.gateway.embeddings import embeddings_route
from providers.gateway.hangup import ClientGone
from providers.gateway.keys import GatewayKey, KeyRing, bearer
from providers.gateway.legacy import CompletionsWire, merge_answers, several_prompts
from providers.gateway.metrics import GatewayMetrics
from providers.gateway.openai_wire import AUTO_MODELS, ApiError
from providers.gateway.pipeline import serve
from providers.gateway.reports import ReportEndpoints
from providers.gateway.responses_api import ResponsesWire
from providers.gateway.run import fallbacks_used
from providers.gateway.streamed import CLIENT_CLOSED, hung_up
from providers.gateway.wire import ChatWire, Wire, json_response, with_body

if TYPE_CHECKING:
    from engine.runtime.state import ExecutionStore
    from providers.execution import Run
    from providers.gateway.openai_wire import ChatCall
    from providers.types import Usage

log = logging.getLogger("modelroute.gateway")
DEFAULT_MAX_BODY = 1 << 20  # 1 MiB


def _cut(text: str, limit: int = 80) -> str:
    """A client-given text for an error message: at most `limit` characters."""
    return text if len(text) <= limit else text[:limit] + "..."


def _ensure_health(ex: Any, loop: asyncio.AbstractEventLoop, event: Any) -> None:
    """After a reload: start the health checks when the new policy sets `health.interval` (a no-op otherwise)."""
    ex.health.ensure(loop)


class Gateway(ReportEndpoints):
    """One gateway process: the default Engine (`model: "auto"`), optional named Engines (`model: "<name>"`),
    optional gateway keys, limits and metrics."""

    def __init__(
        self,
        engine: Engine,
        *,
        keys: KeyRing | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        policies: Mapping[str, Engine] | None = None,
        warmup: bool = False,
    ):
        self.engine, self.keys, self.max_body, self.warmup = engine, keys, max_body, warmup
        self.policies: dict[str, Engine] = {name: engine for name in AUTO_MODELS}
        for name, named in (policies or {}).items():
            if name in self.policies:
                raise ValueError(f"policy name {name!r} is taken: {sorted(self.policies)} are already named")
            clash = engine.resolve_model(name)
            if clash is not None:
                raise ValueError(
                    f"policy name {name!r} is also a catalog model ({clash}): a request naming it would "
                    "be ambiguous; pick another name"
                )
            self.policies[name] = named
        for k in keys.keys if keys is not None else ():
            unknown = sorted((k.policies or frozenset()) - self.policies.keys())
            if unknown:
                log.warning(
                    "gateway key %s may use policies this gateway does not serve: %s (it serves: %s)",
                    k.name,
                    ", ".join(unknown),
                    ", ".join(self.policies),
                )
        self._active = 0
        self.metrics = GatewayMetrics(self._circuits, lambda: self._active)
        for served in self.engines():  # each experiment's requests, as its engine counts them, into /metrics
            served.executor.experiments.listen(self.metrics.experiment)
        for cache in {id(e.executor.cache): e.executor.cache for e in self.engines()}.values():
            cache.listen(self.metrics.cache.inc)  # response cache hits and misses into /metrics

    @property
    def active(self) -> int:
        """Requests being handled by this process (the in-flight gauge of /metrics, and /healthz's `in_flight`)."""
        return self._active

    @active.setter
    def active(self, count: int) -> None:
        self._active = count
        self.metrics.in_flight_now(count)

    def engines(self) -> list[Engine]:
        """Every Engine this gateway serves, the default first, each once."""
        return list({id(e): e for e in self.policies.values()}.values())

    def _circuits(self) -> list[tuple[str, str]]:
        out: dict[str, str] = {}  # every model of every policy: a circuit may have been opened by another replica
        for engine in self.engines():
            state = cast("ExecutionStore", engine.state)
            for m in engine.policy.models:
                if m not in out:
                    out[m] = state.circuit(m).state
        return sorted(out.items())

    def _route(self, call: ChatCall, key: GatewayKey | None) -> tuple[Engine, str]:
        """The Engine for a request and the name of its policy; a named policy routes like "auto", a concrete model
        name is pinned through "auto". Raises ApiError 403 when the key may not use that policy."""
        engine = self.policies.get(call.model)
        pinned = engine is None
        if engine is None:
            engine, name = self.engine, AUTO_MODELS[0]
        else:
            name, call.model = call.model, AUTO_MODELS[0]
        if key is not None and key.policies is not None and name not in key.policies:
            raise ApiError(
                403,
                f"gateway key `{key.name}` may not use policy `{name}`"
                + (f" (a named model is routed through `{name}`)" if pinned else "")
                + f"; it may use: {', '.join(sorted(key.policies))}",
                type="permission_error",
                code="policy_not_allowed",
                param="model",
            )
        return engine, name

    # ---- request plumbing -----------------------------------------------------------------------------
    def _auth(self, request: Request) -> GatewayKey | None:
        if self.keys is None:
            return None
        sent = request.headers
        # `Authorization: Bearer <key>` (OpenAI's SDK) or `x-api-key: <key>` (Anthropic's)
        key = self.keys.check(bearer(sent.get("authorization")) or sent.get("x-api-key", "").strip() or None)
        if key is None:
            missing = not sent.get("authorization") and not sent.get("x-api-key")
            raise ApiError(
                401,
                "missing gateway key: send `Authorization: Bearer <key>` or `x-api-key: <key>`"
                if missing
                else "invalid gateway key",
                type="authentication_error",
                code="invalid_api_key",
            )
        return key

    async def _body(self, request: Request) -> bytes:
        """The request body's bytes, at most `max_body` of them (413 otherwise); parse_chat reads the JSON. A client
        gone before its body is complete (a half-close, broken chunked framing, a body shorter than its
        content-length, the body timeout's 408) raises ClientGone, which every endpoint counts as 499."""
        declared = request.headers.get("content-length", "")
        # ASCII digits only (`²` is a digit to isdigit(), not to int()); a length of 19 digits or more is too large
        if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > self.max_body):
            raise ApiError(
                413,
                f"request body of {_cut(declared)} bytes is larger than the limit of {self.max_body} bytes",
                code="body_too_large",
            )
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body:
                    raise ApiError(
                        413, f"request body is larger than the limit of {self.max_body} bytes", code="body_too_large"
                    )
                chunks.append(chunk)
        except ClientDisconnect:  # nobody is left to answer: a hang-up, never an internal error
            raise ClientGone from None
        return b"".join(chunks)

    @staticmethod
    def _attrs(call: ChatCall, key: GatewayKey | None, endpoint: str = "chat") -> dict[str, Any]:
        attrs = dict(call.attrs)
        if key is not None:
            attrs.update(key.attributes)  # bound attributes win over anything the request says
            attrs["key"] = key.name
        attrs["endpoint"] = endpoint  # reserved: the API the request came through
        return attrs

    def _error(self, err: ApiError, wire: Wire | None = None) -> Response:
        body = err.body() if wire is None else wire.error_body(err)
        return json_response(body, err.status, err.headers or None)

    def done(self, endpoint: str, status: int, t0: float) -> None:
        self.metrics.requests.inc(endpoint, status)
        self.metrics.duration.observe(time.perf_counter() - t0, endpoint)

    def account(
        self, run: Run, answered: str | None, cost: float, usage: Usage | None = None, fallbacks: int | None = None
    ) -> None:
        """Count a request's attempts, the request and its cost for its key and user, and for an answer its
        fallback (as `x-modelroute-fallbacks` counts them), spend and tokens."""
        attempts = run.attempts
        self.metrics.attempts_of(attempts)
        self.metrics.spent(run.decision.request.attrs, cost)
        if answered is not None:
            if fallbacks is None:
                fallbacks = fallbacks_used(run.decision, answered, attempts)
            if fallbacks:
                self.metrics.fallbacks.inc(answered)
            self.metrics.spend.inc(answered, by=cost)
            if run.estimated_cost:
                self.metrics.spend_estimated.inc(answered, by=run.estimated_cost)
            if usage is not None:
                self.metrics.tokens.inc(answered, "input", by=usage.input_tokens)
                self.metrics.tokens.inc(answered, "output", by=usage.output_tokens)

    # ---- endpoints ------------------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        return await serve(self, request, ChatWire())

    async def messages(self, request: Request) -> Response:
        return await serve(self, request, MessagesWire())

    async def responses(self, request: Request) -> Response:
        return await serve(self, request, ResponsesWire())

    async def completions(self, request: Request) -> Response:
        """POST /v1/completions; a body with several prompts is answered as one request per prompt (each routed,
        budgeted and counted on its own), one after another, their choices merged in prompt order."""
        t0 = time.perf_counter()
        try:
            self._auth(request)  # before the body is read, as for every endpoint
            raw = await self._body(request)
        except ApiError as err:
            self.done("completions", err.status, t0)
            return self._error(err)
        except ClientGone:  # gone while its body was read: nothing is sent, counted as 499 like the other endpoints
            self.done("completions", CLIENT_CLOSED, t0)
            return hung_up()
        parts = several_prompts(raw)
        if parts is None:
            return await serve(self, with_body(request, raw), CompletionsWire())
        answers = []
        for part in parts:
            answer = await serve(self, with_body(request, part), CompletionsWire())
            answers.append(answer)
            if answer.status_code != 200:
                break
        return merge_answers(answers)

    async def start(self) -> None:
        """Before serving: the warm-up (`warmup`: each engine probes the models its policy uses once, logged per
        model) and the background health checks of the policies that `set health.interval` (started again when
        a reload sets it)."""
        loop = asyncio.get_running_loop()
        for name, engine in {id(e): (n, e) for n, e in reversed(list(self.policies.items()))}.values():
            ex = engine.executor
            if self.warmup:
                results = await engine.awarmup()
                ok = sum(r.ok for r in results)
                log.info("warm-up of policy %s: %d of %d models answered", name, ok, len(results))
                for r in results:
                    log.log(logging.INFO if r.status != "failed" else logging.WARNING, "warm-up: %s", r.line())
            ex.health.ensure(loop)
            engine.on_reload(partial(_ensure_health, ex, loop))

    # ---- the app -------------------------------------------------------------------------------------
    def app(self) -> Starlette:
        async def http_error(request: Request, exc: Exception) -> Response:
            code = getattr(exc, "status_code", 500)
            path = _cut(request.url.path)
            text = {
                404: f"no such endpoint: {_cut(request.method)} {path}",
                405: f"method {_cut(request.method)} not allowed on {path}",
            }.get(code, "HTTP error")
            err = ApiError(code, text, code="not_found" if code == 404 else "method_not_allowed")
            return self._error(err, MessagesWire() if path.startswith("/v1/messages") else None)

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            await self.start()
            yield
            for engine in self.engines():
                engine.executor.health.stop()
                with contextlib.suppress(Exception):
                    await engine.aclose()

        routes = [
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/messages", self.messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
            Route("/v1/responses", self.responses, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.model, methods=["GET"]),
            Route("/v1/route/explain", self.explain, methods=["POST"]),
            embeddings_route(self),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/metrics", self.metrics_text, methods=["GET"]),
        ]
        app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
        app.state.gateway = self
        return app

    def asgi(self) -> Any:
        """The ASGI app: `POST /v1/chat/completions` goes straight to `chat` (it handles every error itself), the
        rest through Starlette's routing and middleware, which cost about 40 us a request here."""
        app = self.app()
        chat = self.chat

        async def gateway(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"] == "/v1/chat/completions" and scope["method"] == "POST":
                response = await chat(Request(scope, receive))
                await response(scope, receive, send)
            else:
                await app(scope, receive, send)

        gateway.state = app.state  # type: ignore[attr-defined]
        return traced(gateway)  # a span per request when tracing is on (providers/execution/tracing.py)


def create_app(
    engine: Engine,
    *,
    keys: KeyRing | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    policies: Mapping[str, Engine] | None = None,
    warmup: bool = False,
) -> Any:
    """The ASGI app for `engine` (routes, executes, reports). `keys=None` accepts requests without a key;
    `policies` maps names to further Engines that requests choose with `model: "<name>"`. `warmup` probes each
    model once before serving (`modelroute serve --warmup`)."""
    return Gateway(engine, keys=keys, max_body=max_body, policies=policies, warmup=warmup).asgi()
