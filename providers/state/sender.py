"""RedisStore's background sender: the store's pending fast-path writes in, one pipelined round trip out,
as soon as the sender is woken; plus the periodic tick (heartbeat, flush) in between. Also the Redis wire
encoding the sender packs its commands with."""

from __future__ import annotations

import logging
import threading
import time
import weakref
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
