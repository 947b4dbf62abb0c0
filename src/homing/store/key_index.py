"""Key index: find records by message id or business key within a time range.

Theory of operation. The index is derived data, kept in files so that broker memory stays flat in
the number of stored messages. New (key hash, store time, log offset) triples collect in a bounded
in-memory buffer; when it is full (or the store closes) the buffer is sorted by key hash and
written as one immutable *run* file covering a contiguous log range ``[start, end)``: every record
in that range has all its keys in that run. Runs tile the log from its first offset up to the
index's covered end, so a lost or damaged run is a gap that is rebuilt by rescanning its range.

A lookup binary-searches each run whose time range overlaps the query (a handful of ``pread`` calls
per run), then the buffer. Hashes collide; the caller reads the record and compares the real key.

In memory an entry is 24 bytes, ``key_hash``, ``physical_offset`` and ``store_timestamp_ms``, each
big-endian (:func:`index_entry`), so that plain byte order is run order (by hash, then log offset)
and a list of entries sorts without a key function. The buffer keeps them in 256 buckets by their
first byte (the top byte of the hash): a flush sorts 256 short lists rather than one long one,
which means fewer comparisons and no sort holding the GIL for tens of milliseconds while writers
wait for it. The run file holds the same three words in another order, little-endian.

Run file ``<start:020d>-<end:020d>.idx``, little-endian::

    offset size  field
    0      4     magic              b"HMI1"
    4      4     crc32c             of bytes [8, file end)
    8      8     entry_count
    16     8     start_offset       log range covered, [start, end)
    24     8     end_offset
    32     8     min_store_ms       time range of the entries (0, 0 when empty)
    40     8     max_store_ms
    48     24*n  entries            (key_hash u64, store_timestamp_ms u64, physical_offset u64),
                                    sorted by key_hash then physical_offset
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

import crc32c

from homing.store.disk import Disk

__all__ = ["ENTRY_TAIL", "DamagedRunError", "KeyIndex", "index_entry", "key_hash", "key_hasher"]

_HEADER = struct.Struct("<4sIQQQQQ")
_ENTRY = struct.Struct("<QQQ")
_MAGIC = b"HMI1"
DEFAULT_BUFFER_ENTRIES = 100_000

MESSAGE_ID_KIND = b"i"
BUSINESS_KEY_KIND = b"k"


_BUCKETS = 256  # by an entry's first byte
_ENTRY_IN_MEMORY = struct.Struct(">QQQ")  # key hash, physical offset, store ms
# What follows the hash in an in-memory entry: physical offset, store ms. For a key hashed with a
# key_hasher copy, ``hasher.digest()[::-1] + ENTRY_TAIL.pack(offset, ms)`` is its entry (the digest
# is the hash little-endian; the entry wants it big-endian).
ENTRY_TAIL = struct.Struct(">QQ")
_HASHERS = {kind: hashlib.blake2b(kind, digest_size=8) for kind in (MESSAGE_ID_KIND, BUSINESS_KEY_KIND)}


def key_hasher(kind: bytes) -> hashlib.blake2b:
    """A BLAKE2b state that has already taken ``kind``: ``copy()`` it, ``update()`` with the UTF-8 key.

    Copying a prepared state costs less than half of making a new one, and the dispatcher hashes
    every message id it indexes.
    """
    prepared = _HASHERS.get(kind)
    return prepared if prepared is not None else hashlib.blake2b(kind, digest_size=8)


def key_hash(kind: bytes, key: str) -> int:
    """A stable 64-bit hash (never Python's per-process ``hash``): it is written to disk.

    BLAKE2b with an 8-byte digest (``digest_size=8``, not a cut BLAKE2b-512), read little-endian,
    over ``kind`` followed by the UTF-8 key.
    """
    hasher = key_hasher(kind).copy()
    hasher.update(key.encode())
    return int.from_bytes(hasher.digest(), "little")


def index_entry(hash_value: int, store_ms: int, physical_offset: int) -> bytes:
    """An entry as the index keeps it in memory: bytes that sort as (hash, log offset)."""
    return _ENTRY_IN_MEMORY.pack(hash_value, physical_offset, store_ms)


def _new_buckets() -> list[list[bytes]]:
    return [[] for _ in range(_BUCKETS)]


def _run_body(buckets: list[list[bytes]]) -> tuple[bytes, int, int]:
    """The run's entry bytes, with the lowest and highest store time; sorts each bucket in place.

    ``buckets`` hold :func:`index_entry` bytes; every entry of a bucket sorts before every entry of
    the buckets after it.
    """
    chunks: list[bytes] = []
    for bucket in buckets:
        bucket.sort()
        chunks.append(b"".join(bucket))
    joined = b"".join(chunks)
    if not joined:
        return b"", 0, 0
    # Words in memory: hash, log offset, store ms, big-endian. The file wants hash, store ms, log
    # offset, little-endian: a byte swap and three strided copies, all in C.
    words = array("Q", joined)
    assert words.itemsize == 8
    if sys.byteorder == "little":
        words.byteswap()
    times = words[2::3]
    ordered = array("Q", bytes(len(joined)))
    ordered[0::3] = words[0::3]
    ordered[1::3] = times
    ordered[2::3] = words[1::3]
    if sys.byteorder != "little":
        ordered.byteswap()
    return ordered.tobytes(), min(times), max(times)


class DamagedRunError(Exception):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"index run {path} is damaged: {reason}")
        self.path = path


@dataclass(slots=True)
class _Run:
    path: str
    start_offset: int
    end_offset: int
    entry_count: int = -1  # -1: header not read yet
    min_store_ms: int = 0
    max_store_ms: int = 0
    verified: bool = False


def _run_name(start: int, end: int) -> str:
    return f"{start:020d}-{end:020d}.idx"


def _parse_run_name(name: str) -> tuple[int, int] | None:
    if not name.endswith(".idx"):
        return None
    start, _, end = name[:-4].partition("-")
    if len(start) == 20 and len(end) == 20 and start.isdigit() and end.isdigit():
        return int(start), int(end)
    return None


class KeyIndex:
    def __init__(self, disk: Disk, directory: str, buffer_entries: int = DEFAULT_BUFFER_ENTRIES) -> None:
        assert buffer_entries > 0
        self._disk = disk
        self.directory = directory
        self.buffer_entries = buffer_entries
        self._runs: list[_Run] = []
        self._buckets = _new_buckets()  # index_entry bytes by their first byte
        self._buffered = 0
        # The buffer covers [covered_end, buffered_end): records dispatched but not yet in a run.
        self.covered_end = 0
        self.buffered_end = 0

    def open(self, log_min_offset: int) -> list[tuple[int, int]]:
        """Load runs; drop those wholly before the log; return the gaps to rebuild ``[start, end)``."""
        self._disk.make_dirs(self.directory)
        runs: list[_Run] = []
        for name in self._disk.list_dir(self.directory):
            path = os.path.join(self.directory, name)
            if name.endswith(".tmp"):
                self._disk.remove(path)
                continue
            parsed = _parse_run_name(name)
            if parsed is not None:
                runs.append(_Run(path, parsed[0], parsed[1]))
        runs.sort(key=lambda run: (run.start_offset, -run.end_offset))
        gaps: list[tuple[int, int]] = []
        expected = log_min_offset
        for run in runs:
            if run.end_offset <= log_min_offset or run.end_offset <= expected:
                self._disk.remove(run.path)  # expired, or covered by another run
                continue
            if run.start_offset > expected:
                gaps.append((expected, run.start_offset))
            self._runs.append(run)
            expected = run.end_offset
        self._disk.sync_dir(self.directory)
        self.covered_end = self.buffered_end = expected
        return gaps

    def close(self) -> None:
        self._runs.clear()
        self._buckets = _new_buckets()
        self._buffered = 0

    def add(self, hash_value: int, store_ms: int, physical_offset: int) -> None:
        self.add_entries([index_entry(hash_value, store_ms, physical_offset)])

    def add_entries(self, entries: list[bytes]) -> None:
        """:meth:`add` for many entries made by :func:`index_entry`."""
        buckets = self._buckets
        for entry in entries:
            buckets[entry[0]].append(entry)
        self._buffered += len(entries)

    def advance(self, end_offset: int) -> None:
        """Every record before ``end_offset`` has been added."""
        self.buffered_end = max(self.buffered_end, end_offset)

    @property
    def buffer_full(self) -> bool:
        return self._buffered >= self.buffer_entries

    def flush(self) -> None:
        """Write the buffer as a durable run (nothing to do if it covers no log range)."""
        if self.buffered_end <= self.covered_end:
            return
        self._write_run(self.covered_end, self.buffered_end, self._buckets)
        self._buckets = _new_buckets()
        self._buffered = 0
        self.covered_end = self.buffered_end

    def write_run(self, start: int, end: int, entries: list[bytes]) -> None:
        """Write a run for ``[start, end)`` durably, and start using it.

        ``entries`` are :func:`index_entry` bytes, in any order (they are sorted here, in place).
        """
        self._write_run(start, end, [entries])

    def _write_run(self, start: int, end: int, buckets: list[list[bytes]]) -> None:
        body, low, high = _run_body(buckets)
        count = len(body) // _ENTRY.size
        header_tail = _HEADER.pack(_MAGIC, 0, count, start, end, low, high)[8:]
        checksum = crc32c.crc32c(body, crc32c.crc32c(header_tail))
        path = os.path.join(self.directory, _run_name(start, end))
        temporary = path + ".tmp"
        handle = self._disk.open(temporary, create=True)
        try:
            handle.truncate(0)
            handle.pwrite(_MAGIC + checksum.to_bytes(4, "little") + header_tail + body, 0)
            handle.sync()
        finally:
            handle.close()
        self._disk.rename(temporary, path)
        self._disk.sync_dir(self.directory)
        run = _Run(path, start, end, count, low, high, verified=True)
        self._runs = sorted([*self._runs, run], key=lambda item: item.start_offset)

    def _load_header(self, run: _Run) -> None:
        handle = self._disk.open(run.path)
        try:
            data = handle.pread(handle.size(), 0) if not run.verified else handle.pread(_HEADER.size, 0)
        finally:
            handle.close()
        if len(data) < _HEADER.size:
            raise DamagedRunError(run.path, "shorter than its header")
        magic, checksum, count, start, end, low, high = _HEADER.unpack_from(data)
        if magic != _MAGIC or (start, end) != (run.start_offset, run.end_offset):
            raise DamagedRunError(run.path, "bad magic or range")
        if not run.verified:
            if len(data) != _HEADER.size + count * _ENTRY.size or crc32c.crc32c(data[8:]) != checksum:
                raise DamagedRunError(run.path, "length or checksum mismatch")
            run.verified = True
        run.entry_count, run.min_store_ms, run.max_store_ms = count, low, high

    def lookup(self, hash_value: int, begin_ms: int, end_ms: int) -> Iterator[int]:
        """Log offsets of entries with this hash stored within [begin_ms, end_ms], oldest run first.

        Raises :class:`DamagedRunError` for a run that fails its check (the caller rebuilds it).
        """
        for run in list(self._runs):
            if run.entry_count < 0 or not run.verified:
                self._load_header(run)
            if run.entry_count == 0 or run.max_store_ms < begin_ms or run.min_store_ms > end_ms:
                continue
            yield from self._search_run(run, hash_value, begin_ms, end_ms)
        for entry in self._buckets[hash_value >> 56]:
            entry_hash, offset, store_ms = _ENTRY_IN_MEMORY.unpack(entry)
            if entry_hash == hash_value and begin_ms <= store_ms <= end_ms:
                yield offset

    def _search_run(self, run: _Run, hash_value: int, begin_ms: int, end_ms: int) -> Iterator[int]:
        handle = self._disk.open(run.path)
        try:
            low, high = 0, run.entry_count
            while low < high:  # first entry with hash >= hash_value
                middle = (low + high) // 2
                (entry_hash,) = struct.unpack_from("<Q", handle.pread(8, _HEADER.size + middle * _ENTRY.size))
                if entry_hash < hash_value:
                    low = middle + 1
                else:
                    high = middle
            position = low
            while position < run.entry_count:
                batch = handle.pread(_ENTRY.size * 64, _HEADER.size + position * _ENTRY.size)
                for index in range(len(batch) // _ENTRY.size):
                    entry_hash, store_ms, offset = _ENTRY.unpack_from(batch, index * _ENTRY.size)
                    if entry_hash != hash_value:
                        return
                    if begin_ms <= store_ms <= end_ms:
                        yield offset
                position += 64
        finally:
            handle.close()

    def drop_run(self, path: str) -> tuple[int, int]:
        """Forget a damaged run; return its range for a rebuild."""
        for run in self._runs:
            if run.path == path:
                self._runs = [item for item in self._runs if item is not run]
                if self._disk.exists(path):
                    self._disk.remove(path)
                    self._disk.sync_dir(self.directory)
                return run.start_offset, run.end_offset
        raise KeyError(path)

    def delete_runs_before(self, log_min_offset: int) -> None:
        """Retention: runs wholly before the log's first offset index nothing any more."""
        expired = [run for run in self._runs if run.end_offset <= log_min_offset]
        if not expired:
            return
        self._runs = [run for run in self._runs if run.end_offset > log_min_offset]
        for run in expired:
            self._disk.remove(run.path)
        self._disk.sync_dir(self.directory)

    @property
    def run_count(self) -> int:
        return len(self._runs)
