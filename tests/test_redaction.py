"""Tests for error hygiene (providers/errors.py redaction, providers/gateway/run.py and streamed.py messages): a
canary API key that a loopback upstream echoes back in its error messages (whole, its last 12 characters,
reversed, upper-cased, reversed and upper-cased, a middle piece), with every kind of failure (a 4xx the request
caused, context too long, 401, 403, 5xx, an interrupted stream) in; client-facing errors that carry the upstream's
own text only for the request's own 4xx (redacted, at most 500 characters), and responses and logs without any
8-character piece of the key, out."""

from __future__ import annotations

import json
import logging
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from providers.errors import MIN_PIECE, REDACTED, RedactingFilter, classify_http, redact, register_secret
from tests.engines import KINDS, engine_for
from tests.fakeserver import Behaviour, FakeServer, Reply

MARKER = "UPSTREAM-OWN-WORDS"


def new_canary() -> str:
    """A key unique to the test: registration is process-wide, and no other test's key shares a piece with it."""
    return "zq-" + secrets.token_hex(22)


def echoes(key: str) -> str:
    """The key in every form a careless upstream might quote it."""
    return (
        f"key {key}; tail {key[-12:]}; reversed {key[::-1]}; upper {key.upper()}; "
        f"reversed upper {key[::-1].upper()}; middle {key[10:19]}; split {key[:20]} {key[20:]}"
    )


def leaks(text: str, key: str) -> list[str]:
    """Every piece of MIN_PIECE characters of `key` (or of it reversed), in any case, found in `text`."""
    low = text.lower()
    found = []
    for form in (key.lower(), key[::-1].lower()):
        found += [form[i : i + MIN_PIECE] for i in range(len(form) - MIN_PIECE + 1) if form[i : i + MIN_PIECE] in low]
    return found


# ---- redact() -------------------------------------------------------------------------------------------------
def test_redact_removes_every_piece_of_eight_or_more_in_any_case_and_reversed() -> None:
    key = new_canary()
    text = echoes(key)
    out = redact(text, key)
    assert not leaks(out, key), leaks(out, key)
    assert out.startswith("key ***; tail ***; reversed ***; upper ***") and "middle ***" in out
    assert "split *** ***" in out  # both halves are long enough to be pieces
    short = key[3:10]  # 7 characters: not a piece
    assert redact(f"x {short} y", key) == f"x {short} y"
    assert redact("nothing to see", key) == "nothing to see"
    assert redact(f"{key}{key}", key) == REDACTED  # overlapping pieces merge into one mark


def test_registered_keys_are_redacted_without_being_passed() -> None:
    key = new_canary()
    assert redact(key) == key
    register_secret(key)
    assert redact(f"a {key.upper()} b {key[::-1][5:30]} c") == "a *** b *** c"
    short = "Ω" + secrets.token_hex(2)  # shorter than a piece: removed whole, in any case
    register_secret(short)
    assert redact(f"x {short.upper()} y") == "x *** y"


def test_redact_keeps_positions_when_lower_casing_changes_length() -> None:
    key = new_canary()
    text = "İİİ " + key.upper() + " İ end"
    assert redact(text, key) == "İİİ *** İ end"


def test_provider_error_text_is_cut_and_redacted_at_classification() -> None:
    key = new_canary()
    body = json.dumps({"error": {"message": echoes(key) + " " + "z" * 10_000, "type": "invalid_request_error"}})
    error = classify_http("openai", 400, {}, body, provider="p", model="m", secret=key)
    assert not leaks(error.message, key) and len(error.message) <= 2003 and error.message.endswith("...")


def test_the_logging_filter_redacts_messages_arguments_and_tracebacks() -> None:
    key = new_canary()
    register_secret(key)
    try:
        raise ValueError(f"boom {key[::-1].upper()}")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "said %s and %r", (key, key[-12:]), exc_info)
    assert RedactingFilter().filter(record)
    formatted = logging.Formatter().format(record)
    assert not leaks(formatted, key) and "said *** and '***'" in formatted and "ValueError: boom ***" in formatted


# ---- through the gateway ---------------------------------------------------------------------------------------
def error_body(kind: str, status: int, message: str, code: str | None = None) -> dict[str, Any]:
    if kind == "anthropic":
        types = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error"}
        return {"type": "error", "error": {"type": code or types.get(status, "api_error"), "message": message}}
    if kind == "gemini":
        names = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}
        return {"error": {"code": status, "message": message, "status": names.get(status, "INTERNAL")}}
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


class Echo(Behaviour):
    """An error answer of `status` whose message quotes the API key the request carried, in every form, plus
    MARKER and `pad` filler characters; with `stream_after`, a stream of that many text deltas, then the same
    message as an in-stream error event."""

    def __init__(self, status: int, *, code: str | None = None, pad: int = 0, stream_after: int | None = None):
        self.status, self.code, self.pad, self.stream_after = status, code, pad, stream_after

    def run(self, h: Any, ctx: Any) -> None:
        message = f"{MARKER}: {echoes(ctx.api_key or '')}" + " filler" * self.pad
        if self.stream_after is None:
            h.send_json(self.status, error_body(ctx.kind, self.status, message, self.code))
            return
        h.start_stream()
        for i in range(self.stream_after):
            chunk = {"id": "c", "object": "chat.completion.chunk", "model": ctx.model, "choices": []}
            chunk["choices"] = [{"index": 0, "delta": {"content": f"part{i} "}, "finish_reason": None}]
            h.write_chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        h.write_chunk(
            b"data: " + json.dumps({"error": {"message": message, "type": "server_error"}}).encode() + b"\n\n"
        )
        h.end_stream()


POLICY = "set retry.attempts = 0\notherwise use alpha-mini\n"


@pytest.fixture
def gateway(fake_server: FakeServer) -> Iterator[Any]:
    pytest.importorskip("uvicorn")
    pytest.importorskip("openai")
    import httpx

    from providers.gateway.app import create_app
    from tests.test_gateway import ThreadServer

    canary = new_canary()
    engine = engine_for(fake_server, POLICY, api_keys={name: canary for name in KINDS})
    server = ThreadServer(create_app(engine)).__enter__()

    class Handle:
        key = canary

        def post(self, body: dict[str, Any]) -> httpx.Response:
            return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)

    try:
        yield Handle()
    finally:
        server.__exit__()


CHAT = {"model": "auto", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.mark.parametrize(
    ("behaviour", "status", "code", "upstream_words"),
    [
        (Echo(400, pad=400), 400, "upstream_rejected_request", True),
        (Echo(400, code="context_length_exceeded"), 400, "upstream_rejected_request", True),
        (Echo(401), 502, "upstream_failed", False),
        (Echo(403), 502, "upstream_failed", False),
        (Echo(500), 502, "upstream_failed", False),
        (Echo(503), 502, "upstream_failed", False),
        (Echo(429), 502, "upstream_failed", False),
    ],
    ids=["400", "context", "401", "403", "500", "503", "429"],
)
def test_client_errors_carry_upstream_text_only_for_the_requests_own_4xx(
    gateway: Any,
    fake_server: FakeServer,
    caplog: pytest.LogCaptureFixture,
    behaviour: Echo,
    status: int,
    code: str,
    upstream_words: bool,
) -> None:
    fake_server.always("alpha-mini", behaviour)
    with caplog.at_level(logging.DEBUG):
        r = gateway.post(CHAT)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code
    message = err["message"]
    assert not leaks(r.text, gateway.key), leaks(r.text, gateway.key)
    assert not leaks(json.dumps(dict(r.headers)), gateway.key)
    assert not leaks(caplog.text, gateway.key), leaks(caplog.text, gateway.key)
    if upstream_words:
        assert MARKER in message and REDACTED in message
        upstream = message.split("(", 1)[1].rsplit(")", 1)[0]
        assert len(upstream) <= 500, len(upstream)
    else:
        assert MARKER not in message and REDACTED not in message
    if behaviour.status in (401, 403):
        assert "the provider refused the gateway's credentials" in message


def test_a_stream_interrupted_after_its_first_token_says_nothing_of_the_upstream(
    gateway: Any, fake_server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    fake_server.always("alpha-mini", Echo(500, stream_after=2))
    with caplog.at_level(logging.DEBUG):
        r = gateway.post({**CHAT, "stream": True})
    assert r.status_code == 200
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert "[DONE]" not in events
    last = json.loads(events[-1])["error"]
    assert last["code"] == "stream_interrupted" and "ServerError" in last["message"]
    assert MARKER not in r.text and not leaks(r.text, gateway.key)
    assert not leaks(caplog.text, gateway.key), leaks(caplog.text, gateway.key)


def test_a_successful_answer_is_not_touched(gateway: Any, fake_server: FakeServer) -> None:
    fake_server.default = Reply(text="plain answer")
    r = gateway.post(CHAT)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "plain answer"


# ---- `modelroute serve`: every key the catalog names, even of a provider never called --------------------------
def test_serve_redacts_the_keys_of_every_configured_provider(tmp_path: Path, fake_server: FakeServer) -> None:
    pytest.importorskip("uvicorn")
    from tests.test_gateway import write_policy
    from tests.test_serve_limits import Gateway

    keys = {name: new_canary() for name in KINDS}
    other = keys["betacorp"]  # never called: alpha-mini is acme's

    class EchoOther(Behaviour):
        def run(self, h: Any, ctx: Any) -> None:
            h.send_json(400, error_body(ctx.kind, 400, f"{MARKER}: {echoes(other)}"))

    fake_server.always("alpha-mini", EchoOther())
    env = {f"TEST_{name.upper()}_KEY": key for name, key in keys.items()}
    gw = Gateway(write_policy(tmp_path, fake_server, POLICY), env=env)
    try:
        r = gw.chat()
    finally:
        err = gw.stop()
    assert r.status_code == 400 and MARKER in r.text, r.text
    assert not leaks(r.text, other) and not leaks(err, other)
