"""Audio and file content parts through the gateway (issue 16): the official `openai` SDK drives the gateway app
(uvicorn on loopback) whose upstreams are the FakeServer speaking the OpenAI, Anthropic and Gemini wire formats;
what each upstream RECEIVED for `input_audio` and `file` parts, the `audio` / `files` hard constraints (and explain
saying why), a `file_id` only where it can be read, budget holds counting the parts, and malformed parts refused
with a 400 that names the field (never a 5xx, also for generated ones)."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
openai = pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")
import httpx  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from engine import Engine  # noqa: E402
from engine.runtime.media import AUDIO_TOKENS_PER_SECOND, PAGE_TOKENS  # noqa: E402
from providers.gateway.app import create_app  # noqa: E402
from providers.gateway.openai_wire import ApiError, parse_chat  # noqa: E402
from tests.fakeserver import FakeServer, Reply  # noqa: E402
from tests.fuzz_values import dump, media_parts  # noqa: E402
from tests.gateway_kit import chat, fake_engine, gateways, model_yaml, write_catalog  # noqa: E402

# one model per wire format and feature (providers of tests/engines.py: acme openai, betacorp anthropic,
# gammalabs gemini)
CATALOG = "models:\n" + "".join(
    [
        model_yaml("plain", "plain", "tools"),
        model_yaml("oa", "oa", "tools, vision, files"),
        model_yaml("oa-audio", "oa", "tools, audio", price="{input: 2, output: 8}"),
        model_yaml("an", "an", "tools, vision, files"),
        model_yaml("ge", "ge", "tools, vision, audio, files"),
    ]
)
POLICY = """
set overrides = true
set retry.attempts = 0
otherwise use plain fallback oa, oa-audio, an, ge
"""


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _wav(seconds: float, rate: int = 16000) -> bytes:
    """A mono 16-bit PCM WAV file of `seconds` of silence."""
    data = b"\x00\x00" * int(rate * seconds)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    head = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
    return head + b"data" + struct.pack("<I", len(data)) + data


def _pdf(pages: int) -> bytes:
    objects = b"".join(b"%d 0 obj << /Type /Page /Parent 1 0 R >> endobj\n" % (i + 2) for i in range(pages))
    return b"%PDF-1.7\n" + b"1 0 obj << /Type /Pages /Count %d >> endobj\n" % pages + objects + b"%%EOF\n"


WAV = _b64(_wav(2.0))
PDF = _b64(_pdf(3))
AUDIO_PART = {"type": "input_audio", "input_audio": {"data": WAV, "format": "wav"}}
FILE_PART = {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{PDF}", "filename": "report.pdf"}}
FILE_ID_PART = {"type": "file", "file": {"file_id": "file-abc123"}}
ASK = {"type": "text", "text": "What is in these?"}


def user(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [ASK, *parts]}]


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    return write_catalog(tmp_path, CATALOG)


def _engine(fake_server: FakeServer, catalog_path: Path, policy: str = POLICY) -> Engine:
    return fake_engine(fake_server, catalog_path, policy)


@pytest.fixture
def gateway(fake_server: FakeServer, catalog_path: Path) -> Iterator[Callable[[], Any]]:
    """`gateway()`: a started gateway over POLICY and the test catalog, as an openai SDK client."""
    with gateways(fake_server, catalog_path) as start:
        yield lambda: start(POLICY).openai


def create(client: Any, messages: list[dict[str, Any]], model: str = "auto", **kw: Any) -> tuple[Any, httpx.Headers]:
    return chat(client, model=model, messages=messages, **kw)


# ---- what each provider kind receives ------------------------------------------------------------------------
def test_an_openai_kind_provider_gets_the_parts_as_openai_defines_them(gateway, fake_server: FakeServer) -> None:
    client = gateway()
    answer, headers = create(client, user(AUDIO_PART), model="oa-audio")
    assert answer.choices[0].message.content == "ok" and headers["x-modelroute-model"] == "oa-audio"
    assert fake_server.last().body["messages"][0]["content"] == [ASK, AUDIO_PART]
    create(client, user(FILE_PART, FILE_ID_PART), model="oa")
    assert fake_server.last().body["messages"][0]["content"] == [ASK, FILE_PART, FILE_ID_PART]
    # bare base64 file_data (no data: URL) is a PDF: sent as the data URL OpenAI reads
    create(client, user({"type": "file", "file": {"file_data": PDF}}), model="oa")
    assert fake_server.last().body["messages"][0]["content"][1] == {
        "type": "file",
        "file": {"file_data": f"data:application/pdf;base64,{PDF}"},
    }


def test_anthropic_gets_a_pdf_as_a_document_block(gateway, fake_server: FakeServer) -> None:
    client = gateway()
    answer, headers = create(client, user(FILE_PART), model="an")
    assert answer.choices[0].message.content == "ok" and headers["x-modelroute-model"] == "an"
    request = fake_server.last()
    assert request.path == "/v1/messages"
    assert request.body["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
            "title": "report.pdf",
        },
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_gets_audio_and_pdf_as_inline_data(gateway, fake_server: FakeServer, stream: bool) -> None:
    client = gateway()
    if stream:
        chunks = list(client.chat.completions.create(model="ge", messages=user(AUDIO_PART, FILE_PART), stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ok"
    else:
        answer, headers = create(client, user(AUDIO_PART, FILE_PART), model="ge")
        assert answer.choices[0].message.content == "ok" and headers["x-modelroute-model"] == "ge"
    assert fake_server.last().body["contents"][0]["parts"] == [
        {"text": "What is in these?"},
        {"inlineData": {"mimeType": "audio/wav", "data": WAV}},
        {"inlineData": {"mimeType": "application/pdf", "data": PDF}},
    ]
    mp3 = {"type": "input_audio", "input_audio": {"data": "SUQzBAAAAAAAAA==", "format": "mp3"}}
    create(client, user(mp3), model="ge")
    assert fake_server.last().body["contents"][0]["parts"][1] == {
        "inlineData": {"mimeType": "audio/mp3", "data": "SUQzBAAAAAAAAA=="}
    }


@pytest.mark.parametrize("model", ["an", "ge"])
def test_a_file_id_is_refused_where_it_cannot_be_read_and_nothing_is_sent(
    gateway, fake_server: FakeServer, model: str
) -> None:
    client = gateway()
    with pytest.raises(openai.BadRequestError, match="file_id") as refused:
        create(client, user(FILE_ID_PART), model=model)
    assert refused.value.code == "upstream_rejected_request"
    assert "send the file as file_data" in str(refused.value)
    assert fake_server.requests == []


# ---- the hard constraints ------------------------------------------------------------------------------------
def test_audio_and_files_keep_models_without_them_out_of_the_plan(gateway, fake_server: FakeServer) -> None:
    client = gateway()
    _, headers = create(client, user())
    assert headers["x-modelroute-model"] == "plain"  # the rule's first choice
    _, headers = create(client, user(FILE_PART))
    assert headers["x-modelroute-model"] == "oa"  # plain lists no `files`
    _, headers = create(client, user(AUDIO_PART))
    assert headers["x-modelroute-model"] == "oa-audio"  # plain and oa list no `audio`
    _, headers = create(client, user(AUDIO_PART, FILE_PART))
    assert headers["x-modelroute-model"] == "ge"  # the only model with both
    assert {r.model for r in fake_server.requests} == {"plain", "oa", "oa-audio", "ge"}
    # explain says why
    report = httpx.post(
        str(client.base_url).rstrip("/") + "/route/explain", json={"messages": user(AUDIO_PART, FILE_PART)}
    ).json()
    text = json.dumps(report)
    assert report["model"] == "ge"
    assert "no audio input support (request has input_audio parts)" in text
    assert "no file input support (request has file parts: PDF documents)" in text
    # a request that names a model without the feature is refused, not sent
    sent = len(fake_server.requests)
    with pytest.raises(openai.BadRequestError, match="audio") as refused:
        create(client, user(AUDIO_PART), model="an")
    assert refused.value.code == "model_unsuitable" and len(fake_server.requests) == sent


def test_decide_reads_the_parts_of_python_api_messages(fake_server: FakeServer, catalog_path: Path) -> None:
    engine = _engine(fake_server, catalog_path)
    try:
        assert engine.decide(messages=user(FILE_PART)).model == "oa"
        decision = engine.decide(messages=user(AUDIO_PART))
        assert decision.model == "oa-audio" and "ge" in decision.fallbacks and "an" not in decision.fallbacks
    finally:
        engine.close()


# ---- holds count the parts -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "kind"), [("oa", "openai"), ("an", "anthropic"), ("ge", "gemini")])
def test_the_hold_counts_audio_seconds_and_pdf_pages(
    fake_server: FakeServer, catalog_path: Path, model: str, kind: str
) -> None:
    engine = _engine(fake_server, catalog_path, f"budget daily $100\nset retry.attempts = 0\notherwise use {model}\n")
    try:
        ex = engine.executor
        options = {"max_tokens": 10}
        bare = ex.prepare(None, user(), None, options, {})
        parts = [FILE_PART, AUDIO_PART] if model == "ge" else [FILE_PART]  # audio only where the model takes it
        with_parts = ex.prepare(None, user(*parts), None, options, {})
        assert bare.bound is not None and with_parts.bound is not None
        added = 3 * PAGE_TOKENS[kind] + (2 * AUDIO_TOKENS_PER_SECOND[kind] if model == "ge" else 0)
        assert with_parts.bound.tokens(kind) - bare.bound.tokens(kind) == added
        assert with_parts.max_cost is not None and bare.max_cost is not None and with_parts.max_cost > bare.max_cost
        for run in (bare, with_parts):
            asyncio.run(ex.run(run))
    finally:
        engine.close()


# ---- malformed parts -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "input_audio"}, "messages[0].content[1].input_audio"),
        ({"type": "input_audio", "input_audio": {"format": "wav"}}, "messages[0].content[1].input_audio.data"),
        (
            {"type": "input_audio", "input_audio": {"data": WAV, "format": "ogg"}},
            "messages[0].content[1].input_audio.format",
        ),
        (
            {"type": "input_audio", "input_audio": {"data": "not base64!", "format": "wav"}},
            "messages[0].content[1].input_audio.data",
        ),
        ({"type": "file", "file": "report.pdf"}, "messages[0].content[1].file"),
        ({"type": "file", "file": {"filename": "a.pdf"}}, "messages[0].content[1].file"),
        (
            {"type": "file", "file": {"file_data": "data:image/png;base64,iVBORw0K"}},
            "messages[0].content[1].file.file_data",
        ),
        ({"type": "file", "file": {"file_data": "%PDF-1.7 raw bytes"}}, "messages[0].content[1].file.file_data"),
        ({"type": "file", "file": {"file_id": ""}}, "messages[0].content[1].file.file_id"),
        ({"type": "file", "file": {"file_id": "f", "file_data": PDF}}, "messages[0].content[1].file"),
        ({"type": "file", "file": {"file_data": PDF, "filename": 3}}, "messages[0].content[1].file.filename"),
        ({"type": "video_url", "video_url": "x"}, "messages[0].content"),
    ],
)
def test_malformed_parts_get_a_400_naming_the_field(
    gateway, fake_server: FakeServer, part: dict[str, Any], param: str
) -> None:
    client = gateway()
    with pytest.raises(openai.BadRequestError) as refused:
        create(client, user(part))
    assert refused.value.status_code == 400 and refused.value.param == param
    assert fake_server.requests == []


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    path = write_catalog(tmp_path_factory.mktemp("parts"), CATALOG)
    with FakeServer() as server:
        server.default = Reply(text="ok")
        engine = _engine(server, path)
        try:
            with TestClient(create_app(engine)) as client:
                yield client
        finally:
            engine.close()


@settings(max_examples=150, deadline=None)
@given(part=media_parts, model=st.sampled_from(["auto", "oa", "an", "ge"]))
def test_generated_parts_get_a_400_or_an_answer_never_a_5xx(app_client: TestClient, part: Any, model: str) -> None:
    raw = dump({"model": model, "messages": [{"role": "user", "content": [ASK, part]}]}).encode()
    try:
        parse_chat(raw, {})
        refused = None
    except ApiError as err:
        refused = err
    r = app_client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code < 500, r.text
    if refused is not None:
        assert r.status_code == refused.status == 400 and r.json()["error"]["code"] == refused.code
    else:
        assert r.status_code in (200, 400), r.text
