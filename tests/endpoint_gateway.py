"""Test helpers for the gateway's non-chat endpoints (tests/test_gateway_anthropic.py, test_gateway_responses.py,
test_gateway_legacy.py): a FakeServer and a policy in, a real uvicorn gateway on a loopback port (as `modelroute
serve` runs it) with gateway keys and a named policy, and probes for what the chat pipeline accepts, out. Helpers
only: no tests here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from providers.gateway.app import create_app
from providers.gateway.keys import GatewayKey, KeyRing, hash_key
from providers.gateway.openai_wire import ApiError, parse_chat
from tests.engines import engine_for
from tests.fakeserver import FakeServer
from tests.test_gateway import ThreadServer

KEY, LIMITED_KEY, BUDGET_KEY = "mr-endpoints-key", "mr-limited-key", "mr-tiny-budget-key"
#: One model of each wire format in the fixture catalog (tests/engines.py KINDS), all with tools.
BY_KIND = {"openai": "alpha-mini", "anthropic": "beta-coder", "gemini": "gamma-flash"}
#: Models with vision, per wire format (the fixture catalog's anthropic models have none).
VISION = {"openai": "alpha-large", "gemini": "gamma-long"}
POLICY = """
set retry.attempts = 1
set retry.backoff = 5ms
set overrides = true
when endpoint == "messages" and tier == "gold" use beta-coder
when endpoint == "responses" and tier == "gold" use gamma-flash
when endpoint == "completions" and tier == "gold" use alpha-large
when user == "vip" use gamma-long
otherwise use alpha-mini fallback beta-chat, gamma-flash
"""
CHEAP = """
set retry.attempts = 1
otherwise use gamma-flash
"""


def keyring() -> KeyRing:
    return KeyRing(
        [
            GatewayKey("team", hash_key(KEY)),
            GatewayKey("limited", hash_key(LIMITED_KEY), policies=frozenset({"cheap"})),
            GatewayKey("tiny", hash_key(BUDGET_KEY), daily_budget=0.0000001),
        ]
    )


class Served:
    """A running gateway: `url`, `post(path, body, key=...)` (raw httpx) and the engine."""

    def __init__(self, server: FakeServer, policy: str = POLICY) -> None:
        self.engine = engine_for(server, policy)
        app = create_app(self.engine, keys=keyring(), policies={"cheap": engine_for(server, CHEAP)})
        self.thread = ThreadServer(app).__enter__()
        self.url = self.thread.url

    def post(self, path: str, body: Any = None, key: str | None = KEY, **kw: Any) -> httpx.Response:
        headers = {"x-api-key": key} if key else {}
        headers.update(kw.pop("headers", {}))
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers.setdefault("content-type", "application/json")
        return httpx.post(self.url + path, content=content, headers=headers, timeout=10, **kw)

    def metric(self, endpoint: str, status: int) -> float:
        """modelroute_requests_total for one endpoint and status, read from GET /metrics."""
        text = httpx.get(self.url + "/metrics").text
        want = f'modelroute_requests_total{{endpoint="{endpoint}",status="{status}"}} '
        return sum(float(line[len(want) :]) for line in text.splitlines() if line.startswith(want))

    def close(self) -> None:
        self.thread.__exit__()


def serving(server: FakeServer, policy: str = POLICY) -> Iterator[Served]:
    served = Served(server, policy)
    try:
        yield served
    finally:
        served.close()


def chat_accepts(field: str, value: Any) -> bool:
    """Whether the chat pipeline accepts a chat-completions field (issue 16 part 1 widens what it takes)."""
    try:
        parse_chat({"messages": [{"role": "user", "content": "x"}], field: value}, {})
    except ApiError:
        return False
    return True


def needs_chat_field(field: str, value: Any) -> Any:
    """Skip a test whose translation sends `field` on when the chat pipeline does not take it yet."""
    return pytest.mark.skipif(not chat_accepts(field, value), reason=f"the chat pipeline does not accept `{field}`")


def sse_frames(text: str) -> list[tuple[str | None, dict[str, Any]]]:
    """An SSE body as (event name or None, JSON data) pairs ([DONE] left out)."""
    out = []
    for frame in text.replace("\r\n", "\n").split("\n\n"):
        if not frame.strip():
            continue
        event, data = None, []
        for line in frame.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data and data != ["[DONE]"]:
            out.append((event, json.loads("\n".join(data))))
    return out
