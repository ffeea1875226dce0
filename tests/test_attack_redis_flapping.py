"""Attack: Redis flapping while budget calls wait (providers/state/spend.py, FLIP_TURNS). A real redis-server and a
RedisStore in; every time a budget call reaches the budget gate, another thread has just started or ended the outage
(a failed call, a recovery). Out: reserve() gives up with a RedisError after FLIP_TURNS turns, holding nothing;
spent() answers with what Redis showed last; settle(), which must not lose spend, keeps going and records it once when
the flapping stops. Skipped without redis-server / redis-py."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from tests.test_redis_holds import KEY, Mono, _spend, make, redis_server  # noqa: F401 (fixtures)
from tests.test_redis_store import REDIS_BIN

pytestmark = pytest.mark.skipif(REDIS_BIN is None, reason="no redis-server binary (apt-get install redis-server)")
redis = pytest.importorskip("redis", reason="redis-py not installed (pip install -e '.[test]')")

RETRY = 1.0


def _flapping(store: Any, mono: Mono, flips: int) -> list[int]:
    """The next `flips` entries into the store's budget gate each flip the outage first: an error elsewhere starts
    it, or, `retry` later, a heartbeat elsewhere ends it. Returns a one-item list counting the flips done."""
    from providers.state.spend import Gate

    done = [0]
    busy = threading.local()

    class Flapping(Gate):
        def shared(self):
            if done[0] < flips and not getattr(busy, "on", False):
                busy.on = True
                try:
                    if store._down:
                        mono.t += RETRY
                        assert store.ping()
                    else:
                        store._mark_down(redis.exceptions.ConnectionError("Connection reset by peer"))
                    done[0] += 1
                finally:
                    busy.on = False
            return super().shared()

    store._budget_gate = Flapping()
    return done


def _within(seconds: float, call: Callable[[], Any]) -> Any:
    """call() in a thread: its result, or its exception re-raised; fails if it has not returned in `seconds` (before
    the bound, a reserve under endless flapping never returned)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = call()
        except BaseException as exc:  # handed to the test thread
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"the call was still running after {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_a_reserve_under_endless_flapping_gives_up_holding_nothing(make) -> None:  # noqa: F811
    from providers.state.spend import FLIP_TURNS

    a, b = make(retry=RETRY), make(retry=RETRY)
    _spend(a, 0.2, 0.2)
    flips = _flapping(a, make.mono, 10**6)
    with pytest.raises(redis.exceptions.RedisError, match=f"went down or came back {FLIP_TURNS} times"):
        _within(10, lambda: a.reserve(KEY, 0.3, 1.0))
    assert flips[0] == FLIP_TURNS  # one flip per turn, and no turn after the bound
    assert b.spent(KEY) == (pytest.approx(0.2), 0.0)  # no hold in Redis
    # the flapping stops: nothing local was held either, and the whole rest of the limit can be had
    flips = _flapping(a, make.mono, 0)
    if a.status != "redis":
        make.mono.t += RETRY
        assert a.ping()
    assert a.reserve(KEY, 0.8, 1.0)[0]
    assert not a.reserve(KEY, 0.01, 1.0)[0]
    assert b.spent(KEY) == (pytest.approx(0.2), pytest.approx(0.8))


def test_a_spent_read_under_endless_flapping_answers_what_redis_showed_last(make) -> None:  # noqa: F811
    """A read feeds decide() (spend.today, budget.left), so it never fails: after FLIP_TURNS turns it answers with
    the figures Redis showed last."""
    from providers.state.spend import FLIP_TURNS

    a, b = make(retry=RETRY), make(retry=RETRY)
    _spend(a, 0.2, 0.2)
    _spend(b, 0.1, 0.1)  # not seen by `a` yet
    flips = _flapping(a, make.mono, 10**6)
    assert _within(10, lambda: a.spent(KEY)) == (pytest.approx(0.3), 0.0)  # the recoveries' heartbeats saw b's spend
    assert flips[0] == FLIP_TURNS


def test_a_read_that_waited_while_the_outage_ended_does_not_seed_the_next_outage(make) -> None:  # noqa: F811
    """A spent() that fell back to local state and, while it waited for the budget gate, saw another thread end the
    outage reads Redis instead. Seeding the outage figures then would start the next outage from them: here 0.2
    instead of the 0.8 spent by then, and this replica's share would take the budget past its limit."""
    from tests.test_redis_holds import before_the_gate
    from tests.test_review26_redis import _pause, _wait_unpaused

    a, b = make(retry=RETRY, timeout=0.1), make(retry=RETRY, timeout=0.1)
    assert a.heartbeat() and b.heartbeat() and a.heartbeat() and a.replicas == 2
    _spend(a, 0.2, 0.2)
    _pause(a.url, 400)
    assert a.in_flight("m") == 0 and a.status != "redis"  # an outage on `a`
    _wait_unpaused(a.url)

    def end_the_outage() -> None:  # another thread's heartbeat, `retry` later
        make.mono.t += RETRY
        assert a.ping()

    hooks = [end_the_outage]
    before_the_gate(a, hooks)
    assert a.spent(KEY) == (pytest.approx(0.2), 0.0)  # read in Redis
    assert a.status == "redis" and not hooks
    _spend(b, 0.6, 0.6)
    assert a.heartbeat()  # `a` has seen 0.8
    _pause(a.url, 400)
    try:
        assert a.in_flight("m") == 0 and a.status != "redis"  # the next outage
        granted = 0.0
        while a.reserve(KEY, 0.05, 1.0)[0]:
            granted += 0.05
        # a share of what is left, (1.0 - 0.8) / 2 replicas: not (1.0 - 0.2) / 2 from a stale start
        assert granted <= 0.1 + 1e-9, f"granted {granted} on top of 0.8 spent (limit 1.0, 2 replicas)"
    finally:
        _wait_unpaused(a.url)


def test_a_settle_keeps_going_through_flapping_and_records_the_spend_once(make) -> None:  # noqa: F811
    from providers.state.spend import FLIP_TURNS

    a, b = make(retry=RETRY), make(retry=RETRY)
    assert a.reserve(KEY, 0.3, 1.0)[0]  # a hold in Redis
    flips = _flapping(a, make.mono, 3 * FLIP_TURNS)  # more flips than a reserve would take, then it holds still
    total = _within(10, lambda: a.settle(KEY, 0.3, 0.25))
    assert flips[0] == 3 * FLIP_TURNS
    assert total == pytest.approx(0.25)
    if a.status != "redis":
        make.mono.t += RETRY
        assert a.ping()
    assert a.heartbeat()
    assert b.spent(KEY) == (pytest.approx(0.25), 0.0)  # the hold released, the spend added once
