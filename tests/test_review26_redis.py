"""Review attacks on ab6a8f2 / 2142e83 (`_mark_down` / `_mark_up`, now in providers/state/outage.py, the AGAIN sentinel
of providers/state/spend.py): recoveries whose heartbeat fails (flaps) keep the outage's figures and share; the
outage's spend and holds reach Redis once at the recovery that works; replicas in one outage stay within the limit.
Against a real redis-server (skipped without one)."""

# ruff: noqa: F811 (the tests take the fixtures imported from tests.test_redis_holds)
from __future__ import annotations

import random
import threading
import time

import pytest

from tests.test_redis_holds import KEY, Mono, _spend, before_the_gate, make, redis_server  # noqa: F401 (fixtures)
from tests.test_redis_store import REDIS_BIN, Clock, RedisServer
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(REDIS_BIN is None, reason="no redis-server binary (apt-get install redis-server)")
redis = pytest.importorskip("redis", reason="redis-py not installed (pip install -e '.[test]')")


def _pause(url: str, ms: int) -> None:
    """Every command waits `ms` (a store with timeout=0.1 times out), then Redis answers with its data."""
    client = redis.Redis.from_url(url)
    try:
        client.execute_command("CLIENT", "PAUSE", str(ms), "ALL")
    finally:
        client.close()


def _wait_unpaused(url: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        assert client.ping()  # blocks until the pause ends
    finally:
        client.close()


def _broken(*args, **kw):
    raise redis.exceptions.ConnectionError("Connection closed by server.")


def _flap(store, mono: Mono) -> None:
    """A recovery whose heartbeat fails: Redis answers one call, the heartbeat that would push the outage fails."""
    mono.t += 1.0
    beat, store._beat_script = store._beat_script, _broken
    try:
        assert store.in_flight("m") == 0
    finally:
        store._beat_script = beat
    assert store.status != "redis"


def _raw_spent(url: str, prefix: str) -> tuple[float, float]:
    """(spent, reserved) of KEY read through a fresh store that makes no heartbeat (not a replica)."""
    from providers.state.redis_store import RedisStore

    reader = RedisStore(url, prefix=prefix, background=False, wall=Clock(), refresh=0.0)
    try:
        return reader.spent(KEY)
    finally:
        reader._closed = True  # not a replica: nothing to retire
        reader._redis.close()


# ---- several flaps, then a recovery that works -------------------------------------------------------------


def test_three_flaps_without_a_reset_keep_the_share_and_add_the_spend_once(make, caplog) -> None:
    a, b = make(retry=1.0, timeout=0.1), make(retry=1.0, timeout=0.1)
    assert a.heartbeat() and b.heartbeat() and a.heartbeat()
    assert a.replicas == 2
    _spend(a, 0.2, 0.2)
    with caplog.at_level("WARNING", logger="modelroute.state"):
        _pause(a.url, 400)
        assert a.in_flight("m") == 0 and a.status != "redis"
        assert a.reserve(KEY, 0.3, 1.0)[0]  # its share of the 0.8 left is 0.4
        assert a.settle(KEY, 0.3, 0.3) == pytest.approx(0.5)
        _wait_unpaused(a.url)
        _flap(a, make.mono)
        assert a.reserve(KEY, 0.15, 1.0)[0] is False  # 0.1 of the share is left, not a new share of 0.5 / 2
        assert a.reserve(KEY, 0.05, 1.0)[0]
        assert a.settle(KEY, 0.05, 0.05) == pytest.approx(0.55)
        _flap(a, make.mono)
        assert a.reserve(KEY, 0.1, 1.0)[0] is False  # 0.05 left
        assert a.reserve(KEY, 0.05, 1.0)[0]
        assert a.settle(KEY, 0.05, 0.05) == pytest.approx(0.6)
        _flap(a, make.mono)
        assert a.reserve(KEY, 0.01, 1.0)[0] is False  # the share is used up
        assert b.spent(KEY) == (pytest.approx(0.2), 0.0)  # nothing of the outage reached Redis yet
        make.mono.t += 1.0
        assert a.ping() and a.status == "redis"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 1  # one outage through three flaps
    assert sum("reachable again" in m for m in messages) == 1
    assert b.spent(KEY) == (pytest.approx(0.6), 0.0)  # 0.2 before, 0.4 during the outage, added once
    assert a.heartbeat() and b.heartbeat() and b.spent(KEY) == (pytest.approx(0.6), 0.0)
    assert a.reserve(KEY, 0.4, 1.0)[0] and not a.reserve(KEY, 0.01, 1.0)[0]  # Redis's figure: 0.4 left


def test_three_flaps_after_a_restart_keep_the_share_and_republish_the_spend_once(make, caplog) -> None:
    server = RedisServer().start()
    try:
        a, b = make(server.url, retry=1.0), make(server.url, retry=1.0)
        assert a.heartbeat() and b.heartbeat() and a.heartbeat()
        _spend(a, 0.2, 0.2)
        port = server.port
        server.kill()
        with caplog.at_level("WARNING", logger="modelroute.state"):
            assert a.reserve(KEY, 0.3, 1.0)[0]  # its share of the 0.8 left is 0.4
            assert a.settle(KEY, 0.3, 0.3) == pytest.approx(0.5)
            server = RedisServer(port).start()  # empty
            for _ in range(3):
                _flap(a, make.mono)
                assert a.reserve(KEY, 0.15, 1.0)[0] is False  # never a second share
            assert a.reserve(KEY, 0.1, 1.0)[0]
            assert a.settle(KEY, 0.1, 0.08) == pytest.approx(0.58)
            _flap(a, make.mono)
            assert a.reserve(KEY, 0.03, 1.0)[0] is False  # 0.02 left
            make.mono.t += 1.0
            assert a.ping() and a.status == "redis"
        messages = [r.getMessage() for r in caplog.records]
        assert sum("unreachable" in m for m in messages) == 1
        assert sum("reachable again" in m for m in messages) == 1
        assert a.spent(KEY) == (pytest.approx(0.58), 0.0)  # re-published once
        assert a.heartbeat() and b.heartbeat() and a.heartbeat()
        assert b.spent(KEY) == (pytest.approx(0.58), 0.0)
    finally:
        server.kill()


# ---- holds made during the outage, open through a flap -----------------------------------------------------


@pytest.mark.parametrize("settle_before_recovery", [False, True])
def test_outage_holds_open_through_a_flap_reach_redis_once(make, settle_before_recovery: bool) -> None:
    a, b = make(retry=1.0, timeout=0.1), make(retry=1.0, timeout=0.1)
    assert a.heartbeat() and b.heartbeat() and a.heartbeat()
    _spend(a, 0.2, 0.2)
    assert a.reserve(KEY, 0.1, 1.0)[0]  # a hold in Redis, open through the outage
    _pause(a.url, 400)
    assert a.in_flight("m") == 0 and a.status != "redis"
    # share: (1 - 0.3) / 2 = 0.35 on top of the 0.3 seen
    assert a.reserve(KEY, 0.1, 1.0)[0] and a.reserve(KEY, 0.15, 1.0)[0]  # local holds, open
    _wait_unpaused(a.url)
    _flap(a, make.mono)
    assert b.spent(KEY) == (pytest.approx(0.2), pytest.approx(0.1))  # the flap published nothing
    assert a.reserve(KEY, 0.15, 1.0)[0] is False  # 0.1 of the share is left
    assert a.reserve(KEY, 0.1, 1.0)[0]
    _flap(a, make.mono)
    assert a.reserve(KEY, 0.01, 1.0)[0] is False
    if settle_before_recovery:
        assert a.settle(KEY, 0.1, 0.05) == pytest.approx(0.25)  # the Redis hold
        assert a.settle(KEY, 0.1, 0.1) == pytest.approx(0.35)
        assert a.settle(KEY, 0.15, 0.1) == pytest.approx(0.45)
        _flap(a, make.mono)
        assert a.settle(KEY, 0.1, 0.1) == pytest.approx(0.55)
        make.mono.t += 1.0
        assert a.ping() and a.status == "redis"
        assert b.spent(KEY) == (pytest.approx(0.55), 0.0)
    else:
        make.mono.t += 1.0
        assert a.ping() and a.status == "redis"
        assert b.spent(KEY) == (pytest.approx(0.2), pytest.approx(0.45))  # the holds, each once
        assert a.settle(KEY, 0.1, 0.05) == pytest.approx(0.25)
        assert a.settle(KEY, 0.1, 0.1) == pytest.approx(0.35)
        assert a.settle(KEY, 0.15, 0.1) == pytest.approx(0.45)
        assert a.settle(KEY, 0.1, 0.1) == pytest.approx(0.55)
        assert b.spent(KEY) == (pytest.approx(0.55), 0.0)
    assert a.heartbeat() and b.spent(KEY) == (pytest.approx(0.55), 0.0)


# ---- two replicas in one outage --------------------------------------------------------------------------


@pytest.mark.parametrize("restart", [False, True])
def test_two_replicas_one_flapping_one_recovering_stay_within_the_limit_plus_the_unseen(make, restart: bool) -> None:
    server = RedisServer().start()
    try:
        a, b = make(server.url, retry=1.0, timeout=0.1), make(server.url, retry=1.0, timeout=0.1)
        assert a.heartbeat() and b.heartbeat() and a.heartbeat()
        _spend(a, 0.1, 0.1)
        _spend(b, 0.1, 0.1)
        assert a.spent(KEY) == (pytest.approx(0.2), 0.0) and b.spent(KEY) == (pytest.approx(0.2), 0.0)
        port = server.port
        if restart:
            server.kill()
        else:
            _pause(server.url, 400)
        assert a.in_flight("m") == 0 and b.in_flight("m") == 0
        assert a.status != "redis" and b.status != "redis"

        def fill(store, step: float) -> float:
            got = 0.0
            while store.reserve(KEY, step, 1.0)[0]:
                assert store.settle(KEY, step, step) > 0
                got += step
            return got

        assert fill(a, 0.1) == pytest.approx(0.4) and fill(b, 0.1) == pytest.approx(0.4)  # 0.8 / 2 each
        if restart:
            server = RedisServer(port).start()
        else:
            _wait_unpaused(server.url)
        _flap(a, make.mono)  # a flaps; b recovers
        assert b.ping() and b.status == "redis"
        make.wall.t += 10.0  # past a reset's grace (8 s), which would make b's second hold wait for it
        assert fill(a, 0.05) == pytest.approx(0.0)  # a's share is used up: no second one after the flap
        # b is back on Redis, whose figure misses what a (still in the outage) spent: b's grant there is bounded
        # only by "the mean of what each had not seen" (docs/state.md), here a's 0.4
        late = fill(b, 0.05)
        assert late <= 0.4 + 1e-9
        _flap(a, make.mono)
        assert fill(a, 0.01) == pytest.approx(0.0)
        make.mono.t += 1.0
        assert a.ping() and a.status == "redis"
        spent, reserved = b.spent(KEY)
        assert reserved == 0.0 and spent == pytest.approx(1.0 + late)  # each spend once: no loss, no double count
        assert spent <= 1.0 + 0.4 + 1e-9  # the limit plus what b's figure had not seen
        assert not a.reserve(KEY, 0.01, 1.0)[0] and not b.reserve(KEY, 0.01, 1.0)[0]
    finally:
        server.kill()


# ---- the first call after an outage, before the push ------------------------------------------------------


def _alone_in_an_outage(make):
    """One replica (N = 1) that spent 0.2 of 1.0, now in an outage (Redis paused for 0.4 s)."""
    a = make(retry=1.0, timeout=0.1)
    assert a.heartbeat() and a.replicas == 1
    _spend(a, 0.2, 0.2)
    _pause(a.url, 400)
    assert a.in_flight("m") == 0 and a.status != "redis"
    return a


def test_a_lone_replicas_first_reserve_after_an_outage_sees_the_outages_spend(make) -> None:
    a = _alone_in_an_outage(make)
    assert a.reserve(KEY, 0.8, 1.0)[0]  # the whole share (N = 1)
    assert a.settle(KEY, 0.8, 0.8) == pytest.approx(1.0)
    _wait_unpaused(a.url)
    make.mono.t += 1.0
    ok, _ = a.reserve(KEY, 0.5, 1.0)  # the first call after the outage
    if ok:
        a.settle(KEY, 0.5, 0.5)
    spent, reserved = _raw_spent(a.url, make.prefix)
    assert spent + reserved <= 1.0 + 1e-9, f"spent {spent} + reserved {reserved} over the limit 1.0"


def test_a_flap_whose_answered_call_is_a_reserve_counts_that_hold_in_the_share(make) -> None:
    a = _alone_in_an_outage(make)
    assert a.reserve(KEY, 0.4, 1.0)[0]  # a local hold, open (share 0.8)
    _wait_unpaused(a.url)
    make.mono.t += 1.0
    beat, a._beat_script = a._beat_script, _broken
    try:
        assert a.reserve(KEY, 0.3, 1.0)[0]  # its recovery fails first: a local hold, in the share
    finally:
        a._beat_script = beat
    assert a.status != "redis"
    granted = 0.0
    while a.reserve(KEY, 0.05, 1.0)[0]:  # the rest of the outage's share
        granted += 0.05
    # committed: 0.2 spent + 0.4 local + 0.3 in Redis = 0.9, so at most 0.1 more
    assert granted <= 0.1 + 1e-9, f"granted {granted} more on top of 0.9 committed (limit 1.0)"


def test_a_settle_that_waited_while_the_outage_ended_releases_its_hold_in_redis(make) -> None:
    """AGAIN in settle(): a settle of a local hold that fell back to local state and, while it waited for the
    budget gate, saw another thread end the outage (republishing the hold) releases it in Redis."""
    a, b = make(retry=1.0, timeout=0.1), make(retry=1.0, timeout=0.1)
    assert a.heartbeat() and b.heartbeat() and a.heartbeat()
    _spend(a, 0.2, 0.2)
    _pause(a.url, 400)
    assert a.in_flight("m") == 0 and a.status != "redis"
    assert a.reserve(KEY, 0.3, 1.0)[0]  # a local hold
    _wait_unpaused(a.url)
    _flap(a, make.mono)  # the hold stays local through a flap; settle() below is still inside `retry`

    def ping_later() -> None:  # another thread's heartbeat, `retry` later, ends the outage
        make.mono.t += 1.0
        assert a.ping()

    hooks = [ping_later]

    before_the_gate(a, hooks)
    assert a.settle(KEY, 0.3, 0.25) == pytest.approx(0.45)  # Redis's total, not the outage's
    assert a.status == "redis" and not hooks
    assert b.spent(KEY) == (pytest.approx(0.45), 0.0)  # the republished hold released, the spend added once
    assert a.heartbeat() and b.spent(KEY) == (pytest.approx(0.45), 0.0)


# ---- many threads, Redis toggled, heartbeats failing every other time -------------------------------------


def test_threads_hammering_one_replica_through_pauses_and_flaps_settle_exactly(make) -> None:
    a = make(real=True, background=False, retry=0.05, timeout=0.1, hold_lease=30.0)
    assert a.heartbeat() and a.replicas == 1
    limit, hold = 3.0, 0.03
    calls = [0]
    beat = a._beat_script

    def flaky(*args, **kw):
        calls[0] += 1
        if calls[0] % 2 == 0:
            raise redis.exceptions.ConnectionError("Connection closed by server.")
        return beat(*args, **kw)

    a._beat_script = flaky
    settled: list[float] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                ok = a.reserve(KEY, hold, limit)[0]
                if ok:
                    cost = rng.choice([0.0, 0.01, 0.02, 0.03])
                    time.sleep(rng.random() * 0.005)
                    a.settle(KEY, hold, cost)
                    settled.append(cost)
                else:
                    time.sleep(0.002)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def beater() -> None:
        while not stop.is_set():
            a.heartbeat()
            time.sleep(0.03)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)] + [threading.Thread(target=beater)]
    for t in threads:
        t.start()
    try:
        for _ in range(5):
            time.sleep(0.15)
            _pause(a.url, 250)
            time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors
    a._beat_script = beat
    wait_until(lambda: a.ping() and a.status == "redis", "a recovery that works")
    assert a.heartbeat()
    spent, reserved = _raw_spent(a.url, make.prefix)
    assert reserved == pytest.approx(0.0, abs=1e-9)
    assert spent == pytest.approx(sum(settled))  # every settled spend once: none lost, none counted twice
    # the outage share starts from the figure last seen, which lags while answers to the 8 threads' calls arrive
    # out of order (docs/state.md: shares assume current figures): at most one hold per thread over. The exact
    # bounds without that lag are the deterministic tests above.
    assert spent <= limit + 8 * hold + 1e-9
