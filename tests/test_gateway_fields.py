"""Every chat-completions field through the gateway (issue 16, requirement 1): the official `openai` SDK drives the
gateway app (uvicorn on loopback, as `modelroute serve` runs it) whose upstreams are the FakeServer speaking the
OpenAI, Anthropic and Gemini wire formats; what each upstream RECEIVED for each field (sent as is, translated, or
dropped and named in `x-modelroute-dropped-params`), structured output, `n`, reasoning_effort, the policy settings
`params.unsupported` and `n.fanout`, the `json_schema` / `json` hard constraints and service-tier prices out."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
openai = pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")
import httpx  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from engine import Engine  # noqa: E402
from providers.catalog.loader import load_catalog  # noqa: E402
from providers.clients import client_for  # noqa: E402
from providers.clients.params import JSON_TOOL  # noqa: E402
from providers.execution.holds import Bound, model_cost  # noqa: E402
from providers.types import ChatRequest, Message  # noqa: E402
from tests.engines import TEST_KEY, provider_specs  # noqa: E402
from tests.fakeserver import Call, FakeServer, Reply  # noqa: E402
from tests.gateway_kit import DROPPED, chat, dropped, fake_engine, gateways, model_yaml, write_catalog  # noqa: E402

MSG = [{"role": "user", "content": "hello"}]
# one model per wire format (providers of tests/engines.py: acme openai, betacorp anthropic, gammalabs gemini)
CATALOG = "models:\n" + "".join(
    [
        model_yaml("oa", "oa", "tools, vision, json, json_schema", service_tiers="{flex: 0.5, priority: 2.0}"),
        model_yaml("an", "an", "tools, json, json_schema"),
        model_yaml("an-old", "an", "tools, json"),
        model_yaml("ge", "ge", "tools, json, json_schema"),
        model_yaml("plain", "plain", "tools"),
    ]
)
POLICY = """
set overrides = true
set retry.attempts = 0
otherwise use plain fallback oa
"""
WEATHER = {
    "type": "function",
    "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


class City(BaseModel):
    city: str
    population: int


CITY = '{"city": "Paris", "population": 2100000}'


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    return write_catalog(tmp_path, CATALOG)


@pytest.fixture
def gateway(fake_server: FakeServer, catalog_path: Path) -> Iterator[Callable[..., Any]]:
    """`gateway(extra_policy_lines)`: a started gateway over POLICY (plus the lines) and the test catalog, as an
    openai SDK client."""
    with gateways(fake_server, catalog_path) as start:
        yield lambda extra="": start(extra + POLICY).openai


def create(client: Any, **kw: Any) -> tuple[Any, httpx.Headers]:
    """A chat completion through the SDK: (the parsed answer, the response headers)."""
    return chat(client, messages=MSG, **kw)


# ---- every field, per provider kind ------------------------------------------------------------------------
EVERY_FIELD: dict[str, Any] = {
    "top_p": 0.9,
    "seed": 7,
    "frequency_penalty": 0.5,
    "presence_penalty": -0.5,
    "logit_bias": {"50256": -100},
    "logprobs": True,
    "top_logprobs": 2,
    "parallel_tool_calls": False,
    "reasoning_effort": "low",
    "service_tier": "flex",
    "store": True,
    "metadata": {"team": "a"},
    "prompt_cache_key": "k1",
    "safety_identifier": "hashed-user",
    "user": "u1",
    "verbosity": "low",
    "modalities": ["text"],
    "prediction": {"type": "content", "content": "hello"},
    "web_search_options": {"search_context_size": "low"},
    "stop": ["END"],
    "max_completion_tokens": 50,
    "tools": [WEATHER],
    "tool_choice": "auto",
    "temperature": 0.5,
}


def test_an_openai_kind_provider_gets_every_field_as_sent(gateway, fake_server: FakeServer) -> None:
    client = gateway()
    answer, headers = create(client, model="oa", **EVERY_FIELD, extra_body={"frobnicate": {"x": 1}})
    assert answer.choices[0].message.content == "ok" and headers["x-modelroute-model"] == "oa"
    body = fake_server.last().body
    for name, value in EVERY_FIELD.items():
        assert body[name] == value, name
    assert body["frobnicate"] == {"x": 1}  # a field no provider kind knows: as sent
    assert DROPPED not in headers


def test_metadata_routes_and_reaches_openai_only_with_store(gateway, fake_server: FakeServer) -> None:
    client = gateway('when team == "b" use oa\n')
    _, headers = create(client, model="auto", metadata={"team": "b"})
    assert headers["x-modelroute-model"] == "oa"  # metadata keys are routing attributes
    assert "metadata" not in fake_server.last().body  # not stored: OpenAI would refuse metadata without store
    create(client, model="auto", metadata={"team": "b"}, store=True)
    assert fake_server.last().body["metadata"] == {"team": "b"} and fake_server.last().body["store"] is True


def test_anthropic_gets_each_field_translated_and_the_rest_named_as_dropped(gateway, fake_server) -> None:
    client = gateway()
    fields = {k: v for k, v in EVERY_FIELD.items() if k != "reasoning_effort"}
    answer, headers = create(client, model="an", **fields, extra_body={"frobnicate": 1})
    assert answer.choices[0].message.content == "ok"
    body = fake_server.last().body
    assert body["top_p"] == 0.9 and body["temperature"] == 0.5 and body["stop_sequences"] == ["END"]
    assert body["max_tokens"] == 50
    assert body["metadata"] == {"user_id": "hashed-user"}  # safety_identifier before user
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert [t["name"] for t in body["tools"]] == ["weather"]
    for name in ("seed", "logprobs", "frobnicate", "service_tier", "n", "user", "safety_identifier"):
        assert name not in body, name
    assert dropped(headers) == sorted(
        [
            "frequency_penalty",
            "frobnicate",
            "logit_bias",
            "logprobs",
            "modalities",
            "prediction",
            "presence_penalty",
            "prompt_cache_key",
            "seed",
            "service_tier",
            "store",
            "top_logprobs",
            "verbosity",
            "web_search_options",
        ]
    )


def test_gemini_gets_each_field_translated_and_the_rest_named_as_dropped(gateway, fake_server) -> None:
    client = gateway()
    answer, headers = create(client, model="ge", **EVERY_FIELD, extra_body={"frobnicate": 1})
    assert answer.choices[0].message.content == "ok"
    config = fake_server.last().body["generationConfig"]
    assert config == {
        "temperature": 0.5,
        "maxOutputTokens": 50,
        "stopSequences": ["END"],
        "topP": 0.9,
        "seed": 7,
        "frequencyPenalty": 0.5,
        "presencePenalty": -0.5,
        "logprobs": 2,
        "responseLogprobs": True,
    }  # no thinkingConfig: reasoning_effort low's 1024 tokens do not fit below max_tokens 50 (named below)
    assert fake_server.last().body["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
    assert dropped(headers) == sorted(
        [
            "frobnicate",
            "reasoning_effort",
            "logit_bias",
            "modalities",
            "parallel_tool_calls",
            "prediction",
            "prompt_cache_key",
            "safety_identifier",
            "service_tier",
            "store",
            "user",
            "verbosity",
            "web_search_options",
        ]
    )


def test_functions_and_function_call_are_rewritten_to_tools(gateway, fake_server: FakeServer) -> None:
    client = gateway()
    fake_server.script("an", Reply(text="", tool_calls=[Call("weather", {"city": "Oslo"})]))
    answer, headers = create(client, model="an", functions=[WEATHER["function"]], function_call={"name": "weather"})
    body = fake_server.last().body
    assert [t["name"] for t in body["tools"]] == ["weather"]
    assert body["tool_choice"] == {"type": "tool", "name": "weather"}
    # answered in the deprecated shape the request used
    message = answer.choices[0].message
    assert message.tool_calls is None and answer.choices[0].finish_reason == "function_call"
    assert message.function_call.name == "weather"
    assert json.loads(message.function_call.arguments) == {"city": "Oslo"}
    assert DROPPED not in headers


# ---- structured output -----------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["oa", "an", "ge"])
def test_structured_output_round_trips_on_each_kind(gateway, fake_server: FakeServer, model: str) -> None:
    client = gateway()
    fake_server.default = Reply(text=CITY)
    parsed = client.chat.completions.parse(model=model, messages=MSG, response_format=City)
    assert parsed.choices[0].message.parsed == City(city="Paris", population=2100000)
    body = fake_server.last().body
    schema = City.model_json_schema()
    if model == "oa":  # as the SDK sent it
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["name"] == "City"
        assert body["response_format"]["json_schema"]["strict"] is True
    elif model == "an":  # native structured output
        assert body["output_config"]["format"]["type"] == "json_schema"
        assert set(body["output_config"]["format"]["schema"]["properties"]) == set(schema["properties"])
        assert "tools" not in body
    else:
        assert body["generationConfig"]["responseMimeType"] == "application/json"
        assert set(body["generationConfig"]["responseJsonSchema"]["properties"]) == set(schema["properties"])


@pytest.mark.parametrize("stream", [False, True])
def test_json_object_on_anthropic_without_structured_output_uses_a_forced_tool(gateway, fake_server, stream) -> None:
    client = gateway()
    fake_server.script("an-old", Reply(text="", tool_calls=[Call(JSON_TOOL, {"city": "Paris"})]))
    kw: dict[str, Any] = {"model": "an-old", "messages": MSG, "response_format": {"type": "json_object"}}
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kw))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert json.loads(text) == {"city": "Paris"} and finish == ["stop"]
    else:
        answer = client.chat.completions.create(**kw)
        assert json.loads(answer.choices[0].message.content) == {"city": "Paris"}
        assert answer.choices[0].finish_reason == "stop" and not answer.choices[0].message.tool_calls
    body = fake_server.last().body
    assert body["tool_choice"] == {"type": "tool", "name": JSON_TOOL}
    assert body["tools"][0]["input_schema"] == {"type": "object"}


def test_the_json_schema_constraint_keeps_models_without_it_out_of_the_plan(gateway, fake_server) -> None:
    client = gateway()
    _, headers = create(client, model="auto")
    assert headers["x-modelroute-model"] == "plain"  # the rule's first choice
    fake_server.default = Reply(text=CITY)
    raw = client.chat.completions.with_raw_response.parse(model="auto", messages=MSG, response_format=City)
    assert raw.headers["x-modelroute-model"] == "oa" and raw.parse().choices[0].message.parsed.city == "Paris"
    _, headers = create(client, model="auto", response_format={"type": "json_object"})
    assert headers["x-modelroute-model"] == "oa"  # plain lists no `json` either
    # explain says why
    fmt = {"type": "json_schema", "json_schema": {"name": "City", "schema": City.model_json_schema()}}
    report = httpx.post(
        str(client.base_url).rstrip("/") + "/route/explain", json={"messages": MSG, "response_format": fmt}
    ).json()
    assert report["model"] == "oa" and report["attrs"]["response_format"] == "json_schema"
    assert "no json_schema support (request has response_format json_schema)" in json.dumps(report)
    # a request that names a model without it is refused, not sent
    with pytest.raises(openai.BadRequestError, match="json_schema") as refused:
        client.chat.completions.parse(model="plain", messages=MSG, response_format=City)
    assert refused.value.code == "model_unsuitable"


def test_a_policy_can_route_by_the_response_format(gateway) -> None:
    client = gateway('when response_format == "json" use ge\n')
    _, headers = create(client, model="auto", response_format={"type": "json_object"})
    assert headers["x-modelroute-model"] == "ge"
    # the body's format wins over a metadata attribute of the same name
    _, headers = create(
        client, model="auto", response_format={"type": "json_object"}, metadata={"response_format": "x"}
    )
    assert headers["x-modelroute-model"] == "ge"
    _, headers = create(client, model="auto", response_format={"type": "text"})
    assert headers["x-modelroute-model"] == "plain"


# ---- n ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["oa", "an", "ge"])
def test_n_answers_on_each_kind(gateway, fake_server: FakeServer, model: str) -> None:
    client = gateway()
    answer, _ = create(client, model=model, n=2)
    assert [c.index for c in answer.choices] == [0, 1] and {c.message.content for c in answer.choices} == {"ok"}
    requests = fake_server.requests
    if model == "oa":
        assert len(requests) == 1 and requests[0].body["n"] == 2
        assert answer.usage.completion_tokens == 5
    elif model == "ge":
        assert len(requests) == 1 and requests[0].body["generationConfig"]["candidateCount"] == 2
    else:  # Anthropic has no `n`: two calls, usage summed
        assert len(requests) == 2 and all("n" not in r.body for r in requests)
        assert answer.usage.prompt_tokens == 20 and answer.usage.completion_tokens == 10


def test_n_fanout_false_refuses_what_would_take_n_calls(gateway, fake_server: FakeServer) -> None:
    client = gateway("set n.fanout = false\n")
    with pytest.raises(openai.BadRequestError, match=r"n\.fanout"):
        create(client, model="an", n=2)
    assert fake_server.requests == []
    answer, _ = create(client, model="ge", n=2)  # a native `n` is fine
    assert len(answer.choices) == 2


def test_n_cannot_be_streamed(gateway, fake_server: FakeServer) -> None:
    with pytest.raises(openai.BadRequestError, match="`n`"):
        list(gateway().chat.completions.create(model="oa", messages=MSG, n=2, stream=True))
    assert fake_server.requests == []


# ---- reasoning_effort ------------------------------------------------------------------------------------
def test_reasoning_effort_per_kind(gateway, fake_server: FakeServer) -> None:
    client = gateway()
    _, headers = create(client, model="oa", reasoning_effort="high")
    assert fake_server.last().body["reasoning_effort"] == "high" and DROPPED not in headers
    _, headers = create(client, model="ge", reasoning_effort="high")
    assert fake_server.last().body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 24576}
    _, headers = create(client, model="an", reasoning_effort="high", temperature=0.3)
    body = fake_server.last().body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert body["max_tokens"] > 4096 and "temperature" not in body  # room to answer; thinking fixes temperature
    assert dropped(headers) == ["temperature"]
    # an explicit max_tokens stays the bound: the budget fits below it, or there is no thinking
    create(client, model="an", reasoning_effort="high", max_tokens=3000)
    assert (
        fake_server.last().body["thinking"]["budget_tokens"] == 2999 and fake_server.last().body["max_tokens"] == 3000
    )
    _, headers = create(client, model="an", reasoning_effort="high", max_tokens=500)
    assert "thinking" not in fake_server.last().body and dropped(headers) == ["reasoning_effort"]


# ---- dropped fields: streams, and the policy that refuses them -------------------------------------------
def test_a_stream_names_the_dropped_fields_too(gateway, fake_server: FakeServer) -> None:
    client = gateway()
    with client.chat.completions.with_streaming_response.create(
        model="ge", messages=MSG, stream=True, logit_bias={"1": 5}, seed=3
    ) as response:
        assert dropped(response.headers) == ["logit_bias"]
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert text == "ok" and fake_server.last().body["generationConfig"]["seed"] == 3


def test_params_unsupported_reject_refuses_before_any_call(gateway, fake_server: FakeServer) -> None:
    client = gateway("set params.unsupported = reject\n")
    with pytest.raises(openai.BadRequestError, match=r"model an \(anthropic\) has no counterpart for `seed`"):
        create(client, model="an", seed=1)
    assert fake_server.requests == []
    answer, headers = create(client, model="oa", seed=1)  # OpenAI takes it
    assert answer.choices[0].message.content == "ok" and DROPPED not in headers
    answer, _ = create(client, model="an", top_p=0.5)  # translated: nothing dropped
    assert fake_server.last().body["top_p"] == 0.5


def test_an_upstream_4xx_reaches_the_client_with_its_message(gateway, fake_server: FakeServer) -> None:
    from tests.fakeserver import Fault

    client = gateway()
    fake_server.script("oa", Fault.status(400, message="Unrecognized request argument supplied: frobnicate"))
    with pytest.raises(openai.BadRequestError, match="Unrecognized request argument supplied: frobnicate"):
        create(client, model="oa", extra_body={"frobnicate": 1})


# ---- service tiers: the hold and the settlement --------------------------------------------------------
def test_service_tier_prices_multiply_the_hold_and_the_bill(fake_server: FakeServer, catalog_path: Path) -> None:
    catalog = load_catalog(catalog_path)
    oa = catalog.models["oa"]
    specs = provider_specs(fake_server)
    client = client_for(cast(Any, specs["acme"]), api_key=TEST_KEY)
    try:
        base = client.chat(oa, ChatRequest(messages=[Message.user("hi")])).cost
        assert base is not None
        flex = client.chat(oa, ChatRequest(messages=[Message.user("hi")], params={"service_tier": "flex"}))
        assert flex.service_tier == "flex" and flex.cost == pytest.approx(base * 0.5)
    finally:
        client.close()
    engine = Engine.from_source(POLICY, catalog=catalog, providers=specs, api_keys={"acme": TEST_KEY})
    try:
        entry = engine.policy.models["oa"]
        plain = model_cost(entry, "openai", Bound(lambda kind: 1000, 100), None)
        assert model_cost(entry, "openai", Bound(lambda kind: 1000, 100, tier="priority"), None) == plain * 2
        # a tier the catalog does not list is held at the highest listed multiplier
        assert model_cost(entry, "openai", Bound(lambda kind: 1000, 100, tier="scale"), None) == plain * 2
    finally:
        engine.close()


@pytest.mark.parametrize("model", ["oa", "an", "ge"])
def test_the_hold_covers_every_answer_of_n(fake_server: FakeServer, catalog_path: Path, model: str) -> None:
    import asyncio

    from tests.fakeserver import Billing

    fake_server.billing = Billing()
    fake_server.default = Reply(output_tokens=400)  # more than max_tokens: each answer is cut at the bound
    policy = f"budget daily $100\nset retry.attempts = 0\notherwise use {model}\n"
    engine = fake_engine(fake_server, catalog_path, policy)
    try:
        ex = engine.executor
        options = {"n": 3, "params": {"n": 3}, "max_tokens": 100}
        run = ex.prepare(None, [{"role": "user", "content": "hello " * 50}], None, options, {})
        done = asyncio.run(ex.run(run))
        assert len(fake_server.bills) == (3 if model == "an" else 1)
        assert sum(b.output_tokens for b in fake_server.bills) == 300  # three answers of 100
        assert run.max_cost is not None and done.cost <= run.max_cost
        assert done.cost >= 0.5 * run.max_cost  # a tight bound, not a blanket one
    finally:
        engine.close()
