"""Token-array embeddings against tpm rate limits (providers/gateway/embeddings.py input_tokens,
providers/gateway/ratelimits.py admit): the official openai SDK sending `input=[[...token ids...]]` to the gateway
(uvicorn on loopback, the EmbedServer as upstream) under `limit N tpm per key` in; a request larger than the limit
refused with 429 at once, smaller ones charged their length until the bucket is empty, out (the limiter on an
injected clock, so nothing refills during the test)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
openai = pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")

from providers.gateway.app import create_app  # noqa: E402
from providers.gateway.keyformat import GatewayKey, hash_key  # noqa: E402
from providers.gateway.keys import KeyRing  # noqa: E402
from providers.state.ratelimit import MemoryLimiter, attach  # noqa: E402
from tests.embedserver import EmbedServer  # noqa: E402
from tests.test_gateway import ThreadServer  # noqa: E402
from tests.test_gateway_embeddings import POLICY, make_engine  # noqa: E402
from tests.test_ratelimits import Clock  # noqa: E402

SECRET = "mr-embed-tpm-key"
LIMIT = 1000


@pytest.fixture(params=["reported", "omitted"])
def client(request: pytest.FixtureRequest) -> Iterator[Any]:
    """An SDK client of a gateway limiting each key to LIMIT tokens a minute; the upstream reports its usage (the
    array's length) or omits it (the gateway's own count settles the request)."""
    with EmbedServer() as upstream:
        upstream.omit_usage = request.param == "omitted"
        engine = make_engine(upstream, f"limit {LIMIT} tpm per key\n" + POLICY)
        attach(engine.state, MemoryLimiter(Clock()))
        keys = KeyRing([GatewayKey("team", hash_key(SECRET))])
        with ThreadServer(create_app(engine, keys=keys)) as server:
            yield openai.OpenAI(base_url=server.url + "/v1", api_key=SECRET, max_retries=0)
        engine.close()


def embed(c: Any, *arrays: list[int]) -> Any:
    return c.embeddings.with_raw_response.create(model="auto", input=list(arrays), encoding_format="float")


def test_a_token_array_larger_than_the_limit_is_refused(client: Any) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        embed(client, list(range(LIMIT + 1)))
    assert f"needs about {LIMIT + 1} tokens" in info.value.message
    assert "retry-after" not in info.value.response.headers  # it would never fit
    raw = embed(client, [1, 2, 3])  # nothing was charged for the refused one
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(LIMIT - 3)


def test_token_arrays_are_charged_their_length_until_the_limit(client: Any) -> None:
    chunk = list(range(300))
    remaining = [int(embed(client, chunk).headers["x-ratelimit-remaining-tokens"]) for _ in range(3)]
    assert remaining == [LIMIT - 300, LIMIT - 600, LIMIT - 900]
    raw = embed(client, chunk[:50], chunk[:50])  # two arrays in one request: 100 tokens
    assert raw.headers["x-ratelimit-remaining-tokens"] == "0"
    with pytest.raises(openai.RateLimitError) as info:
        embed(client, [7])
    assert info.value.response.headers["x-ratelimit-remaining-tokens"] == "0"
    assert int(info.value.response.headers["retry-after"]) >= 1
