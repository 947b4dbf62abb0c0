"""Commit-log record: the one byte layout every message is stored in.

Layout (all integers little-endian; documented again in docs/STORAGE_FORMAT.md)::

    offset size  field
    0      4     magic               b"HMR1"
    4      4     total_size          bytes of the whole record, this header included
    8      4     crc32c              CRC32C (Castagnoli) of bytes [12, total_size)
    12     4     flags               opaque to the store (the broker's message type bits)
    16     4     queue_id            queue within the topic
    20     8     queue_offset        index of this record in its (topic, queue_id) consume queue
    28     8     physical_offset     offset of this record in the whole log (its own address)
    36     8     born_timestamp_ms   when the producer made it
    44     8     store_timestamp_ms  when the store appended it
    52     2     topic_length
    54     2     message_id_length
    56     2     tag_length
    58     2     keys_length
    60     4     properties_length
    64     4     body_length
    68     8     durable_before      the log offset known durable (flushed) when this record was
                                     appended: every byte before it had been fsynced already
    76     ...   topic | message_id | tag | keys | properties | body   (UTF-8 text, raw body)

``keys`` are joined with 0x1F; ``properties`` are ``name 0x1F value`` pairs joined with 0x1E. Those
two bytes are therefore refused inside keys, property names and values.

When a record does not fit in what is left of a segment, the writer ends the segment with a
*filler* (unless fewer than ``FILLER_SIZE`` bytes are left) and puts the record at the start of the
next one, so that "zeros here, records in the next segment" is never mistaken for a roll::

    offset size  field
    0      4     magic               b"HMRF"
    4      4     total_size          bytes from here to the end of the segment
    8      4     crc32c              of bytes [12, 20)
    12     8     physical_offset     the filler's own log offset

The record carries its own physical offset so that a reader (and recovery looking for the next
valid record after damage) can tell a real record from bytes that merely look like one. It also
carries ``durable_before``, which lets recovery tell damage to acknowledged bytes (a later record
was written when they were already durable: corruption) from a torn, never-acknowledged tail.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import crc32c

from homing.store.errors import InvalidRecordError

__all__ = [
    "FILLER_SIZE",
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_BODY_BYTES",
    "MAX_RECORD_BYTES",
    "EncodedBatch",
    "NewRecord",
    "RecordDefect",
    "StoredRecord",
    "decode_record",
    "durable_before",
    "encode_filler",
    "encode_record",
    "encoded_size",
    "is_filler",
    "read_frame",
]

MAGIC = b"HMR1"
MAGIC_INT = int.from_bytes(MAGIC, "little")
HEADER = struct.Struct("<IIIIIQQQQHHHHIIQ")
HEADER_SIZE = HEADER.size  # 76
assert HEADER_SIZE == 76
DURABLE_BEFORE = struct.Struct("<Q")
DURABLE_BEFORE_AT = 68
_FRAME = struct.Struct("<III")  # magic, total_size, crc32c
_HEADER_TAIL = struct.Struct("<IIQQQQHHHHIIQ")  # everything the checksum covers in the header
_HAS_TAG = 1 << 31

# Limits, explicit. The broker enforces a smaller body limit (4 MiB by default); these are the
# format's own ceilings, so that a damaged length field can never make a reader allocate gigabytes.
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_TEXT_BYTES = 0xFFFF
MAX_PROPERTIES_BYTES = 1024 * 1024
MAX_RECORD_BYTES = HEADER_SIZE + 4 * MAX_TEXT_BYTES + MAX_PROPERTIES_BYTES + MAX_BODY_BYTES

PLACED_FIELDS = 6  # items per record in EncodedBatch.flat_placed

_KEY_SEPARATOR = "\x1f"
_PAIR_SEPARATOR = "\x1e"
_RESERVED = (_KEY_SEPARATOR, _PAIR_SEPARATOR)


@dataclass(frozen=True, slots=True)
class NewRecord:
    """What a caller asks the store to append. The store assigns offsets and the store time."""

    topic: str
    queue_id: int
    body: bytes
    message_id: str = ""
    tag: str | None = None
    keys: Sequence[str] = ()
    properties: Mapping[str, str] = field(default_factory=dict)
    flags: int = 0
    born_timestamp_ms: int = 0


@dataclass(frozen=True, slots=True)
class StoredRecord:
    topic: str
    queue_id: int
    queue_offset: int
    physical_offset: int
    size: int
    flags: int
    born_timestamp_ms: int
    store_timestamp_ms: int
    message_id: str
    tag: str | None
    keys: tuple[str, ...]
    properties: dict[str, str]
    body: bytes


class RecordDefect(Exception):
    """Bytes at a position are not a valid record; ``reason`` says why (used by readers and recovery)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _text(value: str, what: str) -> bytes:
    encoded = value.encode("utf-8")
    if len(encoded) > MAX_TEXT_BYTES:
        raise InvalidRecordError(f"{what} is {len(encoded)} bytes; at most {MAX_TEXT_BYTES} allowed")
    return encoded


def _check_reserved(value: str, what: str) -> None:
    for reserved in _RESERVED:
        if reserved in value:
            raise InvalidRecordError(f"{what} contains the reserved byte 0x{ord(reserved):02X}")


def encode_properties(properties: Mapping[str, str]) -> bytes:
    for name, value in properties.items():
        _check_reserved(name, f"property name {name!r}")
        _check_reserved(value, f"property {name!r}")
    encoded = _PAIR_SEPARATOR.join(f"{k}{_KEY_SEPARATOR}{v}" for k, v in properties.items()).encode()
    if len(encoded) > MAX_PROPERTIES_BYTES:
        raise InvalidRecordError(f"properties are {len(encoded)} bytes; at most {MAX_PROPERTIES_BYTES}")
    return encoded


def _optional_fields(record: NewRecord) -> tuple[bytes, bytes, bytes, int]:
    """(tag, keys, properties) bytes and the flags, checked: the fields most records leave empty."""
    tag = _text(record.tag, "tag") if record.tag is not None else b""
    if record.keys:
        for key in record.keys:
            _check_reserved(key, f"key {key!r}")
        keys = _text(_KEY_SEPARATOR.join(record.keys), "keys")
    else:
        keys = b""
    properties = encode_properties(record.properties) if record.properties else b""
    # A present-but-empty tag and an absent tag must stay distinguishable: a flag bit marks "has tag".
    flags = record.flags | (_HAS_TAG if record.tag is not None else 0)
    return tag, keys, properties, flags


def _check_limits(record: NewRecord) -> None:
    """Raise :class:`InvalidRecordError` if the message id or the body is over its format limit."""
    _text(record.message_id, "message id")
    if len(record.body) > MAX_BODY_BYTES:
        raise InvalidRecordError(f"body is {len(record.body)} bytes; at most {MAX_BODY_BYTES}")


def encoded_size(record: NewRecord) -> int:
    """Bytes :func:`encode_record` makes of ``record`` (raises :class:`InvalidRecordError` like it)."""
    _check_limits(record)
    tag, keys, properties, _ = _optional_fields(record)
    topic = _text(record.topic, "topic")
    text = len(topic) + len(record.message_id.encode()) + len(tag) + len(keys) + len(properties)
    return HEADER_SIZE + text + len(record.body)


@dataclass(slots=True)
class EncodedBatch:
    """Records of one append, encoded: one item per record, in log order.

    Filled by :meth:`encode`, possibly in several calls (one per segment the batch spans). Besides
    the bytes, it keeps what the store derives consume-queue entries and key-index keys from, so
    that nothing has to be decoded again: each record's queue, message id (UTF-8) and, for the few
    records that have them, tag and business keys.
    """

    store_timestamp_ms: int
    durable_before: int
    first_offset: int  # the log offset the append started at (a filler may come before the records)
    end_offset: int = 0  # past the last record
    # PLACED_FIELDS items per record, flat: topic, queue id, queue offset, log offset, size, message id
    # (UTF-8). Flat because a tuple per record would be one more object per record for the garbage
    # collector to track (collections cost more than the tuples themselves); see :meth:`placed`.
    flat_placed: list[Any] = field(default_factory=list)
    # (index, tag, keys) of the records with a tag or business keys; most records have neither.
    tagged: list[tuple[int, str | None, tuple[str, ...]]] = field(default_factory=list)
    # The next queue offset of every queue this batch wrote to.
    next_queue_offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    def placed(self) -> Iterator[tuple[str, int, int, int, int, bytes]]:
        """(topic, queue id, queue offset, log offset, size, message id) of each record, in order."""
        fields = iter(self.flat_placed)
        return zip(fields, fields, fields, fields, fields, fields, strict=True)

    @property
    def count(self) -> int:
        return len(self.flat_placed) // PLACED_FIELDS

    def encode(
        self,
        records: Sequence[NewRecord],
        start: int,
        position: int,
        limit: int,
        queue_next: Mapping[tuple[str, int], int],
        chunks: list[bytes],
    ) -> int:
        """Encode ``records[start:]`` at log offset ``position`` onwards, appending their bytes to ``chunks``.

        Stops before the first record that would end past ``limit`` (the end of the segment) and
        returns its index (``len(records)`` when all fit); :attr:`end_offset` is where it stopped.
        Queue offsets continue from :attr:`next_queue_offsets`, else from ``queue_next``. Raises
        :class:`InvalidRecordError` for a record the format cannot hold.

        The bytes are those of :func:`encode_record`, made with fewer calls: this loop runs once
        per appended record and is the store's hot path.
        """
        store_ms = self.store_timestamp_ms
        durable = self.durable_before
        batch_next = self.next_queue_offsets
        placed = self.flat_placed
        pack_tail = _HEADER_TAIL.pack
        pack_frame = _FRAME.pack
        checksum = crc32c.crc32c
        topics: dict[str, bytes] = {}
        for index, record in enumerate(itertools.islice(records, start, None), start):
            topic = record.topic
            topic_bytes = topics.get(topic)
            if topic_bytes is None:
                topic_bytes = topics[topic] = _text(topic, "topic")
            message_id = record.message_id.encode()
            body = record.body
            if len(message_id) > MAX_TEXT_BYTES or len(body) > MAX_BODY_BYTES:
                _check_limits(record)
            tag = record.tag
            keys = record.keys
            if tag is None and not keys and not record.properties:
                text = topic_bytes + message_id
                flags = record.flags
                tag_length = keys_length = properties_length = 0
                plain = True
            else:
                tag_bytes, keys_bytes, properties_bytes, flags = _optional_fields(record)
                text = b"".join((topic_bytes, message_id, tag_bytes, keys_bytes, properties_bytes))
                tag_length, keys_length, properties_length = (
                    len(tag_bytes),
                    len(keys_bytes),
                    len(properties_bytes),
                )
                plain = False
            size = HEADER_SIZE + len(text) + len(body)
            if position + size > limit:
                self.end_offset = position
                return index
            queue_id = record.queue_id
            key = (topic, queue_id)
            queue_offset = batch_next.get(key)
            if queue_offset is None:
                queue_offset = queue_next.get(key, 0)
            batch_next[key] = queue_offset + 1
            covered = (
                pack_tail(
                    flags,
                    queue_id,
                    queue_offset,
                    position,
                    record.born_timestamp_ms,
                    store_ms,
                    len(topic_bytes),
                    len(message_id),
                    tag_length,
                    keys_length,
                    properties_length,
                    len(body),
                    durable,
                )
                + text
            )
            chunks += (pack_frame(MAGIC_INT, size, checksum(body, checksum(covered))), covered, body)
            placed += (topic, queue_id, queue_offset, position, size, message_id)
            if not plain and (tag is not None or keys):
                self.tagged.append((index, tag, tuple(keys)))
            position += size
        self.end_offset = position
        return len(records)


def encode_record(
    record: NewRecord,
    queue_offset: int,
    physical_offset: int,
    store_timestamp_ms: int,
    durable_before: int = 0,
) -> bytes:
    """The record's bytes, framed and checksummed.

    The reference encoding of one record; appends go through :meth:`EncodedBatch.encode`, which
    must make the same bytes (the store tests compare them).
    """
    topic = record.topic.encode()
    if len(topic) > MAX_TEXT_BYTES:
        _text(record.topic, "topic")
    message_id = record.message_id.encode()
    if len(message_id) > MAX_TEXT_BYTES:
        _text(record.message_id, "message id")
    tag, keys, properties, flags = _optional_fields(record)
    body = record.body
    if len(body) > MAX_BODY_BYTES:
        raise InvalidRecordError(f"body is {len(body)} bytes; at most {MAX_BODY_BYTES}")
    header_tail = _HEADER_TAIL.pack(
        flags,
        record.queue_id,
        queue_offset,
        physical_offset,
        record.born_timestamp_ms,
        store_timestamp_ms,
        len(topic),
        len(message_id),
        len(tag),
        len(keys),
        len(properties),
        len(body),
        durable_before,
    )
    covered = b"".join((header_tail, topic, message_id, tag, keys, properties))  # all but frame and body
    total = _FRAME.size + len(covered) + len(body)
    checksum = crc32c.crc32c(body, crc32c.crc32c(covered))
    return b"".join((_FRAME.pack(MAGIC_INT, total, checksum), covered, body))


FILLER_MAGIC = b"HMRF"
FILLER_MAGIC_INT = int.from_bytes(FILLER_MAGIC, "little")
_FILLER = struct.Struct("<IIIQ")
FILLER_SIZE = _FILLER.size  # 20


def encode_filler(physical_offset: int, total_size: int) -> bytes:
    assert total_size >= FILLER_SIZE
    address = physical_offset.to_bytes(8, "little")
    return _FILLER.pack(FILLER_MAGIC_INT, total_size, crc32c.crc32c(address), physical_offset)


def is_filler(
    data: bytes | memoryview, position: int, expected_physical_offset: int, expected_total: int
) -> bool:
    """Whether the bytes at ``position`` are a valid filler reaching ``expected_total`` bytes further."""
    if len(data) - position < FILLER_SIZE:
        return False
    magic, total, checksum, physical = _FILLER.unpack_from(data, position)
    return bool(
        magic == FILLER_MAGIC_INT
        and total == expected_total
        and physical == expected_physical_offset
        and crc32c.crc32c(physical.to_bytes(8, "little")) == checksum
    )


def durable_before(data: bytes | memoryview, position: int) -> int:
    """The ``durable_before`` field of the (already validated) record at ``position``."""
    return int(DURABLE_BEFORE.unpack_from(data, position + DURABLE_BEFORE_AT)[0])


def read_frame(data: bytes | memoryview, position: int) -> tuple[int, int]:
    """(magic, total_size) at ``position``; zeros when fewer than 12 bytes remain."""
    if len(data) - position < _FRAME.size:
        return 0, 0
    magic, total, _ = _FRAME.unpack_from(data, position)
    return magic, total


def _checked_header(
    data: bytes | memoryview, position: int, expected_physical_offset: int
) -> tuple[int, ...]:
    """The header fields of a valid record at ``position``, or :class:`RecordDefect`."""
    available = len(data) - position
    if available < HEADER_SIZE:
        raise RecordDefect(f"only {available} bytes left, a header needs {HEADER_SIZE}")
    fields: tuple[int, ...] = HEADER.unpack_from(data, position)
    magic, total, checksum = fields[0], fields[1], fields[2]
    if magic != MAGIC_INT:
        raise RecordDefect(f"bad magic 0x{magic:08X}")
    if total < HEADER_SIZE or total > MAX_RECORD_BYTES:
        raise RecordDefect(f"impossible record size {total}")
    if total > available:
        raise RecordDefect(f"record of {total} bytes runs past the end ({available} bytes left)")
    variable = fields[9] + fields[10] + fields[11] + fields[12] + fields[13] + fields[14]
    if HEADER_SIZE + variable != total:
        raise RecordDefect(f"field lengths add up to {HEADER_SIZE + variable}, not {total}")
    actual = crc32c.crc32c(memoryview(data)[position + 12 : position + total])
    if actual != checksum:
        raise RecordDefect(f"checksum 0x{actual:08X} does not match stored 0x{checksum:08X}")
    if fields[6] != expected_physical_offset:
        raise RecordDefect(f"record says it lives at log offset {fields[6]}, not {expected_physical_offset}")
    return fields


def check_record(data: bytes | memoryview, position: int, expected_physical_offset: int) -> int:
    """Validate the record at ``position``; return its size or raise :class:`RecordDefect`."""
    return int(_checked_header(data, position, expected_physical_offset)[1])


def decode_record(data: bytes | memoryview, position: int, expected_physical_offset: int) -> StoredRecord:
    """Validate and decode the record at ``position``; raise :class:`RecordDefect` if it is not valid."""
    # Recovery decodes every record after the checkpoint: one header unpack, plain slices.
    (
        _magic,
        total,
        _crc,
        flags,
        queue_id,
        queue_offset,
        physical_offset,
        born_ms,
        store_ms,
        topic_len,
        message_id_len,
        tag_len,
        keys_len,
        properties_len,
        body_len,
        _durable_before,
    ) = _checked_header(data, position, expected_physical_offset)
    raw = bytes(memoryview(data)[position + HEADER_SIZE : position + total])
    tag_at = topic_len + message_id_len
    keys_at = tag_at + tag_len
    properties_at = keys_at + keys_len
    body_at = properties_at + properties_len
    try:
        topic = raw[:topic_len].decode()
        message_id = raw[topic_len:tag_at].decode()
        tag_bytes = raw[tag_at:keys_at]
        keys_text = raw[keys_at:properties_at].decode()
        properties_text = raw[properties_at:body_at].decode()
    except UnicodeDecodeError as error:  # pragma: no cover - the CRC matched, so the writer wrote this
        raise RecordDefect(f"text field is not UTF-8: {error}") from error
    body = raw[body_at : body_at + body_len]
    properties: dict[str, str] = {}
    if properties_text:
        for pair in properties_text.split(_PAIR_SEPARATOR):
            name, _, value = pair.partition(_KEY_SEPARATOR)
            properties[name] = value
    return StoredRecord(
        topic=topic,
        queue_id=queue_id,
        queue_offset=queue_offset,
        physical_offset=physical_offset,
        size=total,
        flags=flags & ~_HAS_TAG,
        born_timestamp_ms=born_ms,
        store_timestamp_ms=store_ms,
        message_id=message_id,
        tag=tag_bytes.decode() if flags & _HAS_TAG else None,
        keys=tuple(keys_text.split(_KEY_SEPARATOR)) if keys_text else (),
        properties=properties,
        body=body,
    )
