"""Fault helpers: a disk whose syncs can be held or slowed, file damage, a size-limited tmpfs.

- :class:`GatedDisk`: a :class:`SimulatedDisk` whose commit-log syncs can be held (a stuck
  device) or slowed (a slow one), to put writes in the window between written and durable.
- :func:`damage_file`: delete, zero, truncate or append garbage to a file on any
  :class:`~homing.store.disk.Disk` (a lost or corrupted derived file, a torn or damaged segment).
- :func:`tmpfs`: mount a tmpfs with a size limit (needs root) for a full disk with a real broker.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from homing.store import SimulatedDisk
from homing.store.disk import Disk, DiskFile

__all__ = ["DAMAGES", "GatedDisk", "damage_file", "tmpfs", "tmpfs_supported"]

DAMAGES = ("delete", "zero", "truncate", "garbage")


class _GatedFile:
    """A file whose ``sync`` waits for its disk's gate (and its delay) before syncing."""

    def __init__(self, inner: DiskFile, disk: GatedDisk) -> None:
        self._inner = inner
        self._disk = disk

    @property
    def path(self) -> str:
        return self._inner.path

    def pread(self, size: int, offset: int) -> bytes:
        return self._inner.pread(size, offset)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        self._inner.pwrite(data, offset)

    def sync(self) -> None:
        self._disk.syncs_started += 1
        self._disk.gate.wait()
        if self._disk.sync_delay_s > 0:
            time.sleep(self._disk.sync_delay_s)
        self._inner.sync()

    def size(self) -> int:
        return self._inner.size()

    def truncate(self, size: int) -> None:
        self._inner.truncate(size)

    def close(self) -> None:
        self._inner.close()


class GatedDisk(SimulatedDisk):
    """Commit-log syncs wait while the gate is closed (:meth:`hold`) and take ``sync_delay_s``."""

    def __init__(self, seed: int = 0, path_substring: str = "commitlog") -> None:
        super().__init__(seed=seed)
        self.gate = threading.Event()
        self.gate.set()
        self.sync_delay_s = 0.0
        self.syncs_started = 0
        self._path_substring = path_substring

    def open(self, path: str, *, create: bool = False) -> DiskFile:  # type: ignore[override]
        handle = super().open(path, create=create)
        return _GatedFile(handle, self) if self._path_substring in path else handle

    def hold(self) -> None:
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()


def damage_file(disk: Disk, path: str, how: str, rng: random.Random) -> str:
    """Damage ``path`` (``delete``, ``zero``, ``truncate`` or ``garbage``); returns what was done."""
    if how == "delete":
        disk.remove(path)
        disk.sync_dir(os.path.dirname(path))
        return f"deleted {path}"
    handle = disk.open(path)
    try:
        size = handle.size()
        if how == "zero":
            handle.pwrite(bytes(size), 0)
            done = f"zeroed {size} bytes of {path}"
        elif how == "truncate":
            keep = rng.randrange(0, size) if size else 0
            handle.truncate(keep)
            done = f"truncated {path} from {size} to {keep} bytes"
        elif how == "garbage":
            at = rng.randrange(0, size) if size else 0
            length = rng.randint(1, 64)
            handle.pwrite(rng.randbytes(length), at)
            done = f"wrote {length} random bytes at {at} in {path}"
        else:
            raise ValueError(f"unknown damage {how!r}; one of {DAMAGES}")
        handle.sync()
        return done
    finally:
        handle.close()


def tmpfs_supported() -> bool:
    return os.geteuid() == 0 and Path("/proc/filesystems").read_text().find("tmpfs") >= 0


@contextmanager
def tmpfs(path: str | os.PathLike[str], size_bytes: int) -> Iterator[Path]:
    """Mount a tmpfs of ``size_bytes`` at ``path`` (created), unmounted (lazily) at the end."""
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(target)],
        check=True,
        capture_output=True,
    )
    try:
        yield target
    finally:
        result = subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)
        if result.returncode != 0:
            raise OSError(errno.EBUSY, f"cannot unmount {target}: {result.stderr.decode(errors='replace')}")
