"""Walk the commit log record by record, telling a torn tail from corruption.

Theory of operation. A scan starts at a known record boundary (the checkpoint, or the start of the
log) and validates each record (frame, lengths, CRC32C, and the record's own idea of where it
lives). When the bytes at a position are not a valid record, two very different things can be
going on, and they must not be confused:

* a **torn tail**: the last write(s) before a crash reached the disk only in part. Nothing valid
  follows. The damaged bytes were never acknowledged (acknowledgement waits for fsync), so they are
  cut: zeroed and synced, and the cut is reported.
* **corruption**: a damaged record *followed by valid ones*. Those bytes were acknowledged once;
  skipping them silently is how stores lose data. The range is reported (file and offset) and
  never served; the scan resumes at the next valid record.

Zeros where a record would start mean "no more records in this segment". If a later segment
holds records, the writer rolled over (a record never spans segments); otherwise it is the end of
the log, and the rest of that segment must be zero too, or it is damage to classify as above.

Reading is done in bounded chunks, so a scan's memory does not grow with the segment size.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

from homing.store.commit_log import CommitLog, Segment
from homing.store.record import (
    HEADER_SIZE,
    MAGIC,
    MAGIC_INT,
    MAX_RECORD_BYTES,
    RecordDefect,
    StoredRecord,
    check_record,
    decode_record,
    read_frame,
)

__all__ = ["CorruptRange", "LogScan", "ScanReport", "TornTail"]

CHUNK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CorruptRange:
    """Bytes [start_offset, end_offset) of the log are damaged and followed by valid records."""

    file: str
    file_offset: int
    start_offset: int
    end_offset: int
    reason: str

    def describe(self) -> str:
        return (
            f"corrupt log range [{self.start_offset}, {self.end_offset}) in {self.file} "
            f"at byte {self.file_offset}: {self.reason}"
        )


@dataclass(frozen=True, slots=True)
class TornTail:
    """A damaged tail that nothing valid follows: cut at ``start_offset``."""

    file: str
    file_offset: int
    start_offset: int
    bytes_cut: int
    reason: str


@dataclass(slots=True)
class ScanReport:
    end_offset: int = 0
    records: int = 0
    corrupt_ranges: list[CorruptRange] = field(default_factory=list)
    torn_tail: TornTail | None = None


class _SegmentReader:
    """Bounded-memory random access to one segment: keeps one window of bytes."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self._window = b""
        self._window_start = 0

    def view(self, position: int, size: int) -> tuple[bytes, int]:
        """(buffer, index of ``position`` in it) with at least ``size`` bytes if the segment has them."""
        end = self._window_start + len(self._window)
        if position < self._window_start or position + size > end:
            want = max(size, CHUNK_BYTES)
            want = min(want, self.segment.size - position)
            self._window = self.segment.file.pread(max(want, 0), position)
            self._window_start = position
        return self._window, position - self._window_start


def _is_zero_from(reader: _SegmentReader, position: int) -> int:
    """Length of non-zero data found from ``position`` to the segment end: 0 if all zero."""
    segment = reader.segment
    last_nonzero = -1
    while position < segment.size:
        size = min(CHUNK_BYTES, segment.size - position)
        buffer, index = reader.view(position, size)
        chunk = buffer[index : index + size]
        # Comparing with zeros is ~10x faster than rstrip, which tests the bytes one by one; this
        # runs over the rest of the last segment at every open.
        if chunk != bytes(len(chunk)):
            stripped = chunk.rstrip(b"\x00")
            if stripped:
                last_nonzero = position + len(stripped)
        position += size
    return 0 if last_nonzero < 0 else last_nonzero


class LogScan:
    """One pass over the log from ``start_offset``; iterate :meth:`records`, then read :attr:`report`."""

    def __init__(self, log: CommitLog, start_offset: int) -> None:
        self._log = log
        self._start = start_offset
        self.report = ScanReport(end_offset=start_offset)
        # Where the torn tail begins and ends, when one was found (the caller cuts it).
        self.cut: tuple[Segment, int, int] | None = None

    def _find_next_valid(self, segment: Segment, position: int) -> tuple[Segment, int] | None:
        """The first valid record strictly after ``position`` (this segment or any later one)."""
        current: Segment | None = segment
        search_from = position + 1
        while current is not None:
            reader = _SegmentReader(current)
            cursor = search_from
            while cursor < current.size:
                size = min(CHUNK_BYTES, current.size - cursor)
                buffer, index = reader.view(cursor, size)
                hit = buffer.find(MAGIC, index, index + size)
                if hit < 0:
                    # A magic split across the chunk edge is found by overlapping the next chunk.
                    cursor += max(size - len(MAGIC) + 1, 1)
                    continue
                candidate = cursor + (hit - index)
                record_buffer, record_index = reader.view(candidate, HEADER_SIZE)
                _, total = read_frame(record_buffer, record_index)
                if HEADER_SIZE <= total <= MAX_RECORD_BYTES and candidate + total <= current.size:
                    record_buffer, record_index = reader.view(candidate, total)
                    try:
                        check_record(record_buffer, record_index, current.base_offset + candidate)
                        return current, candidate
                    except RecordDefect:
                        pass
                cursor = candidate + 1
            current = self._log.next_segment(current)
            search_from = 0
        return None

    def records(self) -> Iterator[StoredRecord]:
        segment = self._log.segment_for(self._start)
        position = self._start - segment.base_offset if segment is not None else 0
        while segment is not None:
            jump = yield from self._scan_segment(segment, position)
            if jump is None:
                return
            segment, position = jump
            self.report.end_offset = segment.base_offset + position

    def _scan_segment(
        self, segment: Segment, position: int
    ) -> Generator[StoredRecord, None, tuple[Segment, int] | None]:
        """Yield the segment's records from ``position``; return where to go on, or None at the end."""
        reader = _SegmentReader(segment)
        while position < segment.size:
            buffer, index = reader.view(position, HEADER_SIZE)
            magic, total = read_frame(buffer, index)
            if magic == 0 and total == 0:
                following = self._log.next_segment(segment)
                if following is not None and following.file.pread(len(MAGIC), 0) == MAGIC:
                    return following, 0  # the writer rolled over to the next segment
                if _is_zero_from(reader, position) == 0:
                    self.report.end_offset = segment.base_offset + position
                    return None
                defect = "non-zero bytes after the last record"
            else:
                if magic == MAGIC_INT and HEADER_SIZE <= total <= MAX_RECORD_BYTES:
                    buffer, index = reader.view(position, total)
                try:
                    record = decode_record(buffer, index, segment.base_offset + position)
                except RecordDefect as error:
                    defect = error.reason
                else:
                    self.report.records += 1
                    position += record.size
                    self.report.end_offset = segment.base_offset + position
                    yield record
                    continue
            following_valid = self._find_next_valid(segment, position)
            if following_valid is None:
                end = _is_zero_from(reader, position)
                self.cut = (segment, position, max(end, position + 1))
                self.report.torn_tail = TornTail(
                    file=segment.path,
                    file_offset=position,
                    start_offset=segment.base_offset + position,
                    bytes_cut=max(end - position, 0),
                    reason=defect,
                )
                self.report.end_offset = segment.base_offset + position
                return None
            next_segment, next_position = following_valid
            self.report.corrupt_ranges.append(
                CorruptRange(
                    file=segment.path,
                    file_offset=position,
                    start_offset=segment.base_offset + position,
                    end_offset=next_segment.base_offset + next_position,
                    reason=defect,
                )
            )
            if next_segment is not segment:
                return next_segment, next_position
            position = next_position
        # The segment is full to its last byte: records go on in the next one, if any.
        following = self._log.next_segment(segment)
        if following is None:
            return None
        return following, 0
