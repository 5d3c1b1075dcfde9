"""Clocks, injected into every edge that needs time, so tests run in virtual time.

``SystemClock`` reads the real monotonic clock; ``ManualClock`` is advanced by hand.
Accounting code never reads a clock: it receives timestamps as arguments.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """A source of monotonic time and of sleeping."""

    def monotonic(self) -> float:
        """Seconds on a monotonic clock (unaffected by wall-clock steps)."""
        ...

    def wall(self) -> float:
        """Unix time, seconds (for timestamps shown to people only)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        """Seconds from :func:`time.monotonic`."""
        return time.monotonic()

    def wall(self) -> float:
        """Seconds from :func:`time.time`."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        """Sleep with :func:`time.sleep`."""
        time.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when told to; ``sleep`` advances it instantly.

    Args:
        start: Initial monotonic reading, s.
        wall_offset: Unix time at ``start``, s.
    """

    def __init__(self, start: float = 1000.0, wall_offset: float = 1_800_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_offset - start
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        """The current virtual time, s."""
        with self._lock:
            return self._now

    def wall(self) -> float:
        """Virtual Unix time, s."""
        with self._lock:
            return self._now + self._wall_offset

    def sleep(self, seconds: float) -> None:
        """Advance virtual time by ``seconds`` without blocking."""
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        """Move virtual time forward.

        Args:
            seconds: How far, s; must not be negative.

        Raises:
            ValueError: When ``seconds`` is negative (a monotonic clock never goes back).
        """
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back ({seconds} s)")
        with self._lock:
            self._now += seconds
