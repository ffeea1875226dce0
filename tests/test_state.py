"""Tests for the state store (engine/state.py): calls recorded with an injected clock in, circuit states,
the cached unavailable set, latency, health stats and spend out; plus the circuit breaker end to end."""

from __future__ import annotations

import threading

import pytest

from engine.runtime.state import PROBE, CircuitConfig, CircuitInfo, ExecutionStore, MemoryStore, StateStore
from providers.execution.events import Event
from providers.execution.resilience import RoutingError
from tests.engines import engine_for
from tests.fakeserver import FakeServer, Fault, Reply

CFG = CircuitConfig(failures=3, window=10.0, cooldown=30.0, min_samples=3)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> MemoryStore:
    return MemoryStore(clock=clock, wall=lambda: 1_700_000_000.0 + clock.t)


def fail(store: MemoryStore, model: str = "m", n: int = 1, probe: bool = False) -> list[str | None]:
    return [store.record(model, "p", "fail", CFG, latency_ms=5, probe=probe) for _ in range(n)]


def test_store_implements_both_interfaces(store: MemoryStore) -> None:
    assert isinstance(store, StateStore)
    assert all(hasattr(store, name) for name in ExecutionStore.__dict__ if not name.startswith("_"))


def test_circuit_opens_after_n_failures_in_the_window(store: MemoryStore, clock: Clock) -> None:
    assert fail(store, n=2) == [None, None] and store.unavailable() == frozenset()
    clock.t += 11  # the first two fall out of the window
    assert fail(store, n=2) == [None, None]
    assert fail(store) == ["opened"]
    assert store.unavailable() == {"m"} and not store.allow("m")
    info = store.circuit("m")
    assert info.state == "open" and info.until == pytest.approx(1_700_000_000.0 + clock.t + 30)


def test_unavailable_is_a_cached_frozenset(store: MemoryStore) -> None:
    fail(store, n=3)
    first = store.unavailable()
    assert isinstance(first, frozenset) and store.unavailable() is first  # no rebuild per decide()


def test_half_open_probe_then_closed(store: MemoryStore, clock: Clock) -> None:
    fail(store, n=3)
    clock.t += 30
    assert store.unavailable() == frozenset()  # cooldown over: decide() may pick it again
    assert store.circuit("m").state == "half_open"
    assert store.allow("m")  # this caller is the probe
    assert not store.allow("m") and store.unavailable() == {"m"}  # one probe at a time
    assert store.record("m", "p", "ok", CFG, latency_ms=5, probe=True) == "closed"
    assert store.unavailable() == frozenset() and store.allow("m") and store.circuit("m").failures == 0


def test_half_open_probe_failure_reopens(store: MemoryStore, clock: Clock) -> None:
    fail(store, n=3)
    clock.t += 31
    assert store.allow("m")
    assert fail(store, probe=True) == ["opened"]
    assert store.circuit("m").until == pytest.approx(1_700_000_000.0 + clock.t + 30)


def test_forced_probe_before_the_cooldown_then_closed(store: MemoryStore, clock: Clock) -> None:
    assert store.probe("m") and store.circuit("m") == CircuitInfo("m", "closed", 0)  # closed: nothing to claim
    fail(store, n=3)
    clock.t += 5  # the cooldown still runs
    assert not store.allow("m")
    assert store.probe("m")  # forced: this caller is the half-open probe
    assert store.circuit("m").state == "half_open" and store.unavailable() == {"m"} and not store.allow("m")
    assert not store.probe("m")  # one probe at a time
    assert store.record("m", "p", "ok", CFG, latency_ms=5, probe=True) == "closed"
    assert store.circuit("m") == CircuitInfo("m", "closed", 0) and store.unavailable() == frozenset()


def test_forced_probe_failure_reopens_for_a_new_cooldown(store: MemoryStore, clock: Clock) -> None:
    fail(store, n=3)
    clock.t += 5
    assert store.probe("m")
    clock.t += 2
    assert fail(store, probe=True) == ["opened"]
    info = store.circuit("m")
    assert info.state == "open" and info.until == pytest.approx(1_700_000_000.0 + clock.t + 30)
    assert store.unavailable() == {"m"} and not store.allow("m")
    assert store.probe("m") and not store.probe("m")  # the next forced probe may be claimed at once


def test_forced_probe_without_a_verdict_is_released(store: MemoryStore, clock: Clock) -> None:
    fail(store, n=3)
    assert store.probe("m")
    assert (
        store.record("m", "p", "neutral", CFG, probe=True) is None
    )  # no verdict: the probe is released, still half-open
    assert store.circuit("m").state == "half_open" and store.probe("m") and not store.probe("m")
    assert store.record("m", "p", "cancelled", CFG, probe=True) is None
    assert store.probe("m")


def test_neutral_and_cancelled_release_the_probe(store: MemoryStore, clock: Clock) -> None:
    fail(store, n=3)
    clock.t += 31
    assert store.allow("m")
    assert store.record("m", "p", "neutral", CFG, probe=True) is None
    assert store.allow("m")
    assert store.record("m", "p", "cancelled", CFG, probe=True) is None
    assert store.circuit("m").state == "half_open" and store.allow("m")


def test_only_the_probe_decides_a_half_open_circuit(store: MemoryStore, clock: Clock) -> None:
    """A call that started before the circuit opened ends while the probe runs: its outcome changes nothing."""
    fail(store, n=3)
    clock.t += 31
    assert store.allow("m") == PROBE
    assert fail(store) == [None] and store.record("m", "p", "ok", CFG) is None  # not the probe
    assert store.circuit("m").state == "half_open" and not store.allow("m")  # the probe still runs
    assert store.record("m", "p", "ok", CFG, probe=True) == "closed"
    assert store.allow("m") is True  # closed: no probe to claim


def test_neutral_failures_do_not_open_the_circuit(store: MemoryStore) -> None:
    for _ in range(10):
        store.record("m", "p", "neutral", CFG)
    assert store.circuit("m").state == "closed" and store.stats()["m"].failures == 10


def test_latency_is_exposed_after_min_samples(store: MemoryStore) -> None:
    for ms in (100, 100):
        store.record("m", "p", "ok", CFG, latency_ms=ms)
    assert "m" not in store.latency_ms()
    store.record("m", "p", "ok", CFG, latency_ms=200)
    assert store.latency_ms()["m"] == pytest.approx(0.8 * 100 + 0.2 * 200)


def test_health_stats(store: MemoryStore) -> None:
    store.record("m", "p", "ok", CFG, latency_ms=10, input_tokens=5, output_tokens=2, cost=0.5)
    store.record("m", "p", "fail", CFG)
    s = store.stats()["m"]
    assert (s.calls, s.failures, s.success_rate, s.input_tokens, s.cost, s.latency_ms) == (2, 1, 0.5, 5, 0.5, 10)


def test_in_flight(store: MemoryStore) -> None:
    store.add_in_flight("m", 1)
    store.add_in_flight("m", 1)
    store.add_in_flight("m", -1)
    assert store.in_flight("m") == 1 and store.in_flight("other") == 0


def test_reserve_settle_never_overspends_across_threads(store: MemoryStore) -> None:
    granted: list[bool] = []

    def worker() -> None:
        for _ in range(50):
            ok, _ = store.reserve("k", 1.0, 100.0)
            granted.append(ok)
            if ok:
                store.settle("k", 1.0, 0.9)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spent, reserved = store.spent("k")
    assert reserved == pytest.approx(0) and spent <= 100.0 and spent == pytest.approx(0.9 * sum(granted))


# ---- end to end --------------------------------------------------------------------------------------------
POLICY = """
set circuit.failures = 2
set circuit.cooldown = 30s
set retry.attempts = 0
otherwise prefer cheapest where provider in [acme] fallback beta-chat
"""


def test_circuit_breaker_end_to_end(fake_server: FakeServer, clock: Clock, store: MemoryStore) -> None:
    with engine_for(fake_server, POLICY, state=store) as engine:
        seen: list[Event] = []
        engine.on_event(seen.append)
        fake_server.script("alpha-mini", [Fault.server_error(503), Fault.server_error(503)])
        engine.complete("one")
        engine.complete("two")
        assert [e.kind for e in seen].count("circuit_opened") == 1
        d = engine.decide("three")
        assert d.model == "alpha-large"  # decide() skips the open circuit (alpha-mini is cheaper)
        assert "circuit open until" in engine.decide("four").explain()
        assert engine.complete("five").attempts[0].model == "alpha-large"
        clock.t += 30  # cooldown over: half-open, the next request probes alpha-mini
        fake_server.script("alpha-mini", Reply(text="recovered"))
        c = engine.complete("six")
        assert c.text == "recovered" and [e.kind for e in seen][-1] == "attempt_succeeded"
        assert "circuit_closed" in [e.kind for e in seen]
        assert engine.decide("seven").model == "alpha-mini"


def test_circuit_opening_after_decide_is_skipped_with_a_reason(fake_server: FakeServer, store: MemoryStore) -> None:
    with engine_for(
        fake_server, "set retry.attempts = 0\notherwise use alpha-mini fallback beta-chat, gamma-flash", state=store
    ) as engine:
        for _ in range(5):
            store.record("gamma-flash", "gammalabs", "fail", CircuitConfig())
        assert engine.decide("x").fallbacks == ["beta-chat"]  # decide() drops the open circuit

        def open_beta(event: Event) -> None:  # beta-chat's circuit opens while alpha-mini is being tried
            if event.kind == "attempt_failed" and event.model == "alpha-mini":
                store.record("beta-chat", "betacorp", "fail", CircuitConfig(failures=1))

        engine.on_event(open_beta)
        fake_server.script("alpha-mini", Fault.server_error(500))
        with pytest.raises(RoutingError) as info:
            engine.complete("z")
        skipped = info.value.attempts[1]
        assert (skipped.model, skipped.outcome, skipped.error) == ("beta-chat", "skipped", "CircuitOpen")
        assert "circuit open until" in skipped.message and [r.model for r in fake_server.requests] == ["alpha-mini"]
