"""Review 28: attacks on budget accounting and execution (providers/execution/, providers/clients/), against the real
loopback fake provider (tests/fakeserver.py): upstreams that report absurd usage, callers that shrink the hold
through `extra`, streams closed before their end, cache hits, cut streams, retries after timeouts and deadlines
over trickling upstreams. Each attack checks the budget's guarantee (spend within the limit plus one request; the
hold released exactly once) and that nothing stays in flight or held."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from engine import Engine
from providers.execution.budget import BudgetExceeded
from providers.execution.resilience import RoutingError, StreamInterrupted
from tests.engines import Engines, idle, settled
from tests.fakeserver import Billing, Call, FakeServer, Fault, Reply
from tests.waiting import wait_until

WALL = 1_750_000_000.0  # 2025-06-15, fixed so the day's budget key never rolls over mid-test
FORMATS = {"alpha-mini": "openai", "beta-chat": "anthropic", "gamma-flash": "gemini"}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make(fake_server: FakeServer) -> Iterator[Callable[..., Engine]]:
    """`make(policy, **kw)`: engine_for() on the test's server at the fixed WALL time, without provider timeouts
    (so a policy's or the call's timeout applies); every engine made is closed after the test."""
    engines = Engines(fake_server, provider_timeouts=False)

    def build(policy: str, **kw: Any) -> Engine:
        return engines(policy, wall=lambda: WALL, **kw)

    yield build
    engines.close()


def budgeted(limit: float, rule: str = "otherwise use alpha-mini", *settings: str) -> str:
    lines = ["set retry.attempts = 0", "set retry.backoff = 10ms", *settings, f"budget daily ${limit:.6f}", rule]
    return "\n".join(lines) + "\n"


def price(engine: Engine, model: str, input_tokens: int, output_tokens: int) -> float:
    entry = engine.policy.models[model]
    return input_tokens * entry.ip + output_tokens * entry.op


def billed(engine: Engine, server: FakeServer) -> list[float]:
    """What the upstream billed each answered request, in USD at the catalog's prices."""
    by_id = {e.spec.id: name for name, e in engine.policy.models.items()}
    return [price(engine, by_id[b.model], b.input_tokens, b.output_tokens) for b in server.bills]


def raw_answer(kind: str, model: str, usage: dict[str, Any], text: str = "") -> bytes:
    """A provider-shaped JSON answer of `kind` with exactly this `usage` object and `text` (possibly empty)."""
    if kind == "openai":
        body: dict[str, Any] = {
            "id": "chatcmpl-x",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage,
        }
    elif kind == "anthropic":
        body = {
            "id": "msg_x",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}] if text else [],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
    else:
        parts = [{"text": text}] if text else []
        body = {
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": usage,
        }
    return json.dumps(body).encode()


NEGATIVE_OUTPUT = {
    "openai": {"prompt_tokens": 10, "completion_tokens": -(10**9)},
    "anthropic": {"input_tokens": 10, "output_tokens": -(10**9)},
    "gemini": {"promptTokenCount": 10, "candidatesTokenCount": 1, "thoughtsTokenCount": -(10**9)},
}


# ---- upstreams that report absurd usage -----------------------------------------------------------------------
@pytest.mark.parametrize("model", list(FORMATS))
def test_negative_usage_on_an_empty_answer_never_credits_the_budget(
    make: Callable[..., Engine], fake_server: FakeServer, model: str
) -> None:
    engine = make(budgeted(0.01, f"otherwise use {model}"))
    fake_server.script(model, [Fault.raw(200, raw_answer(FORMATS[model], model, NEGATIVE_OUTPUT[FORMATS[model]]))])
    c = engine.complete("hi")
    spent, reserved = settled(engine)
    assert reserved == pytest.approx(0.0, abs=1e-12) and idle(engine)
    # the upstream billed at least the 10 input tokens it reported: the spend can never go below 0
    assert c.cost is not None and c.cost >= 0, c.cost
    assert spent >= 0, f"the budget was credited ${-spent:,.2f} by an upstream's usage report"


@pytest.mark.parametrize(
    "usage",
    [
        b'{"prompt_tokens": NaN, "completion_tokens": NaN}',
        b'{"prompt_tokens": Infinity, "completion_tokens": 5}',
        b'{"prompt_tokens": "ten", "completion_tokens": 5}',
        b'{"prompt_tokens": 10.5, "completion_tokens": 5}',
        b'{"prompt_tokens": [10], "completion_tokens": {"n": 5}}',
        b'{"prompt_tokens": -10, "completion_tokens": -5}',
        b'"lots"',
    ],
    ids=["nan", "infinity", "string", "fraction", "containers", "negative-with-text", "usage-a-string"],
)
def test_garbage_usage_never_leaves_a_non_finite_or_negative_spend(
    make: Callable[..., Engine], fake_server: FakeServer, usage: bytes
) -> None:
    engine = make(budgeted(0.01, "otherwise use alpha-mini fallback beta-chat"))
    body = raw_answer("openai", "alpha-mini", {}, text="a short answer").replace(b'"usage": {}', b'"usage": ' + usage)
    fake_server.always("alpha-mini", Fault.raw(200, body))
    fake_server.default = Reply(text="ok", input_tokens=10, output_tokens=5)
    try:
        c = engine.complete("hi")
    except RoutingError:
        c = None
    spent, reserved = settled(engine)
    assert math.isfinite(spent) and spent >= 0, spent
    assert reserved == pytest.approx(0.0, abs=1e-12) and idle(engine)
    if c is not None:
        assert c.cost is not None and math.isfinite(c.cost) and c.cost >= 0
        assert spent == pytest.approx(c.cost)
    # the store still refuses what does not fit: a NaN spend would make every comparison false
    with pytest.raises(BudgetExceeded):
        engine.complete("hi", max_tokens=10**7)


def test_usage_too_large_for_a_float_is_a_malformed_answer_and_falls_back(
    make: Callable[..., Engine], fake_server: FakeServer
) -> None:
    engine = make(budgeted(0.01, "otherwise use alpha-mini fallback beta-chat"))
    huge = raw_answer("openai", "alpha-mini", {"prompt_tokens": 7, "completion_tokens": 5}, text="hi")
    huge = huge.replace(b'"prompt_tokens": 7', b'"prompt_tokens": 1' + b"0" * 400)
    fake_server.always("alpha-mini", Fault.raw(200, huge))
    fake_server.default = Reply(text="from the fallback")
    try:
        c = engine.complete("hi")
    finally:
        assert settled(engine)[1] == pytest.approx(0.0, abs=1e-12) and idle(engine)
    assert c.model == "beta-chat" and c.text == "from the fallback"
    assert c.attempts[0].error == "MalformedResponse"


# ---- callers that shrink the hold ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra",
    [{"max_tokens": 1}, {"max_output_tokens": 1}, {"generationConfig": {"maxOutputTokens": 1}}],
    ids=["max_tokens", "max_output_tokens", "generationConfig"],
)
def test_an_extra_output_key_cannot_shrink_the_hold_below_the_bound_on_the_wire(
    make: Callable[..., Engine], fake_server: FakeServer, extra: dict[str, Any]
) -> None:
    fake_server.billing = Billing()  # bills max_completion_tokens (else max_tokens), as OpenAI-compatible servers do
    fake_server.default = Reply(output_tokens=1000, delay=0.2)
    probe = make(budgeted(1e6, "otherwise use alpha-mini", "set budget.max_output_tokens = 1000"))
    honest = probe.executor.prepare("hi", None, None, {}, {})
    one = honest.max_cost
    probe.executor.settle(honest)
    assert one is not None and one > 0
    limit = 2.5 * one  # room for two honest requests
    engine = make(budgeted(limit, "otherwise use alpha-mini", "set budget.max_output_tokens = 1000"))
    ex = engine.executor
    runs = []
    for _ in range(6):  # every hold is reserved before any call is made: only the holds decide who gets in
        try:
            runs.append(ex.prepare("hi", None, None, {"extra": extra}, {}))
        except BudgetExceeded:
            pass

    async def go() -> list[Any]:
        return await asyncio.gather(*(ex.run(run) for run in runs))

    answered = ex.run_sync(go())
    costs = billed(engine, fake_server)
    assert settled(engine)[1] == pytest.approx(0.0, abs=1e-12) and idle(engine)
    assert all(c.cost <= (run.max_cost or 0.0) + 1e-12 for c, run in zip(answered, runs, strict=True)), [
        (c.cost, run.max_cost) for c, run in zip(answered, runs, strict=True)
    ]
    assert sum(costs) <= limit + max(costs) + 1e-12, (sum(costs), limit)


# ---- streams the client closes before their end ---------------------------------------------------------------
def test_streams_closed_after_their_text_still_count_against_the_budget(
    make: Callable[..., Engine], fake_server: FakeServer
) -> None:
    fake_server.billing = Billing()
    fake_server.default = Reply(output_tokens=200, chunks=5)
    prompt = "please write something long " * 20
    probe = make(budgeted(1e6, "otherwise use alpha-mini", "set budget.max_output_tokens = 200"))
    full = probe.complete(prompt).cost
    assert full is not None and full > 0
    limit = 2.5 * full
    engine = make(budgeted(limit, "otherwise use alpha-mini", "set budget.max_output_tokens = 200"))
    served = 0
    for _ in range(8):
        try:
            stream = engine.stream(prompt)
        except BudgetExceeded:
            break
        deltas = 0
        for event in stream:
            deltas += event.kind == "delta"
            if deltas == 4:  # most of the answer read; the last delta, the usage and `done` never are
                break
        stream.close()
        served += 1
        assert settled(engine)[1] == pytest.approx(0.0, abs=1e-12) and idle(engine)
    costs = billed(engine, fake_server)[1:]  # the probe's request was the first
    assert len(costs) == served
    assert sum(costs) <= limit + max(costs) + 1e-12, f"{served} early-closed streams billed ${sum(costs):.6f}"


@pytest.mark.anyio
async def test_a_cut_stream_neither_fails_over_nor_keeps_a_hold(
    make: Callable[..., Engine], fake_server: FakeServer
) -> None:
    engine = make(budgeted(0.01, "otherwise use alpha-mini fallback beta-chat"))
    fake_server.always("alpha-mini", Fault.cut_stream(after=3))
    text = []
    with pytest.raises(StreamInterrupted):
        async for event in engine.astream("hi"):
            text.append(event.text or "")
    assert "".join(text)  # partial output was delivered before the cut
    assert {r.model for r in fake_server.requests} == {"alpha-mini"}  # no second model repeats the text
    assert settled(engine) == (0.0, 0.0) and idle(engine)
    await engine.aclose()


# ---- cache hits cost nothing and hold nothing ------------------------------------------------------------------
def test_cache_hits_cost_nothing_hold_nothing_and_an_exhausted_budget_still_refuses(
    make: Callable[..., Engine], fake_server: FakeServer
) -> None:
    fake_server.default = Reply(text="cached answer", input_tokens=10, output_tokens=100)
    engine = make(budgeted(0.001, "otherwise use alpha-mini", "set cache.ttl = 1h"))
    first = engine.complete("same question", temperature=0, max_tokens=100)
    after_first = settled(engine)
    assert first.cost and after_first == (pytest.approx(first.cost), 0.0)
    for _ in range(5):
        hit = engine.complete("same question", temperature=0, max_tokens=100)
        assert hit.text == "cached answer" and hit.cost == 0 and hit.attempts == []
        stream = engine.stream("same question", temperature=0, max_tokens=100)
        assert stream.text() == "cached answer"
        half = engine.stream("same question", temperature=0, max_tokens=100)
        next(iter(half))
        half.close()
        assert settled(engine) == after_first and idle(engine)
    assert len(fake_server.requests) == 1
    # spend the rest of the budget: a cached answer is then refused like any other request (docs/cache.md)
    while True:
        try:
            engine.complete("filler", max_tokens=100)
        except BudgetExceeded:
            break
    spent_before = settled(engine)
    with pytest.raises(BudgetExceeded):
        engine.complete("same question", temperature=0, max_tokens=100)
    assert settled(engine) == spent_before and idle(engine)


# ---- retries, timeouts and deadlines ---------------------------------------------------------------------------
def test_a_retry_after_a_timeout_releases_the_hold_once_and_settles_only_the_answer(
    make: Callable[..., Engine], fake_server: FakeServer
) -> None:
    policy = budgeted(0.01, "otherwise use alpha-mini").replace("retry.attempts = 0", "retry.attempts = 1")
    engine = make(policy)
    # the first try's answer comes after the attempt's bound (the upstream finished it: documented as unseen)
    fake_server.script("alpha-mini", [Reply(text="late", delay=1.5), Reply(text="on time")])
    c = engine.complete("hi", timeout=0.5)
    assert c.text == "on time" and [a.outcome for a in c.attempts] == ["error", "ok"]
    spent, reserved = settled(engine)
    assert reserved == pytest.approx(0.0, abs=1e-12) and spent == pytest.approx(c.cost) and idle(engine)


def test_a_deadline_over_trickling_upstreams_ends_every_retry_and_fallback_and_frees_the_hold(
    make: Callable[..., Engine], fake_server: FakeServer
) -> None:
    policy = budgeted(0.01, "otherwise use alpha-mini fallback beta-chat, gamma-flash", "set deadline = 1s")
    engine = make(policy.replace("retry.attempts = 0", "retry.attempts = 2"))
    for model in FORMATS:
        fake_server.always(model, Fault.trickle(0.05))
    started = time.monotonic()
    with pytest.raises(RoutingError) as err:
        engine.complete("hi", timeout=30)
    assert time.monotonic() - started < 8.0  # a 1 s deadline, with ample slack; trickled answers take minutes
    assert err.value.deadline_passed
    assert settled(engine) == (0.0, 0.0) and idle(engine)
    stream_started = time.monotonic()
    with pytest.raises((RoutingError, StreamInterrupted)):
        for _ in engine.stream("hi", timeout=30):
            pass
    assert time.monotonic() - stream_started < 8.0
    assert settled(engine) == (0.0, 0.0) and idle(engine)


def test_a_tool_call_streamed_in_steady_pieces_is_not_cut_by_the_idle_timeout(
    make: Callable[..., Engine], fake_server: FakeServer
) -> None:
    # every SSE event comes 0.4 s after the last (well within the 1.5 s idle bound); the tool call's pieces
    # (its start, two argument halves and the finish) take 1.6 s after the text delta
    fake_server.default = Reply(text="ok", chunks=1, tool_calls=[Call("lookup", {"q": "x" * 40})], chunk_delay=0.4)
    engine = make(
        "set retry.attempts = 0\nset stream.idle_timeout = 1.5s\nset stream.first_token_timeout = 10s\n"
        "otherwise use alpha-mini\n"
    )
    kinds = [event.kind for event in engine.stream("look it up", tools=[TOOL])]
    assert "tool_call" in kinds and kinds[-1] == "done"
    assert idle(engine)


def test_a_gateway_client_hanging_up_mid_stream_still_pays_against_its_keys_daily_budget(
    make: Callable[..., Engine], fake_server: FakeServer
) -> None:
    pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
    import httpx

    from providers.gateway.app import Gateway
    from providers.gateway.keys import GatewayKey, KeyRing, hash_key
    from providers.gateway.run import key_budget_key
    from tests.test_gateway import ThreadServer

    fake_server.billing = Billing()
    fake_server.default = Reply(
        output_tokens=200, chunks=5, chunk_delay=0.1
    )  # a real pace: the hang-up lands mid-stream
    engine = make("set retry.attempts = 0\notherwise use alpha-mini\n")
    messages = [{"role": "user", "content": "please write something long " * 20}]
    full = engine.complete(messages=messages, max_tokens=200).cost
    assert full is not None and full > 0
    key = "mr-review28-hangup-key"
    gateway = Gateway(engine, keys=KeyRing([GatewayKey("team", hash_key(key), daily_budget=2.5 * full)]))
    body = {"model": "auto", "messages": messages, "max_tokens": 200, "stream": True}
    statuses = []
    with ThreadServer(gateway.asgi()) as server, httpx.Client(timeout=30) as client:
        for _ in range(6):
            url, auth = server.url + "/v1/chat/completions", {"authorization": f"Bearer {key}"}
            with client.stream("POST", url, json=body, headers=auth) as response:
                statuses.append(response.status_code)
                if response.status_code != 200:
                    continue
                deltas = 0
                for line in response.iter_lines():
                    deltas += '"content":"' in line.replace(" ", "") and '"content":""' not in line.replace(" ", "")
                    if deltas == 4:
                        break  # hang up with most of the answer read
        wait_until(lambda: idle(engine), "every stream's upstream call to end")
    costs = billed(engine, fake_server)[1:]  # the first was the direct call that priced one answer
    spent, held = engine.budget_book.store.spent(key_budget_key("team", time.time()))
    assert held == pytest.approx(0.0, abs=1e-12)
    assert sum(costs) <= 2.5 * full + max(costs) + 1e-12, f"{statuses}: billed ${sum(costs):.6f}, spent ${spent:.6f}"
    # each hung-up stream is charged an estimate (its input and the output it delivered): never nothing, never more
    # than the upstream billed, which went on generating until it saw the hang-up
    assert 429 in statuses and 0.5 * sum(costs) <= spent <= sum(costs) + 1e-12, (spent, sum(costs))
