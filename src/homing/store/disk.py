"""The one door between the store and the file system.

The store never calls ``open``/``os.*`` itself: it goes through a :class:`Disk`. Two
implementations exist: :class:`OsDisk` (the real thing) and
:class:`homing.store.simulated_disk.SimulatedDisk`, which keeps files in memory and, on a
simulated crash, forgets everything that was not made durable, and can inject faults. The same
store tests run against both.

Contract (what a caller may rely on, and what it must do):

- ``DiskFile.pwrite`` writes all of ``data`` or raises ``OSError`` (``ENOSPC``, ``EIO``...). After
  an error, how much of the range was written is unknown.
- Written bytes are durable only after ``DiskFile.sync`` returns (an ``fdatasync``). If ``sync``
  raises, the caller must assume the written-but-unsynced bytes may be lost *and* that a later
  ``sync`` may falsely succeed (Linux can mark failed pages clean): never retry and then trust it.
- Creating, renaming or removing a file changes its directory: that change is durable only after
  ``Disk.sync_dir`` of the parent directory.
- Errors are ``OSError`` with an ``errno``; translating them into store errors is the caller's job.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Disk", "DiskFile", "DiskUsage", "OsDisk", "OsDiskFile"]


@dataclass(frozen=True, slots=True)
class DiskUsage:
    total_bytes: int
    used_bytes: int

    @property
    def used_ratio(self) -> float:
        return self.used_bytes / self.total_bytes if self.total_bytes else 1.0


class DiskFile(Protocol):
    @property
    def path(self) -> str: ...

    def pread(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer only at the end of the file)."""
        ...

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        """Write all of ``data`` at ``offset`` or raise ``OSError``."""
        ...

    def sync(self) -> None:
        """Make every byte written so far durable (``fdatasync``)."""
        ...

    def size(self) -> int: ...

    def truncate(self, size: int) -> None: ...

    def close(self) -> None: ...


class Disk(Protocol):
    def open(self, path: str, *, create: bool = False) -> DiskFile:
        """Open for reading and writing; with ``create``, make the file if it is missing."""
        ...

    def exists(self, path: str) -> bool: ...

    def list_dir(self, path: str) -> list[str]:
        """Names in a directory, sorted; an empty list if the directory does not exist."""
        ...

    def make_dirs(self, path: str) -> None:
        """``mkdir -p``, making each created directory durable in its parent."""
        ...

    def remove(self, path: str) -> None: ...

    def rename(self, source: str, target: str) -> None:
        """Atomically replace ``target`` with ``source``."""
        ...

    def sync_dir(self, path: str) -> None:
        """Make the directory's entries (creations, renames, removals) durable."""
        ...

    def usage(self, path: str) -> DiskUsage:
        """Size and use of the file system holding ``path``."""
        ...


class OsDiskFile:
    __slots__ = ("_fd", "_path")

    def __init__(self, path: str, fd: int) -> None:
        self._path = path
        self._fd = fd

    @property
    def path(self) -> str:
        return self._path

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            if written <= 0:  # pragma: no cover - the kernel reports errors by raising
                raise OSError(errno.EIO, "short write", self._path)
            view = view[written:]
            offset += written

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class OsDisk:
    """The real file system."""

    def open(self, path: str, *, create: bool = False) -> OsDiskFile:
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        return OsDiskFile(path, os.open(path, flags, 0o644))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def list_dir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

    def make_dirs(self, path: str) -> None:
        path = os.path.abspath(path)
        missing: list[str] = []
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for directory in reversed(missing):
            os.mkdir(directory, 0o755)
            self.sync_dir(os.path.dirname(directory))

    def remove(self, path: str) -> None:
        os.remove(path)

    def rename(self, source: str, target: str) -> None:
        os.replace(source, target)

    def sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def usage(self, path: str) -> DiskUsage:
        stats = os.statvfs(path)
        # As df(1) counts "Use%": used / (used + available to unprivileged writers). Space reserved
        # for root is neither ours to count on nor "used": counting it as used (total - f_bavail)
        # put the guard far above what operators see in df (a disk df shows 45% full read 78%).
        used = (stats.f_blocks - stats.f_bfree) * stats.f_frsize
        available = stats.f_bavail * stats.f_frsize
        return DiskUsage(total_bytes=used + available, used_bytes=used)
