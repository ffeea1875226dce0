"""Hot reload: an Engine and the files its policy uses in, atomic policy swaps (with ReloadEvents and log records) out
whenever one of those files changes on disk."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import watchfiles

from engine.diagnostics import PolicyError, render_all
from engine.reload_paths import _changed, _on_disk, _snapshot, _texts, _WatchSet
from engine.runtime.policy import CompiledPolicy

if TYPE_CHECKING:
    from engine.api import Engine

log = logging.getLogger("modelroute.reload")

#: Seconds between stat() rounds in polling mode.
POLL_INTERVAL_S = 0.1
_STEP_MS = 10  # watchfiles' tick: changes are yielded once a tick brings no new one; stop_event is checked
_WAKE_MS = 100  # watchfiles yields at least this often when no debounce deadline is near, so stop() is honoured
_SETTLE_TRIES = 3  # compiles when a file changed while it was being compiled
_EMPTIED_WAIT_S = 1.0  # how long a file that became empty (mid-save?) may stay so before it is believed


@dataclass(frozen=True)
class ReloadEvent:
    """One reload attempt. On rejection `new_version == old_version` (the old policy keeps serving)."""

    old_version: str
    new_version: str
    changed_files: tuple[str, ...]  # files whose contents differ from the serving policy (added/removed too)
    duration_s: float
    error: PolicyError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def changed(self) -> bool:
        """True when a new version went live (False for rejections and same-content no-ops)."""
        return self.ok and self.new_version != self.old_version


# ---- the reloader -----------------------------------------------------------------------------------------


class Reloader:
    """Reloads an Engine's policy on request (reload()) or on file changes (start() / awatch())."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.callbacks: list[Callable[[ReloadEvent], None]] = []
        self.last_error: PolicyError | None = None
        self.poll_interval_s = POLL_INTERVAL_S
        self._lock = threading.Lock()  # one reload at a time; decide() never takes it
        self._seen = _texts(engine.policy)  # file -> text of the last compile attempt, good or bad
        self._thread: threading.Thread | None = None
        self._thread_stop = threading.Event()
        self._stops: set[threading.Event] = set()  # one per running watcher: the thread and any awatch()

    # -- reloading ------------------------------------------------------------------------------------------
    def reload(self, force: bool = True) -> bool:
        """Recompile; swap the result in if it compiles (True), else keep the old policy serving (False).

        With force=False (the watchers), a compile is skipped when every file the last good compile read
        still holds the same text: editors and the kubelet raise several events per save."""
        with self._lock:
            start = time.perf_counter()
            old = self.engine.policy
            if not force and self.last_error is None and _on_disk(self._seen):
                new, err, texts = old, None, self._seen
            else:
                new, err, texts = self._compile(old)
            if err is None and new.version != old.version:
                self.engine.swap(new)
            self.last_error = err
            self._seen = texts
            event = ReloadEvent(
                old.version, new.version, _changed(_texts(old), texts), time.perf_counter() - start, err
            )
        self._log(event)
        for callback in list(self.callbacks):
            try:
                callback(event)
            except Exception:
                log.exception("reload callback %r raised; the watcher carries on", callback)
        return event.ok

    def _compile(self, old: CompiledPolicy) -> tuple[CompiledPolicy, PolicyError | None, dict[str, str]]:
        """(policy, None, texts read) or (old, error, texts read). An in-place save truncates, then writes: a
        compile in between sees half a file, or an empty one (which compiles, to a policy with no rules). So
        compile again if a file changed meanwhile, and give a file that just became empty time to fill."""
        before = _texts(old)
        deadline = time.monotonic() + _EMPTIED_WAIT_S
        for tries in range(1, 100):
            try:
                new = self.engine.recompile()
                result: tuple[CompiledPolicy, PolicyError | None, dict[str, str]] = (new, None, _texts(new))
            except PolicyError as exc:
                result = (old, exc, dict(exc.sources.texts))
            emptied = {f: t for f, t in result[2].items() if not t and before.get(f)}
            if emptied and time.monotonic() < deadline:
                log.debug("%s just became empty: waiting for the rest of the write", ", ".join(emptied))
                while time.monotonic() < deadline and _on_disk(emptied):
                    time.sleep(0.01)
                continue
            if tries >= _SETTLE_TRIES or _on_disk(result[2]):
                break
            time.sleep(0.02)
        return result

    def _log(self, ev: ReloadEvent) -> None:
        ms = ev.duration_s * 1000
        if ev.error is not None:
            log.warning(
                "policy reload rejected, version %s keeps serving (%s):\n%s",
                ev.old_version,
                ", ".join(ev.changed_files) or "no content change",
                render_all(ev.error.diagnostics, ev.error.sources),
            )
        elif ev.changed:
            log.info(
                "policy reloaded: version %s -> %s in %.1f ms (changed: %s)",
                ev.old_version,
                ev.new_version,
                ms,
                ", ".join(ev.changed_files),
            )
        else:
            log.debug("policy reload: no change, version %s (%.1f ms)", ev.old_version, ms)

    def _files(self) -> list[str]:
        """The serving policy's files plus any a later failed attempt read (e.g. a new include)."""
        return list(dict.fromkeys([*self.engine.policy.files, *self._seen]))

    def _stale(self) -> bool:
        return not _on_disk(self._seen)

    # -- watching -------------------------------------------------------------------------------------------
    def start(self, poll: bool = False, debounce_ms: int = 50) -> None:
        """Watch in a daemon thread (restarting any watcher already running)."""
        if self.engine.path is None:
            raise ValueError("this engine was built from source text, not a path: nothing to watch")
        self._thread_stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)
        self._thread_stop = stop = threading.Event()
        self._stops.add(stop)
        self._thread = threading.Thread(
            target=self._run, args=(stop, poll, debounce_ms), name="modelroute-reload", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop every watcher (thread and awatch) and join the thread (well under a second)."""
        for stop in list(self._stops):
            stop.set()
        t, self._thread = self._thread, None
        if t is not None and t is not threading.current_thread():
            t.join(timeout=1.0)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def awatch(self, poll: bool = False, debounce_ms: int = 50) -> None:
        """Watch until cancelled (or stop()); the watching and compiling happen off the event loop, in a
        thread, so callbacks run in that thread (use loop.call_soon_threadsafe to get back to the loop)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        stop = threading.Event()
        self._stops.add(stop)

        def run() -> None:
            try:
                self._run(stop, poll, debounce_ms)
            finally:
                if not loop.is_closed():
                    loop.call_soon_threadsafe(_resolve, done)

        thread = threading.Thread(target=run, name="modelroute-awatch", daemon=True)
        thread.start()
        try:
            await done
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 1.0)

    def _run(self, stop: threading.Event, poll: bool, debounce_ms: int) -> None:
        try:
            while not stop.is_set():
                try:
                    (self._poll_once if poll else self._watch_once)(stop, max(0, debounce_ms))
                except FileNotFoundError:  # a directory vanished while arming (a ConfigMap swap): re-arm
                    stop.wait(0.05)
                except Exception:
                    log.exception("policy watcher failed; retrying in 1 s")
                    stop.wait(1.0)
        finally:
            self._stops.discard(stop)

    def _reload_safely(self) -> None:
        try:
            self.reload(force=False)
        except Exception:
            log.exception("policy reload failed unexpectedly; the last good policy keeps serving")

    def _watch_once(self, stop: threading.Event, debounce_ms: int) -> None:
        """Arm watchfiles on the current watch set, reload on relevant changes; return to re-arm."""
        ws = _WatchSet.of(self._files())
        if not ws.dirs:  # every directory is gone (e.g. a volume unmounted): wait for it to come back
            if not stop.wait(1.0) and self._stale():
                self._reload_safely()
            return
        # watchfiles yields a change one tick (`step`) after the last one it saw; the rest of the debounce is
        # waited out here, and watchfiles wakes this loop (an empty yield) about when that wait ends, halfway
        # between ticks so that a late tick does not wake it too early. A debounce of 50 ms goes live 50-60 ms
        # after the last change plus the compile (it was 50-100 ms with one 50 ms tick).
        step = max(1, min(debounce_ms, _STEP_MS))
        quiet_ms = max(0, debounce_ms - step)
        quiet_s = quiet_ms / 1000
        wake = min(_WAKE_MS, max(1, quiet_ms - step // 2)) if quiet_ms else _WAKE_MS
        changes_iter = watchfiles.watch(
            *ws.dirs,
            watch_filter=None,
            debounce=max(200, debounce_ms),
            step=step,
            stop_event=stop,
            rust_timeout=wake,
            yield_on_timeout=True,
            recursive=False,
            raise_interrupt=False,
            ignore_permission_denied=True,
        )
        pending, moved, last, first_wake = False, False, 0.0, True
        try:
            for changes in changes_iter:
                now = time.monotonic()
                if first_wake:  # armed now: catch anything saved while arming
                    first_wake, pending, last = False, self._stale(), now
                if hit := ws.hits(changes, widen=self.last_error is not None):
                    pending, last = True, now
                    moved = moved or not hit.isdisjoint(ws.dirs)  # a watched directory itself went or came back
                if pending and now - last >= quiet_s:
                    self._reload_safely()
                    pending = False
                    if moved or ws.stale(self._files()):
                        return  # the policy now uses other files, targets or directories: re-arm
        finally:
            changes_iter.close()

    def _poll_once(self, stop: threading.Event, debounce_ms: int) -> None:
        """stat() every file, its symlink chain and target each poll_interval_s; reload once it settles."""
        files, widen = self._files(), self.last_error is not None
        seen = _snapshot(files, widen)
        if self._stale():
            self._reload_safely()
            return
        while not stop.wait(self.poll_interval_s):
            now = _snapshot(files, widen)
            if now == seen:
                continue
            while not stop.wait(debounce_ms / 1000):  # debounce: wait until a round shows no new change
                seen, now = now, _snapshot(files, widen)
                if now == seen:
                    break
            if not stop.is_set():
                self._reload_safely()
            return  # re-arm: the files, the fingerprint and the error state may all have changed


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


# ---- for tools: follow a policy path, good or broken -------------------------------------------------------


def follow(
    path: str | Path,
    *,
    poll: bool = False,
    debounce_ms: int = 50,
    catalog: Any = None,
    stop_event: threading.Event | None = None,
    today: datetime.date | None = None,
    functions: Mapping[str, Callable[..., Any]] | None = None,
    rankers: Mapping[str, Callable[..., Any]] | None = None,
    embedder: Callable[[list[str]], Any] | None = None,
) -> Iterator[CompiledPolicy | PolicyError]:
    """Yield the policy at `path` compiled (or its PolicyError) now and again after every change that alters
    the outcome, until `stop_event` is set or the generator is closed: the loop behind `--watch` in the CLI.
    `today` is the date deprecations count from (None: the date at each compile); `functions` / `rankers` are
    the Python functions and rankers the policy calls, `embedder` what embeds its semantic tasks (Engine.load's)."""
    from engine.api import Engine
    from engine.language.load import load

    try:
        engine = Engine.load(
            path, catalog=catalog, today=today, functions=functions, rankers=rankers, embedder=embedder
        )
        first: CompiledPolicy | PolicyError = engine.policy
    except PolicyError as err:  # follow it anyway: the files it could read, until it compiles
        loaded = load(path)
        stand_in = SimpleNamespace(version="", files=tuple(loaded.files) or (loaded.entry,), sources=err.sources)
        # the stand-in has what the Reloader reads of a policy until the first good compile replaces it
        given = {"functions": functions, "rankers": rankers, "embedder": embedder}
        engine, first = Engine(stand_in, path=path, catalog=catalog, today=today, **given), err  # type: ignore[arg-type]
    reloader = Reloader(engine)
    reloader.last_error = first if isinstance(first, PolicyError) else None  # widens the watch (_WatchSet.hits)
    results: queue.SimpleQueue[CompiledPolicy | PolicyError] = queue.SimpleQueue()
    reloader.callbacks.append(lambda ev: results.put(ev.error or engine.policy))
    last: tuple[str, str] = ("", "")
    reloader.start(poll=poll, debounce_ms=debounce_ms)
    try:
        item: CompiledPolicy | PolicyError = first
        while True:
            key = (item.render(), "") if isinstance(item, PolicyError) else ("", item.version)
            if key != last:
                last = key
                yield item
            while True:
                if stop_event is not None and stop_event.is_set():
                    return
                with contextlib.suppress(queue.Empty):
                    item = results.get(timeout=0.1)
                    break
    finally:
        reloader.stop()
