"""Regressions of the issue 16 review through the gateway: the official `openai` and `anthropic` SDKs drive the
gateway app (uvicorn on loopback) whose upstreams are the FakeServer speaking the OpenAI, Anthropic and Gemini wire
formats; each test asserts what the upstream RECEIVED (base64 images, the deprecated functions flow, top_k, exact
thinking budgets, image detail, reasoning_effort values, Gemini's budget below max_tokens)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
openai = pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")
anthropic = pytest.importorskip("anthropic", reason="the anthropic SDK is not installed (pip install -e '.[test]')")

from tests.fakeserver import Call, FakeServer, Fault, Reply  # noqa: E402
from tests.gateway_kit import Gateway, dropped, gateways, model_yaml, write_catalog  # noqa: E402
from tests.gateway_kit import chat as openai_chat  # noqa: E402

CATALOG = "models:\n" + "".join(
    [
        model_yaml("oa", "oa", "tools, vision, files"),
        model_yaml("an", "an", "tools, vision, files"),
        model_yaml("ge", "ge", "tools, vision, audio, files"),
    ]
)
POLICY = """
set overrides = true
set retry.attempts = 0
otherwise use oa fallback an, ge
"""
PNG = base64.b64encode(
    bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000") + b"\x1f\x15\xc4\x89"
).decode()
DATA_URL = f"data:image/png;base64,{PNG}"
PDF = base64.b64encode(b"%PDF-1.7\n1 0 obj << /Type /Pages /Count 1 >> endobj\n%%EOF\n").decode()
WEATHER = {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


@pytest.fixture
def gateway(fake_server: FakeServer, tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """`gateway(policy=POLICY, keyed=True)`: a started Gateway (keyed: every provider has its API key)."""
    with gateways(fake_server, write_catalog(tmp_path, CATALOG)) as start:
        yield lambda policy=POLICY, keyed=True: start(policy, keyed)


def chat(gw: Gateway, model: str, messages: list[dict[str, Any]], **kw: Any) -> tuple[Any, Any]:
    return openai_chat(gw.openai, model=model, messages=messages, **kw)


def messages_create(gw: Gateway, model: str, **kw: Any) -> tuple[Any, Any]:
    kw.setdefault("messages", [{"role": "user", "content": "hi"}])
    extra = {
        name: kw.pop(name) for name in ("top_k", "temperature", "cache_control") if name in kw
    }  # not in this SDK's signature
    if extra:
        kw["extra_body"] = extra
    kw.setdefault("timeout", 60)  # a large max_tokens is refused unstreamed without an explicit timeout
    raw = gw.anthropic.messages.with_raw_response.create(model=model, max_tokens=kw.pop("max_tokens", 2000), **kw)
    return raw.parse(), raw.headers


# ---- 1: base64 images go as bytes to Anthropic and Gemini ---------------------------------------------------------
def _image_parts(request: Any) -> Any:
    if request.path == "/v1/messages":
        return [b for b in request.body["messages"][0]["content"] if b["type"] == "image"]
    if "contents" in request.body:
        return [p for p in request.body["contents"][0]["parts"] if "text" not in p]
    return [p for p in request.body["messages"][0]["content"] if p["type"] == "image_url"]


@pytest.mark.parametrize("model", ["an", "ge"])
def test_a_data_url_image_goes_as_base64_bytes(gateway, fake_server: FakeServer, model: str) -> None:
    gw = gateway()
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": DATA_URL}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    chat(gw, model, [{"role": "user", "content": content}])
    images = _image_parts(fake_server.last())
    if model == "an":
        assert images == [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        ]
    else:
        assert images == [
            {"inlineData": {"mimeType": "image/png", "data": PNG}},
            {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/cat.png"}},
        ]


@pytest.mark.parametrize("model", ["an", "ge", "oa"])
def test_an_anthropic_sdk_base64_image_reaches_each_kind_as_bytes(gateway, fake_server: FakeServer, model: str) -> None:
    gw = gateway()
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "What is this?"},
    ]
    messages_create(gw, model, messages=[{"role": "user", "content": content}])
    image = _image_parts(fake_server.last())[0]
    expected = {
        "an": {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        "ge": {"inlineData": {"mimeType": "image/png", "data": PNG}},
        "oa": {"type": "image_url", "image_url": {"url": DATA_URL}},
    }
    assert image == expected[model]


@pytest.mark.parametrize("model", ["an", "ge"])
def test_a_responses_input_image_as_data_url_goes_as_bytes(gateway, fake_server: FakeServer, model: str) -> None:
    gw = gateway()
    gw.openai.responses.create(
        model=model,
        input=[{"role": "user", "content": [{"type": "input_image", "image_url": DATA_URL, "detail": "auto"}]}],
    )
    image = _image_parts(fake_server.last())[0]
    assert PNG in json.dumps(image) and "url" not in json.dumps(image).lower().replace("inline", "")


# ---- 6: image detail reaches OpenAI kinds --------------------------------------------------------------------------
def test_image_detail_reaches_an_openai_kind(gateway, fake_server: FakeServer) -> None:
    gw = gateway()
    part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}}
    chat(gw, "oa", [{"role": "user", "content": [part]}])
    assert fake_server.last().body["messages"][0]["content"] == [part]
    with pytest.raises(openai.BadRequestError, match="detail") as refused:
        chat(gw, "oa", [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x", "detail": "x"}}]}])
    assert refused.value.body["param"] == "messages[0].content[0].image_url.detail"


# ---- 2: the deprecated functions flow round-trips ------------------------------------------------------------------
@pytest.mark.parametrize("model", ["oa", "an", "ge"])
def test_the_functions_flow_round_trips(gateway, fake_server: FakeServer, model: str) -> None:
    gw = gateway()
    fake_server.script(model, Reply(text="", tool_calls=[Call("weather", {"city": "Oslo"})]))
    ask = [{"role": "user", "content": "Weather in Oslo?"}]
    answer, _ = chat(gw, model, ask, functions=[WEATHER], function_call={"name": "weather"})
    choice = answer.choices[0]
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
    assert choice.message.function_call.name == "weather"
    turn = [
        *ask,
        {"role": "assistant", "content": None, "function_call": choice.message.function_call.model_dump()},
        {"role": "function", "name": "weather", "content": "sunny"},
    ]
    answer, _ = chat(gw, model, turn, functions=[WEATHER])
    assert answer.choices[0].message.content == "ok" and answer.choices[0].finish_reason == "stop"
    body = fake_server.last().body
    if model == "oa":
        call, result = body["messages"][1], body["messages"][2]
        assert call["tool_calls"][0]["function"] == {"name": "weather", "arguments": '{"city": "Oslo"}'}
        assert result == {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": "sunny"}
    elif model == "an":
        use, result = body["messages"][1]["content"][0], body["messages"][2]["content"][0]
        assert use["type"] == "tool_use" and use["name"] == "weather" and use["input"] == {"city": "Oslo"}
        assert result == {"type": "tool_result", "tool_use_id": use["id"], "content": "sunny"}
    else:
        assert body["contents"][1]["parts"] == [{"functionCall": {"name": "weather", "args": {"city": "Oslo"}}}]
        assert body["contents"][2]["parts"] == [
            {"functionResponse": {"name": "weather", "response": {"result": "sunny"}}}
        ]


def test_a_streamed_functions_answer_has_function_call_deltas(gateway, fake_server: FakeServer) -> None:
    gw = gateway()
    fake_server.script("an", Reply(text="", tool_calls=[Call("weather", {"city": "Oslo"})]))
    chunks = list(
        gw.openai.chat.completions.create(
            model="an", messages=[{"role": "user", "content": "hi"}], functions=[WEATHER], stream=True
        )
    )
    deltas = [c.choices[0] for c in chunks if c.choices]
    calls = [d.delta.function_call for d in deltas if d.delta.function_call is not None]
    assert [c.name for c in calls] == ["weather"] and json.loads(calls[0].arguments) == {"city": "Oslo"}
    assert all(d.delta.tool_calls is None for d in deltas)
    assert deltas[-1].finish_reason == "function_call"


def test_a_function_message_without_a_name_is_refused(gateway, fake_server: FakeServer) -> None:
    gw = gateway()
    with pytest.raises(openai.BadRequestError, match="name") as refused:
        chat(gw, "oa", [{"role": "user", "content": "hi"}, {"role": "function", "content": "sunny"}])
    assert refused.value.body["param"] == "messages[1].name"
    assert fake_server.requests == []


# ---- 4: top_k --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["an", "ge", "oa"])
def test_top_k_is_sent_or_named(gateway, fake_server: FakeServer, model: str) -> None:
    gw = gateway()
    _, headers = messages_create(gw, model, top_k=5)
    body = fake_server.last().body
    if model == "an":
        assert body["top_k"] == 5 and dropped(headers) == []
    elif model == "ge":
        assert body["generationConfig"]["topK"] == 5 and dropped(headers) == []
    else:
        assert "top_k" not in body and dropped(headers) == ["top_k"]


def test_top_k_under_reject_is_refused_where_it_would_be_dropped(gateway, fake_server: FakeServer) -> None:
    gw = gateway("set overrides = true\nset params.unsupported = reject\notherwise use oa\n")
    with pytest.raises(anthropic.BadRequestError, match="top_k"):
        messages_create(gw, "oa", top_k=5)
    assert fake_server.requests == []
    messages_create(gw, "an", top_k=5)
    assert fake_server.last().body["top_k"] == 5


# ---- 5: exact thinking budgets -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("thinking", "anthropic_gets", "gemini_budget", "openai_effort"),
    [
        ({"type": "enabled", "budget_tokens": 30000}, {"type": "enabled", "budget_tokens": 30000}, 30000, "high"),
        ({"type": "enabled", "budget_tokens": 2000}, {"type": "enabled", "budget_tokens": 2000}, 2000, "low"),
        ({"type": "enabled", "budget_tokens": 10000}, {"type": "enabled", "budget_tokens": 10000}, 10000, "medium"),
        ({"type": "disabled"}, {"type": "disabled"}, 0, None),
        ({"type": "adaptive"}, {"type": "adaptive"}, -1, None),
    ],
)
def test_thinking_budget_is_sent_exactly(
    gateway, fake_server: FakeServer, thinking: Any, anthropic_gets: Any, gemini_budget: int, openai_effort: Any
) -> None:
    gw = gateway()
    messages_create(gw, "an", max_tokens=32000, thinking=thinking, temperature=1)
    body = fake_server.last().body
    assert body["thinking"] == anthropic_gets
    assert ("temperature" in body) is (thinking["type"] == "disabled")  # thinking takes no temperature
    messages_create(gw, "ge", max_tokens=32000, thinking=thinking)
    assert fake_server.last().body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": gemini_budget}
    _, headers = messages_create(gw, "oa", max_tokens=32000, thinking=thinking)
    body = fake_server.last().body
    assert "thinking" not in body and body.get("reasoning_effort") == openai_effort
    assert dropped(headers) == ([] if openai_effort else ["thinking"])


# ---- 7: Gemini's thinking budget fits below max_tokens --------------------------------------------------------------
def test_gemini_thinking_budget_is_cut_below_max_tokens(gateway, fake_server: FakeServer) -> None:
    gw = gateway()
    hi = [{"role": "user", "content": "hi"}]
    chat(gw, "ge", hi, reasoning_effort="high", max_tokens=500)
    config = fake_server.last().body["generationConfig"]
    assert config["maxOutputTokens"] == 500 and config["thinkingConfig"] == {"thinkingBudget": 499}
    _, headers = chat(gw, "ge", hi, reasoning_effort="high", max_tokens=100)  # no room for 128 thinking tokens
    assert "thinkingConfig" not in fake_server.last().body["generationConfig"]
    assert dropped(headers) == ["reasoning_effort"]
    chat(gw, "ge", hi, reasoning_effort="none", max_tokens=100)  # off fits anywhere
    assert fake_server.last().body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 0}


# ---- 10: reasoning_effort values -------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["oa", "an", "ge"])
def test_an_unknown_reasoning_effort_is_refused_on_every_kind(gateway, fake_server: FakeServer, model: str) -> None:
    gw = gateway()
    with pytest.raises(openai.BadRequestError) as refused:
        chat(gw, model, [{"role": "user", "content": "hi"}], reasoning_effort="weird")
    assert refused.value.body["param"] == "reasoning_effort" and refused.value.code == "invalid_value"
    assert "none, minimal, low, medium, high, xhigh" in refused.value.message
    assert fake_server.requests == []
    chat(gw, model, [{"role": "user", "content": "hi"}], reasoning_effort="xhigh")
    assert len(fake_server.requests) == 1


# ---- 9: n as n calls counts every call, is capped, and fails over as one try ----------------------------------------
def _attempts_metric(gw: Gateway, model: str, outcome: str) -> float:
    text = httpx.get(gw.server.url + "/metrics").text
    line = f'modelroute_attempts_total{{model="{model}",outcome="{outcome}"}} '
    return sum(float(row[len(line) :]) for row in text.splitlines() if row.startswith(line))


def test_n_calls_on_anthropic_are_each_an_attempt(gateway, fake_server: FakeServer) -> None:
    gw = gateway()
    answer, headers = chat(gw, "an", [{"role": "user", "content": "hi"}], n=3)
    assert len(answer.choices) == 3 and len(fake_server.requests) == 3
    assert headers["x-modelroute-attempts"] == "3"
    assert _attempts_metric(gw, "an", "ok") == 3


def test_n_above_n_max_is_refused_before_any_call(gateway, fake_server: FakeServer) -> None:
    gw = gateway()
    with pytest.raises(openai.BadRequestError, match=r"n.max = 8") as refused:
        chat(gw, "an", [{"role": "user", "content": "hi"}], n=9)
    assert refused.value.status_code == 400 and fake_server.requests == []
    gw = gateway("set overrides = true\nset n.max = 16\notherwise use oa\n")
    answer, _ = chat(gw, "an", [{"role": "user", "content": "hi"}], n=9)
    assert len(answer.choices) == 9 and len(fake_server.requests) == 9
    answer, _ = chat(gw, "oa", [{"role": "user", "content": "hi"}], n=20)  # a native n is not capped
    assert fake_server.last().body["n"] == 20


def test_one_failed_call_of_n_fails_the_try_and_the_plan_falls_back(gateway, fake_server: FakeServer) -> None:
    gw = gateway("set overrides = true\nset retry.attempts = 0\notherwise use an fallback ge\n")
    fake_server.script("an", [Reply(text="one"), Fault.server_error(500), Reply(text="three")])
    answer, headers = chat(gw, "auto", [{"role": "user", "content": "hi"}], n=3)
    assert headers["x-modelroute-model"] == "ge" and len(answer.choices) == 3
    assert fake_server.last().body["generationConfig"]["candidateCount"] == 3
    assert headers["x-modelroute-attempts"] == "4"  # an's three calls (one failed, two cancelled), then ge
    assert _attempts_metric(gw, "an", "error") == 1 and _attempts_metric(gw, "an", "cancelled") == 2


# ---- 8: Responses fields with a chat counterpart are sent, the rest named -------------------------------------------
def test_responses_top_logprobs_verbosity_and_max_tool_calls(gateway, fake_server: FakeServer) -> None:
    gw = gateway()
    raw = gw.openai.responses.with_raw_response.create(
        model="oa", input="hi", top_logprobs=3, max_tool_calls=2, text={"verbosity": "low"}
    )
    body = fake_server.last().body
    assert (body["logprobs"], body["top_logprobs"], body["verbosity"]) == (True, 3, "low")
    assert "max_tool_calls" not in body and dropped(raw.headers) == ["max_tool_calls"]
    gw = gateway("set overrides = true\nset params.unsupported = reject\notherwise use oa\n")
    with pytest.raises(openai.BadRequestError, match="max_tool_calls"):
        gw.openai.responses.create(model="oa", input="hi", max_tool_calls=2)


# ---- files from the Messages and Responses APIs ----------------------------------------------------------------------
@pytest.mark.parametrize("model", ["an", "ge", "oa"])
def test_an_anthropic_document_block_is_a_file_part(gateway, fake_server: FakeServer, model: str) -> None:
    gw = gateway()
    document = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
        "title": "report.pdf",
    }
    messages_create(gw, model, messages=[{"role": "user", "content": [document, {"type": "text", "text": "Sum up"}]}])
    body = fake_server.last().body
    if model == "an":
        assert body["messages"][0]["content"][0] == document
    elif model == "ge":
        assert body["contents"][0]["parts"][0] == {"inlineData": {"mimeType": "application/pdf", "data": PDF}}
    else:
        assert body["messages"][0]["content"][0] == {
            "type": "file",
            "file": {"file_data": f"data:application/pdf;base64,{PDF}", "filename": "report.pdf"},
        }


def test_a_responses_input_file_is_a_file_part(gateway, fake_server: FakeServer) -> None:
    gw = gateway()
    part = {"type": "input_file", "file_data": f"data:application/pdf;base64,{PDF}", "filename": "report.pdf"}
    gw.openai.responses.create(model="an", input=[{"role": "user", "content": [part]}])
    assert fake_server.last().body["messages"][0]["content"][0] == {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
        "title": "report.pdf",
    }


# ---- 11: tool errors, a missing key ----------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["an", "oa", "ge"])
def test_a_tool_result_error_keeps_its_flag_on_anthropic(gateway, fake_server: FakeServer, model: str) -> None:
    gw = gateway()
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "weather", "input": {}}]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": True, "content": "no city"}],
        },
    ]
    tools = [{"name": "weather", "input_schema": WEATHER["parameters"]}]
    messages_create(gw, model, messages=messages, tools=tools)
    body = fake_server.last().body
    if model == "an":
        assert body["messages"][2]["content"] == [
            {"type": "tool_result", "tool_use_id": "t1", "content": "no city", "is_error": True}
        ]
    elif model == "oa":
        assert body["messages"][2] == {"role": "tool", "tool_call_id": "t1", "content": "Error: no city"}
    else:
        response = body["contents"][2]["parts"][0]["functionResponse"]["response"]
        assert response == {"result": "Error: no city"}


def test_no_provider_key_is_a_503_the_sdks_do_not_retry(gateway, fake_server: FakeServer) -> None:
    gw = gateway(keyed=False)
    retrying = anthropic.Anthropic(base_url=gw.server.url, api_key="unused", max_retries=3)
    with pytest.raises(anthropic.APIStatusError) as failed:
        retrying.messages.create(model="an", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 503 and failed.value.body["error"]["type"] == "api_error"
    assert failed.value.response.headers["x-should-retry"] == "false"
    assert "API key" in failed.value.message
    metrics = httpx.get(gw.server.url + "/metrics").text
    assert 'modelroute_requests_total{endpoint="messages",status="503"} 1' in metrics  # asked once: not retried
    with pytest.raises(openai.APIStatusError) as failed_openai:
        openai.OpenAI(base_url=gw.server.url + "/v1", api_key="unused", max_retries=3).chat.completions.create(
            model="oa", messages=[{"role": "user", "content": "hi"}]
        )
    assert failed_openai.value.status_code == 503 and failed_openai.value.code == "models_unavailable"
    metrics = httpx.get(gw.server.url + "/metrics").text
    assert 'modelroute_requests_total{endpoint="chat",status="503"} 1' in metrics


# ---- decide() sees the parts of Message objects ----------------------------------------------------------------------
def test_message_objects_with_parts_meet_the_hard_constraints(gateway, fake_server: FakeServer) -> None:
    from providers.types import AudioPart, FilePart, ImagePart, Message, TextPart

    engine = gateway().engine
    audio = Message.user([TextPart(text="What is said?"), AudioPart(data="UklGRg==", format="wav")])
    done = engine.complete(messages=[audio])
    assert done.model == "ge" and fake_server.last().model == "ge"  # oa and an take no audio
    pinned = engine.complete(messages=[audio], model="ge")
    assert pinned.model == "ge"
    image = Message.user([ImagePart(url="https://example.com/cat.png", detail="high"), FilePart(data=PDF)])
    assert engine.complete(messages=[image]).model == "oa"
    assert fake_server.last().body["messages"][0]["content"][0] == {
        "type": "image_url",
        "image_url": {"url": "https://example.com/cat.png", "detail": "high"},
    }


# ---- cache_control reaches Anthropic, and is named elsewhere ---------------------------------------------------------
@pytest.mark.parametrize("model", ["an", "oa", "ge"])
def test_cache_control_reaches_anthropic_and_is_named_elsewhere(gateway, fake_server: FakeServer, model: str) -> None:
    gw = gateway()
    ephemeral = {"type": "ephemeral"}
    system = [{"type": "text", "text": "Long rules", "cache_control": ephemeral}, {"type": "text", "text": "More"}]
    content = [{"type": "text", "text": "Long context", "cache_control": ephemeral}, {"type": "text", "text": "Ask"}]
    _, headers = messages_create(
        gw, model, system=system, messages=[{"role": "user", "content": content}], cache_control=ephemeral
    )
    body = fake_server.last().body
    if model == "an":
        assert body["system"] == system and body["messages"][0]["content"] == content
        assert body["cache_control"] == ephemeral and dropped(headers) == []
    else:
        assert "cache_control" not in json.dumps(body) and dropped(headers) == ["cache_control"]
    messages_create(gw, model, system="Plain", messages=[{"role": "user", "content": "hi"}])
    if model == "an":  # no breakpoint: the system text as a string, as before
        assert fake_server.last().body["system"] == "Plain"
