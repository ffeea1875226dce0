"""Gateway test setup shared by the gateway tests: from a policy (and a catalog text) and the FakeServer, a started
gateway app (uvicorn on loopback) with `openai` / `anthropic` SDK clients, readers of its answers, and a throwaway
redis-server (or a skip)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import openai
import pytest

from engine import Engine
from providers.catalog.loader import load_catalog
from providers.gateway.app import create_app
from tests.engines import KINDS, TEST_KEY, engine_for, provider_specs
from tests.fakeserver import FakeServer
from tests.test_gateway import ThreadServer

DROPPED = "x-modelroute-dropped-params"
#: the test catalogs' model shapes (providers of tests/engines.py: acme openai, betacorp anthropic, gammalabs gemini):
#: provider, context, price and latency
SHAPES = {
    "oa": {"provider": "acme", "context": "128k", "price": "{input: 1, output: 4}", "latency_ms": "500"},
    "an": {"provider": "betacorp", "context": "200k", "price": "{input: 3, output: 15}", "latency_ms": "900"},
    "ge": {"provider": "gammalabs", "context": "1M", "price": "{input: 1, output: 2}", "latency_ms": "400"},
    "plain": {"provider": "acme", "context": "128k", "price": "{input: 0.1, output: 0.1}", "latency_ms": "300"},
}


def model_yaml(name: str, like: str, supports: str, **fields: str) -> str:
    """One model of a test catalog's `models:` map: the shape `like` of SHAPES (`fields` override or add to it)
    and `supports` (a YAML list's items)."""
    lines = {**SHAPES[like], "supports": f"[{supports}]", **fields}
    return f"  {name}:\n" + "".join(f"    {key}: {value}\n" for key, value in lines.items())


def write_catalog(folder: Path, text: str) -> Path:
    """The catalog `text` written to `folder`/catalog.yaml, and that path."""
    path = folder / "catalog.yaml"
    path.write_text(text)
    return path


def fake_engine(fake_server: FakeServer, catalog_path: Path, policy: str, keyed: bool = True) -> Engine:
    """An engine over `policy` and the catalog whose providers are the FakeServer (keyed: each has its API key)."""
    return Engine.from_source(
        policy,
        catalog=load_catalog(catalog_path),
        providers=provider_specs(fake_server),
        api_keys=dict.fromkeys(KINDS, TEST_KEY) if keyed else {},
    )


class Gateway:
    """A started gateway over a policy: the engine, an `openai` SDK client and (on demand) an `anthropic` one."""

    def __init__(self, fake_server: FakeServer, catalog_path: Path, policy: str, keyed: bool = True) -> None:
        self.engine = fake_engine(fake_server, catalog_path, policy, keyed)
        self.server = ThreadServer(create_app(self.engine)).__enter__()
        self.openai = openai.OpenAI(base_url=self.server.url + "/v1", api_key="unused", max_retries=0)

    @cached_property
    def anthropic(self) -> Any:
        import anthropic  # only the tests that speak the Messages API need this SDK

        return anthropic.Anthropic(base_url=self.server.url, api_key="unused", max_retries=0)

    def close(self) -> None:
        self.server.__exit__(None, None, None)
        self.engine.close()


@contextmanager
def gateways(fake_server: FakeServer, catalog_path: Path) -> Iterator[Callable[..., Gateway]]:
    """`start(policy, keyed=True)` opens a Gateway; every one opened is closed on leaving."""
    opened: list[Gateway] = []

    def start(policy: str, keyed: bool = True) -> Gateway:
        opened.append(Gateway(fake_server, catalog_path, policy, keyed))
        return opened[-1]

    try:
        yield start
    finally:
        for gw in opened:
            gw.close()


def chat(client: Any, **kw: Any) -> tuple[Any, Any]:
    """A chat completion through the openai SDK: (the parsed answer, the response headers)."""
    raw = client.chat.completions.with_raw_response.create(**kw)
    return raw.parse(), raw.headers


def dropped(headers: Any) -> list[str]:
    """The parameter names the gateway's dropped-params header lists, sorted."""
    value = headers.get(DROPPED)
    return sorted(v.strip() for v in value.split(",")) if value else []


@contextmanager
def app_gateways(fake_server: FakeServer, default_policy: str) -> Iterator[Callable[..., tuple[Engine, str]]]:
    """`start(policy=default_policy, keys=None, setup=None, **engine kw)` opens a gateway app (with the KeyRing
    `keys`) over engine_for(fake_server, policy, **kw), `setup(engine)` run first, and returns (engine, base url);
    every one opened is closed on leaving."""
    opened: list[tuple[Engine, ThreadServer]] = []

    def start(
        policy: str = default_policy, keys: Any = None, setup: Callable[[Engine], object] | None = None, **kw: Any
    ) -> tuple[Engine, str]:
        engine = engine_for(fake_server, policy, **kw)
        if setup is not None:
            setup(engine)
        server = ThreadServer(create_app(engine, keys=keys)).__enter__()
        opened.append((engine, server))
        return engine, server.url

    try:
        yield start
    finally:
        for engine, server in opened:
            server.__exit__(None, None, None)
            engine.close()


def sdk_client(url: str, key: str = "unused", retries: int = 0) -> Any:
    """An `openai` SDK client of the gateway at `url` (no retries unless asked)."""
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=retries)


@contextmanager
def redis_or_skip() -> Iterator[Any]:
    """A started throwaway redis-server (tests/test_redis_store.py's RedisServer), stopped on leaving; the test is
    skipped when no redis-server binary or redis-py is installed."""
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server binary (apt-get install redis-server)")
    pytest.importorskip("redis", reason="redis-py not installed")
    from tests.test_redis_store import RedisServer

    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()
