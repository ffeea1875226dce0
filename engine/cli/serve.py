"""The `modelroute serve` command: command-line options in, the OpenAI-compatible gateway (providers.gateway)
running under uvicorn out; also `--hash-key`, which turns a gateway key into the sha256 line of a keys file.
starlette, uvicorn and redis are imported only when it runs."""

from __future__ import annotations

import gc
import logging
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

import click

from engine.cli.app import EXIT_ERRORS, EXIT_USAGE, policy_or_default


def _hash_key() -> None:
    from providers.gateway.keys import hash_key, new_key

    if sys.stdin is not None and not sys.stdin.isatty():
        key = sys.stdin.read().strip()
        if not key:
            raise click.UsageError(
                "--hash-key: standard input is empty (pipe the key in, or run it on a terminal to generate a new key)"
            )
        click.echo(hash_key(key))
        return
    key = new_key()
    click.echo(f"key:    {key}    (give this to the client; it is not stored anywhere)")
    click.echo(f"sha256: {hash_key(key)}    (put this in the keys file)")


_NAMED = re.compile(r"^([A-Za-z][A-Za-z0-9_.:-]*)=(.+)$")


def _policies(args: tuple[str, ...]) -> tuple[Path | None, dict[str, Path]]:
    """The default policy (or None) and the named ones from the `-p` options; raises click.UsageError."""
    default: Path | None = None
    named: dict[str, Path] = {}
    for arg in args:
        m = _NAMED.match(arg)
        if m is None:
            if default is not None:
                raise click.UsageError(f"two default policies ({default} and {arg}): name the others as NAME=POLICY")
            default = Path(arg)
        elif m.group(1) in named or m.group(1) == "auto":
            raise click.UsageError(f'policy name {m.group(1)!r} is given twice ("auto" is the default policy)')
        else:
            named[m.group(1)] = Path(m.group(2))
    return default, named


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


@click.command()
@click.option(
    "-p",
    "--policy",
    "policy_args",
    multiple=True,
    metavar="[NAME=]POLICY",
    help="A .route file or a directory with main.route (default: ./main.route, else ./policies, else the "
    "bundled one); "
    'it answers model "auto". Repeat as NAME=POLICY for named policies that requests choose '
    'with model "NAME".',
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option("--watch", is_flag=True, help="Reload the policy when one of its files is saved.")
@click.option(
    "--keys",
    "keys_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Gateway keys file (YAML or JSON with sha256 digests); without it requests need no key.",
)
@click.option(
    "--redis",
    "redis_url",
    envvar="MODELROUTE_REDIS_URL",
    metavar="URL",
    help="Share router state with other replicas through Redis (redis://host:port/db; env "
    "MODELROUTE_REDIS_URL). Default: in-process state.",
)
@click.option("--redis-prefix", default="modelroute:", show_default=True, help="Key prefix in Redis.")
@click.option(
    "--max-body",
    default=1 << 20,
    show_default=True,
    type=click.IntRange(1024),
    help="Largest request body accepted, in bytes (larger ones get 413).",
)
@click.option(
    "--graceful-timeout",
    default=30.0,
    show_default=True,
    type=float,
    help="Seconds to let in-flight requests and streams finish after SIGTERM / Ctrl-C.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@click.option("--access-log", is_flag=True, help="Log every request line (uvicorn's access log).")
@click.option(
    "--hash-key",
    "hash_only",
    is_flag=True,
    help="Print the sha256 of a key read from standard input (or generate a new key) and exit.",
)
def serve(
    policy_args: tuple[str, ...],
    host: str,
    port: int,
    watch: bool,
    keys_file: Path | None,
    redis_url: str | None,
    redis_prefix: str,
    max_body: int,
    graceful_timeout: float,
    log_level: str,
    access_log: bool,
    hash_only: bool,
) -> None:
    """Run the OpenAI-compatible gateway: point OpenAI clients at http://HOST:PORT/v1 with model "auto".

    \b
    Endpoints: POST /v1/chat/completions (JSON and SSE), GET /v1/models, POST /v1/route/explain,
               GET /healthz, GET /metrics (Prometheus).
    Provider API keys come from each provider's api_key_env (see the catalog) and never leave the server.

    \b
    Examples:
      modelroute serve -p policies/ --keys keys.yaml
      modelroute serve --port 9000 --redis redis://127.0.0.1:6379/0 --watch
      modelroute serve --hash-key                      # a new key and the line for the keys file
      printf %s "$KEY" | modelroute serve --hash-key   # the sha256 of an existing key
    """
    if hash_only:
        _hash_key()
        return
    try:  # uvicorn and starlette (the serve extra) are checked for before any work
        import uvicorn  # noqa: F401

        from providers.gateway.app import create_app
    except ModuleNotFoundError as exc:
        click.echo(f"error: `modelroute serve` needs {exc.name}: pip install 'modelroute[serve]'", err=True)
        sys.exit(EXIT_USAGE)
    from engine.api import Engine
    from providers.gateway.keys import KeyRing, KeysFileError

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keys = None
    if keys_file is not None:
        try:
            keys = KeyRing.load(keys_file)
        except KeysFileError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
    state: Any = None
    if redis_url:
        from providers.state.redis_store import RedisStore

        try:
            state = RedisStore(redis_url, prefix=redis_prefix)
        except ValueError as exc:  # redis-py's URL parser: a scheme, port or IPv6 address it cannot read
            raise click.BadParameter(f"{redis_url!r} is not a Redis URL: {exc}", param_hint="--redis") from None
        if not state.ping():
            click.echo("warning: Redis is not reachable now; serving with local state until it is", err=True)
    policy, named = _policies(policy_args)
    if named and state is None:
        from engine.runtime.state import MemoryStore

        state = MemoryStore()  # one router: circuits, health and spend are shared by every policy
    engine = Engine.load(policy_or_default(policy), watch=watch, state=state)
    engines = {name: Engine.load(path, watch=watch, state=state) for name, path in named.items()}
    try:
        app = create_app(engine, keys=keys, max_body=max_body, policies=engines)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    socks: list[socket.socket] = []
    try:
        try:
            socks = listen(host, port)
        except OSError as exc:
            click.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
            sys.exit(EXIT_USAGE if isinstance(exc, socket.gaierror) else EXIT_ERRORS)
        _run(app, socks, engine, engines, keys, host, redis_url, log_level, access_log, graceful_timeout)
    finally:
        for sock in socks:
            sock.close()
        for e in (engine, *engines.values()):
            e.stop()
        close = getattr(state, "close", None)
        if close is not None:
            close()  # a Redis store removes this replica's in-flight counts at once
        if os.environ.get("MODELROUTE_DEBUG"):
            click.echo("gateway stopped", err=True)


def _run(
    app: Any,
    socks: list[socket.socket],
    engine: Any,
    engines: dict[str, Any],
    keys: Any,
    host: str,
    redis_url: str | None,
    log_level: str,
    access_log: bool,
    graceful_timeout: float,
) -> None:
    """Say what is served where, then run uvicorn on the bound sockets until it is stopped."""
    import uvicorn

    from providers.gateway.protocol import http_protocol

    where = "redis" if redis_url else "in-process"
    auth = f"{len(keys)} gateway key(s)" if keys is not None else "NO authentication (no --keys)"
    click.echo(
        f"modelroute gateway: http://{_bound(socks, host)}/v1  policy {engine.policy.entry} "
        f"(version {engine.version[:12]}), {where} state, {auth}",
        err=True,
    )
    for name, e in engines.items():
        click.echo(f'  model "{name}": policy {e.policy.entry} (version {e.version[:12]})', err=True)
    if keys is None and host not in ("127.0.0.1", "localhost", "::1"):
        click.echo("warning: listening beyond loopback without --keys: anyone who can connect can spend", err=True)
    config = uvicorn.Config(
        app,
        host=host,
        port=socks[0].getsockname()[1],
        log_level=log_level,
        access_log=access_log,
        http=http_protocol(),  # uvicorn's, with a response's head and body sent together
        # annotated int, but uvicorn hands it to asyncio.timeout(), which takes fractional seconds
        timeout_graceful_shutdown=graceful_timeout,  # type: ignore[arg-type]
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
        click.echo(f"error: the gateway did not start on {_bound(socks, host)} (see the log above)", err=True)
        sys.exit(EXIT_ERRORS)
