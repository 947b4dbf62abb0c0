"""Consume queues: per (topic, queue id), the position of each of its records in the commit log.

A consume queue is derived data: every entry can be rebuilt from the commit log, because each
record carries its topic, queue id and queue offset. Entry ``n`` of a queue lives at byte
``32 * (n - first)`` of the file whose 20-digit name is ``first``, the index of its first entry.

Entry layout (little-endian, 32 bytes)::

    offset size  field
    0      8     physical_offset     where the record starts in the commit log
    8      4     size                bytes of the record
    12     8     tag_hash            hash of the record's tag (0: no tag), for filtering without reading it
    20     8     store_timestamp_ms
    28     4     crc32c              of bytes [0, 28): damage is detected, then the queue is rebuilt

An all-zero entry is a hole (never written, or zeroed by damage). Files are not pre-allocated and
not synced on every write: the store syncs them before it writes a checkpoint that relies on them.
"""

from __future__ import annotations

import itertools
import os
import struct
from dataclasses import dataclass

import crc32c

from homing.store.disk import Disk, DiskFile

__all__ = [
    "ENTRY_BODY",
    "ENTRY_SIZE",
    "ConsumeQueue",
    "DamagedEntryError",
    "QueueEntry",
    "join_entries",
    "pack_entry",
]

ENTRY = struct.Struct("<QIQQI")
ENTRY_SIZE = ENTRY.size
assert ENTRY_SIZE == 32
ENTRY_BODY = struct.Struct("<QIQQ")  # the checksummed bytes [0, 28) of an entry


@dataclass(frozen=True, slots=True)
class QueueEntry:
    queue_offset: int
    physical_offset: int
    size: int
    tag_hash: int
    store_timestamp_ms: int


class DamagedEntryError(Exception):
    """An entry failed its checksum or is a hole below the queue's end: the queue needs a rebuild."""

    def __init__(self, queue_offset: int, reason: str) -> None:
        super().__init__(f"entry {queue_offset}: {reason}")
        self.queue_offset = queue_offset


def pack_entry(physical_offset: int, size: int, tag_hash: int, store_timestamp_ms: int) -> bytes:
    body = ENTRY_BODY.pack(physical_offset, size, tag_hash, store_timestamp_ms)
    return body + crc32c.crc32c(body).to_bytes(4, "little")


def join_entries(parts: list[bytes | int]) -> bytes:
    """Consecutive entries from their parts: each entry's ``ENTRY_BODY`` bytes followed by its crc32c.

    The same bytes as joining :func:`pack_entry` results, with one ``struct`` call for all of them
    instead of a conversion and a concatenation per entry (the dispatcher makes one per record).
    """
    return struct.pack("<" + "28sI" * (len(parts) // 2), *parts)


class ConsumeQueue:
    def __init__(self, disk: Disk, directory: str, entries_per_file: int) -> None:
        assert entries_per_file > 0
        self._disk = disk
        self.directory = directory
        self.entries_per_file = entries_per_file
        self._files: dict[int, DiskFile] = {}
        self.dirty: set[int] = set()
        # Entries [min_offset, next_offset) exist in files; derived from the files at open.
        self.min_offset = 0
        self.next_offset = 0

    def open(self) -> None:
        for name in self._disk.list_dir(self.directory):
            if len(name) == 20 and name.isdigit():
                self._files[int(name)] = self._disk.open(os.path.join(self.directory, name))
        if self._files:
            first = min(self._files)
            last = max(self._files)
            self.min_offset = first
            self.next_offset = last + self._files[last].size() // ENTRY_SIZE

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()

    def has_gap(self) -> bool:
        """True if a file between the first and the last is missing or short (lost or truncated)."""
        if not self._files:
            return False
        firsts = sorted(self._files)
        for first, following in itertools.pairwise(firsts):
            if following != first + self.entries_per_file:
                return True
            if self._files[first].size() < self.entries_per_file * ENTRY_SIZE:
                return True
        return False

    def _file_for(self, queue_offset: int, create: bool) -> tuple[DiskFile | None, int]:
        first = queue_offset - queue_offset % self.entries_per_file
        handle = self._files.get(first)
        if handle is None and create:
            self._disk.make_dirs(self.directory)
            handle = self._disk.open(os.path.join(self.directory, f"{first:020d}"), create=True)
            self._disk.sync_dir(self.directory)
            self._files[first] = handle
            if len(self._files) == 1:
                self.min_offset = first
        return handle, (queue_offset - first) * ENTRY_SIZE

    def write(self, queue_offset: int, entries: bytes) -> None:
        """Write packed entries starting at ``queue_offset`` (may cross file boundaries)."""
        count = len(entries) // ENTRY_SIZE
        done = 0
        while done < count:
            offset = queue_offset + done
            room = self.entries_per_file - offset % self.entries_per_file
            take = min(room, count - done)
            handle, position = self._file_for(offset, create=True)
            assert handle is not None
            handle.pwrite(entries[done * ENTRY_SIZE : (done + take) * ENTRY_SIZE], position)
            self.dirty.add(offset - offset % self.entries_per_file)
            done += take
        self.next_offset = max(self.next_offset, queue_offset + count)

    def read(self, queue_offset: int, count: int) -> list[QueueEntry]:
        """Up to ``count`` entries from ``queue_offset``, stopping at the end of a file.

        Raises :class:`DamagedEntryError` at the first entry that fails its checksum or is a hole.
        """
        if queue_offset < self.min_offset or queue_offset >= self.next_offset:
            return []
        handle, position = self._file_for(queue_offset, create=False)
        if handle is None:
            raise DamagedEntryError(queue_offset, "its file is missing")
        room = self.entries_per_file - queue_offset % self.entries_per_file
        count = min(count, room, self.next_offset - queue_offset)
        data = handle.pread(count * ENTRY_SIZE, position)
        entries: list[QueueEntry] = []
        for index in range(len(data) // ENTRY_SIZE):
            physical, size, tag_hash, stored_ms, checksum = ENTRY.unpack_from(data, index * ENTRY_SIZE)
            start = index * ENTRY_SIZE
            if crc32c.crc32c(data[start : start + 28]) != checksum:
                reason = "hole" if not any(data[start : start + ENTRY_SIZE]) else "checksum"
                raise DamagedEntryError(queue_offset + index, reason)
            entries.append(QueueEntry(queue_offset + index, physical, size, tag_hash, stored_ms))
        if len(entries) < count:
            raise DamagedEntryError(queue_offset + len(entries), "file shorter than the queue")
        return entries

    def truncate(self, next_offset: int) -> None:
        """Forget entries at and after ``next_offset`` (they point past the end of the log)."""
        for first in sorted(self._files, reverse=True):
            handle = self._files[first]
            if first >= next_offset and first > self.min_offset:
                handle.close()
                self._disk.remove(os.path.join(self.directory, f"{first:020d}"))
                del self._files[first]
                self.dirty.discard(first)
            elif first + handle.size() // ENTRY_SIZE > next_offset:
                handle.truncate(max(next_offset - first, 0) * ENTRY_SIZE)
                self.dirty.add(first)
        self._disk.sync_dir(self.directory)
        self.next_offset = next_offset

    def delete_files_before(self, queue_offset: int) -> None:
        """Remove whole files whose every entry is below ``queue_offset`` (retention)."""
        for first in sorted(self._files):
            if first + self.entries_per_file > queue_offset or first == max(self._files):
                break
            self._files.pop(first).close()
            self.dirty.discard(first)
            self._disk.remove(os.path.join(self.directory, f"{first:020d}"))
        self._disk.sync_dir(self.directory)
        if self._files:
            self.min_offset = max(self.min_offset, min(self._files))

    def sync(self) -> None:
        for first in sorted(self.dirty):
            handle = self._files.get(first)
            if handle is not None:
                handle.sync()
        self.dirty.clear()

    def remove_all(self) -> None:
        for first, handle in list(self._files.items()):
            handle.close()
            self._disk.remove(os.path.join(self.directory, f"{first:020d}"))
        self._files.clear()
        self.dirty.clear()
        self.min_offset = 0
        self.next_offset = 0
        if self._disk.list_dir(self.directory) == [] and self._disk.exists(self.directory):
            self._disk.sync_dir(self.directory)
