"""The timer index: pending delayed messages bucketed by delivery second, on disk, derived from the log.

The delayed messages themselves live in the commit log (the broker keeps them in a system topic);
this index only says *when* each is due and *where* it is, so that millions of pending timers cost
files, not memory. Everything here can be rebuilt from the log; a caller that finds the index
damaged or its progress file gone resets it and feeds it again (see :meth:`TimerIndex.reset`).

Theory of operation
-------------------

*Buckets.* Time is cut into buckets of ``bucket_width_ms`` (1 s by default). Each bucket that has
entries is one file, ``<dir>/buckets/<bucket_start_ms:020d>``, to which fixed-size entries are
appended in the order they are fed (the order of the source, the timer topic's queue). A bucket is
*due* once ``now_ms >= bucket_start + width - 1``: every entry in it is then at or past its time, so
nothing is ever handed out early whatever the order inside the file, and nothing waits longer than
one bucket width past its time (the timer resolution). One second keeps the resolution within the
1 s promise while a day of timers spreads over at most 86,400 files; a finer width buys nothing
(the delivery loop wakes once a bucket) and a coarser one breaks the resolution.

*Delivered cursor.* ``(delivered_bucket, delivered_slots)``: every bucket before ``delivered_bucket``
is processed, and so are the first ``delivered_slots`` entries (slots) of that bucket's file.
Positions are stable because files are only appended to (a torn tail is cut before appending).
A bucket's file is deleted once the cursor has moved past it and that move is durable.

*Late entries.* An entry whose own bucket is already behind the cursor (a delivery time in the past,
or a timer fed after its bucket was processed) is appended to the cursor's bucket instead: it is due
then, and is handed out when that bucket is. ``late_min_source`` remembers the lowest source offset
among such entries in the cursor's bucket, which keeps :meth:`is_finished` exact without reading.

*Commit.* :meth:`commit` writes buffered entries, syncs every file it touched (and the directory if
files were created), then writes the progress file atomically: the source offset indexed so far,
the delivered cursor, the pending count and the owner's ``extra`` bytes. Entries are handed out only
after they are committed (:meth:`read_due` commits first), so a delivered entry is never fed again.

*Epochs.* Entries appended after the last commit may or may not survive a crash, and the feeder feeds
them again from the committed source offset: the survivors would be duplicates. Rather than finding
and cutting them, each open of the index starts a new *epoch* (persisted before anything is
appended) and stamps it into every entry it writes; the progress keeps, for each earlier epoch that
still has entries pending, its *cut*, the source offset committed when it ended. An entry is valid
if it is of the current epoch or its source offset is below its epoch's cut; anything else is an
orphan of a crash and is skipped (its valid copy was fed again). A cut is dropped once the cursor is
past the highest bucket its epoch wrote to.

*Damage.* An entry that fails its checksum at the tail of a file is a torn write (cut before the
next append, ignored when reading). One followed by a valid entry, or a file shorter than the
cursor says, is damage: :class:`TimerIndexDamagedError`, and the owner resets and rebuilds. So is an
IO failure that leaves the files in doubt: an append that failed and could not be cut back (written
twice, its entries would be handed out twice), or a failed fsync (the kernel may have dropped the
pages while calling them clean, so a later fsync proves nothing): the index refuses further use
until it is reset.

Bucket entry layout (little-endian, 40 bytes)::

    offset size  field
    0      8     deliver_at_ms    the message's own delivery time (a late entry sits in a later bucket)
    8      8     source_offset    position in the source (the timer topic's queue offset)
    16     8     physical_offset  where the record is in the commit log
    24     4     size             the record's size in bytes
    28     4     epoch            the index epoch that wrote the entry
    32     4     flags            bit 0: VERIFY (may already have been delivered: check before delivering)
    36     4     crc32c           of bytes [0, 36)

Progress file (``<dir>/progress``, written with :func:`~homing.store.atomic_file.write_framed_file`,
so it is framed and checksummed and replaced atomically), payload::

    offset size  field
    0      4     version              1
    4      4     bucket_width_ms
    8      4     epoch                the epoch that wrote this progress (its entries are valid)
    12     4     cut_count
    16     8     indexed_until        next source offset to index; all before it are in synced files
    24     8     delivered_bucket_ms  every bucket before it is processed
    32     8     delivered_slots      slots of that bucket already processed
    40     8     pending_count        valid entries indexed and not yet processed
    48     8     late_min_source      lowest source offset of a late entry in the cursor's bucket, or 2**64-1
    56     8     epoch_max_bucket_ms  highest bucket the epoch wrote to, or 2**64-1 if none
    64     4     extra_length
    68     20*n  cuts: epoch u32, cut_source u64, max_bucket_ms u64
    ...    ...   extra: the owner's bytes (at most MAX_EXTRA_BYTES)
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import struct
from dataclasses import dataclass

import crc32c

from homing.store.atomic_file import read_framed_file, write_framed_file
from homing.store.disk import Disk, DiskFile
from homing.store.errors import StoreError

__all__ = [
    "DEFAULT_BUCKET_WIDTH_MS",
    "ENTRY_SIZE",
    "DueSlice",
    "TimerEntry",
    "TimerIndex",
    "TimerIndexDamagedError",
]

log = logging.getLogger("homing.store.timer_index")

DEFAULT_BUCKET_WIDTH_MS = 1000

_ENTRY_BODY = struct.Struct("<QQQIII")
_CRC = struct.Struct("<I")
ENTRY_SIZE = _ENTRY_BODY.size + _CRC.size
assert ENTRY_SIZE == 40
_FLAG_VERIFY = 1

_PROGRESS_VERSION = 1
_PROGRESS_HEAD = struct.Struct("<IIIIQQQQQQI")
assert _PROGRESS_HEAD.size == 68
_CUT = struct.Struct("<IQQ")
_NONE = 2**64 - 1
_MAX_U32 = 2**32 - 1
_NAME_DIGITS = 20

# Limits, explicit. Buffered entries and dirty files bound the memory and the fsyncs of one commit;
# the owner's extra bytes and the cuts bound the progress file.
MAX_BUFFERED_ENTRIES = 16_384
MAX_DIRTY_FILES = 2_048
MAX_EXTRA_BYTES = 4_096
MAX_CUTS = 10_000
MAX_READ_SLOTS = 4_096
# Empty due buckets probed one by one before listing the directory to jump over a long gap (after a
# downtime or a forward clock jump), so a step costs at most this many stats.
_PROBES_BEFORE_LISTING = 256
# The cursor crossing empty buckets is not worth an fsync per second of an idle broker: it is
# committed with the next real change, or after this much time has been crossed.
_IDLE_COMMIT_SPAN_MS = 60_000


class TimerIndexDamagedError(StoreError):
    """The index contradicts itself (an entry fails its checksum mid-file, a file is too short).

    Derived data only: the owner resets the index and feeds it again from the log.
    """


@dataclass(frozen=True, slots=True)
class TimerEntry:
    deliver_at_ms: int
    source_offset: int
    physical_offset: int
    size: int
    verify: bool  # fed by a rebuild: it may already have been delivered
    slot: int  # position in its bucket file


@dataclass(frozen=True, slots=True)
class DueSlice:
    """Slots ``[first_slot, end_slot)`` of the due bucket ``bucket_ms``, and the valid entries among them."""

    bucket_ms: int
    first_slot: int
    end_slot: int
    entries: list[TimerEntry]


@dataclass(frozen=True, slots=True)
class _Cut:
    source_offset: int  # entries of the epoch at or past this were orphaned by a crash
    max_bucket_ms: int


def pack_entry(
    deliver_at_ms: int, source_offset: int, physical_offset: int, size: int, epoch: int, flags: int
) -> bytes:
    body = _ENTRY_BODY.pack(deliver_at_ms, source_offset, physical_offset, size, epoch, flags)
    return body + _CRC.pack(crc32c.crc32c(body))


def _entry_is_valid_bytes(data: bytes | memoryview, position: int) -> bool:
    body = data[position : position + _ENTRY_BODY.size]
    (stored,) = _CRC.unpack_from(data, position + _ENTRY_BODY.size)
    return bool(crc32c.crc32c(body) == stored)


class TimerIndex:
    """Bucket files plus a progress file under ``directory``, reached only through ``disk``."""

    def __init__(self, disk: Disk, directory: str, bucket_width_ms: int = DEFAULT_BUCKET_WIDTH_MS) -> None:
        assert bucket_width_ms > 0
        self._disk = disk
        self._directory = directory
        self._buckets_dir = os.path.join(directory, "buckets")
        self._progress_path = os.path.join(directory, "progress")
        self.bucket_width_ms = bucket_width_ms
        self._epoch = 0
        self._cuts: dict[int, _Cut] = {}
        self._indexed_until = 0
        self._delivered_bucket = 0
        self._delivered_slots = 0
        self._pending = 0
        self._late_min: int | None = None
        self._epoch_max_bucket: int | None = None
        self._extra = b""
        # Not yet committed:
        self._buffer: dict[int, bytearray] = {}
        self._buffered = 0
        self._dirty: dict[int, DiskFile] = {}
        self._created_files = False
        self._to_delete: list[int] = []
        self._changed = False
        self._committed_bucket = 0
        self._unusable: str | None = None  # why the index must be reset before further use
        self._open = False

    # ----------------------------------------------------------------- lifecycle

    def open(self) -> bool:
        """Load the progress and start a new epoch. False if the progress is missing or damaged.

        On False the index holds nothing trustworthy: the caller must :meth:`reset` it.
        Raises :class:`TimerIndexDamagedError` if the progress is readable but cannot be continued
        (the delivered cursor stays readable for a rebuild that keeps it).
        """
        self._disk.make_dirs(self._buckets_dir)
        self._open = True
        payload = read_framed_file(self._disk, self._progress_path)
        if payload is None or not self._load_progress(payload):
            return False
        previous = self._epoch
        if self._epoch_max_bucket is not None:
            self._cuts[previous] = _Cut(self._indexed_until, self._epoch_max_bucket)
        self._prune_cuts()
        if len(self._cuts) > MAX_CUTS:
            raise TimerIndexDamagedError(f"{len(self._cuts)} epochs with pending entries; rebuilding")
        if previous >= _MAX_U32:
            raise TimerIndexDamagedError("epoch counter exhausted; rebuilding")
        self._epoch = previous + 1
        self._epoch_max_bucket = None
        # The new epoch must be durable before any entry carries it.
        self._write_progress()
        self._remove_stale_buckets()
        return True

    def _load_progress(self, payload: bytes) -> bool:
        if len(payload) < _PROGRESS_HEAD.size:
            return False
        (
            version,
            width,
            epoch,
            cut_count,
            indexed_until,
            delivered_bucket,
            delivered_slots,
            pending,
            late_min,
            epoch_max_bucket,
            extra_length,
        ) = _PROGRESS_HEAD.unpack_from(payload, 0)
        expected = _PROGRESS_HEAD.size + cut_count * _CUT.size + extra_length
        if version != _PROGRESS_VERSION or len(payload) != expected or extra_length > MAX_EXTRA_BYTES:
            log.warning("timer progress has an unknown version or shape: rebuilding")
            return False
        if width != self.bucket_width_ms:
            log.warning(
                "timer bucket width changed from %d to %d ms: rebuilding", width, self.bucket_width_ms
            )
            return False
        cuts: dict[int, _Cut] = {}
        position = _PROGRESS_HEAD.size
        for _ in range(cut_count):
            cut_epoch, cut_source, max_bucket = _CUT.unpack_from(payload, position)
            cuts[cut_epoch] = _Cut(cut_source, max_bucket)
            position += _CUT.size
        self._epoch = epoch
        self._cuts = cuts
        self._indexed_until = indexed_until
        self._delivered_bucket = delivered_bucket
        self._committed_bucket = delivered_bucket
        self._delivered_slots = delivered_slots
        self._pending = pending
        self._late_min = None if late_min == _NONE else late_min
        self._epoch_max_bucket = None if epoch_max_bucket == _NONE else epoch_max_bucket
        self._extra = bytes(payload[position : position + extra_length])
        return True

    def reset(self, *, source_offset: int, delivered_bucket_ms: int, extra: bytes = b"") -> None:
        """Forget every entry and start over: the caller feeds the index again from ``source_offset``.

        ``delivered_bucket_ms`` is where delivery resumes; entries due before it become late entries
        of that bucket. The epoch keeps counting up when the previous progress was readable, so
        leftover files of older epochs can only hold orphans, whatever a crash leaves behind.
        """
        assert self._open, "open the index first"
        assert delivered_bucket_ms % self.bucket_width_ms == 0
        assert len(extra) <= MAX_EXTRA_BYTES
        self._drop_uncommitted()
        self._unusable = None
        known_epoch = 0 < self._epoch < _MAX_U32
        if not known_epoch:
            # Without a trusted epoch counter an old file could hold entries of any epoch: remove
            # them all before writing a progress that makes some epoch current.
            self._remove_all_buckets()
        self._epoch = self._epoch + 1 if known_epoch else 1
        self._cuts = {}
        self._indexed_until = source_offset
        self._delivered_bucket = delivered_bucket_ms
        self._committed_bucket = delivered_bucket_ms
        self._delivered_slots = 0
        self._pending = 0
        self._late_min = None
        self._epoch_max_bucket = None
        self._extra = bytes(extra)
        self._write_progress()
        if known_epoch:
            self._remove_all_buckets()

    def close(self) -> None:
        if not self._open:
            return
        if self._unusable is None:
            self.commit()
        self._drop_uncommitted()
        self._open = False

    def abandon(self) -> None:
        """Drop what is not committed, as a crash would (for tests and fault injection)."""
        self._drop_uncommitted()
        self._open = False

    # ----------------------------------------------------------------- state

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def indexed_until(self) -> int:
        return self._indexed_until

    @property
    def delivered_bucket_ms(self) -> int:
        return self._delivered_bucket

    @property
    def delivered_slots(self) -> int:
        return self._delivered_slots

    @property
    def pending_count(self) -> int:
        return self._pending

    @property
    def extra(self) -> bytes:
        """The owner's bytes as last committed (or set by the last :meth:`commit`)."""
        return self._extra

    def bucket_of(self, time_ms: int) -> int:
        return time_ms - time_ms % self.bucket_width_ms

    def due_at_ms(self, bucket_ms: int) -> int:
        """When a bucket is handed out: its last millisecond."""
        return bucket_ms + self.bucket_width_ms - 1

    def _path(self, bucket_ms: int) -> str:
        return os.path.join(self._buckets_dir, f"{bucket_ms:0{_NAME_DIGITS}d}")

    # ----------------------------------------------------------------- feeding

    def add(
        self, deliver_at_ms: int, source_offset: int, physical_offset: int, size: int, *, verify: bool = False
    ) -> None:
        """Index one timer. Source offsets must only grow; entries are durable after :meth:`commit`."""
        assert self._open, "open the index first"
        assert source_offset >= self._indexed_until, "the source is fed in order"
        assert 0 <= deliver_at_ms < _NONE and physical_offset >= 0 and 0 < size <= _MAX_U32
        own_bucket = self.bucket_of(deliver_at_ms)
        bucket = max(own_bucket, self._delivered_bucket)
        if own_bucket < bucket:
            self._late_min = source_offset if self._late_min is None else min(self._late_min, source_offset)
        entry = pack_entry(
            deliver_at_ms, source_offset, physical_offset, size, self._epoch, _FLAG_VERIFY if verify else 0
        )
        pending = self._buffer.get(bucket)
        if pending is None:
            pending = self._buffer[bucket] = bytearray()
        pending += entry
        self._buffered += 1
        if self._epoch_max_bucket is None or bucket > self._epoch_max_bucket:
            self._epoch_max_bucket = bucket
        self._indexed_until = source_offset + 1
        self._pending += 1
        self._changed = True
        if self._buffered >= MAX_BUFFERED_ENTRIES:
            self.flush()

    def skip_source(self, next_source_offset: int) -> None:
        """Move past source positions that hold no timer (unreadable or expired records)."""
        if next_source_offset > self._indexed_until:
            self._indexed_until = next_source_offset
            self._changed = True

    def flush(self) -> None:
        """Write buffered entries to their files, without syncing: they are durable after :meth:`commit`."""
        self._check_usable()
        for bucket in list(self._buffer):
            handle = self._dirty.get(bucket)
            if handle is None:
                path = self._path(bucket)
                if not self._disk.exists(path):
                    self._created_files = True
                handle = self._disk.open(path, create=True)
                self._dirty[bucket] = handle
            end = self._repair_tail(handle, bucket)
            data = self._buffer[bucket]
            try:
                handle.pwrite(data, end)
            except OSError:
                # Part of it may have landed: written twice, those entries would be handed out twice.
                try:
                    handle.truncate(end)
                except OSError:
                    self._unusable = "a failed append could not be undone"
                raise
            del self._buffer[bucket]
            self._buffered -= len(data) // ENTRY_SIZE
        assert self._buffered == 0
        if len(self._dirty) >= MAX_DIRTY_FILES:
            self.commit()

    def _check_usable(self) -> None:
        if self._unusable is not None:
            raise TimerIndexDamagedError(f"timer index unusable: {self._unusable}; rebuilding")

    def _repair_tail(self, handle: DiskFile, bucket: int) -> int:
        """Cut a torn tail (a partial or failing last entry) before appending; return the append offset."""
        size = handle.size()
        slots = size // ENTRY_SIZE
        keep = slots
        while keep > 0:
            last = handle.pread(ENTRY_SIZE, (keep - 1) * ENTRY_SIZE)
            if len(last) == ENTRY_SIZE and _entry_is_valid_bytes(last, 0):
                break
            keep -= 1
        if bucket == self._delivered_bucket and keep < self._delivered_slots:
            raise TimerIndexDamagedError(
                f"{handle.path}: {keep} valid entries but {self._delivered_slots} already processed"
            )
        if keep * ENTRY_SIZE != size:
            log.warning(
                "%s: cut a torn tail of %d bytes (written, never committed)",
                handle.path,
                size - keep * ENTRY_SIZE,
            )
            handle.truncate(keep * ENTRY_SIZE)
        return keep * ENTRY_SIZE

    # ----------------------------------------------------------------- commit

    def commit(self, extra: bytes | None = None) -> None:
        """Make every added entry and the cursor durable, with the owner's ``extra`` bytes."""
        assert self._open, "open the index first"
        if extra is not None and extra != self._extra:
            assert len(extra) <= MAX_EXTRA_BYTES
            self._extra = bytes(extra)
            self._changed = True
        self._check_usable()
        if self._buffer:
            self.flush()
        for handle in self._dirty.values():
            try:
                handle.sync()
            except OSError:
                # After a failed fsync the kernel may call the pages clean: never trust them again.
                self._unusable = f"fsync of {handle.path} failed"
                raise
        for handle in self._dirty.values():
            handle.close()
        self._dirty.clear()
        if self._created_files:
            self._disk.sync_dir(self._buckets_dir)
            self._created_files = False
        idle_span = self._delivered_bucket - self._committed_bucket
        if self._changed or self._to_delete or idle_span >= _IDLE_COMMIT_SPAN_MS:
            self._write_progress()
        # Only now is the cursor past these buckets for good: their files may go.
        for bucket in self._to_delete:
            with contextlib.suppress(FileNotFoundError):
                self._disk.remove(self._path(bucket))
        self._to_delete.clear()

    def _write_progress(self) -> None:
        cuts = b"".join(
            _CUT.pack(epoch, cut.source_offset, cut.max_bucket_ms) for epoch, cut in self._cuts.items()
        )
        head = _PROGRESS_HEAD.pack(
            _PROGRESS_VERSION,
            self.bucket_width_ms,
            self._epoch,
            len(self._cuts),
            self._indexed_until,
            self._delivered_bucket,
            self._delivered_slots,
            self._pending,
            _NONE if self._late_min is None else self._late_min,
            _NONE if self._epoch_max_bucket is None else self._epoch_max_bucket,
            len(self._extra),
        )
        write_framed_file(self._disk, self._progress_path, head + cuts + self._extra)
        self._changed = False
        self._committed_bucket = self._delivered_bucket

    def _drop_uncommitted(self) -> None:
        self._buffer.clear()
        self._buffered = 0
        for handle in self._dirty.values():
            with contextlib.suppress(OSError):
                handle.close()
        self._dirty.clear()
        self._to_delete.clear()

    # ----------------------------------------------------------------- delivery

    def read_due(self, now_ms: int, max_slots: int = MAX_READ_SLOTS) -> DueSlice | None:
        """The next unprocessed slots of the first due bucket, or None when nothing is due at ``now_ms``.

        Commits first, so that nothing uncommitted is ever handed out. Moves the cursor over due
        buckets that are empty or exhausted. The slice is processed once :meth:`mark_processed` says so.
        """
        assert 0 < max_slots <= MAX_READ_SLOTS
        self._check_usable()
        if self._buffer or self._dirty:
            self.commit()
        probes = 0
        while True:
            bucket = self._delivered_bucket
            if now_ms < self.due_at_ms(bucket):
                return None
            path = self._path(bucket)
            if not self._disk.exists(path):
                probes += 1
                if probes > _PROBES_BEFORE_LISTING:
                    self._jump_over_empty(now_ms)
                    probes = 0
                else:
                    self._next_bucket(had_file=False)
                continue
            found = self._read_slots(path, bucket, max_slots)
            if found is None:
                self._next_bucket(had_file=True)
                continue
            if found.entries:
                return found
            # Only orphans or torn slots: nothing to hand out, but they are processed.
            self._delivered_slots = found.end_slot
            self._changed = True

    def _read_slots(self, path: str, bucket: int, max_slots: int) -> DueSlice | None:
        handle = self._disk.open(path)
        try:
            slots = handle.size() // ENTRY_SIZE
            first = self._delivered_slots
            if slots < first:
                raise TimerIndexDamagedError(f"{path}: {slots} entries but {first} already processed")
            if slots == first:
                return None
            end = min(slots, first + max_slots)
            data = handle.pread((end - first) * ENTRY_SIZE, first * ENTRY_SIZE)
            if len(data) != (end - first) * ENTRY_SIZE:
                raise TimerIndexDamagedError(f"{path}: short read at entry {first}")
            entries: list[TimerEntry] = []
            for index in range(end - first):
                position = index * ENTRY_SIZE
                if not _entry_is_valid_bytes(data, position):
                    self._check_torn_tail(handle, path, first + index, slots)
                    end = first + index
                    if end == first:
                        return None
                    break
                deliver_at, source, physical, size, epoch, flags = _ENTRY_BODY.unpack_from(data, position)
                if not self._is_valid_epoch(epoch, source):
                    continue
                entries.append(
                    TimerEntry(deliver_at, source, physical, size, bool(flags & _FLAG_VERIFY), first + index)
                )
            return DueSlice(bucket, first, end, entries)
        finally:
            handle.close()

    def _check_torn_tail(self, handle: DiskFile, path: str, bad_slot: int, slots: int) -> None:
        """A failing entry is a torn tail only if no valid entry follows it."""
        position = bad_slot + 1
        while position < slots:
            count = min(MAX_READ_SLOTS, slots - position)
            data = handle.pread(count * ENTRY_SIZE, position * ENTRY_SIZE)
            for index in range(len(data) // ENTRY_SIZE):
                if _entry_is_valid_bytes(data, index * ENTRY_SIZE):
                    raise TimerIndexDamagedError(f"{path}: entry {bad_slot} fails its checksum")
            position += count
        log.warning("%s: entry %d is a torn write (never committed); ignored", path, bad_slot)

    def _is_valid_epoch(self, epoch: int, source_offset: int) -> bool:
        if epoch == self._epoch:
            return True
        cut = self._cuts.get(epoch)
        return cut is not None and source_offset < cut.source_offset

    def _next_bucket(self, *, had_file: bool) -> None:
        assert not self._buffer, "commit before moving the cursor"
        if had_file:
            self._to_delete.append(self._delivered_bucket)
            self._changed = True
        self._delivered_bucket += self.bucket_width_ms
        self._delivered_slots = 0
        self._late_min = None
        self._prune_cuts()

    def _jump_over_empty(self, now_ms: int) -> None:
        """Move the cursor to the next bucket with a file, or just past the last due bucket."""
        last_due = self.bucket_of(now_ms - self.bucket_width_ms + 1)
        target = last_due + self.bucket_width_ms
        existing = self._bucket_names()
        position = bisect.bisect_left(existing, self._delivered_bucket)
        if position < len(existing):
            target = min(target, existing[position])
        if target > self._delivered_bucket:
            self._delivered_bucket = target
            self._delivered_slots = 0
            self._late_min = None
            self._prune_cuts()

    def mark_processed(self, bucket_ms: int, end_slot: int, processed_entries: int) -> None:
        """Slots before ``end_slot`` of the cursor's bucket are done, ``processed_entries`` valid ones."""
        assert bucket_ms == self._delivered_bucket, "only the cursor's bucket is processed"
        assert end_slot >= self._delivered_slots and processed_entries >= 0
        self._delivered_slots = end_slot
        self._pending = max(0, self._pending - processed_entries)
        self._changed = True

    def _prune_cuts(self) -> None:
        stale = [epoch for epoch, cut in self._cuts.items() if cut.max_bucket_ms < self._delivered_bucket]
        for epoch in stale:
            del self._cuts[epoch]
            self._changed = True

    # ----------------------------------------------------------------- queries

    def is_finished(self, source_offset: int, deliver_at_ms: int) -> bool:
        """True if the entry for this source position is surely processed (no IO; may say False wrongly)."""
        if source_offset >= self._indexed_until:
            return False
        if self.bucket_of(deliver_at_ms) >= self._delivered_bucket:
            return False
        return self._late_min is None or source_offset < self._late_min

    def is_processed(self, source_offset: int, deliver_at_ms: int) -> bool:
        """True if the entry for this source position was processed (exact; may read the cursor's bucket)."""
        if source_offset >= self._indexed_until:
            return False
        if self.is_finished(source_offset, deliver_at_ms):
            return True
        if self.bucket_of(deliver_at_ms) > self._delivered_bucket:
            return False
        # Its own bucket is the cursor's, or it is a late entry there: processed iff before the cursor.
        return self._find_processed_slot(source_offset)

    def _find_processed_slot(self, source_offset: int) -> bool:
        path = self._path(self._delivered_bucket)
        if self._delivered_slots == 0 or not self._disk.exists(path):
            return False
        handle = self._disk.open(path)
        try:
            position = 0
            while position < self._delivered_slots:
                count = min(MAX_READ_SLOTS, self._delivered_slots - position)
                data = handle.pread(count * ENTRY_SIZE, position * ENTRY_SIZE)
                for index in range(len(data) // ENTRY_SIZE):
                    at = index * ENTRY_SIZE
                    if not _entry_is_valid_bytes(data, at):
                        continue
                    _, source, _, _, epoch, _ = _ENTRY_BODY.unpack_from(data, at)
                    if source == source_offset and self._is_valid_epoch(epoch, source):
                        return True
                position += count
        finally:
            handle.close()
        return False

    def next_bucket_ms(self) -> int | None:
        """The first bucket at or after the cursor that has a file (lists the directory), or None."""
        if self._pending == 0:
            return None
        existing = self._bucket_names()
        position = bisect.bisect_left(existing, self._delivered_bucket)
        candidates = existing[position:]
        if self._buffer:
            candidates = sorted(set(candidates) | set(self._buffer))
        return candidates[0] if candidates else None

    # ----------------------------------------------------------------- files

    def _bucket_names(self) -> list[int]:
        names: list[int] = []
        for name in self._disk.list_dir(self._buckets_dir):
            if len(name) == _NAME_DIGITS and name.isdigit():
                names.append(int(name))
        return names  # list_dir is sorted and the names are zero-padded: numeric order

    def _remove_stale_buckets(self) -> None:
        """Files behind the cursor whose removal a crash undid."""
        for bucket in self._bucket_names():
            if bucket >= self._delivered_bucket:
                break
            self._disk.remove(self._path(bucket))

    def _remove_all_buckets(self) -> None:
        for bucket in self._bucket_names():
            self._disk.remove(self._path(bucket))
        self._disk.sync_dir(self._buckets_dir)
