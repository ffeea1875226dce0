"""Waiting in tests: a condition in, its first truthy value out, polled until a deadline instead of a fixed sleep.

A test that waits for something another thread, process or task does polls for it with `wait_until` (or
`await_until` in async tests): fast when the machine is, and a clear failure (what it waited for) rather than a
hang when the thing never happens. The deadline is generous on purpose: it bounds a failure, it does not measure
speed (speed belongs in bench/).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import anyio

T = TypeVar("T")

DEADLINE_S = 10.0  # how long a test waits before it fails; far above any wait on a loaded 2-core machine


def wait_until(check: Callable[[], T], what: str, timeout: float = DEADLINE_S, interval: float = 0.002) -> T:
    """Call `check` until it returns something truthy and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


async def await_until(check: Callable[[], T], what: str, timeout: float = DEADLINE_S, interval: float = 0.002) -> T:
    """`wait_until` for async tests: sleeps on the event loop between calls, so the loop keeps running."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await anyio.sleep(interval)
