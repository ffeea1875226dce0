"""The gateway's `POST /v1/embeddings`: an OpenAI embeddings request in; routing by the policy with the reserved
attribute `endpoint == "embeddings"` (so only models whose catalog entry `supports: [embeddings]` are candidates),
the plan tried model by model with the same retries, circuits, deadlines, budget holds, gateway keys and metrics as
a chat request; an OpenAI-shaped embeddings list (floats, or base64 float32 when `encoding_format: base64`) out.

The request is prepared like a chat request whose messages are the inputs (one user message each), so decide() and
the budget holds see what is sent; its token count is input_tokens() (token arrays by their length, texts by the
engine's counter), the `tokens` attribute, what tpm rate limits charge, and what metering assumes when an upstream
reports no usage. The answer comes
from the first model of the plan that answers: `race`, `consensus` and `best_of` do not apply to embeddings. The
upstream call itself is providers/clients/embeddings.py (OpenAI, Azure and Gemini wire formats).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from engine import Engine
from engine.runtime.reserved import EMBEDDINGS_ENDPOINT as ENDPOINT  # the `endpoint` of these requests
from providers.clients.embeddings import EmbeddingRequest, embedding_client, float32_base64, response_vectors
from providers.execution.cache import bypass_of
from providers.execution.deadlines import out_of_time
from providers.execution.deadlines import routing_error as no_answer
from providers.execution.tracing import gateway_request
from providers.gateway.hangup import ClientGone
from providers.gateway.jsonbody import internal_error
from providers.gateway.metrics import cost_headers
from providers.gateway.openai_wire import ApiError, ChatCall, _request_attrs, bad, read_json
from providers.gateway.pipeline import held_lookup, routed
from providers.gateway.ratelimits import admit, rate_headers, settle
from providers.gateway.run import (
    headers,
    release_key_budget,
    until_answered,
)
from providers.gateway.streamed import CLIENT_CLOSED, cache_headers, hung_up

if TYPE_CHECKING:
    from collections.abc import Mapping

    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from providers.execution import Executor, Result, Run
    from providers.gateway.app import Gateway
    from providers.gateway.chat_body import ChatBody

__all__ = [
    "ENDPOINT",
    "MAX_INPUTS",
    "EmbeddingCall",
    "embed",
    "embeddings",
    "embeddings_route",
    "input_tokens",
    "parse_embeddings",
]

log = logging.getLogger("modelroute.gateway")
MAX_INPUTS = 2048  # items in one request's `input`, as OpenAI allows
FIELDS = ("model", "input", "encoding_format", "dimensions", "user")


@dataclass(frozen=True)
class EmbeddingCall:
    """A checked embeddings request: the ChatCall that routes it, the EmbeddingRequest sent upstream and whether the
    vectors are answered as base64."""

    call: ChatCall
    request: EmbeddingRequest
    base64: bool


def _input(value: Any) -> list[str] | list[list[int]]:
    """`input` as a list of texts or of token arrays; ApiError (400) for anything else."""

    def tokens(item: Any) -> bool:
        return isinstance(item, list) and bool(item) and all(type(t) is int and t >= 0 for t in item)

    if isinstance(value, str) or tokens(value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise bad(
            "`input` must be a non-empty string, array of strings, array of token ids or array of token arrays",
            param="input",
        )
    if len(value) > MAX_INPUTS:
        raise bad(f"`input` holds {len(value)} items; at most {MAX_INPUTS} per request", param="input")
    if all(isinstance(v, str) for v in value):
        if any(not v for v in value):
            raise bad("`input` holds an empty string: each input must have text", param="input")
        return cast("list[str]", value)
    if all(tokens(v) for v in value):
        return cast("list[list[int]]", value)
    raise bad("`input` must be all strings or all token arrays (non-empty lists of token ids)", param="input")


def parse_embeddings(body: Any, request_headers: Mapping[str, str]) -> EmbeddingCall:
    """Check an embeddings body (and the x-route-* and x-modelroute-deadline headers); raises ApiError (400)."""
    if isinstance(body, (bytes, bytearray)):
        body = read_json(bytes(body))
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", "invalid_json")
    unknown = sorted(str(k) for k in body if k not in FIELDS)
    if unknown:
        raise bad(f"unknown field `{unknown[0][:40]}` (embeddings take: {', '.join(FIELDS)})", "unknown_field")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad('`model` must be a model name or "auto"', param="model")
    inputs = _input(body.get("input"))
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64", None):
        raise bad('`encoding_format` must be "float" or "base64"', param="encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
        raise bad("`dimensions` must be a whole number of at least 1", param="dimensions")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad("`user` must be a string", param="user")
    texts = [i for i in inputs if isinstance(i, str)]
    call = ChatCall(model, [{"role": "user", "content": t} for t in texts] or [{"role": "user", "content": ""}])
    checked = cast("ChatBody", SimpleNamespace(user=user, metadata=None))
    _request_attrs(call.attrs, call.options, checked, request_headers)
    request = EmbeddingRequest(messages=[], inputs=inputs, dimensions=dimensions, user=user)
    return EmbeddingCall(call=call, request=request, base64=encoding == "base64")


def input_tokens(engine: Engine, parsed: EmbeddingCall, caller: Any = None) -> int:
    """The one token count of an embeddings request: token arrays by their length, texts by the engine's counter;
    `caller` (the request's own `tokens` attribute) can only raise it."""
    inputs = parsed.request.inputs
    if inputs and not isinstance(inputs[0], str):
        counted = sum(len(i) for i in inputs)
    else:
        counted = int(engine.count_tokens(messages=parsed.call.messages).worst)
    if isinstance(caller, (int, float)) and not isinstance(caller, bool) and caller > counted:
        return int(caller)
    return counted


# ---- execution --------------------------------------------------------------------------------------------
async def embed(ex: Executor, run: Run, request: EmbeddingRequest) -> Result:
    """The plan's models in order until one answers (each tried, retried and recorded by Executor.try_model, as
    for chat); settles the budget hold; raises RoutingError."""

    def send(client: Any, entry: Any, timeout: float | None) -> Awaitable[Any]:
        return embedding_client(client).achat(entry.spec, request, timeout=timeout)

    try:
        previous = None
        for name in run.decision.chain:
            if out_of_time(run):
                break
            if previous is not None:
                ex.events.emit(
                    "fallback", f"falling back to {name} after {previous}", model=name, data={"from": previous}
                )
            result = await ex.try_model(
                run,
                name,
                validate_schema=False,
                send=send,
            )
            if result is not None:
                return result
            previous = name
        raise no_answer(run)
    finally:
        ex.settle(run)


def embeddings_json(result: Result, run: Run, as_base64: bool) -> dict[str, Any]:
    """OpenAI's embeddings list for an answer."""
    data = [
        {"object": "embedding", "index": i, "embedding": float32_base64(v) if as_base64 else v}
        for i, v in enumerate(response_vectors(result.response))
    ]
    tokens = run.usage.input_tokens
    return {
        "object": "list",
        "data": data,
        "model": result.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# ---- the endpoint -----------------------------------------------------------------------------------------
async def embeddings(gw: Gateway, request: Request) -> Response:
    """POST /v1/embeddings (see the module docstring); errors are OpenAI-shaped, as for chat completions."""
    from starlette.responses import Response

    t0 = time.perf_counter()
    status = 200
    gw.active += 1
    limits = run = None  # the rate limit ticket (providers/gateway/ratelimits.py) and the Run
    try:
        key = gw._auth(request)
        parsed = parse_embeddings(await gw._body(request), request.headers)
        call = parsed.call
        gateway_request(ENDPOINT, call.model)  # names the request's span, when tracing is on
        attrs = gw._attrs(call, key)
        attrs["endpoint"] = ENDPOINT  # after the key's bound attributes: nothing outside sets it
        engine, policy_name = gw._route(call, key)
        attrs["tokens"] = tokens = input_tokens(engine, parsed, attrs.get("tokens"))
        limits = admit(gw, engine, policy_name, call, key, attrs, tokens=tokens)  # 429 over a limit; ratelimit.left
        ex = engine.executor
        run = routed(gw, ex, engine, call, attrs, key)  # the key's `models` filter the plan, as for chat
        sent = {
            **parsed.request.model_dump(mode="json", include={"inputs", "dimensions", "user"}),
            "b64": parsed.base64,
        }
        noted = ex.cache.begin_body(run, sent, {"cache": bypass_of(request.headers.get("cache-control"))}, attrs)
        # the key's budget before the cache, as for chat (embeddings are deterministic: a hit spends nothing)
        hold, cached, cache_state = held_lookup(ex, key, run, ex.cache.lookup_body)
        if cached is not None:
            release_key_budget(ex, hold, run)
            ex.settle(run)
            gw.metrics.spent(run.decision.request.attrs, 0.0)  # a request of its key and user, as usage() counts it
            hdrs = headers(run.decision, str(cached.get("model", "")), [], calls=0, policy=policy_name)
            hdrs.update({**cost_headers(0.0, 0.0), **rate_headers(limits), **cache_headers("hit")})
            return Response(json.dumps(cached, separators=(",", ":")), 200, hdrs, "application/json")
        result = await until_answered(gw, request, ex, run, hold, embed(ex, run, parsed.request))
        body = embeddings_json(result, run, parsed.base64)
        ex.cache.store_body(noted, body)
        gw.account(run, result.model, run.cost, run.usage)
        hdrs = headers(run.decision, result.model, run.attempts, policy=policy_name)
        hdrs.update(cost_headers(run.cost, run.estimated_cost))
        hdrs.update(rate_headers(limits))
        hdrs.update(cache_state)
        return Response(json.dumps(body, separators=(",", ":")), 200, hdrs, "application/json")
    except ApiError as err:
        status = err.status
        return gw._error(err)
    except ClientGone:
        status = CLIENT_CLOSED
        return hung_up()
    except Exception:
        status = 500
        log.exception("internal error handling an embeddings request")
        return gw._error(internal_error())
    finally:
        settle(limits, run)
        gw.active -= 1
        gw.done(ENDPOINT, status, t0)


def embeddings_route(gw: Gateway) -> Route:
    """The route of POST /v1/embeddings for the gateway `gw`."""
    from starlette.routing import Route

    async def endpoint(request: Request) -> Response:
        return await embeddings(gw, request)

    return Route("/v1/embeddings", endpoint, methods=["POST"])
