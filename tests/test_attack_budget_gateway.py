"""Budget attacks through the gateway: hostile or careless OpenAI requests in, 20 at a time, against the gateway app
`modelroute serve` runs (in memory, or two replicas sharing one redis-server) over a loopback upstream that bills
every token it is sent (tests/fakeserver.py in billing mode); what the upstream billed and the budget's recorded
spend out: neither exceeds the limit by more than one request's cost, and nothing stays in flight or held.

The attacks of issue 14: a `max_tokens` attribute (`x-route-max-tokens`, `metadata.max_tokens`) meant to shrink the
hold while the body's max_tokens goes upstream, a body with no max_tokens at all, 700 KiB of tools, images, an
upstream that reports no usage (streamed and not), `n` answers, a gateway key's daily budget, and a per-user budget
whose key binds `user` while the client rotates it. Each case's limit is 3.5 times what one such request is billed
(measured first through a gateway with a budget that never binds), so most requests must be refused before any
call (a spoofed attribute and `n` > 1 are refused with a 400 before any call). Last, a Redis reset (FLUSHALL) under
the two replicas: each answers one request per budget until all have re-published their spend (docs/state.md).
tests/test_budget_attacks.py attacks the same budgets through Engine.complete.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from engine.runtime.budget import bucket

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
openai = pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")

from providers.gateway.app import create_app  # noqa: E402
from providers.gateway.keys import GatewayKey, KeyRing, hash_key  # noqa: E402
from providers.gateway.run import key_budget_key  # noqa: E402
from tests.engines import engine_for  # noqa: E402
from tests.fakeserver import Billing, FakeServer, Reply  # noqa: E402
from tests.test_budget_attacks import IMAGES, TOOLS  # noqa: E402
from tests.test_gateway import ThreadServer  # noqa: E402
from tests.test_redis_store import REDIS_BIN, RedisServer, clear_prefix  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

CONCURRENCY = 20
KEY = "mr-budget-gateway-attack"
MSG = [{"role": "user", "content": "Answer at length, please."}]
HOLDS = 3.5  # each case's limit, in requests (as billed)


def policy(model: str, limit: float | None, per: str = "") -> str:
    budget = f"budget daily ${limit:.8f}{per}\n" if limit is not None else ""
    return f"set retry.attempts = 0\nset budget.max_output_tokens = 1500\n{budget}otherwise use {model}\n"


@dataclass
class Attack:
    """One attack: the request body, its headers, what the upstream does, and which budget it targets."""

    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    reply: int = 100_000  # the Reply's output tokens: the upstream bills min(this, the body's max_tokens)
    omit_usage: bool = False
    budget: str = "policy"  # policy | key | user
    rotate_user: bool = False
    model: str = "alpha-mini"  # an OpenAI-format model of the fixture catalog (128k context)
    refused: str | None = None  # the error code every request gets (400: nothing is sent, nothing spent)


BIG = {"messages": MSG, "max_tokens": 4000}
ATTACKS = {
    "spoofed-max-tokens-header": Attack(BIG, {"x-route-max-tokens": "1"}, refused="reserved_attribute"),
    "spoofed-max-tokens-metadata": Attack({**BIG, "metadata": {"max_tokens": 1}}, refused="reserved_attribute"),
    "max-tokens-4000": Attack(BIG),
    "no-max-tokens": Attack({"messages": MSG}),
    # 700 KiB of tools (about 180k tokens) on a long-context model (Gemini's wire format)
    "700-kib-of-tools": Attack({"messages": MSG, "tools": TOOLS, "max_tokens": 200}, model="gamma-long"),
    "image-data-urls": Attack({"messages": IMAGES, "max_tokens": 100}, model="alpha-large"),
    "no-usage": Attack({"messages": MSG, "max_tokens": 300}, omit_usage=True),
    "no-usage-streamed": Attack({"messages": MSG, "max_tokens": 300, "stream": True}, omit_usage=True),
    "n-answers": Attack({"messages": MSG, "max_tokens": 300, "n": 3}),
    "key-daily-budget": Attack({"messages": MSG, "tools": TOOLS[:10], "max_tokens": 1000}, budget="key"),
    "per-user-rotating": Attack({"messages": MSG, "max_tokens": 1000}, budget="user", rotate_user=True),
}


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer | None]:
    if REDIS_BIN is None:
        yield None
        return
    server = RedisServer().start()
    yield server
    server.stop()


class Fleet:
    """Gateway replicas over one policy: in memory (one) or on Redis (two, one shared redis-server)."""

    def __init__(
        self, server: FakeServer, text: str, keys: KeyRing, redis_url: str | None, prefix: str, lease: float = 30.0
    ) -> None:
        self.engines, self.servers, self.stores = [], [], []
        for _ in range(2 if redis_url else 1):
            state = None
            if redis_url:
                from providers.state.redis_store import RedisStore

                state = RedisStore(redis_url, prefix=prefix, hold_lease=lease)
                self.stores.append(state)
            engine = engine_for(server, text, state=state)
            self.engines.append(engine)
            self.servers.append(ThreadServer(create_app(engine, keys=keys)).__enter__())
        self.urls = [s.url + "/v1" for s in self.servers]

    def close(self) -> None:
        for s in self.servers:
            s.__exit__()
        for e in self.engines:
            e.close()
        for store in self.stores:
            store.close()

    def spent(self, key: str) -> tuple[float, float]:
        state: Any = self.engines[0].state  # an ExecutionStore: MemoryStore or RedisStore
        return state.spent(key)

    def idle(self) -> bool:
        for store in self.stores:
            store.flush()
        return all(e.state.in_flight(m) == 0 for e in self.engines for m in e.policy.models)


def keyring(attack: Attack, limit: float | None) -> KeyRing:
    attrs = {"user": "alice"} if attack.budget == "user" else {}
    daily = limit if attack.budget == "key" else None
    return KeyRing([GatewayKey("team", hash_key(KEY), attrs, daily_budget=daily)])


def fire(urls: list[str], attack: Attack, n: int) -> list[Any]:
    """`n` concurrent requests through the official SDK, spread over the replicas; (status, body) of each."""

    async def go() -> list[Any]:
        clients = [openai.AsyncOpenAI(base_url=u, api_key=KEY, max_retries=0, timeout=30) for u in urls]

        async def one(i: int) -> tuple[int, Any]:
            body = dict(attack.body)
            if attack.rotate_user:
                body["user"] = f"user-{i}"
            extra = {k: v for k, v in body.items() if k not in ("messages", "stream")}
            client = clients[i % len(clients)]
            try:
                if body.get("stream"):
                    stream = await client.chat.completions.create(
                        model="auto",
                        messages=body["messages"],
                        stream=True,
                        extra_body=extra,
                        extra_headers=attack.headers,
                    )
                    async for _ in stream:
                        pass
                    return 200, None
                r = await client.chat.completions.with_raw_response.create(
                    model="auto", messages=body["messages"], extra_body=extra, extra_headers=attack.headers
                )
                return r.http_response.status_code, r.parse()
            except openai.APIStatusError as exc:
                return exc.status_code, exc.body

        try:
            return list(await asyncio.gather(*(one(i) for i in range(n))))
        finally:
            for c in clients:
                await c.close()

    return asyncio.run(go())


def billed(engine: Any, bills: list[Any]) -> list[float]:
    """What the upstream billed each answered request, in USD at the catalog's prices."""
    by_id = {e.spec.id: e for e in engine.policy.models.values()}
    return [b.input_tokens * by_id[b.model].ip + b.output_tokens * by_id[b.model].op for b in bills]


def budget_keys(attack: Attack, start: float, end: float) -> list[str]:
    """The spend keys of the attacked budget (two when the storm crossed midnight UTC)."""
    if attack.budget == "key":
        return sorted({key_budget_key("team", t) for t in (start, end)})
    suffix = ":user=alice" if attack.budget == "user" else ""  # the key's bound user, whatever the client sent
    return sorted({f"daily:{bucket('daily', t)}{suffix}" for t in (start, end)})


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest, redis_server: RedisServer | None) -> Iterator[tuple[str | None, str]]:
    """(Redis URL or None, key prefix): one replica in memory, or two on the module's redis-server."""
    if request.param == "memory":
        yield None, ""
        return
    if redis_server is None:
        pytest.skip("no redis-server binary (apt-get install redis-server)")
    pytest.importorskip("redis", reason="redis-py not installed (pip install -e '.[test]')")
    prefix = f"g{abs(hash(request.node.nodeid)) % 10**8}:"
    yield redis_server.url, prefix
    clear_prefix(redis_server.url, prefix)


def redis_holds(url: str, prefix: str) -> dict[Any, Any]:
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return client.hgetall(prefix + "holds")
    finally:
        client.close()


@pytest.mark.parametrize("name", list(ATTACKS))
def test_an_attack_through_the_gateway_overspends_at_most_one_request(
    name: str, backend: tuple[str | None, str], fake_server: FakeServer
) -> None:
    attack = ATTACKS[name]
    redis_url, prefix = backend
    fake_server.billing = Billing(omit_usage=attack.omit_usage)
    fake_server.default = Reply(output_tokens=attack.reply)
    per = " per user" if attack.budget == "user" else ""
    limit = 1e6  # the probe's: never binding
    if attack.refused is None:  # one request through a gateway with a budget that never binds: its bill
        probe_policy = policy(attack.model, None if attack.budget == "key" else limit, per)
        probe = Fleet(fake_server, probe_policy, keyring(attack, limit), None, "")
        try:
            assert [status for status, _ in fire(probe.urls, attack, 1)] == [200]
        finally:
            probe.close()
        [one] = billed(probe.engines[0], fake_server.bills)
        limit = HOLDS * one
    first = len(fake_server.bills)
    policy_limit = limit if attack.budget in ("policy", "user") else None
    fleet = Fleet(fake_server, policy(attack.model, policy_limit, per), keyring(attack, limit), redis_url, prefix)
    try:
        start = time.time()
        answers = fire(fleet.urls, attack, CONCURRENCY)
        end = time.time()
        wait_until(fleet.idle, "every request to leave the in-flight counts")
        spent = held = 0.0
        for key in budget_keys(attack, start, end):
            s, h = fleet.spent(key)
            spent, held = spent + s, held + h
        costs = billed(fleet.engines[0], fake_server.bills[first:])
        statuses = sorted(status for status, _ in answers)
        if attack.refused is not None:
            assert statuses == [400] * CONCURRENCY
            assert {body["code"] for _, body in answers} == {attack.refused}
            assert not fake_server.requests and costs == [] and spent == held == 0.0
            return
        assert set(statuses) <= {200, 429}, answers
        assert 0 < statuses.count(200) < CONCURRENCY, statuses  # the budget was binding
        assert len(costs) == statuses.count(200)
        worst = max(costs)
        assert sum(costs) <= limit + worst + 1e-12, (sum(costs), limit, worst)
        assert spent <= limit + worst + 1e-12, (spent, limit, worst)
        assert spent == pytest.approx(sum(costs), rel=0.05)  # settled at the bill (or, without usage, near it)
        assert held == pytest.approx(0.0, abs=1e-12)
        if redis_url:
            assert redis_holds(redis_url, prefix) == {}
        sent = [r.body for r in fake_server.requests]
        if "max_tokens" not in attack.body:  # the gateway sent budget.max_output_tokens itself: a true bound
            assert {b.get("max_completion_tokens") for b in sent} == {1500}
        if "tools" in attack.body:
            assert min(b.input_tokens for b in fake_server.bills) > 1500 * len(attack.body["tools"])  # tools billed
    finally:
        fleet.close()


def test_after_a_redis_reset_each_gateway_replica_answers_one_request_per_budget_until_all_republished(
    redis_server: RedisServer | None, fake_server: FakeServer
) -> None:
    """FLUSHALL under two gateway replicas: during the grace that follows (docs/state.md) each replica answers one
    request per budget key and refuses the others with a 429 that says why (never blocking its event loop); the
    spend stays within the limit plus one request per replica, and requests go on after the grace."""
    if redis_server is None:
        pytest.skip("no redis-server binary (apt-get install redis-server)")
    redis = pytest.importorskip("redis", reason="redis-py not installed (pip install -e '.[test]')")
    fake_server.billing = Billing()
    fake_server.default = Reply(output_tokens=100_000)
    attack = Attack({"messages": MSG, "max_tokens": 1000})
    probe = Fleet(fake_server, policy(attack.model, 1e6), keyring(attack, None), None, "")
    try:
        fire(probe.urls, attack, 1)
    finally:
        probe.close()
    [one] = billed(probe.engines[0], fake_server.bills)
    limit, first = 6.5 * one, len(fake_server.bills)
    prefix = "reset-gw:"
    fleet = Fleet(fake_server, policy(attack.model, limit), keyring(attack, None), redis_server.url, prefix, lease=6.0)
    try:
        start = time.time()
        assert [status for status, _ in fire(fleet.urls, attack, 2)] == [200, 200]  # one on each replica
        client = redis.Redis.from_url(redis_server.url)
        try:
            client.flushall()
        finally:
            client.close()
        answers = fire(fleet.urls, attack, CONCURRENCY)
        statuses = sorted(status for status, _ in answers)
        assert set(statuses) <= {200, 429} and statuses.count(200) > 0, statuses
        waiting = [body for status, body in answers if status == 429 and "Redis reset" in body["message"]]
        assert waiting, answers  # refused for the grace, not for the limit: 2 + 2 requests fit in 6.5
        wait_until(lambda: all(store.grace_left() == 0 for store in fleet.stores), "the grace to end", timeout=30)
        fire(fleet.urls, attack, CONCURRENCY)  # after it: as usual, up to the limit
        wait_until(fleet.idle, "every request to leave the in-flight counts")
        costs = billed(fleet.engines[0], fake_server.bills[first:])
        keys = budget_keys(attack, start, time.time())  # two when the test crossed midnight UTC: a limit each
        assert sum(costs) <= len(keys) * limit + len(fleet.stores) * max(costs) + 1e-12, (sum(costs), limit)
        figures = [fleet.spent(key) for key in keys]
        spent, held = sum(f[0] for f in figures), sum(f[1] for f in figures)
        assert spent == pytest.approx(sum(costs)) and held == pytest.approx(0.0, abs=1e-12)
    finally:
        fleet.close()
        clear_prefix(redis_server.url, prefix)
