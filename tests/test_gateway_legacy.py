"""Tests for POST /v1/completions and GET /v1/models/{id} (providers/gateway/legacy.py): the official `openai` SDK
(completions.create, models.retrieve) and raw httpx in, against a real uvicorn gateway whose upstreams are the
loopback FakeServer speaking each wire format; `text_completion` objects and stream chunks, model objects, and
OpenAI-shaped errors (404 model_not_found, refused fields) out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
openai = pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")

from tests.endpoint_gateway import BY_KIND, KEY, LIMITED_KEY, Served, serving, sse_frames  # noqa: E402
from tests.fakeserver import FakeServer, Fault, Reply  # noqa: E402


@pytest.fixture
def gw(fake_server: FakeServer) -> Iterator[Served]:
    yield from serving(fake_server)


def client(gw: Served, key: str = KEY) -> Any:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def sent_max(body: dict[str, Any]) -> Any:
    """The output bound an OpenAI-kind upstream received (the client may send either name)."""
    return body.get("max_completion_tokens", body.get("max_tokens"))


# ---- POST /v1/completions ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_prompt_becomes_one_user_message_on_every_kind(gw: Served, fake_server: FakeServer, kind: str) -> None:
    model = BY_KIND[kind]
    fake_server.script(model, Reply(text=" world", input_tokens=4, output_tokens=2))
    raw = client(gw).completions.with_raw_response.create(model=model, prompt="Hello", stop=["\n"], temperature=0)
    c = raw.parse()
    assert c.object == "text_completion" and c.id.startswith("cmpl-") and c.model == model
    assert [(x.index, x.text, x.finish_reason) for x in c.choices] == [(0, " world", "stop")]
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (4, 2, 6)
    assert raw.headers["x-modelroute-model"] == model
    up = fake_server.last()
    assert "Hello" in json.dumps(up.body)
    if kind == "openai":
        assert up.body["messages"] == [{"role": "user", "content": "Hello"}]
        assert sent_max(up.body) == 16 and up.body["stop"] == ["\n"]  # OpenAI's default max_tokens


def test_list_of_one_prompt_echo_and_length(gw: Served, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Reply(text=" and on", finish="length"))
    c = client(gw).completions.create(model="auto", prompt=["On"], echo=True, max_tokens=2)
    assert c.choices[0].text == "On and on" and c.choices[0].finish_reason == "length"
    assert sent_max(fake_server.last().body) == 2


def test_several_prompts_are_answered_in_order(gw: Served, fake_server: FakeServer) -> None:
    fake_server.script(
        "alpha-mini", [Reply(text="A", input_tokens=3, output_tokens=1), Reply(text="B", output_tokens=2)]
    )
    c = client(gw).completions.create(model="alpha-mini", prompt=["first", "second"])
    assert [(x.index, x.text) for x in c.choices] == [(0, "A"), (1, "B")]
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (13, 3)
    sent = [r.body["messages"][0]["content"] for r in fake_server.requests]
    assert sent == ["first", "second"] and gw.metric("completions", 200) == 2
    fake_server.script("alpha-mini", [Reply(text="A"), Fault.status(400, message="bad prompt")])
    r = gw.post("/v1/completions", {"model": "alpha-mini", "prompt": ["x", "y", "z"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "upstream_rejected_request"
    assert len(fake_server.requests) == 4  # the third prompt was not sent
    assert gw.post("/v1/completions", {"model": "auto", "prompt": ["x", "y"]}, key="mr-wrong").status_code == 401


def test_n_choices(gw: Served, fake_server: FakeServer) -> None:
    c = client(gw).completions.create(model="alpha-mini", prompt="Name a colour", n=2)
    assert [x.index for x in c.choices] == [0, 1]


def test_endpoint_attribute_routes(gw: Served) -> None:
    c = client(gw).completions.create(model="auto", prompt="x", extra_body={"metadata": {"tier": "gold"}})
    assert c.model == "alpha-large"  # `when endpoint == "completions" and tier == "gold"`


@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_streaming_chunks_usage_and_done(gw: Served, fake_server: FakeServer, kind: str) -> None:
    model = BY_KIND[kind]
    fake_server.script(model, Reply(text="one two three", chunks=3, input_tokens=5, output_tokens=3))
    chunks = list(
        client(gw).completions.create(model=model, prompt="Count", stream=True, stream_options={"include_usage": True})
    )
    assert all(c.object == "text_completion" and c.model == model for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "one two three"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    r = gw.post("/v1/completions", {"model": model, "prompt": "Count", "stream": True})
    assert r.text.endswith("data: [DONE]\n\n") and "event:" not in r.text


def test_a_failing_stream_ends_with_an_error_chunk(gw: Served, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Fault.cut_stream(after=2))
    r = gw.post("/v1/completions", {"model": "alpha-mini", "prompt": "x", "stream": True})
    last = sse_frames(r.text)[-1][1]
    assert last["error"]["code"] == "stream_interrupted"


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        (b"{nope", "invalid_json", "malformed JSON"),
        (b'{"model": "auto"}', "invalid_value", "prompt"),
        (b'{"model": "auto", "prompt": ["a", "b"], "stream": true}', "invalid_value", "without streaming"),
        (
            json.dumps({"model": "auto", "prompt": list("abcdefghijklmnopq")}).encode(),
            "invalid_value",
            "at most 16",
        ),
        (b'{"model": "auto", "prompt": [1, 2, 3]}', "invalid_value", "token arrays"),
        (b'{"model": "auto", "prompt": 5}', "invalid_value", "prompt"),
        (b'{"model": "auto", "prompt": "x", "suffix": "y"}', "unsupported_field", "suffix"),
        (b'{"model": "auto", "prompt": "x", "best_of": 3}', "unsupported_field", "best_of"),
        (b'{"model": "auto", "prompt": "x", "logprobs": 2}', "unsupported_field", "logprobs"),
        (b'{"model": "auto", "prompt": "x", "frob": 2}', "unknown_field", "frob"),
        (b'{"model": "auto", "prompt": "x", "echo": "yes"}', "invalid_value", "echo"),
        (b'{"model": "auto", "prompt": "x", "temperature": 9}', "invalid_value", "temperature"),
    ],
)
def test_bad_requests(gw: Served, body: bytes, code: str, needle: str) -> None:
    r = gw.post("/v1/completions", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == code and needle in err["message"], err


def test_keys_errors_and_metrics(gw: Served, fake_server: FakeServer) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(gw, key="mr-wrong").completions.create(model="auto", prompt="x")
    with pytest.raises(openai.PermissionDeniedError):
        client(gw, key=LIMITED_KEY).completions.create(model="auto", prompt="x")
    for model in ("alpha-mini", "beta-chat", "gamma-flash"):
        fake_server.always(model, Fault.server_error(500))
    with pytest.raises(openai.APIStatusError) as failed:
        client(gw).completions.create(model="auto", prompt="x")
    assert failed.value.status_code == 502 and failed.value.code == "upstream_failed"
    assert gw.metric("completions", 502) == 1 and gw.metric("completions", 403) == 1


# ---- GET /v1/models/{id} -------------------------------------------------------------------------------------------
def test_retrieve_policies_models_and_aliases(gw: Served) -> None:
    c = client(gw)
    auto = c.models.retrieve("auto")
    assert (auto.id, auto.object, auto.owned_by) == ("auto", "model", "modelroute")
    assert c.models.retrieve("cheap").owned_by == "modelroute"
    assert c.models.retrieve("alpha-mini").owned_by == "acme"
    assert c.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"  # an alias of alpha-mini
    listed = {m.id for m in c.models.list()}
    assert {"auto", "cheap", "alpha-mini"} <= listed


def test_retrieve_unknown_and_not_allowed_is_404(gw: Served) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client(gw).models.retrieve("no-such-model")
    assert missing.value.code == "model_not_found" and "no-such-model" in missing.value.message
    limited = client(gw, key=LIMITED_KEY)
    assert limited.models.retrieve("cheap").id == "cheap"
    for hidden in ("auto", "alpha-mini"):  # a key limited to `cheap` sees neither "auto" nor what it pins
        with pytest.raises(openai.NotFoundError):
            limited.models.retrieve(hidden)
    r = gw.post("/v1/models/ft:gpt-4o:org::id", None)  # POST: not allowed
    assert r.status_code == 405
    with pytest.raises(openai.AuthenticationError):
        client(gw, key="mr-wrong").models.retrieve("auto")
    assert gw.metric("models", 404) >= 3
