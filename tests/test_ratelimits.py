"""Rate limits (issue 18): the `limit` statement (parse, format, compile, diagnostics), the GCRA limiter in memory
under threads and shared by two replicas on one real redis-server, and the gateway's 429 with `Retry-After` and
OpenAI's x-ratelimit-* headers through the official openai SDK, the key's rpm / tpm, the token correction at the
end of a request and `ratelimit.left` routing. Every clock is injected: nothing waits for time to pass."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from engine import PolicyError, compile_source
from engine.language.fmt import format_source
from engine.language.nodes import RateLimit
from engine.language.parse import parse
from engine.runtime.settings import RateLimitSpec
from providers.state.ratelimit import PERIOD, Check, MemoryLimiter, RedisLimiter, attach
from tests.clocks import Clock
from tests.engines import CATALOG

HEAD = f'catalog "{CATALOG}"\n'


def run_together(target: Callable[..., None], args: list[tuple[Any, ...]]) -> None:
    """Run `target(*a)` on one thread per entry of `args` and wait for them all."""
    threads = [threading.Thread(target=target, args=a) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# ---- the language ----------------------------------------------------------------------------------------------


def test_limit_statements_parse_format_and_compile() -> None:
    src = "limit   60 rpm per key\nlimit 100k  tpm per user\nlimit 1000 rpm\notherwise use alpha-mini\n"
    assert (
        format_source(src)
        == "limit 60 rpm per key\nlimit 100k tpm per user\nlimit 1000 rpm\notherwise use alpha-mini\n"
    )
    assert parse(src, "p.route").body == parse(src, "p.route", fast=False).body
    policy = compile_source(HEAD + src)
    assert policy.settings.limits == (
        RateLimitSpec("rpm", 60, "key", "<string>:2"),
        RateLimitSpec("tpm", 100_000, "user", "<string>:3"),
        RateLimitSpec("rpm", 1000, None, "<string>:4"),
    )
    assert [s.counts for s in policy.settings.limits] == ["requests", "tokens", "requests"]


def test_limit_is_a_statement_start_but_still_a_name_elsewhere() -> None:
    policy = compile_source(HEAD + "when limit > 5 use alpha-large\nlimit 5 rpm\notherwise use alpha-mini\n")
    assert len(policy.rules) == 2 and policy.settings.limits[0].limit == 5


def test_a_large_policy_with_limits_parses_in_chunks_like_a_small_one() -> None:
    rules = "".join(f'when tier == "t{i}" use alpha-large fallback beta-chat\n' for i in range(3000))
    src = rules + "limit 60 rpm per key\n" + rules + "limit 1M tpm\notherwise use alpha-mini\n"
    assert len(src) > 200_000
    body = parse(src, "big.route").body
    assert body == parse(src, "big.route", fast=False).body
    limits = [s for s in body if isinstance(s, RateLimit)]
    assert [(x.unit, x.span.line) for x in limits] == [("rpm", 3001), ("tpm", 6002)]


@pytest.mark.parametrize(
    ("line", "code", "hint"),
    [
        ("limit 60 rqm", "E315", "did you mean rpm?"),
        ("limit 60 tokens per key", "E315", "units: rpm (requests per minute), tpm (tokens per minute)"),
        ("limit 0 rpm", "E401", "whole number per minute above 0"),
        ("limit 1.5 tpm", "E401", "whole number per minute above 0"),
        ("limit 5 rpm per key\nlimit 6 rpm per key", "E316", "keep one limit of each unit"),
    ],
)
def test_bad_limits_are_compile_errors_with_a_hint(line: str, code: str, hint: str) -> None:
    with pytest.raises(PolicyError) as info:
        compile_source(HEAD + line + "\notherwise use alpha-mini\n")
    (diag,) = info.value.diagnostics
    assert diag.code == code and hint in (diag.hint or "")
    assert diag.span is not None and diag.span.line >= 2


def test_a_limit_without_a_unit_is_one_error_naming_the_units() -> None:
    with pytest.raises(PolicyError) as info:
        compile_source(HEAD + "limit 60\notherwise use alpha-mini\n")
    assert [d.code for d in info.value.diagnostics] == ["E315"]


def test_ratelimit_is_reserved() -> None:
    from engine.runtime.reserved import reserved

    assert reserved("ratelimit.left") and reserved("ratelimit")


# ---- the limiter -----------------------------------------------------------------------------------------------


def test_memory_limiter_admits_exactly_the_limit_under_threads() -> None:
    limiter = MemoryLimiter(Clock())
    admitted: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        for _ in range(40):
            ok, _v = limiter.acquire([Check("b", 100, 1)])
            with lock:
                admitted.append(ok)

    run_together(worker, [()] * 8)
    assert sum(admitted) == 100 and len(admitted) == 320


def test_verdicts_refill_and_retry_after() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    check = Check("b", 60, 1)  # one request a second
    for i in range(60):
        ok, (v,) = limiter.acquire([check])
        assert ok and v.remaining == 59 - i
    ok, (v,) = limiter.acquire([check])
    assert not ok and v.remaining == 0 and v.retry_after == pytest.approx(1.0) and v.reset == pytest.approx(60.0)
    clock.t += 0.5
    assert not limiter.acquire([check])[0]
    clock.t += 0.5
    ok, (v,) = limiter.acquire([check])
    assert ok and v.remaining == 0
    clock.t += PERIOD
    ok, (v,) = limiter.acquire([check])
    assert ok and v.remaining == 59 and v.left == pytest.approx(59 / 60)


def test_checks_are_all_or_nothing_and_adjust_corrects_tokens() -> None:
    limiter = MemoryLimiter(Clock())
    rpm, tpm = Check("r", 10, 1), Check("t", 1000, 800)
    assert limiter.acquire([rpm, tpm])[0]
    ok, verdicts = limiter.acquire([rpm, tpm])
    assert not ok and verdicts[0].admitted is False and verdicts[0].remaining == 9  # nothing taken from rpm
    limiter.adjust(tpm, 15 - 800)  # the request used 15 tokens, not 800
    ok, (_r, t) = limiter.acquire([rpm, tpm])
    assert ok and t.remaining == 1000 - 815
    too_big = Check("t", 1000, 1001)
    ok, (v,) = limiter.acquire([too_big])
    assert not ok and v.too_large


def test_any_window_admits_at_most_twice_the_limit_and_the_rate_holds() -> None:
    """The documented accuracy of GCRA: in any 60 s window at most 2L - 1 units, over a long span L per minute
    plus one burst of L."""
    clock = Clock(0.0)
    limiter = MemoryLimiter(clock)
    rng = random.Random(7)
    limit, times = 20, []
    for _ in range(5000):
        clock.t += rng.expovariate(1.0)  # about 3 times the limit per minute
        if limiter.acquire([Check("b", limit, 1)])[0]:
            times.append(clock.t)
    for i, t in enumerate(times):
        in_window = sum(1 for u in times[i:] if u < t + PERIOD)
        assert in_window <= 2 * limit - 1
    assert len(times) <= limit + limit * clock.t / PERIOD + 1


# ---- two replicas on one Redis ---------------------------------------------------------------------------------

redis_store_tests = pytest.importorskip("tests.test_redis_store")
REDIS_BIN = redis_store_tests.REDIS_BIN
needs_redis = pytest.mark.skipif(REDIS_BIN is None, reason="no redis-server binary")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Any]:
    if REDIS_BIN is None:
        pytest.skip("no redis-server binary")
    server = redis_store_tests.RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def replicas(redis_server: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """`replicas(n)`: n RedisStores on one prefix and one injected wall clock (`replicas.clock`)."""
    from providers.state.redis_store import RedisStore

    prefix = f"rl{abs(hash(request.node.nodeid)) % 10**8}:"
    clock = Clock()
    made: list[Any] = []

    def build(n: int = 2) -> list[Any]:
        stores = [RedisStore(redis_server.url, prefix=prefix, wall=clock, background=False) for _ in range(n)]
        made.extend(stores)
        return stores

    build.clock = clock  # type: ignore[attr-defined]
    yield build
    for s in made:
        s.close()
    redis_store_tests.clear_prefix(redis_server.url, prefix)


@needs_redis
def test_two_replicas_never_admit_more_than_the_limit(replicas: Any) -> None:
    a, b = (RedisLimiter(s) for s in replicas(2))
    admitted: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def worker(limiter: RedisLimiter) -> None:
        start.wait()
        for _ in range(25):
            ok, _v = limiter.acquire([Check("shared", 50, 1), Check("tokens", 10_000, 100)])
            with lock:
                admitted.append(ok)

    run_together(worker, [(x,) for x in (a, b) * 3])
    assert sum(admitted) == 50  # the clock does not move: exactly the limit, across both replicas
    replicas.clock.t += 6.0  # refills 5 requests
    assert [a.acquire([Check("shared", 50, 1)])[0] or b.acquire([Check("shared", 50, 1)])[0] for _ in range(6)] == [
        True
    ] * 5 + [False]


@needs_redis
def test_replicas_agree_on_verdicts_and_corrections(replicas: Any) -> None:
    a, b = (RedisLimiter(s) for s in replicas(2))
    tpm = Check("t", 1000, 800)
    assert a.acquire([tpm])[0]
    ok, (v,) = b.acquire([tpm])
    assert not ok and v.remaining == 200 and v.retry_after == pytest.approx(36.0)
    a.adjust(tpm, -785)
    ok, (v,) = b.acquire([tpm])
    assert ok and v.remaining == 1000 - 815


@needs_redis
def test_windows_across_replicas_stay_within_the_documented_bound(replicas: Any) -> None:
    stores = replicas(2)
    limiters = [RedisLimiter(s) for s in stores]
    rng = random.Random(3)
    times = []
    for _ in range(600):
        replicas.clock.t += rng.expovariate(0.5)
        if rng.choice(limiters).acquire([Check("w", 10, 1)])[0]:
            times.append(replicas.clock.t)
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u < t + PERIOD) <= 2 * 10 - 1


def test_an_unreachable_redis_limits_locally() -> None:
    pytest.importorskip("redis")
    from providers.state.redis_store import RedisStore

    store = RedisStore(f"redis://127.0.0.1:{redis_store_tests.free_port()}/0", wall=Clock(), background=False)
    try:
        limiter = RedisLimiter(store)
        assert [limiter.acquire([Check("x", 2, 1)])[0] for _ in range(3)] == [True, True, False]
        assert store.status.startswith("local")
    finally:
        store.close()


# ---- through the gateway ---------------------------------------------------------------------------------------

KEY, OTHER = "mr-rate-key-a", "mr-rate-key-b"


@pytest.fixture
def gateway(fake_server: Any) -> Iterator[Any]:
    """`gateway(policy, keys=..., state=...)`: a started gateway app with a MemoryLimiter on an injected clock
    (`gateway.clock`) unless `state` is a RedisStore; returns an openai SDK client (no SDK retries)."""
    pytest.importorskip("uvicorn")
    openai = pytest.importorskip("openai")
    from providers.gateway.app import create_app
    from tests.engines import engine_for
    from tests.test_gateway import ThreadServer

    opened: list[Any] = []
    clock = Clock()

    def start(policy: str, keys: Any = None, state: Any = None, api_key: str = KEY) -> Any:
        engine = engine_for(fake_server, policy, state=state) if state is not None else engine_for(fake_server, policy)
        if state is None:
            attach(engine.state, MemoryLimiter(clock))
        server = ThreadServer(create_app(engine, keys=keys)).__enter__()
        opened.append((engine, server))
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0)
        client.url = server.url
        return client

    start.clock = clock  # type: ignore[attr-defined]
    yield start
    for engine, server in opened:
        server.__exit__(None, None, None)
        engine.close()


def keyring(**limits: Any) -> Any:
    from providers.gateway.keys import GatewayKey, KeyRing, hash_key

    return KeyRing(
        [GatewayKey("a", hash_key(KEY), {"user": "ann"}, **limits), GatewayKey("b", hash_key(OTHER), {"user": "bob"})]
    )


MSG = [{"role": "user", "content": "hello"}]


def chat(client: Any, **kw: Any) -> Any:
    return client.chat.completions.with_raw_response.create(model="auto", messages=MSG, **kw)


def test_over_the_policy_limit_is_429_with_retry_after_and_openai_headers(gateway: Any) -> None:
    import openai

    client = gateway("limit 2 rpm per key\notherwise use alpha-mini\n", keys=keyring())
    first = chat(client)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"] == "30s"
    assert "x-ratelimit-limit-tokens" not in first.headers
    assert chat(client).headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as info:
        chat(client)
    err = info.value
    assert err.status_code == 429 and err.code == "rate_limit_exceeded"
    assert err.response.headers["retry-after"] == "30" and err.response.headers["retry-after-ms"] == "30000"
    assert err.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert "limit of 2 requests per minute" in err.message
    other = openai.OpenAI(base_url=client.url + "/v1", api_key=OTHER, max_retries=0)
    assert chat(other).headers["x-ratelimit-remaining-requests"] == "1"  # per key: b has its own bucket
    gateway.clock.t += 30
    assert chat(client).headers["x-ratelimit-remaining-requests"] == "0"


def test_a_limit_without_per_is_one_limit_for_every_request(gateway: Any) -> None:
    import openai

    client = gateway("limit 1 rpm\notherwise use alpha-mini\n")
    chat(client)
    with pytest.raises(openai.RateLimitError) as info:
        chat(client)
    assert float(info.value.response.headers["retry-after"]) == 60


def test_key_rpm_and_tpm_with_the_token_correction(gateway: Any) -> None:
    import openai

    client = gateway("otherwise use alpha-mini\n", keys=keyring(rpm=100, tpm=1000))
    raw = chat(client, max_tokens=900)  # charged its estimate (input + max_tokens), uses 15 (the fake's usage)
    assert raw.headers["x-ratelimit-limit-tokens"] == "1000"
    assert raw.headers["x-ratelimit-limit-requests"] == "100"
    estimate = 1000 - int(raw.headers["x-ratelimit-remaining-tokens"])
    assert 900 < estimate < 920
    raw = chat(client, max_tokens=900)  # admitted: the first was corrected to its real usage
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) == 1000 - 15 - estimate
    with pytest.raises(openai.RateLimitError) as info:
        chat(client, max_tokens=990)  # 30 used: 970 left, this one needs more
    assert "limit of 1000 tokens per minute" in info.value.message
    assert info.value.response.headers["x-ratelimit-remaining-tokens"] == "970"
    assert info.value.response.headers["x-ratelimit-remaining-requests"] == "98"


def test_a_request_larger_than_the_token_limit_says_so(gateway: Any) -> None:
    import openai

    client = gateway("otherwise use alpha-mini\n", keys=keyring(tpm=100))
    with pytest.raises(openai.RateLimitError) as info:
        chat(client, max_tokens=500)
    assert "more than the gateway key's limit of 100 tokens" in info.value.message
    assert "retry-after" not in info.value.response.headers


def test_streamed_answers_carry_the_headers_and_are_corrected(gateway: Any) -> None:
    client = gateway("limit 1000 tpm\notherwise use alpha-mini\n")
    with client.chat.completions.with_streaming_response.create(
        model="auto", messages=MSG, stream=True, max_tokens=500
    ) as raw:
        assert raw.headers["x-ratelimit-limit-tokens"] == "1000"
        assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    raw = chat(client, max_tokens=500)  # the stream was corrected to its real usage when it ended
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) > 400


def test_a_rule_reads_ratelimit_left(gateway: Any) -> None:
    client = gateway("limit 4 rpm\nwhen ratelimit.left < 50% use alpha-large\notherwise use alpha-mini\n")
    models = [chat(client).headers["x-modelroute-model"] for _ in range(4)]
    assert models == ["alpha-mini", "alpha-mini", "alpha-large", "alpha-large"]  # left 3/4, 2/4, 1/4, 0/4


def test_anthropic_clients_get_their_error_shape(gateway: Any) -> None:
    import httpx

    client = gateway("limit 1 rpm\notherwise use alpha-mini\n")
    body = {"model": "auto", "max_tokens": 10, "messages": MSG}
    with httpx.Client(base_url=client.url) as http:
        assert http.post("/v1/messages", json=body).status_code == 200
        refused = http.post("/v1/messages", json=body)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "60"
    assert refused.json()["type"] == "error" and refused.json()["error"]["type"] == "rate_limit_error"


@needs_redis
def test_two_gateway_replicas_share_one_limit_on_redis(gateway: Any, replicas: Any) -> None:
    import openai

    one, two = (gateway("limit 3 rpm\notherwise use alpha-mini\n", state=s) for s in replicas(2))
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def send(client: Any) -> None:
        start.wait()
        try:
            chat(client)
            outcome = "ok"
        except openai.RateLimitError as err:
            assert err.response.headers["x-ratelimit-remaining-requests"] == "0"
            outcome = "429"
        with lock:
            outcomes.append(outcome)

    run_together(send, [(c,) for c in (one, two) * 4])
    assert sorted(outcomes) == ["429"] * 5 + ["ok"] * 3  # concurrent, on two replicas: exactly the limit


def test_embeddings_share_the_key_limits_and_headers() -> None:
    import openai

    from providers.gateway.app import create_app
    from providers.gateway.keys import GatewayKey, KeyRing, hash_key
    from tests.embedserver import EmbedServer
    from tests.test_gateway import ThreadServer
    from tests.test_gateway_embeddings import make_engine

    with EmbedServer() as upstream:
        engine = make_engine(upstream, 'when endpoint == "embeddings" use embed-small\notherwise use alpha-mini')
        attach(engine.state, MemoryLimiter(Clock()))
        keys = KeyRing([GatewayKey("k", hash_key("mr-k"), rpm=2)])
        try:
            with ThreadServer(create_app(engine, keys=keys)) as server:
                client = openai.OpenAI(base_url=server.url + "/v1", api_key="mr-k", max_retries=0)
                raw = client.embeddings.with_raw_response.create(model="auto", input="hello")
                assert raw.headers["x-ratelimit-remaining-requests"] == "1"
                client.embeddings.create(model="auto", input="hello")
                with pytest.raises(openai.RateLimitError) as info:
                    client.embeddings.create(model="auto", input="hello")
                assert info.value.response.headers["retry-after"] == "30"
        finally:
            engine.close()
    assert len(upstream.requests) == 2


def test_the_headers_report_the_limit_with_the_fewest_left(gateway: Any) -> None:
    """A roomy per-key limit half spent and a tight per-user one: the headers show the one that runs out first."""
    from providers.gateway.keys import GatewayKey, KeyRing, hash_key

    keys = KeyRing([GatewayKey("a", hash_key(KEY), {})])  # no bound user: the request's `user` is its own
    client = gateway("limit 10 rpm per key\nlimit 4 rpm per user\notherwise use alpha-mini\n", keys=keys)
    for _ in range(4):
        chat(client)  # no user: only the key's limit (6 left)
    chat(client, user="bob")
    raw = chat(client, user="bob")  # the key's bucket: 4 left, bob's: 2 left
    assert raw.headers["x-ratelimit-limit-requests"] == "4"
    assert raw.headers["x-ratelimit-remaining-requests"] == "2"


def test_a_request_without_max_tokens_is_charged_an_output_bound(gateway: Any, fake_server: Any) -> None:
    """No max_tokens and an upstream answering 5000 tokens: the tokens served stay near the limit, not 30 times it."""
    import openai

    from tests.fakeserver import Reply

    fake_server.default = Reply(output_tokens=5000)
    client = gateway(
        "set budget.max_output_tokens = 800\nlimit 1000 tpm per key\notherwise use alpha-mini\n", keys=keyring()
    )
    first = chat(client)
    charged = 1000 - int(first.headers["x-ratelimit-remaining-tokens"])
    assert charged > 800  # the input plus the policy's output bound, not the input alone

    def send(_i: int) -> int:
        try:
            return chat(client).parse().usage.total_tokens
        except openai.RateLimitError:
            return 0

    with ThreadPoolExecutor(30) as pool:
        served = list(pool.map(send, range(30)))
    assert sum(1 for s in served if s) == 0  # the first answer's real usage was charged: nothing more fits
