"""The batched encoders of the append and dispatch paths make exactly the documented bytes.

Each fast path is checked against the simple reference it replaces: :func:`encode_record` for
records, :func:`pack_entry` for consume-queue entries, BLAKE2b as docs/STORAGE_FORMAT.md states it
for key hashes, and a plain sort-and-pack for key-index runs.
"""

from __future__ import annotations

import hashlib
import random
import struct

import crc32c
import pytest
from conftest import StoreHarness, message

from homing.store import InvalidRecordError, NewRecord, SimulatedDisk
from homing.store.consume_queue import ENTRY_BODY, join_entries, pack_entry
from homing.store.key_index import BUSINESS_KEY_KIND, MESSAGE_ID_KIND, KeyIndex, index_entry, key_hash
from homing.store.record import EncodedBatch, encode_record, encoded_size

RECORDS = [
    NewRecord("orders", 0, b"plain", message_id="m-0", born_timestamp_ms=5),
    NewRecord("orders", 1, b"", message_id="", tag="", flags=3),
    NewRecord("orders", 0, b"\x00" * 300, message_id="m-2", tag="red", keys=("k1", "k2")),
    NewRecord("payments", 0, b"x", message_id="m-3", properties={"a": "1", "b": ""}),
    NewRecord("orders", 1, b"y" * 70, message_id="m-4\u00e9", tag="t\u00e9", keys=("\u00fc",), flags=7),
    NewRecord("orders", 0, b"z", message_id="m-5"),
]


def _reference(records: list[NewRecord], start_offsets: dict[tuple[str, int], int], position: int) -> bytes:
    next_offsets = dict(start_offsets)
    out = []
    for record in records:
        key = (record.topic, record.queue_id)
        data = encode_record(record, next_offsets.get(key, 0), position, 1_234, 999)
        next_offsets[key] = next_offsets.get(key, 0) + 1
        out.append(data)
        position += len(data)
    return b"".join(out)


def test_a_batch_encodes_to_the_bytes_of_encode_record() -> None:
    queue_next = {("orders", 0): 7, ("payments", 0): 2}
    batch = EncodedBatch(1_234, 999, 4096)
    chunks: list[bytes] = []
    assert batch.encode(RECORDS, 0, 4096, 1 << 40, queue_next, chunks) == len(RECORDS)
    assert b"".join(chunks) == _reference(RECORDS, queue_next, 4096)
    placed = list(batch.placed())
    assert [item[2] for item in placed] == [7, 0, 8, 2, 1, 9]
    assert [item[:2] for item in placed] == [(record.topic, record.queue_id) for record in RECORDS]
    assert [item[4] for item in placed] == [encoded_size(record) for record in RECORDS]
    assert [item[5] for item in placed] == [record.message_id.encode() for record in RECORDS]
    assert batch.next_queue_offsets == {("orders", 0): 10, ("orders", 1): 2, ("payments", 0): 3}
    assert batch.tagged == [(1, "", ()), (2, "red", ("k1", "k2")), (4, "t\u00e9", ("\u00fc",))]
    assert batch.end_offset == 4096 + sum(item[4] for item in placed)


def test_a_batch_stops_before_the_first_record_past_the_limit_and_resumes() -> None:
    sizes = [encoded_size(record) for record in RECORDS]
    limit = 100 + sizes[0] + sizes[1] + sizes[2] + 10  # records 0-2 fit, record 3 does not
    batch = EncodedBatch(1_234, 999, 100)
    first: list[bytes] = []
    assert batch.encode(RECORDS, 0, 100, limit, {}, first) == 3
    assert batch.end_offset == 100 + sum(sizes[:3])
    assert batch.tagged == [(1, "", ()), (2, "red", ("k1", "k2"))]
    second: list[bytes] = []
    assert batch.encode(RECORDS, 3, 50_000, 1 << 40, {}, second) == len(RECORDS)
    assert b"".join(first) == _reference(RECORDS[:3], {}, 100)
    # Queue offsets go on from the first call, positions from the new segment.
    expected_second = [
        encode_record(RECORDS[3], 0, 50_000, 1_234, 999),
        encode_record(RECORDS[4], 1, 50_000 + sizes[3], 1_234, 999),
        encode_record(RECORDS[5], 2, 50_000 + sizes[3] + sizes[4], 1_234, 999),
    ]
    assert b"".join(second) == b"".join(expected_second)
    assert [item[3] for item in batch.placed()][3:] == [50_000, 50_000 + sizes[3], 50_000 + sum(sizes[3:5])]


@pytest.mark.parametrize(
    "record",
    [
        NewRecord("t" * 70_000, 0, b""),
        NewRecord("t", 0, b"", message_id="m" * 70_000),
        NewRecord("t", 0, b"", tag="g" * 70_000),
        NewRecord("t", 0, b"", keys=("a\x1fb",)),
        NewRecord("t", 0, b"", properties={"a": "\x1e"}),
    ],
)
def test_a_batch_refuses_what_encode_record_refuses(record: NewRecord) -> None:
    with pytest.raises(InvalidRecordError):
        encode_record(record, 0, 0, 0)
    with pytest.raises(InvalidRecordError):
        EncodedBatch(0, 0, 0).encode([RECORDS[0], record], 0, 0, 1 << 40, {}, [])


def test_joined_entries_are_packed_entries() -> None:
    rng = random.Random(3)
    parts: list[bytes | int] = []
    expected = b""
    for _ in range(50):
        fields = (rng.getrandbits(63), rng.getrandbits(31), rng.getrandbits(64), rng.getrandbits(62))
        body = ENTRY_BODY.pack(*fields)
        parts += (body, crc32c.crc32c(body))  # as the dispatcher makes them
        expected += pack_entry(*fields)
    assert join_entries(parts) == expected


def test_key_hash_is_the_documented_blake2b() -> None:
    for kind in (MESSAGE_ID_KIND, BUSINESS_KEY_KIND):
        for key in ("", "id-1", "0123456789abcdef0123456789abcdef", "cl\u00e9 \u4e2d"):
            digest = hashlib.blake2b(kind + key.encode(), digest_size=8).digest()
            assert key_hash(kind, key) == int.from_bytes(digest, "little")
    assert key_hash(MESSAGE_ID_KIND, "x") != key_hash(BUSINESS_KEY_KIND, "x")


def test_index_runs_hold_the_documented_entries_sorted_by_hash_then_offset() -> None:
    disk = SimulatedDisk(seed=1)
    index = KeyIndex(disk, "/index", buffer_entries=10_000)
    index.open(0)
    rng = random.Random(5)
    triples = [(rng.getrandbits(64), rng.randrange(1, 2**40), offset * 100) for offset in range(3000)]
    triples += [(triples[7][0], 17, 500_000), (triples[7][0], 3, 400_000)]  # one hash, three offsets
    index.add_entries([index_entry(*triple) for triple in triples])
    index.advance(600_000)
    index.flush()
    (name,) = disk.list_dir("/index")
    handle = disk.open(f"/index/{name}")
    data = handle.pread(handle.size(), 0)
    ordered = sorted(triples, key=lambda triple: (triple[0], triple[2]))
    flat = [value for triple in ordered for value in triple]
    assert data[48:] == struct.pack(f"<{len(flat)}Q", *flat)
    assert struct.unpack_from("<QQQQQ", data, 8) == (
        len(triples),
        0,
        600_000,
        min(triple[1] for triple in triples),
        max(triple[1] for triple in triples),
    )
    assert sorted(index.lookup(triples[7][0], 0, 2**62)) == [700, 400_000, 500_000]


def test_append_results_give_each_record_its_place(harness: StoreHarness) -> None:
    store = harness.open()
    store.append_durable([message(0)])
    result = store.append([message(1), message(2, queue_id=1), message(3)])
    appended = result.records
    assert [item.queue_offset for item in appended] == [1, 0, 2]
    assert appended[0].physical_offset < appended[1].physical_offset < appended[2].physical_offset
    assert appended[-1].physical_offset + appended[-1].size == result.end_offset
    assert len({item.store_timestamp_ms for item in appended}) == 1
    for item, index in zip(appended, (1, 2, 3), strict=True):
        assert store.log.read(item.physical_offset, item.size)[:4] == b"HMR1"
        assert item.size == encoded_size(message(index))
    assert store.append([]).records == []
