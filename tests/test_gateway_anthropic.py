"""Tests for POST /v1/messages (providers/gateway/anthropic_api.py): the official `anthropic` SDK (messages.create,
messages.stream) and raw httpx in, against a real uvicorn gateway whose upstreams are the loopback FakeServer
speaking each wire format (OpenAI, Anthropic, Gemini); Anthropic-shaped messages, SSE events (with `event:` lines,
block indexes in order), errors, routing by the `endpoint` attribute, keys, budgets and metrics out."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
anthropic = pytest.importorskip("anthropic", reason="the anthropic SDK is not installed (pip install -e '.[test]')")

from providers.execution import MiddlewareRequest  # noqa: E402
from tests.endpoint_gateway import (  # noqa: E402
    BUDGET_KEY,
    BY_KIND,
    KEY,
    LIMITED_KEY,
    VISION,
    Served,
    needs_chat_field,
    serving,
    sse_frames,
)
from tests.fakeserver import Call, FakeServer, Fault, Reply  # noqa: E402

USER = [{"role": "user", "content": "Say hello"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
PNG = base64.b64encode(
    bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000") + b"\x1f\x15\xc4\x89"
).decode()


@pytest.fixture
def gw(fake_server: FakeServer) -> Iterator[Served]:
    yield from serving(fake_server)


def client(gw: Served, key: str = KEY, **kw: Any) -> Any:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, **kw)


def sent_text(request: Any) -> str:
    """Every text the upstream received, whatever its wire format (for loose assertions)."""
    return json.dumps(request.body)


# ---- messages.create across upstream kinds -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_create_answers_in_anthropic_format_from_every_kind(gw: Served, fake_server: FakeServer, kind: str) -> None:
    model = BY_KIND[kind]
    fake_server.script(model, Reply(text="hello there", input_tokens=12, output_tokens=3))
    raw = client(gw).messages.with_raw_response.create(
        model=model,
        max_tokens=100,
        system="Be brief.",
        messages=USER,
        stop_sequences=["END"],
        service_tier="auto",
        extra_body={"temperature": 0.5},  # the SDK's own signature no longer lists temperature
    )
    m = raw.parse()
    assert m.type == "message" and m.role == "assistant" and m.model == model and m.id.startswith("msg_")
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == "hello there"
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert (m.usage.input_tokens, m.usage.output_tokens) == (12, 3)
    assert raw.headers["x-modelroute-model"] == model
    up = fake_server.last()
    assert up.kind == kind and "Be brief." in sent_text(up) and "Say hello" in sent_text(up) and "END" in sent_text(up)
    if kind == "anthropic":
        assert up.body["system"] == "Be brief." and up.body["max_tokens"] == 100
        assert up.body["stop_sequences"] == ["END"] and up.body["temperature"] == 0.5
    elif kind == "openai":
        assert up.body["messages"][0] == {"role": "system", "content": "Be brief."}
        assert up.body["stop"] == ["END"]


def test_system_blocks_multi_turn_and_finish_reasons(gw: Served, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Reply(text="cut", finish="length"))
    m = client(gw).messages.create(
        model="auto",
        max_tokens=5,
        system=[
            {"type": "text", "text": "One."},
            {"type": "text", "text": "Two.", "cache_control": {"type": "ephemeral"}},
        ],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
            {"role": "user", "content": "Go on"},
        ],
    )
    assert m.stop_reason == "max_tokens" and m.content[0].text == "cut"
    sent = fake_server.last().body["messages"]
    # a cache_control breakpoint keeps the blocks apart (an OpenAI upstream gets them as text parts)
    blocks = [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}]
    assert sent[0] == {"role": "system", "content": blocks}
    assert [x["role"] for x in sent] == ["system", "user", "assistant", "user"]
    assert sent[2]["content"] == "Hello"


def test_metadata_user_id_and_endpoint_route(gw: Served, fake_server: FakeServer) -> None:
    m = client(gw).messages.create(model="auto", max_tokens=20, messages=USER, metadata={"user_id": "vip"})
    assert m.model == "gamma-long"  # `when user == "vip"`
    r = gw.post("/v1/messages", {"model": "auto", "max_tokens": 20, "messages": USER, "metadata": {"tier": "gold"}})
    assert r.status_code == 200 and r.json()["model"] == "beta-coder"  # `when endpoint == "messages" and ...`
    r = gw.post("/v1/chat/completions", {"messages": USER, "metadata": {"tier": "gold"}})
    assert r.json()["model"] == "alpha-mini"  # the same attributes through chat: endpoint == "chat"


def test_the_endpoint_attribute_is_reserved(gw: Served) -> None:
    body = {"model": "auto", "max_tokens": 20, "messages": USER, "metadata": {"endpoint": "chat"}}
    r = gw.post("/v1/messages", body)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "reserved" in r.json()["error"]["message"]
    r = gw.post("/v1/messages", {**body, "metadata": {}}, headers={"x-route-endpoint": "chat"})
    assert r.status_code == 400 and "reserved" in r.json()["error"]["message"]


# ---- tools -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_tool_use_round_trip_on_every_kind(gw: Served, fake_server: FakeServer, kind: str) -> None:
    model = BY_KIND[kind]
    fake_server.script(model, Reply(text="", tool_calls=[Call("get_weather", {"city": "Paris"}, id="toolu_1")]))
    c = client(gw)
    m = c.messages.create(model=model, max_tokens=100, messages=USER, tools=[WEATHER], tool_choice={"type": "any"})
    assert m.stop_reason == "tool_use"
    use = m.content[-1]
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}
    up = fake_server.last().body
    if kind == "anthropic":
        assert up["tools"][0]["input_schema"] == WEATHER["input_schema"] and up["tool_choice"]["type"] == "any"
    elif kind == "openai":
        assert up["tools"][0]["function"]["parameters"] == WEATHER["input_schema"] and up["tool_choice"] == "required"
    else:
        assert up["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    # the next turn carries the tool_use and its tool_result back
    fake_server.script(model, Reply(text="It is sunny in Paris."))
    m2 = c.messages.create(
        model=model,
        max_tokens=100,
        tools=[WEATHER],
        messages=[
            *USER,
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21C"}]},
        ],
    )
    assert m2.content[0].text == "It is sunny in Paris." and m2.stop_reason == "end_turn"
    sent = fake_server.last()
    assert "sunny, 21C" in sent_text(sent) and "get_weather" in sent_text(sent)
    if kind == "openai":
        tool_msg = sent.body["messages"][-1]
        assert tool_msg == {"role": "tool", "tool_call_id": use.id, "content": "sunny, 21C"}
        assert sent.body["messages"][-2]["tool_calls"][0]["id"] == use.id
    elif kind == "anthropic":
        result = sent.body["messages"][-1]["content"][0]
        assert result["type"] == "tool_result" and result["tool_use_id"] == use.id


def test_named_tool_choice_and_error_results(gw: Served, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Reply(text="ok"))
    client(gw).messages.create(
        model="alpha-mini",
        max_tokens=50,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[
            *USER,
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "is_error": True,
                        "content": [{"type": "text", "text": "no city"}],
                    },
                    {"type": "text", "text": "try again"},
                ],
            },
        ],
    )
    body = fake_server.last().body
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["messages"][-2] == {"role": "tool", "tool_call_id": "t1", "content": "Error: no city"}
    assert body["messages"][-1] == {"role": "user", "content": [{"type": "text", "text": "try again"}]}


@needs_chat_field("parallel_tool_calls", False)
def test_disable_parallel_tool_use(gw: Served, fake_server: FakeServer) -> None:
    client(gw).messages.create(
        model="alpha-mini",
        max_tokens=50,
        messages=USER,
        tools=[WEATHER],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    )
    assert fake_server.last().body["parallel_tool_calls"] is False
    client(gw).messages.create(
        model="beta-coder",
        max_tokens=50,
        messages=USER,
        tools=[WEATHER],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    )
    assert fake_server.last().body["tool_choice"]["disable_parallel_tool_use"] is True


@needs_chat_field("reasoning_effort", "low")
def test_thinking_asks_for_reasoning(gw: Served, fake_server: FakeServer) -> None:
    client(gw).messages.create(
        model="alpha-mini", max_tokens=4000, messages=USER, thinking={"type": "enabled", "budget_tokens": 1024}
    )
    assert fake_server.last().body["reasoning_effort"] == "low"


# ---- images ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(VISION))
def test_images_base64_and_url(gw: Served, fake_server: FakeServer, kind: str) -> None:
    model = VISION[kind]
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {"type": "text", "text": "What is this?"},
    ]
    m = client(gw).messages.create(model=model, max_tokens=50, messages=[{"role": "user", "content": content}])
    assert m.content[0].text == "ok"
    up = fake_server.last()
    if kind == "openai":
        parts = up.body["messages"][-1]["content"]
        assert parts[0]["image_url"]["url"] == f"data:image/png;base64,{PNG}"
        assert parts[1]["image_url"]["url"] == "https://example.com/cat.png"
    else:
        assert PNG in sent_text(up) and "example.com/cat.png" in sent_text(up)


# ---- streaming ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_stream_text_through_the_sdk_helper(gw: Served, fake_server: FakeServer, kind: str) -> None:
    model = BY_KIND[kind]
    fake_server.script(model, Reply(text="one two three four", chunks=4, input_tokens=9, output_tokens=4))
    with client(gw).messages.stream(model=model, max_tokens=100, messages=USER) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == "one two three four" and len(texts) >= 2
    assert final.content[0].text == "one two three four" and final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 4) and final.model == model


@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_stream_events_text_then_tool_use(gw: Served, fake_server: FakeServer, kind: str) -> None:
    model = BY_KIND[kind]
    reply = Reply(text="Let me look.", tool_calls=[Call("get_weather", {"city": "Oslo"}, id="toolu_9")])
    fake_server.script(model, [reply, reply])
    args = {"model": model, "max_tokens": 100, "messages": USER, "tools": [WEATHER]}
    with client(gw).messages.stream(**args) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use"] and final.stop_reason == "tool_use"
    assert final.content[0].text == "Let me look." and final.content[1].input == {"city": "Oslo"}
    # the raw events: every frame named, message_start first, blocks started, filled and stopped in index order
    r = gw.post("/v1/messages", {**args, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    frames = sse_frames(r.text)
    assert all(name == data["type"] for name, data in frames), frames
    names = [name for name, _ in frames if name != "ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    starts = [d["index"] for n, d in frames if n == "content_block_start"]
    stops = [d["index"] for n, d in frames if n == "content_block_stop"]
    assert starts == stops == [0, 1]
    last_start = {}
    for n, d in frames:
        if n == "content_block_start":
            last_start = d
        elif n == "content_block_delta":
            assert d["index"] == last_start["index"]
    message_delta = next(d for n, d in frames if n == "message_delta")
    assert message_delta["delta"]["stop_reason"] == "tool_use" and message_delta["usage"]["output_tokens"] == 5


def test_stream_of_a_tool_call_alone(gw: Served, fake_server: FakeServer) -> None:
    fake_server.script("beta-coder", Reply(text="", tool_calls=[Call("get_weather", {"city": "Rome"})]))
    events = list(
        client(gw).messages.create(model="beta-coder", max_tokens=50, messages=USER, tools=[WEATHER], stream=True)
    )
    starts = [e for e in events if e.type == "content_block_start"]
    assert [(e.index, e.content_block.type) for e in starts] == [(0, "tool_use")]
    deltas = [e.delta.partial_json for e in events if e.type == "content_block_delta"]
    assert json.loads("".join(deltas)) == {"city": "Rome"}


def test_raw_stream_through_create(gw: Served, fake_server: FakeServer) -> None:
    stream = client(gw).messages.create(model="auto", max_tokens=100, messages=USER, stream=True)
    events = [e.type for e in stream]
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_delta" in events


def test_stream_failing_midway_gets_an_error_event(gw: Served, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Fault.cut_stream(after=2))
    with (
        pytest.raises(anthropic.APIStatusError) as info,
        client(gw).messages.stream(model="alpha-mini", max_tokens=100, messages=USER) as stream,
    ):
        list(stream.text_stream)
    assert "upstream stream failed" in str(info.value)


# ---- errors in Anthropic's shape ---------------------------------------------------------------------------------
def check_error(r: Any, status: int, kind: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == kind, body
    return str(body["error"]["message"])


def body_with(**fields: Any) -> bytes:
    """A small valid Messages body with `fields` added or replaced, as bytes."""
    return json.dumps(
        {"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], **fields}
    ).encode()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "malformed JSON"),
        (b"[1]", "JSON object"),
        (b'{"model": "auto", "messages": [{"role": "user", "content": "x"}]}', "max_tokens"),
        (body_with(messages=[]), "messages"),
        (body_with(messages=[{"role": "system", "content": "x"}]), "role"),
        (body_with(foo=1), "foo"),
        (body_with(temperature=1.5), "temperature"),
        (body_with(top_k=-1), "top_k"),
        (body_with(messages=[{"role": "user", "content": [{"type": "video"}]}]), "type"),
        (body_with(tools=[{"name": "w"}]), "input_schema"),
        (body_with(tool_choice={"type": "maybe"}), "tool_choice"),
        (body_with(tools=[{"type": "web_search_20250305", "name": "web_search"}]), "server tools"),
        (body_with(thinking={"type": "enabled"}), "budget_tokens"),
        (body_with(metadata={"endpoint": "chat"}), "reserved"),
    ],
)
def test_bad_requests_get_anthropic_errors(gw: Served, body: bytes, needle: str) -> None:
    assert needle in check_error(gw.post("/v1/messages", body), 400, "invalid_request_error")


def test_sdk_exceptions_by_status(gw: Served, fake_server: FakeServer) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        client(gw).messages.create(model="auto", max_tokens=5, messages=[{"role": "wizard", "content": "x"}])  # type: ignore[typeddict-item]
    assert bad.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError) as missing:
        client(gw).messages.create(model="no-such-model", max_tokens=5, messages=USER)
    assert missing.value.body["error"]["type"] == "not_found_error"
    fake_server.always("alpha-mini", Fault.server_error(500))
    fake_server.always("beta-chat", Fault.server_error(500))
    fake_server.always("gamma-flash", Fault.server_error(500))
    with pytest.raises(anthropic.InternalServerError) as failed:
        client(gw).messages.create(model="auto", max_tokens=5, messages=USER)
    assert failed.value.status_code == 502 and failed.value.body["error"]["type"] == "api_error"
    assert gw.metric("messages", 502) == 1 and gw.metric("messages", 404) == 1


def test_keys_x_api_key_bearer_allow_lists_and_budgets(gw: Served) -> None:
    with pytest.raises(anthropic.AuthenticationError) as wrong:
        client(gw, key="mr-wrong").messages.create(model="auto", max_tokens=5, messages=USER)
    assert wrong.value.body["error"]["type"] == "authentication_error"
    assert "x-api-key" in check_error(
        gw.post("/v1/messages", {"messages": USER}, key=None), 401, "authentication_error"
    )
    bearer = anthropic.Anthropic(base_url=gw.url, auth_token=KEY, max_retries=0)  # Authorization: Bearer
    assert bearer.messages.create(model="auto", max_tokens=5, messages=USER).content[0].text == "ok"
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        client(gw, key=LIMITED_KEY).messages.create(model="auto", max_tokens=5, messages=USER)
    assert denied.value.body["error"]["type"] == "permission_error"
    limited = client(gw, key=LIMITED_KEY).messages.create(model="cheap", max_tokens=5, messages=USER)
    assert limited.model == "gamma-flash"
    with pytest.raises(anthropic.RateLimitError) as broke:
        client(gw, key=BUDGET_KEY).messages.create(model="auto", max_tokens=5, messages=USER)
    assert broke.value.body["error"]["type"] == "rate_limit_error"


def test_count_tokens(gw: Served, fake_server: FakeServer) -> None:
    c = client(gw)
    short = c.messages.count_tokens(model="auto", messages=USER).input_tokens
    longer = c.messages.count_tokens(model="auto", messages=USER, system="Be brief. " * 50, tools=[WEATHER])
    assert 0 < short < longer.input_tokens and fake_server.requests == []
    with pytest.raises(anthropic.BadRequestError):
        c.messages.count_tokens(model="auto", messages=[])
    with pytest.raises(anthropic.AuthenticationError):
        client(gw, key="mr-wrong").messages.count_tokens(model="auto", messages=USER)


def test_unknown_paths_under_messages_and_metrics(gw: Served) -> None:
    check_error(gw.post("/v1/messages/batches", {"messages": USER}), 404, "not_found_error")
    r = gw.post("/v1/messages", {"model": "auto", "max_tokens": 5, "messages": USER})
    assert r.status_code == 200
    assert gw.metric("messages", 200) == 1 and gw.metric("chat", 200) == 0


def test_middleware_sees_the_endpoint_and_its_answer_is_anthropic_shaped(gw: Served, fake_server: FakeServer) -> None:
    seen: list[Any] = []

    class Refuse:
        def before(self, request: MiddlewareRequest) -> Any:
            seen.append(request.attributes.get("endpoint"))
            return "refused by policy" if "forbidden" in str(request.messages) else None

    gw.engine.use(Refuse())
    msgs = [{"role": "user", "content": "forbidden topic"}]
    m = client(gw).messages.create(model="auto", max_tokens=5, messages=msgs)
    assert m.content[0].text == "refused by policy" and m.stop_reason == "end_turn"
    with client(gw).messages.stream(model="auto", max_tokens=5, messages=msgs) as stream:
        assert "".join(stream.text_stream) == "refused by policy"
    assert client(gw).messages.create(model="auto", max_tokens=5, messages=USER).content[0].text == "ok"
    assert seen == ["messages"] * 3 and len(fake_server.requests) == 1
