"""Tests for POST /v1/responses (providers/gateway/responses_api.py): the official `openai` SDK (responses.create,
responses.stream, responses.parse) and raw httpx in, against a real uvicorn gateway whose upstreams are the
loopback FakeServer speaking each wire format; `response` objects, streaming events (sequence numbers,
response.created first, response.completed last), function calls, structured output, images and OpenAI-shaped
errors (state is not kept: store / previous_response_id refused) out."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
openai = pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")
from pydantic import BaseModel  # noqa: E402

from engine import Engine  # noqa: E402
from providers.catalog.loader import load_catalog  # noqa: E402
from providers.gateway.app import create_app  # noqa: E402
from tests.endpoint_gateway import BY_KIND, KEY, LIMITED_KEY, VISION, Served, serving, sse_frames  # noqa: E402
from tests.engines import CATALOG, KINDS, TEST_KEY, provider_specs  # noqa: E402
from tests.fakeserver import Call, FakeServer, Fault, Reply  # noqa: E402
from tests.test_gateway import ThreadServer  # noqa: E402

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": False,
}
PNG_URL = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ"


@pytest.fixture
def gw(fake_server: FakeServer) -> Iterator[Served]:
    yield from serving(fake_server)


def client(gw: Served, key: str = KEY) -> Any:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


# ---- responses.create ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_text_input_and_instructions_on_every_kind(gw: Served, fake_server: FakeServer, kind: str) -> None:
    model = BY_KIND[kind]
    fake_server.script(model, Reply(text="hello there", input_tokens=12, output_tokens=3))
    raw = client(gw).responses.with_raw_response.create(
        model=model, input="Say hello", instructions="Be brief.", max_output_tokens=50, temperature=0.3
    )
    r = raw.parse()
    assert r.object == "response" and r.status == "completed" and r.model == model and r.id.startswith("resp_")
    assert r.output_text == "hello there" and r.output[0].type == "message" and r.output[0].role == "assistant"
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (12, 3, 15)
    assert r.instructions == "Be brief." and r.max_output_tokens == 50 and r.store is False
    assert raw.headers["x-modelroute-model"] == model
    sent = json.dumps(fake_server.last().body)
    assert "Be brief." in sent and "Say hello" in sent
    if kind == "openai":
        body = fake_server.last().body
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}
        assert body["max_completion_tokens"] == 50 and body["temperature"] == 0.3


def test_message_items_multi_turn_and_length(gw: Served, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Reply(text="cut sh", finish="length"))
    r = client(gw).responses.create(
        model="auto",
        input=[
            {"role": "developer", "content": "Answer in French."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Salut"}]},
            {"role": "user", "content": "More"},
        ],
        max_output_tokens=2,
    )
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    sent = fake_server.last().body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]  # developer: the system role
    assert sent[2]["content"] == "Salut"


def test_metadata_routes_and_endpoint_attribute(gw: Served) -> None:
    r = client(gw).responses.create(model="auto", input="hi", metadata={"tier": "gold"})
    assert r.model == "gamma-flash" and r.metadata == {"tier": "gold"}  # `when endpoint == "responses" and ...`
    assert client(gw).responses.create(model="auto", input="hi", user="vip").model == "gamma-long"


# ---- function calls ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_function_call_round_trip_on_every_kind(gw: Served, fake_server: FakeServer, kind: str) -> None:
    model = BY_KIND[kind]
    fake_server.script(model, Reply(text="", tool_calls=[Call("get_weather", {"city": "Paris"}, id="call_7")]))
    c = client(gw)
    r = c.responses.create(model=model, input="Weather in Paris?", tools=[WEATHER], tool_choice="required")
    calls = [o for o in r.output if o.type == "function_call"]
    assert r.status == "completed" and len(calls) == 1
    assert calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Paris"}
    assert calls[0].id.startswith("fc_") and r.tools[0].name == "get_weather" and r.tool_choice == "required"
    up = fake_server.last().body
    if kind == "openai":
        assert up["tools"][0] == {
            "type": "function",
            "function": {k: WEATHER[k] for k in ("name", "description", "parameters", "strict")},
        }
        assert up["tool_choice"] == "required"
    fake_server.script(model, Reply(text="Sunny."))
    r2 = c.responses.create(
        model=model,
        tools=[WEATHER],
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": calls[0].call_id,
                "name": "get_weather",
                "arguments": calls[0].arguments,
            },
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21C"},
        ],
    )
    assert r2.output_text == "Sunny."
    sent = fake_server.last()
    assert "sunny, 21C" in json.dumps(sent.body)
    if kind == "openai":
        assert sent.body["messages"][1]["tool_calls"][0]["id"] == calls[0].call_id
        assert sent.body["messages"][2] == {"role": "tool", "tool_call_id": calls[0].call_id, "content": "sunny, 21C"}


def test_named_tool_choice(gw: Served, fake_server: FakeServer) -> None:
    client(gw).responses.create(
        model="alpha-mini", input="x", tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"}
    )
    assert fake_server.last().body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


# ---- structured output -------------------------------------------------------------------------------------------
class City(BaseModel):
    name: str
    population: int


@pytest.fixture
def schema_gw(fake_server: FakeServer, tmp_path: Path) -> Iterator[Served]:
    """A gateway over the fixture catalog where alpha-mini, beta-coder and gamma-flash also support json_schema."""
    text = CATALOG.read_text()
    for model in BY_KIND.values():
        text = re.sub(
            rf"(\n  {model}:\n(?:    .*\n)*?    supports: \[)tools", r"\1json_schema, json, tools", text, count=1
        )
    assert text.count("json_schema, json, tools") == len(BY_KIND)
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    engine = Engine.from_source(
        "set overrides = true\notherwise use alpha-mini",
        catalog=load_catalog(path),
        providers=provider_specs(fake_server),
        api_keys={name: TEST_KEY for name in KINDS},
    )
    served = Served.__new__(Served)
    served.engine = engine
    served.thread = ThreadServer(create_app(engine)).__enter__()
    served.url = served.thread.url
    yield served
    served.close()


@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_structured_output_through_parse(schema_gw: Served, fake_server: FakeServer, kind: str) -> None:
    model = BY_KIND[kind]
    fake_server.script(model, Reply(text='{"name": "Oslo", "population": 700000}'))
    parsed = client(schema_gw).responses.parse(model=model, input="A city", text_format=City)
    assert parsed.output_parsed == City(name="Oslo", population=700000)
    up = json.dumps(fake_server.last().body)
    assert "population" in up  # the schema went upstream, in the provider's own shape
    if kind == "openai":
        fmt = fake_server.last().body["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "City"


def test_json_object_format(gw: Served, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Reply(text='{"a": 1}'))
    r = client(gw).responses.create(model="alpha-mini", input="json please", text={"format": {"type": "json_object"}})
    assert json.loads(r.output_text) == {"a": 1} and r.text.format.type == "json_object"
    assert fake_server.last().body["response_format"] == {"type": "json_object"}


# ---- images ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(VISION))
def test_input_image(gw: Served, fake_server: FakeServer, kind: str) -> None:
    model = VISION[kind]
    content = [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": PNG_URL, "detail": "low"},
    ]
    r = client(gw).responses.create(model=model, input=[{"role": "user", "content": content}])
    assert r.output_text == "ok"
    up = fake_server.last()
    if kind == "openai":
        assert up.body["messages"][0]["content"][1]["image_url"]["url"] == PNG_URL
    else:
        assert "iVBORw0KGgo" in json.dumps(up.body)


# ---- streaming ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_stream_helper_text(gw: Served, fake_server: FakeServer, kind: str) -> None:
    model = BY_KIND[kind]
    fake_server.script(model, Reply(text="one two three four", chunks=4, input_tokens=9, output_tokens=4))
    with client(gw).responses.stream(model=model, input="Count") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "one two three four" and final.output_text == "one two three four"
    assert final.status == "completed" and (final.usage.input_tokens, final.usage.output_tokens) == (9, 4)


@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_stream_events_text_and_function_call(gw: Served, fake_server: FakeServer, kind: str) -> None:
    model = BY_KIND[kind]
    reply = Reply(text="Checking.", tool_calls=[Call("get_weather", {"city": "Oslo"}, id="call_3")])
    fake_server.script(model, [reply, reply])
    with client(gw).responses.stream(model=model, input="Weather?", tools=[WEATHER]) as stream:
        final = stream.get_final_response()
    assert [o.type for o in final.output] == ["message", "function_call"]
    assert final.output_text == "Checking." and json.loads(final.output[1].arguments) == {"city": "Oslo"}
    r = gw.post("/v1/responses", {"model": model, "input": "Weather?", "tools": [WEATHER], "stream": True})
    frames = sse_frames(r.text)
    assert all(name == data["type"] for name, data in frames)
    assert [d["sequence_number"] for _, d in frames] == list(range(len(frames)))
    names = [n for n, _ in frames]
    assert names[:2] == ["response.created", "response.in_progress"] and names[-1] == "response.completed"
    assert names.index("response.function_call_arguments.done") > names.index("response.output_text.done")
    added = [d["output_index"] for n, d in frames if n == "response.output_item.added"]
    done = [d["output_index"] for n, d in frames if n == "response.output_item.done"]
    assert added == done == [0, 1]
    assert frames[-1][1]["response"]["usage"]["output_tokens"] == 5


def test_raw_stream_through_create_and_a_failing_stream(gw: Served, fake_server: FakeServer) -> None:
    events = [e.type for e in client(gw).responses.create(model="auto", input="hi", stream=True)]
    assert events[0] == "response.created" and events[-1] == "response.completed"
    fake_server.script("alpha-mini", Fault.cut_stream(after=2))
    r = gw.post("/v1/responses", {"model": "alpha-mini", "input": "hi", "stream": True})
    frames = sse_frames(r.text)
    assert frames[0][0] == "response.created" and frames[-1][0] == "error"
    assert frames[-1][1]["code"] == "stream_interrupted"


# ---- errors ------------------------------------------------------------------------------------------------------
def check_error(r: Any, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "code", "param"} and err["code"] == code, err
    return str(err["message"])


def test_state_is_not_kept(gw: Served) -> None:
    with pytest.raises(openai.BadRequestError) as stored:
        client(gw).responses.create(model="auto", input="hi", store=True)
    assert stored.value.code == "state_not_kept" and "keeps no state" in stored.value.message
    with pytest.raises(openai.BadRequestError) as chained:
        client(gw).responses.create(model="auto", input="hi", previous_response_id="resp_123")
    assert chained.value.code == "state_not_kept" and chained.value.param == "previous_response_id"
    assert client(gw).responses.create(model="auto", input="hi", store=False).output_text == "ok"


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        (b"{nope", "invalid_json", "malformed JSON"),
        (b'{"model": "auto"}', "invalid_value", "input"),
        (b'{"model": "auto", "input": []}', "invalid_value", "input"),
        (b'{"model": "auto", "input": "x", "frob": 1}', "unknown_field", "frob"),
        (b'{"model": "auto", "input": [{"type": "item_reference", "id": "msg_1"}]}', "invalid_value", "no state"),
        (b'{"model": "auto", "input": "x", "tools": [{"type": "web_search"}]}', "invalid_value", "built-in"),
        (b'{"model": "auto", "input": "x", "text": {"format": {"type": "yaml"}}}', "invalid_value", "text.format"),
        (b'{"model": "auto", "input": "x", "metadata": {"endpoint": "chat"}}', "reserved_attribute", "reserved"),
        (b'{"model": "auto", "input": "x", "max_output_tokens": 0}', "invalid_value", "`max_output_tokens` must"),
    ],
)
def test_bad_requests_get_openai_errors(gw: Served, body: bytes, code: str, needle: str) -> None:
    r = gw.post("/v1/responses", body)
    assert needle in check_error(r, 400, code)
    assert "max_completion_tokens" not in r.text  # the Responses API's own names, not the chat ones it maps to


def test_keys_models_and_metrics(gw: Served, fake_server: FakeServer) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(gw, key="mr-wrong").responses.create(model="auto", input="hi")
    with pytest.raises(openai.PermissionDeniedError):
        client(gw, key=LIMITED_KEY).responses.create(model="auto", input="hi")
    assert client(gw, key=LIMITED_KEY).responses.create(model="cheap", input="hi").model == "gamma-flash"
    with pytest.raises(openai.NotFoundError):
        client(gw).responses.create(model="no-such-model", input="hi")
    for model in ("alpha-mini", "beta-chat", "gamma-flash"):
        fake_server.always(model, Fault.server_error(500))
    with pytest.raises(openai.APIStatusError) as failed:
        client(gw).responses.create(model="auto", input="hi")
    assert failed.value.status_code == 502
    assert gw.metric("responses", 200) == 1 and gw.metric("responses", 502) == 1 and gw.metric("responses", 403) == 1
