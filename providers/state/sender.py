"""RedisStore's background sender: the store's pending fast-path writes (in-flight counts, queued records) in, one
pipelined round trip out, as soon as the sender is woken; plus the periodic tick (heartbeat, flush) in between.
Also the Redis wire encoding the sender packs its commands with, and the send itself (`SenderMixin`, on
RedisStore's state)."""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from providers.state.redis_store import RedisStore

log = logging.getLogger("modelroute.state")
_TICK = 0.1  # background thread period (seconds)


def pack(command: tuple[Any, ...]) -> bytes:
    """A command in the Redis protocol (str, bytes, int and float arguments, encoded as redis-py does)."""
    out = [b"*%d\r\n" % len(command)]
    for arg in command:
        b = arg.encode() if isinstance(arg, str) else arg if isinstance(arg, bytes) else repr(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class Signal:
    """Wakes the background thread (shared with it: the thread must not keep its store alive)."""

    __slots__ = ("cond", "linger", "pending", "stop")

    def __init__(self, linger: float = 0.0) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.pending = False  # the fast paths left something to send
        self.stop = False
        self.linger = linger  # seconds to wait after a wake-up, so that what follows soon rides along


def run_sender(ref: weakref.ref[RedisStore], sig: Signal) -> None:
    """Sends what the fast paths leave pending once woken (after `sig.linger` seconds; one pipeline for all of
    it) and runs `_tick()` every `_TICK` seconds; sleeps on the condition in between (no polling)."""
    tick = time.monotonic() + _TICK
    while True:
        with sig.cond:
            while not sig.pending and not sig.stop:
                left = tick - time.monotonic()
                if left <= 0:
                    break
                sig.cond.wait(left)
            if sig.stop:
                return
            send, sig.pending = sig.pending, False
            if send and sig.linger > 0:  # a request's claim and its record usually leave together, after it
                deadline = time.monotonic() + sig.linger
                while not sig.stop and (left := deadline - time.monotonic()) > 0:
                    sig.cond.wait(left)
                sig.pending = False  # what came meanwhile goes in this batch
        store = ref()
        if store is None:
            return
        try:
            if send:
                store._drain()
            if time.monotonic() >= tick:
                tick = time.monotonic() + _TICK
                store._tick()
        except Exception:  # a bug here must not end the sender or the heartbeat
            log.exception("redis state store: background work failed")
        del store


class SenderMixin:
    """The send of what the fast paths leave pending, for RedisStore (the background thread, flush(), close() and
    any call to Redis run `_drain()`)."""

    replica_id: str
    _sig: Signal
    _thread: threading.Thread | None
    _sending: Any
    _lock: Any
    _dirty: dict[str, tuple[int, int]]
    _queue: list[tuple[list[str], list[Any], Callable[[], Any]]]
    _down: bool
    _down_until: float
    _valid_until: float
    _conn: Any
    _redis: Any
    _errors: tuple[type[BaseException], ...]
    _noscript: type[BaseException]
    _response_error: type[BaseException]
    _record: Any
    _flush_script: Any
    _kf: list[str]
    _clock: Callable[[], float]
    _take: Callable[[], list[Any]]
    _mark_down: Callable[[BaseException], None]
    _mark_up: Callable[[], None]

    def _wake(self) -> None:
        """Wake the background sender (no-op without a background thread: flush() or the next call sends)."""
        sig = self._sig
        if self._thread is not None and not sig.pending:
            with sig.cond:
                sig.pending = True
                sig.cond.notify()

    def _drain(self) -> None:
        """Send the pending in-flight counts and queued records in one pipeline (the background sender, flush(),
        close() and any call to Redis run this). Errors are handled here: Redis is marked down and queued records
        go to the local state instead, as a synchronous record() in the outage would (the counts are republished
        by the heartbeat when Redis is back)."""
        with self._sending:
            self._drain_locked()

    def _drain_locked(self) -> None:
        if not self._dirty and not self._queue:
            return
        with self._lock:
            if not self._dirty and not self._queue:
                return
            records, self._queue = self._queue, []
            publish = None if self._down and self._clock() < self._down_until else self._take()
        if publish is None:
            for *_, local in records:
                local()
            return
        cmds: list[tuple[Any, list[str], list[Any], Callable[[], Any] | None]] = []
        block = publish
        for keys, args, local in records:  # the first record carries the counts
            cmds.append((self._record, keys, [*args, *block], local))
            block = [self.replica_id, "", 0]
        if block is publish:
            cmds.append((self._flush_script, self._kf, publish, None))
        try:
            results = self._send_batch(
                [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args, _ in cmds]
            )
        except self._errors as exc:
            self._mark_down(exc)
            for *_, local in records:
                local()
            return
        changed = False
        for (script, keys, args, cmd_local), result in zip(cmds, results, strict=True):
            if isinstance(result, self._noscript):  # scripts not loaded yet (or Redis restarted): load, resend
                try:
                    result = script(keys=keys, args=args)
                except self._errors as exc:
                    self._mark_down(exc)
                    if cmd_local is not None:
                        cmd_local()
                    continue
            if isinstance(result, Exception):
                log.error("redis state store: background send failed: %s", result)
            elif result in ("opened", "closed", b"opened", b"closed"):  # a stale snapshot: decide() must reload it
                changed = True
        if changed:
            self._valid_until = -math.inf
        if self._down:
            self._mark_up()

    def _send_batch(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """One round trip for `commands` on the sender's own connection (`_sending` held), packed here rather than
        by redis-py's pipeline, which costs several times the Python work (and GIL) per batch. Error replies come
        back as exception objects."""
        conn = self._conn
        if conn is None:
            make = getattr(getattr(self._redis, "connection_pool", None), "make_connection", None)
            if make is None:  # a client without a plain connection pool: its pipeline
                pipe = self._redis.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                return pipe.execute(raise_on_error=False)
            conn = self._conn = make()
        out = []
        try:
            conn.send_packed_command([b"".join(pack(command) for command in commands)], check_health=False)
            for _ in commands:
                try:
                    out.append(conn.read_response())
                except self._response_error as exc:
                    out.append(exc)
        except BaseException:
            conn.disconnect()  # a half-read reply must not be read as the next batch's
            raise
        return out
