"""Review attacks on the response cache and its semantic lookup (providers/execution/cache.py, cache_stores.py,
semantic_cache.py; docs/cache.md): requests through Engine.complete()/stream() and through the gateway (the official
openai SDK against uvicorn on loopback, the FakeServer upstream), with an injected clock and the bag-of-words test
embedder (tests/semantic_kit.py), in; whether an entry answered a request it must not (another rule's TTL, a reloaded
TTL, another key, an earlier turn, a sampled request, a schema it fails), whether anything that must not be stored
was (filtered, failed or cut answers), and whether hits, holds and the byte bound stay as documented, out."""

from __future__ import annotations

import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("numpy", reason="the semantic extra is not installed (pip install -e '.[semantic]')")
pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")

from pydantic import BaseModel, field_validator

from engine import Engine
from providers.catalog.loader import load_catalog
from providers.execution.cache import CACHE_HEADER, ResponseCache
from providers.execution.cache_stores import MemoryLRU
from providers.execution.semantic_cache import SemanticIndex
from providers.gateway.keyformat import GatewayKey, hash_key
from providers.gateway.keys import KeyRing
from tests.clocks import Clock
from tests.engines import CATALOG, KINDS, TEST_KEY, engine_for, provider_specs
from tests.fakeserver import Call, FakeServer, Fault, Reply
from tests.gateway_kit import app_gateways
from tests.gateway_kit import sdk_client as client
from tests.semantic_kit import VOCABULARY, BagOfWords, cosine
from tests.test_cache import KEYS, ask, metric, upstream_calls

CACHED = "set cache.ttl = 1h\nset retry.attempts = 0\n"
SEMANTIC = CACHED + "set cache.semantic = 0.5\n"
ONE = "otherwise use alpha-mini\n"  # one model: an error is the request's error, no fallback answers it
FIRST = "write a python function to parse dates"


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def engines(fake_server: FakeServer) -> Iterator[Callable[..., Engine]]:
    """`make(policy, clock=None, embedder=None)`: an engine over the FakeServer whose cache runs on `clock` and
    embeds with `embedder` (given either); every engine made is closed after the test."""
    made: list[Engine] = []

    def make(policy: str, clock: Clock | None = None, embedder: Any = None) -> Engine:
        engine = engine_for(fake_server, policy)
        made.append(engine)
        if clock is not None:
            engine.executor.cache = ResponseCache(clock=clock, embedder=embedder)
        elif embedder is not None:
            engine.executor.cache.embedder = embedder
        return engine

    yield make
    for engine in made:
        engine.close()


# ---- TTLs: an answer is served no longer than the TTL of the request it answers ----------------------------------
def test_a_rule_with_a_shorter_ttl_is_never_served_an_answer_older_than_it(engines, fake_server: FakeServer) -> None:
    """docs/cache.md: `cache 10m` caches that rule's answers for ten minutes; the deciding rule's clause wins. Two
    rules naming the same model make the same key (attributes are not part of it), so the 1h rule's answer sits
    under the key the 10m rule reads."""
    policy = CACHED + 'when tier == "live" use alpha-mini cache 10m\n' + ONE
    clock = Clock()
    engine = engines(policy, clock)
    assert engine.decide("q", tier="live").cache_ttl == 600.0
    fake_server.script("alpha-mini", [Reply(text="stored an hour's worth"), Reply(text="fresh")])
    assert engine.complete("q", temperature=0, tier="slow").text == "stored an hour's worth"
    clock.t += 60  # within 10 minutes: the live rule may read it
    assert engine.complete("q", temperature=0, tier="live").cached
    clock.t += 600  # 11 minutes old: older than the live rule's TTL
    late = engine.complete("q", temperature=0, tier="live")
    assert (late.cached, late.text) == (False, "fresh")
    assert upstream_calls(fake_server) == 2


def test_a_reload_that_shortens_the_ttl_stops_serving_older_answers(tmp_path: Path, fake_server: FakeServer) -> None:
    """`cache.ttl`: how long an answer is served from the cache. After a reload to 1m, an answer two minutes old
    is past the policy's TTL."""
    path = tmp_path / "policy.route"
    path.write_text(CACHED + ONE)
    engine = Engine.load(
        path,
        catalog=load_catalog(CATALOG),
        providers=provider_specs(fake_server),
        api_keys=dict.fromkeys(KINDS, TEST_KEY),
    )
    try:
        clock = Clock()
        engine.executor.cache = ResponseCache(clock=clock)
        fake_server.script("alpha-mini", [Reply(text="old"), Reply(text="new")])
        assert engine.complete("q", temperature=0).text == "old"
        path.write_text(CACHED.replace("1h", "1m") + ONE)
        assert engine.reload()
        clock.t += 120
        again = engine.complete("q", temperature=0)
        assert (again.cached, again.text) == (False, "new")
    finally:
        engine.close()


# ---- what may be cached at all ----------------------------------------------------------------------------------
def test_a_request_sent_sampled_through_extra_is_not_cached(engines, fake_server: FakeServer) -> None:
    """docs/cache.md: only requests with temperature 0 are cached unless `set cache.sampled = true`. `extra` is
    merged into the provider's body as it is, so the temperature the upstream samples at is extra's."""
    engine = engines(CACHED + ONE)
    engine.complete("tell me a story", temperature=0, extra={"temperature": 1.3})
    assert fake_server.last().body["temperature"] == 1.3  # what the upstream sampled at
    again = engine.complete("tell me a story", temperature=0, extra={"temperature": 1.3})
    assert not again.cached
    assert upstream_calls(fake_server) == 2


@pytest.mark.parametrize("model", ["alpha-mini", "beta-chat", "gamma-flash"])  # openai, anthropic, gemini wires
def test_filtered_failed_and_cut_answers_are_never_stored(engines, fake_server: FakeServer, model: str) -> None:
    """A content-filtered answer (OpenAI `content_filter`, Anthropic `refusal`, a Gemini block), an upstream error
    and a stream cut before its end are not answers: the next identical request goes upstream."""
    engine = engines(CACHED + f"otherwise use {model}\n")
    fake_server.script(
        model,
        [Fault.content_filtered(), Fault.server_error(500), Fault.cut_stream(after=2), Reply(text="the real one")],
    )
    for _ in range(2):  # filtered, then failed
        with pytest.raises(Exception):  # noqa: B017 (RoutingError: which one does not matter here)
            engine.complete("q", temperature=0)
    with pytest.raises(Exception), engine.stream("q", temperature=0) as s:  # noqa: B017 (StreamInterrupted)
        s.text()
    answer = engine.complete("q", temperature=0)
    assert (answer.cached, answer.text) == (False, "the real one")
    assert engine.complete("q", temperature=0).cached  # the real answer, once made, is stored
    assert upstream_calls(fake_server) == 4
    assert engine.executor.cache.hits == 1


@pytest.mark.parametrize("deltas", [1, 5])
def test_a_stream_its_consumer_closes_early_is_not_stored(engines, fake_server: FakeServer, deltas: int) -> None:
    """A streamed answer is stored once it is complete: one its consumer stopped reading before its end is not,
    however much of its text came (after one delta, or after every delta but before the end): the next request
    goes upstream and gets its own answer."""
    engine = engines(CACHED + ONE)
    fake_server.script("alpha-mini", [Reply(text="one two three four five", chunks=5), Reply(text="whole")])
    with engine.stream("q", temperature=0) as s:
        for seen, event in enumerate(s, 1):
            assert event.kind == "delta"
            if seen == deltas:
                break
    assert s.completion is None
    again = engine.complete("q", temperature=0)
    assert (again.cached, again.text) == (False, "whole")
    assert upstream_calls(fake_server) == 2


# ---- isolation ----------------------------------------------------------------------------------------------------
VARIANTS = {
    "identical": FIRST,
    "nfd": unicodedata.normalize("NFD", FIRST + " café"),
    "nfc": unicodedata.normalize("NFC", FIRST + " café"),
    "zero-width": FIRST.replace("python", "py\u200bthon").replace(" ", " \u200b"),
    "trailing spaces": FIRST + "   \t",
    "upper": FIRST.upper(),
}


def test_another_key_never_gets_an_answer_by_near_identical_text(fake_server: FakeServer) -> None:
    """Each key has its own answers (no `cache.shared`), exact and by meaning: the text identical, in NFC or NFD,
    with zero-width characters, trailing spaces or another case never reaches another key's entry, even at a low
    threshold (one fresh key per variant: a miss each); within the storing key the same tricks do hit (so the
    texts are near enough to be served)."""
    secrets = {"team-a": KEYS["team-a"], **{f"other-{i}": f"mr-cache-other-key-{i}" for i in range(len(VARIANTS))}}
    ring = KeyRing([GatewayKey(name, hash_key(secret)) for name, secret in secrets.items()])
    fake_server.default = Reply(text="team-a's private answer")
    with app_gateways(fake_server, SEMANTIC + ONE) as start:
        engine, url = start(keys=ring, setup=lambda e: setattr(e.executor.cache, "embedder", BagOfWords()))
        a = client(url, KEYS["team-a"])
        assert ask(a, messages=user(FIRST))[1][CACHE_HEADER] == "miss"
        fake_server.default = Reply(text="their own answer")
        for i, (name, text) in enumerate(VARIANTS.items()):
            assert cosine(FIRST, text) >= 0.5, name
            before = upstream_calls(fake_server)
            answer, headers = ask(client(url, secrets[f"other-{i}"]), messages=user(text))
            assert (answer, headers[CACHE_HEADER]) == ("their own answer", "miss"), name
            assert upstream_calls(fake_server) == before + 1, name
        for name, text in VARIANTS.items():  # the same tricks within team-a's scope: its own answer
            answer, headers = ask(a, messages=user(text))
            assert (answer, headers[CACHE_HEADER]) == ("team-a's private answer", "hit"), name
        assert engine.executor.cache.semantic_hits == len(VARIANTS) - 1  # "identical" is an exact hit


CALL: dict[str, Any] = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"day": 1}'}}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


def turns(arguments: str = '{"day": 1}', result: str = "dates parsed", earlier: str = FIRST) -> list[dict[str, Any]]:
    call = {**CALL, "function": {**CALL["function"], "arguments": arguments}}
    return [
        {"role": "user", "content": earlier},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": result},
        {"role": "user", "content": "now show the python error trace"},
    ]


@pytest.mark.parametrize(
    "earlier",
    [
        {"arguments": '{"day": 2}'},  # the model's own earlier tool call
        {"result": "dates not parsed"},  # the tool's result
        {"earlier": unicodedata.normalize("NFD", FIRST + " é")},  # an earlier user turn, one normal form apart
        {"earlier": FIRST + "\u200b"},  # ... a zero-width space apart
    ],
    ids=["tool call", "tool result", "nfd turn", "zero-width turn"],
)
def test_a_conversation_differing_in_an_earlier_turn_never_hits(
    engines, fake_server: FakeServer, earlier: dict[str, str]
) -> None:
    """The scope covers every earlier message: the same last question after a different earlier turn is another
    request, exact or by meaning (the control: the same conversation, its question reworded, is a hit)."""
    engine = engines(SEMANTIC + "otherwise use alpha-large\n", embedder=BagOfWords())
    engine.complete(messages=turns(), temperature=0, tools=[TOOL])
    reworded = turns()
    reworded[-1] = {"role": "user", "content": "show the python trace of that error now"}
    control = engine.complete(messages=reworded, temperature=0, tools=[TOOL])
    assert control.cached and control.cache_similarity is not None  # near enough within one conversation
    other = engine.complete(messages=turns(**earlier), temperature=0, tools=[TOOL])
    assert not other.cached
    assert upstream_calls(fake_server) == 2


def make_schema(strict: bool) -> type[BaseModel]:
    """Two versions of one schema (same module, qualname and JSON schema): the later one refuses 'Paris'."""

    class Answer(BaseModel):
        city: str

        @field_validator("city")
        @classmethod
        def _known(cls, value: str) -> str:
            if strict and value == "Paris":
                raise ValueError("Paris is not served any more")
            return value

    return Answer


def test_a_stored_answer_its_request_schema_refuses_is_a_miss_not_an_error(engines, fake_server: FakeServer) -> None:
    """The key names the schema by module and qualname (and the JSON schema it sends), so a schema whose
    validation changed (a deploy, with answers kept in Redis; or two local classes of one factory) finds the old
    schema's answers. An answer its request refuses is not that request's answer: the model is asked."""
    loose, strict = make_schema(False), make_schema(True)
    assert loose.model_json_schema() == strict.model_json_schema() and loose.__qualname__ == strict.__qualname__
    engine = engines(CACHED + ONE)
    fake_server.script("alpha-mini", [Reply(text='{"city": "Paris"}'), Reply(text='{"city": "Lyon"}')])
    assert engine.complete("capital?", schema=loose, temperature=0).parsed.city == "Paris"
    answer = engine.complete("capital?", schema=strict, temperature=0)
    assert (answer.cached, answer.parsed.city) == (False, "Lyon")


# ---- hits cost nothing, hold nothing and are counted -----------------------------------------------------------------
def test_concurrent_identical_requests_all_answer_and_leave_nothing_held(fake_server: FakeServer) -> None:
    """A stampede of identical requests: every one is answered with the same text, each is counted once as a hit
    or a miss, only misses went upstream, no budget stays held, and afterwards the answer is a hit."""
    fake_server.default = Reply(text="the one answer", delay=0.3)
    with app_gateways(fake_server, CACHED + "budget daily $5\n" + ONE) as start:
        engine, url = start()
        c = client(url)
        results: list[tuple[str, str]] = []
        errors: list[BaseException] = []

        def go() -> None:
            try:
                text, headers = ask(c, messages=user("stampede"))
                results.append((text, headers[CACHE_HEADER]))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=go) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors and len(results) == 8
        assert {text for text, _ in results} == {"the one answer"}
        cache = engine.executor.cache
        misses = sum(state == "miss" for _, state in results)
        assert (cache.hits + cache.misses, cache.misses) == (8, misses)
        assert upstream_calls(fake_server) == misses
        (budget,) = [r.key for r in engine.executor.budgets.applicable(engine.policy.budgets, {})]
        state: Any = engine.state
        deadline = time.monotonic() + 5
        while abs(state.spent(budget)[1]) > 1e-12 and time.monotonic() < deadline:
            time.sleep(0.02)
        spent, held = state.spent(budget)
        assert held == pytest.approx(0, abs=1e-12) and spent > 0  # float sums of released holds: 1e-18, not 0
        text, headers = ask(c, messages=user("stampede"))
        assert (text, headers[CACHE_HEADER], headers["x-modelroute-cost"]) == ("the one answer", "hit", "0")
        assert state.spent(budget) == (spent, held)  # the hit spent and held nothing
        assert upstream_calls(fake_server) == misses


def test_a_streamed_hit_is_reported_as_one_and_replays_usage_and_tool_calls(fake_server: FakeServer) -> None:
    """A cached answer streamed: `x-modelroute-cache: hit`, `x-modelroute-cost: 0`, the stored usage in the usage
    chunk, the tool calls and finish reason of the stored answer, no upstream call, /metrics counting the hit."""
    fake_server.default = Reply(
        text="calling", tool_calls=[Call("lookup", {"day": 3})], input_tokens=21, output_tokens=9, finish="tool_calls"
    )
    with app_gateways(fake_server, CACHED + "otherwise use alpha-large\n") as start:
        _, url = start()
        c = client(url)

        def streamed() -> tuple[Any, ...]:
            raw = c.chat.completions.with_raw_response.create(
                model="auto",
                messages=user("q"),
                temperature=0,
                tools=[TOOL],
                stream=True,
                stream_options={"include_usage": True},
            )
            text, calls, finish, usage = "", [], None, None
            for chunk in raw.parse():
                if chunk.usage is not None:
                    usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                for choice in chunk.choices:
                    text += choice.delta.content or ""
                    calls += [(t.function.name, t.function.arguments) for t in choice.delta.tool_calls or []]
                    finish = choice.finish_reason or finish
            return (text, calls, finish, usage), raw.headers

        first, h1 = streamed()
        second, h2 = streamed()
        assert (h1[CACHE_HEADER], h2[CACHE_HEADER], h2["x-modelroute-cost"]) == ("miss", "hit", "0")
        assert second == first and first[2:] == ("tool_calls", (21, 9))
        assert upstream_calls(fake_server) == 1
        assert metric(url, 'modelroute_cache_lookups_total{result="hit"} 1')


# ---- bounds ---------------------------------------------------------------------------------------------------------
def test_many_distinct_multibyte_answers_keep_the_lru_and_the_index_within_their_bounds(
    engines, fake_server: FakeServer
) -> None:
    """`cache.max_bytes` bounds the LRU in UTF-8 bytes (key plus entry): many distinct answers of 4-byte
    characters never push it past the bound, its byte count is the sum of what it holds, the least recently used
    go (and leave the semantic index), and the latest is still served."""
    engine = engines(CACHED + "set cache.semantic = 0.99\nset cache.max_bytes = 6000\n" + ONE)
    index = SemanticIndex(max_bytes=4000, per_scope=1000)
    engine.executor.cache = ResponseCache(embedder=BagOfWords(), index=index)
    fake_server.default = Reply(text="😀" * 200)  # 800 bytes of UTF-8, 200 characters
    pairs = [f"{a} {b}" for i, a in enumerate(VOCABULARY) for b in VOCABULARY[i + 1 :]][:40]  # cosines 0 or 0.5
    memory: MemoryLRU = engine.executor.cache.memory
    for text in pairs:
        engine.complete(text, temperature=0)
        assert memory.bytes <= 6000
        assert index.bytes <= 4000 and len(index) <= len(memory)
    assert upstream_calls(fake_server) == len(pairs)  # all distinct: nothing answered another's
    assert 0 < len(memory) < len(pairs)  # the bound made room by evicting
    assert engine.complete(pairs[-1], temperature=0).cached
    assert not engine.complete(pairs[0], temperature=0).cached  # evicted long ago
    assert upstream_calls(fake_server) == len(pairs) + 1
