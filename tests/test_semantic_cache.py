"""The semantic cache (`set cache.semantic`, providers/execution/semantic_cache.py): requests through the gateway (the
official openai SDK against uvicorn on loopback, the FakeServer as upstream) and through Engine.complete(), with a
deterministic bag-of-words embedder (and once WordLlama, the default), in; what the upstream saw, the
`x-modelroute-cache` header, budgets, and the index's bounds out."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("numpy", reason="the semantic extra is not installed (pip install -e '.[semantic]')")
pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
openai = pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")

from engine import Engine  # noqa: E402
from providers.execution.cache import CACHE_HEADER, SIMILARITY_HEADER, ResponseCache  # noqa: E402
from providers.execution.semantic_cache import SemanticIndex  # noqa: E402
from providers.gateway.run import key_budget_key  # noqa: E402
from tests.engines import engine_for  # noqa: E402
from tests.fakeserver import FakeServer, Reply  # noqa: E402
from tests.gateway_kit import app_gateways, redis_or_skip  # noqa: E402
from tests.semantic_kit import BagOfWords, cosine  # noqa: E402
from tests.test_cache import KEYS, Clock, ask, client, keyring, metric, upstream_calls  # noqa: E402

SEMANTIC = "set cache.ttl = 1h\nset cache.semantic = 0.85\nset retry.attempts = 0\n"
POLICY = "otherwise use alpha-mini fallback beta-chat\n"
# the test embedder's words (tests/semantic_kit.py): python function parse dates, then also error
FIRST = "write a python function to parse dates"
PARAPHRASE = "please write a python function that can parse dates and report an error"
OTHER = "write a python function to parse a stack trace"  # python function parse stack trace


def bag_of_words(texts: list[str]) -> Any:
    return BagOfWords()(texts)


def test_the_texts_are_as_close_as_the_tests_say() -> None:
    assert round(cosine(FIRST, PARAPHRASE), 3) == 0.894 and round(cosine(FIRST, OTHER), 3) == 0.671


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def gateway(fake_server: FakeServer) -> Iterator[Callable[..., Any]]:
    """`gateway(policy, keys=..., embedder=..., **engine kw)`: a started gateway whose cache embeds with `embedder`
    (the bag of words); returns (engine, base url)."""
    with app_gateways(fake_server, SEMANTIC + POLICY) as start:

        def semantic(policy: str = SEMANTIC + POLICY, keys: Any = None, embedder: Any = bag_of_words, **kw: Any) -> Any:
            return start(policy, keys, lambda engine: setattr(engine.executor.cache, "embedder", embedder), **kw)

        yield semantic


def test_a_paraphrase_within_the_threshold_is_answered_from_the_cache(gateway, fake_server: FakeServer) -> None:
    fake_server.default = Reply(text="Paris")
    engine, url = gateway()
    c = client(url)
    first, h1 = ask(c, messages=user(FIRST))
    second, h2 = ask(c, messages=user(PARAPHRASE))
    assert (first, second) == ("Paris", "Paris")
    assert (h1[CACHE_HEADER], h2[CACHE_HEADER]) == ("miss", "hit")
    assert h2["x-modelroute-cost"] == "0" and upstream_calls(fake_server) == 1
    assert SIMILARITY_HEADER not in h1 and 0.8 < float(h2[SIMILARITY_HEADER]) < 1.0  # found by meaning: how close
    assert engine.executor.cache.semantic_hits == 1
    assert metric(url, 'modelroute_cache_lookups_total{result="hit"} 1')
    _, h3 = ask(c, messages=user(OTHER))  # below the threshold: its own answer
    assert h3[CACHE_HEADER] == "miss" and upstream_calls(fake_server) == 2


def test_the_threshold_decides_and_without_the_setting_only_exact_matches_hit(gateway, fake_server: FakeServer) -> None:
    _, strict = gateway(SEMANTIC.replace("0.85", "0.95") + POLICY)
    c = client(strict)
    ask(c, messages=user(FIRST))
    assert ask(c, messages=user(PARAPHRASE))[1][CACHE_HEADER] == "miss"  # 0.894 < 0.95
    exact = ask(c, messages=user(FIRST.upper()))[1]
    assert exact[CACHE_HEADER] == "hit" and float(exact[SIMILARITY_HEADER]) == 1.0  # the same words
    _, exact = gateway("set cache.ttl = 1h\nset retry.attempts = 0\n" + POLICY)
    c = client(exact)
    ask(c, messages=user(FIRST))
    assert ask(c, messages=user(FIRST.upper()))[1][CACHE_HEADER] == "miss"
    assert upstream_calls(fake_server) == 4


def test_another_key_never_gets_an_answer_by_meaning_unless_shared(gateway, fake_server: FakeServer) -> None:
    _, url = gateway(keys=keyring())
    a, b = client(url, KEYS["team-a"]), client(url, KEYS["team-b"])
    ask(a, messages=user(FIRST))
    assert ask(b, messages=user(PARAPHRASE))[1][CACHE_HEADER] == "miss"
    assert ask(b, messages=user(FIRST))[1][CACHE_HEADER] == "hit"  # by meaning, b's own answer to PARAPHRASE
    assert upstream_calls(fake_server) == 2
    _, shared = gateway(SEMANTIC + "set cache.shared = true\n" + POLICY, keys=keyring())
    ask(client(shared, KEYS["team-a"]), messages=user(FIRST))
    assert ask(client(shared, KEYS["team-b"]), messages=user(PARAPHRASE))[1][CACHE_HEADER] == "hit"
    assert upstream_calls(fake_server) == 3


def test_output_changing_fields_and_earlier_messages_keep_their_own_answers(gateway, fake_server: FakeServer) -> None:
    _, url = gateway(SEMANTIC + "set cache.sampled = true\n" + POLICY)
    c = client(url)
    ask(c, messages=user(FIRST))
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
    earlier = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    variants: list[dict[str, Any]] = [
        {"temperature": 0.5},
        {"tools": [tool]},
        {"response_format": {"type": "json_object"}},
        {"max_tokens": 9},
        {"messages": [*earlier, *user(PARAPHRASE)]},
        {"messages": [{"role": "system", "content": "answer in French"}, *user(PARAPHRASE)]},
    ]
    for kw in variants:
        kw.setdefault("messages", user(PARAPHRASE))
        assert ask(c, **kw)[1][CACHE_HEADER] == "miss", kw
    assert upstream_calls(fake_server) == 1 + len(variants)
    again = {"messages": [*earlier, *user(FIRST)]}  # the same earlier turns: the same scope
    assert ask(c, **again)[1][CACHE_HEADER] == "hit"
    assert upstream_calls(fake_server) == 1 + len(variants)


def test_a_streamed_request_gets_a_paraphrase_answer_replayed_as_sse(gateway, fake_server: FakeServer) -> None:
    fake_server.default = Reply(text="Paris, streamed")
    _, url = gateway()
    c = client(url)
    ask(c, messages=user(FIRST))
    raw = c.chat.completions.with_raw_response.create(
        model="auto", messages=user(PARAPHRASE), temperature=0, stream=True
    )
    text = "".join(choice.delta.content or "" for chunk in raw.parse() for choice in chunk.choices)
    assert text == "Paris, streamed" and raw.headers[CACHE_HEADER] == "hit"
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert upstream_calls(fake_server) == 1


def test_a_hit_by_meaning_costs_nothing_and_budgets_still_refuse(gateway, fake_server: FakeServer) -> None:
    engine, url = gateway(SEMANTIC + "budget daily $5\n" + POLICY, keys=keyring(daily=1.0))
    c = client(url, KEYS["team-a"])
    ask(c, messages=user(FIRST))
    state, ex = engine.state, engine.executor
    (budget,) = [r.key for r in ex.budgets.applicable(engine.policy.budgets, {})]
    key_budget = key_budget_key("team-a", time.time())
    spent = state.spent(budget), state.spent(key_budget)
    _, h = ask(c, messages=user(PARAPHRASE))
    assert h[CACHE_HEADER] == "hit" and h["x-modelroute-cost"] == "0"
    assert (state.spent(budget), state.spent(key_budget)) == spent  # no spend, no hold left
    state.reserve(key_budget, 10.0, 1e9)  # the key's day is spent: refused even when cached by meaning
    with pytest.raises(openai.APIStatusError):
        ask(c, messages=user(PARAPHRASE))
    assert upstream_calls(fake_server) == 1


def test_no_cache_skips_the_lookup_by_meaning_and_stores_the_fresh_answer(gateway, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", [Reply(text="old"), Reply(text="fresh")])
    engine, url = gateway()
    c = client(url)
    ask(c, messages=user(FIRST))
    text, h = ask(c, messages=user(PARAPHRASE), extra_headers={"cache-control": "no-cache"})
    assert (text, h[CACHE_HEADER]) == ("fresh", "miss")
    assert ask(c, messages=user(PARAPHRASE + " please"))[0] in ("old", "fresh")  # one of the two, by meaning
    assert upstream_calls(fake_server) == 2 and len(engine.executor.cache.index) == 2


def test_no_store_skips_the_lookup_by_meaning_and_stores_nothing(gateway, fake_server: FakeServer) -> None:
    fake_server.default = Reply(text="old")
    engine, url = gateway()
    c = client(url)
    ask(c, messages=user(FIRST))
    fake_server.default = Reply(text="fresh")
    text, h = ask(c, messages=user(PARAPHRASE), extra_headers={"cache-control": "no-store"})
    assert text == "fresh" and h.get(CACHE_HEADER) != "hit" and SIMILARITY_HEADER not in h
    assert upstream_calls(fake_server) == 2 and len(engine.executor.cache.index) == 1  # the fresh one not kept


# ---- through the Python API ----------------------------------------------------------------------------------
def cached_engine(fake_server: FakeServer, policy: str = SEMANTIC + POLICY, **kw: Any) -> Engine:
    engine = engine_for(fake_server, policy)
    engine.executor.cache = ResponseCache(embedder=bag_of_words, **kw)
    return engine


def test_an_expired_answer_is_not_found_by_meaning(fake_server: FakeServer) -> None:
    clock = Clock()
    engine = cached_engine(fake_server, clock=clock)
    try:
        engine.complete(FIRST, temperature=0)
        clock.t += 3599
        assert engine.complete(PARAPHRASE, temperature=0).attempts == []
        clock.t += 2
        assert engine.complete(PARAPHRASE, temperature=0).attempts != []
        assert upstream_calls(fake_server) == 2
    finally:
        engine.close()


def test_a_text_longer_than_the_embedded_cut_is_cached_exactly_only(fake_server: FakeServer) -> None:
    from engine.runtime.embedder import HEAD_CHARS, TAIL_CHARS

    engine = cached_engine(fake_server)
    try:
        head, tail = "summarize this " * 60, " thanks" * 60
        long_text = head + "apples " * 100 + tail
        assert len(long_text) > HEAD_CHARS + TAIL_CHARS
        engine.complete(long_text, temperature=0)
        engine.complete(head + "oranges " * 100 + tail, temperature=0)  # the same head and tail, another middle
        engine.complete(long_text, temperature=0)  # the exact text still hits
        assert upstream_calls(fake_server) == 2 and len(engine.executor.cache.index) == 0
    finally:
        engine.close()


def test_an_embedder_that_fails_leaves_exact_matches(fake_server: FakeServer, caplog) -> None:
    def broken(texts: list[str]) -> Any:
        raise RuntimeError("no model here")

    engine = engine_for(fake_server, SEMANTIC + POLICY)
    engine.executor.cache = ResponseCache(embedder=broken)
    try:
        engine.complete(FIRST, temperature=0)
        engine.complete(PARAPHRASE, temperature=0)
        assert engine.complete(FIRST, temperature=0).attempts == []
        assert upstream_calls(fake_server) == 2
    finally:
        engine.close()


def test_the_index_is_bounded_per_scope_and_in_bytes(fake_server: FakeServer) -> None:
    index = SemanticIndex(max_bytes=2_000, per_scope=5)
    engine = cached_engine(fake_server, index=index)
    try:
        for i in range(12):  # one scope: at most 5 rows (no word the embedder knows: nothing matches by meaning)
            engine.complete(f"question number {i} about topic {i}", temperature=0)
        assert len(index) == 5 and index.scopes == 1
        for i in range(40):  # 40 scopes (the system prompt is part of the scope): bounded in bytes
            engine.complete("hello there", system=f"you are assistant {i}", temperature=0)
        row = 16 * 4 + 64 + 16  # a 16-d vector, a sha256 hex key, bookkeeping
        assert index.bytes == 13 * row and len(index) == 13 and index.bytes <= 2_000
        assert engine.complete("hello there", system="you are assistant 39", temperature=0).attempts == []
    finally:
        engine.close()


def test_answers_the_memory_lru_evicts_leave_the_index(fake_server: FakeServer) -> None:
    fake_server.default = Reply(text="x" * 2000)
    engine = cached_engine(fake_server, SEMANTIC + "set cache.max_bytes = 5000\n" + POLICY)
    try:
        for i in range(6):
            engine.complete(f"question {i} on {'abcdef'[i]}", temperature=0)
        cache = engine.executor.cache
        assert 0 < len(cache.memory) < 6 and len(cache.index) == len(cache.memory)
    finally:
        engine.close()


def test_the_default_embedder_matches_a_near_identical_rephrasing(gateway, fake_server: FakeServer) -> None:
    pytest.importorskip("wordllama", reason="the semantic extra is not installed (pip install -e '.[semantic]')")
    fake_server.default = Reply(text="Paris")
    engine, url = gateway(SEMANTIC.replace("0.85", "0.95") + POLICY, embedder=None)
    c = client(url)
    ask(c, messages=user("What is the capital of France?"))
    assert ask(c, messages=user("What's the capital of France?"))[1][CACHE_HEADER] == "hit"  # WordLlama: 0.99
    assert ask(c, messages=user("What is the capital of Spain?"))[1][CACHE_HEADER] == "miss"  # 0.45
    assert upstream_calls(fake_server) == 2 and engine.executor.cache.semantic_hits == 1


def test_with_redis_a_replica_finds_answers_by_meaning_once_it_stored_or_served_them(
    gateway, fake_server: FakeServer, request
) -> None:
    with redis_or_skip() as server:
        from providers.state.redis_store import RedisStore

        prefix = f"sem{abs(hash(request.node.nodeid)) % 10**8}:"
        stores = [RedisStore(server.url, prefix=prefix) for _ in range(3)]
        (_, one), (_, two), (_, three) = (gateway(state=store) for store in stores)
        assert ask(client(one), messages=user(FIRST))[1][CACHE_HEADER] == "miss"
        assert ask(client(two), messages=user(FIRST))[1][CACHE_HEADER] == "hit"  # exact, from Redis: indexed here
        assert ask(client(two), messages=user(PARAPHRASE))[1][CACHE_HEADER] == "hit"  # by meaning
        assert ask(client(three), messages=user(PARAPHRASE))[1][CACHE_HEADER] == "miss"  # its index is its own
        assert upstream_calls(fake_server) == 2
        for store in stores:
            store.close()


def test_the_engines_embedder_is_used_and_decides_vector_is_reused(fake_server: FakeServer) -> None:
    embedder = BagOfWords()
    policy = SEMANTIC + 'task code = like ["python function parse dates"] >= 0.5\nwhen task is code use alpha-mini\n'
    engine = engine_for(fake_server, policy + "otherwise use beta-chat\n", embedder=embedder)
    try:
        assert engine.complete(FIRST, temperature=0).model == "alpha-mini"
        hit = engine.complete(PARAPHRASE, temperature=0)
        assert hit.attempts == [] and hit.decision.vector is not None
        assert embedder.embedded.count(FIRST) == embedder.embedded.count(PARAPHRASE) == 1  # by decide(), once
        engine.complete("hello", temperature=0)  # a miss, stored with decide()'s vector: still one embedding
        assert embedder.embedded.count("hello") == 1 and upstream_calls(fake_server) == 2
    finally:
        engine.close()


def test_without_semantic_tasks_the_cache_embeds_with_the_engines_embedder(fake_server: FakeServer) -> None:
    embedder = BagOfWords()
    engine = engine_for(fake_server, SEMANTIC + POLICY, embedder=embedder)
    try:
        engine.complete(FIRST, temperature=0)
        assert engine.complete(FIRST, temperature=0).attempts == []  # an exact hit embeds nothing
        assert engine.complete(PARAPHRASE, temperature=0).attempts == []
        assert embedder.embedded == [FIRST, PARAPHRASE] and upstream_calls(fake_server) == 1
    finally:
        engine.close()


def test_the_index_keeps_the_most_recently_used_and_never_mixes_embedders() -> None:
    import numpy as np

    def unit(*xs: float) -> Any:
        v = np.array(xs, dtype=np.float32)
        return v / np.linalg.norm(v)

    one, two = bag_of_words, BagOfWords()
    index = SemanticIndex(per_scope=2)
    index.add("s", one, unit(1, 0), "a", expires=100.0, now=0.0)
    index.add("s", one, unit(0, 1), "b", expires=100.0, now=0.0)
    assert index.nearest("s", one, unit(1, 0.1), 0.9, now=0.0) == ("a", pytest.approx(0.995, abs=1e-3))
    index.add("s", one, unit(1, 1), "c", expires=100.0, now=0.0)  # full: b (least recently used) goes
    assert "b" not in index and {"a", "c"} <= {k for k in ("a", "b", "c") if k in index}
    assert index.nearest("s", one, unit(1, 0), 0.9, now=100.0) is None  # expired
    assert index.nearest("s", two, unit(1, 0), 0.9, now=0.0) is None  # another embedder's vectors
    index.add("s", two, unit(1, 0), "d", expires=100.0, now=0.0)  # replaces them
    assert len(index) == 1 and index.nearest("s", two, unit(1, 0), 1.0, now=0.0) == ("d", 1.0)
    index.drop("d")
    assert len(index) == 0 and index.bytes == 0 and index.scopes == 0
