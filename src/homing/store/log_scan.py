"""Walk the commit log record by record, telling a torn tail from corruption.

Theory of operation. A scan starts at a known record boundary (the checkpoint, or the start of the
log) and validates each record (frame, lengths, CRC32C, and the record's own idea of where it
lives). When the bytes at a position are not a valid record, two very different things can be
going on, and they must not be confused:

* a **torn tail**: the last writes before a crash reached the disk only in part, possibly out of
  order (a later record, or a later segment, whole while an earlier one is torn). None of it was
  acknowledged (acknowledgement waits for the fsync that would have covered it), so everything from
  the damage on is cut: zeroed or removed, synced, and reported.
* **corruption**: damage to bytes that were durable. Those bytes were acknowledged once; skipping
  them silently is how stores lose data. The range is reported (file and offset) and never served;
  the scan resumes at the next valid record.

Each record carries ``durable_before``, the flushed offset when it was appended. The damage at
offset D is corruption if any valid record after it has ``durable_before`` > D: D was durable before
that record was written. Otherwise the damaged bytes were never known durable by any later write,
and they are treated as a torn tail. (One case stays ambiguous, as in every log: media damage to the
very last synced batch with nothing written after it; it is treated as a tail.)

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
    FILLER_MAGIC_INT,
    FILLER_SIZE,
    HEADER_SIZE,
    MAGIC,
    MAGIC_INT,
    MAX_RECORD_BYTES,
    RecordDefect,
    StoredRecord,
    check_record,
    decode_record,
    durable_before,
    is_filler,
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
        # Where the torn tail begins and ends, when one was found (the caller cuts it), and the
        # later segments that hold only never-acknowledged bytes (the caller removes them).
        self.cut: tuple[Segment, int, int] | None = None
        self.cut_segments: list[Segment] = []

    def _damage_was_durable(self, damage_offset: int, found: tuple[Segment, int]) -> bool:
        """Whether a valid record after the damage says the damaged bytes were already durable."""
        segment, position = found
        while True:
            data = segment.file.pread(HEADER_SIZE, position)
            if durable_before(data, 0) > damage_offset:
                return True
            size = read_frame(data, 0)[1]
            following = self._find_next_valid(segment, position + size - 1)
            if following is None:
                return False
            segment, position = following

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

    def _later_data(self, segment: Segment) -> bool:
        """Whether a segment after this one starts with a record (reading a header, not the segment)."""
        later = self._log.next_segment(segment)
        while later is not None:
            if later.file.pread(len(MAGIC), 0) == MAGIC:
                return True
            later = self._log.next_segment(later)
        return False

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
            room = segment.size - position
            if magic == FILLER_MAGIC_INT and is_filler(buffer, index, segment.base_offset + position, room):
                following = self._log.next_segment(segment)
                if following is None:
                    self.report.end_offset = segment.end_offset
                    return None
                return following, 0  # the writer ended this segment and went on in the next
            if magic == 0 and total == 0:
                rest_is_zero = _is_zero_from(reader, position) == 0
                if rest_is_zero and room < FILLER_SIZE:
                    # Too little room left for a filler: the writer rolled over without one.
                    following = self._log.next_segment(segment)
                    if following is None:
                        self.report.end_offset = segment.end_offset
                        return None
                    return following, 0
                if rest_is_zero and not self._later_data(segment):
                    self.report.end_offset = segment.base_offset + position
                    return None
                defect = "zeros where a record should start, with data after them"
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
            damage_offset = segment.base_offset + position
            following_valid = self._find_next_valid(segment, position)
            if following_valid is None or not self._damage_was_durable(damage_offset, following_valid):
                end = _is_zero_from(reader, position)
                self.cut = (segment, position, max(end, position + 1))
                later = self._log.next_segment(segment)
                while later is not None:
                    self.cut_segments.append(later)
                    later = self._log.next_segment(later)
                self.report.torn_tail = TornTail(
                    file=segment.path,
                    file_offset=position,
                    start_offset=damage_offset,
                    bytes_cut=max(end - position, 0),
                    reason=defect
                    if following_valid is None
                    else f"{defect}; the records after it were never durable",
                )
                self.report.end_offset = damage_offset
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
