"""Tests for providers/state/redis_store.py: calls on a RedisStore backed by a real redis-server (started on a free
loopback port by the fixtures here) in, MemoryStore-equal answers, shared state across stores and degradation
to local state out. Skipped with a reason when no redis-server binary or redis-py is installed."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from engine.runtime.state import PROBE, CircuitConfig, CircuitInfo, ExecutionStore, MemoryStore, StateStore
from tests.clocks import Clock
from tests.waiting import wait_until

REDIS_BIN = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS_BIN is None, reason="no redis-server binary (apt-get install redis-server)")
pytest.importorskip("redis", reason="redis-py not installed (pip install -e '.[test]')")

CFG = CircuitConfig(failures=3, window=10.0, cooldown=30.0, min_samples=3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throwaway redis-server on 127.0.0.1 (no persistence); stop() or kill() it."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert REDIS_BIN is not None
        self.proc = subprocess.Popen(
            [REDIS_BIN, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._pong, f"redis-server on port {self.port} to answer PING", interval=0.02)
        return self

    def _pong(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with status {self.proc.returncode} (port {self.port} in use?)")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    stop = kill


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def make_store(redis_server: RedisServer, request: pytest.FixtureRequest):
    """RedisStores sharing one fresh prefix (per test) and one injected wall clock."""
    from providers.state.redis_store import RedisStore

    prefix = f"t{abs(hash(request.node.nodeid)) % 10**8}:"
    clock = Clock()
    made: list[RedisStore] = []

    def build(**kw):
        store = RedisStore(redis_server.url, prefix=prefix, wall=clock, refresh=kw.pop("refresh", 0.0), **kw)
        made.append(store)
        return store

    build.clock = clock  # type: ignore[attr-defined]
    yield build
    for s in made:
        s.close()
    clear_prefix(redis_server.url, prefix)


def clear_prefix(url: str, prefix: str) -> None:
    """Delete a test's keys (after its stores are closed: closing removes a replica's in-flight counts)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
    except (redis.exceptions.RedisError, OSError):
        pass  # the server was stopped by the test
    finally:
        client.close()


def fail(store, model: str = "m", n: int = 1) -> list[str | None]:
    return [store.record(model, "p", "fail", CFG, latency_ms=5) for _ in range(n)]


def test_implements_both_interfaces(make_store) -> None:
    store = make_store()
    assert isinstance(store, StateStore)
    assert all(hasattr(store, name) for name in ExecutionStore.__dict__ if not name.startswith("_"))


def test_success_rates_are_shared_by_replicas_and_follow_the_window(make_store) -> None:
    clock = make_store.clock
    a, b = make_store(), make_store()
    many = CircuitConfig(failures=100, window=10.0, cooldown=30.0, min_samples=3)  # no circuit opens here
    for _ in range(3):
        a.record("m", "p", "ok", many, latency_ms=5)
    b.record("m", "p", "fail", many, latency_ms=5)
    b.record("n", "p", "cancelled", many)  # a cancelled call is no evidence either way
    a.flush()
    b.flush()
    assert a.success_rates(300.0) == b.success_rates(300.0) == {"m": pytest.approx(0.75)}
    clock.t += 400  # every call so far is older than the window ...
    b.record("m", "p", "ok", many, latency_ms=5)
    b.flush()
    assert a.success_rates(300.0) == {"m": 1.0}  # ... and only the new one counts
    assert a.success_rates(3600.0) == {"m": pytest.approx(0.8)}


def test_circuit_lifecycle_matches_memory_store(make_store) -> None:
    clock = make_store.clock
    store = make_store()
    memory = MemoryStore(clock=lambda: clock.t, wall=clock)
    for s in (store, memory):
        assert fail(s, n=2) == [None, None] and s.unavailable() == frozenset()
    clock.t += 11  # the first two fall out of the window
    for s in (store, memory):
        assert fail(s, n=3) == [None, None, "opened"]
        assert s.unavailable() == {"m"} and not s.allow("m")
        info = s.circuit("m")
        assert info.state == "open" and info.until == pytest.approx(clock.t + 30)
    clock.t += 31  # cooldown over: half-open, exactly one probe
    for s in (store, memory):
        assert s.unavailable() == frozenset() and s.circuit("m").state == "half_open"
        assert s.allow("m") and not s.allow("m")
        assert s.unavailable() == {"m"}  # the probe is running
        assert s.record("m", "p", "fail", CFG, probe=True) == "opened"
    clock.t += 31
    for s in (store, memory):
        assert s.allow("m")
        assert s.record("m", "p", "ok", CFG, latency_ms=10, probe=True) == "closed"
        assert s.circuit("m").state == "closed" and s.unavailable() == frozenset()


def test_a_forced_probe_is_shared_by_the_replicas_and_closes_on_ok(make_store) -> None:
    clock = make_store.clock
    a, b = make_store(), make_store()
    assert a.probe("m") and a.circuit("m") == CircuitInfo("m", "closed", 0)  # a closed circuit: nothing to claim
    assert fail(a, n=3)[-1] == "opened"
    for s in (a, b):  # circuit() reports the wall-clock end of the open state, as MemoryStore does
        info = s.circuit("m")
        assert info.state == "open" and info.until == pytest.approx(clock.t + 30)
    clock.t += 5  # well before the cooldown ends
    assert not b.allow("m")
    assert a.probe("m")  # forced: a holds the half-open probe
    for s in (a, b):  # decide() on either replica sees it at once (refresh=0 here; a's own snapshot was dropped)
        assert s.circuit("m").state == "half_open" and s.unavailable() == {"m"} and not s.allow("m")
    assert not a.probe("m") and not b.probe("m")  # one probe at a time, across replicas
    assert a.record("m", "p", "ok", CFG, latency_ms=5, probe=True) == "closed"
    for s in (a, b):
        assert s.circuit("m") == CircuitInfo("m", "closed", 0) and s.unavailable() == frozenset() and s.allow("m")


def test_a_failed_forced_probe_reopens_the_circuit_for_a_new_cooldown(make_store) -> None:
    clock = make_store.clock
    a, b = make_store(), make_store()
    fail(a, n=3)
    clock.t += 5
    assert b.probe("m")
    clock.t += 2
    assert b.record("m", "p", "fail", CFG, probe=True) == "opened"
    for s in (a, b):
        info = s.circuit("m")
        assert info.state == "open" and info.until == pytest.approx(clock.t + 30)
        assert s.unavailable() == {"m"} and not s.allow("m")
    assert a.probe("m") and not b.probe("m")  # the next forced probe may be claimed at once


def test_a_forced_probe_of_a_dead_replica_is_claimable_after_its_lease(make_store) -> None:
    from providers.state.circuits import PROBE_LEASE

    clock = make_store.clock
    slow = CircuitConfig(failures=3, window=10.0, cooldown=10 * PROBE_LEASE, min_samples=3)
    a, b = make_store(), make_store()
    for _ in range(3):
        a.record("m", "p", "fail", slow)
    assert a.probe("m")  # a dies mid-probe: it never records
    clock.t += PROBE_LEASE - 1
    assert not b.probe("m") and b.unavailable() == {"m"}
    clock.t += 2  # the lease ran out (the cooldown has not)
    assert b.unavailable() == frozenset() and b.probe("m") and not a.probe("m")
    assert b.record("m", "p", "neutral", slow, probe=True) is None  # a probe without a verdict releases it ...
    assert a.probe("m")  # ... so it is claimable again at once
    assert a.record("m", "p", "ok", slow, probe=True) == "closed" and b.circuit("m").state == "closed"


def test_only_the_probe_decides_a_half_open_circuit_on_every_replica(make_store) -> None:
    clock = make_store.clock
    a, b = make_store(), make_store()
    fail(a, n=3)
    clock.t += 31
    assert a.allow("m") == PROBE
    assert b.record("m", "p", "fail", CFG) is None and b.record("m", "p", "ok", CFG) is None  # not the probe
    assert b.circuit("m").state == "half_open" and not b.allow("m")
    assert a.record("m", "p", "ok", CFG, probe=True) == "closed" and b.circuit("m").state == "closed"


def test_concurrent_forced_probes_claim_one(make_store) -> None:
    stores = [make_store() for _ in range(4)]
    fail(stores[0], n=3)
    claimed: list[object] = []
    start = threading.Barrier(len(stores) * 2)

    def worker(store) -> None:
        start.wait()
        claimed.append(store.probe("m"))

    threads = [threading.Thread(target=worker, args=(s,)) for s in stores * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert claimed.count(PROBE) == 1 and claimed.count(False) == 7


def test_neutral_and_cancelled_do_not_open(make_store) -> None:
    store = make_store()
    for _ in range(5):
        assert store.record("m", "p", "neutral", CFG) is None
        assert store.record("m", "p", "cancelled", CFG) is None
    assert store.circuit("m").state == "closed"
    assert store.stats()["m"].calls == 5  # cancelled calls are not counted


def test_stats_latency_round_robin_and_in_flight(make_store) -> None:
    store = make_store()
    for ms in (100, 200, 300):
        store.record("m", "p", "ok", CFG, latency_ms=ms, input_tokens=10, output_tokens=5, cost=0.01)
    store.record("m", "p", "fail", CFG)
    s = store.stats()["m"]
    memory = MemoryStore()
    for ms in (100, 200, 300):
        memory.record("m", "p", "ok", CFG, latency_ms=ms, input_tokens=10, output_tokens=5, cost=0.01)
    memory.record("m", "p", "fail", CFG)
    assert vars(s) == pytest.approx(vars(memory.stats()["m"]))
    assert store.latency_ms()["m"] == pytest.approx(memory.latency_ms()["m"])
    assert [store.next_index("rule1") for _ in range(3)] == [0, 1, 2]
    store.add_in_flight("m", 1)
    store.add_in_flight("m", 1)
    store.add_in_flight("m", -3)  # never below zero
    assert store.in_flight("m") == 0


def test_two_stores_share_circuits_counters_and_spend(make_store) -> None:
    a, b = make_store(), make_store()
    fail(a, n=3)
    assert b.unavailable() == {"m"} and not b.allow("m") and b.circuit("m").state == "open"
    assert a.next_index("k") == 0 and b.next_index("k") == 1
    assert a.reserve("daily:x", 0.6, 1.0) == (True, 0.0)
    assert b.reserve("daily:x", 0.6, 1.0) == (False, pytest.approx(0.6))
    assert a.settle("daily:x", 0.6, 0.5) == pytest.approx(0.5)
    assert b.spent("daily:x") == (pytest.approx(0.5), pytest.approx(0.0))


def test_concurrent_reservations_never_exceed_the_limit(make_store) -> None:
    stores = [make_store() for _ in range(4)]
    granted: list[float] = []

    def worker(store) -> None:
        for _ in range(25):
            ok, _ = store.reserve("daily:d", 0.07, 2.0)
            if ok:
                granted.append(0.07)
                store.settle("daily:d", 0.07, 0.05)

    threads = [threading.Thread(target=worker, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spent, reserved = stores[0].spent("daily:d")
    assert reserved == pytest.approx(0.0, abs=1e-9) and spent <= 2.0 + 1e-9
    assert spent == pytest.approx(0.05 * len(granted))
    assert len(granted) < 100  # the budget did refuse some


def test_losing_redis_degrades_to_local_state_then_recovers(caplog: pytest.LogCaptureFixture) -> None:
    from providers.state.redis_store import RedisStore

    server = RedisServer().start()
    try:
        store = RedisStore(server.url, prefix="deg:", retry=0.05, refresh=0.0)
        assert store.reserve("daily:d", 0.3, 1.0) == (True, 0.0)
        assert store.settle("daily:d", 0.3, 0.25) == pytest.approx(0.25)
        port = server.port
        server.kill()
        with caplog.at_level(logging.WARNING, logger="modelroute.state"):
            assert store.next_index("k") == 0  # answered locally, no exception
            assert fail(store, n=3)[-1] == "opened" and store.unavailable() == {"m"}
            assert store.probe("m") and not store.probe("m")  # the local circuit's forced probe
            ok, used = store.reserve("daily:d", 0.5, 1.0)  # seeded with the last shared spend
            assert ok and used == pytest.approx(0.25)
            assert store.settle("daily:d", 0.5, 0.4) == pytest.approx(0.65)
            assert store.status.startswith("local")
        warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 1  # one warning per outage, not per call
        server = RedisServer(port).start()
        assert store.ping() and store.status == "redis"  # ping() ends the outage without waiting for `retry`
        # this test Redis kept nothing (no persistence): the reset is detected and the replica re-publishes its own
        # spend, 0.25 from before the outage plus the outage's 0.4
        assert store.spent("daily:d")[0] == pytest.approx(0.65)
        store.close()
    finally:
        server.kill()
