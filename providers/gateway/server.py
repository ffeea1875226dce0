"""Running the gateway: policy paths and the `modelroute serve` options in, the gateway serving under uvicorn
on bound sockets (until stopped) out, with its keys, its state store (in-process or Redis) and its Engines, and
bounds on what clients and upstreams may take: the header and keep-alive timeouts and the connection cap (the
HTTP protocol, providers/gateway/protocol.py), the limit on requests in progress (`bounded`: past it, 503
`server_busy` as OpenAI-shaped JSON) and the cap on upstream answers (`--max-response-bytes`).

starlette, uvicorn and redis are imported only by `run_server` (and only redis when `--redis` is given), so
`--hash-key` works without the serve extra. With `--workers N` (and `--redis`) this process binds the sockets, then
forks N workers that serve on them and supervises them (providers/gateway/workers.py)."""

from __future__ import annotations

import gc
import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from engine import Engine
from engine.runtime.embedder import Embedder
from providers.gateway.admission import WORKER_HEADER, bound_address, bounded, listen, max_connections
from providers.gateway.keys import KeyRing, KeysFileError, hash_key, new_key

if TYPE_CHECKING:
    from engine.runtime.state import StateStore

__all__ = ["WORKER_HEADER", "ServeError", "ServeOptions", "hash_key", "listen", "new_key", "run_server"]

Echo = Callable[[str], None]
Report = Callable[[BaseException], int]  # in a worker: says why it could not serve, returns the exit code


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
    hold_lease: float = 30.0  # seconds a replica's budget holds outlive its last heartbeat (with --redis)
    max_body: int = 1 << 20
    graceful_timeout: float = 30.0
    log_level: str = "info"
    access_log: bool = False
    header_timeout: float = 10.0
    body_timeout: float = 30.0  # seconds a request body has to arrive whole once its head is in
    timeout_keep_alive: float = 5.0
    limit_concurrency: int = 1000
    max_response_bytes: int = 32 << 20
    warmup: bool = False  # probe each model the policies use once before serving, logged per model
    workers: int = 1  # processes serving on the same sockets (more than 1 needs redis_url)
    tokenizer: str | None = None  # "tiktoken:cl100k_base": exact text counting for policies that set none
    embedder: Embedder | None = None  # embeds semantic tasks' examples and requests (None: the default, WordLlama)
    functions: Mapping[str, Callable[..., Any]] | None = None  # the Python functions policies call (--functions)
    rankers: Mapping[str, Callable[..., Any]] | None = None  # the rankers `prefer custom(NAME)` calls (--rankers)


log = logging.getLogger("modelroute.gateway")


def _state(opts: ServeOptions, echo: Echo) -> StateStore | None:
    """The Redis store for `--redis`, a MemoryStore shared by named policies, or None (each Engine's own)."""
    if opts.redis_url:
        from providers.state.redis_store import RedisStore

        try:
            store = RedisStore(opts.redis_url, prefix=opts.redis_prefix, hold_lease=opts.hold_lease)
        except ValueError as exc:  # redis-py's URL parser: a scheme, port or IPv6 address it cannot read
            raise ServeError(f"{opts.redis_url!r} is not a Redis URL: {exc}", param="--redis") from None
        if not store.ping():
            echo("warning: Redis is not reachable now; serving with local state until it is")
        return store
    if opts.named:
        from engine.runtime.state import MemoryStore

        return MemoryStore()  # one router: circuits, health and spend are shared by every policy
    return None


NEEDS_REDIS = (
    "--workers {n} needs --redis: each worker is a separate process, and without a shared Redis each would keep its "
    "own circuits, budget spend, in-flight counts and round-robin turn (a budget could be spent {n} times over); "
    "start Redis and add --redis redis://HOST:6379/0, or run one worker"
)


def run_server(opts: ServeOptions, echo: Echo, report: Report | None = None) -> None:
    """Load the keys, the state store and the Engines, bind the sockets and serve until stopped; `echo` gets the
    banner and warnings (one line each). With `opts.workers` > 1: check the keys and policies here, bind the
    sockets, then fork the workers that serve on them and supervise them; `report` turns what stops a worker from
    serving into its message and exit code (default: the ServeError's message). Raises ServeError when it cannot
    start; closes what it opened."""
    if opts.workers > 1 and not opts.redis_url:
        raise ServeError(NEEDS_REDIS.format(n=opts.workers), param="--workers")
    if opts.workers > 1 and not hasattr(os, "fork"):  # pragma: no cover - not POSIX
        raise ServeError("--workers needs a system with fork(); run one worker per process instead", param="--workers")
    try:  # uvicorn and starlette (the serve extra) are checked for before any work (and loaded before any fork)
        import uvicorn  # noqa: F401

        from providers.gateway.app import create_app  # noqa: F401
    except ModuleNotFoundError as exc:
        err = ServeError(f"`modelroute serve` needs {exc.name}: pip install 'modelroute[serve]'", "missing")
        err.module = exc.name
        raise err from None
    _check_tokenizer(opts)
    if opts.workers <= 1:
        _own_metrics(echo)
        _run(opts, echo)
        return
    _load_keys(opts)  # errors in the keys file or a policy are reported here, once, before any worker starts
    for path in (opts.policy, *opts.named.values()):
        Engine.load(path, embedder=opts.embedder, functions=opts.functions, rankers=opts.rankers).stop()
    socks = _listen(opts)
    from providers.gateway.workers import Supervisor, WorkersFailed

    def serve(index: int, first: bool, ready: Callable[[], None]) -> int:
        try:
            _run(opts, echo, socks, quiet=not first, ready=ready)
        except ServeError as exc:
            if report is not None:
                return report(exc)
            echo(f"error: {exc}")
            return 1 if exc.kind == "error" else 2
        except (SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            if report is None:
                raise
            return report(exc)
        return 0

    try:
        Supervisor(opts.workers, serve, echo, opts.graceful_timeout).run()
    except WorkersFailed as exc:
        raise ServeError(str(exc), "usage" if exc.code == 2 else "error") from None
    finally:
        for sock in socks:
            sock.close()


def _own_metrics(echo: Echo) -> None:
    """One process keeps its metrics in memory: a PROMETHEUS_MULTIPROC_DIR from the environment (a missing directory
    breaks every request; an old one adds earlier runs' counts) is ignored, with a note. `--workers N` sets its own."""
    from providers.gateway.metrics import MULTIPROC_ENV, multiprocess_dir

    inherited = multiprocess_dir(None)
    if inherited:
        echo(
            f"note: {MULTIPROC_ENV}={inherited} ignored: one process keeps its metrics in memory "
            "(`serve --workers N` makes a fresh directory of its own)"
        )


def _check_tokenizer(opts: ServeOptions) -> None:
    """Load `--tokenizer` now, from local files only (never at request time): a usage error when it cannot be."""
    if opts.tokenizer is None:
        return
    try:
        Engine.tokenizer(opts.tokenizer)
    except ValueError as exc:
        hint = getattr(exc, "hint", None)
        raise ServeError(f"{exc}" + (f"; {hint}" if hint else ""), param="--tokenizer") from None


def _load_keys(opts: ServeOptions) -> KeyRing | None:
    if opts.keys_file is None:
        return None
    try:
        return KeyRing.load(opts.keys_file)
    except KeysFileError as exc:
        raise ServeError(str(exc)) from None


def _listen(opts: ServeOptions) -> list[socket.socket]:
    try:
        return listen(opts.host, opts.port)
    except OSError as exc:
        kind: Literal["usage", "error"] = "usage" if isinstance(exc, socket.gaierror) else "error"
        raise ServeError(f"cannot listen on {opts.host}:{opts.port}: {exc.strerror or exc}", kind) from None


def _run(
    opts: ServeOptions,
    echo: Echo,
    bound: list[socket.socket] | None = None,
    *,
    quiet: bool = False,
    ready: Callable[[], None] | None = None,
) -> None:
    """One gateway process: on the `bound` sockets (a worker's) or on its own; `quiet` leaves the banner out (the
    first worker prints it); `ready` is called once it accepts connections."""
    from providers.gateway.app import create_app

    keys = _load_keys(opts)
    state = _state(opts, echo)
    count = opts.tokenizer  # loaded by run_server's check: each Engine gets the same cached counter
    load = partial(
        Engine.load,
        watch=opts.watch,
        state=state,
        token_estimator=count,
        embedder=opts.embedder,
        functions=opts.functions,
        rankers=opts.rankers,
    )
    engine = load(opts.policy)  # each worker (forked) loads its own, with the same embedder, reloads too
    engines = {name: load(path) for name, path in opts.named.items()}
    socks: list[socket.socket] = bound or []
    from providers.clients.connection import set_default_max_response_bytes
    from providers.execution.tracing_setup import configure

    previous_cap = set_default_max_response_bytes(opts.max_response_bytes)
    stop_tracing = configure(None if quiet else echo)  # spans exported when the OTEL_* variables ask for them
    try:
        try:
            app = create_app(engine, keys=keys, max_body=opts.max_body, policies=engines, warmup=opts.warmup)
        except ValueError as exc:
            raise ServeError(str(exc)) from None
        if not socks:
            socks = _listen(opts)
        banner = None if quiet else partial(_banner, socks, engine, engines, keys, opts, echo)
        _serve(app, socks, (engine, *engines.values()), opts, banner=banner, ready=ready)
    finally:
        set_default_max_response_bytes(previous_cap)
        stop_tracing()  # the spans still batched are sent
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
    every: tuple[Engine, ...],
    opts: ServeOptions,
    *,
    banner: Callable[[], None] | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Say what is served where (`banner`, unless None), then run uvicorn on the bound sockets until it is stopped;
    `ready` is called once uvicorn accepts connections. `every`: the Engines served, whose provider keys are
    redacted."""
    import uvicorn

    from providers.errors import RedactingFilter, register_secret

    for e in every:  # provider keys the catalogs name are redacted from answers and logs, whoever echoes them
        for spec in e.policy.catalog.providers.values():
            register_secret(os.environ.get(spec.api_key_env) if spec.api_key_env else None)
    if banner is not None:
        banner()
    config = _config(app, socks, opts, ready)
    redacting = RedactingFilter()  # uvicorn has configured its loggers by now; ours go to the root's handlers
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(redacting)
    gc.collect()
    gc.freeze()  # the policy, catalog and modules loaded so far are long-lived: keep them out of every GC pass
    server = uvicorn.Server(config)
    try:
        server.run(sockets=socks)
    except SystemExit as exc:  # uvicorn exits 3 when it cannot start (it logged why): not a bug in modelroute
        if server.started or exc.code in (None, 0):
            raise
        raise ServeError(
            f"the gateway did not start on {bound_address(socks, opts.host)} (see the log above)", "error"
        ) from None


def _banner(
    socks: list[socket.socket],
    engine: Engine,
    engines: dict[str, Engine],
    keys: KeyRing | None,
    opts: ServeOptions,
    echo: Echo,
) -> None:
    from providers.gateway.run import provider_report

    host = opts.host
    where = "redis" if opts.redis_url else "in-process"
    auth = f"{len(keys)} gateway key(s)" if keys is not None else "NO authentication (no --keys)"
    workers = f", {opts.workers} worker processes" if opts.workers > 1 else ""
    echo(
        f"modelroute gateway: http://{bound_address(socks, host)}/v1  policy {engine.policy.entry} "
        f"(version {engine.version[:12]}), {where} state{workers}, {auth}"
    )
    for name, e in engines.items():
        echo(f'  model "{name}": policy {e.policy.entry} (version {e.version[:12]})')
    if opts.tokenizer:
        echo(f"tokens: {opts.tokenizer} for policies that set no tokens.estimator")
    if keys is None and host not in ("127.0.0.1", "localhost", "::1"):
        echo("warning: listening beyond loopback without --keys: anyone who can connect can spend")
    every = (engine, *engines.values())
    for line in provider_report(every):  # which providers have keys (by variable name) and what cannot be served
        echo(line)
    if not opts.redis_url and (
        any(e.policy.budgets for e in every) or (keys is not None and any(k.daily_budget for k in keys.keys))
    ):
        echo(
            "note: without --redis, budget spend is kept in this process only: it starts at $0 on every restart "
            "and is not shared with other replicas"
        )


def _config(app: Any, socks: list[socket.socket], opts: ServeOptions, ready: Callable[[], None] | None) -> Any:
    """uvicorn's configuration for `app` on `socks`; `ready` is called from uvicorn's first tick (it accepts
    connections by then) and then once an hour, which it ignores."""
    import uvicorn

    from providers.gateway.protocol import http_protocol

    async def notify() -> None:
        if ready is not None:
            ready()

    return uvicorn.Config(
        bounded(app, opts.limit_concurrency, getattr(getattr(app, "state", None), "gateway", None)),
        host=opts.host,
        port=socks[0].getsockname()[1],
        log_level=opts.log_level,
        access_log=opts.access_log,
        # uvicorn's, with a response's head and body sent together, header and body timeouts and a connection cap
        http=http_protocol(
            header_timeout=opts.header_timeout, max_connections=max_connections(), body_timeout=opts.body_timeout
        ),
        # annotated int, but uvicorn hands these to asyncio, which takes fractional seconds
        timeout_graceful_shutdown=opts.graceful_timeout,  # type: ignore[arg-type]
        timeout_keep_alive=opts.timeout_keep_alive,  # type: ignore[arg-type]
        lifespan="on",
        server_header=False,
        proxy_headers=False,
        callback_notify=notify if ready is not None else None,
        timeout_notify=3600,
    )
