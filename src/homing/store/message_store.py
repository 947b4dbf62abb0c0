"""The message store: one commit log, derived consume queues and key index, group-committed durability.

Theory of operation (the data path; recovery is in :mod:`homing.store.recovery`):

* ``append`` encodes a batch of records (assigning each its log offset, queue offset and store
  time), refuses the whole batch before writing a byte if it is invalid, the store is fenced or the
  disk is above its guard, and writes it with one ``pwrite`` per segment into pre-allocated segment
  files. It returns where the batch ends; nothing is durable yet. Then it publishes the new write
  offset (with the files written) under a lock of its own, which is all a sync has to wait for.
* Durability is asked for with ``wait_durable`` (threads) or ``add_durability_callback`` (event
  loops): the :class:`GroupCommit` flusher syncs and releases waiters by flushed offset.
* A dispatcher thread follows the flushed offset (never the written one): it appends consume-queue
  entries and key-index keys, so no reader can see a record that is not durable. It also writes the
  checkpoint periodically, after syncing the files the checkpoint vouches for.
* An allocator thread pre-allocates the next segment when the active one is half full.
* A failed write or sync fences the store: no further appends, every waiter fails, a clear error,
  and nothing pending is confirmed afterwards, even by a sync that succeeds.

The append and the dispatcher are the hot path and work a batch at a time: the append encodes its
records into one :class:`EncodedBatch` (no object per record) that is both what :class:`AppendResult`
reports from and what the dispatcher derives queue entries and index keys from, without decoding.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import crc32c

from homing.clock import Clock, SystemClock
from homing.store.checkpoint import Checkpoint, read_checkpoint, write_checkpoint
from homing.store.commit_log import CommitLog, Segment
from homing.store.consume_queue import ENTRY_BODY, ConsumeQueue, DamagedEntryError, QueueEntry, join_entries
from homing.store.disk import Disk, DiskFile, OsDisk
from homing.store.disk_guard import DiskGuard
from homing.store.errors import (
    CorruptRecordError,
    DiskFullError,
    InvalidRecordError,
    StoreClosedError,
    StoreFencedError,
)
from homing.store.group_commit import DurabilityCallback, FlushMode, GroupCommit
from homing.store.key_index import (
    BUSINESS_KEY_KIND,
    MESSAGE_ID_KIND,
    DamagedRunError,
    KeyIndex,
    index_entry,
    key_hash,
    key_hasher,
)
from homing.store.key_index import ENTRY_TAIL as INDEX_ENTRY_TAIL
from homing.store.log_scan import CorruptRange
from homing.store.queue_table import QueueKey, QueueTable
from homing.store.record import (
    FILLER_SIZE,
    HEADER_SIZE,
    MAGIC,
    PLACED_FIELDS,
    EncodedBatch,
    NewRecord,
    RecordDefect,
    StoredRecord,
    decode_record,
    encode_filler,
    encoded_size,
)
from homing.store.recovery import RecoveryReport, rebuild_index_range, rebuild_queue, recover
from homing.store.tag_hash import NO_TAG_HASH, tag_hash

__all__ = ["AppendResult", "AppendedRecord", "MessageStore", "QueueRead", "StoreConfig"]

log = logging.getLogger("homing.store")

_HOUR_S = 3600.0


@dataclass(frozen=True, slots=True)
class StoreConfig:
    data_dir: str
    flush_mode: FlushMode = "sync"
    flush_timeout_s: float = 5.0
    async_flush_interval_s: float = 0.2
    segment_size_bytes: int = 256 * 1024 * 1024
    consume_queue_entries_per_file: int = 300_000
    index_buffer_entries: int = 100_000
    # Also write the key-index buffer as a run once it covers this much log: recovery rescans the
    # log from the index's covered end, so this bounds the scan after a crash (and the restart time).
    index_max_unflushed_bytes: int = 64 * 1024 * 1024
    checkpoint_interval_s: float = 1.0
    max_disk_used_ratio: float = 0.75
    retention_s: float = 72 * _HOUR_S
    retention_override_under_pressure: bool = False
    # Start allocating the next segment once the active one is this full.
    preallocate_at_ratio: float = 0.5
    max_batch_records: int = 10_000


class AppendedRecord(NamedTuple):
    physical_offset: int
    queue_offset: int
    size: int
    store_timestamp_ms: int


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an append put its records.

    An append makes no object per record (it is the store's hot path, and most callers only need
    :attr:`end_offset`): :attr:`records` makes the per-record view when asked.
    """

    end_offset: int  # durable once the flushed offset reaches it
    batch: EncodedBatch | None = None  # None for an empty append

    @property
    def records(self) -> list[AppendedRecord]:
        """One :class:`AppendedRecord` per record, in append order (made on each access)."""
        if self.batch is None:
            return []
        store_ms = self.batch.store_timestamp_ms
        return [
            AppendedRecord(physical, queue_offset, size, store_ms)
            for _, _, queue_offset, physical, size, _ in self.batch.placed()
        ]


@dataclass(frozen=True, slots=True)
class QueueRead:
    records: list[StoredRecord]
    next_queue_offset: int  # where the next read should start (past what was returned or skipped)
    min_queue_offset: int
    max_queue_offset: int  # the queue's next offset: entries are [min, max)


@dataclass(slots=True)
class _Placement:
    segment: Segment
    first_offset: int
    chunks: list[bytes] = field(default_factory=list)


class MessageStore:
    def __init__(self, config: StoreConfig, disk: Disk | None = None, clock: Clock | None = None) -> None:
        self.config = config
        self.disk: Disk = disk if disk is not None else OsDisk()
        self.clock: Clock = clock if clock is not None else SystemClock()
        root = config.data_dir
        self._abort_path = os.path.join(root, "abort")
        self._checkpoint_path = os.path.join(root, "checkpoint")
        self.log = CommitLog(self.disk, os.path.join(root, "commitlog"), config.segment_size_bytes)
        self.queues = QueueTable(
            self.disk, os.path.join(root, "consumequeue"), config.consume_queue_entries_per_file
        )
        self.index = KeyIndex(self.disk, os.path.join(root, "index"), config.index_buffer_entries)
        self.guard = DiskGuard(self.disk, root, self.clock, config.max_disk_used_ratio)
        self._append_lock = threading.Lock()  # one append at a time (held while encoding and writing)
        # Guards what a sync must read together, the write offset and the files written below it;
        # held only to publish them, so the flusher never waits for an append to encode and write.
        self._written_lock = threading.Lock()
        self._queues_lock = threading.RLock()  # consume queues and index: dispatcher vs readers
        self._group_commit = GroupCommit(
            self._sync_written,
            mode=config.flush_mode,
            async_interval_s=config.async_flush_interval_s,
            on_flushed=self._on_flushed,
            on_failure=self._on_sync_failure,
        )
        self._queue_next: dict[QueueKey, int] = {}
        # Appended batches not yet dispatched, in log order (one item per append, not per record).
        self._dispatch_queue: deque[EncodedBatch] = deque()
        self._dirty_segments: dict[int, DiskFile] = {}
        self.write_offset = 0
        self.dispatched_offset = 0
        self._fence: BaseException | None = None
        self._closed = True
        self._wake_dispatcher = threading.Condition()
        self._wake_allocator = threading.Event()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._dispatch_listeners: list[Callable[[], None]] = []
        self._rebuilt_this_run: set[QueueKey] = set()
        self.corrupt_ranges: list[CorruptRange] = []
        self.recovery: RecoveryReport | None = None
        self._last_checkpoint_s = 0.0
        self._allocation_error: BaseException | None = None
        self._preallocation_asked_for = -1  # base offset of the segment whose successor was asked for

    # ----------------------------------------------------------------- lifecycle

    def open(self) -> RecoveryReport:
        disk = self.disk
        disk.make_dirs(self.config.data_dir)
        abnormal = disk.exists(self._abort_path)
        if not abnormal:
            disk.open(self._abort_path, create=True).close()
            disk.sync_dir(self.config.data_dir)
        self.log.open()
        self.queues.open()
        if not self.log.segments:
            self.log.allocate(0)
        state = recover(
            disk, self.log, self.queues, self.index, read_checkpoint(disk, self._checkpoint_path), abnormal
        )
        self.recovery = state.report
        self.corrupt_ranges = list(state.report.corrupt_ranges)
        self.write_offset = self.dispatched_offset = state.write_offset
        self._queue_next = state.queue_next
        self.index.flush()
        self._write_checkpoint()
        self._log_recovery(state.report)
        self._closed = False
        self._stopping = False
        self._group_commit.start(self.write_offset)
        self._start_thread("homing-dispatcher", self._dispatcher_loop)
        self._start_thread("homing-allocator", self._allocator_loop)
        self._wake_allocator.set()
        return state.report

    def _log_recovery(self, report: RecoveryReport) -> None:
        log.info(
            "store recovered: %s shutdown, scanned %d records from offset %d to %d in %.3f s",
            "abnormal" if report.abnormal_shutdown else "clean",
            report.records_scanned,
            report.scanned_from,
            report.end_offset,
            report.duration_s,
        )
        if report.torn_tail is not None:
            tail = report.torn_tail
            log.warning(
                "cut a torn tail of %d bytes in %s at byte %d (%s): never acknowledged",
                tail.bytes_cut,
                tail.file,
                tail.file_offset,
                tail.reason,
            )
        for damaged in report.corrupt_ranges:
            log.error("%s: this range will not be served", damaged.describe())
        for key in report.rebuilt_queues:
            log.warning("consume queue %s/%d rebuilt from the log", *key)
        for start, end in report.rebuilt_index_ranges:
            log.warning("key index for log range [%d, %d) rebuilt from the log", start, end)
        for segment, missing in self.log.short_segments():
            log.error(
                "%s is %d bytes short of the next segment (cut short): records at and after its byte %d "
                "will not be served",
                segment.path,
                missing,
                segment.size,
            )

    def _start_thread(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        """Flush, write a final checkpoint and remove the abort marker (a clean shutdown)."""
        if self._closed:
            return
        with self._append_lock:
            self._closed = True
        self._group_commit.stop()
        self._stopping = True
        with self._wake_dispatcher:
            self._wake_dispatcher.notify_all()
        self._wake_allocator.set()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        clean = self._fence is None
        if clean:
            self._dispatch_up_to(self._group_commit.flushed_offset)
            self.index.flush()
            self._write_checkpoint()
        self.queues.close()
        self.index.close()
        self.log.close()
        if clean:
            self.disk.remove(self._abort_path)
            self.disk.sync_dir(self.config.data_dir)

    def halt(self) -> None:
        """Stop as a ``kill -9`` would: no final flush, no checkpoint, the abort marker stays.

        For tests and fault injection: what was written but not synced is left to the disk's fate.
        """
        if self._closed:
            return
        with self._append_lock:
            self._closed = True
        self._stopping = True
        self._group_commit.abandon()
        with self._wake_dispatcher:
            self._wake_dispatcher.notify_all()
        self._wake_allocator.set()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        self.queues.close()
        self.index.close()
        self.log.close()

    def __enter__(self) -> MessageStore:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------- state

    @property
    def flushed_offset(self) -> int:
        return self._group_commit.flushed_offset

    @property
    def fenced(self) -> bool:
        return self._fence is not None or self._group_commit.failure is not None

    @property
    def sync_count(self) -> int:
        return self._group_commit.sync_count

    def _check_writable(self) -> None:
        if self._closed:
            raise StoreClosedError("the store is closed")
        failure = self._fence or self._group_commit.failure
        if failure is not None:
            raise StoreFencedError(
                f"the store refuses writes after an IO error ({failure}); restart it to recover "
                "from what is durable"
            )

    # ----------------------------------------------------------------- append

    def append(self, records: Sequence[NewRecord]) -> AppendResult:
        """Write a batch (all or nothing); it is durable once :meth:`wait_durable` returns."""
        if not records:
            return AppendResult(self.write_offset)
        if len(records) > self.config.max_batch_records:
            raise InvalidRecordError(f"a batch holds at most {self.config.max_batch_records} records")
        with self._append_lock:
            self._check_writable()
            self.guard.check()
            position = self.write_offset
            # durable_before is recorded in each record so that recovery can tell damaged
            # acknowledged bytes from a torn tail.
            batch = EncodedBatch(self.clock.now_ms(), self._group_commit.flushed_offset, position)
            segment = self._active_segment(position)
            placements = [_Placement(segment, position)]
            queue_next = self._queue_next
            done = batch.encode(records, 0, position, segment.end_offset, queue_next, placements[0].chunks)
            while done < len(records):  # the next record does not fit: end the segment, go on in the next
                position = batch.end_offset
                size = encoded_size(records[done])
                if size > self.log.segment_size_bytes:
                    raise InvalidRecordError(
                        f"a record of {size} bytes does not fit in a segment "
                        f"of {self.log.segment_size_bytes} bytes"
                    )
                room = segment.end_offset - position
                if room >= FILLER_SIZE:
                    placements[-1].chunks.append(encode_filler(position, room))
                segment = self._segment_after(segment)
                position = segment.base_offset
                placements.append(_Placement(segment, position))
                chunks = placements[-1].chunks
                done = batch.encode(records, done, position, segment.end_offset, queue_next, chunks)
            position = batch.end_offset
            self._write_placements(placements)
            self._queue_next.update(batch.next_queue_offsets)
            # Queued for the dispatcher before the flusher can see the new write offset: once a
            # sync covers the batch, the dispatcher must find it.
            self._dispatch_queue.append(batch)
            self._publish_written(
                [placement.segment for placement in placements if placement.chunks], position
            )
            if (
                position - segment.base_offset >= segment.size * self.config.preallocate_at_ratio
                and self._preallocation_asked_for != segment.base_offset
            ):
                # Once per segment: waking the allocator thread on every append would cost a thread
                # switch per batch. If that allocation fails, the roll-over allocates inline.
                self._preallocation_asked_for = segment.base_offset
                self._wake_allocator.set()
        if self.config.flush_mode == "sync":
            self._group_commit.request(position)
        return AppendResult(position, batch)

    def _active_segment(self, position: int) -> Segment:
        segment = self.log.segment_for(position)
        if segment is None:  # the previous segment ended exactly here
            segment = self._allocate_now(position)
        return segment

    def _segment_after(self, segment: Segment) -> Segment:
        following = self.log.next_segment(segment)
        return following if following is not None else self._allocate_now(segment.end_offset)

    def _allocate_now(self, base_offset: int) -> Segment:
        # The allocator thread normally got here first; doing it inline is the slow, rare path.
        try:
            return self.log.allocate(base_offset)
        except DiskFullError:
            raise
        except OSError as error:
            raise DiskFullError(f"cannot allocate a segment: {error}") from error

    def _write_placements(self, placements: list[_Placement]) -> None:
        written: list[tuple[Segment, int, int]] = []
        try:
            for placement in placements:
                if not placement.chunks:
                    continue
                data = b"".join(placement.chunks)
                segment = placement.segment
                file_position = placement.first_offset - segment.base_offset
                written.append((segment, file_position, len(data)))
                segment.file.pwrite(data, file_position)
        except OSError as error:
            self._undo_partial_write(written, error)

    def _publish_written(self, segments: list[Segment], write_offset: int | None) -> None:
        """Make written bytes visible to the next sync: their files, and the new write offset."""
        with self._written_lock:
            for segment in segments:
                self._dirty_segments[segment.base_offset] = segment.file
            if write_offset is not None:
                self.write_offset = write_offset

    def _undo_partial_write(self, written: list[tuple[Segment, int, int]], error: OSError) -> None:
        """A write failed part-way: blank what may have landed, then refuse (ENOSPC) or fence."""
        if error.errno == errno.ENOSPC:
            try:
                for segment, file_position, size in written:
                    segment.file.pwrite(bytes(size), file_position)
                self._publish_written([segment for segment, _, _ in written], None)  # sync the blanks too
            except OSError as second:
                self._fence_after_write(second)
                raise StoreFencedError(
                    f"write failed ({error}) and could not be undone ({second})"
                ) from error
            raise DiskFullError(f"no space left for this write: {error}") from error
        self._fence_after_write(error)
        raise StoreFencedError(f"write failed: {error}; the store refuses further writes") from error

    def _fence_after_write(self, error: OSError) -> None:
        """Refuse every later append and fail every durability waiter not released yet."""
        self._fence = error
        log.error("store fenced: a write failed: %s; nothing pending is acknowledged", error)
        self._group_commit.fence(error)

    # ----------------------------------------------------------------- durability

    def _sync_written(self) -> int:
        with self._written_lock:
            target = self.write_offset
            dirty = list(self._dirty_segments.values())
            self._dirty_segments.clear()
        for handle in dirty:
            handle.sync()
        return target

    def _on_sync_failure(self, error: BaseException) -> None:
        self._fence = error
        log.error("store fenced: fdatasync failed: %s; nothing after this point is acknowledged", error)

    def wait_durable(self, end_offset: int, timeout_s: float | None = None) -> None:
        """Return once everything before ``end_offset`` is durable.

        Raises :class:`PersistenceTimeoutError` after the flush timeout and
        :class:`StoreFencedError` if a sync failed: in neither case was the write acknowledged.
        """
        self._group_commit.wait(end_offset, self.config.flush_timeout_s if timeout_s is None else timeout_s)

    def add_durability_callback(self, end_offset: int, callback: DurabilityCallback) -> None:
        """Call ``callback(None)`` on the flusher thread once ``end_offset`` is durable, else ``(error)``."""
        self._group_commit.add_callback(end_offset, callback)

    def append_durable(self, records: Sequence[NewRecord]) -> AppendResult:
        result = self.append(records)
        self.wait_durable(result.end_offset)
        return result

    # ----------------------------------------------------------------- dispatch

    def add_dispatch_listener(self, listener: Callable[[], None]) -> None:
        """Called (on the dispatcher thread) whenever new records become readable."""
        self._dispatch_listeners.append(listener)

    def _on_flushed(self, flushed_offset: int) -> None:
        with self._wake_dispatcher:
            self._wake_dispatcher.notify_all()

    def _dispatcher_loop(self) -> None:
        while not self._stopping:
            with self._wake_dispatcher:
                self._wake_dispatcher.wait_for(
                    lambda: self._stopping or self._group_commit.flushed_offset > self.dispatched_offset,
                    self.config.checkpoint_interval_s,
                )
            if self._stopping:
                return
            try:
                self._dispatch_up_to(self._group_commit.flushed_offset)
                unflushed = self.index.buffered_end - self.index.covered_end
                if self.index.buffer_full or unflushed >= self.config.index_max_unflushed_bytes:
                    with self._queues_lock:
                        self.index.flush()
                if time.monotonic() - self._last_checkpoint_s >= self.config.checkpoint_interval_s:
                    self._write_checkpoint()
            except OSError as error:
                # Derived data only: nothing acknowledged is at risk, but keep a loud trace.
                log.error("dispatcher IO error (derived data, rebuilt at restart): %s", error)

    def dispatch_now(self) -> None:
        """Make everything durable readable now, without waiting for the dispatcher thread."""
        self._dispatch_up_to(self._group_commit.flushed_offset)

    def _dispatch_up_to(self, target: int) -> None:
        if target <= self.dispatched_offset:
            return
        pending: dict[QueueKey, list[bytes | int]] = {}
        first_offsets: dict[QueueKey, int] = {}
        keyed: list[bytes] = []  # key-index entries
        reached = target
        with self._queues_lock:
            queue = self._dispatch_queue
            # Batches leave the queue now but go back to its front if a write fails (a full disk
            # under the consume queue): the next round retries instead of leaving a hole.
            # (popleft is safe against appenders on the other end; iterating the deque is not.)
            taken: list[EncodedBatch] = []
            while queue and queue[0].first_offset < target:
                if queue[0].end_offset > target:
                    # Flushes end at batch boundaries (an append publishes its write offset once,
                    # whole), so this does not happen; if it did, wait for the next flush.
                    reached = queue[0].first_offset
                    break
                batch = queue.popleft()
                taken.append(batch)
                _derive(batch, pending, first_offsets, keyed)
            try:
                for key, parts in pending.items():
                    self.queues.get(key).write(first_offsets[key], join_entries(parts))
            except OSError:
                queue.extendleft(reversed(taken))
                raise
            self.index.add_entries(keyed)
            self.index.advance(reached)
            self.dispatched_offset = max(self.dispatched_offset, reached)
        for listener in self._dispatch_listeners:
            listener()

    def _write_checkpoint(self) -> None:
        with self._queues_lock:
            dispatched = self.dispatched_offset
            lengths = {key: queue.next_offset for key, queue in self.queues}
            for _, queue in self.queues:
                queue.sync()
            checkpoint = Checkpoint(
                queues_offset=dispatched,
                index_offset=self.index.covered_end,
                queues=lengths,
                written_at_ms=self.clock.now_ms(),
            )
        write_checkpoint(self.disk, self._checkpoint_path, checkpoint)
        self._last_checkpoint_s = time.monotonic()

    # ----------------------------------------------------------------- allocation

    def _allocator_loop(self) -> None:
        while not self._stopping:
            self._wake_allocator.wait()
            self._wake_allocator.clear()
            if self._stopping:
                return
            active = self.log.segment_for(self.write_offset)
            if active is None or self.log.next_segment(active) is not None:
                continue
            if self.write_offset - active.base_offset < active.size * self.config.preallocate_at_ratio:
                continue
            try:
                self.log.allocate(active.end_offset)
                self._allocation_error = None
            except (DiskFullError, OSError) as error:
                # Appends that need the segment will try again inline and refuse cleanly.
                self._allocation_error = error
                log.warning("could not pre-allocate the next segment: %s", error)

    # ----------------------------------------------------------------- reads

    def queue_bounds(self, topic: str, queue_id: int) -> tuple[int, int]:
        """(min, next) queue offsets readable now: entries [min, next) exist."""
        queue = self.queues.find((topic, queue_id))
        if queue is None:
            return 0, 0
        return queue.min_offset, queue.next_offset

    def queue_keys(self) -> list[QueueKey]:
        return [key for key, _ in self.queues]

    def read_queue(self, topic: str, queue_id: int, queue_offset: int, max_count: int) -> QueueRead:
        """Up to ``max_count`` durable records of a queue from ``queue_offset``.

        Records expired by retention are skipped forward (reported through ``next_queue_offset``).
        A corrupt record raises :class:`CorruptRecordError` naming file and offset (records before
        it in the same call are not lost: the caller reads again from its offset).
        """
        assert max_count > 0
        key = (topic, queue_id)
        with self._queues_lock:
            queue = self.queues.find(key)
            if queue is None:
                return QueueRead([], queue_offset, 0, 0)
            start = max(queue_offset, queue.min_offset)
            try:
                entries = queue.read(start, max_count)
            except DamagedEntryError as damage:
                entries = self._repair_queue(key, damage, start, max_count)
            min_offset, next_offset = queue.min_offset, queue.next_offset
        records: list[StoredRecord] = []
        next_queue_offset = start
        log_min = self.log.min_offset
        for group in _contiguous(entries):
            if group[0].physical_offset < log_min:
                next_queue_offset = group[-1].queue_offset + 1
                continue
            for record in self._read_records(group):
                records.append(record)
                next_queue_offset = record.queue_offset + 1
        return QueueRead(records, next_queue_offset, min_offset, next_offset)

    def _repair_queue(
        self, key: QueueKey, damage: DamagedEntryError, start: int, max_count: int
    ) -> list[QueueEntry]:
        queue = self.queues.get(key)
        if key in self._rebuilt_this_run:
            raise self._missing_entry_error(key, damage)
        log.warning("consume queue %s/%d damaged (%s): rebuilding from the log", key[0], key[1], damage)
        self._rebuilt_this_run.add(key)
        expected_next = queue.next_offset
        rebuild_queue(self.log, queue, key, self.dispatched_offset)
        queue.next_offset = max(queue.next_offset, expected_next)
        try:
            return queue.read(start, max_count)
        except DamagedEntryError as still:
            raise self._missing_entry_error(key, still) from damage

    def _missing_entry_error(self, key: QueueKey, damage: DamagedEntryError) -> CorruptRecordError:
        where = "; ".join(damaged.describe() for damaged in self.corrupt_ranges) or "no readable record"
        return CorruptRecordError(
            file=f"consumequeue {key[0]}/{key[1]}",
            file_offset=damage.queue_offset,
            physical_offset=-1,
            reason=f"queue offset {damage.queue_offset} has no valid record in the log ({where})",
        )

    def _read_records(self, group: list[QueueEntry]) -> Iterator[StoredRecord]:
        first = group[0].physical_offset
        span = group[-1].physical_offset + group[-1].size - first
        data = self.log.read(first, span)
        for entry in group:
            position = entry.physical_offset - first
            try:
                yield decode_record(data, position, entry.physical_offset)
            except RecordDefect as defect:
                raise self._corrupt(entry.physical_offset, defect.reason, entry.size) from defect

    def _corrupt(self, physical_offset: int, reason: str, size: int = 1) -> CorruptRecordError:
        """The error for a bad record of ``size`` bytes, naming its segment file and offset in it."""
        segment = self.log.segment_at_or_before(physical_offset)
        if segment is None:
            return CorruptRecordError("(no segment)", -1, physical_offset, reason)
        file_offset = physical_offset - segment.base_offset
        if file_offset + size > segment.size:
            reason = f"{reason}; the segment file ends at byte {segment.size} (cut short)"
        return CorruptRecordError(segment.path, file_offset, physical_offset, reason)

    def read_at(self, physical_offset: int, size: int) -> StoredRecord:
        if physical_offset < self.log.min_offset or physical_offset + size > self.dispatched_offset:
            raise KeyError(f"no readable record at log offset {physical_offset}")
        data = self.log.read(physical_offset, size)
        try:
            return decode_record(data, 0, physical_offset)
        except RecordDefect as defect:
            raise self._corrupt(physical_offset, defect.reason, size) from defect

    def _read_unknown_size(self, physical_offset: int) -> StoredRecord | None:
        if physical_offset < self.log.min_offset or physical_offset >= self.dispatched_offset:
            return None
        head = self.log.read(physical_offset, 8)
        size = int.from_bytes(head[4:8], "little")
        try:
            return self.read_at(physical_offset, size)
        except CorruptRecordError:
            return None

    def find_by_message_id(self, message_id: str) -> list[StoredRecord]:
        return self._find(MESSAGE_ID_KIND, message_id, 0, 2**63 - 1, 64, lambda record: record.message_id)

    def find_by_key(self, key: str, begin_ms: int, end_ms: int, max_results: int = 64) -> list[StoredRecord]:
        return self._find(BUSINESS_KEY_KIND, key, begin_ms, end_ms, max_results, None, key)

    def _find(
        self,
        kind: bytes,
        key: str,
        begin_ms: int,
        end_ms: int,
        max_results: int,
        field_of: Callable[[StoredRecord], str] | None,
        business_key: str | None = None,
    ) -> list[StoredRecord]:
        wanted = key_hash(kind, key)
        found: list[StoredRecord] = []
        with self._queues_lock:
            offsets = self._lookup_with_repair(wanted, begin_ms, end_ms)
        for offset in offsets:
            record = self._read_unknown_size(offset)
            if record is None:
                continue
            matches = field_of(record) == key if field_of is not None else business_key in record.keys
            if matches:
                found.append(record)
                if len(found) >= max_results:
                    break
        return found

    def _lookup_with_repair(self, wanted: int, begin_ms: int, end_ms: int) -> list[int]:
        # Each failed attempt drops and rebuilds one damaged run, so this ends within runs + 1 tries.
        for _attempt in range(self.index.run_count + 1):
            try:
                return list(self.index.lookup(wanted, begin_ms, end_ms))
            except DamagedRunError as damage:
                start, end = self.index.drop_run(damage.path)
                log.warning("%s: rebuilding it from the log", damage)
                rebuild_index_range(self.log, self.index, start, end)
        raise AssertionError("key index could not be repaired")  # pragma: no cover

    # ----------------------------------------------------------------- retention

    def enforce_retention(self, progress: Mapping[QueueKey, int]) -> list[str]:
        """Delete segments every consumer is past and that are older than the retention time.

        ``progress`` maps each queue that has consumers to the lowest queue offset any of its
        groups still needs. Queues without consumers do not hold segments back. Returns the
        deleted segment paths. Under disk pressure, with the explicit override only, the oldest
        segments are deleted even if unconsumed (logged as an error each time).
        """
        needed = self._lowest_needed_offset(progress)
        cutoff_ms = self.clock.now_ms() - int(self.config.retention_s * 1000)
        deleted: list[str] = []
        for segment in list(self.log.segments[:-1]):
            if segment.end_offset > self.dispatched_offset:
                break
            following = self.log.next_segment(segment)
            newest_ms = self._first_store_ms(following) if following is not None else None
            expired = newest_ms is not None and newest_ms < cutoff_ms
            consumed = segment.end_offset <= needed
            forced = (
                self.config.retention_override_under_pressure
                and not consumed
                and self.guard.is_under_pressure()
            )
            if not ((expired and consumed) or forced):
                break
            if forced:
                log.error(
                    "retention override: deleting %s, unread by consumers, as the disk is under pressure",
                    segment.path,
                )
            self.log.delete_segment(segment)
            deleted.append(segment.path)
            self.guard.refresh()
        if deleted:
            self._trim_derived()
        return deleted

    def _lowest_needed_offset(self, progress: Mapping[QueueKey, int]) -> int:
        needed = self.write_offset
        with self._queues_lock:
            for key, queue_offset in progress.items():
                queue = self.queues.find(key)
                if queue is None or queue_offset >= queue.next_offset:
                    continue
                try:
                    entries = queue.read(max(queue_offset, queue.min_offset), 1)
                except DamagedEntryError:
                    return self.log.min_offset  # unsure: keep everything
                if entries:
                    needed = min(needed, entries[0].physical_offset)
        return needed

    def _first_store_ms(self, segment: Segment) -> int | None:
        head = segment.file.pread(HEADER_SIZE, 0)
        if len(head) < HEADER_SIZE or head[:4] != MAGIC:
            return None
        return int.from_bytes(head[44:52], "little")

    def _trim_derived(self) -> None:
        log_min = self.log.min_offset
        with self._queues_lock:
            for _, queue in self.queues:
                first_kept = _first_entry_at_or_after(queue, log_min)
                queue.delete_files_before(first_kept)
            self.index.delete_runs_before(log_min)


_MESSAGE_ID_HASHER = key_hasher(MESSAGE_ID_KIND)


def _derive(
    batch: EncodedBatch,
    pending: dict[QueueKey, list[bytes | int]],
    first_offsets: dict[QueueKey, int],
    keyed: list[bytes],
) -> None:
    """Add a batch's consume-queue entry parts (see ``join_entries``) and key-index entries.

    Runs once per record on the dispatcher thread, hence the locals: a record without a tag or
    business keys costs one entry pack, two checksums and one hash.
    """
    store_ms = batch.store_timestamp_ms
    flat = batch.flat_placed
    tag_codes: Iterable[int] = itertools.repeat(NO_TAG_HASH)
    if batch.tagged:
        codes = [NO_TAG_HASH] * batch.count
        for index, tag, business_keys in batch.tagged:
            codes[index] = tag_hash(tag)
            physical = flat[index * PLACED_FIELDS + 3]
            for business_key in business_keys:
                keyed.append(index_entry(key_hash(BUSINESS_KEY_KIND, business_key), store_ms, physical))
        tag_codes = codes
    pack_body = ENTRY_BODY.pack
    checksum = crc32c.crc32c
    copy_hasher = _MESSAGE_ID_HASHER.copy
    pack_tail = INDEX_ENTRY_TAIL.pack
    fields = iter(flat)
    # tag_codes may repeat forever: the six fields end the loop.
    records = zip(fields, fields, fields, fields, fields, fields, tag_codes, strict=False)
    for topic, queue_id, queue_offset, physical, size, message_id, tag_code in records:
        key = (topic, queue_id)
        parts = pending.get(key)
        if parts is None:
            parts = pending[key] = []
            first_offsets[key] = queue_offset
        body = pack_body(physical, size, tag_code, store_ms)
        parts += (body, checksum(body))
        if message_id:
            hasher = copy_hasher()
            hasher.update(message_id)
            keyed.append(hasher.digest()[::-1] + pack_tail(physical, store_ms))


def _first_entry_at_or_after(queue: ConsumeQueue, log_offset: int) -> int:
    low, high = queue.min_offset, queue.next_offset
    while low < high:
        middle = (low + high) // 2
        try:
            entries = queue.read(middle, 1)
        except DamagedEntryError:
            return queue.min_offset
        if entries and entries[0].physical_offset < log_offset:
            low = middle + 1
        else:
            high = middle
    return low


def _contiguous(entries: list[QueueEntry]) -> Iterator[list[QueueEntry]]:
    """Runs of entries whose records sit back to back in the log (read with one pread each)."""
    group: list[QueueEntry] = []
    for entry in entries:
        if group and (
            entry.physical_offset != group[-1].physical_offset + group[-1].size
            or entry.physical_offset + entry.size - group[0].physical_offset > 4 * 1024 * 1024
        ):
            yield group
            group = []
        group.append(entry)
    if group:
        yield group
