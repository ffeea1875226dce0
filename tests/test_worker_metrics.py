"""The in-flight gauge under `modelroute serve --workers 2` (providers/gateway/metrics.py): a real serve process with
two workers on a real redis-server, streamed requests held open by the loopback upstream in; every scrape of
/metrics, whichever worker answers it, giving the requests in flight summed over the live workers (a multiprocess
gauge in `livesum` mode), back to 0 once they end, out."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("redis", reason="redis-py not installed (pip install -e '.[test]')")
import httpx

from tests.fakeserver import FakeServer, Fault
from tests.test_metrics import sample
from tests.test_workers import Workers, needs_redis, redis_server, serve  # noqa: F401
from tests.waiting import wait_until

IN_FLIGHT = "modelroute_in_flight_requests"
HELD = 3  # streamed requests held open at once: the kernel spreads their connections over the workers


def in_flight(w: Workers) -> float:
    """The in-flight gauge of one scrape (a new connection: either worker may answer it)."""
    return sample(httpx.get(w.url + "/metrics", timeout=10).text, IN_FLIGHT)


@needs_redis
def test_in_flight_is_summed_over_the_workers_on_every_scrape(
    serve: Callable[..., Workers],  # noqa: F811
    fake_server: FakeServer,
) -> None:
    w = serve()
    w.workers(2)
    gate = threading.Event()
    fake_server.script("alpha-mini", [Fault.held(gate) for _ in range(HELD)])
    answers: list[str] = []

    def stream() -> None:
        client = httpx.Client(timeout=60)  # a connection of its own
        body: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
        with client.stream("POST", w.url + "/v1/chat/completions", json=body) as r:
            answers.append(r.read().decode())
        client.close()

    threads = [threading.Thread(target=stream) for _ in range(HELD)]
    for t in threads:
        t.start()
    try:
        fake_server.wait_for_requests(HELD, timeout=30)
        wait_until(lambda: in_flight(w) == HELD, f"{HELD} requests in flight on a scrape", timeout=30)
        assert [in_flight(w) for _ in range(8)] == [HELD] * 8  # whichever worker answers the scrape
    finally:
        gate.set()
        for t in threads:
            t.join(60)
    assert len(answers) == HELD and all("[DONE]" in a for a in answers)
    wait_until(lambda: in_flight(w) == 0, "no request in flight", timeout=30)
    assert [in_flight(w) for _ in range(8)] == [0] * 8
    assert w.stop() == 0
