"""Tests for providers/state/redis_store.py across replicas: several RedisStores on a real redis-server (injected wall
and monotonic clocks, no background thread unless a test wants one) in; blocking round trips per request (none
on the happy path), what the background sender publishes and when, in-flight counts as other replicas see them
(claims, deferred decrements, dead replicas reaped, counts republished) and budgets during an outage (each replica
limited to its share) out. Skipped without redis-server / redis-py."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from engine.runtime.state import CircuitConfig
from tests.test_redis_store import CFG, REDIS_BIN, Clock, RedisServer, clear_prefix, fail
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(REDIS_BIN is None, reason="no redis-server binary (apt-get install redis-server)")
redis = pytest.importorskip("redis", reason="redis-py not installed (pip install -e '.[test]')")


class Mono:
    """An injected monotonic clock."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def make(redis_server: RedisServer, request: pytest.FixtureRequest):
    """RedisStores (replicas) sharing a fresh prefix and injected clocks; `make.wall` / `make.mono` drive them."""
    from providers.state.redis_store import RedisStore

    prefix = f"r{abs(hash(request.node.nodeid)) % 10**8}:"
    wall, mono = Clock(), Mono()
    made: list[RedisStore] = []
    urls = {redis_server.url}

    def build(url: str | None = None, **kw) -> RedisStore:
        kw.setdefault("background", False)
        kw.setdefault("refresh", 0.0)
        store = RedisStore(url or redis_server.url, prefix=prefix, wall=wall, clock=mono, **kw)
        urls.add(store.url)
        made.append(store)
        return store

    build.wall, build.mono = wall, mono  # type: ignore[attr-defined]
    yield build
    for s in made:
        s.close()
    for url in urls:
        clear_prefix(url, prefix)


class OwnServer:
    """A redis-server of the test's own, to kill and start again (empty: no persistence) on the same port."""

    def __init__(self) -> None:
        self.servers = [RedisServer().start()]
        self.port, self.url = self.servers[0].port, self.servers[0].url

    def kill(self) -> None:
        self.servers[-1].kill()

    def restart(self) -> None:
        self.servers.append(RedisServer(self.port).start())


@pytest.fixture
def own_server() -> Iterator[OwnServer]:
    server = OwnServer()
    yield server
    for s in server.servers:
        s.kill()


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch):
    """Counts Redis round trips made from this thread (a pipeline or script call is one)."""
    counter = [0]
    send = redis.connection.Connection.send_packed_command
    me = threading.current_thread()

    def counted(self, *a, **kw):
        if threading.current_thread() is me:
            counter[0] += 1
        return send(self, *a, **kw)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counted)
    return counter


def plain_request(store, model: str = "m", cfg: CircuitConfig = CFG) -> None:
    """What providers/execute.py does for one call that succeeds."""
    store.unavailable()
    store.latency_ms()
    assert store.allow(model)
    store.add_in_flight(model, 1)
    store.add_in_flight(model, -1)
    store.record(model, "p", "ok", cfg, latency_ms=10, input_tokens=3, output_tokens=2, cost=0.001)


# ---- round trips -------------------------------------------------------------------------------------------


def test_a_plain_request_makes_no_blocking_round_trip(make, trips) -> None:
    store = make(refresh=60.0)
    plain_request(store)  # loads the decide() snapshot (and, through flush, the scripts)
    store.flush()
    trips[0] = 0
    for _ in range(10):
        plain_request(store)
    assert trips[0] == 0  # allow, its claim, the -1 and the "ok" record all wait for the sender
    store.flush()
    assert trips[0] == 1  # which sends them in one pipeline
    assert store.in_flight("m") == 0 and store.stats()["m"].calls == 11


def test_calls_that_can_change_a_circuit_stay_synchronous(make, trips) -> None:
    store = make(refresh=60.0)
    assert store.allow("x") and store.record("x", "p", "fail", CFG) is None  # synchronous: loads the scripts
    store.unavailable()
    trips[0] = 0
    assert store.record("m", "p", "fail", CFG) is None and trips[0] == 1  # a failure may open the circuit
    assert fail(store, n=2)[-1] == "opened" and trips[0] == 3
    trips[0] = 0
    assert not store.allow("m") and trips[0] == 1  # a change invalidates the snapshot: the gate asks Redis
    store.unavailable()
    make.wall.t += 31
    trips[0] = 0
    assert store.allow("m") and trips[0] == 1  # the half-open probe is claimed atomically in Redis
    assert (
        store.record("m", "p", "ok", CFG, probe=True) == "closed" and trips[0] == 2
    )  # a circuit not closed: synchronous
    store.unavailable()  # closed again: the fast path is back
    trips[0] = 0
    plain_request(store)
    assert trips[0] == 0


def test_a_circuit_opened_elsewhere_is_honoured_within_the_refresh(make, trips) -> None:
    a, b = make(refresh=0.1), make(refresh=0.1)
    assert b.unavailable() == frozenset() and b.allow("m")
    trips[0] = 0
    assert b.unavailable() == frozenset() and trips[0] == 0  # the snapshot is still current
    assert fail(a, n=3)[-1] == "opened"
    assert b.unavailable() == frozenset()  # b's snapshot is up to 0.1 s old...
    assert b.allow("m")  # ...and says closed: allowed without asking Redis (the documented staleness)
    make.mono.t += 0.1
    assert b.unavailable() == {"m"} and not b.allow("m")  # refreshed: the synchronous gate refuses
    make.wall.t += 31  # cooldown over: b claims the half-open probe, a sees it at once
    assert b.allow("m")
    assert a.unavailable() == {"m"} and b.unavailable() == {"m"}
    assert b.record("m", "p", "neutral", CFG, probe=True) is None  # the probe ended without a verdict
    assert b.unavailable() == frozenset() and b.circuit("m").state == "half_open"


def _live(make, **kw):
    """A replica with a real monotonic clock and a background sender, sharing the test's prefix."""
    from providers.state.redis_store import RedisStore

    other = make()
    return other, RedisStore(other.url, prefix=other._p, wall=make.wall, **kw)


class SenderClock:
    """The background sender's monotonic clock (`providers.state.sender.time`), standing still until advanced:
    its linger then lasts exactly as long as the test wants, however slow the machine."""

    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t


def test_the_sender_publishes_a_claim_and_a_record_promptly(make, trips) -> None:
    b, a = _live(make, refresh=60.0, flush_after=60.0)  # the tick would not send these: only a wake does
    try:
        a.unavailable()
        trips[0] = 0
        assert a.allow("m")
        assert trips[0] == 0
        wait_until(lambda: b.in_flight("m") == 1, "the claim to reach Redis")
        trips[0] = 0
        a.add_in_flight("m", 1)
        a.add_in_flight("m", -1)
        assert a.record("m", "p", "ok", CFG, latency_ms=7, input_tokens=3, output_tokens=2, cost=0.5) is None
        assert trips[0] == 0
        wait_until(lambda: "m" in b.stats() and b.in_flight("m") == 0, "the record to reach Redis")
        s = b.stats()["m"]
        assert (s.calls, s.failures, s.input_tokens, s.output_tokens, s.latency_ms) == (1, 0, 3, 2, 7.0)
        assert s.cost == pytest.approx(0.5)
    finally:
        a.close()


def test_linger_sends_a_short_requests_claim_and_record_together(make, monkeypatch: pytest.MonkeyPatch) -> None:
    from providers.state import sender as redis_sender

    clock = SenderClock()
    monkeypatch.setattr(redis_sender, "time", clock)  # the sender's linger lasts until the test moves its clock
    monkeypatch.setattr(redis_sender, "_TICK", 1e6)  # and no periodic tick, which would send a queued record
    b, a = _live(make, refresh=60.0, flush_after=60.0, linger=0.05)
    batches: list[list[tuple]] = []  # what the sender sends, one list per round trip
    send_batch = a._send_batch

    def recorded(commands: list[tuple]) -> list:
        batches.append(commands)
        return send_batch(commands)

    monkeypatch.setattr(a, "_send_batch", recorded)
    try:
        a.unavailable()  # loads the decide() snapshot (synchronously, not through the sender)
        a.latency_ms()
        assert a.allow("m")  # the claim wakes the sender...
        wait_until(lambda: not a._sig.pending, "the sender to wake up")  # ...which lingers: its clock stands still
        a.add_in_flight("m", 1)
        a.add_in_flight("m", -1)
        assert a.record("m", "p", "ok", CFG, latency_ms=10, input_tokens=3, output_tokens=2, cost=0.001) is None
        assert batches == [] and b.in_flight("m") == 0 and "m" not in b.stats()  # nothing has left yet
        clock.t += 0.05  # the linger is over: the request took less than it, however slow this machine is
        wait_until(lambda: "m" in b.stats() and b.in_flight("m") == 0, "the lingered batch to land")
        [batch] = batches  # one round trip for the claim and the record...
        assert [command[1] for command in batch] == [a._record.sha]  # ...the record carrying the claim's count
        assert b.stats()["m"].calls == 1
    finally:
        a.close()


def test_a_failure_opens_the_circuit_at_once_and_other_replicas_refuse_within_the_refresh(make) -> None:
    a, b = _live(make, refresh=0.1)
    try:
        assert b.unavailable() == frozenset() and b.allow("m")
        assert [a.record("m", "p", "fail", CFG) for _ in range(3)][-1] == "opened"  # synchronous
        assert a.circuit("m").state == "open"

        def refused() -> bool:  # what b's gateway does per request: decide(), then the gate
            b.unavailable()
            return not b.allow("m")

        wait_until(refused, "b to refuse the model")  # how soon (within `refresh`): the injected-clock test above
    finally:
        b.close()


def test_an_outage_during_background_sends_loses_nothing(make, own_server: OwnServer) -> None:
    a, b = make(own_server.url, refresh=60.0), make(own_server.url)
    a.unavailable()
    for _ in range(3):
        plain_request(a)
    assert a.allow("m")  # a call still running when Redis goes
    a.add_in_flight("m", 1)
    own_server.kill()
    a.flush()  # fails: the queued records go to the local state
    assert a.status.startswith("local")
    s = a.stats()["m"]
    assert (s.calls, s.input_tokens, s.cost) == (3, 9, pytest.approx(0.003))
    plain_request(a)  # during the outage: local, as any call
    assert a.stats()["m"].calls == 4 and a.in_flight("m") == 1
    a.add_in_flight("m", -1)
    assert a.in_flight("m") == 0
    assert a.reserve("daily:d", 0.1, 1.0)[0]  # budgets stay synchronous (here: local, seeded)
    assert a.settle("daily:d", 0.1, 0.1) == pytest.approx(0.1)
    own_server.restart()
    assert a.ping() and a.status == "redis"
    assert b.in_flight("m") == 0 and a.spent("daily:d")[0] == pytest.approx(0.1)


def test_close_and_flush_send_everything_pending(make) -> None:
    a, b = make(refresh=60.0), make()
    a.unavailable()
    plain_request(a)
    assert a.allow("m")
    a.add_in_flight("m", 1)
    assert b.in_flight("m") == 0 and "m" not in b.stats()  # nothing sent yet (no background thread here)
    a.flush()
    assert b.in_flight("m") == 1 and b.stats()["m"].calls == 1
    a.add_in_flight("m", -1)
    a.record("m", "p", "ok", CFG)
    plain_request(a, model="n")
    a.close()
    assert b.in_flight("m") == 0 and b.stats()["m"].calls == 2 and b.stats()["n"].calls == 1


# ---- in-flight counts as other replicas see them -----------------------------------------------------------


def test_a_running_call_is_visible_to_other_replicas_until_it_is_recorded(make, trips) -> None:
    a, b = make(), make()
    plain_request(a)
    assert a.allow("m")
    assert b.in_flight("m") == 1  # counted by allow() (a claim)...
    trips[0] = 0
    a.add_in_flight("m", 1)  # ...which the start of the call consumes without a round trip
    assert trips[0] == 0 and b.in_flight("m") == 1
    a.add_in_flight("m", -1)  # the end waits for the record() that follows
    assert trips[0] == 1 and b.in_flight("m") == 1  # the one trip is b's read above
    a.record("m", "p", "ok", CFG, latency_ms=5)
    assert b.in_flight("m") == 0
    a.add_in_flight("m", 1)  # a start without allow() is sent at once
    assert b.in_flight("m") == 1


def test_a_deferred_end_is_sent_by_the_next_call_or_flush(make) -> None:
    a, b = make(), make()
    a.add_in_flight("m", 1)
    a.add_in_flight("m", -1)
    assert b.in_flight("m") == 1
    assert a.next_index("k") == 0  # any call to Redis takes it along
    assert b.in_flight("m") == 0
    a.add_in_flight("m", 1)
    a.add_in_flight("m", -1)
    a.flush()
    assert b.in_flight("m") == 0
    a.add_in_flight("m", 2)
    a.add_in_flight("m", -3)  # never below zero
    assert a.in_flight("m") == 0 and b.in_flight("m") == 0


def test_the_background_thread_sends_a_deferred_end(make) -> None:
    from providers.state.redis_store import RedisStore

    b = make()
    a = RedisStore(b.url, prefix=b._p, wall=make.wall, refresh=0.0)  # real monotonic clock, background thread
    try:
        a.add_in_flight("m", 1)
        assert b.in_flight("m") == 1  # a start without a claim is sent at once
        a.add_in_flight("m", -1)  # the end waits for a send: here the background tick's, after flush_after
        wait_until(lambda: b.in_flight("m") == 0, "the background thread to send the deferred end")
    finally:
        a.close()


def test_claims_nobody_consumes_expire_and_refused_calls_are_not_counted(make) -> None:
    a, b = make(claim_ttl=2.0), make()
    assert a.allow("m")
    assert b.in_flight("m") == 1
    make.mono.t += 1.0
    a.flush()
    assert b.in_flight("m") == 1  # still waiting for its add_in_flight(+1)
    make.mono.t += 1.5
    a.flush()
    assert b.in_flight("m") == 0  # dropped
    assert a.allow("m")
    make.mono.t += 1.0
    a.add_in_flight("m", 1)  # consumed in time: no longer a claim
    make.mono.t += 5.0
    a.flush()
    assert b.in_flight("m") == 1
    a.add_in_flight("m", -1)
    a.flush()
    assert [b.record("x", "p", "fail", CFG) for _ in range(3)][-1] == "opened"
    assert not a.allow("x")
    assert b.in_flight("x") == 0 and b.in_flight("m") == 0


def test_dead_replicas_counts_are_reaped_and_a_live_one_republishes(make) -> None:
    a, b = make(replica_ttl=30.0), make(replica_ttl=30.0)
    a.add_in_flight("m", 1)
    a.add_in_flight("m", 1)
    b.add_in_flight("m", 1)
    assert b.heartbeat() and b.in_flight("m") == 3 and b.replicas == 2
    make.wall.t += 20  # a is silent (dead or not) but not for long enough
    assert b.heartbeat() and b.in_flight("m") == 3
    make.wall.t += 11  # 31 s since a was last heard from
    assert b.heartbeat()
    assert b.in_flight("m") == 1 and b.replicas == 1  # only b's own call is left
    assert a.heartbeat()  # a was alive after all: its counts come back
    assert b.in_flight("m") == 3 and a.replicas == 2
    a.add_in_flight("m", -2)
    a.flush()
    assert b.in_flight("m") == 1


def test_heartbeat_republishes_lost_counts_and_repairs_stale_totals(make) -> None:
    a, b = make(), make()
    a.add_in_flight("m", 2)
    client = redis.Redis.from_url(a.url, decode_responses=True)
    try:
        clear_prefix(a.url, a._p)  # Redis lost everything (a restart without persistence)
        client.hset(a._p + "inflight", "old", 5)  # a total no replica accounts for (older versions left these)
        assert b.in_flight("m") == 0 and b.in_flight("old") == 5
        assert a.heartbeat()
        assert b.in_flight("m") == 2 and b.in_flight("old") == 0
    finally:
        client.close()


def test_closing_a_replica_removes_its_counts(make) -> None:
    a, b = make(), make()
    a.add_in_flight("m", 1)
    b.add_in_flight("m", 1)
    assert b.in_flight("m") == 2
    a.close()
    assert b.in_flight("m") == 1
    b.heartbeat()
    assert b.replicas == 1


def test_a_call_ending_during_an_outage_is_not_left_counted(make, own_server: OwnServer) -> None:
    a = make(own_server.url)
    a.add_in_flight("m", 1)
    assert a.in_flight("m") == 1
    own_server.kill()
    a.add_in_flight("m", -1)  # the end of the call cannot reach Redis
    a.add_in_flight("n", 1)  # a call starting during the outage
    assert a.in_flight("m") == 0 and a.in_flight("n") == 1 and a.status.startswith("local")
    own_server.restart()
    assert a.ping() and a.status == "redis"
    assert a.in_flight("m") == 0 and a.in_flight("n") == 1  # republished as this replica knows them


# ---- budgets during an outage ------------------------------------------------------------------------------


def _two_replicas(make, url: str):
    a, b = make(url), make(url)
    for s in (a, b, a):
        assert s.heartbeat()
    assert a.replicas == b.replicas == 2
    return a, b


def test_in_an_outage_each_replica_spends_at_most_its_share_of_what_is_left(make, own_server: OwnServer) -> None:
    a, b = _two_replicas(make, own_server.url)
    assert a.reserve("daily:d", 0.4, 1.0) == (True, 0.0)
    assert a.settle("daily:d", 0.4, 0.4) == pytest.approx(0.4)
    assert b.spent("daily:d") == (pytest.approx(0.4), 0.0)
    own_server.kill()
    # 0.6 was left and two replicas were alive: each may add 0.3
    assert a.reserve("daily:d", 0.25, 1.0) == (True, pytest.approx(0.4))
    assert a.reserve("daily:d", 0.1, 1.0) == (False, pytest.approx(0.65))
    assert b.reserve("daily:d", 0.3, 1.0) == (True, pytest.approx(0.4))
    assert b.reserve("daily:d", 0.05, 1.0)[0] is False
    assert a.settle("daily:d", 0.25, 0.2) == pytest.approx(0.6)
    assert a.reserve("daily:d", 0.1, 1.0)[0] is True  # the unspent 0.05 of a's share, and no more
    assert a.reserve("daily:d", 0.01, 1.0)[0] is False
    assert a.settle("daily:d", 0.1, 0.1) == pytest.approx(0.7)
    assert b.settle("daily:d", 0.3, 0.3) == pytest.approx(0.7)
    # a key neither replica saw before the outage: half the limit each
    assert a.reserve("daily:new", 0.5, 1.0)[0] and not a.reserve("daily:new", 0.01, 1.0)[0]
    own_server.restart()
    assert a.ping() and b.ping()
    # this Redis kept nothing (no persistence): the replicas detect the reset and re-publish their own spend,
    # 0.4 from before the outage plus the outage's 0.2 + 0.1 + 0.3, and a's open hold
    assert a.spent("daily:d") == (pytest.approx(1.0), pytest.approx(0.0))
    assert a.spent("daily:new") == (pytest.approx(0.0), pytest.approx(0.5))
    assert a.settle("daily:new", 0.5, 0.4) == pytest.approx(0.4)  # settled in Redis now
    assert b.spent("daily:new") == (pytest.approx(0.4), pytest.approx(0.0))


def test_heartbeats_keep_the_spend_figure_a_replica_falls_back_on_current(make, own_server: OwnServer) -> None:
    a, b = _two_replicas(make, own_server.url)
    assert b.reserve("daily:d", 0.1, 1.0)[0] and b.settle("daily:d", 0.1, 0.1) == pytest.approx(0.1)
    assert a.reserve("daily:d", 0.5, 1.0)[0] and a.settle("daily:d", 0.5, 0.5) == pytest.approx(0.6)
    assert b.heartbeat()  # b sees 0.6, not the 0.1 of its own last call
    own_server.kill()
    assert not b.reserve("daily:d", 0.25, 1.0)[0]  # 0.6 + 0.4 / 2 = 0.8 is b's ceiling
    assert b.reserve("daily:d", 0.2, 1.0) == (True, pytest.approx(0.6))


def test_a_reservation_held_in_redis_is_settled_once_in_an_outage(make, own_server: OwnServer) -> None:
    a = make(own_server.url)
    assert a.heartbeat() and a.replicas == 1
    assert a.reserve("daily:d", 0.3, 1.0) == (True, 0.0)  # held in Redis
    own_server.kill()
    assert a.settle("daily:d", 0.3, 0.2) == pytest.approx(0.2)  # the hold is released, not counted twice
    assert a.spent("daily:d") == (pytest.approx(0.2), pytest.approx(0.0))
    assert a.reserve("daily:d", 0.8, 1.0) == (True, pytest.approx(0.2))
    assert a.settle("daily:d", 0.8, 0.7) == pytest.approx(0.9)
    own_server.restart()
    assert a.ping()
    assert a.spent("daily:d") == (pytest.approx(0.9), pytest.approx(0.0))


def test_a_late_message_does_not_undo_a_newer_count(make) -> None:
    a, b = make(), make()
    a.add_in_flight("m", 1)
    a.add_in_flight("m", 1)
    assert b.in_flight("m") == 2
    a._flush_script(keys=a._kf, args=[a.replica_id, "", 1, "m", 1, 1])  # the first +1's message, arriving late
    assert b.in_flight("m") == 2


@pytest.mark.parametrize("refresh", [0.0, 0.1])  # every call synchronous / the fast paths and the sender
def test_concurrent_requests_on_one_replica_leave_no_count_behind(make, refresh: float) -> None:
    from providers.state.redis_store import RedisStore

    b = make()
    a = RedisStore(b.url, prefix=b._p, wall=make.wall, refresh=refresh)  # real clock and background thread
    seen: list[int] = []
    try:

        def worker() -> None:
            for i in range(150):
                plain_request(a, model=f"m{i % 3}")

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            seen.append(b.in_flight("m0"))
        for t in threads:
            t.join()
        a.flush()
        assert all(0 <= n <= 4 for n in seen)
        assert [b.in_flight(f"m{i}") for i in range(3)] == [0, 0, 0]
        assert sum(s.calls for s in b.stats().values()) == 600
    finally:
        a.close()


def test_an_expired_claim_is_published_by_a_heartbeat_too(make) -> None:
    """A claim that expires just before a heartbeat (not a flush) must still leave its 0 in Redis."""
    a, b = make(claim_ttl=2.0), make()
    assert a.allow("n") and b.in_flight("n") == 1  # claimed, never started (no add_in_flight on this replica)
    make.mono.t += 2.5
    assert a.heartbeat()  # the expiry happens inside the heartbeat
    assert b.in_flight("n") == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_is_a_replica_of_its_own(make) -> None:
    """A store created before a fork (a pre-loading worker server): the child gets its own replica id, sender
    thread and connections, and its calls in flight count apart from the parent's."""
    from providers.state.redis_store import RedisStore

    b = make()
    a = RedisStore(b.url, prefix=b._p, wall=make.wall, refresh=60.0)  # with its background sender
    try:
        a.unavailable()
        assert a.allow("f")
        a.add_in_flight("f", 1)
        a.flush()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report its replica id and whether its own call landed, then leave at once
            code = 1
            try:
                os.close(read)
                a.unavailable()
                assert a.allow("f") and a._thread is not None and a._thread.is_alive()
                a.add_in_flight("f", 1)
                a.flush()
                os.write(write, a.replica_id.encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        child_id = os.read(read, 64).decode()
        os.close(read)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert child_id and child_id != a.replica_id
        assert b.in_flight("f") == 2  # the parent's call and the child's, counted apart
        a.add_in_flight("f", -1)
        a.flush()
        assert b.in_flight("f") == 1  # the parent's decrement did not touch the child's count
    finally:
        a.close()
