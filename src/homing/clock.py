"""Time as an input.

Nothing in Homing reads the system time directly: it asks a :class:`Clock`. Tests inject a
:class:`FakeClock` and move it by hand, so timers, retention and timeouts replay exactly.

Two kinds of time are kept apart on purpose: wall time (``now_ms``) is what gets stored in records
and compared with user-supplied timestamps, and may jump; monotonic time (``monotonic_s``) measures
durations such as flush timeouts and never goes backwards.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock milliseconds since the Unix epoch (may jump)."""
        ...

    def monotonic_s(self) -> float:
        """Seconds on a clock that never goes backwards (for durations only)."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic_s(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to. Thread-safe."""

    def __init__(self, now_ms: int = 1_767_225_600_000, monotonic_s: float = 1000.0) -> None:
        self._lock = threading.Lock()
        self._now_ms = now_ms
        self._monotonic_s = monotonic_s

    def now_ms(self) -> int:
        with self._lock:
            return self._now_ms

    def monotonic_s(self) -> float:
        with self._lock:
            return self._monotonic_s

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        assert seconds >= 0, "use jump_wall_ms to move wall time backwards"
        with self._lock:
            self._now_ms += int(seconds * 1000)
            self._monotonic_s += seconds

    def jump_wall_ms(self, delta_ms: int) -> None:
        """Jump wall time only (either direction), as an NTP step would."""
        with self._lock:
            self._now_ms += delta_ms
