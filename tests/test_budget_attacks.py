"""Budget attacks: a loopback upstream that bills every token it is sent (tests/fakeserver.py in billing mode) and
hostile or careless requests in, 20 at a time; the budget's recorded spend and what the upstream really billed out:
neither exceeds the limit by more than one request's cost.

Every attack of issue 14 that overspent a budget by an order of magnitude: a `max_tokens` attribute that shrinks the
hold while the body's max_tokens goes upstream, 700 KiB of tools, images, an upstream that reports no usage (settled
at $0 before), `n` answers per call; and a gateway key's daily budget against large tool definitions. The limit of
each case is a few holds, so most of the 20 requests must be refused before any call.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import Engine
from engine.runtime.budget import bucket
from providers.catalog.loader import load_catalog
from providers.execution import Completion
from providers.execution.budget import BudgetExceeded
from providers.types import function_tool
from tests.engines import CATALOG, KINDS, TEST_KEY, provider_specs
from tests.fakeserver import Billing, FakeServer, Reply

CONCURRENCY = 20
WALL = 1_750_000_000.0  # 2025-06-15: every engine here reads budget periods at this time
DAY = f"daily:{bucket('daily', WALL)}"
MSG = [{"role": "user", "content": "Answer at length, please."}]
#: 100 tools of about 7 KiB each: 700 KiB of JSON, about 180k tokens
TOOLS = [
    function_tool(
        f"tool_{i}",
        "Looks something up. " + "lorem ipsum dolor sit amet " * 260,
        {"type": "object", "properties": {"query": {"type": "string", "description": "what to look up"}}},
    )
    for i in range(100)
]
VISION_CATALOG = """
models:
  claude-vision:
    provider: betacorp
    context: 200k
    price: {input: 3.00, output: 15.00}
    latency_ms: 900
    supports: [vision]
"""


def png(width: int, height: int) -> str:
    """A `data:` URL of a PNG that declares `width` x `height` (its header only: enough to be billed by size)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return "data:image/png;base64," + base64.b64encode(raw + chunk(b"IEND", b"")).decode()


IMAGES = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What differs between these pictures?"},
            *({"type": "image_url", "image_url": {"url": png(4000, 3000)}} for _ in range(3)),
            {"type": "image_url", "image_url": {"url": png(300, 200)}},
            {"type": "image_url", "image_url": {"url": "https://images.invalid/remote.png"}},  # never fetched
        ],
    }
]


def policy(model: str, limit: float | None) -> str:
    budget = f"budget daily ${limit:.6f}\n" if limit is not None else ""
    return f"set retry.attempts = 0\n{budget}otherwise use {model}\n"


class Lab:
    """Engines over the billing fake server, at WALL time."""

    def __init__(self, server: FakeServer, catalog: Path = CATALOG) -> None:
        self.server, self.catalog = server, catalog
        self.engines: list[Engine] = []

    def engine(self, model: str, limit: float | None) -> Engine:
        engine = Engine.from_source(
            policy(model, limit),
            catalog=load_catalog(self.catalog),
            providers=provider_specs(self.server),
            api_keys={name: TEST_KEY for name in KINDS},
            wall=lambda: WALL,
        )
        self.engines.append(engine)
        return engine

    def limit_for(self, model: str, holds: float, **request: Any) -> float:
        """A limit of `holds` times what one such request holds (measured on an engine with a huge budget)."""
        probe = self.engine(model, 1e6)
        run = probe.executor.prepare(None, request.pop("messages", MSG), None, request, {})
        assert run.max_cost is not None and run.max_cost > 0
        probe.executor.settle(run)
        return holds * run.max_cost

    def close(self) -> None:
        for engine in self.engines:
            engine.close()


@pytest.fixture
def lab(fake_server: FakeServer) -> Iterator[Lab]:
    fake_server.billing = Billing()
    lab = Lab(fake_server)
    yield lab
    lab.close()


def billed(engine: Engine, server: FakeServer) -> list[float]:
    """What the upstream billed each answered request, in USD at the catalog's prices."""
    by_id = {e.spec.id: e for e in engine.policy.models.values()}
    return [b.input_tokens * by_id[b.model].ip + b.output_tokens * by_id[b.model].op for b in server.bills]


def storm(calls: list[Callable[[], Awaitable[Any]]]) -> tuple[list[Any], list[BudgetExceeded]]:
    """Run the calls concurrently on one event loop; (answers, refusals). Any other error fails the test."""

    async def go() -> list[Any]:
        return await asyncio.gather(*(call() for call in calls), return_exceptions=True)

    results = asyncio.run(go())
    errors = [r for r in results if isinstance(r, BaseException) and not isinstance(r, BudgetExceeded)]
    if errors:
        raise errors[0]
    return [r for r in results if not isinstance(r, BaseException)], [
        r for r in results if isinstance(r, BudgetExceeded)
    ]


def assert_within_budget(engine: Engine, server: FakeServer, limit: float, answered: list[Any]) -> list[float]:
    """The budget's spend and the upstream's bills exceed `limit` by at most one request's cost; nothing stays held
    or in flight; and the budget refused some requests (else the case proved nothing)."""
    costs = billed(engine, server)
    spent, held = engine.state.spent(DAY)
    one = max(costs)
    assert len(costs) == len(answered) and 0 < len(answered) < CONCURRENCY
    assert sum(costs) <= limit + one + 1e-12, (sum(costs), limit, one)
    assert spent <= limit + one + 1e-12, (spent, limit, one)
    assert held == pytest.approx(0.0, abs=1e-12)
    assert all(engine.state.in_flight(m) == 0 for m in engine.policy.models)
    return costs


# ---- a spoofed max_tokens attribute ------------------------------------------------------------------------
@pytest.mark.parametrize("concurrency", ["asyncio", "threads"])
def test_a_max_tokens_attribute_cannot_shrink_the_hold(lab: Lab, fake_server: FakeServer, concurrency: str) -> None:
    fake_server.default = Reply(output_tokens=4000)
    limit = lab.limit_for("alpha-mini", 3.5, max_tokens=4000)
    engine = lab.engine("alpha-mini", limit)
    ex = engine.executor

    def prepared() -> Any:  # what the gateway does with `x-route-max-tokens: 1` and a body max_tokens of 4000
        run = ex.prepare(None, MSG, None, {"max_tokens": 4000}, {"max_tokens": 1})
        assert run.decision.request.attrs["max_tokens"] == 4000  # derived from the body, the caller's dropped
        return run

    if concurrency == "asyncio":

        async def one() -> Completion:
            return await ex.run(prepared())

        answered, refused = storm([one] * CONCURRENCY)
    else:
        answered, refused, lock = [], [], threading.Lock()

        def worker() -> None:
            try:
                c = ex.run_sync(ex.run(prepared()))
            except BudgetExceeded as exc:
                with lock:
                    refused.append(exc)
            else:
                with lock:
                    answered.append(c)

        threads = [threading.Thread(target=worker) for _ in range(CONCURRENCY)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert all(r.body["max_completion_tokens"] == 4000 for r in fake_server.requests)
    costs = assert_within_budget(engine, fake_server, limit, answered)
    assert engine.state.spent(DAY)[0] == pytest.approx(sum(costs))  # settled from the reported usage
    assert len(answered) + len(refused) == CONCURRENCY


# ---- 700 KiB of tools --------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["alpha-large", "gamma-flash"])  # the OpenAI and the Gemini wire format
@pytest.mark.parametrize("streamed", [False, True])
def test_700_kib_of_tools_are_held(lab: Lab, fake_server: FakeServer, model: str, streamed: bool) -> None:
    fake_server.default = Reply(output_tokens=200)
    limit = lab.limit_for(model, 3.5, tools=TOOLS, max_tokens=200)
    engine = lab.engine(model, limit)

    async def one() -> Any:
        if not streamed:
            return await engine.acomplete(messages=MSG, tools=TOOLS, max_tokens=200)
        stream = engine.astream(messages=MSG, tools=TOOLS, max_tokens=200)
        async for _ in stream:
            pass
        return stream.completion

    answered, _ = storm([one] * CONCURRENCY)
    assert answered[0].decision.tokens > 170_000  # decide() sees the tools too
    costs = assert_within_budget(engine, fake_server, limit, answered)
    assert min(costs) > 170_000 * engine.policy.models[model].ip  # the upstream did bill the tools


# ---- images --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["alpha-large", "gamma-long", "claude-vision"])  # openai, gemini, anthropic
def test_images_are_held_by_size_or_worst_case(lab: Lab, fake_server: FakeServer, tmp_path: Path, model: str) -> None:
    if model == "claude-vision":
        (tmp_path / "catalog.yaml").write_text(VISION_CATALOG)
        lab.catalog = tmp_path / "catalog.yaml"
    fake_server.default = Reply(output_tokens=100)
    limit = lab.limit_for(model, 3.5, messages=IMAGES, max_tokens=100)
    engine = lab.engine(model, limit)

    async def one() -> Completion:
        return await engine.acomplete(messages=IMAGES, max_tokens=100)

    answered, _ = storm([one] * CONCURRENCY)
    costs = assert_within_budget(engine, fake_server, limit, answered)
    text_only = 100 * engine.policy.models[model].op + 50 * engine.policy.models[model].ip
    assert min(costs) > 2 * text_only  # the images were billed, and held


# ---- an upstream that reports no usage -----------------------------------------------------------------------
@pytest.mark.parametrize("streamed", [False, True])
def test_an_upstream_without_usage_is_settled_at_an_estimate(lab: Lab, fake_server: FakeServer, streamed: bool) -> None:
    fake_server.billing = Billing(omit_usage=True)
    fake_server.default = Reply(output_tokens=300)
    limit = lab.limit_for("alpha-mini", 3.5, max_tokens=300)
    engine = lab.engine("alpha-mini", limit)
    seen: list[Any] = []
    engine.on_event(lambda e: seen.append(e) if e.kind == "usage_estimated" else None)

    async def one() -> Any:
        if not streamed:
            return await engine.acomplete(messages=MSG, max_tokens=300)
        stream = engine.astream(messages=MSG, max_tokens=300)
        usage = [e.usage async for e in stream if e.kind == "usage"]
        assert usage and usage[-1] is not None and usage[-1].estimated and usage[-1].output_tokens == 300
        return stream.completion

    answered, _ = storm([one] * CONCURRENCY)
    costs = assert_within_budget(engine, fake_server, limit, answered)
    spent = engine.state.spent(DAY)[0]
    assert spent > 0 and spent == pytest.approx(sum(costs), rel=0.02)  # not $0: the estimate is close to the bill
    assert all(c.usage.estimated and c.estimated_cost == c.cost > 0 for c in answered)
    total = engine.usage()["total"]
    assert total["estimated_calls"] == len(answered) and total["estimated_cost"] == pytest.approx(spent)
    assert len(seen) == len(answered)
    assert engine.request("hi").attrs["budget.left"] < 0.5


# ---- n answers per call -------------------------------------------------------------------------------------
def test_n_answers_per_call_multiply_the_hold(lab: Lab, fake_server: FakeServer) -> None:
    fake_server.default = Reply(output_tokens=500)
    limit = lab.limit_for("alpha-mini", 3.5, max_tokens=500, extra={"n": 6})
    engine = lab.engine("alpha-mini", limit)

    async def one() -> Completion:
        return await engine.acomplete(messages=MSG, max_tokens=500, extra={"n": 6})

    answered, _ = storm([one] * CONCURRENCY)
    assert {b.output_tokens for b in fake_server.bills} == {3000}  # six answers of 500 tokens billed
    assert_within_budget(engine, fake_server, limit, answered)


# ---- a gateway key's daily budget ----------------------------------------------------------------------------
def test_a_gateway_keys_daily_budget_holds_tools(fake_server: FakeServer) -> None:
    pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
    import httpx

    from providers.gateway.app import Gateway
    from providers.gateway.keys import GatewayKey, KeyRing, hash_key
    from providers.gateway.run import key_budget_key
    from tests.test_gateway import ThreadServer

    fake_server.billing = Billing()
    fake_server.default = Reply(output_tokens=2000)
    tools = TOOLS[:28]  # ~200 KiB: about 50k tokens, within alpha-mini's 128k context
    lab = Lab(fake_server)
    limit = lab.limit_for("alpha-mini", 3.5, tools=tools, max_tokens=2000)
    engine = lab.engine("alpha-mini", None)  # no policy budget: only the key's
    key = "mr-budget-attack-key"
    gateway = Gateway(engine, keys=KeyRing([GatewayKey("team", hash_key(key), daily_budget=limit)]))
    body = {"model": "auto", "messages": MSG, "tools": tools, "max_tokens": 2000}
    try:
        with ThreadServer(gateway.asgi()) as server:

            async def go() -> list[httpx.Response]:
                async with httpx.AsyncClient(timeout=60) as client:
                    url, auth = server.url + "/v1/chat/completions", {"authorization": f"Bearer {key}"}
                    return await asyncio.gather(*(client.post(url, json=body, headers=auth) for _ in range(20)))

            responses = asyncio.run(go())
    finally:
        lab.close()
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 429} and 0 < statuses.count(200) < CONCURRENCY, statuses
    costs = billed(engine, fake_server)
    assert sum(costs) <= limit + max(costs) + 1e-12, (sum(costs), limit)
    spent, held = engine.state.spent(key_budget_key("team", time.time()))
    assert spent <= limit + max(costs) + 1e-12 and held == pytest.approx(0.0, abs=1e-12)
    assert all(engine.state.in_flight(m) == 0 for m in engine.policy.models)
