"""The `modelroute serve` command: command-line options in, a call to the gateway's run_server
(providers.gateway.server) out; also `--hash-key`, which turns a gateway key into the sha256 line of a keys file.
The gateway (and starlette, uvicorn, redis) is imported only when the command runs."""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from engine.cli.common import EXIT_BUG, EXIT_ERRORS, EXIT_USAGE, policy_or_default, print_diagnostics
from engine.cli.options import extension_options
from engine.diagnostics import PolicyError
from engine.runtime.embedder import Embedder


def _hash_key(hash_key: Callable[[str], str], new_key: Callable[[], str]) -> None:
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
    "--hold-lease",
    default=30.0,
    show_default=True,
    type=click.FloatRange(1.0),
    help="With --redis: seconds a replica's budget holds outlive its last heartbeat (a killed replica's holds are "
    "released within this time).",
)
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
    "--header-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Seconds a client has to send a whole request head (from connecting, or from the head's first byte on a "
    "kept-alive connection); slower connections are closed.",
)
@click.option(
    "--body-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Seconds a request body has to arrive whole once its head is in; slower ones get 408 and are closed.",
)
@click.option(
    "--timeout-keep-alive",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Seconds an idle kept-alive connection stays open after a response.",
)
@click.option(
    "--limit-concurrency",
    default=1000,
    show_default=True,
    type=click.IntRange(1),
    help="Most requests in progress at once (a stream counts until it ends); more get 503 server_busy.",
)
@click.option(
    "--max-response-bytes",
    default=32 << 20,
    show_default=True,
    type=click.IntRange(1),
    help="Largest upstream answer accepted, in bytes (a stream counts in total), for providers whose catalog entry "
    "sets no max_response_bytes; a larger one fails that model and the next one of the plan is tried.",
)
@click.option(
    "--warmup",
    is_flag=True,
    envvar="MODELROUTE_WARMUP",
    help="Before serving, probe each model the policies use with a one-token request and log the result per model "
    "(env MODELROUTE_WARMUP=1).",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    envvar="MODELROUTE_WORKERS",
    type=click.IntRange(1),
    help="Processes serving on the same port (one per CPU core: the GIL keeps one process to one core); more than "
    "one needs --redis, through which they share circuits, budgets and in-flight counts (env MODELROUTE_WORKERS).",
)
@click.option(
    "--tokenizer",
    metavar="tiktoken:ENCODING",
    help="Count text tokens exactly (e.g. tiktoken:cl100k_base, from local files: pip install 'modelroute[tokens]') "
    "for policies that set no tokens.estimator; default: one token per four characters.",
)
@extension_options  # --functions, --rankers, --embedder
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
    hold_lease: float,
    max_body: int,
    graceful_timeout: float,
    log_level: str,
    access_log: bool,
    header_timeout: float,
    body_timeout: float,
    timeout_keep_alive: float,
    limit_concurrency: int,
    max_response_bytes: int,
    warmup: bool,
    workers: int,
    tokenizer: str | None,
    embedder: Embedder | None,
    functions: Any,
    rankers: Any,
    hash_only: bool,
) -> None:
    """Run the OpenAI-compatible gateway: point OpenAI clients at http://HOST:PORT/v1 with model "auto".

    \b
    Endpoints: POST /v1/chat/completions, /v1/messages (Anthropic), /v1/messages/count_tokens,
               /v1/responses, /v1/completions, /v1/embeddings (JSON, or SSE when streamed);
               GET /v1/models, /v1/models/{id}; POST /v1/route/explain; GET /healthz, /metrics (Prometheus).
    Provider API keys come from each provider's api_key_env (see the catalog) and never leave the server.

    \b
    Examples:
      modelroute serve -p policies/ --keys keys.yaml
      modelroute serve --port 9000 --redis redis://127.0.0.1:6379/0 --watch
      modelroute serve --workers 4 --redis redis://127.0.0.1:6379/0   # 4 processes, one port
      modelroute serve --warmup                        # probe every model once before serving
      modelroute serve --tokenizer tiktoken:cl100k_base  # exact token counts (the tokens extra)
      modelroute serve --embedder myrouting:embed      # semantic tasks embedded by your own embedder
      modelroute serve --functions myrouting:FUNCTIONS  # a policy that calls complexity()
      modelroute serve --hash-key                      # a new key and the line for the keys file
      printf %s "$KEY" | modelroute serve --hash-key   # the sha256 of an existing key
    """
    # the CLI's one edge into the gateway, taken when the command runs
    from providers.gateway.server import ServeError, ServeOptions, hash_key, new_key, run_server

    if hash_only:
        _hash_key(hash_key, new_key)
        return
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    policy, named = _policies(policy_args)
    options = ServeOptions(
        policy=policy_or_default(policy),
        named=named,
        host=host,
        port=port,
        watch=watch,
        keys_file=keys_file,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        hold_lease=hold_lease,
        max_body=max_body,
        graceful_timeout=graceful_timeout,
        log_level=log_level,
        access_log=access_log,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        timeout_keep_alive=timeout_keep_alive,
        limit_concurrency=limit_concurrency,
        max_response_bytes=max_response_bytes,
        warmup=warmup,
        workers=workers,
        tokenizer=tokenizer,
        embedder=embedder,
        functions=functions,
        rankers=rankers,
    )

    def report(exc: BaseException) -> int:
        """In a worker process (--workers): what stopped it from serving, said as this command says it."""
        if isinstance(exc, ServeError):
            if exc.param is not None:
                click.BadParameter(str(exc), param_hint=exc.param).show()
                return EXIT_USAGE
            click.echo(f"error: {exc}", err=True)
            return EXIT_ERRORS if exc.kind == "error" else EXIT_USAGE
        if isinstance(exc, PolicyError):
            print_diagnostics(exc, Console(stderr=True))
            return EXIT_ERRORS
        if os.environ.get("MODELROUTE_DEBUG"):
            traceback.print_exception(exc)
        click.echo(
            f"internal error: {type(exc).__name__}: {exc} (this is a bug in modelroute: please report it)", err=True
        )
        return EXIT_BUG

    try:
        run_server(options, lambda line: click.echo(line, err=True), report)
    except ServeError as exc:
        if exc.param is not None:
            raise click.BadParameter(str(exc), param_hint=exc.param) from None
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_ERRORS if exc.kind == "error" else EXIT_USAGE)
