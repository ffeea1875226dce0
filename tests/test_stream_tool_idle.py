"""Tests for a stream's idle timeout over tool calls (providers/execution/deadlines.py with the OpenAI and
Anthropic stream parsers): a tool call whose argument pieces arrive at a steady pace in, the whole call out even
when it takes far longer than `stream.idle_timeout` (each piece is output: docs/execution.md), while a stream
that stalls mid-call is still cut at the idle timeout and one that never ends is still cut at the deadline.

The upstream is the real loopback fake server, sending the pieces of one tool call `GAP` seconds apart (about 3 s
in all against an idle bound of 1.5 s). Timings are asserted with wide margins only: a cut stream must end far
sooner than its stalled or endless upstream would, and never before its bound.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from providers.clients.reply import STREAM_PROGRESS
from providers.execution.resilience import RoutingError, StreamInterrupted
from tests.engines import Engines, called, idle, outcomes, settled
from tests.fakeserver import Behaviour, Ctx, FakeServer, Handler

GAP = 0.4  # seconds between two SSE events of a paced tool call
PIECES = 8  # argument pieces: with the call's start and end, ~3.6 s of tool call
IDLE = "set stream.idle_timeout = 1.5s"
FAST_ENOUGH = 20.0  # a cut stream ends well before this; its stalled upstream would take 60 s and more
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
ARGS = {"query": "the weather in " + "x" * 60, "days": 3}
FORMATS = ["alpha-mini", "beta-coder"]  # openai, anthropic (gamma-flash, Gemini, sends a call whole in one chunk)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make(fake_server: FakeServer) -> Iterator[Engines]:
    engines = Engines(fake_server, provider_timeouts=False)
    yield engines
    engines.close()


def policy(*settings: str, rule: str = "otherwise use alpha-mini") -> str:
    return "\n".join(["set retry.attempts = 0", "set retry.backoff = 10ms", *settings, rule]) + "\n"


def _sse(ctx: Ctx, obj: dict[str, Any]) -> bytes:
    event = f"event: {obj['type']}\n" if ctx.kind == "anthropic" else ""
    return f"{event}data: {json.dumps(obj)}\n\n".encode()


def _events(ctx: Ctx, text: str, pieces: list[str]) -> list[bytes]:
    """One answer's SSE events: `text` (if any) as one delta, then one tool call whose arguments are `pieces`."""
    if ctx.kind == "openai":

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return _sse(ctx, {"type": "chunk", "model": ctx.model, "choices": [choice]})

        head = [chunk({"role": "assistant", "content": text})]
        start = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": ""}}
        call = [chunk({"tool_calls": [start]})]
        call += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces]
        usage = {"type": "chunk", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 40}}
        return [*head, *call, chunk({}, "tool_calls"), _sse(ctx, usage), b"data: [DONE]\n\n"]
    assert ctx.kind == "anthropic"
    message = {"id": "msg_1", "model": ctx.model, "usage": {"input_tokens": 10, "output_tokens": 1}}
    head = [_sse(ctx, {"type": "message_start", "message": message})]
    index = 0
    if text:
        head += [
            _sse(ctx, {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            _sse(ctx, {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
            _sse(ctx, {"type": "content_block_stop", "index": 0}),
        ]
        index = 1
    block = {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}
    call = [_sse(ctx, {"type": "content_block_start", "index": index, "content_block": block})]
    call += [
        _sse(
            ctx,
            {"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": p}},
        )
        for p in pieces
    ]
    call.append(_sse(ctx, {"type": "content_block_stop", "index": index}))
    end = {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 40}}
    return [*head, *call, _sse(ctx, end), _sse(ctx, {"type": "message_stop"})]


def _split(args: str, n: int) -> list[str]:
    size = -(-len(args) // n)
    return [args[i : i + size] for i in range(0, len(args), size)]


@dataclass
class PacedToolCall(Behaviour):
    """A stream (OpenAI or Anthropic) whose head (and `text`) comes at once, then one tool call's events `gap`
    seconds apart; after `stall_after` of the call's events (None: never) nothing more for `stall` seconds."""

    text: str = ""
    pieces: list[str] | None = None
    gap: float = GAP
    stall_after: int | None = None
    stall: float = 60.0

    def run(self, h: Handler, ctx: Ctx) -> None:
        assert ctx.stream and ctx.kind in ("openai", "anthropic")
        pieces = self.pieces if self.pieces is not None else _split(json.dumps(ARGS), PIECES)
        events = _events(ctx, self.text, pieces)
        head = 2 if ctx.kind == "anthropic" else 1  # message_start / the role chunk (and the text, if any)
        head += 3 if ctx.kind == "anthropic" and self.text else 0
        h.start_stream()
        for event in events[:head]:
            h.write_chunk(event)
        for n, event in enumerate(events[head:]):
            if h.server.stopping.wait(self.stall if n == self.stall_after else self.gap):
                h.close_connection = True
                return
            h.write_chunk(event)
        h.end_stream()


# ---- a tool call streamed steadily for longer than the idle timeout is whole --------------------------------------
@pytest.mark.parametrize("model", FORMATS)
@pytest.mark.parametrize("text", ["Let me look that up.", ""])
def test_a_tool_call_streamed_in_steady_pieces_outlasting_the_idle_timeout_arrives_whole(
    make, fake_server: FakeServer, model: str, text: str
) -> None:
    # without text the pieces are the first output too: a 1 s first-token bound does not cut the 3 s call
    engine = make(policy(IDLE, "set stream.first_token_timeout = 1s", rule=f"otherwise use {model}"))
    fake_server.always(model, PacedToolCall(text=text))
    t0 = time.monotonic()
    events = list(engine.stream("weather?", tools=[TOOL]))
    elapsed = time.monotonic() - t0
    assert elapsed >= 1.5 * 2  # the call took well over the idle bound: nothing was cut short by luck
    kinds = [e.kind for e in events]
    assert kinds == (["delta"] if text else []) + ["tool_call", "usage", "done"]  # no other events for consumers
    calls = [e.tool_call for e in events if e.tool_call is not None]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("lookup", ARGS)]
    done = events[-1].response
    assert done is not None and done.finish_reason == "tool_calls" and done.text == text
    assert called(fake_server) == [model] and idle(engine)


@pytest.mark.anyio
@pytest.mark.parametrize("model", FORMATS)
async def test_astream_counts_tool_call_pieces_too(make, fake_server: FakeServer, model: str) -> None:
    engine = make(policy(IDLE, rule=f"otherwise use {model}"))
    fake_server.always(model, PacedToolCall(text="one moment"))
    stream = engine.astream("weather?", tools=[TOOL])
    events = [e async for e in stream]
    assert [e.kind for e in events] == ["delta", "tool_call", "usage", "done"]
    assert json.loads(events[1].tool_call.arguments) == ARGS and outcomes(stream) == [(model, "ok")]
    assert STREAM_PROGRESS.get() is None  # the progress hook is the wait's own: nothing leaks to the caller
    assert idle(engine)
    await engine.aclose()


# ---- a stream that stalls mid tool call is still cut --------------------------------------------------------------
@pytest.mark.parametrize("model", FORMATS)
def test_a_stream_stalling_mid_tool_call_after_text_is_interrupted_at_the_idle_timeout(
    make, fake_server: FakeServer, model: str
) -> None:
    engine = make(policy(IDLE, "budget daily $100", rule=f"otherwise use {model} fallback gamma-flash"))
    fake_server.always(model, PacedToolCall(text="Let me look.", stall_after=3))  # start, two pieces, then nothing
    texts = []
    t0 = time.monotonic()
    stream = engine.stream("weather?", tools=[TOOL])
    with pytest.raises(StreamInterrupted) as info:
        for event in stream:
            assert event.kind == "delta"  # the unfinished call is never emitted
            texts.append(event.text)
    elapsed = time.monotonic() - t0
    assert 1.5 <= elapsed < FAST_ENOUGH and texts == ["Let me look."]
    assert "no next chunk within 1.5s" in str(info.value)
    assert called(fake_server) == [model]  # no retry and no fallback after the first token
    assert outcomes(stream) == [(model, "Timeout")]
    assert idle(engine) and settled(engine) == (0.0, 0.0)


@pytest.mark.parametrize("model", FORMATS)
def test_a_tool_only_stream_stalling_mid_call_is_cut_and_the_next_model_answers(
    make, fake_server: FakeServer, model: str
) -> None:
    engine = make(
        policy(IDLE, "set stream.first_token_timeout = 10s", rule=f"otherwise use {model} fallback gamma-flash")
    )
    fake_server.always(model, PacedToolCall(stall_after=2))  # the call's start and one piece, then nothing
    t0 = time.monotonic()
    stream = engine.stream("weather?", tools=[TOOL])
    assert stream.text() == "ok"  # nothing of the cut call reached the caller: the fallback answers
    elapsed = time.monotonic() - t0
    assert 1.5 <= elapsed < 10.0  # cut at the idle bound after the pieces, not the 10 s first-token bound
    assert outcomes(stream) == [(model, "Timeout"), ("gamma-flash", "ok")]
    assert stream.attempts[0].message == "no next chunk within 1.5s" and idle(engine)


# ---- pieces that never end are still cut at the deadline -----------------------------------------------------------
@pytest.mark.parametrize("model", FORMATS)
def test_tool_call_pieces_trickling_forever_are_cut_at_the_deadline(make, fake_server: FakeServer, model: str) -> None:
    engine = make(policy(IDLE, "set deadline = 2s", rule=f"otherwise use {model}"))
    fake_server.always(model, PacedToolCall(pieces=["x"] * 1000, gap=0.2))  # 200 s of pieces, none late
    t0 = time.monotonic()
    with pytest.raises(RoutingError) as info:
        list(engine.stream("weather?", tools=[TOOL]))
    elapsed = time.monotonic() - t0
    assert 1.5 <= elapsed < FAST_ENOUGH and info.value.deadline_passed
    assert outcomes(info.value) == [(model, "Timeout")]
    assert "before the request's deadline of 2s passed" in info.value.attempts[0].message
    assert idle(engine)
