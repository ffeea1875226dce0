"""Running the gateway: policy paths and the `modelroute serve` options in, the gateway serving under uvicorn
on bound sockets (until stopped) out, with its keys, its state store (in-process or Redis) and its Engines.

starlette, uvicorn and redis are imported only by `run_server` (and only redis when `--redis` is given), so
`--hash-key` works without the serve extra."""

from __future__ import annotations

import gc
import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from engine import Engine
from providers.gateway.keys import KeyRing, KeysFileError, hash_key, new_key

if TYPE_CHECKING:
    from engine.runtime.state import StateStore

__all__ = ["ServeError", "ServeOptions", "hash_key", "listen", "new_key", "run_server"]

Echo = Callable[[str], None]


class ServeError(Exception):
    """The gateway cannot start. `kind`: "usage" (fix the command line), "error" (it failed at run time) or
    "missing" (a module of the serve extra is not installed; `.module` names it); `param` names the option a
    usage error is about, when one is."""

    def __init__(
        self, message: str, kind: Literal["usage", "error", "missing"] = "usage", *, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.param = param
        self.module: str | None = None


@dataclass(frozen=True)
class ServeOptions:
    """What `modelroute serve` was asked for, after its options are parsed (see `modelroute serve --help`)."""

    policy: Path
    named: Mapping[str, Path]
    host: str = "127.0.0.1"
    port: int = 8080
    watch: bool = False
    keys_file: Path | None = None
    redis_url: str | None = None
    redis_prefix: str = "modelroute:"
    max_body: int = 1 << 20
    graceful_timeout: float = 30.0
    log_level: str = "info"
    access_log: bool = False


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


def _bound(socks: list[socket.socket], host: str) -> str:
    """host:port as clients reach it (the port the system chose for --port 0)."""
    port = socks[0].getsockname()[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _state(opts: ServeOptions, echo: Echo) -> StateStore | None:
    """The Redis store for `--redis`, a MemoryStore shared by named policies, or None (each Engine's own)."""
    if opts.redis_url:
        from providers.state.redis_store import RedisStore

        try:
            store = RedisStore(opts.redis_url, prefix=opts.redis_prefix)
        except ValueError as exc:  # redis-py's URL parser: a scheme, port or IPv6 address it cannot read
            raise ServeError(f"{opts.redis_url!r} is not a Redis URL: {exc}", param="--redis") from None
        if not store.ping():
            echo("warning: Redis is not reachable now; serving with local state until it is")
        return store
    if opts.named:
        from engine.runtime.state import MemoryStore

        return MemoryStore()  # one router: circuits, health and spend are shared by every policy
    return None


def run_server(opts: ServeOptions, echo: Echo) -> None:
    """Load the keys, the state store and the Engines, bind the sockets and serve until stopped; `echo` gets the
    banner and warnings (one line each). Raises ServeError when it cannot start; closes what it opened."""
    try:  # uvicorn and starlette (the serve extra) are checked for before any work
        import uvicorn  # noqa: F401

        from providers.gateway.app import create_app
    except ModuleNotFoundError as exc:
        err = ServeError(f"`modelroute serve` needs {exc.name}: pip install 'modelroute[serve]'", "missing")
        err.module = exc.name
        raise err from None
    keys = None
    if opts.keys_file is not None:
        try:
            keys = KeyRing.load(opts.keys_file)
        except KeysFileError as exc:
            raise ServeError(str(exc)) from None
    state = _state(opts, echo)
    engine = Engine.load(opts.policy, watch=opts.watch, state=state)
    engines = {name: Engine.load(path, watch=opts.watch, state=state) for name, path in opts.named.items()}
    socks: list[socket.socket] = []
    try:
        try:
            app = create_app(engine, keys=keys, max_body=opts.max_body, policies=engines)
        except ValueError as exc:
            raise ServeError(str(exc)) from None
        try:
            socks = listen(opts.host, opts.port)
        except OSError as exc:
            kind: Literal["usage", "error"] = "usage" if isinstance(exc, socket.gaierror) else "error"
            raise ServeError(f"cannot listen on {opts.host}:{opts.port}: {exc.strerror or exc}", kind) from None
        _serve(app, socks, engine, engines, keys, opts, echo)
    finally:
        for sock in socks:
            sock.close()
        for e in (engine, *engines.values()):
            e.stop()
        close = getattr(state, "close", None)
        if close is not None:
            close()  # a Redis store removes this replica's in-flight counts at once
        if os.environ.get("MODELROUTE_DEBUG"):
            echo("gateway stopped")


def _serve(
    app: Any,
    socks: list[socket.socket],
    engine: Engine,
    engines: dict[str, Engine],
    keys: KeyRing | None,
    opts: ServeOptions,
    echo: Echo,
) -> None:
    """Say what is served where, then run uvicorn on the bound sockets until it is stopped."""
    import uvicorn

    from providers.gateway.protocol import http_protocol

    host = opts.host
    where = "redis" if opts.redis_url else "in-process"
    auth = f"{len(keys)} gateway key(s)" if keys is not None else "NO authentication (no --keys)"
    echo(
        f"modelroute gateway: http://{_bound(socks, host)}/v1  policy {engine.policy.entry} "
        f"(version {engine.version[:12]}), {where} state, {auth}"
    )
    for name, e in engines.items():
        echo(f'  model "{name}": policy {e.policy.entry} (version {e.version[:12]})')
    if keys is None and host not in ("127.0.0.1", "localhost", "::1"):
        echo("warning: listening beyond loopback without --keys: anyone who can connect can spend")
    config = uvicorn.Config(
        app,
        host=host,
        port=socks[0].getsockname()[1],
        log_level=opts.log_level,
        access_log=opts.access_log,
        http=http_protocol(),  # uvicorn's, with a response's head and body sent together
        # annotated int, but uvicorn hands it to asyncio.timeout(), which takes fractional seconds
        timeout_graceful_shutdown=opts.graceful_timeout,  # type: ignore[arg-type]
        lifespan="on",
        server_header=False,
        proxy_headers=False,
    )
    gc.collect()
    gc.freeze()  # the policy, catalog and modules loaded so far are long-lived: keep them out of every GC pass
    server = uvicorn.Server(config)
    try:
        server.run(sockets=socks)
    except SystemExit as exc:  # uvicorn exits 3 when it cannot start (it logged why): not a bug in modelroute
        if server.started or exc.code in (None, 0):
            raise
        raise ServeError(f"the gateway did not start on {_bound(socks, host)} (see the log above)", "error") from None
