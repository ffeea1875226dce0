"""Tests for the gateway's metrics and spend (providers/gateway/metrics.py, providers/execution/spending.py,
providers/gateway/workers.py's multiprocess directory): requests through the official openai and anthropic SDKs to
a real uvicorn gateway over the FakeServer, and a real `modelroute serve --workers 2 --redis` on a real
redis-server, in; `x-modelroute-cost` headers, spend per key and per user (capped), prometheus_client's process and
GC series and, under --workers, /metrics summing every worker, out."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
openai = pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")
import anthropic  # noqa: E402
import httpx  # noqa: E402

from providers.execution.spending import NOBODY, OTHER_USERS, SpendTally  # noqa: E402
from providers.gateway.app import create_app  # noqa: E402
from providers.gateway.metrics import GatewayMetrics, cost_headers, cost_text  # noqa: E402
from tests.engines import engine_for  # noqa: E402
from tests.fakeserver import Billing, FakeServer, Reply  # noqa: E402
from tests.test_gateway import KEY, ThreadServer, keyring  # noqa: E402
from tests.test_workers import Workers, needs_redis, redis_server, serve  # noqa: E402, F401
from tests.waiting import wait_until  # noqa: E402

POLICY = "set retry.attempts = 0\notherwise use alpha-mini fallback beta-chat\n"
CHAT_200 = 'modelroute_requests_total{endpoint="chat",status="200"}'
MSG: list[Any] = [{"role": "user", "content": "Hi"}]


def sample(text: str, series: str) -> float:
    """The value of one series (`name{labels}` exactly) in a /metrics text; 0 when absent."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def gw(fake_server: FakeServer) -> Iterator[Any]:
    class Handle:
        def __init__(self) -> None:
            self.engine = engine_for(fake_server, POLICY)
            self.server = ThreadServer(create_app(self.engine, keys=keyring())).__enter__()
            self.url = self.server.url
            self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=0)

        def metrics(self) -> str:
            return httpx.get(self.url + "/metrics", timeout=10).text

    handle = Handle()
    yield handle
    handle.server.__exit__()


# ---- the registry on its own ----------------------------------------------------------------------------------
def test_metrics_keep_their_names_and_label_order_and_add_process_and_gc_series() -> None:
    m = GatewayMetrics(lambda: [("alpha-mini", "open")], lambda: 2)
    m.upstream.observe(0.2, "alpha-mini")
    m.tokens.inc("alpha-mini", "input", by=3)
    m.requests.inc("chat", 200)
    text = m.render().decode()
    assert 'modelroute_upstream_latency_seconds_bucket{model="alpha-mini",le="+Inf"} 1' in text.splitlines()
    assert 'modelroute_tokens_total{model="alpha-mini",direction="input"} 3' in text.splitlines()
    assert 'modelroute_requests_total{endpoint="chat",status="200"} 1' in text.splitlines()
    assert 'modelroute_circuit_state{model="alpha-mini"} 2' in text and "modelroute_in_flight_requests 2" in text
    assert "# TYPE modelroute_spend_usd_total counter" in text and "_created" not in text
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_gc_collections_total"):
        assert f"\n{name}" in text, name


def test_users_beyond_the_cap_share_one_series() -> None:
    m = GatewayMetrics(lambda: [], lambda: 0, max_users=2)
    for user in ("ann", "bob", "cy", "dee", "ann"):
        m.spent({"key": "team-a", "user": user}, 0.5)
    m.spent({}, 0.25)
    text = m.render().decode()
    assert sample(text, 'modelroute_user_requests_total{user="ann"}') == 2
    assert sample(text, 'modelroute_user_requests_total{user="bob"}') == 1
    assert sample(text, f'modelroute_user_requests_total{{user="{OTHER_USERS}"}}') == 2  # cy and dee
    assert sample(text, f'modelroute_user_requests_total{{user="{NOBODY}"}}') == 1
    assert sample(text, 'modelroute_key_spend_usd_total{key="team-a"}') == 2.5
    assert sample(text, f'modelroute_key_requests_total{{key="{NOBODY}"}}') == 1

    tally = SpendTally(max_users=1)
    tally.add("k", "ann", ok=True, cost=1.0)
    tally.add("k", "bob", ok=False, cost=0.0)
    users = tally.summary()["users"]
    assert set(users) == {"ann", OTHER_USERS} and users[OTHER_USERS]["errors"] == 1


def test_cost_text_is_plain_decimal_usd() -> None:
    assert cost_text(0.0) == "0" and cost_text(1.6e-07) == "0.00000016" and cost_text(2.5) == "2.5"
    assert cost_headers(0.001, 0.0) == {"x-modelroute-cost": "0.001", "x-modelroute-cost-estimated": "false"}
    assert cost_headers(0.001, 0.001)["x-modelroute-cost-estimated"] == "true"


# ---- the gateway -----------------------------------------------------------------------------------------------
def test_every_json_answer_carries_its_cost(gw, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Reply(input_tokens=1000, output_tokens=500))
    raw = gw.client.chat.completions.with_raw_response.create(model="auto", messages=MSG)
    chat = raw.parse()
    cost = float(raw.headers["x-modelroute-cost"])
    assert cost > 0 and raw.headers["x-modelroute-cost-estimated"] == "false"
    assert chat.usage is not None and chat.usage.prompt_tokens == 1000
    assert cost == pytest.approx(sample(gw.metrics(), 'modelroute_spend_usd_total{model="alpha-mini"}'))

    claude = anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0)
    answer = claude.messages.with_raw_response.create(model="auto", max_tokens=64, messages=MSG)
    assert float(answer.headers["x-modelroute-cost"]) > 0
    responses = gw.client.responses.with_raw_response.create(model="auto", input="Hi")
    assert float(responses.headers["x-modelroute-cost"]) > 0
    legacy = gw.client.completions.with_raw_response.create(model="auto", prompt="Hi")
    assert float(legacy.headers["x-modelroute-cost"]) > 0


def test_an_answer_without_reported_usage_says_its_cost_is_estimated(gw, fake_server: FakeServer) -> None:
    fake_server.billing = Billing(omit_usage=True)
    raw = gw.client.chat.completions.with_raw_response.create(model="auto", messages=MSG)
    assert raw.headers["x-modelroute-cost-estimated"] == "true" and float(raw.headers["x-modelroute-cost"]) > 0


def test_spend_by_key_and_user_in_metrics_and_in_the_executor(gw, fake_server: FakeServer) -> None:
    for user in ("alice", "alice", "bob"):
        gw.client.chat.completions.create(model="auto", messages=MSG, user=user)
    with gw.client.chat.completions.with_streaming_response.create(
        model="auto", messages=MSG, stream=True, user="bob"
    ) as stream:
        assert "x-modelroute-cost" not in stream.headers  # sent before the cost is known: see /metrics
        assert [line for line in stream.iter_lines() if line][-1] == "data: [DONE]"
    wait_until(lambda: sample(gw.metrics(), 'modelroute_key_requests_total{key="team-a"}') == 4, "the stream counted")
    text = gw.metrics()
    assert sample(text, 'modelroute_user_requests_total{user="alice"}') == 2
    assert sample(text, 'modelroute_user_requests_total{user="bob"}') == 2
    spent = sample(text, 'modelroute_key_spend_usd_total{key="team-a"}')
    assert spent > 0 and spent == pytest.approx(sample(text, 'modelroute_spend_usd_total{model="alpha-mini"}'))
    tally = gw.engine.executor.spending.summary()
    assert tally["keys"]["team-a"]["requests"] == 4 and tally["keys"]["team-a"]["cost"] == pytest.approx(spent)
    assert tally["users"]["alice"]["requests"] == 2 and tally["users"]["bob"]["errors"] == 0


# ---- serve --workers 2: one /metrics for every worker -----------------------------------------------------------
@needs_redis
def test_metrics_of_two_workers_are_summed_on_every_scrape(serve: Callable[..., Workers]) -> None:  # noqa: F811
    w = serve()
    pids = w.workers(2)
    for _ in range(6):  # a new connection each: the kernel spreads them over the workers
        r = httpx.post(w.url + "/v1/chat/completions", json={"model": "auto", "messages": MSG}, timeout=30)
        assert r.status_code == 200 and float(r.headers["x-modelroute-cost"]) > 0

    def scrapes() -> list[float]:
        return [sample(httpx.get(w.url + "/metrics", timeout=10).text, CHAT_200) for _ in range(8)]

    assert scrapes() == [6.0] * 8  # whichever worker answers
    text = httpx.get(w.url + "/metrics", timeout=10).text
    assert "process_cpu_seconds_total" in text and sample(text, f'modelroute_key_requests_total{{key="{NOBODY}"}}') == 6
    os.kill(min(pids), signal.SIGKILL)  # a dead worker's counts stay in the total
    wait_until(lambda: "serving again" in w.stderr, "the killed worker to be replaced", timeout=30)
    assert scrapes() == [6.0] * 8
    assert w.stop() == 0


def test_supervisor_sets_a_fresh_multiprocess_directory_and_removes_it(tmp_path: Path) -> None:
    from providers.gateway.metrics import MULTIPROC_ENV
    from providers.gateway.workers import Supervisor

    seen: list[str] = []

    def work(index: int, first: bool, ready: Callable[[], None]) -> int:
        assert Path(os.environ[MULTIPROC_ENV]).is_dir()
        (tmp_path / "dir").write_text(os.environ[MULTIPROC_ENV])
        ready()
        os.kill(os.getppid(), signal.SIGTERM)
        return 0

    before = os.environ.get(MULTIPROC_ENV)
    sup = Supervisor(1, work, seen.append, graceful_timeout=5)
    sup.run()
    assert os.environ.get(MULTIPROC_ENV) == before
    used = (tmp_path / "dir").read_text()
    assert used != before and not Path(used).exists()
    assert any("workers serving" in line or "stopping" in line for line in seen)


@pytest.mark.parametrize("inherited", ["missing", "stale"])
def test_one_process_ignores_an_inherited_multiprocess_directory(
    tmp_path: Path, fake_server: FakeServer, inherited: str
) -> None:
    """`PROMETHEUS_MULTIPROC_DIR` set for a one-process `serve` (a missing directory, or one with an earlier run's
    files): a note at start, then the metrics live in memory: every request answers 200 and /metrics counts them."""
    import subprocess

    from providers.gateway.metrics import MULTIPROC_ENV
    from tests.engines import KINDS, TEST_KEY
    from tests.test_gateway import write_policy
    from tests.test_redis_store import free_port
    from tests.test_workers import POLICY, REPO, SERVE

    where = tmp_path / "nonexistent" / "x"
    if inherited == "stale":
        where.mkdir(parents=True)
        (where / "counter_1.db").write_bytes(b"\0" * 64)  # not this run's
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), MULTIPROC_ENV: str(where)}
    env.update({f"TEST_{n.upper()}_KEY": TEST_KEY for n in KINDS})
    log = tmp_path / "serve.log"
    policy = write_policy(tmp_path, fake_server, POLICY)
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [*SERVE, "-p", str(policy), "--port", str(port), "--log-level", "warning"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(url + "/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, "modelroute serve to answer /healthz", timeout=60, interval=0.05)
        for _ in range(2):
            r = httpx.post(url + "/v1/chat/completions", json={"model": "auto", "messages": MSG}, timeout=30)
            assert r.status_code == 200, r.text
        scrape = httpx.get(url + "/metrics", timeout=10)
        assert scrape.status_code == 200 and sample(scrape.text, CHAT_200) == 2.0
        assert f"{MULTIPROC_ENV}={where} ignored" in log.read_text()
        assert (inherited == "missing" and not where.exists()) or len(list(where.iterdir())) == 1  # nothing written
    finally:
        proc.terminate()
        proc.wait(30)
