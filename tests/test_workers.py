"""Tests for `modelroute serve --workers N` (providers/gateway/workers.py, providers/gateway/server.py): real
`modelroute serve` processes with two workers on one real redis-server, a loopback upstream and the official
openai SDK in; requests answered by both workers (the pid of the answering process in /healthz's
x-modelroute-worker header), two Redis replicas, a killed worker restarted while requests keep succeeding, SIGTERM
stopping every process after in-flight requests finish, the workers leaving when the supervisor is killed, and
`--workers 2` without `--redis` refused with the reason, out. Also the Supervisor on its own (forked test workers):
restarts with backoff and giving up when workers keep failing before they serve."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("redis", reason="redis-py not installed (pip install -e '.[test]')")
import httpx
import openai

from providers.gateway.server import WORKER_HEADER
from providers.gateway.workers import Supervisor, WorkersFailed
from tests.engines import KINDS, TEST_KEY
from tests.fakeserver import FakeServer, Fault
from tests.test_gateway import write_policy
from tests.test_redis_store import REDIS_BIN, RedisServer, free_port
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
POLICY = "set retry.attempts = 0\notherwise use alpha-mini fallback beta-chat\n"
SERVE = (sys.executable, "-m", "engine.cli", "serve")
needs_redis = pytest.mark.skipif(REDIS_BIN is None, reason="no redis-server binary (apt-get install redis-server)")


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


class Workers:
    """`modelroute serve --workers N` in a subprocess on a free port, its standard error in a file."""

    def __init__(self, policy_dir: Path, log: Path, *args: str) -> None:
        self.port = free_port()
        self.log = log
        self.prefix = ""  # the --redis-prefix it was given
        env = {**os.environ, "PYTHONPATH": str(REPO), **{f"TEST_{n.upper()}_KEY": TEST_KEY for n in KINDS}}
        with open(log, "w") as err:
            self.proc = subprocess.Popen(
                [*SERVE, "-p", str(policy_dir), "--port", str(self.port), "--log-level", "warning", *args],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        wait_until(self._serving, "modelroute serve --workers to start its workers", timeout=60, interval=0.05)
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=30)

    def _serving(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited with {self.proc.returncode}: {self.stderr}")
        return "workers serving" in self.stderr

    @property
    def stderr(self) -> str:
        return self.log.read_text()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker(self) -> int:
        """The pid of the worker that answers a GET /healthz on a new connection."""
        r = httpx.get(self.url + "/healthz", timeout=10)
        assert r.status_code == 200
        return int(r.headers[WORKER_HEADER])

    def workers(self, n: int) -> set[int]:
        """The pids of `n` different workers, asking /healthz until that many answered."""
        seen: set[int] = set()

        def enough() -> bool:
            seen.add(self.worker())
            return len(seen) >= n

        wait_until(enough, f"{n} different workers to answer /healthz", timeout=30)
        return seen

    def chat(self) -> str:
        answer = self.client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Hi"}])
        return answer.choices[0].message.content or ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    if REDIS_BIN is None:
        pytest.skip("no redis-server binary (apt-get install redis-server)")
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def serve(tmp_path: Path, fake_server: FakeServer, redis_server: RedisServer) -> Iterator[Callable[..., Workers]]:
    """Starts `modelroute serve --workers 2` on the module's redis-server (a key prefix of its own per start)."""
    started: list[Workers] = []
    policy = write_policy(tmp_path, fake_server, POLICY)

    def start(*args: str) -> Workers:
        n = len(started)
        prefix = f"workers{n}-{abs(hash(str(tmp_path))) % 10**8}:"
        args = ("--workers", "2", "--redis", redis_server.url, "--redis-prefix", prefix, *args)
        w = Workers(policy, tmp_path / f"serve{n}.log", *args)
        w.prefix = prefix
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVE, "--port", "0", *args],
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@needs_redis
def test_two_workers_answer_on_one_port_as_two_redis_replicas(serve, redis_server: RedisServer) -> None:
    import redis

    w = serve()
    pids = w.workers(2)
    assert {_parent(pid) for pid in pids} == {w.proc.pid}, "the workers are children of the supervising process"
    assert "2 worker processes" in w.stderr and w.stderr.count("modelroute gateway: http://") == 1
    for _ in range(4):
        assert w.chat() == "ok"
    r = redis.Redis.from_url(redis_server.url)
    try:  # each worker is a replica of its own in the one Redis (a chat a poll, until both have published)
        wait_until(lambda: w.chat() and r.zcard(w.prefix + "replicas") >= 2, "two replicas in Redis", timeout=30)
    finally:
        r.close()


@needs_redis
def test_a_killed_worker_is_restarted_and_requests_keep_succeeding(serve) -> None:
    w = serve()
    before = w.workers(2)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    for _ in range(3):  # served by the other worker meanwhile
        assert w.chat() == "ok"
    wait_until(lambda: w.chat() == "ok" and "serving again" in w.stderr, "the killed worker to be replaced", 30)
    assert f"(pid {victim}) exited after" in w.stderr and "signal SIGKILL" in w.stderr
    after = w.workers(2)
    assert victim not in after and (before - {victim}) <= after
    assert not _alive(victim)
    assert w.stop() == 0


@needs_redis
def test_sigterm_lets_in_flight_requests_finish_then_stops_every_worker(serve, fake_server: FakeServer) -> None:
    w = serve()
    pids = w.workers(2)
    gate = threading.Event()
    fake_server.script("alpha-mini", Fault.held(gate))
    answers: list[str] = []
    client = threading.Thread(target=lambda: answers.append(w.chat()))
    client.start()
    try:
        fake_server.wait_for_requests(1, timeout=30)
        w.proc.send_signal(signal.SIGTERM)
        # the idle worker leaves at once; the busy one waits for its request
        wait_until(lambda: sum(_alive(p) for p in pids) == 1, "the idle worker to exit", 30)
    finally:
        gate.set()
        client.join(30)
    assert answers == ["ok"]
    assert w.proc.wait(60) == 0
    assert not any(_alive(p) for p in pids)
    assert "SIGTERM: stopping 2 worker(s) gracefully" in w.stderr
    assert "Traceback" not in w.stderr


@needs_redis
def test_workers_leave_when_their_supervisor_is_killed(serve) -> None:
    w = serve()
    pids = w.workers(2)
    w.proc.kill()
    w.proc.wait(10)
    wait_until(lambda: not any(_alive(p) for p in pids), "the orphaned workers to stop", timeout=60, interval=0.05)


@pytest.mark.parametrize("how", ["option", "environment"])
def test_workers_without_redis_are_refused_with_the_reason(tmp_path: Path, fake_server: FakeServer, how: str) -> None:
    policy = str(write_policy(tmp_path, fake_server, POLICY))
    env = {"MODELROUTE_REDIS_URL": "", "MODELROUTE_WORKERS": "3" if how == "environment" else ""}
    done = _run("-p", policy, *(["--workers", "3"] if how == "option" else []), env=env)
    assert done.returncode == 2, done.stderr
    assert "--workers 3 needs --redis" in done.stderr
    assert "own circuits, budget spend, in-flight counts and round-robin turn" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_broken_policy_is_reported_once_before_any_worker_starts(tmp_path: Path, fake_server: FakeServer) -> None:
    policy = write_policy(tmp_path, fake_server, "otherwise use no-such-model\n")
    done = _run("-p", str(policy), "--workers", "2", "--redis", "redis://127.0.0.1:1/0")
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("no-such-model") >= 1 and "1 error" in done.stderr
    assert "worker" not in done.stderr and "Traceback" not in done.stderr


def test_a_worker_that_cannot_start_is_reported_once(tmp_path: Path, fake_server: FakeServer) -> None:
    policy = str(write_policy(tmp_path, fake_server, POLICY))
    done = _run("-p", policy, "--workers", "2", "--redis", "redis://127.0.0.1:99999/0")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("is not a Redis URL") == 1, done.stderr
    assert "worker 1 of 2" in done.stderr and "exited before serving" in done.stderr
    assert "Traceback" not in done.stderr


# ---- the Supervisor on its own: forked workers running a test function --------------------------------------
def _idle() -> int:
    while True:  # until the supervisor's SIGTERM (which exits 0)
        time.sleep(0.02)


def test_the_supervisor_restarts_a_worker_that_dies_and_stops_all_on_sigterm(tmp_path: Path) -> None:
    died = tmp_path / "died"
    lines: list[str] = []

    def serve(index: int, first: bool, ready: Callable[[], None]) -> int:
        ready()
        if index == 1 and not died.exists():
            died.touch()
            return 7  # worker 2 dies once, after serving
        return _idle()

    def echo(line: str) -> None:
        lines.append(line)
        if "serving again" in line:
            os.kill(os.getpid(), signal.SIGTERM)

    Supervisor(2, serve, echo, graceful_timeout=5).run()
    text = "\n".join(lines)
    assert "worker 2 of 2" in text and "(exit code 7); restarting it in 0.5 s" in text
    assert "worker 2 serving again" in text and "SIGTERM: stopping 2 worker(s) gracefully" in text


def test_the_supervisor_gives_up_when_workers_keep_failing_before_they_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from providers.gateway import workers

    monkeypatch.setattr(workers, "BACKOFF_FIRST_S", 0.01)
    broken = tmp_path / "broken"
    lines: list[str] = []

    def serve(index: int, first: bool, ready: Callable[[], None]) -> int:
        if broken.exists():
            return 1  # every restart fails before serving
        ready()
        while not broken.exists():
            time.sleep(0.01)
        return 1

    def echo(line: str) -> None:
        lines.append(line)
        if "workers serving" in line:
            broken.touch()

    with pytest.raises(WorkersFailed, match=r"failed 5 times in a row before serving .* giving up") as failed:
        Supervisor(2, serve, echo, graceful_timeout=5).run()
    assert failed.value.code == 1
    assert sum("before serving (exit code 1); restarting" in line for line in lines) >= 4


def test_a_first_start_that_fails_ends_the_supervisor_with_its_code() -> None:
    def serve(index: int, first: bool, ready: Callable[[], None]) -> int:
        return 2

    with pytest.raises(WorkersFailed, match=r"worker 1 of 3 .* exited before serving") as failed:
        Supervisor(3, serve, lambda line: None, graceful_timeout=5).run()
    assert failed.value.code == 2
