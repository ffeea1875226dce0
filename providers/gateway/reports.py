"""The gateway's endpoints that execute nothing: an HTTP request in, a JSON (or Prometheus text) report out: the
models a key may use (GET /v1/models, /v1/models/{id}), a token count (POST /v1/messages/count_tokens), the routing
decision a request would get (POST /v1/route/explain), /healthz and /metrics. A mixin on the Gateway
(providers/gateway/app.py), which holds the state and request plumbing they use."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from engine import NoRouteError
from providers.gateway.anthropic_api import MessagesWire
from providers.gateway.hangup import ClientGone
from providers.gateway.jsonbody import internal_error
from providers.gateway.keyfields import allowed_plan, canonical_models
from providers.gateway.legacy import model_object
from providers.gateway.metrics import CONTENT_TYPE
from providers.gateway.openai_wire import AUTO_MODELS, ApiError, parse_chat
from providers.gateway.run import pinned_decision
from providers.gateway.streamed import CLIENT_CLOSED, hung_up
from providers.gateway.wire import json_response

if TYPE_CHECKING:
    from starlette.requests import Request

    from engine import Engine
    from providers.gateway.keys import GatewayKey, KeyRing
    from providers.gateway.metrics import GatewayMetrics
    from providers.gateway.openai_wire import ChatCall

log = logging.getLogger("modelroute.gateway")


class ReportEndpoints:
    """models, count_tokens, model, explain, healthz and metrics_text, for the Gateway."""

    engine: Engine
    keys: KeyRing | None
    policies: dict[str, Engine]
    metrics: GatewayMetrics
    active: int
    _auth: Callable[[Request], GatewayKey | None]
    _body: Callable[[Request], Awaitable[bytes]]
    _attrs: Callable[..., dict[str, Any]]
    _route: Callable[[ChatCall, GatewayKey | None], tuple[Engine, str]]
    _error: Callable[..., Response]
    done: Callable[[str, int, float], None]

    async def models(self, request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            key = self._auth(request)
        except ApiError as err:
            self.done("models", err.status, t0)
            return self._error(err)
        allowed = None if key is None else key.policies  # a key limited to some policies sees only those
        names = [m for m in self.policies if allowed is None or m in allowed]
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "modelroute"} for m in names]
        if allowed is None or AUTO_MODELS[0] in allowed:  # catalog models are pinned through "auto"
            policy = self.engine.policy
            usable = None if key is None or key.models is None else canonical_models(key.models, policy)
            data += [
                {"id": name, "object": "model", "created": 0, "owned_by": entry.provider}
                for name, entry in policy.models.items()
                if usable is None or name in usable  # a key limited to some models sees only those
            ]
        self.done("models", 200, t0)
        return json_response({"object": "list", "data": data})

    async def count_tokens(self, request: Request) -> Response:
        """POST /v1/messages/count_tokens: `{"input_tokens": N}`, the gateway's own count of what would be sent (the
        largest over provider kinds), routed by nothing and calling nothing."""
        t0 = time.perf_counter()
        status = 200
        wire = MessagesWire()
        try:
            key = self._auth(request)
            call = wire.parse_count(await self._body(request), request.headers)
            engine, _ = self._route(call, key)
            counted = engine.count_tokens(messages=call.messages, tools=call.options.get("tools"))
            return json_response({"input_tokens": counted.worst})
        except ApiError as err:
            status = err.status
            return self._error(err, wire)
        except ClientGone:  # gone while its body was read (providers/gateway/app.py _body): nothing is sent
            status = CLIENT_CLOSED
            return hung_up()
        finally:
            self.done("count_tokens", status, t0)

    async def model(self, request: Request) -> Response:
        """GET /v1/models/{id}: the model object of a policy name or a catalog model the gateway serves."""
        t0 = time.perf_counter()
        status = 200
        try:
            key = self._auth(request)
            name = str(request.path_params["model"])
            return json_response(model_object(name, self.policies, self.engine, key))
        except ApiError as err:
            status = err.status
            return self._error(err)
        finally:
            self.done("models", status, t0)

    async def explain(self, request: Request) -> Response:
        t0 = time.perf_counter()
        status = 200
        try:
            key = self._auth(request)
            call = parse_chat(await self._body(request), request.headers)
            attrs = self._attrs(call, key)
            engine, _ = self._route(call, key)
            opts = call.options
            if opts.get("tools"):
                attrs.setdefault("tools", True)
            attrs.pop("max_tokens", None)  # derived from the body, as the chat path does (providers/execution)
            if opts.get("max_tokens") is not None:
                attrs["max_tokens"] = opts["max_tokens"]
            counted = engine.count_tokens(messages=call.messages, tools=opts.get("tools"))
            attrs.setdefault("tokens", counted.worst)
            try:
                if call.auto:
                    decision = engine.decide(messages=call.messages, **attrs)
                else:
                    decision = pinned_decision(engine, call, attrs)
                if key is not None and key.models is not None:  # as the chat path restricts it (run.prepare)
                    decision = allowed_plan(key.name, key.models, decision)
                report = decision.model_dump()
            except NoRouteError as exc:
                report = exc.report().model_dump(mode="json")
            return json_response(report)
        except RecursionError:  # attributes nested deeper than explain's trace can walk: the client's mistake
            status = 400
            return self._error(ApiError(400, "request attributes are nested too deeply", code="invalid_value"))
        except ApiError as err:
            status = err.status
            return self._error(err)
        except ClientGone:  # gone while its body was read: nothing is sent
            status = CLIENT_CLOSED
            return hung_up()
        except Exception:
            status = 500
            log.exception("internal error explaining a request")
            return self._error(internal_error())
        finally:
            self.done("explain", status, t0)

    async def healthz(self, request: Request) -> Response:
        state = self.engine.state
        body: dict[str, Any] = {
            "status": "ok",
            "policy": self.engine.policy.entry,
            "policy_version": self.engine.version,
            "state": getattr(state, "status", "memory"),
            "in_flight": self.active,
        }
        if self.engine.last_error is not None:
            body["last_reload_error"] = str(self.engine.last_error).splitlines()[0]
        if self.keys is not None:
            body.update(self.keys.status())  # keys count and version, and last_keys_error after a rejected edit
        if len(self.policies) > len(AUTO_MODELS):
            body["policies"] = {
                name: {
                    "policy": e.policy.entry,
                    "policy_version": e.version,
                    **({"last_reload_error": str(e.last_error).splitlines()[0]} if e.last_error is not None else {}),
                }
                for name, e in self.policies.items()
            }
        return json_response(body)

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), headers={"content-type": CONTENT_TYPE})
