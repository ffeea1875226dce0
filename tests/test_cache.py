"""The response cache (providers/execution/cache.py): requests through the gateway (the official openai SDK against
uvicorn on loopback, the FakeServer as upstream) and through Engine.complete()/stream() in; what the upstream saw
(one call for two identical requests), the `x-modelroute-cache` header, /metrics, budgets, the LRU's byte bound,
TTL expiry on an injected clock and a cache shared by two gateways on a real redis-server out."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
openai = pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")
import httpx  # noqa: E402

from providers.execution.cache import CACHE_HEADER, ResponseCache, bypass_of  # noqa: E402
from providers.execution.cache_stores import MemoryLRU  # noqa: E402
from providers.gateway.app import create_app  # noqa: E402
from providers.gateway.keyformat import GatewayKey, hash_key  # noqa: E402
from providers.gateway.keys import KeyRing  # noqa: E402
from providers.gateway.run import key_budget_key  # noqa: E402
from tests.clocks import Clock  # noqa: E402
from tests.engines import engine_for  # noqa: E402
from tests.fakeserver import Call, FakeServer, Reply  # noqa: E402
from tests.gateway_kit import app_gateways, redis_or_skip  # noqa: E402
from tests.gateway_kit import sdk_client as client  # noqa: E402
from tests.test_gateway import ThreadServer  # noqa: E402

MSG = [{"role": "user", "content": "what is 2+2?"}]
CACHED = "set cache.ttl = 1h\nset retry.attempts = 0\n"
POLICY = "otherwise use alpha-mini fallback beta-chat\n"
KEYS = {"team-a": "mr-cache-key-a", "team-b": "mr-cache-key-b"}


def keyring(daily: float | None = None) -> KeyRing:
    return KeyRing([GatewayKey(name, hash_key(secret), daily_budget=daily) for name, secret in KEYS.items()])


@pytest.fixture
def gateway(fake_server: FakeServer) -> Iterator[Callable[..., Any]]:
    """`gateway(policy, keys=..., state=...)`: a started gateway; returns (engine, base url)."""
    with app_gateways(fake_server, CACHED + POLICY) as start:
        yield start


def ask(c: Any, **kw: Any) -> tuple[str, httpx.Headers]:
    kw.setdefault("temperature", 0)
    kw.setdefault("messages", MSG)
    raw = c.chat.completions.with_raw_response.create(model="auto", **kw)
    return raw.parse().choices[0].message.content, raw.headers


def upstream_calls(server: FakeServer) -> int:
    return len(server.requests)


def metric(url: str, line: str) -> bool:
    return line in httpx.get(url + "/metrics").text.splitlines()


# ---- through the gateway -----------------------------------------------------------------------------------
def test_two_identical_requests_reach_the_upstream_once(gateway, fake_server: FakeServer) -> None:
    fake_server.default = Reply(text="four")
    _, url = gateway()
    c = client(url)
    first, h1 = ask(c)
    second, h2 = ask(c)
    assert (first, second) == ("four", "four")
    assert (h1[CACHE_HEADER], h2[CACHE_HEADER]) == ("miss", "hit")
    assert upstream_calls(fake_server) == 1
    assert h2["x-modelroute-cost"] == "0" and h2["x-modelroute-model"] == "alpha-mini"
    assert metric(url, 'modelroute_cache_lookups_total{result="hit"} 1')
    assert metric(url, 'modelroute_cache_lookups_total{result="miss"} 1')
    ask(c, messages=[{"role": "user", "content": "another question"}])  # other messages: another key
    ask(c, max_tokens=7)  # another sampling field: another key
    assert upstream_calls(fake_server) == 3


def test_without_cache_ttl_nothing_is_cached(gateway, fake_server: FakeServer) -> None:
    _, url = gateway("set retry.attempts = 0\n" + POLICY)
    c = client(url)
    ask(c)
    _, h2 = ask(c)
    assert upstream_calls(fake_server) == 2 and CACHE_HEADER not in h2


def test_tenants_get_their_own_answers_unless_the_cache_is_shared(gateway, fake_server: FakeServer) -> None:
    _, url = gateway(keys=keyring())
    a, b = client(url, KEYS["team-a"]), client(url, KEYS["team-b"])
    assert ask(a)[1][CACHE_HEADER] == "miss"
    assert ask(b)[1][CACHE_HEADER] == "miss"  # team-b never gets team-a's answer
    assert ask(b)[1][CACHE_HEADER] == "hit"
    assert upstream_calls(fake_server) == 2

    _, shared = gateway(CACHED + "set cache.shared = true\n" + POLICY, keys=keyring())
    ask(client(shared, KEYS["team-a"]))
    assert ask(client(shared, KEYS["team-b"]))[1][CACHE_HEADER] == "hit"
    assert upstream_calls(fake_server) == 3


def test_sampled_requests_are_cached_only_when_the_policy_says_so(gateway, fake_server: FakeServer) -> None:
    _, url = gateway()
    c = client(url)
    for temperature in (0.7, 0.7, None, None):  # unset: OpenAI's default of 1, sampled
        kw = {} if temperature is None else {"temperature": temperature}
        raw = c.chat.completions.with_raw_response.create(model="auto", messages=MSG, **kw)
        assert CACHE_HEADER not in raw.headers
    assert upstream_calls(fake_server) == 4

    _, sampled = gateway(CACHED + "set cache.sampled = true\n" + POLICY)
    c = client(sampled)
    assert ask(c, temperature=0.7)[1][CACHE_HEADER] == "miss"
    assert ask(c, temperature=0.7)[1][CACHE_HEADER] == "hit"
    assert upstream_calls(fake_server) == 5


def test_no_cache_skips_the_lookup_and_stores_the_fresh_answer(gateway, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", [Reply(text="old"), Reply(text="fresh"), Reply(text="unstored")])
    _, url = gateway()
    c = client(url)
    assert ask(c)[0] == "old"
    text, h = ask(c, extra_headers={"cache-control": "no-cache"})
    assert (text, h[CACHE_HEADER]) == ("fresh", "miss")
    text, h = ask(c)
    assert (text, h[CACHE_HEADER]) == ("fresh", "hit")  # the fresh answer was stored
    text, h = ask(c, extra_headers={"cache-control": "no-store"})
    assert text == "unstored" and CACHE_HEADER not in h
    assert ask(c)[0] == "fresh"
    assert upstream_calls(fake_server) == 3
    assert (bypass_of(None), bypass_of("max-age=0, No-Cache"), bypass_of("no-store")) == (True, False, "no-store")


def test_a_cached_stream_is_replayed_as_sse(gateway, fake_server: FakeServer) -> None:
    fake_server.default = Reply(text="a streamed answer in pieces", tool_calls=[Call("weather", {"city": "Paris"})])
    _, url = gateway()
    c = client(url)

    def streamed() -> tuple[str, list[str], str | None, httpx.Headers]:
        raw = c.chat.completions.with_raw_response.create(
            model="auto", messages=MSG, temperature=0, stream=True, stream_options={"include_usage": True}
        )
        text, tools, finish = "", [], None
        for chunk in raw.parse():
            for choice in chunk.choices:
                text += choice.delta.content or ""
                tools += [t.function.name for t in choice.delta.tool_calls or [] if t.function and t.function.name]
                finish = choice.finish_reason or finish
        return text, tools, finish, raw.headers

    first, second = streamed(), streamed()
    assert first[3][CACHE_HEADER] == "miss" and second[3][CACHE_HEADER] == "hit"
    assert second[:3] == first[:3] == ("a streamed answer in pieces", ["weather"], "tool_calls")
    assert second[3]["content-type"].startswith("text/event-stream")
    assert ask(c)[1][CACHE_HEADER] == "hit"  # the same request unstreamed: the same answer, as JSON
    assert upstream_calls(fake_server) == 1


def test_a_hit_costs_nothing_in_budgets_and_makes_no_attempt(gateway, fake_server: FakeServer) -> None:
    engine, url = gateway(CACHED + "budget daily $5\n" + POLICY, keys=keyring(daily=1.0))
    c = client(url, KEYS["team-a"])
    ask(c)
    state, ex = engine.state, engine.executor
    (budget,) = [r.key for r in ex.budgets.applicable(engine.policy.budgets, {})]
    key_budget = key_budget_key("team-a", time.time())
    spent = state.spent(budget), state.spent(key_budget)
    assert spent[0][0] > 0 and spent[1][0] > 0
    _, h = ask(c)
    assert h[CACHE_HEADER] == "hit" and h["x-modelroute-cost"] == "0"
    assert (state.spent(budget), state.spent(key_budget)) == spent  # no spend, no hold left
    row = ex.spending.summary()["keys"]["team-a"]
    assert (row["requests"], row["errors"]) == (2, 0)  # the hit counts as an answered request
    assert metric(url, 'modelroute_attempts_total{model="alpha-mini",outcome="ok"} 1')


def test_each_rule_keeps_its_answers_for_its_own_ttl(gateway, fake_server: FakeServer) -> None:
    """`cache 10m` on one rule, `cache off` on another, the policy's `set cache.ttl = 1h` for the rest."""
    rules = 'when tier == "short" use alpha-mini cache 10m\nwhen tier == "off" use alpha-mini cache off\n'
    engine, url = gateway(CACHED + rules + POLICY)
    clock = Clock()
    engine.executor.cache = ResponseCache(clock=clock)
    assert [engine.decide("hi", tier=t).cache_ttl for t in ("short", "off", "other")] == [600.0, 0.0, None]
    c = client(url)

    def cache(tier: str) -> str | None:
        return ask(c, extra_headers={"x-route-tier": tier})[1].get(CACHE_HEADER)

    assert [cache("short"), cache("short"), cache("other"), cache("other")] == ["miss", "hit", "miss", "hit"]
    assert [cache("off"), cache("off")] == [None, None]  # neither read nor written
    assert upstream_calls(fake_server) == 4
    clock.t += 601  # past the rule's 10 minutes, within the policy's hour
    assert [cache("short"), cache("other")] == ["miss", "hit"]
    clock.t += 3000  # past the hour (and the short rule's second answer's 10 minutes)
    assert [cache("short"), cache("other")] == ["miss", "miss"]
    assert upstream_calls(fake_server) == 7


# ---- through the Python API ------------------------------------------------------------------------------
def test_the_ttl_expires_on_the_cache_clock_and_cache_false_bypasses(fake_server: FakeServer) -> None:
    clock = Clock()
    engine = engine_for(fake_server, "set cache.ttl = 10m\n" + POLICY)
    engine.executor.cache = ResponseCache(clock=clock)
    try:
        assert engine.complete("hi", temperature=0).text == "ok"
        hit = engine.complete("hi", temperature=0)
        assert hit.attempts == [] and hit.cost == 0.0 and upstream_calls(fake_server) == 1
        clock.t += 599
        engine.complete("hi", temperature=0)
        assert upstream_calls(fake_server) == 1
        clock.t += 2  # past the 10 minutes
        engine.complete("hi", temperature=0)
        assert upstream_calls(fake_server) == 2
        engine.complete("hi", temperature=0, cache=False)
        assert upstream_calls(fake_server) == 3
        assert engine.executor.cache.hits == 2
    finally:
        engine.close()


def test_engine_stream_replays_a_cached_answer(fake_server: FakeServer) -> None:
    fake_server.default = Reply(text="streamed once")
    engine = engine_for(fake_server, CACHED + POLICY)
    try:
        assert engine.complete("hi", temperature=0).text == "streamed once"
        with engine.stream("hi", temperature=0) as s:
            assert s.text() == "streamed once"
            assert s.decision.model == "alpha-mini" and s.attempts == []
        assert upstream_calls(fake_server) == 1
    finally:
        engine.close()


def test_the_memory_lru_is_bounded_in_bytes() -> None:
    lru = MemoryLRU(max_bytes=100)
    lru.put("a", "x" * 40)  # 41 bytes
    lru.put("b", "y" * 40)
    assert lru.get("a") is not None  # a is now the most recently used
    lru.put("c", "z" * 40)  # 123 bytes: the least recently used (b) goes
    assert (lru.get("b"), lru.bytes, len(lru)) == (None, 82, 2)
    lru.put("big", "w" * 200)  # larger than the whole cache: not kept, nothing evicted for it
    assert lru.get("big") is None and len(lru) == 2


def test_cache_max_bytes_bounds_the_engine_cache(fake_server: FakeServer) -> None:
    engine = engine_for(fake_server, CACHED + "set cache.max_bytes = 1\n" + POLICY)
    try:
        engine.complete("hi", temperature=0)
        engine.complete("hi", temperature=0)
        assert upstream_calls(fake_server) == 2 and len(engine.executor.cache.memory) == 0
    finally:
        engine.close()


# ---- Redis ---------------------------------------------------------------------------------------------------
def test_two_gateways_on_one_redis_share_answers(gateway, fake_server: FakeServer, request) -> None:
    with redis_or_skip() as server:
        from providers.state.redis_store import RedisStore
        from tests.test_redis_store import free_port

        prefix = f"cache{abs(hash(request.node.nodeid)) % 10**8}:"
        stores = [RedisStore(server.url, prefix=prefix) for _ in range(2)]
        (_, one), (_, two) = (gateway(state=store) for store in stores)
        assert ask(client(one))[1][CACHE_HEADER] == "miss"
        assert ask(client(two))[1][CACHE_HEADER] == "hit"
        assert upstream_calls(fake_server) == 1
        for store in stores:
            store.close()
    # Redis unreachable: answers are cached in the replica's memory
    down = RedisStore(f"redis://127.0.0.1:{free_port()}/0", prefix="down:")
    _, url = gateway(state=down)
    ask(client(url))
    assert ask(client(url))[1][CACHE_HEADER] == "hit"
    assert upstream_calls(fake_server) == 2
    down.close()


ENDPOINTS: dict[str, tuple[str, dict[str, Any], str]] = {  # endpoint: (path, body, the stream's last frame)
    "messages": ("/v1/messages", {"max_tokens": 50, "messages": MSG}, "message_stop"),
    "responses": ("/v1/responses", {"input": "what is 2+2?"}, "response.completed"),
    "completions": ("/v1/completions", {"prompt": "2+2="}, "[DONE]"),
}


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_every_endpoint_replays_its_own_stream_format(gateway, fake_server: FakeServer, endpoint: str) -> None:
    fake_server.default = Reply(text="four, streamed")
    _, url = gateway()
    path, body, last = ENDPOINTS[endpoint]
    payload = {"model": "auto", "temperature": 0, "stream": True, **body}
    seen = []
    for _ in range(2):
        with httpx.stream("POST", url + path, json=payload, timeout=10) as r:
            assert r.status_code == 200, r.read()
            seen.append((r.headers[CACHE_HEADER], r.read().decode()))
    assert [status for status, _ in seen] == ["miss", "hit"]
    assert all(last in sse for _, sse in seen)  # the endpoint's own end frames, replay included
    assert "four, streamed" in seen[1][1]  # replayed as one delta
    assert upstream_calls(fake_server) == 1


def test_embeddings_are_cached_without_a_temperature(fake_server: FakeServer) -> None:
    from tests.embedserver import EmbedServer
    from tests.test_gateway_embeddings import POLICY as EMBED_POLICY
    from tests.test_gateway_embeddings import make_engine

    with EmbedServer() as upstream:
        engine = make_engine(upstream, "set cache.ttl = 1h\n" + EMBED_POLICY)
        with ThreadServer(create_app(engine)) as server:
            c = client(server.url)

            def embed(**kw: Any) -> tuple[Any, httpx.Headers]:
                raw = c.embeddings.with_raw_response.create(model="auto", input=["hello"], **kw)
                return raw.parse(), raw.headers

            (first, h1), (second, h2) = embed(encoding_format="float"), embed(encoding_format="float")
            assert (h1[CACHE_HEADER], h2[CACHE_HEADER]) == ("miss", "hit")
            assert second.data[0].embedding == first.data[0].embedding and h2["x-modelroute-cost"] == "0"
            assert embed()[1][CACHE_HEADER] == "miss"  # base64: another answer
            assert embed(dimensions=3)[1][CACHE_HEADER] == "miss"
            assert len(upstream.requests) == 3
        engine.close()


# ---- issue 18: capacity and a full Redis -----------------------------------------------------------------------
def test_a_large_answer_is_stored_once_so_the_bound_holds_what_it_says(fake_server: FakeServer) -> None:
    fake_server.default = Reply(text="é" * 500_000)  # 1 MB as UTF-8; stored once, not escaped, not repeated
    engine = engine_for(fake_server, CACHED + "set cache.max_bytes = 3000000\n" + POLICY)
    try:
        assert engine.complete("hi", temperature=0).text == "é" * 500_000
        hit = engine.complete("hi", temperature=0)
        assert hit.text == "é" * 500_000 and hit.attempts == [] and upstream_calls(fake_server) == 1
        assert 1_000_000 < engine.executor.cache.memory.bytes < 1_100_000
    finally:
        engine.close()


def test_policies_sharing_a_cache_keep_the_largest_bound() -> None:
    cache = ResponseCache()

    def run(entry: str, max_bytes: int) -> Any:
        return SimpleNamespace(policy=SimpleNamespace(entry=entry, settings={"cache.max_bytes": max_bytes}))

    cache.bound(run("big.mr", 5000))
    cache.memory.put("k", "v" * 3000)
    cache.bound(run("small.mr", 100))  # another policy's smaller bound does not shrink the shared LRU
    assert cache.memory.max_bytes == 5000 and len(cache.memory) == 1
    cache.bound(run("big.mr", 1000))  # a reload of the policy with the largest bound does
    assert cache.memory.max_bytes == 1000 and len(cache.memory) == 0


def test_a_full_redis_skips_cache_writes_and_keeps_shared_state(fake_server: FakeServer, request) -> None:
    with redis_or_skip() as server:
        import redis

        from providers.state.redis_store import RedisStore
        from providers.state.responses import RedisResponses

        admin = redis.Redis.from_url(server.url)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) + 2 * 1024 * 1024)
        prefix = f"full{abs(hash(request.node.nodeid)) % 10**8}:"
        store = RedisStore(server.url, prefix=prefix)
        fake_server.default = Reply(text="x" * 200_000)
        engine = engine_for(fake_server, CACHED + POLICY, state=store)
        try:
            for i in range(25):
                engine.complete(f"question {i}", temperature=0)
            remote = engine.executor.cache.remote
            assert isinstance(remote, RedisResponses) and remote.skipped > 0  # writes past the headroom skipped
            keys = admin.keys(f"{prefix}cache:*")
            assert 0 < len(keys) < 25 and all(admin.pttl(k) > 0 for k in keys)  # every entry expires
            info = admin.info("memory")
            assert int(info["used_memory"]) < int(info["maxmemory"])  # the cache left the shared state its room
            assert store.status == "redis" and store.reserve("daily:k", 0.5, 1.0)[0]  # budgets stay on Redis
            engine.complete("question 0", temperature=0)  # what was stored is served from Redis
            assert engine.executor.cache.hits == 1 and store.status == "redis"
        finally:
            engine.close()
            store.close()
            admin.close()
