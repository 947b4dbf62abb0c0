"""Bring the store back to a consistent state after any shutdown, clean or not.

Theory of operation. The commit log is the only source of truth; everything else is derived and
checked against it:

1. The checkpoint says up to which log offset the consume queues and the key index are known
   durable. Without a (valid) checkpoint everything is rebuilt from the start of the log.
2. Each consume queue the checkpoint knows is checked: missing files, holes between files, a queue
   shorter than the checkpoint says, or a damaged last entry mean it is rebuilt from the log. Key
   index runs must tile the log up to the checkpoint; gaps are rebuilt.
3. One scan of the log, from the earliest offset anything needs, re-dispatches records to the
   queues and the index, finds the end of the log, cuts a torn tail (zero + sync, reported) and
   reports corrupt ranges (never skipped silently: they stay unreadable).
4. Queue entries pointing past the end of the log are dropped; each queue's next offset is the
   largest of what the checkpoint, the log and the surviving entries say, so an offset is never
   handed out twice (a consumer that had read it would skip the new message).
5. Everything rebuilt is synced before the new checkpoint is written.

:func:`recover` runs these steps in order: :func:`_plan` (1, 2), :func:`_scan_and_dispatch` and
:func:`_cut` (3), :func:`_write_index_gaps` and :func:`_settle_queues` (4, 5).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from homing.store.checkpoint import Checkpoint
from homing.store.commit_log import CommitLog
from homing.store.consume_queue import ENTRY_SIZE, ConsumeQueue, DamagedEntryError, pack_entry
from homing.store.disk import Disk
from homing.store.key_index import BUSINESS_KEY_KIND, MESSAGE_ID_KIND, KeyIndex, index_entry, key_hash
from homing.store.log_scan import CorruptRange, LogScan, TornTail
from homing.store.queue_table import QueueKey, QueueTable
from homing.store.record import StoredRecord
from homing.store.tag_hash import tag_hash

__all__ = ["RecoveryReport", "index_keys", "rebuild_index_range", "rebuild_queue", "recover"]

_BATCH_ENTRIES = 4096  # consume-queue entries written at once during the scan (128 KiB)


@dataclass(slots=True)
class RecoveryReport:
    abnormal_shutdown: bool = False
    checkpoint_found: bool = False
    scanned_from: int = 0
    end_offset: int = 0
    records_scanned: int = 0
    torn_tail: TornTail | None = None
    corrupt_ranges: list[CorruptRange] = field(default_factory=list)
    rebuilt_queues: list[QueueKey] = field(default_factory=list)
    rebuilt_index_ranges: list[tuple[int, int]] = field(default_factory=list)
    truncated_queue_entries: int = 0
    duration_s: float = 0.0


@dataclass(slots=True)
class RecoveredState:
    write_offset: int
    queue_next: dict[QueueKey, int]
    report: RecoveryReport


def index_keys(record: StoredRecord) -> list[int]:
    hashes = [key_hash(MESSAGE_ID_KIND, record.message_id)] if record.message_id else []
    hashes.extend(key_hash(BUSINESS_KEY_KIND, key) for key in record.keys)
    return hashes


def _queue_needs_rebuild(queue: ConsumeQueue, expected_next: int) -> bool:
    if queue.next_offset < expected_next or queue.has_gap():
        return True
    if expected_next > queue.min_offset:
        try:
            queue.read(expected_next - 1, 1)
        except DamagedEntryError:
            return True
    return False


@dataclass(slots=True)
class _Plan:
    """What the scan must re-derive, decided from the checkpoint and the derived files found."""

    queues_offset: int  # consume queues are complete for records before this offset
    index_from: int  # the key index is complete for records before this offset
    start: int  # where the scan begins
    rebuild: set[QueueKey]  # queues rebuilt from the start of the log
    gaps: list[tuple[int, int]]  # key-index ranges [start, end) with no run, rebuilt as runs
    queue_next: dict[QueueKey, int]  # each queue's next offset as far as known so far


def recover(
    disk: Disk,
    log: CommitLog,
    queues: QueueTable,
    index: KeyIndex,
    checkpoint: Checkpoint | None,
    abnormal_shutdown: bool,
) -> RecoveredState:
    started = time.monotonic()
    report = RecoveryReport(abnormal_shutdown=abnormal_shutdown, checkpoint_found=checkpoint is not None)
    plan = _plan(log, queues, index, checkpoint)
    report.scanned_from = plan.start
    scan = LogScan(log, plan.start)
    gap_entries = _scan_and_dispatch(scan, queues, index, plan)
    end = _cut(log, scan, plan.start, report)
    _write_index_gaps(index, plan.gaps, gap_entries, report)
    index.advance(end)
    _settle_queues(queues, plan.queue_next, end, report)
    report.rebuilt_queues = sorted(plan.rebuild)
    report.duration_s = time.monotonic() - started
    return RecoveredState(write_offset=end, queue_next=plan.queue_next, report=report)


def _plan(log: CommitLog, queues: QueueTable, index: KeyIndex, checkpoint: Checkpoint | None) -> _Plan:
    """Check the derived data against the checkpoint (steps 1 and 2) and decide where the scan starts."""
    log_min = log.min_offset
    log_end_bound = log.segments[-1].end_offset if log.segments else log_min
    if checkpoint is not None and not (log_min <= checkpoint.queues_offset <= log_end_bound):
        checkpoint = None  # it vouches for a log we do not have: trust nothing derived
    queue_next: dict[QueueKey, int] = {}
    rebuild: set[QueueKey] = set()
    if checkpoint is None:
        for key, queue in queues:
            queue.remove_all()
            rebuild.add(key)
        queues_offset = log_min
    else:
        queues_offset = checkpoint.queues_offset
        for key, expected_next in checkpoint.queues.items():
            queue_next[key] = expected_next
            queue = queues.get(key)
            if _queue_needs_rebuild(queue, expected_next):
                queue.remove_all()
                rebuild.add(key)
    gaps = index.open(log_min)
    # The index buffer restarts where both the runs and the checkpoint say the index is complete.
    index_from = min(index.covered_end, checkpoint.index_offset if checkpoint else log_min)
    index.covered_end = index.buffered_end = index_from
    start = min([queues_offset, index_from] + [gap[0] for gap in gaps] + ([log_min] if rebuild else []))
    return _Plan(queues_offset, index_from, max(start, log_min), rebuild, gaps, queue_next)


def _scan_and_dispatch(scan: LogScan, queues: QueueTable, index: KeyIndex, plan: _Plan) -> list[list[bytes]]:
    """Re-derive queue entries and index keys from every valid record of the scan (step 3).

    Updates ``plan.queue_next``; returns the key-index entries of each gap of ``plan.gaps``.
    """
    gap_entries: list[list[bytes]] = [[] for _ in plan.gaps]
    # Entries are written in batches of consecutive queue offsets, one pwrite per batch rather than
    # per record: the files end up the same, and the scan after a crash is that much shorter.
    batches: dict[QueueKey, tuple[int, list[bytes]]] = {}

    def write_batch(key: QueueKey) -> None:
        first, entries = batches.pop(key)
        queues.get(key).write(first, b"".join(entries))

    queue_next = plan.queue_next
    for record in scan.records():
        key = (record.topic, record.queue_id)
        offset = record.physical_offset
        if offset >= plan.queues_offset or key in plan.rebuild:
            entry = pack_entry(offset, record.size, tag_hash(record.tag), record.store_timestamp_ms)
            batch = batches.get(key)
            if batch is not None and batch[0] + len(batch[1]) == record.queue_offset:
                batch[1].append(entry)
                if len(batch[1]) >= _BATCH_ENTRIES:
                    write_batch(key)
            else:
                if batch is not None:
                    write_batch(key)
                batches[key] = (record.queue_offset, [entry])
        if record.queue_offset + 1 > queue_next.get(key, 0):
            queue_next[key] = record.queue_offset + 1
        hashes = index_keys(record)
        if offset >= plan.index_from:
            for value in hashes:
                index.add(value, record.store_timestamp_ms, offset)
        else:
            for gap_number, (gap_start, gap_end) in enumerate(plan.gaps):
                if gap_start <= offset < gap_end:
                    gap_entries[gap_number].extend(
                        index_entry(value, record.store_timestamp_ms, offset) for value in hashes
                    )
    for key in list(batches):
        write_batch(key)
    return gap_entries


def _cut(log: CommitLog, scan: LogScan, start: int, report: RecoveryReport) -> int:
    """Report what the scan found and cut a torn tail (step 3); return the end of the log."""
    scan_report = scan.report
    end = scan_report.end_offset if scan_report.records or scan.cut else max(start, scan_report.end_offset)
    report.records_scanned = scan_report.records
    report.corrupt_ranges = scan_report.corrupt_ranges
    report.torn_tail = scan_report.torn_tail
    report.end_offset = end
    if scan.cut is not None:
        segment, cut_from, cut_to = scan.cut
        segment.file.pwrite(bytes(cut_to - cut_from), cut_from)
        segment.file.sync()
        # Later segments hold only bytes that were never durable; stale but valid-looking records
        # left in them would come back at the next recovery, so they go (the allocator recreates).
        for later in scan.cut_segments:
            log.delete_segment(later)
    return end


def _write_index_gaps(
    index: KeyIndex, gaps: list[tuple[int, int]], gap_entries: list[list[bytes]], report: RecoveryReport
) -> None:
    """Write one run for each key-index gap the scan re-derived (step 5: runs are written durably)."""
    for (gap_start, gap_end), entries in zip(gaps, gap_entries, strict=True):
        index.write_run(gap_start, gap_end, entries)
        report.rebuilt_index_ranges.append((gap_start, gap_end))


def _settle_queues(
    queues: QueueTable, queue_next: dict[QueueKey, int], end: int, report: RecoveryReport
) -> None:
    """Drop entries past the end of the log, fix each queue's next offset, sync (steps 4 and 5)."""
    for key, queue in queues:
        report.truncated_queue_entries += _drop_entries_past(queue, queue_next.get(key, 0), end)
        queue_next[key] = max(queue_next.get(key, 0), queue.next_offset)
        queue.sync()


def _drop_entries_past(queue: ConsumeQueue, known_next: int, log_end: int) -> int:
    """Truncate the queue at its first entry at/after ``known_next`` that is damaged or past the log."""
    if queue.next_offset <= known_next:
        return 0
    cut = known_next
    while cut < queue.next_offset:
        try:
            entries = queue.read(cut, 1024)
        except DamagedEntryError as damage:
            cut = damage.queue_offset
            break
        stop = next((entry.queue_offset for entry in entries if entry.physical_offset >= log_end), None)
        if stop is not None:
            cut = stop
            break
        if not entries:
            break
        cut = entries[-1].queue_offset + 1
    dropped = queue.next_offset - cut
    if dropped > 0:
        queue.truncate(cut)
    return max(dropped, 0)


def rebuild_queue(log: CommitLog, queue: ConsumeQueue, key: QueueKey, end_offset: int) -> None:
    """Rebuild one consume queue from the whole log (it was found damaged while serving)."""
    queue.remove_all()
    scan = LogScan(log, log.min_offset)
    for record in scan.records():
        if record.physical_offset >= end_offset:
            break
        if (record.topic, record.queue_id) == key:
            queue.write(
                record.queue_offset,
                pack_entry(
                    record.physical_offset, record.size, tag_hash(record.tag), record.store_timestamp_ms
                ),
            )
    queue.sync()


def rebuild_index_range(log: CommitLog, index: KeyIndex, start: int, end: int) -> None:
    entries: list[bytes] = []
    scan = LogScan(log, start)
    for record in scan.records():
        if record.physical_offset >= end:
            break
        store_ms, offset = record.store_timestamp_ms, record.physical_offset
        entries.extend(index_entry(value, store_ms, offset) for value in index_keys(record))
    index.write_run(start, end, entries)


assert ENTRY_SIZE == 32
