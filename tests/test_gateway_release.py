"""The gateway releases what a prepared request holds when a step before any call fails (providers/gateway/
pipeline.py; embeddings.py does the same): a policy budget's hold, the cache's entry for the run; a failing step
in, a 500 and nothing left held out."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")

from providers.gateway import pipeline
from providers.gateway.app import create_app
from tests.engines import engine_for, settled
from tests.fakeserver import FakeServer
from tests.test_gateway import ThreadServer

POLICY = "set cache.ttl = 1h\nbudget daily $100\notherwise use alpha-mini\n"
CHAT = {"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}


def test_a_step_failing_after_prepare_releases_the_hold(
    fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the key budget's store failed")

    monkeypatch.setattr(pipeline, "hold_key_budget", broken)
    engine = engine_for(fake_server, POLICY)
    try:
        with ThreadServer(create_app(engine)) as server:
            r = httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=10)
            assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
            assert settled(engine)[1] == pytest.approx(0.0)  # the policy budget's hold was released
            assert not engine.executor.cache._runs  # nor does the cache keep the run's entry
            assert fake_server.requests == []
    finally:
        engine.close()
