"""The `modelroute serve` command: command-line options in, the OpenAI-compatible gateway (engine/gateway.py)
running under uvicorn out; also `--hash-key`, which turns a gateway key into the sha256 line of a keys file.
Registers itself on `engine.cli.main` when imported; starlette, uvicorn and redis are imported only when run."""

from __future__ import annotations

import gc
import logging
import os
import re
import sys
from pathlib import Path

import click

from engine.cli import EXIT_USAGE, default_policy, main


def _hash_key() -> None:
    from engine.gateway_auth import hash_key, new_key

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


@main.command()
@click.option(
    "-p",
    "--policy",
    "policy_args",
    multiple=True,
    metavar="[NAME=]POLICY",
    help="A .route file or a directory with main.route (default: ./policies, else the bundled one); "
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
    try:
        import uvicorn

        from engine.gateway import create_app
    except ModuleNotFoundError as exc:
        click.echo(f"error: `modelroute serve` needs {exc.name}: pip install 'modelroute[serve]'", err=True)
        sys.exit(EXIT_USAGE)
    from engine.api import Engine
    from engine.gateway_auth import KeyRing, KeysFileError

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keys = None
    if keys_file is not None:
        try:
            keys = KeyRing.load(keys_file)
        except KeysFileError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
    state = None
    if redis_url:
        from providers.redis_store import RedisStore

        state = RedisStore(redis_url, prefix=redis_prefix)
        if not state.ping():
            click.echo("warning: Redis is not reachable now; serving with local state until it is", err=True)
    policy, named = _policies(policy_args)
    if named and state is None:
        from engine.state import MemoryStore

        state = MemoryStore()  # one router: circuits, health and spend are shared by every policy
    engine = Engine.load(policy or default_policy(), watch=watch, state=state)
    engines = {name: Engine.load(path, watch=watch, state=state) for name, path in named.items()}
    try:
        app = create_app(engine, keys=keys, max_body=max_body, policies=engines)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    where = "redis" if redis_url else "in-process"
    auth = f"{len(keys)} gateway key(s)" if keys is not None else "NO authentication (no --keys)"
    click.echo(
        f"modelroute gateway: http://{host}:{port}/v1  policy {engine.policy.entry} "
        f"(version {engine.version[:12]}), {where} state, {auth}",
        err=True,
    )
    for name, e in engines.items():
        click.echo(f'  model "{name}": policy {e.policy.entry} (version {e.version[:12]})', err=True)
    if keys is None and host not in ("127.0.0.1", "localhost", "::1"):
        click.echo("warning: listening beyond loopback without --keys: anyone who can connect can spend", err=True)
    from engine.gateway_http import http_protocol

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        http=http_protocol(),  # uvicorn's, with a response's head and body sent together
        timeout_graceful_shutdown=graceful_timeout,
        lifespan="on",
        server_header=False,
        proxy_headers=False,
    )
    gc.collect()
    gc.freeze()  # the policy, catalog and modules loaded so far are long-lived: keep them out of every GC pass
    try:
        uvicorn.Server(config).run()
    finally:
        for e in (engine, *engines.values()):
            e.stop()
        close = getattr(state, "close", None)
        if close is not None:
            close()  # a Redis store removes this replica's in-flight counts at once
        if os.environ.get("MODELROUTE_DEBUG"):
            click.echo("gateway stopped", err=True)
