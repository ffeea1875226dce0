"""Review 28: attacks on the gateway (providers/gateway/) through the official `openai` and `anthropic` SDKs and
raw sockets, against real uvicorn gateways whose upstream is the loopback FakeServer.

The attacks: a client that disconnects (or half-closes, or sends broken chunked framing) while its body is read,
on every endpoint that reads one, is a 499 and no logged error; the body timeout of `modelroute serve` is a 408 and
no 500; the 503 `server_busy` of the concurrency bound is Anthropic-shaped on /v1/messages and count_tokens; an
assistant `refusal` content part (valid OpenAI input) is sent on as its text, on every provider kind. Also:
byte-by-byte upstream streams with multi-byte text, streams whose upstream reports no usage, a client gone while
its upstream stream stalls, a 413 on a kept-alive connection, Anthropic edge bodies (system blocks, prefill,
thinking history), Anthropic client mistakes through the SDK, `n` > 1 on every provider kind, and upstream auth
failures that must never reach the client as a 401."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
openai = pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")
anthropic = pytest.importorskip("anthropic", reason="the anthropic SDK is not installed (pip install -e '.[test]')")
import httpx  # noqa: E402
import uvicorn  # noqa: E402

from providers.gateway.admission import bounded  # noqa: E402
from providers.gateway.app import Gateway  # noqa: E402
from providers.gateway.protocol import http_protocol  # noqa: E402
from tests.endpoint_gateway import BY_KIND, KEY, Served, serving, sse_frames  # noqa: E402
from tests.engines import engine_for  # noqa: E402
from tests.fakeserver import Billing, Call, FakeServer, Fault, Reply  # noqa: E402
from tests.test_redis_store import free_port  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

USER = [{"role": "user", "content": "hi"}]
KINDS = sorted(BY_KIND)  # anthropic, gemini, openai: one catalog model of each wire format


@pytest.fixture
def gw(fake_server: FakeServer) -> Iterator[Served]:
    yield from serving(fake_server)


class Records(logging.Handler):
    """ERROR records (or any with a traceback) of the gateway's and uvicorn's loggers while installed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.bad.append(f"{record.name}: {record.getMessage()[:120]}")


@pytest.fixture
def errors() -> Iterator[Records]:
    records = Records()
    loggers = [logging.getLogger(name) for name in ("modelroute", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(records)
    try:
        yield records
    finally:
        for logger in loggers:
            logger.removeHandler(records)


def counted(url: str, endpoint: str) -> dict[int, float]:
    """modelroute_requests_total of one endpoint, by status."""
    want = f'modelroute_requests_total{{endpoint="{endpoint}",status="'
    out: dict[int, float] = {}
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(want):
            status, _, value = line[len(want) :].partition('"} ')
            out[int(status)] = float(value)
    return out


def in_flight(url: str) -> int:
    return int(httpx.get(url + "/healthz", timeout=5).json()["in_flight"])


def send_raw(url: str, data: bytes, *, half_close: bool, timeout: float = 5.0) -> bytes:
    """`data` sent on a new connection (then our side shut down when `half_close`); everything read until the
    server closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    try:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        return got
    finally:
        sock.close()


# ---- hang-ups while the body is read, server_busy, refusal parts ---------------------------------------------------
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/messages": "messages", "/v1/messages/count_tokens": "count_tokens"}


@pytest.mark.parametrize("how", ["half-close", "broken-chunks"])
@pytest.mark.parametrize("path", sorted(ENDPOINTS))
def test_a_client_gone_while_its_body_is_read_is_no_500(gw: Served, errors: Records, path: str, how: str) -> None:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\ncontent-type: application/json\r\n"
    if how == "half-close":  # 500 bytes promised, 17 sent, then the client's side of the connection shut down
        data = (head + "content-length: 500\r\n\r\n").encode() + b'{"model": "auto",'
    else:  # a chunk size that is not hex: uvicorn answers 400 itself, then the app's body read is cut
        data = (head + "transfer-encoding: chunked\r\n\r\n").encode() + b'5\r\n{"mod\r\nzz\r\nel\r\n0\r\n\r\n'
    send_raw(gw.url, data, half_close=how == "half-close")
    endpoint = ENDPOINTS[path]
    wait_until(lambda: in_flight(gw.url) == 0, "the request to end", timeout=5)
    time.sleep(0.2)  # the finally blocks that count it run right after
    statuses = counted(gw.url, endpoint)
    assert 500 not in statuses and 200 not in statuses, statuses  # nobody was answered: 499 (or nothing) at most
    assert errors.bad == []  # a client hanging up is not an internal error
    body: dict[str, Any] = {"model": "alpha-mini", "messages": USER}
    if endpoint != "count_tokens":  # count_tokens refuses max_tokens, as Anthropic's does
        body["max_tokens"] = 5
    assert httpx.post(gw.url + path, json=body, headers={"x-api-key": KEY}).status_code == 200  # still serving


@pytest.mark.parametrize(
    ("path", "endpoint"),
    [
        ("/v1/responses", "responses"),
        ("/v1/completions", "completions"),
        ("/v1/embeddings", "embeddings"),
        ("/v1/route/explain", "explain"),
    ],
)
def test_every_other_endpoint_counts_a_client_gone_while_its_body_is_read_as_499(
    gw: Served, errors: Records, path: str, endpoint: str
) -> None:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\ncontent-length: 500\r\n\r\n"
    send_raw(gw.url, head.encode() + b'{"model": "auto",', half_close=True)
    wait_until(lambda: counted(gw.url, endpoint) == {499: 1.0}, f"{endpoint} to count a 499", timeout=5)
    assert errors.bad == [] and in_flight(gw.url) == 0


def test_a_body_cut_at_the_body_timeout_is_a_408_and_no_500(fake_server: FakeServer, errors: Records) -> None:
    gateway = Gateway(engine_for(fake_server, "otherwise use alpha-mini\n"))
    port = free_port()
    protocol = http_protocol(header_timeout=5.0, body_timeout=0.5)  # `modelroute serve` has 30 s by default
    config = uvicorn.Config(
        gateway.asgi(), host="127.0.0.1", port=port, log_level="warning", lifespan="on", http=protocol
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: server.started, "uvicorn to start")
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-length: 300\r\n\r\n"
        got = send_raw(url, head + b'{"messages": [', half_close=False)  # and then nothing more
        assert got.startswith(b"HTTP/1.1 408 "), got[:200]
        wait_until(lambda: gateway.active == 0, "the request to end", timeout=5)
        time.sleep(0.2)
        assert 500 not in counted(url, "chat"), counted(url, "chat")
        assert errors.bad == []
    finally:
        server.should_exit = True
        thread.join(10)


def test_server_busy_on_messages_is_anthropic_shaped(fake_server: FakeServer) -> None:
    gateway = Gateway(engine_for(fake_server, "otherwise use alpha-mini\n"))
    port = free_port()
    config = uvicorn.Config(
        bounded(gateway.asgi(), 0, gateway),  # a limit of 0 requests in progress: every request is refused
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        http=http_protocol(),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "uvicorn to start")
        oa = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as busy:
            oa.chat.completions.create(model="auto", messages=USER)
        assert busy.value.status_code == 503 and busy.value.code == "server_busy"
        client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="x", max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as refused:
            client.messages.create(model="auto", max_tokens=5, messages=USER)
        assert refused.value.status_code == 503
        body = refused.value.body
        assert isinstance(body, dict) and body.get("type") == "error", body
        assert body["error"]["type"] in ("overloaded_error", "api_error"), body
        with pytest.raises(anthropic.APIStatusError) as uncounted:
            client.messages.count_tokens(model="auto", messages=USER)
        assert uncounted.value.status_code == 503 and uncounted.value.body == body
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("kind", KINDS)
def test_an_assistant_refusal_part_is_accepted(gw: Served, fake_server: FakeServer, kind: str) -> None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)
    history: Any = [
        {"role": "user", "content": "something it will not do"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help with that."}]},
        {"role": "user", "content": "then say hi"},
    ]
    answer = client.chat.completions.create(model=BY_KIND[kind], messages=history)
    assert answer.choices[0].message.content
    assert "I can't help with that." in json.dumps(fake_server.last().body)  # sent on as the assistant's text
    for wrong in (  # a refusal part anywhere but an assistant message, or without its text, is still a 400
        [{"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}],
        [*USER, {"role": "assistant", "content": [{"type": "refusal"}]}, *USER],
    ):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=BY_KIND[kind], messages=wrong)


# ---- streams ----------------------------------------------------------------------------------------------------
TEXT = "héllo wörld 日本語 🎉 ok"  # 1-, 2-, 3- and 4-byte UTF-8 characters: each split by a byte-by-byte upstream


@pytest.mark.parametrize("kind", KINDS)
def test_an_upstream_trickling_its_stream_byte_by_byte_keeps_multibyte_text_whole(
    gw: Served, fake_server: FakeServer, kind: str
) -> None:
    model = BY_KIND[kind]
    oa = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)
    tools: Any = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    fake_server.script(model, Fault.trickle(0.0003, Reply(text=TEXT, chunks=3, tool_calls=[Call("f", {"q": "ü✓"})])))
    chunks = list(
        oa.chat.completions.create(
            model=model, messages=USER, stream=True, stream_options={"include_usage": True}, tools=tools
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or ()]
    assert text == TEXT
    assert json.loads("".join(t.function.arguments or "" for t in calls if t.function)) == {"q": "ü✓"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    fake_server.script(model, Fault.trickle(0.0003, Reply(text=TEXT, chunks=3)))
    client = anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0)
    with client.messages.stream(model=model, max_tokens=50, messages=USER) as stream:
        message = stream.get_final_message()
    assert [b.text for b in message.content if b.type == "text"] == [TEXT] and message.stop_reason == "end_turn"
    assert in_flight(gw.url) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_streams_of_an_upstream_that_reports_no_usage_still_end_well_formed(
    gw: Served, fake_server: FakeServer, kind: str
) -> None:
    model = BY_KIND[kind]
    fake_server.billing = Billing(omit_usage=True)  # like OpenAI-compatible servers that ignore stream_options
    oa = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)
    with_usage = list(
        oa.chat.completions.create(model=model, messages=USER, stream=True, stream_options={"include_usage": True})
    )
    last = with_usage[-1]
    assert last.choices == [] and last.usage is not None  # the usage chunk the client asked for is there
    assert last.usage.prompt_tokens > 0 and last.usage.completion_tokens > 0
    assert (last.usage.model_extra or {}).get("cost_estimated") is True  # counted, and said to be estimated
    assert sum(1 for c in with_usage if c.usage is not None) == 1
    without = list(oa.chat.completions.create(model=model, messages=USER, stream=True))
    assert all(c.usage is None and c.choices for c in without)  # no usage chunk when none was asked for
    assert without[-1].choices[0].finish_reason == "stop"
    assert (without[-1].model_extra or {}).get("x_modelroute_cost", {}).get("estimated") is True
    client = anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0)
    with client.messages.stream(model=model, max_tokens=50, messages=USER) as stream:
        message = stream.get_final_message()
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert in_flight(gw.url) == 0


def test_a_client_gone_while_its_upstream_stream_stalls_is_released_at_once(
    gw: Served, fake_server: FakeServer
) -> None:
    """The stall is 30 s and the provider's read timeout 5 s: only noticing the hang-up itself frees it sooner."""
    fake_server.script("alpha-mini", Fault.stall_stream(after=2, gap=30.0))  # the role chunk, one piece, silence
    body = json.dumps({"model": "alpha-mini", "max_tokens": 50, "messages": USER, "stream": True}).encode()
    head = (
        f"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    host, port = gw.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    try:
        sock.sendall(head.encode() + body)
        got = b""
        while b"content_block_delta" not in got:  # streaming: the first text is out
            chunk = sock.recv(65536)
            assert chunk, got
            got += chunk
    finally:
        sock.close()
    state = gw.engine.state
    wait_until(lambda: state.in_flight("alpha-mini") == 0, "the upstream stream to be closed", timeout=3)
    wait_until(lambda: in_flight(gw.url) == 0, "the request to end", timeout=3)
    wait_until(lambda: counted(gw.url, "messages").get(499) == 1, "the request to count as 499", timeout=3)


# ---- bodies and connections ---------------------------------------------------------------------------------------
def test_a_413_leaves_kept_alive_connections_usable_for_both_sdks(gw: Served) -> None:
    oa = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)
    client = anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0)
    huge: Any = [{"role": "user", "content": "x" * (2 << 20)}]
    for _ in range(3):  # the refused body is never read: the next request on the connection must not trip on it
        with pytest.raises(openai.APIStatusError) as big:
            oa.chat.completions.create(model="alpha-mini", messages=huge)
        assert big.value.status_code == 413 and big.value.code == "body_too_large"
        assert oa.chat.completions.create(model="alpha-mini", messages=USER).choices[0].message.content
        with pytest.raises(anthropic.APIStatusError) as too_large:
            client.messages.create(model="alpha-mini", max_tokens=5, messages=huge)
        assert too_large.value.status_code == 413
        assert too_large.value.body["error"]["type"] == "request_too_large"
        assert client.messages.create(model="alpha-mini", max_tokens=5, messages=USER).content

    def chunks() -> Iterator[bytes]:  # no content-length: the limit is found while reading
        for _ in range(40):
            yield b" " * 65536

    with httpx.Client(headers={"x-api-key": KEY}, timeout=10) as http:
        r = http.post(gw.url + "/v1/chat/completions", content=chunks())
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        assert http.post(gw.url + "/v1/chat/completions", json={"messages": USER}).status_code == 200
    assert 500 not in counted(gw.url, "chat") and in_flight(gw.url) == 0


# ---- the Messages API ------------------------------------------------------------------------------------------
def test_anthropic_edge_bodies_reach_an_anthropic_upstream_intact(gw: Served, fake_server: FakeServer) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0)
    fake_server.script("beta-coder", Reply(text='"a": 1}'))
    message = client.messages.create(
        model="beta-coder",
        max_tokens=20,
        system=[
            {"type": "text", "text": "Be brief."},
            {"type": "text", "text": "Long shared rules.", "cache_control": {"type": "ephemeral"}},
        ],
        messages=[
            {"role": "user", "content": "first"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "noted"},
                ],
            },
            {"role": "user", "content": [{"type": "text", "text": "JSON please"}]},
            {"role": "assistant", "content": "{"},  # a prefill: the answer continues it
        ],
    )
    assert message.content[0].type == "text" and message.content[0].text == '"a": 1}'
    sent = fake_server.last().body
    assert sent["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Long shared rules.", "cache_control": {"type": "ephemeral"}},
    ]
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user", "assistant"]
    assert "hm" not in json.dumps(sent) and "opaque" not in json.dumps(sent)  # reasoning records are not sent on
    assert sent["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "{"}]}  # the prefill


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"stream": "yes"}, "stream"),
        ({"max_tokens": 10**12}, "max_tokens"),
        ({"max_tokens": 5.0}, "max_tokens"),
        ({"system": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}, "system"),
        ({"system": {"type": "text", "text": "x"}}, "system"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        (
            {
                "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "tool", "name": "g"},
            },
            "tool_choice",
        ),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"metadata": {"user_id": 5}}, "user_id"),
        ({"top_p": "0.5"}, "top_p"),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
            "type",
        ),
        ({"messages": [{"role": "user", "content": None}]}, "content"),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": [1]}]},
                ]
            },
            "input",
        ),
        ({"thinking": {"type": "enabled", "budget_tokens": True}}, "budget_tokens"),
        ({"output_config": {"effort": "extreme"}}, "effort"),
    ],
    ids=lambda v: json.dumps(v)[:40] if isinstance(v, dict) else v,
)
def test_anthropic_client_mistakes_are_sdk_bad_requests_in_anthropic_shape(
    gw: Served, fields: dict[str, Any], needle: str
) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as refused:  # extra_body: sent as given, over the SDK's fields
        client.messages.create(model="auto", max_tokens=5, messages=USER, extra_body=fields)
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error", body
    assert body["error"]["type"] == "invalid_request_error" and needle in body["error"]["message"], body
    assert counted(gw.url, "messages") == {400: 1.0}


# ---- fan-out and upstream failures -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_n_choices_with_stop_lists_and_logit_bias_from_every_kind(
    gw: Served, fake_server: FakeServer, kind: str
) -> None:
    oa = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)
    answer = oa.chat.completions.create(
        model=BY_KIND[kind],
        messages=USER,
        n=3,
        stop=["END", "STOP", "\n\n", "###"],
        logit_bias={"50256": -100},
        max_tokens=8,
    )
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert all(c.message.role == "assistant" and c.finish_reason for c in answer.choices)
    assert answer.usage is not None and answer.usage.prompt_tokens > 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fault", ["401", "403"])
def test_an_upstream_auth_failure_never_reaches_a_client_as_its_own_auth_error(
    fake_server: FakeServer, fault: str, stream: bool
) -> None:
    """The gateway's own key was fine: an upstream 401/403 is the gateway's configuration, a 5xx to the client, and
    neither SDK may raise its AuthenticationError / PermissionDeniedError."""
    policy = "set retry.attempts = 0\nset overrides = true\notherwise use alpha-mini\n"
    for gateway in serving(fake_server, policy):
        behaviour = (lambda: Fault.auth()) if fault == "401" else (lambda: Fault.status(403, message="forbidden"))
        oa = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)
        client = anthropic.Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0)
        for model in BY_KIND.values():
            fake_server.script(model, behaviour())
            with pytest.raises(openai.InternalServerError) as oa_err:
                answer = oa.chat.completions.create(model=model, messages=USER, stream=stream)
                list(answer) if stream else None
            assert oa_err.value.status_code == 502
            fake_server.script(model, behaviour())
            with pytest.raises(anthropic.InternalServerError) as an_err:
                if stream:
                    with client.messages.stream(model=model, max_tokens=5, messages=USER) as events:
                        events.get_final_message()
                else:
                    client.messages.create(model=model, max_tokens=5, messages=USER)
            assert an_err.value.status_code == 502
            assert an_err.value.body["type"] == "error"
            assert an_err.value.body["error"]["type"] == "api_error"
        assert in_flight(gateway.url) == 0


def test_a_messages_stream_of_text_and_two_tool_calls_numbers_its_blocks_in_order(
    gw: Served, fake_server: FakeServer
) -> None:
    """A raw Messages stream with text then two tool calls: block indexes go 0, 1, 2 in order, every started block
    is stopped once, and message_stop is last (what the SDK's accumulator relies on)."""
    fake_server.script("alpha-mini", Reply(text="looking", tool_calls=[Call("f", {"a": 1}), Call("g", {})]))
    body = {
        "model": "alpha-mini",
        "max_tokens": 50,
        "stream": True,
        "messages": USER,
        "tools": [{"name": "f", "input_schema": {"type": "object"}}, {"name": "g", "input_schema": {"type": "object"}}],
    }
    r = gw.post("/v1/messages", body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    frames = sse_frames(r.text)
    assert all(event == data["type"] for event, data in frames)
    starts = [d["index"] for e, d in frames if e == "content_block_start"]
    stops = [d["index"] for e, d in frames if e == "content_block_stop"]
    assert starts == [0, 1, 2] and sorted(stops) == [0, 1, 2]
    assert [e for e, _ in frames][-2:] == ["message_delta", "message_stop"]
    assert frames[-2][1]["delta"]["stop_reason"] == "tool_use"
