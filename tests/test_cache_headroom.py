"""The response cache's headroom on a shared Redis (providers/state/responses.py): a real redis-server with a small
`maxmemory` under `noeviction`, answers cached through the gateway (the official openai SDK, the FakeServer
upstream) until Redis passes the cache's share of its memory, in; the cache's writes skipped and counted (in
/metrics too) while the state store stays on Redis and budgets keep reserving, and the writes resuming once memory
frees up and the next `INFO memory` reading (on the cache's injected clock) sees it, out. Also: without headroom a
write Redis refuses (OOM) is skipped, never raised."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")
redis = pytest.importorskip("redis", reason="redis-py not installed (pip install -e '.[test]')")
if shutil.which("redis-server") is None:
    pytest.skip("no redis-server binary (apt-get install redis-server)", allow_module_level=True)
import httpx  # noqa: E402

from providers.execution.cache import CACHE_HEADER, ResponseCache, attach  # noqa: E402
from providers.gateway.app import create_app  # noqa: E402
from providers.state.redis_store import RedisStore  # noqa: E402
from providers.state.responses import HEADROOM, RedisResponses  # noqa: E402
from tests.clocks import Clock  # noqa: E402
from tests.engines import engine_for  # noqa: E402
from tests.fakeserver import FakeServer, Reply  # noqa: E402
from tests.gateway_kit import sdk_client  # noqa: E402
from tests.test_gateway import ThreadServer  # noqa: E402
from tests.test_redis_store import RedisServer  # noqa: E402

POLICY = "set cache.ttl = 1h\nset retry.attempts = 0\notherwise use alpha-mini fallback beta-chat\n"
ANSWER = 200_000  # bytes of each cached answer
ROOM = 4 * 1024 * 1024  # maxmemory: what the empty Redis uses plus this


@pytest.fixture
def small_redis() -> Iterator[tuple[RedisServer, Any]]:
    """A redis-server refusing writes past its maxmemory (noeviction), and an admin client on it."""
    server = RedisServer().start()
    admin = redis.Redis.from_url(server.url)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) + ROOM)
    try:
        yield server, admin
    finally:
        admin.close()
        server.stop()


def used(admin: Any) -> tuple[int, int]:
    info = admin.info("memory")
    return int(info["used_memory"]), int(info["maxmemory"])


def test_the_cache_leaves_redis_room_for_the_shared_state(
    small_redis: tuple[RedisServer, Any], fake_server: FakeServer
) -> None:
    server, admin = small_redis
    store = RedisStore(server.url, prefix="room:")
    clock = Clock()  # the cache's monotonic clock: INFO memory is read again only when the test moves it on
    remote = RedisResponses(store, clock=clock)
    attach(store, ResponseCache(remote))
    fake_server.default = Reply(text="x" * ANSWER)
    engine = engine_for(fake_server, POLICY, state=store)
    try:
        with ThreadServer(create_app(engine)) as gw:
            client = sdk_client(gw.url)

            def ask(i: int) -> str:
                raw = client.chat.completions.with_raw_response.create(
                    model="auto", temperature=0, messages=[{"role": "user", "content": f"question {i}"}]
                )
                return str(raw.headers[CACHE_HEADER])

            for i in range(40):  # 8 MB of answers for 4 MB of room, in one burst between two INFO readings
                assert ask(i) == "miss"
            stored = admin.keys("room:cache:*")
            memory, maxmemory = used(admin)
            assert 0 < len(stored) < 40 and remote.skipped == 40 - len(stored)
            assert memory < maxmemory  # the cache stopped at its share: Redis still takes writes
            assert store.status == "redis"
            ok, _ = store.reserve("daily:team", 0.4, 1.0)  # budgets keep working on the shared Redis
            assert ok and store.settle("daily:team", 0.4, 0.3) == pytest.approx(0.3)
            assert store.spent("daily:team")[0] == pytest.approx(0.3)
            for _ in range(200):  # and the state's own writes keep landing in Redis
                store.reserve("daily:many", 0.001, 1.0)
            assert store.status == "redis"
            assert ask(0) == "hit"  # what was stored is served from Redis
            metrics = httpx.get(gw.url + "/metrics", timeout=10).text
            assert f'modelroute_cache_skipped_total{{operation="write"}} {remote.skipped}' in metrics.splitlines()

            admin.delete(*stored)  # memory frees up (entries expiring, an operator's FLUSH)
            skipped = remote.skipped
            assert ask(100) == "miss" and remote.skipped == skipped + 1  # until the next INFO reading
            clock.t += 1.0
            assert ask(101) == "miss" and remote.skipped == skipped + 1  # written again
            assert ask(101) == "hit" and len(admin.keys("room:cache:*")) == 1
            assert store.status == "redis"
    finally:
        engine.close()
        store.close()


def test_without_headroom_a_refused_write_is_skipped_not_raised(small_redis: tuple[RedisServer, Any]) -> None:
    server, admin = small_redis
    store = RedisStore(server.url, prefix="nohead:")
    remote = RedisResponses(store, headroom=1.0)
    events: list[str] = []
    remote.listen(events.append)
    try:
        for i in range(40):  # past maxmemory: Redis answers OOM, the cache counts it
            remote.put(f"k{i}", "y" * ANSWER, 60.0, lambda: None)
        assert remote.skipped > 0 and events == ["skip_write"] * remote.skipped
        assert 0 < len(admin.keys("nohead:cache:*")) < 40
    finally:
        store.close()


def test_maxmemory_zero_means_no_limit() -> None:
    server = RedisServer().start()
    store = RedisStore(server.url, prefix="free:")
    try:
        remote = RedisResponses(store)
        for i in range(10):
            remote.put(f"k{i}", "z" * ANSWER, 60.0, lambda: None)
        assert remote.skipped == 0 and remote.headroom == HEADROOM
    finally:
        store.close()
        server.stop()
