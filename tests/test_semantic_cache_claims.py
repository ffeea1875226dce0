"""The claims of docs/cache.md, "Semantic cache", that tests/test_semantic_cache.py leaves unproven: requests through
the gateway (the official openai SDK against uvicorn on loopback, the FakeServer and EmbedServer as upstreams) and
through the Python API, with the bag-of-words test embedder (tests/semantic_kit.py), in; what the upstream saw, the
headers, what was embedded and the index's contents out. Each test quotes the claim it proves (the index, counting,
a failing embedder and the measured cosines: tests/test_semantic_cache_index_claims.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

np = pytest.importorskip("numpy", reason="the semantic extra is not installed (pip install -e '.[semantic]')")
pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
openai = pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")

from pydantic import BaseModel  # noqa: E402

from providers.execution.cache import CACHE_HEADER, SIMILARITY_HEADER, ResponseCache  # noqa: E402
from providers.gateway.app import create_app  # noqa: E402
from tests.engines import engine_for  # noqa: E402
from tests.fakeserver import FakeServer, Reply  # noqa: E402
from tests.gateway_kit import app_gateways  # noqa: E402
from tests.gateway_kit import sdk_client as client  # noqa: E402
from tests.semantic_kit import BagOfWords, cosine  # noqa: E402
from tests.test_cache import ask, upstream_calls  # noqa: E402
from tests.test_gateway import ThreadServer  # noqa: E402
from tests.test_semantic_cache import FIRST, PARAPHRASE, POLICY, SEMANTIC, user  # noqa: E402

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="}}
OTHER_IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,R0lGODlhAQABAAAAACw="}}
VISION = SEMANTIC + "otherwise use alpha-large\n"  # a model that takes images (and tools)
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
CALLED = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
]}  # fmt: skip


def result(text: str) -> dict[str, str]:
    return {"role": "tool", "tool_call_id": "call_1", "content": text}


def semantic_gateways(fake_server: FakeServer) -> Iterator[Callable[..., Any]]:
    """`gateway(policy, embedder=..., middleware=..., keys=..., **engine kw)`: a started gateway whose cache embeds
    with `embedder` (a counting BagOfWords unless given) and whose engine uses `middleware`; (engine, url)."""
    with app_gateways(fake_server, SEMANTIC + POLICY) as start:

        def semantic(
            policy: str = SEMANTIC + POLICY, embedder: Any = None, middleware: Any = None, keys: Any = None, **kw: Any
        ) -> Any:
            def setup(engine: Any) -> None:
                engine.executor.cache.embedder = embedder if embedder is not None else BagOfWords()
                if middleware is not None:
                    engine.use(middleware)

            return start(policy, keys, setup, **kw)

        yield semantic


@pytest.fixture
def gateway(fake_server: FakeServer) -> Iterator[Callable[..., Any]]:
    """semantic_gateways(), opened for one test."""
    yield from semantic_gateways(fake_server)


def embedded(engine: Any) -> list[str]:
    """Every text the cache of `engine` embedded so far (its BagOfWords)."""
    return list(engine.executor.cache.embedder.embedded)


# ---- What it matches -----------------------------------------------------------------------------------------------
def test_a_percentage_threshold_is_the_same_cosine(gateway, fake_server: FakeServer) -> None:
    """Claim: "The setting is the least cosine similarity ... from 0 to 1 (or a percentage: `95%`)"."""
    for threshold, status in (("89%", "hit"), ("90%", "miss")):  # cosine(FIRST, PARAPHRASE) is 0.894
        _, url = gateway(SEMANTIC.replace("0.85", threshold) + POLICY)
        c = client(url)
        ask(c, messages=user(FIRST))
        assert ask(c, messages=user(PARAPHRASE))[1][CACHE_HEADER] == status, threshold
    assert upstream_calls(fake_server) == 3


def test_a_cosine_equal_to_the_threshold_reaches_it(gateway, fake_server: FakeServer) -> None:
    """Claim: "served when its cosine reaches the threshold": exactly the threshold hits, just below it misses."""
    a, b = "python function", "python dates"
    assert cosine(a, b) == pytest.approx(0.5)
    for threshold, status in (("0.5", "hit"), ("0.51", "miss")):
        _, url = gateway(SEMANTIC.replace("0.85", threshold) + POLICY)
        c = client(url)
        ask(c, messages=user(a))
        _, h = ask(c, messages=user(b))
        assert h[CACHE_HEADER] == status, threshold
        if status == "hit":
            assert float(h[SIMILARITY_HEADER]) == pytest.approx(0.5, abs=1e-4)
    assert upstream_calls(fake_server) == 3


def test_the_nearest_cached_request_of_the_scope_answers(gateway, fake_server: FakeServer) -> None:
    """Claim: "the nearest cached request whose answer has not expired is served": of two within the threshold."""
    fake_server.script("alpha-mini", [Reply(text="dates"), Reply(text="traces")])
    dates, traces = "python function parse dates", "python function stack trace"
    near_dates, near_traces = dates + " stack", traces + " parse"
    assert cosine(dates, traces) == pytest.approx(0.5)  # below 0.6: two answers
    assert round(cosine(near_dates, dates), 3) == round(cosine(near_traces, traces), 3) == 0.894
    assert round(cosine(near_dates, traces), 3) == round(cosine(near_traces, dates), 3) == 0.671  # above 0.6 too
    _, url = gateway(SEMANTIC.replace("0.85", "0.6") + POLICY)
    c = client(url)
    assert [ask(c, messages=user(t))[0] for t in (dates, traces, near_dates, near_traces)] == [
        "dates",
        "traces",
        "dates",
        "traces",
    ]
    assert upstream_calls(fake_server) == 2


def test_the_text_is_embedded_once_and_only_on_an_exact_miss_or_a_no_cache_store(gateway) -> None:
    """Claim: "Otherwise the request is embedded once, and only when the exact lookup missed (or, with `no-cache`, when
    its answer is stored)"; `no-store` bypasses both."""
    engine, url = gateway()
    c = client(url)
    ask(c, messages=user(FIRST))  # a miss: embedded for the lookup, the vector reused to index the answer
    assert embedded(engine) == [FIRST]
    ask(c, messages=user(FIRST))  # an exact hit
    assert embedded(engine) == [FIRST]
    ask(c, messages=user(PARAPHRASE), extra_headers={"cache-control": "no-cache"})  # no lookup; embedded to store
    ask(c, messages=user(FIRST + " today"), extra_headers={"cache-control": "no-store"})
    assert embedded(engine) == [FIRST, PARAPHRASE]


def test_a_text_of_exactly_the_cut_is_matched_by_meaning(fake_server: FakeServer) -> None:
    """Claim: "A text longer than the cut (1,000 characters) is matched exactly only": one of 1,000 is not longer."""
    from engine.runtime.embedder import HEAD_CHARS, TAIL_CHARS

    cut = HEAD_CHARS + TAIL_CHARS
    assert (HEAD_CHARS, TAIL_CHARS) == (700, 300)  # "its first 700 and last 300 characters"
    first, paraphrase = (t + " " + "x" * (cut - len(t) - 1) for t in (FIRST, PARAPHRASE))
    engine = cached_engine(fake_server)
    try:
        assert len(first) == len(paraphrase) == cut
        engine.complete(first, temperature=0)
        assert engine.complete(paraphrase, temperature=0).attempts == []  # by meaning
        engine.complete(paraphrase + "!", temperature=0)  # 1,001 characters: exact only
        assert upstream_calls(fake_server) == 2 and len(engine.executor.cache.index) == 1
    finally:
        engine.close()


def test_the_text_is_the_task_text_of_the_last_user_message_as_decide_reads_it(fake_server: FakeServer) -> None:
    """Claim: "The text compared is the task text, meaning the text of the last user message" (its text parts, as
    decide() joins them; "a text sent as text parts counts as the same text sent as a string"), and "When decide()
    already embedded the request (a `like` task), its vector ... is reused": the cache embeds nothing of its own."""
    bag = BagOfWords()
    tasks = 'task code = like ["python function parse dates"] >= 0.5\nwhen task is code use alpha-mini\n'
    engine = engine_for(fake_server, SEMANTIC + tasks + "otherwise use beta-chat\n", embedder=bag)
    earlier = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    parts = [{"type": "text", "text": "write a python function"}, {"type": "text", "text": "to parse dates"}]
    try:
        compiled = len(bag.embedded)
        assert engine.complete(messages=[*earlier, {"role": "user", "content": parts}], temperature=0).attempts
        assert engine.complete(messages=[*earlier, *user(PARAPHRASE)], temperature=0).attempts == []
        assert bag.embedded[compiled:] == ["write a python function\nto parse dates", PARAPHRASE]  # by decide()
        assert upstream_calls(fake_server) == 1
    finally:
        engine.close()


def test_the_plan_is_part_of_the_scope(gateway, fake_server: FakeServer) -> None:
    """Claim: "The scope covers the model plan": the same texts decided onto another plan never match."""
    _, url = gateway(SEMANTIC + 'when tier == "pro" use alpha-large\n' + POLICY)
    c, pro = client(url), {"extra_headers": {"x-route-tier": "pro"}}
    ask(c, messages=user(FIRST))
    _, h = ask(c, messages=user(PARAPHRASE), **pro)  # plan [alpha-large]: another scope
    assert h[CACHE_HEADER] == "miss" and h["x-modelroute-model"] == "alpha-large"
    _, h = ask(c, messages=user(FIRST.upper()), **pro)  # the same plan: by meaning
    assert h[CACHE_HEADER] == "hit" and h["x-modelroute-model"] == "alpha-large"
    assert upstream_calls(fake_server) == 2


def test_the_endpoint_is_part_of_the_scope(gateway, fake_server: FakeServer) -> None:
    """Claim: "The scope covers ... the endpoint": a chat answer never answers a Responses request by meaning."""
    _, url = gateway()
    c = client(url)
    ask(c, messages=user(FIRST))

    def respond(text: str) -> str:
        raw = c.responses.with_raw_response.create(model="auto", input=text, temperature=0)
        return str(raw.headers[CACHE_HEADER])

    assert respond(PARAPHRASE) == "miss"
    assert respond(FIRST) == "hit"  # by meaning, within the responses endpoint
    assert upstream_calls(fake_server) == 2


class City(BaseModel):
    city: str


def test_the_schema_is_part_of_the_scope(fake_server: FakeServer) -> None:
    """Claim: "The scope covers ... the schema" (Python: `schema=`)."""
    fake_server.default = Reply(text='{"city": "Paris"}')
    engine = cached_engine(fake_server)
    try:
        engine.complete(FIRST, temperature=0)
        assert engine.complete(PARAPHRASE, temperature=0, schema=City).attempts != []
        hit = engine.complete(FIRST.upper(), temperature=0, schema=City)
        assert hit.attempts == [] and hit.parsed == City(city="Paris")
        assert upstream_calls(fake_server) == 2
    finally:
        engine.close()


def test_provider_extras_are_part_of_the_scope(fake_server: FakeServer) -> None:
    """Claim: "The scope covers ... the provider extras" (Python: `extra=`)."""
    engine = cached_engine(fake_server)
    try:
        engine.complete(FIRST, temperature=0)
        assert engine.complete(PARAPHRASE, temperature=0, extra={"top_k": 3}).attempts != []
        assert engine.complete(FIRST.upper(), temperature=0, extra={"top_k": 3}).attempts == []
        assert upstream_calls(fake_server) == 2
    finally:
        engine.close()


def test_the_other_output_changing_fields_are_part_of_the_scope(gateway, fake_server: FakeServer) -> None:
    """Claim: "the other sampling fields, ... tool_choice, ... stop, `n`": each keeps its own answer (temperature,
    tools, response_format and max_tokens: tests/test_semantic_cache.py)."""
    _, url = gateway()
    c = client(url)
    ask(c, messages=user(FIRST), tools=[TOOL])
    variants: list[dict[str, Any]] = [
        {"tool_choice": "none"},
        {"top_p": 0.5},
        {"seed": 7},
        {"presence_penalty": 1.0},
        {"stop": ["END"]},
        {"n": 2},
    ]
    for kw in variants:
        assert ask(c, messages=user(PARAPHRASE), tools=[TOOL], **kw)[1][CACHE_HEADER] == "miss", kw
    assert ask(c, messages=user(PARAPHRASE), tools=[TOOL])[1][CACHE_HEADER] == "hit"
    assert upstream_calls(fake_server) == 1 + len(variants)


def test_the_non_text_parts_of_the_last_user_message_are_part_of_the_scope(gateway, fake_server: FakeServer) -> None:
    """Claim: "The scope covers ... the non-text parts of the last user message (images, files)"."""
    _, url = gateway(VISION)
    c = client(url)

    def with_image(text: str, image: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [{"type": "text", "text": text}, image]}]

    ask(c, messages=with_image(FIRST, IMAGE))
    assert ask(c, messages=with_image(PARAPHRASE, OTHER_IMAGE))[1][CACHE_HEADER] == "miss"  # another image
    assert ask(c, messages=user(PARAPHRASE))[1][CACHE_HEADER] == "miss"  # no image
    assert ask(c, messages=with_image(FIRST.upper(), IMAGE))[1][CACHE_HEADER] == "hit"  # the same image
    assert upstream_calls(fake_server) == 3


def test_later_tool_messages_are_part_of_the_scope(gateway, fake_server: FakeServer) -> None:
    """Claim: "The scope covers ... every earlier message (and any later tool message)": after the question, the tool
    call and its result must be the same; the question's text is matched by meaning."""
    _, url = gateway()
    c = client(url)
    ask(c, messages=[*user(FIRST), CALLED, result("42")], tools=[TOOL])
    assert ask(c, messages=[*user(PARAPHRASE), CALLED, result("43")], tools=[TOOL])[1][CACHE_HEADER] == "miss"
    assert ask(c, messages=[*user(PARAPHRASE), CALLED, result("42")], tools=[TOOL])[1][CACHE_HEADER] == "hit"
    assert upstream_calls(fake_server) == 2


# ---- a request without user text ---------------------------------------------------------------------------------
NO_USER_TEXT = {
    "only a system message": lambda text: [{"role": "system", "content": text}],
    "only tool results": lambda text: [CALLED, result(text)],
    "only an image in the last user message": lambda text: [
        *user(text),
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [IMAGE]},
    ],
    "blank user text": lambda text: [{"role": "system", "content": text}, {"role": "user", "content": "   "}],
}


@pytest.mark.parametrize("messages", NO_USER_TEXT.values(), ids=NO_USER_TEXT.keys())
def test_a_request_without_user_text_is_matched_exactly_only(
    gateway, fake_server: FakeServer, messages: Callable[[str], list[dict[str, Any]]]
) -> None:
    """Claim: "A request without user text is also matched exactly only": the other texts of such requests are never
    compared, and nothing is embedded or indexed for them."""
    engine, url = gateway(VISION)
    c = client(url)
    ask(c, messages=messages(FIRST), tools=[TOOL])
    assert ask(c, messages=messages(PARAPHRASE), tools=[TOOL])[1][CACHE_HEADER] == "miss"
    _, h = ask(c, messages=messages(FIRST), tools=[TOOL])
    assert h[CACHE_HEADER] == "hit" and SIMILARITY_HEADER not in h  # exact
    assert upstream_calls(fake_server) == 2
    assert embedded(engine) == [] and len(engine.executor.cache.index) == 0


def test_embeddings_are_never_matched_by_meaning() -> None:
    """Claim: "Embeddings (`/v1/embeddings`) are never matched by meaning": exact only, nothing embedded for
    the cache."""
    from tests.embedserver import EmbedServer
    from tests.test_gateway_embeddings import POLICY as EMBED_POLICY
    from tests.test_gateway_embeddings import make_engine

    bag = BagOfWords()
    with EmbedServer() as upstream:
        engine = make_engine(upstream, "set cache.ttl = 1h\nset cache.semantic = 0.5\n" + EMBED_POLICY)
        engine.executor.cache.embedder = bag
        try:
            with ThreadServer(create_app(engine)) as server:
                c = client(server.url)

                def embed(text: str) -> str:
                    raw = c.embeddings.with_raw_response.create(model="auto", input=text, encoding_format="float")
                    return str(raw.headers[CACHE_HEADER])

                assert [embed(FIRST), embed(FIRST.upper()), embed(PARAPHRASE), embed(FIRST)] == [
                    "miss",
                    "miss",  # cosine 1.0 in the test embedder: not compared
                    "miss",
                    "hit",
                ]
                assert len(upstream.requests) == 3 and bag.embedded == [] and len(engine.executor.cache.index) == 0
        finally:
            engine.close()


# ---- Rules and cost --------------------------------------------------------------------------------------------------
def test_only_requests_the_cache_may_serve_take_part(gateway, fake_server: FakeServer) -> None:
    """Claim: "Only requests the cache may serve take part: a TTL, temperature 0 unless `cache.sampled`"; a rule's
    own TTL counts, and a rule's `cache off` keeps its requests out ("put `cache off` on those rules")."""
    engine, url = gateway("set cache.semantic = 0.85\n" + POLICY)  # no TTL
    c = client(url)
    ask(c, messages=user(FIRST))
    assert CACHE_HEADER not in ask(c, messages=user(PARAPHRASE))[1] and embedded(engine) == []

    engine, url = gateway()
    c = client(url)
    for _ in range(2):  # sampled, without cache.sampled
        assert CACHE_HEADER not in ask(c, messages=user(FIRST), temperature=0.7)[1]
    assert embedded(engine) == []
    _, url = gateway(SEMANTIC + "set cache.sampled = true\n" + POLICY)
    c = client(url)
    ask(c, messages=user(FIRST), temperature=0.7)
    assert ask(c, messages=user(PARAPHRASE), temperature=0.7)[1][CACHE_HEADER] == "hit"  # the same temperature
    assert upstream_calls(fake_server) == 5

    rules = 'when tier == "live" use alpha-mini cache off\notherwise use alpha-mini cache 10m\n'
    engine, url = gateway("set cache.semantic = 0.85\nset retry.attempts = 0\n" + rules)  # only the rules' TTLs
    c, live = client(url), {"extra_headers": {"x-route-tier": "live"}}
    ask(c, messages=user(FIRST))
    assert ask(c, messages=user(PARAPHRASE))[1][CACHE_HEADER] == "hit"  # the rule's `cache 10m`
    assert CACHE_HEADER not in ask(c, messages=user(FIRST), **live)[1]
    assert CACHE_HEADER not in ask(c, messages=user(PARAPHRASE), **live)[1]
    assert embedded(engine) == [FIRST, PARAPHRASE] and upstream_calls(fake_server) == 8


def test_no_cache_refreshes_a_wrong_entry(gateway, fake_server: FakeServer) -> None:
    """Claim: "`cache-control: no-cache` refreshes a wrong entry": the request then gets its own answer from the
    cache."""
    fake_server.script("alpha-mini", [Reply(text="answer to the first"), Reply(text="answer to the paraphrase")])
    _, url = gateway()
    c = client(url)
    ask(c, messages=user(FIRST))
    assert ask(c, messages=user(PARAPHRASE))[0] == "answer to the first"  # a wrong answer, by meaning
    fresh = ask(c, messages=user(PARAPHRASE), extra_headers={"cache-control": "no-cache"})
    assert fresh[0] == "answer to the paraphrase"
    text, h = ask(c, messages=user(PARAPHRASE))
    assert (text, h[CACHE_HEADER]) == ("answer to the paraphrase", "hit") and SIMILARITY_HEADER not in h
    assert ask(c, messages=user(FIRST))[0] == "answer to the first"
    assert upstream_calls(fake_server) == 2


def test_an_exhausted_policy_budget_refuses_an_answer_found_by_meaning(gateway, fake_server: FakeServer) -> None:
    """Claim: "The lookup comes after the budget holds, so an exhausted budget refuses even an answer found by meaning"
    (the policy's budget; a key's: tests/test_semantic_cache.py)."""
    engine, url = gateway(SEMANTIC + "budget daily $5\n" + POLICY)
    c = client(url)
    ask(c, messages=user(FIRST))
    (budget,) = [r.key for r in engine.executor.budgets.applicable(engine.policy.budgets, {})]
    assert engine.state.reserve(budget, 10.0, 1e9)[0]  # the day is spent
    with pytest.raises(openai.APIStatusError) as refused:
        ask(c, messages=user(PARAPHRASE))
    assert refused.value.status_code < 500 and upstream_calls(fake_server) == 1


def test_the_similarity_header_is_only_on_hits_found_by_meaning_streamed_too(gateway, fake_server: FakeServer) -> None:
    """Claim: "`x-modelroute-cache-similarity` (the cosine it was found at; only on hits found by meaning) and
    `x-modelroute-cost: 0`, and is replayed as SSE to a streamed request"."""
    _, url = gateway()
    c = client(url)
    ask(c, messages=user(FIRST))
    _, exact = ask(c, messages=user(FIRST))
    assert exact[CACHE_HEADER] == "hit" and SIMILARITY_HEADER not in exact
    raw = c.chat.completions.with_raw_response.create(
        model="auto", messages=user(PARAPHRASE), temperature=0, stream=True
    )
    list(raw.parse())
    h = raw.headers
    assert h[CACHE_HEADER] == "hit" and h["x-modelroute-cost"] == "0"
    assert float(h[SIMILARITY_HEADER]) == pytest.approx(cosine(FIRST, PARAPHRASE), abs=1e-4)
    assert upstream_calls(fake_server) == 1


class Stamp:
    """A middleware whose `after` hook records each answer's text and stamps it."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def after(self, request: Any, response: Any) -> str:
        self.seen.append(response.text)
        return response.text + " (checked)"


def test_middleware_after_hooks_run_on_a_hit_by_meaning(gateway, fake_server: FakeServer) -> None:
    """Claim: "Middleware `after` hooks run on it", as on an exact hit: JSON and streamed."""
    fake_server.default = Reply(text="Paris")
    stamp = Stamp()
    _, url = gateway(middleware=stamp)
    c = client(url)
    assert ask(c, messages=user(FIRST))[0] == "Paris (checked)"
    text, h = ask(c, messages=user(PARAPHRASE))
    assert (text, h[CACHE_HEADER]) == ("Paris (checked)", "hit") and SIMILARITY_HEADER in h
    raw = c.chat.completions.with_raw_response.create(
        model="auto", messages=user(PARAPHRASE + " please"), temperature=0, stream=True
    )
    streamed = "".join(choice.delta.content or "" for chunk in raw.parse() for choice in chunk.choices)
    assert streamed == "Paris (checked)" and raw.headers[CACHE_HEADER] == "hit"
    assert SIMILARITY_HEADER in raw.headers
    assert stamp.seen == ["Paris", "Paris", "Paris"] and upstream_calls(fake_server) == 1


def cached_engine(fake_server: FakeServer, policy: str = SEMANTIC + POLICY, **kw: Any) -> Any:
    engine = engine_for(fake_server, policy)
    engine.executor.cache = ResponseCache(embedder=BagOfWords(), **kw)
    return engine
