"""Test helper for every stage that takes an injected clock: a start time in; a callable clock whose `t` the test
moves by hand out (nothing waits for time to pass)."""

from __future__ import annotations

__all__ = ["START", "Clock"]

START = 1_700_000_000.0  # a fixed wall-clock instant (2023-11-14), so no test depends on today's date


class Clock:
    """A wall clock that stands still until the test moves `t`."""

    def __init__(self, t: float = START) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t
