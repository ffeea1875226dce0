"""Azure OpenAI as a provider kind (providers/clients/azure.py): a catalog with `kind: azure` in; requests against a
loopback server that checks the deployment URL (or the v1 URL), the `api-key` header and the `api-version` query
out, for chat, streamed chat and embeddings, from the client and through the gateway with the official openai SDK."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import Engine
from providers.catalog.issues import CatalogError
from providers.catalog.loader import load_catalog
from providers.catalog.models import ModelSpec, ProviderSpec
from providers.clients import AzureClient, client_for
from providers.clients.azure import DEFAULT_API_VERSION
from providers.clients.embeddings import EmbeddingRequest, embedding_client, response_vectors
from providers.errors import AuthError
from providers.types import ChatRequest, Message
from tests.embedserver import EmbedServer, vector

AZURE_KEY = "az-secret-key-123"
CHAT = ModelSpec(name="gpt-4o-az", provider="az", id="my-gpt4o", context=128000, input_price=1e-6, output_price=2e-6,
                 latency_ms=500)  # fmt: skip
EMBED = ModelSpec(name="emb-az", provider="az", id="my-embed", context=8191, input_price=2e-8, output_price=0,
                  latency_ms=200, supports=frozenset({"embeddings"}))  # fmt: skip
HI = ChatRequest(messages=[Message.user("hi")])


@pytest.fixture
def azure() -> Iterator[EmbedServer]:
    with EmbedServer(azure_key=AZURE_KEY) as server:
        yield server


def spec(server: EmbedServer, suffix: str = "", **kw: Any) -> ProviderSpec:
    return ProviderSpec(name="az", kind="azure", base_url=server.url + suffix, api_key_env="TEST_AZURE_KEY", **kw)


def test_deployment_url_api_key_header_and_default_api_version(azure: EmbedServer) -> None:
    client = client_for(spec(azure), api_key=AZURE_KEY)
    assert type(client) is AzureClient
    with client:
        reply = client.chat(CHAT, HI)
    assert reply.text == "hello" and reply.usage.input_tokens == 5
    sent = azure.requests[-1]
    assert sent.path == "/openai/deployments/my-gpt4o/chat/completions"
    assert sent.query == {"api-version": [DEFAULT_API_VERSION]}
    assert sent.headers["api-key"] == AZURE_KEY and "authorization" not in sent.headers
    assert sent.body["model"] == "my-gpt4o"


def test_api_version_is_configurable_per_provider(azure: EmbedServer) -> None:
    with client_for(spec(azure, api_version="2025-04-01-preview"), api_key=AZURE_KEY) as client:
        client.chat(CHAT, HI)
    assert azure.requests[-1].query == {"api-version": ["2025-04-01-preview"]}
    with client_for(spec(azure, "/openai"), api_key=AZURE_KEY) as client:  # a base_url ending in /openai works too
        client.chat(CHAT, HI)
    assert azure.requests[-1].path == "/openai/deployments/my-gpt4o/chat/completions"


def test_v1_form_has_no_api_version(azure: EmbedServer) -> None:
    with client_for(spec(azure, "/openai/v1"), api_key=AZURE_KEY) as client:
        assert client.chat(CHAT, HI).text == "hello"
    sent = azure.requests[-1]
    assert sent.path == "/openai/v1/chat/completions" and sent.query == {} and sent.body["model"] == "my-gpt4o"
    assert sent.headers["api-key"] == AZURE_KEY
    with client_for(spec(azure, "/openai/v1", api_version="preview"), api_key=AZURE_KEY) as client:
        client.chat(CHAT, HI)  # a v1 provider that sets api_version sends it
    assert azure.requests[-1].query == {"api-version": ["preview"]}


def test_streaming_skips_azures_empty_first_chunk(azure: EmbedServer) -> None:
    async def run() -> list[Any]:
        async with client_for(spec(azure), api_key=AZURE_KEY) as client:
            return [e async for e in client.astream(CHAT, HI)]

    events = asyncio.run(run())
    assert "".join(e.text or "" for e in events if e.kind == "delta") == "hello"
    done = events[-1]
    assert done.kind == "done" and done.response.usage.output_tokens == 2
    assert azure.requests[-1].body["stream"] is True
    assert azure.requests[-1].query == {"api-version": [DEFAULT_API_VERSION]}


@pytest.mark.parametrize(
    ("suffix", "path", "query"),
    [
        ("", "/openai/deployments/my-embed/embeddings", {"api-version": [DEFAULT_API_VERSION]}),
        ("/openai/v1", "/openai/v1/embeddings", {}),
    ],
)
def test_embeddings_both_url_forms(azure: EmbedServer, suffix: str, path: str, query: dict[str, Any]) -> None:
    async def run() -> Any:
        async with client_for(spec(azure, suffix), api_key=AZURE_KEY) as chat:
            return await embedding_client(chat).achat(EMBED, EmbeddingRequest(messages=[], inputs=["abc", "de"]))

    response = asyncio.run(run())
    assert response_vectors(response) == [vector("abc"), vector("de")] and response.usage.input_tokens == 5
    sent = azure.requests[-1]
    assert (sent.path, sent.query, sent.headers["api-key"]) == (path, query, AZURE_KEY)
    assert sent.body == {"model": "my-embed", "input": ["abc", "de"], "encoding_format": "float"}


def test_a_wrong_key_is_an_auth_error_and_never_shown(azure: EmbedServer) -> None:
    with client_for(spec(azure), api_key="wrong-key-456") as client, pytest.raises(AuthError) as info:
        client.chat(CHAT, HI)
    assert info.value.status == 401 and "wrong-key-456" not in str(info.value)


def test_catalog_kind_azure_needs_a_base_url_and_reads_api_version(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "providers:\n"
        "  az: {kind: azure, base_url: 'https://res.openai.azure.com', api_key_env: AZURE_API_KEY,"
        " api_version: 2024-06-01}\n"
        "models:\n"
        "  m: {provider: az, id: my-deploy, context: 8k, price: {input: 1, output: 2}, latency_ms: 100}\n"
    )
    provider = load_catalog(good).providers["az"]
    assert provider.kind == "azure" and provider.api_version == "2024-06-01"
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers:\n  az: {kind: azure, api_key_env: AZURE_API_KEY}\nmodels: {}\n")
    with pytest.raises(CatalogError) as info:
        load_catalog(bad)
    issue = info.value.issues[0]
    assert "needs a base_url" in issue.message and issue.line == 2 and "openai.azure.com" in (issue.hint or "")


# ---- through the gateway, with the openai SDK -------------------------------------------------------------------
def test_gateway_chat_stream_and_embeddings_over_azure(azure: EmbedServer, tmp_path: Path) -> None:
    openai = pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    from providers.gateway.app import create_app
    from tests.test_gateway import ThreadServer

    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "providers:\n"
        f"  az: {{kind: azure, base_url: '{azure.url}', api_key_env: TEST_AZURE_KEY, api_version: 2024-10-21}}\n"
        "models:\n"
        "  gpt-az: {provider: az, id: prod-gpt, context: 128k, price: {input: 1, output: 2}, latency_ms: 100,"
        " supports: [tools, streaming]}\n"
        "  emb-az: {provider: az, id: prod-embed, context: 8k, price: {input: 0.02, output: 0}, latency_ms: 50,"
        " supports: [embeddings]}\n"
    )
    (tmp_path / "main.route").write_text(
        'catalog "catalog.yaml"\nwhen endpoint == "embeddings" use emb-az\notherwise use gpt-az\n'
    )
    engine = Engine.load(tmp_path / "main.route", api_keys={"az": AZURE_KEY})
    try:
        with ThreadServer(create_app(engine)) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
            chat = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
            assert chat.choices[0].message.content == "hello" and chat.model == "gpt-az"
            chunks = client.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello"
            emb = client.embeddings.create(model="auto", input=["abcd"])
            assert emb.model == "emb-az" and emb.data[0].embedding == vector("abcd")
    finally:
        engine.close()
    paths = [(r.path, r.query.get("api-version")) for r in azure.requests]
    assert paths == [
        ("/openai/deployments/prod-gpt/chat/completions", ["2024-10-21"]),
        ("/openai/deployments/prod-gpt/chat/completions", ["2024-10-21"]),
        ("/openai/deployments/prod-embed/embeddings", ["2024-10-21"]),
    ]
    assert all(r.headers["api-key"] == AZURE_KEY for r in azure.requests)
