"""Hot reload tests: real files in tmp_path saved every way editors and deployments save them, in, the policy
each Engine serves (and its ReloadEvents, last_error and log records) out."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.api import Engine, compile_policy
from engine.diagnostics import PolicyError
from engine.reload import ReloadEvent, follow

MODELS = ["gpt-4o", "gpt-4o-mini", "o3-mini", "claude-3-5-sonnet", "claude-3-5-haiku", "gemini-1.5-flash"]
DEADLINE_S = 15.0  # generous: polls return as soon as the reload lands; CI machines are noisy

CATALOG = """\
models:
  alpha:
    provider: openai
    context: 128k
    price: {input: %s, output: 1.00}
    latency_ms: 500
  beta:
    provider: openai
    context: 128k
    price: {input: 0.50, output: 1.00}
    latency_ms: 500
"""


def wait_for(cond: Callable[[], object], what: str, timeout: float = DEADLINE_S) -> None:
    """Poll `cond` until true; fail after `timeout` seconds (no fixed sleeps: fast when the machine is)."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def model_of(engine: Engine) -> str:
    return engine.decide("hello").model


def wait_model(engine: Engine, model: str) -> None:
    wait_for(lambda: model_of(engine) == model, f"the engine to route to {model}")


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    """Engines a test starts; stopped afterwards even when the test fails."""
    started: list[Engine] = []
    yield started
    for e in started:
        e.stop()


@pytest.fixture
def watched(tmp_path: Path, engines: list[Engine]) -> Callable[..., Engine]:
    def make(text: str = "otherwise use gpt-4o\n", *, poll: bool = False, name: str = "main.route") -> Engine:
        path = tmp_path / name
        if not path.exists():
            path.write_text(text)
        engine = Engine.load(path, watch=True, poll=poll)
        engines.append(engine)
        return engine

    return make


# ---- save styles ---------------------------------------------------------------------------------------------


def save_in_place(path: Path, text: str) -> None:
    path.write_text(text)


def save_temp_rename(path: Path, text: str) -> None:  # most IDEs, atomic writers
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_vim_backup(path: Path, text: str) -> None:  # vim with backupcopy=no: move away, write a new inode
    os.replace(path, path.with_name(path.name + "~"))
    path.write_text(text)


def save_delete_recreate(path: Path, text: str) -> None:
    path.unlink()
    time.sleep(0.01)
    path.write_text(text)


@pytest.mark.parametrize("poll", [False, True], ids=["notify", "poll"])
@pytest.mark.parametrize("save", [save_in_place, save_temp_rename, save_vim_backup, save_delete_recreate])
def test_save_styles(tmp_path: Path, watched, save, poll: bool) -> None:
    engine = watched(poll=poll)
    path = tmp_path / "main.route"
    for model in ("gpt-4o-mini", "o3-mini"):  # twice: the second save proves the watch survived the first
        save(path, f"otherwise use {model}\n")
        wait_model(engine, model)
    wait_for(lambda: engine.last_error is None, "a clean state after the last save")
    assert engine.version == compile_policy(path).version


def make_configmap(root: Path, stamp: str, text: str) -> None:
    """What the kubelet does: a new timestamped dir, a temp symlink to it, renamed over `..data` atomically."""
    data = root / stamp
    data.mkdir()
    (data / "main.route").write_text(text)
    tmp = root / "..data_tmp"
    tmp.symlink_to(stamp)
    os.replace(tmp, root / "..data")


@pytest.mark.parametrize("poll", [False, True], ids=["notify", "poll"])
def test_configmap_symlink_swap(tmp_path: Path, engines: list[Engine], poll: bool) -> None:
    make_configmap(tmp_path, "..2026_01_01_00_00_00.1", "otherwise use gpt-4o\n")
    (tmp_path / "main.route").symlink_to("..data/main.route")
    engine = Engine.load(tmp_path / "main.route", watch=True, poll=poll)
    engines.append(engine)
    assert model_of(engine) == "gpt-4o"
    old = "..2026_01_01_00_00_00.1"
    for i, model in enumerate(["claude-3-5-haiku", "gpt-4o-mini"], start=2):
        stamp = f"..2026_01_0{i}_00_00_00.{i}"
        make_configmap(tmp_path, stamp, f"otherwise use {model}\n")
        for f in (tmp_path / old).iterdir():  # the kubelet removes the old version's directory
            f.unlink()
        (tmp_path / old).rmdir()
        old = stamp
        wait_model(engine, model)
    assert engine.last_error is None


# ---- broken edits, deletions, includes, catalogs --------------------------------------------------------------


def test_broken_edit_keeps_serving_then_recovers(tmp_path: Path, watched, caplog) -> None:
    caplog.set_level(logging.INFO, logger="modelroute.reload")
    engine = watched()
    events: list[ReloadEvent] = []
    engine.on_reload(events.append)
    good = engine.version
    (tmp_path / "main.route").write_text("otherwise use gpt-4o-mini fallback\n")  # syntax error
    # callbacks run after last_error is set: wait for the event itself
    wait_for(lambda: any(e.error is not None for e in events), "the broken edit to be rejected")
    assert isinstance(engine.last_error, PolicyError)
    assert engine.version == good and model_of(engine) == "gpt-4o"
    bad = [e for e in events if e.error is not None]
    assert bad and not bad[-1].ok and bad[-1].new_version == good and bad[-1].changed_files
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert engine.last_error.render() in warning.getMessage()  # rendered like `modelroute check`
    assert "error[E" in warning.getMessage()

    (tmp_path / "main.route").write_text("otherwise use claude-3-5-haiku\n")
    wait_model(engine, "claude-3-5-haiku")
    wait_for(lambda: engine.last_error is None, "last_error to clear")
    wait_for(lambda: events[-1].new_version == engine.version, "the reload's event")
    assert events[-1].ok and events[-1].changed and events[-1].old_version == good
    assert events[-1].new_version == engine.version and events[-1].duration_s > 0
    assert any(r.levelno == logging.INFO and engine.version in r.getMessage() for r in caplog.records)


def test_included_file_change_and_deletion(tmp_path: Path, watched) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "extra.route").write_text('when tier == "pro" use claude-3-opus\n')
    engine = watched('include "rules/extra.route"\notherwise use gpt-4o\n')
    assert engine.decide("hi", tier="pro").model == "claude-3-opus"
    (tmp_path / "rules" / "extra.route").write_text('when tier == "pro" use o3-mini\n')
    wait_for(lambda: engine.decide("hi", tier="pro").model == "o3-mini", "the include change to load")

    version = engine.version
    (tmp_path / "rules" / "extra.route").unlink()  # a needed file disappears: rejected, old policy serves
    wait_for(lambda: engine.last_error is not None, "the deletion to be rejected")
    assert "E200" in engine.last_error.codes
    assert engine.version == version and engine.decide("hi", tier="pro").model == "o3-mini"
    (tmp_path / "rules" / "extra.route").write_text('when tier == "pro" use gpt-4o-mini\n')
    wait_for(lambda: engine.decide("hi", tier="pro").model == "gpt-4o-mini", "recovery on recreate")
    assert engine.last_error is None


def test_new_include_is_watched_after_reload(tmp_path: Path, watched) -> None:
    engine = watched()
    # a rejected edit naming a file that does not exist yet; creating the file is enough to recover
    (tmp_path / "main.route").write_text('include "later.route"\notherwise use gpt-4o\n')
    wait_for(lambda: engine.last_error is not None, "the missing include to be rejected")
    (tmp_path / "later.route").write_text('when tier == "pro" use o3-mini\n')
    wait_for(lambda: engine.decide("hi", tier="pro").model == "o3-mini", "the new include to load")
    # the include is now watched: editing it alone reloads (the watch set was re-armed)
    (tmp_path / "later.route").write_text('when tier == "pro" use claude-3-opus\n')
    wait_for(lambda: engine.decide("hi", tier="pro").model == "claude-3-opus", "the include edit to load")


def test_catalog_file_change(tmp_path: Path, watched) -> None:
    (tmp_path / "models.yaml").write_text(CATALOG % "0.10")
    engine = watched('catalog "models.yaml"\notherwise prefer cheapest\n')
    assert model_of(engine) == "alpha"
    assert any(f.endswith("models.yaml") for f in engine.policy.files)
    save_temp_rename(tmp_path / "models.yaml", CATALOG % "2.00")  # alpha is now the dearer one
    wait_model(engine, "beta")
    (tmp_path / "models.yaml").write_text(CATALOG % "not-a-price")
    wait_for(lambda: engine.last_error is not None, "the bad catalog to be rejected")
    assert model_of(engine) == "beta"


def test_slow_in_place_save_never_serves_the_empty_file(tmp_path: Path, watched) -> None:
    engine = watched()
    stop, errors = threading.Event(), []

    def decide_loop() -> None:
        while not stop.is_set():
            try:
                model_of(engine)
            except Exception as exc:  # an empty main.route compiles to zero rules: NoRouteError
                errors.append(exc)
            time.sleep(0.001)

    t = threading.Thread(target=decide_loop, daemon=True)
    t.start()
    try:
        with (tmp_path / "main.route").open("w") as f:  # truncated now...
            f.flush()
            time.sleep(0.3)  # ...an editor or script stalls (GIL, disk, network file system)...
            f.write("otherwise use o3-mini\n")  # ...and the text lands
        wait_model(engine, "o3-mini")
    finally:
        stop.set()
        t.join(5)
    assert not errors, errors[:3]


# ---- explicit reload, no-ops, hooks, lifecycle ----------------------------------------------------------------


def test_explicit_reload_without_watching(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="modelroute.reload")
    path = tmp_path / "main.route"
    path.write_text("otherwise use gpt-4o\n")
    engine = Engine.load(path)
    events: list[ReloadEvent] = []
    engine.on_reload(events.append)
    first = engine.version
    assert engine.reload() is True and engine.version == first  # same content: a logged no-op
    assert events[-1].ok and not events[-1].changed and events[-1].changed_files == ()
    assert any(r.levelno == logging.DEBUG and "no change" in r.getMessage() for r in caplog.records)
    path.write_text("otherwise use o3-mini\n")
    assert engine.reload() is True and model_of(engine) == "o3-mini"
    assert events[-1].changed_files == (engine.policy.files[0],)
    path.write_text("otherwise use\n")
    assert engine.reload() is False and model_of(engine) == "o3-mini" and engine.last_error is not None
    assert engine.reload() is False
    with pytest.raises(ValueError):
        Engine.from_source("otherwise use gpt-4o").reload()


def test_callback_that_raises_does_not_kill_the_watcher(tmp_path: Path, watched, caplog) -> None:
    engine = watched()
    seen: list[ReloadEvent] = []

    def bad(event: ReloadEvent) -> None:
        raise RuntimeError("boom")

    engine.on_reload(bad)
    engine.on_reload(seen.append)
    for model in ("gpt-4o-mini", "o3-mini"):
        (tmp_path / "main.route").write_text(f"otherwise use {model}\n")
        wait_model(engine, model)
    wait_for(lambda: len(seen) >= 2, "both callbacks to run after the raising one")
    assert any("boom" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_stop_is_quick_and_context_manager_stops(tmp_path: Path) -> None:
    (tmp_path / "main.route").write_text("otherwise use gpt-4o\n")
    with Engine.load(tmp_path / "main.route", watch=True) as engine:
        reloader = engine.reloader
        assert reloader.running
    assert not reloader.running
    engine.watch(poll=True)
    engine.stop()
    assert not reloader.running
    (tmp_path / "main.route").write_text("otherwise use o3-mini\n")
    time.sleep(0.3)  # the one fixed sleep: proving that nothing happens after stop()
    assert model_of(engine) == "gpt-4o"


def test_awatch_under_asyncio(tmp_path: Path) -> None:
    path = tmp_path / "main.route"
    path.write_text("otherwise use gpt-4o\n")
    engine = Engine.load(path)

    async def main() -> None:
        task = asyncio.create_task(engine.awatch(debounce_ms=20))
        end = time.monotonic() + DEADLINE_S
        n = 0
        while model_of(engine) != "o3-mini":  # the loop stays responsive while the watcher works
            assert time.monotonic() < end, "awatch did not reload"
            if n % 20 == 0:  # the watcher may start after the first write: write again until it is seen
                path.write_text("otherwise use o3-mini\n" + "#\n" * (n // 20))
            n += 1
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 2.0)

    asyncio.run(main())


def test_follow_yields_errors_and_policies(tmp_path: Path) -> None:
    path = tmp_path / "main.route"
    path.write_text("otherwise use nope\n")
    stop = threading.Event()
    results = follow(path, stop_event=stop)
    first = next(results)
    assert isinstance(first, PolicyError)
    path.write_text("otherwise use gpt-4o\n")
    second = next(results)
    assert not isinstance(second, PolicyError) and second.version == compile_policy(path).version
    stop.set()
    assert list(results) == []


# ---- stress: decisions during many reloads ---------------------------------------------------------------------


def test_stress_every_decision_matches_its_version(tmp_path: Path, watched) -> None:
    path = tmp_path / "main.route"
    path.write_text("# v0\notherwise use gpt-4o\n")
    prescribed = {compile_policy(path).version: "gpt-4o"}
    engine = watched()
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[list[tuple[str, str]]] = [[] for _ in range(4)]

    def decide_loop(out: list[tuple[str, str]]) -> None:
        while not stop.is_set():
            try:
                d = engine.decide("write a function that parses dates", tier="pro")
                out.append((d.policy_version, d.model))
            except BaseException as exc:  # every failure counts
                errors.append(exc)
            if len(out) % 50 == 0:
                # Yield the GIL now and then, as a server does between requests. Four threads that never
                # yield starve the watcher thread (the GIL convoy effect): every reload still goes through,
                # but ~300 ms later, which would make this test slow rather than more thorough.
                time.sleep(0)

    threads = [threading.Thread(target=decide_loop, args=(out,), daemon=True) for out in seen]
    for t in threads:
        t.start()
    try:
        for k in range(1, 51):
            if k % 2:
                model = MODELS[k % len(MODELS)]
                save_temp_rename(path, f"# v{k}\notherwise use {model}\n")
                version = compile_policy(path).version
                prescribed[version] = model
                wait_for(lambda v=version: engine.version == v, f"good version {k}")
            else:
                save_temp_rename(path, f"# v{k}\notherwise use {MODELS[0]} fallback\n")
                wait_for(lambda: engine.last_error is not None, f"broken version {k} to be rejected")
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    decisions = [d for out in seen for d in out]
    assert not errors, errors[:3]
    assert len(decisions) > 1000
    assert len({v for v, _ in decisions}) > 10  # decisions really spanned many versions
    wrong = [(v, m) for v, m in decisions if prescribed.get(v) != m]
    assert not wrong, wrong[:5]
