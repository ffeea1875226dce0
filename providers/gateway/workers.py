"""Supervising `modelroute serve --workers N`: a count and a function that serves on already-bound sockets in, N
forked worker processes serving on those shared sockets out, watched by the calling process until it is stopped:
a worker that dies is restarted (with backoff), SIGTERM / SIGINT shut every worker down gracefully, and workers
that keep failing before they serve end the gateway with WorkersFailed.

Why processes: the GIL lets one Python process use one core for deciding and answering requests, whatever its
threads (docs/performance.md, "Scaling, the bundled policy, threads and reload"). Each worker is a whole gateway
(its own Engines, its own Redis replica, its own policy watcher); what they share goes through Redis. Their metrics
are prometheus_client's multiprocess files in a fresh directory (PROMETHEUS_MULTIPROC_DIR, set before the first
fork, removed at the end), which each worker's /metrics sums."""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from os import _exit  # the documented way out of a forked child
from types import FrameType
from typing import NoReturn

from prometheus_client.multiprocess import mark_process_dead

from providers.gateway.metrics import multiprocess_dir

__all__ = ["BACKOFF_FIRST_S", "BACKOFF_MAX_S", "MAX_START_FAILURES", "STABLE_S", "Serve", "Supervisor", "WorkersFailed"]

#: What runs in a worker: its slot (0..N-1), whether it is the gateway's very first start (it prints the banner)
#: and the callback to call once it accepts connections; returns the worker's exit code.
Serve = Callable[[int, bool, Callable[[], None]], int]
Echo = Callable[[str], None]

BACKOFF_FIRST_S = 0.5  # the wait before restarting a worker that died soon after a start; doubled each time after
STABLE_S = 10.0  # a worker that served this long before dying is restarted at once; one that died sooner backs off
BACKOFF_MAX_S = 30.0  # the longest wait before restarting a worker that keeps dying
MAX_START_FAILURES = 5  # deaths before serving, in a row, after which a gateway with no worker serving gives up
KILL_AFTER_S = 5.0  # after --graceful-timeout, seconds more before a worker that has not exited is killed
log = logging.getLogger("modelroute.gateway")


class WorkersFailed(Exception):
    """The workers could not be kept running: `code` is the exit code to end with (a worker's own when it failed
    at the first start: 2 for a usage error, which the worker has already reported)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Slot:
    index: int
    pid: int = 0  # 0: not running
    ready_fd: int = -1  # the read end of the pipe the worker writes b"r" to once it serves
    ready: bool = False
    started: float = 0.0  # monotonic time of the last start
    served: bool = False  # has any start of this slot served
    failures: int = 0  # deaths in a row that came soon after a start (restart backoff)
    start_failures: int = 0  # deaths in a row before serving
    restart_at: float | None = None


def _describe(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"


class Supervisor:
    """Forks `count` workers running `serve` and supervises them from the calling (main) thread: `run()` returns
    once a stop signal has shut them all down, or raises WorkersFailed."""

    def __init__(self, count: int, serve: Serve, echo: Echo, graceful_timeout: float) -> None:
        self.slots = [_Slot(i) for i in range(count)]
        self._serve, self._echo, self._graceful = serve, echo, graceful_timeout
        self._phase = "starting"  # -> "running" once every worker served -> "stopping"
        self._signals: list[int] = []
        self._kill_at = float("inf")
        self._killed = False
        self._failed: WorkersFailed | None = None
        self._wake = (-1, -1)
        self._life = (-1, -1)  # workers see EOF on its read end when this process is gone
        self.metrics_dir: str | None = None  # prometheus_client's multiprocess directory while running

    # -- the supervising process ------------------------------------------------------------------------------
    def run(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise WorkersFailed("--workers must be run from the main thread (it handles SIGTERM and SIGCHLD)")
        self._wake, self._life = os.pipe(), os.pipe()
        self.metrics_dir = metrics_dir = tempfile.mkdtemp(prefix="modelroute-metrics-")
        saved_dir = multiprocess_dir(metrics_dir)
        for fd in self._wake:
            os.set_blocking(fd, False)
        old_wakeup = signal.set_wakeup_fd(self._wake[1])
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        old = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            self._spawn(self.slots[0])  # the first worker alone: a start-up error is reported once, not N times
            self._loop()
        finally:
            self._stop()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            for fd in (*self._wake, *self._life):
                os.close(fd)
            for slot in self.slots:
                self._close_ready(slot)
            shutil.rmtree(metrics_dir, ignore_errors=True)
            multiprocess_dir(saved_dir)
            self.metrics_dir = None
        if self._failed is not None:
            raise self._failed

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGCHLD:
            self._signals.append(sig)

    def _loop(self) -> None:
        while True:
            fds = [self._wake[0], *(s.ready_fd for s in self.slots if s.ready_fd >= 0)]
            readable, _, _ = select.select(fds, [], [], self._timeout())
            if self._wake[0] in readable:
                while True:
                    try:
                        if not os.read(self._wake[0], 512):
                            break
                    except BlockingIOError:
                        break
            for slot in self.slots:
                if slot.ready_fd in readable:
                    self._read_ready(slot)
            self._reap()
            while self._signals:
                self._on_stop_signal(self._signals.pop(0))
            now = time.monotonic()
            if self._phase == "stopping":
                if not any(s.pid for s in self.slots):
                    return
                if now >= self._kill_at and not self._killed:
                    self._killed = True
                    for slot in self.slots:
                        if slot.pid:
                            self._echo(f"worker {slot.index + 1} (pid {slot.pid}) did not stop in time: killing it")
                            os.kill(slot.pid, signal.SIGKILL)
                continue
            for slot in self.slots:
                if not slot.pid and slot.restart_at is not None and now >= slot.restart_at:
                    self._spawn(slot)

    def _timeout(self) -> float:
        now = time.monotonic()
        due = [s.restart_at for s in self.slots if not s.pid and s.restart_at is not None]
        if self._phase == "stopping":
            due.append(self._kill_at)
        return max(0.0, min([now + 1.0, *due]) - now)  # also wakes once a second in case a SIGCHLD was missed

    def _read_ready(self, slot: _Slot) -> None:
        try:
            data = os.read(slot.ready_fd, 1)
        except BlockingIOError:  # a new worker's pipe got the number of one closed in this round: nothing yet
            return
        except OSError:
            data = b""
        self._close_ready(slot)
        if data != b"r" or not slot.pid:
            return  # the worker died before serving: _reap says so
        slot.ready, slot.served, slot.start_failures = True, True, 0
        if self._phase == "starting":
            for other in self.slots:  # the first worker serves: start the others
                if other.started == 0.0:
                    self._spawn(other)
            if all(s.served for s in self.slots):
                self._phase = "running"
                pids = ", ".join(str(s.pid) for s in self.slots if s.pid)
                self._echo(f"{len(self.slots)} workers serving (pids {pids}); SIGTERM stops them gracefully")
        elif self._phase == "running":
            self._echo(f"worker {slot.index + 1} serving again (pid {slot.pid})")

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is not None:
                self._exited(slot, os.waitstatus_to_exitcode(status))

    def _exited(self, slot: _Slot, code: int) -> None:
        pid, was_ready, up = slot.pid, slot.ready, time.monotonic() - slot.started
        slot.pid, slot.ready = 0, False
        if self.metrics_dir is not None:  # its counters stay (totals never go down); its live gauges go
            mark_process_dead(pid, self.metrics_dir)
        self._close_ready(slot)
        if self._phase == "stopping":
            return
        name = f"worker {slot.index + 1} of {len(self.slots)} (pid {pid})"
        if self._phase == "starting" and not slot.served:
            # a worker's first start failed: it has said why; a restart would fail the same way
            self._failed = WorkersFailed(
                f"{name} exited before serving ({_describe(code)}; its error is above)", code if code > 0 else 1
            )
            self._begin_stop()
            return
        slot.failures = slot.failures + 1 if (not was_ready or up < STABLE_S) else 0
        slot.start_failures = 0 if was_ready else slot.start_failures + 1
        if slot.start_failures >= MAX_START_FAILURES and not any(s.ready for s in self.slots):
            self._failed = WorkersFailed(
                f"{name} failed {slot.start_failures} times in a row before serving ({_describe(code)}) and no "
                "worker is serving: giving up"
            )
            self._begin_stop()
            return
        delay = 0.0 if slot.failures == 0 else min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (slot.failures - 1))
        slot.restart_at = time.monotonic() + delay
        when = "before serving" if not was_ready else f"after {up:.0f} s"
        self._echo(f"{name} exited {when} ({_describe(code)}); restarting it in {delay:g} s")

    def _on_stop_signal(self, sig: int) -> None:
        if self._phase != "stopping":
            live = sum(1 for s in self.slots if s.pid)
            self._echo(f"{signal.Signals(sig).name}: stopping {live} worker(s) gracefully")
            self._begin_stop()
        elif sig == signal.SIGINT:  # a second Ctrl-C: uvicorn in each worker stops without waiting (force exit)
            self._send(signal.SIGINT)
        else:
            self._send(signal.SIGTERM)

    def _begin_stop(self) -> None:
        self._phase = "stopping"
        self._kill_at = time.monotonic() + self._graceful + KILL_AFTER_S
        self._send(signal.SIGTERM)

    def _send(self, sig: int) -> None:
        for slot in self.slots:
            if slot.pid:
                try:
                    os.kill(slot.pid, sig)
                except ProcessLookupError:
                    pass

    def _stop(self) -> None:
        """On the way out (also after an exception here): no worker outlives this process."""
        if not any(s.pid for s in self.slots):
            return
        self._send(signal.SIGTERM)
        deadline = time.monotonic() + self._graceful + KILL_AFTER_S
        for slot in self.slots:
            while slot.pid:
                pid, _ = os.waitpid(slot.pid, os.WNOHANG)
                if pid:
                    slot.pid = 0
                elif time.monotonic() >= deadline:
                    os.kill(slot.pid, signal.SIGKILL)
                    os.waitpid(slot.pid, 0)
                    slot.pid = 0
                else:
                    time.sleep(0.05)

    def _spawn(self, slot: _Slot) -> None:
        first = slot.index == 0 and slot.started == 0.0
        ready_r, ready_w = os.pipe()
        os.set_blocking(ready_r, False)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the worker (tests/test_workers.py covers it from outside)
            os.close(ready_r)
            self._worker(slot.index, first, ready_w)
        os.close(ready_w)
        slot.pid, slot.ready_fd, slot.ready = pid, ready_r, False
        slot.started, slot.restart_at = time.monotonic(), None

    @staticmethod
    def _close_ready(slot: _Slot) -> None:
        if slot.ready_fd >= 0:
            os.close(slot.ready_fd)
            slot.ready_fd = -1

    # -- a worker ---------------------------------------------------------------------------------------------
    def _worker(self, index: int, first: bool, ready_w: int) -> NoReturn:  # pragma: no cover - in the child
        code = 3
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, _exit_cleanly)
            for fd in (*self._wake, self._life[1], *(s.ready_fd for s in self.slots if s.ready_fd >= 0)):
                os.close(fd)
            threading.Thread(target=_orphaned, args=(self._life[0],), name="modelroute-lifeline", daemon=True).start()
            code = self._serve(index, first, _ready_callback(ready_w))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except KeyboardInterrupt:
            code = 130
        except BaseException:
            log.exception("worker %d failed", index + 1)
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            _exit(code)  # leave without unwinding into the supervisor's frames or running its atexit hooks


def _exit_cleanly(sig: int, frame: FrameType | None) -> None:
    """A worker's SIGTERM outside uvicorn's own handler (before it serves, or the signal uvicorn re-raises after its
    graceful shutdown): unwind, closing the Engines and the Redis store, and exit 0."""
    raise SystemExit(0)


def _orphaned(fd: int) -> None:
    """In a worker: wait for EOF on the lifeline (the supervisor is gone, even killed), then stop gracefully."""
    try:
        while os.read(fd, 64):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def _ready_callback(fd: int) -> Callable[[], None]:
    """Tells the supervisor once (later calls do nothing) that this worker accepts connections."""
    pending = [fd]

    def ready() -> None:
        if pending:
            fd = pending.pop()
            try:
                os.write(fd, b"r")
            finally:
                os.close(fd)

    return ready
