"""A first run that explains itself (providers/gateway/run.py `provider_report` and `routing_error`, the bundled
policy): provider keys present or missing in the environment in; start-up lines naming each provider's variable
(never its value) and the models it cannot serve, and a 503 naming the variable to set, out — through the gateway
app, and through `modelroute serve` in a subprocess whose environment has no provider keys. decide() itself never
reads the environment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
openai = pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")

import httpx  # noqa: E402

from engine import Engine  # noqa: E402
from providers.catalog.models import ProviderSpec  # noqa: E402
from providers.gateway.app import create_app  # noqa: E402
from providers.gateway.run import provider_report  # noqa: E402
from tests.embedserver import EmbedServer, embedding_catalog  # noqa: E402
from tests.test_gateway import Serve, ThreadServer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CANARY = "sk-canary-value-never-logged-4242"
POLICY = """
set retry.attempts = 1
set retry.backoff = 5ms
when endpoint == "embeddings" use embed-small
when tier == "pro" use beta-coder fallback alpha-mini
otherwise use alpha-mini fallback gamma-flash
"""
ENV = {"acme": "TEST_FR_ACME_KEY", "betacorp": "TEST_FR_BETA_KEY", "gammalabs": "TEST_FR_GAMMA_KEY"}


@pytest.fixture
def upstream() -> Iterator[EmbedServer]:
    with EmbedServer() as server:
        yield server


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV.values():
        monkeypatch.delenv(var, raising=False)


def make_engine(server: EmbedServer, policy: str = POLICY) -> Engine:
    """The fixture catalog, each provider reading its key from its own variable (none passed in Python)."""
    kinds = {"acme": "openai", "betacorp": "anthropic", "gammalabs": "gemini"}
    specs = {
        name: ProviderSpec(
            name=name,
            kind=kind,
            base_url=server.url + ("/v1" if kind == "openai" else ""),
            api_key_env=ENV[name],
            timeout_s=5,
        )
        for name, kind in kinds.items()
    }
    specs["local"] = ProviderSpec(name="local", kind="openai", base_url="http://127.0.0.1:9/v1")  # needs no key
    return Engine.from_source(policy, catalog=embedding_catalog(), providers=specs)


# ---- the start-up report ----------------------------------------------------------------------------------------
def test_report_names_variables_never_values(upstream: EmbedServer, no_keys: None, monkeypatch: Any) -> None:
    monkeypatch.setenv("TEST_FR_ACME_KEY", CANARY)
    engine = make_engine(upstream)
    try:
        lines = provider_report([engine])
    finally:
        engine.close()
    text = "\n".join(lines)
    assert CANARY not in text
    assert lines[0] == "providers with keys: acme (TEST_FR_ACME_KEY)"
    assert lines[1] == "providers without keys (local): local (http://127.0.0.1:9/v1)"
    beta = next(line for line in lines if line.startswith("provider betacorp:"))
    assert "TEST_FR_BETA_KEY is not set" in beta and "beta-coder" in beta and "beta-chat" in beta
    assert "alpha-mini" not in beta and "warning" not in text  # one provider has a key


def test_report_warns_when_no_provider_has_a_key(upstream: EmbedServer, no_keys: None) -> None:
    engine = make_engine(upstream)
    try:
        lines = provider_report([engine])
    finally:
        engine.close()
    assert lines[-1].startswith("warning: no provider has an API key")
    assert all(var in lines[-1] for var in ENV.values())


def test_decide_never_reads_the_environment(upstream: EmbedServer, no_keys: None, monkeypatch: Any) -> None:
    engine = make_engine(upstream)
    try:
        before = engine.decide("hello", tier="pro")
        monkeypatch.setenv("TEST_FR_BETA_KEY", CANARY)
        after = engine.decide("hello", tier="pro")
        assert (
            (before.model, before.chain) == (after.model, after.chain) == ("beta-coder", ["beta-coder", "alpha-mini"])
        )
    finally:
        engine.close()


# ---- 503 naming the variable, through the gateway app -------------------------------------------------------------
def test_503_names_the_missing_variables(upstream: EmbedServer, no_keys: None) -> None:
    engine = make_engine(upstream)
    try:
        with ThreadServer(create_app(engine)) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
            with pytest.raises(openai.APIStatusError) as info:
                client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
            assert info.value.status_code == 503
            error = info.value.body
            assert isinstance(error, dict) and error["code"] == "models_unavailable"
            assert "set TEST_FR_ACME_KEY (for alpha-mini) or TEST_FR_GAMMA_KEY (for gamma-flash)" in error["message"]
            with pytest.raises(openai.APIStatusError) as info:
                client.embeddings.create(model="auto", input="hi")
            assert info.value.status_code == 503 and "TEST_FR_ACME_KEY (for embed-small)" in str(info.value.body)
    finally:
        engine.close()
    assert upstream.requests == []  # nothing was sent anywhere


def test_a_failure_names_the_missing_variable_of_the_skipped_fallback(
    upstream: EmbedServer, no_keys: None, monkeypatch: Any
) -> None:
    monkeypatch.setenv("TEST_FR_ACME_KEY", CANARY)
    upstream.fail("alpha-mini", 500)
    engine = make_engine(upstream)
    try:
        with ThreadServer(create_app(engine)) as server:
            r = httpx.post(
                server.url + "/v1/chat/completions",
                json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
                timeout=10,
            )
    finally:
        engine.close()
    assert r.status_code == 502
    message = r.json()["error"]["message"]
    assert "gamma-flash: ProviderUnavailable (no API key: environment variable TEST_FR_GAMMA_KEY is not set)" in message
    assert CANARY not in r.text


# ---- `modelroute serve` with no provider keys in its environment ---------------------------------------------------
def keyless_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def test_serve_without_keys_explains_itself() -> None:
    serve = Serve(REPO / "policies", env=keyless_env(), log_level=None)
    try:
        chat = httpx.post(
            serve.url + "/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": "hello"}]},
            timeout=10,
        )
        free = httpx.post(
            serve.url + "/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": "hello"}]},
            headers={"x-route-tier": "free"},
            timeout=10,
        )
        embed = httpx.post(serve.url + "/v1/embeddings", json={"model": "auto", "input": "hello"}, timeout=10)
    finally:
        err = serve.stop()
    assert chat.status_code == 503 and chat.json()["error"]["code"] == "models_unavailable"
    assert "set OPENAI_API_KEY (for gpt-4o-mini) or ANTHROPIC_API_KEY (for claude-haiku-4-5)" in chat.text
    # the free tier does not go to a local server nobody configured (that was a 502 from Ollama's port)
    assert free.status_code == 503 and "GROQ_API_KEY (for llama-3.1-8b-instant)" in free.text
    assert "llama3.1-local" not in free.text
    assert embed.status_code == 503 and "OPENAI_API_KEY (for text-embedding-3-small)" in embed.text
    assert (
        "provider openai: no API key: environment variable OPENAI_API_KEY is not set; models it cannot serve: " in err
    )
    assert "providers without keys (local): ollama (http://127.0.0.1:11434/v1)" in err
    assert "warning: no provider has an API key" in err and "Traceback" not in err


def test_serve_names_the_keys_it_has_but_never_their_values() -> None:
    serve = Serve(REPO / "policies", env=keyless_env(GROQ_API_KEY=CANARY), log_level=None)
    err = serve.stop()
    assert "providers with keys: groq (GROQ_API_KEY)" in err
    assert "provider openai: no API key: environment variable OPENAI_API_KEY is not set" in err
    assert CANARY not in err and "warning: no provider has an API key" not in err


def test_a_stream_gets_the_same_503(upstream: EmbedServer, no_keys: None) -> None:
    engine = make_engine(upstream)
    try:
        with ThreadServer(create_app(engine)) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
            with pytest.raises(openai.APIStatusError) as info:
                for _ in client.chat.completions.create(
                    model="auto", messages=[{"role": "user", "content": "hi"}], stream=True
                ):
                    pass
    finally:
        engine.close()
    assert info.value.status_code == 503 and "set TEST_FR_ACME_KEY (for alpha-mini)" in str(info.value.body)
