"""Refuse writes before the disk fills, rather than fail halfway through one.

Reading the file system's usage costs a syscall, so the reading is cached for a short, explicit
interval; the guard is a threshold well below 100 %, so a write slipping through in that window
cannot fill the disk (pre-allocated segments already hold the space records are written into).
"""

from __future__ import annotations

from homing.clock import Clock
from homing.store.disk import Disk, DiskUsage
from homing.store.errors import DiskFullError

__all__ = ["DiskGuard"]

DEFAULT_MAX_USED_RATIO = 0.75
DEFAULT_REFRESH_INTERVAL_S = 0.1


class DiskGuard:
    def __init__(
        self,
        disk: Disk,
        path: str,
        clock: Clock,
        max_used_ratio: float = DEFAULT_MAX_USED_RATIO,
        refresh_interval_s: float = DEFAULT_REFRESH_INTERVAL_S,
    ) -> None:
        assert 0.0 < max_used_ratio <= 1.0
        self._disk = disk
        self._path = path
        self._clock = clock
        self.max_used_ratio = max_used_ratio
        self._refresh_interval_s = refresh_interval_s
        self._usage: DiskUsage | None = None
        self._read_at_s = 0.0

    def usage(self) -> DiskUsage:
        now = self._clock.monotonic_s()
        if self._usage is None or now - self._read_at_s >= self._refresh_interval_s:
            self._usage = self._disk.usage(self._path)
            self._read_at_s = now
        return self._usage

    def refresh(self) -> None:
        self._usage = None

    def is_under_pressure(self) -> bool:
        return self.usage().used_ratio >= self.max_used_ratio

    def check(self) -> None:
        """Raise :class:`DiskFullError` if the disk is at or above the guard ratio."""
        usage = self.usage()
        if usage.used_ratio >= self.max_used_ratio:
            raise DiskFullError(
                f"disk {usage.used_ratio:.1%} used, at or above the guard of {self.max_used_ratio:.0%}: "
                "writes are refused until space frees"
            )
