"""Health (providers/execution/health.py), warm-up and experiment accounting (providers/execution/experiments.py):
calls and one-token probes against the loopback fake upstream in; engine.usage() (mean latency beside the EWMA,
experiments), engine.health() per model and provider, circuits fed by probes, the background checks of
`health.interval`, `modelroute warmup`, `modelroute serve --warmup` and the experiment series of /metrics out."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine import Engine
from engine.runtime.settings import SETTINGS, Settings
from engine.runtime.state import MemoryStore
from providers.execution import RoutingError
from providers.execution.experiments import ExperimentTally, experiment_of
from providers.execution.health import PROBE_CONCURRENCY, policy_models
from tests.engines import KINDS, TEST_KEY, Engines
from tests.fakeserver import FakeServer, Fault, Reply
from tests.waiting import wait_until

POLICY = """
set retry.attempts = 0
set circuit.failures = 1
when tier == "pro" use alpha-large fallback beta-coder
otherwise use alpha-mini fallback beta-chat
"""
USED = ["alpha-large", "alpha-mini", "beta-chat", "beta-coder"]
LARGE = "alpha-large-2025-01"  # alpha-large's provider id: what the fake upstream sees and scripts by


@pytest.fixture
def make(fake_server: FakeServer) -> Iterator[Engines]:
    engines = Engines(fake_server, default=POLICY)
    yield engines
    engines.close()


def probes(server: FakeServer) -> list[str]:
    """The models that got a one-token request."""
    return sorted(
        "alpha-large" if r.model == LARGE else r.model
        for r in server.requests
        if 1 in (r.body.get("max_completion_tokens"), r.body.get("max_tokens"))
    )


# ---- usage and health ------------------------------------------------------------------------------------------
def test_usage_has_the_mean_latency_beside_the_ewma(make, fake_server: FakeServer) -> None:
    engine = make()
    for _ in range(3):
        engine.complete("hello")
    row = engine.usage()["models"]["alpha-mini"]
    assert row["success_rate"] == 1.0 and row["latency_ms"] > 0 and row["mean_latency_ms"] > 0
    assert engine.usage()["experiments"] == {}


def test_health_per_model_and_provider(make, fake_server: FakeServer) -> None:
    engine = make()
    fake_server.script("alpha-mini", Fault.server_error(500))
    engine.complete("hello")  # alpha-mini fails (its circuit opens: circuit.failures = 1), beta-chat answers
    health = engine.health()
    assert sorted(health["models"]) == USED
    mini, chat = health["models"]["alpha-mini"], health["models"]["beta-chat"]
    assert (mini["healthy"], mini["circuit"], mini["calls"], mini["error_rate"]) == (False, "open", 1, 1.0)
    assert (chat["healthy"], chat["circuit"], chat["success_rate"]) == (True, "closed", 1.0)
    assert chat["latency_ms"] > 0 and chat["latency_ewma_ms"] > 0 and chat["provider"] == "betacorp"
    acme = health["providers"]["acme"]
    assert (acme["healthy"], acme["circuit"], acme["healthy_models"], acme["models"]) == (True, "mixed", 1, 2)
    assert health["models"]["alpha-large"]["calls"] == 0 and health["models"]["alpha-large"]["healthy"]


# ---- probes and warm-up ----------------------------------------------------------------------------------------
def test_warmup_probes_each_model_once_and_reports_it(make, fake_server: FakeServer) -> None:
    engine = make(api_keys={name: TEST_KEY for name in KINDS if name != "betacorp"})
    fake_server.always(LARGE, Fault.server_error(500))
    results = {r.model: r for r in engine.warmup()}
    assert sorted(results) == USED == policy_models(engine.policy)
    assert results["alpha-mini"].status == "ok" and results["alpha-mini"].latency_ms is not None
    assert (results["alpha-large"].status, results["alpha-large"].error) == ("failed", "ServerError")
    assert results["beta-chat"].status == "skipped" and "no API key" in (results["beta-chat"].detail or "")
    assert probes(fake_server) == ["alpha-large", "alpha-mini"]  # one one-token request each, nothing for betacorp
    # the probes fed the store: usage counts them, the failure opened alpha-large's circuit
    assert engine.usage()["models"]["alpha-mini"]["calls"] == 1
    assert engine.state.circuit("alpha-large").state == "open"
    assert engine.health()["models"]["alpha-mini"]["last_probe"]["status"] == "ok"
    again = {r.model: r for r in engine.warmup(["alpha-large"])}
    assert again["alpha-large"].status == "skipped" and again["alpha-large"].error == "CircuitOpen"


def test_warmup_resolves_names_like_a_pin(make, fake_server: FakeServer) -> None:
    from engine import PinError

    engine = make()
    assert [r.model for r in engine.warmup(["gpt-4o-mini"])] == ["alpha-mini"]  # a catalog alias
    assert [r.model for r in engine.warmup(["acme:alpha-mini", "alpha-mini"])] == ["alpha-mini"]  # once each
    assert [r.model for r in engine.warmup("alpha-mini")] == ["alpha-mini"]  # a str is one model
    before = len(fake_server.requests)
    with pytest.raises(PinError, match="did you mean alpha-mini") as info:
        engine.warmup(["alpha-mnii"])
    assert isinstance(info.value, ValueError) and len(fake_server.requests) == before  # refused before any probe


def test_a_probe_takes_the_half_open_claim_and_closes_the_circuit(fake_server: FakeServer) -> None:
    now = [1000.0]
    engine = Engines(fake_server, default=POLICY)(state=MemoryStore(clock=lambda: now[0]))
    try:
        fake_server.script("alpha-mini", Fault.server_error(500))
        engine.complete("hello")
        assert engine.state.circuit("alpha-mini").state == "open"
        now[0] += 31  # past circuit.cooldown: half-open, and the probe is the call that may close it
        [result] = engine.warmup(["alpha-mini"])
        assert result.ok and engine.state.circuit("alpha-mini").state == "closed"
    finally:
        engine.close()


def test_probes_run_a_few_at_a_time(make, fake_server: FakeServer) -> None:
    import threading

    engine = make("otherwise prefer cheapest\n")
    gate = threading.Event()
    fake_server.default = Fault.held(gate)
    models = policy_models(engine.policy)
    assert len(models) > PROBE_CONCURRENCY
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(engine.warmup()))
    worker.start()
    try:
        wait_until(lambda: len(fake_server.requests) >= PROBE_CONCURRENCY, "the first probes")
        assert len(fake_server.requests) == PROBE_CONCURRENCY  # the others wait for a free slot
    finally:
        gate.set()
        worker.join(30)
    assert len(done[0]) == len(models) and all(r.ok for r in done[0])


def _with_interval(engine: Engine, seconds: float | None) -> None:
    """Install the engine's policy with `health.interval` set (as `set health.interval = ...` compiles)."""
    settings = engine.policy.settings
    engine.swap(dataclasses.replace(engine.policy, settings=Settings({**settings.by_name, "health.interval": seconds})))


def test_background_checks_follow_the_policy(make, fake_server: FakeServer) -> None:
    engine = make()
    monitor = engine.executor.health
    assert not monitor.ensure(engine.executor.background_loop())  # no health.interval: nothing runs
    _with_interval(engine, 0.01)
    assert monitor.ensure(engine.executor.background_loop()) and monitor.running
    wait_until(lambda: monitor.rounds >= 2, "two rounds of health checks")
    assert set(probes(fake_server)) == set(USED)
    _with_interval(engine, None)
    wait_until(lambda: not monitor.running, "the checks to stop once the policy unsets the interval")
    engine.stop()


def test_watch_and_the_gateway_start_the_checks(
    tmp_path: Path, fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from providers.gateway.app import create_app
    from tests.test_gateway import ThreadServer, write_policy

    write_policy(tmp_path, fake_server, "otherwise use alpha-mini\n")
    for name in KINDS:
        monkeypatch.setenv(f"TEST_{name.upper()}_KEY", TEST_KEY)
    engine = Engine.load(tmp_path)
    _with_interval(engine, 0.01)
    try:
        engine.watch(poll=True)  # a watching engine checks on its own background loop
        wait_until(lambda: engine.executor.health.rounds >= 1, "a health check of the watching engine")
        engine.stop()
        assert not engine.executor.health.running
        rounds = engine.executor.health.rounds
        with ThreadServer(create_app(engine)):  # the gateway checks on its event loop while it serves
            wait_until(lambda: engine.executor.health.rounds > rounds, "a health check of the gateway")
        assert not engine.executor.health.running  # stopped with the server
    finally:
        engine.stop()
        engine.close()


@pytest.mark.skipif("health.interval" not in SETTINGS, reason="`set health.interval` is not in the language yet")
def test_a_watching_engine_runs_the_checks_of_set_health_interval(
    tmp_path: Path, fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_gateway import write_policy

    write_policy(tmp_path, fake_server, "set health.interval = 1s\notherwise use alpha-mini\n")
    for name in KINDS:
        monkeypatch.setenv(f"TEST_{name.upper()}_KEY", TEST_KEY)
    engine = Engine.load(tmp_path, watch=True, poll=True)
    try:
        wait_until(lambda: "alpha-mini" in probes(fake_server), "the first health check")
        assert engine.executor.health.running
    finally:
        engine.stop()
        engine.close()


# ---- experiments -----------------------------------------------------------------------------------------------
def test_experiment_tally_with_a_fake_decision() -> None:
    tally = ExperimentTally()
    exp = SimpleNamespace(experiment=SimpleNamespace(name="prompt-v2", variant="alpha-mini"), model="alpha-mini")
    assert experiment_of(exp) == ("prompt-v2", "alpha-mini")
    assert experiment_of(SimpleNamespace(model="x")) is None and experiment_of(SimpleNamespace(experiment=None)) is None
    assert experiment_of(SimpleNamespace(experiment=SimpleNamespace(name="e", variant=None), model="m")) == ("e", "m")
    tally.start(1, exp)
    tally.answered(1)
    tally.finish(1, 0.5)
    tally.finish(1, 0.5)  # once
    tally.start(2, exp)
    tally.finish(2, 0.0)
    tally.start(3, SimpleNamespace(model="no experiment"))
    tally.finish(3, 1.0)
    row = tally.summary()["prompt-v2"]["alpha-mini"]
    assert (row["requests"], row["errors"], row["error_rate"], row["cost"]) == (2, 1, 0.5, 0.5)
    assert row["latency_ms"] is not None and len(tally.rows()) == 1


#: POLICY with each rule an experiment's arm, as `split ... as` makes it: its variant is the model chosen.
EXPERIMENT = """
set retry.attempts = 0
set circuit.failures = 1
when tier == "pro" split 100% alpha-large as "prompt-v2" fallback beta-coder
otherwise split 100% alpha-mini as "prompt-v2" fallback beta-chat
"""


def test_usage_reports_each_experiment_and_variant(make, fake_server: FakeServer) -> None:
    engine = make(EXPERIMENT)
    engine.complete("hello")
    engine.complete("hello", tier="pro")
    assert "".join(e.text for e in engine.stream("hello") if e.kind == "delta") == "ok"
    fake_server.always(LARGE, Fault.server_error(500))
    fake_server.always("beta-coder", Fault.server_error(500))
    with pytest.raises(RoutingError):
        engine.complete("hello", tier="pro")
    rows = engine.usage()["experiments"]["prompt-v2"]
    assert (rows["alpha-mini"]["requests"], rows["alpha-mini"]["errors"]) == (2, 0)
    assert (rows["alpha-large"]["requests"], rows["alpha-large"]["errors"]) == (2, 1)
    assert rows["alpha-mini"]["cost"] > 0 and rows["alpha-mini"]["latency_ms"] > 0


# ---- the gateway and the CLI -----------------------------------------------------------------------------------
def test_metrics_report_experiments(make, fake_server: FakeServer) -> None:
    pytest.importorskip("uvicorn")
    import httpx

    from providers.gateway.app import create_app
    from tests.test_gateway import ThreadServer

    engine = make(EXPERIMENT)
    with ThreadServer(create_app(engine)) as server:
        for attrs in ({}, {"tier": "pro"}):
            body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "metadata": attrs}
            assert httpx.post(server.url + "/v1/chat/completions", json=body, timeout=10).status_code == 200
        text = httpx.get(server.url + "/metrics", timeout=10).text
    assert 'modelroute_experiment_requests_total{experiment="prompt-v2",variant="alpha-mini"} 1' in text
    assert 'modelroute_experiment_errors_total{experiment="prompt-v2",variant="alpha-large"} 0' in text
    assert 'modelroute_experiment_latency_seconds_count{experiment="prompt-v2",variant="alpha-large"} 1' in text
    assert "# TYPE modelroute_experiment_cost_usd_total counter" in text


def test_gateway_warmup_before_serving(make, fake_server: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("uvicorn")
    import logging

    from providers.gateway.app import create_app
    from tests.test_gateway import ThreadServer

    engine = make()
    with caplog.at_level(logging.INFO, logger="modelroute.gateway"), ThreadServer(create_app(engine, warmup=True)):
        assert probes(fake_server) == USED  # all done before the server started serving
    assert "warm-up: alpha-mini (acme): ok" in caplog.text and "4 of 4 models answered" in caplog.text


def test_serve_warmup_logs_each_model(tmp_path: Path, fake_server: FakeServer) -> None:
    from tests.test_gateway import Serve, write_policy

    policy = write_policy(tmp_path, fake_server, POLICY)
    fake_server.always("beta-coder", Fault.server_error(500))
    serve = Serve(policy, "--warmup", "--log-level", "info")
    try:
        assert probes(fake_server) == USED
    finally:
        err = serve.stop()
    assert "warm-up: alpha-mini (acme): ok" in err and "warm-up: beta-coder (betacorp): failed" in err


def test_warmup_command_prints_a_table(tmp_path: Path, fake_server: FakeServer, cli) -> None:
    from tests.test_gateway import write_policy

    policy = write_policy(tmp_path, fake_server, POLICY)
    keys = {f"TEST_{n.upper()}_KEY": TEST_KEY for n in KINDS if n != "betacorp"}
    out = cli("warmup", "-p", str(policy), env=keys)
    assert out.returncode == 0, out.stderr
    assert (
        "alpha-mini" in out.stdout and "skipped" in out.stdout and "4 models: 2 ok, 0 failed, 2 skipped" in out.stdout
    )
    fake_server.always("alpha-mini", Fault.server_error(500))
    out = cli("warmup", "-p", str(policy), "--json", env=keys)
    rows = {r["model"]: r for r in json.loads(out.stdout)}
    assert out.returncode == 1 and rows["alpha-mini"]["status"] == "failed" and rows["alpha-large"]["ok"]
    assert "Traceback" not in out.stderr


def test_reply_default() -> None:
    assert Reply().text == "ok"  # the fake upstream's default answer, which the tests above count on
