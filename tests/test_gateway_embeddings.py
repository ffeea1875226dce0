"""POST /v1/embeddings (providers/gateway/embeddings.py, providers/clients/embeddings.py): the official `openai` SDK's
`client.embeddings.create` (floats, and base64, the SDK's default) against a real uvicorn gateway whose upstreams
are a loopback server speaking OpenAI's `/embeddings` and Gemini's `batchEmbedContents`; routing by `endpoint ==
"embeddings"`, the hard constraint that keeps embedding and chat models apart (decide, explain, pins), fallback,
usage, cost and metrics out."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
openai = pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")

import httpx  # noqa: E402

from engine import Engine, NoRouteError  # noqa: E402
from engine.runtime.constraints import Code  # noqa: E402
from providers.catalog.models import ProviderSpec  # noqa: E402
from providers.gateway.app import create_app  # noqa: E402
from providers.gateway.embeddings import parse_embeddings  # noqa: E402
from providers.gateway.openai_wire import ApiError  # noqa: E402
from tests.embedserver import EmbedServer, embedding_catalog, vector  # noqa: E402
from tests.test_gateway import ThreadServer  # noqa: E402

POLICY = """
set retry.attempts = 1
set retry.backoff = 5ms
set overrides = true
when endpoint == "embeddings" and tier == "g" use embed-gamma
when endpoint == "embeddings" use embed-small fallback embed-gamma
when tier == "cheap" prefer cheapest where provider in [acme]
otherwise use alpha-mini
"""
KEYS = {"acme": "sk-acme", "gammalabs": "g-key", "betacorp": "b-key"}


def specs(server: EmbedServer) -> dict[str, ProviderSpec]:
    return {
        "acme": ProviderSpec(name="acme", kind="openai", base_url=server.url + "/v1", api_key_env="TEST_ACME_KEY"),
        "gammalabs": ProviderSpec(name="gammalabs", kind="gemini", base_url=server.url, api_key_env="TEST_G_KEY"),
        "betacorp": ProviderSpec(name="betacorp", kind="anthropic", base_url=server.url, api_key_env="TEST_B_KEY"),
    }


def make_engine(server: EmbedServer, policy: str = POLICY) -> Engine:
    return Engine.from_source(policy, catalog=embedding_catalog(), providers=specs(server), api_keys=KEYS)


@pytest.fixture
def upstream() -> Iterator[EmbedServer]:
    with EmbedServer() as server:
        yield server


@pytest.fixture
def gw(upstream: EmbedServer) -> Iterator[Any]:
    engine = make_engine(upstream)
    with ThreadServer(create_app(engine)) as server:

        class Handle:
            url = server.url
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)

            def post(self, body: Any, **headers: str) -> httpx.Response:
                return httpx.post(self.url + "/v1/embeddings", json=body, headers=headers, timeout=10)

        Handle.engine = engine  # type: ignore[attr-defined]
        yield Handle()
    engine.close()


# ---- the openai SDK ------------------------------------------------------------------------------------------
def test_sdk_floats_routed_to_the_embedding_model(gw: Any, upstream: EmbedServer) -> None:
    raw = gw.client.embeddings.with_raw_response.create(model="auto", input=["hello", "hi"], encoding_format="float")
    result = raw.parse()
    assert [d.embedding for d in result.data] == [vector("hello"), vector("hi")]  # in input order
    assert [d.index for d in result.data] == [0, 1] and result.model == "embed-small"
    assert result.usage.prompt_tokens == 7 and result.usage.total_tokens == 7  # as the upstream reported
    assert raw.headers["x-modelroute-model"] == "embed-small" and raw.headers["x-modelroute-fallbacks"] == "0"
    sent = upstream.requests[-1]
    assert sent.path == "/v1/embeddings" and sent.headers["authorization"] == "Bearer sk-acme"
    assert sent.body == {"model": "embed-small", "input": ["hello", "hi"], "encoding_format": "float"}


def test_sdk_default_base64_is_float32_little_endian(gw: Any, upstream: EmbedServer) -> None:
    result = gw.client.embeddings.create(model="auto", input="hello")  # the SDK asks for base64 by default
    assert result.data[0].embedding == vector("hello")  # the SDK decoded our base64
    body = gw.post({"model": "auto", "input": "hello", "encoding_format": "base64"}).json()
    encoded = body["data"][0]["embedding"]
    assert isinstance(encoded, str)
    assert list(struct.unpack("<3f", base64.b64decode(encoded))) == vector("hello")
    assert upstream.requests[-1].body["encoding_format"] == "float"  # the upstream is always asked for floats


def test_token_arrays_dimensions_and_user_go_to_openai_as_sent(gw: Any, upstream: EmbedServer) -> None:
    result = gw.client.embeddings.create(model="auto", input=[[1, 2, 3], [4]], dimensions=5, user="u-1")
    assert [len(d.embedding) for d in result.data] == [5, 5]
    assert upstream.requests[-1].body == {
        "model": "embed-small",
        "input": [[1, 2, 3], [4]],
        "encoding_format": "float",
        "dimensions": 5,
        "user": "u-1",
    }


def test_gemini_batch_embed_contents(gw: Any, upstream: EmbedServer) -> None:
    client = gw.client.with_options(default_headers={"x-route-tier": "g"})
    raw = client.embeddings.with_raw_response.create(model="auto", input=["one", "three"], dimensions=4)
    result = raw.parse()
    assert result.model == "embed-gamma" and [d.embedding for d in result.data] == [
        vector("one", 4),
        vector("three", 4),
    ]
    sent = upstream.requests[-1]
    assert sent.path == "/v1beta/models/embed-gamma:batchEmbedContents" and sent.headers["x-goog-api-key"] == "g-key"
    assert sent.body == {
        "requests": [
            {"model": "models/embed-gamma", "content": {"parts": [{"text": "one"}]}, "outputDimensionality": 4},
            {"model": "models/embed-gamma", "content": {"parts": [{"text": "three"}]}, "outputDimensionality": 4},
        ]
    }
    assert result.usage.prompt_tokens > 0  # Gemini reports none: estimated from what was sent


def test_gemini_refuses_token_arrays_without_calling(gw: Any, upstream: EmbedServer) -> None:
    r = gw.post({"model": "auto", "input": [[1, 2]]}, **{"x-route-tier": "g"})
    assert r.status_code == 400 and "token arrays cannot be sent to a Gemini model" in r.json()["error"]["message"]
    assert upstream.requests == []


def test_fallback_usage_cost_and_metrics(gw: Any, upstream: EmbedServer) -> None:
    upstream.fail("embed-small", 503)
    raw = gw.client.embeddings.with_raw_response.create(model="auto", input="abcd", encoding_format="float")
    assert raw.parse().model == "embed-gamma" and raw.headers["x-modelroute-fallbacks"] == "1"
    upstream.failures.clear()
    gw.client.embeddings.create(model="auto", input="abcdefgh", encoding_format="float")
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'modelroute_requests_total{endpoint="embeddings",status="200"} 2' in metrics
    assert 'modelroute_tokens_total{model="embed-small",direction="input"} 8' in metrics
    # cost = input tokens x input price ($0.02 per 1M tokens)
    assert f'modelroute_spend_usd_total{{model="embed-small"}} {8 * 0.02e-6!r}' in metrics
    assert 'modelroute_failures_total{model="embed-small",' in metrics


def test_a_transient_error_is_retried_on_the_same_model(upstream: EmbedServer) -> None:
    engine = make_engine(upstream, POLICY.replace("retry.attempts = 1", "retry.attempts = 2"))
    upstream.fail("embed-small", 503, times=1)
    try:
        with ThreadServer(create_app(engine)) as server:
            r = httpx.post(server.url + "/v1/embeddings", json={"model": "auto", "input": "abc"}, timeout=10)
    finally:
        engine.close()
    assert r.status_code == 200 and r.json()["model"] == "embed-small" and r.headers["x-modelroute-attempts"] == "2"
    assert [q.path for q in upstream.requests] == ["/v1/embeddings", "/v1/embeddings"]


def test_a_key_budget_holds_and_is_charged(upstream: EmbedServer) -> None:
    from providers.gateway.keys import GatewayKey, KeyRing, hash_key

    engine = make_engine(upstream, 'when endpoint == "embeddings" use embed-small\notherwise use alpha-mini')
    keys = KeyRing([GatewayKey("k", hash_key("mr-k"), daily_budget=9e-6)])
    try:
        with ThreadServer(create_app(engine, keys=keys)) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="mr-k", max_retries=0)
            # the upstream bills 400 tokens: 400 x $0.02 per 1M = $0.000008 of the key's $0.000009
            assert client.embeddings.create(model="auto", input="x" * 400).usage.prompt_tokens == 400
            with pytest.raises(openai.RateLimitError) as info:  # 429: what is left cannot hold another request
                client.embeddings.create(model="auto", input="y" * 400)
            assert "daily budget of gateway key `k`" in str(info.value)
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).embeddings.create(
                    model="auto", input="x"
                )
    finally:
        engine.close()
    assert len(upstream.requests) == 1


# ---- never crossing over --------------------------------------------------------------------------------------
def test_decide_and_explain_keep_embedding_and_chat_models_apart(upstream: EmbedServer) -> None:
    engine = make_engine(upstream, "otherwise prefer cheapest where provider in [acme]")
    try:
        assert engine.decide("hello").model == "alpha-mini"  # embed-small is cheaper, but not a chat model
        assert engine.decide("hello", endpoint="embeddings").model == "embed-small"
        text = engine.decide("hello").explain()  # explain names why the embedding model is out
        assert "embed-small" in text and "an embedding model (request is not for embeddings)" in text
        text = engine.decide("hello", endpoint="embeddings").explain()
        assert "alpha-mini" in text and "not an embedding model (request is for embeddings)" in text
        with pytest.raises(NoRouteError):
            make_engine(upstream, "otherwise use alpha-mini").decide("x", endpoint="embeddings")
    finally:
        engine.close()


def test_a_chat_model_is_never_an_embedding_candidate(upstream: EmbedServer) -> None:
    engine = make_engine(upstream, "otherwise use alpha-mini fallback alpha-large")
    try:
        with ThreadServer(create_app(engine)) as server:
            r = httpx.post(server.url + "/v1/embeddings", json={"model": "auto", "input": "x"}, timeout=10)
            assert r.status_code == 400 and r.json()["error"]["code"] == "no_route"
            chat = httpx.post(
                server.url + "/v1/chat/completions",
                json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
                timeout=10,
            )
            assert chat.status_code == 200 and chat.headers["x-modelroute-model"] == "alpha-mini"
    finally:
        engine.close()
    assert [r.path for r in upstream.requests] == ["/v1/chat/completions"]


def test_pins_are_checked_by_the_same_constraint(gw: Any, upstream: EmbedServer) -> None:
    r = gw.post({"model": "alpha-mini", "input": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_unsuitable"
    assert "not an embedding model" in r.json()["error"]["message"]
    assert gw.client.embeddings.create(model="embed-gamma", input="x").model == "embed-gamma"
    chat = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "embed-small", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert chat.status_code == 400 and "an embedding model" in chat.json()["error"]["message"]
    assert [r.path for r in upstream.requests] == ["/v1beta/models/embed-gamma:batchEmbedContents"]


def test_endpoint_code_is_stable() -> None:
    assert Code.ENDPOINT.value == "endpoint"


# ---- request checks -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "auto", "input": []}, "input"),
        ({"model": "auto", "input": ""}, "input"),
        ({"model": "auto", "input": ["a", [1]]}, "input"),
        ({"model": "auto", "input": [[]]}, "input"),
        ({"model": "auto", "input": 3}, "input"),
        ({"model": "auto", "input": "a", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "auto", "input": "a", "dimensions": 0}, "dimensions"),
        ({"model": "auto", "input": "a", "dimensions": True}, "dimensions"),
        ({"model": "auto", "input": "a", "user": 3}, "user"),
        ({"input": "a"}, "model"),
    ],
)
def test_bad_requests_are_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_embeddings(body, {})
    assert info.value.status == 400 and info.value.param == param


def test_unknown_fields_and_bad_json_are_400(gw: Any) -> None:
    r = gw.post({"model": "auto", "input": "a", "colour": "blue"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_field"
    bad = httpx.post(gw.url + "/v1/embeddings", content=b"{", timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"


def test_a_request_cannot_set_endpoint_itself(gw: Any, upstream: EmbedServer) -> None:
    r = gw.post({"model": "auto", "input": "a"}, **{"x-route-endpoint": "chat"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "reserved_attribute"
    assert upstream.requests == []
