"""Admission for `modelroute serve`: the host, port and file-descriptor limit in, bound listening sockets and the
connection cap out; and the gateway's ASGI app in, that app with a bound on the requests in progress (past it, 503
`server_busy` without reaching the app, in the error shape of the endpoint asked: Anthropic's `overloaded_error` on
/v1/messages and /v1/messages/count_tokens, OpenAI's elsewhere; probes and scrapes always served) out."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from typing import Any

from providers.gateway.anthropic_api import MessagesWire
from providers.gateway.jsonbody import ApiError

__all__ = ["BUSY_EXEMPT", "WORKER_HEADER", "bound_address", "bounded", "listen", "max_connections"]

WORKER_HEADER = "x-modelroute-worker"  # on GET /healthz: the pid of the process that answered
BUSY_EXEMPT = ("/healthz", "/metrics")  # probes and scrapes are never refused: they are cheap and say what is wrong
#: The `endpoint` label of modelroute_requests_total for each path (a 503 server_busy is counted under it too).
_ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "count_tokens",
    "/v1/responses": "responses",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/models": "models",
    "/v1/route/explain": "explain",
}
log = logging.getLogger("modelroute.gateway")


def bounded(app: Any, limit: int, gateway: Any = None) -> Any:
    """The ASGI app `app` with at most `limit` HTTP requests in progress (a stream counts until it ends); one more
    gets `503 server_busy` (JSON in the endpoint's error shape: Anthropic's on /v1/messages*, OpenAI's elsewhere;
    `Retry-After: 1`, the connection closed) without reaching `app`. GET /healthz and /metrics are always served.
    `gateway` (a providers.gateway.app.Gateway) counts refusals in `modelroute_requests_total` with status 503."""
    busy = ApiError(
        503,
        f"the gateway is at its limit of {limit} requests in progress; retry shortly",
        type="server_error",
        code="server_busy",
    )
    openai_busy = _busy_response(busy.body())
    anthropic_busy = _busy_response(MessagesWire().error_body(busy))  # overloaded_error: worth retrying
    active = 0
    warned = [0.0, 0]  # when the last warning was logged, refusals since
    worker = (WORKER_HEADER.encode(), str(os.getpid()).encode())

    async def entry(scope: Any, receive: Any, send: Any) -> None:
        nonlocal active
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        if scope["path"] == "/healthz":
            send = _tagged(send, worker)
        if active >= limit and scope["path"] not in BUSY_EXEMPT:
            _refused(scope["path"])
            # the Anthropic endpoints' errors are Anthropic-shaped, as the app's own 404/405 there are
            start, body = anthropic_busy if scope["path"].startswith("/v1/messages") else openai_busy
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        active += 1
        try:
            await app(scope, receive, send)
        finally:
            active -= 1

    def _refused(path: str) -> None:
        endpoint = _ENDPOINTS.get(path) or ("models" if path.startswith("/v1/models/") else None)
        if gateway is not None and endpoint is not None:
            gateway.metrics.requests.inc(endpoint, 503)
        warned[1] += 1
        now = time.monotonic()
        if now - warned[0] >= 10.0:
            log.warning("refusing requests (503 server_busy): %d in progress, the limit (%d refused)", limit, warned[1])
            warned[0], warned[1] = now, 0

    entry.state = getattr(app, "state", None)  # type: ignore[attr-defined]
    return entry


def _busy_response(error: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """The ASGI response start and body of a 503 whose JSON body is `error`."""
    body = json.dumps(error, separators=(",", ":")).encode()
    start = {
        "type": "http.response.start",
        "status": 503,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"),
            (b"connection", b"close"),
        ],
    }
    return start, body


def _tagged(send: Any, header: tuple[bytes, bytes]) -> Any:
    """`send` adding `header` to the response head."""

    async def tagged(message: Any) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), header]}
        await send(message)

    return tagged


def max_connections(reserve: int = 100) -> int | None:
    """How many client connections may be open at once: what the file-descriptor limit leaves after `reserve`
    (or a fifth of it, whichever is more) for upstream connections, files and the listening sockets. None when
    the limit cannot be read or is unlimited."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        return None
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return None
    return max(16, soft - max(reserve, soft // 5))


def listen(host: str, port: int) -> list[socket.socket]:
    """Bound sockets for every address `host` names (as asyncio's create_server binds them), for uvicorn to
    serve on. Raises OSError (socket.gaierror for a host that does not resolve) with nothing left open."""
    reuse = os.name == "posix" and sys.platform != "cygwin"
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            if reuse:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.set_inheritable(True)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def bound_address(socks: list[socket.socket], host: str) -> str:
    """host:port as clients reach it (the port the system chose for --port 0)."""
    port = socks[0].getsockname()[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
