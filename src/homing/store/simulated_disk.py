"""An in-memory :class:`~homing.store.disk.Disk` that forgets, on a simulated crash, what was never durable.

It exists so that power loss and disk faults can be tested deterministically: the store runs against
it exactly as against :class:`~homing.store.disk.OsDisk`, and a test calls :meth:`SimulatedDisk.crash`
at any point and reopens the store on what survived.

Theory of operation
-------------------

*Files* are inodes. Each has its *current* content (what reads return), its *durable* content (what is
on the platter) and the list of changes (writes and truncates) made since its last sync. ``sync``
applies that list to the durable content and empties it. Durable content is deliberately rebuilt from
the changes rather than copied from the current content: that is what lets us model the Linux fsync
trap. When a sync fails, the kernel may mark the dirty pages clean while they still hold the new data,
so reads keep seeing it, a later fsync "succeeds", and the data is gone after a power loss. A failed
``sync`` therefore drops the change list and leaves the durable content as it was.

*Directories* map names to nodes (files or directories), once as *current* entries and once as
*durable* entries. Creating, removing or renaming changes only the current entries; ``sync_dir``
copies them to the durable ones. A rename is an entry change, so an un-synced rename is undone by a
crash, and a file created but never made durable in its directory vanishes whatever its own syncs.
Directories are independent: a cross-directory rename becomes durable one side at a time, which is
weaker than a journaling file system and so only admits more crash states, never fewer.

``crash()`` walks the tree along durable entries (in name order, so a seeded run replays exactly),
makes every directory's current entries its durable ones, and every file's content its durable
content. With ``torn=True``, each file instead keeps a random prefix of its un-synced changes, the
last kept write possibly cut short, as if the writes had partially reached the platter in order. All
handles opened before a crash fail afterwards with ``EBADF``: the process that held them is dead.

*Space* is the sum of the sizes of files that are linked or still open (an unlinked file keeps its
space until its last handle closes, as on a real file system). A write that would exceed the capacity
writes what fits, then fails with ``ENOSPC``. Overwriting existing bytes never needs space.

*Faults* happen only when armed (``fail_next_write``, ``fail_next_sync``, ``fail_next_sync_dir``,
``flip_bit``); each armed fault fires once, at the first matching operation. Armed faults belong to
the disk, not the process, so they survive a crash until they fire or ``clear_faults`` is called.

One lock guards all state, because the store syncs from a flusher thread while others write.
"""

from __future__ import annotations

import errno
import os
import random
import threading
from dataclasses import dataclass, replace
from typing import TypeAlias

from homing.store.disk import DiskUsage

__all__ = ["DiskStats", "SimulatedDisk", "SimulatedFile"]

# Reported as the file system's size when no capacity is set: large enough never to matter.
_UNLIMITED_TOTAL_BYTES = 1 << 40

# A change to a file since its last sync: (offset, data) for a write, (new size, None) for a truncate.
_Change: TypeAlias = tuple[int, bytes | None]


def _error(code: int, path: str) -> OSError:
    # OSError's constructor picks the subclass (FileNotFoundError...) from the errno, like the OS layer.
    return OSError(code, os.strerror(code), path)


def _normalize(path: str) -> str:
    # The simulated process runs in "/", so relative paths resolve from the root.
    return os.path.normpath(os.path.join("/", path))


def _parts(path: str) -> list[str]:
    return [part for part in _normalize(path).split("/") if part]


def _resize(content: bytearray, size: int) -> None:
    if size < len(content):
        del content[size:]
    else:
        content.extend(bytes(size - len(content)))


def _apply(content: bytearray, change: _Change) -> None:
    offset, data = change
    if data is None:
        _resize(content, offset)
        return
    end = offset + len(data)
    if end > len(content):
        _resize(content, end)
    content[offset:end] = data


class _File:
    __slots__ = ("changes", "content", "durable", "links", "opens")

    def __init__(self) -> None:
        self.content = bytearray()
        self.durable = bytearray()
        self.changes: list[_Change] = []
        self.links = 0
        self.opens = 0

    @property
    def holds_space(self) -> bool:
        return self.links > 0 or self.opens > 0


class _Dir:
    __slots__ = ("durable", "entries")

    def __init__(self) -> None:
        self.entries: dict[str, _Node] = {}
        self.durable: dict[str, _Node] = {}


_Node: TypeAlias = _File | _Dir


@dataclass(frozen=True, slots=True)
class _Fault:
    code: int
    path_substring: str | None
    after_bytes: int = 0

    def matches(self, path: str) -> bool:
        return self.path_substring is None or self.path_substring in path


@dataclass(slots=True)
class DiskStats:
    """Operations that reached the disk, failed ones included."""

    writes: int = 0
    syncs: int = 0
    dir_syncs: int = 0
    crashes: int = 0


class SimulatedFile:
    """A handle on a :class:`SimulatedDisk` file; dead (``EBADF``) once closed or after a crash."""

    __slots__ = ("_closed", "_disk", "_epoch", "_file", "_path")

    def __init__(self, disk: SimulatedDisk, file: _File, path: str, epoch: int) -> None:
        self._disk = disk
        self._file = file
        self._path = path
        self._epoch = epoch
        self._closed = False

    @property
    def path(self) -> str:
        return self._path

    def _check(self) -> None:
        if self._closed or self._epoch != self._disk._epoch:
            raise _error(errno.EBADF, self._path)

    def pread(self, size: int, offset: int) -> bytes:
        with self._disk._lock:
            self._check()
            if size < 0 or offset < 0:
                raise _error(errno.EINVAL, self._path)
            return bytes(self._file.content[offset : offset + size])

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        payload = bytes(data)
        with self._disk._lock:
            self._check()
            if offset < 0:
                raise _error(errno.EINVAL, self._path)
            self._disk._write(self._file, _normalize(self._path), payload, offset)

    def sync(self) -> None:
        with self._disk._lock:
            self._check()
            self._disk._sync(self._file, _normalize(self._path))

    def size(self) -> int:
        with self._disk._lock:
            self._check()
            return len(self._file.content)

    def truncate(self, size: int) -> None:
        with self._disk._lock:
            self._check()
            if size < 0:
                raise _error(errno.EINVAL, self._path)
            self._disk._truncate(self._file, size, self._path)

    def close(self) -> None:
        with self._disk._lock:
            # Closing after a crash is a no-op so that test clean-up code need not care.
            if not self._closed and self._epoch == self._disk._epoch:
                self._disk._add_refs(self._file, opens=-1)
            self._closed = True


class SimulatedDisk:
    """An in-memory, crashable, fault-injecting :class:`~homing.store.disk.Disk` (see the module doc)."""

    def __init__(self, seed: int = 0, capacity_bytes: int | None = None) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._capacity = capacity_bytes
        self._root = _Dir()
        self._used = 0
        self._epoch = 0
        self._stats = DiskStats()
        self._write_faults: list[_Fault] = []
        self._sync_faults: list[_Fault] = []
        self._sync_dir_faults: list[_Fault] = []

    # -- the Disk interface

    def open(self, path: str, *, create: bool = False) -> SimulatedFile:
        with self._lock:
            parent, name = self._parent(path)
            node = parent.entries.get(name)
            if node is None:
                if not create:
                    raise _error(errno.ENOENT, path)
                node = parent.entries[name] = _File()
                self._add_refs(node, links=1)
            elif isinstance(node, _Dir):
                raise _error(errno.EISDIR, path)
            self._add_refs(node, opens=1)
            return SimulatedFile(self, node, path, self._epoch)

    def exists(self, path: str) -> bool:
        with self._lock:
            try:
                self._walk(_parts(path), path)
            except OSError:
                return False
            return True

    def list_dir(self, path: str) -> list[str]:
        with self._lock:
            try:
                node = self._walk(_parts(path), path)
            except FileNotFoundError:
                return []
            if not isinstance(node, _Dir):
                raise _error(errno.ENOTDIR, path)
            return sorted(node.entries)

    def make_dirs(self, path: str) -> None:
        with self._lock:
            parts = _parts(path)
            node = self._root
            for depth, name in enumerate(parts):
                child = node.entries.get(name)
                if child is None:
                    child = node.entries[name] = _Dir()
                    # As OsDisk does: a full sync of the parent, so it is subject to injected faults.
                    self._sync_dir("/" + "/".join(parts[:depth]))
                elif isinstance(child, _File):
                    raise _error(errno.EEXIST, path)
                node = child

    def remove(self, path: str) -> None:
        with self._lock:
            parent, name = self._parent(path)
            node = parent.entries.get(name)
            if node is None:
                raise _error(errno.ENOENT, path)
            if isinstance(node, _Dir):
                raise _error(errno.EISDIR, path)
            del parent.entries[name]
            self._add_refs(node, links=-1)

    def rename(self, source: str, target: str) -> None:
        with self._lock:
            source_parent, source_name = self._parent(source)
            node = source_parent.entries.get(source_name)
            if node is None:
                raise _error(errno.ENOENT, source)
            target_parent, target_name = self._parent(target)
            replaced = target_parent.entries.get(target_name)
            if replaced is node:
                return
            if isinstance(node, _Dir):
                source_parts, target_parts = _parts(source), _parts(target)
                if target_parts[: len(source_parts)] == source_parts:
                    raise _error(errno.EINVAL, target)
                if isinstance(replaced, _File):
                    raise _error(errno.ENOTDIR, target)
                if isinstance(replaced, _Dir) and replaced.entries:
                    raise _error(errno.ENOTEMPTY, target)
            elif isinstance(replaced, _Dir):
                raise _error(errno.EISDIR, target)
            del source_parent.entries[source_name]
            target_parent.entries[target_name] = node
            if isinstance(replaced, _File):
                self._add_refs(replaced, links=-1)

    def sync_dir(self, path: str) -> None:
        with self._lock:
            self._sync_dir(path)

    def usage(self, path: str) -> DiskUsage:
        with self._lock:
            self._walk(_parts(path), path)  # statvfs fails on a missing path too
            total = _UNLIMITED_TOTAL_BYTES if self._capacity is None else self._capacity
            return DiskUsage(total_bytes=total, used_bytes=self._used)

    # -- simulation controls

    def crash(self, *, torn: bool = False) -> None:
        """Lose power: keep only what was durable (plus, if ``torn``, a random prefix of the rest)."""
        with self._lock:
            self._epoch += 1
            self._stats.crashes += 1
            self._used = 0
            self._revert(self._root, torn, set())

    def durable_content(self, path: str) -> bytes | None:
        """What a crash would leave at ``path`` (ignoring torn writes), or None if it would be gone."""
        with self._lock:
            node: _Node | None = self._root
            for name in _parts(path):
                node = node.durable.get(name) if isinstance(node, _Dir) else None
            return bytes(node.durable) if isinstance(node, _File) else None

    @property
    def stats(self) -> DiskStats:
        with self._lock:
            return replace(self._stats)

    def set_capacity(self, capacity_bytes: int | None) -> None:
        """Change the capacity (None: unlimited); lowering it below the usage only blocks growth."""
        with self._lock:
            self._capacity = capacity_bytes

    def fail_next_write(
        self, errno_code: int, path_substring: str | None = None, after_bytes: int = 0
    ) -> None:
        """The next matching ``pwrite`` writes its first ``after_bytes`` bytes, then raises."""
        with self._lock:
            self._write_faults.append(_Fault(errno_code, path_substring, after_bytes))

    def fail_next_sync(self, errno_code: int = errno.EIO, path_substring: str | None = None) -> None:
        """The next matching file ``sync`` raises and loses the file's un-synced changes (Linux)."""
        with self._lock:
            self._sync_faults.append(_Fault(errno_code, path_substring))

    def fail_next_sync_dir(self, errno_code: int = errno.EIO, path_substring: str | None = None) -> None:
        """The next matching ``sync_dir`` raises; the directory's durable entries stay as they were."""
        with self._lock:
            self._sync_dir_faults.append(_Fault(errno_code, path_substring))

    def clear_faults(self) -> None:
        """Disarm every fault that has not fired yet."""
        with self._lock:
            self._write_faults.clear()
            self._sync_faults.clear()
            self._sync_dir_faults.clear()

    def flip_bit(self, path: str, offset: int, bit: int = 0) -> None:
        """Media corruption: flip one bit of the file at ``path``, in memory and on the platter."""
        with self._lock:
            node = self._walk(_parts(path), path)
            if not isinstance(node, _File):
                raise _error(errno.EISDIR, path)
            if not 0 <= offset < max(len(node.content), len(node.durable)) or not 0 <= bit < 8:
                raise ValueError(f"no bit {bit} at offset {offset} in {path}")
            for content in (node.content, node.durable):
                if offset < len(content):
                    content[offset] ^= 1 << bit

    # -- internals; the caller holds the lock

    def _walk(self, parts: list[str], path: str) -> _Node:
        node: _Node = self._root
        for name in parts:
            if not isinstance(node, _Dir):
                raise _error(errno.ENOTDIR, path)
            child = node.entries.get(name)
            if child is None:
                raise _error(errno.ENOENT, path)
            node = child
        return node

    def _parent(self, path: str) -> tuple[_Dir, str]:
        parts = _parts(path)
        if not parts:
            raise _error(errno.EBUSY, path)  # the root has no entry to create, remove or rename
        parent = self._walk(parts[:-1], path)
        if not isinstance(parent, _Dir):
            raise _error(errno.ENOTDIR, path)
        return parent, parts[-1]

    def _add_refs(self, file: _File, *, links: int = 0, opens: int = 0) -> None:
        held = file.holds_space
        file.links += links
        file.opens += opens
        if held != file.holds_space:
            self._used += len(file.content) if file.holds_space else -len(file.content)

    def _change(self, file: _File, change: _Change) -> None:
        before = len(file.content)
        _apply(file.content, change)
        file.changes.append(change)
        if file.holds_space:
            self._used += len(file.content) - before

    def _room_end(self, file: _File) -> int:
        """How far ``file`` may extend before the disk is full (overwrites are always within it)."""
        if self._capacity is None:
            return 1 << 62
        return len(file.content) + max(0, self._capacity - self._used)

    def _write(self, file: _File, path: str, data: bytes, offset: int) -> None:
        self._stats.writes += 1
        count, failure = len(data), None
        fault = self._take(self._write_faults, path)
        if fault is not None:
            count, failure = min(count, fault.after_bytes), fault.code
        room_end = self._room_end(file)
        if offset + count > room_end:
            # A real file system fills what it can, then reports ENOSPC.
            count, failure = max(0, room_end - offset), errno.ENOSPC
        if count > 0:
            self._change(file, (offset, data[:count]))
        if failure is not None:
            raise _error(failure, path)

    def _truncate(self, file: _File, size: int, path: str) -> None:
        if size > self._room_end(file):
            raise _error(errno.ENOSPC, path)
        if size != len(file.content):
            self._change(file, (size, None))

    def _sync(self, file: _File, path: str) -> None:
        self._stats.syncs += 1
        fault = self._take(self._sync_faults, path)
        changes, file.changes = file.changes, []
        if fault is not None:
            # The Linux trap: the pages are now "clean", so these changes will never be written.
            raise _error(fault.code, path)
        for change in changes:
            _apply(file.durable, change)

    def _sync_dir(self, path: str) -> None:
        node = self._walk(_parts(path), path)
        if not isinstance(node, _Dir):
            raise _error(errno.ENOTDIR, path)
        self._stats.dir_syncs += 1
        fault = self._take(self._sync_dir_faults, _normalize(path))
        if fault is not None:
            raise _error(fault.code, path)
        node.durable = dict(node.entries)

    @staticmethod
    def _take(faults: list[_Fault], path: str) -> _Fault | None:
        for index, fault in enumerate(faults):
            if fault.matches(path):
                return faults.pop(index)
        return None

    def _revert(self, directory: _Dir, torn: bool, seen: set[_Node]) -> None:
        # `seen` matters because per-directory durability can leave a node in two durable directories.
        seen.add(directory)
        directory.entries = dict(directory.durable)
        for name in sorted(directory.entries):
            node = directory.entries[name]
            if node in seen:
                if isinstance(node, _File):
                    node.links += 1
                continue
            if isinstance(node, _Dir):
                self._revert(node, torn, seen)
                continue
            seen.add(node)
            self._revert_file(node, torn)
            node.links, node.opens = 1, 0
            self._used += len(node.content)

    def _revert_file(self, file: _File, torn: bool) -> None:
        kept: list[_Change] = []
        if torn and file.changes:
            kept = file.changes[: self._rng.randint(0, len(file.changes))]
            offset, data = kept[-1] if kept else (0, None)
            if data is not None:
                kept[-1] = (offset, data[: self._rng.randint(1, len(data))])
        for change in kept:
            _apply(file.durable, change)
        file.content = bytearray(file.durable)
        file.changes = []
