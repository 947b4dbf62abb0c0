"""Recovery: torn tails are cut and reported, corruption is refused, derived files are rebuilt."""

from __future__ import annotations

import os
import random

import pytest
from conftest import StoreHarness, message, read_all, wait_dispatched

from homing.store import CorruptRecordError, MessageStore
from homing.store.disk import Disk
from homing.store.record import durable_before


def _damage(disk: Disk, path: str, offset: int, data: bytes) -> None:
    handle = disk.open(path)
    handle.pwrite(data, offset)
    handle.sync()
    handle.close()


def _segment_path(store: MessageStore, physical_offset: int) -> tuple[str, int]:
    segment = store.log.segment_for(physical_offset)
    assert segment is not None
    return segment.path, physical_offset - segment.base_offset


def _write_five_then_crash(harness: StoreHarness) -> tuple[list[int], int, str, int]:
    """Five durable records, then a crash; returns offsets, last size, file and file offset."""
    store = harness.open()
    offsets: list[int] = []
    size = 0
    for index in range(5):
        appended = store.append_durable([message(index)]).records[0]
        offsets.append(appended.physical_offset)
        size = appended.size
    wait_dispatched(store)
    path, file_offset = _segment_path(store, offsets[-1])
    harness.crash()
    return offsets, size, path, file_offset


@pytest.mark.parametrize("stride", [1])
def test_torn_tail_at_every_byte_of_the_last_record(
    harness: StoreHarness, stride: int, tmp_path: object
) -> None:
    # A crash keeps a prefix of the last record (a torn write): recovery cuts it, reports it, and
    # keeps every record before it. Checked for every possible prefix length.
    harness.configure(checkpoint_interval_s=3600)  # the checkpoint stays before the tail
    base_dir = harness.data_dir
    _, record_size, _, _ = _write_five_then_crash(harness)
    for kept in range(0, record_size, stride):
        harness.configure(data_dir=f"{base_dir}-{kept}")
        offsets, size, path, file_offset = _write_five_then_crash(harness)
        assert size == record_size
        _damage(harness.disk, path, file_offset + kept, bytes(size - kept))
        store = harness.open()
        report = store.recovery
        assert report is not None
        if kept == 0:
            assert report.torn_tail is None
        else:
            assert report.torn_tail is not None
            assert report.torn_tail.start_offset == offsets[-1]
            assert report.torn_tail.file == path
            assert 0 < report.torn_tail.bytes_cut <= kept
        assert report.corrupt_ranges == []
        assert [item[1] for item in read_all(store, "orders", 0)] == [f"id-{i}" for i in range(4)]
        handle = harness.disk.open(path)
        assert not any(handle.pread(size, file_offset)), "the torn bytes must be zeroed"
        handle.close()
        appended = store.append_durable([message(100)]).records[0]
        assert (appended.physical_offset, appended.queue_offset) == (offsets[-1], 4)
        harness.close()


def test_garbage_after_the_last_record_is_cut(harness: StoreHarness) -> None:
    harness.configure(checkpoint_interval_s=3600)
    offsets, size, path, file_offset = _write_five_then_crash(harness)
    garbage = random.Random(5).randbytes(300).replace(b"\0", b"\1")
    _damage(harness.disk, path, file_offset + size, garbage)
    store = harness.open()
    assert store.recovery is not None and store.recovery.torn_tail is not None
    assert store.recovery.torn_tail.start_offset == offsets[-1] + size
    assert store.recovery.torn_tail.bytes_cut == len(garbage)
    assert len(read_all(store, "orders", 0)) == 5


def _write_twenty(harness: StoreHarness) -> tuple[MessageStore, list[int]]:
    store = harness.open()
    offsets = [store.append_durable([message(index)]).records[0].physical_offset for index in range(20)]
    wait_dispatched(store)
    return store, offsets


@pytest.mark.parametrize("where", ["body", "length"])
def test_bit_flip_mid_log_is_reported_and_never_served(harness: StoreHarness, where: str) -> None:
    harness.configure(checkpoint_interval_s=3600)
    store, offsets = _write_twenty(harness)
    path, file_offset = _segment_path(store, offsets[10])
    harness.crash()
    damage_at = file_offset + (150 if where == "body" else 5)
    handle = harness.disk.open(path)
    original = handle.pread(1, damage_at)
    handle.close()
    _damage(harness.disk, path, damage_at, bytes([original[0] ^ 0x10]))
    harness.disk.remove(os.path.join(harness.data_dir, "checkpoint"))  # force a scan of that range
    store = harness.open()
    report = store.recovery
    assert report is not None and report.torn_tail is None
    assert len(report.corrupt_ranges) == 1
    damaged = report.corrupt_ranges[0]
    assert (damaged.file, damaged.file_offset) == (path, file_offset)
    assert (damaged.start_offset, damaged.end_offset) == (offsets[10], offsets[11])
    assert [r.message_id for r in store.read_queue("orders", 0, 0, 10).records] == [
        f"id-{i}" for i in range(10)
    ]
    with pytest.raises(CorruptRecordError) as raised:
        store.read_queue("orders", 0, 10, 5)
    assert "queue offset 10" in str(raised.value) and path in str(raised.value)
    following = store.read_queue("orders", 0, 11, 20).records
    assert [record.message_id for record in following] == [f"id-{i}" for i in range(11, 20)]
    # New writes get fresh queue offsets: offset 10 is never handed out again.
    assert store.append_durable([message(50)]).records[0].queue_offset == 20


def test_bit_flip_found_on_read_names_file_and_offset(harness: StoreHarness) -> None:
    store, offsets = _write_twenty(harness)
    path, file_offset = _segment_path(store, offsets[3])
    harness.close()
    _damage(harness.disk, path, file_offset + 120, b"\xff")
    store = harness.open()  # clean shutdown: nothing rescanned, the damage is found on read
    with pytest.raises(CorruptRecordError) as raised:
        store.read_queue("orders", 0, 0, 10)
    error = raised.value
    assert (error.file, error.file_offset, error.physical_offset) == (path, file_offset, offsets[3])
    assert [r.message_id for r in store.read_queue("orders", 0, 0, 3).records] == ["id-0", "id-1", "id-2"]


def _remove_tree(disk: Disk, path: str) -> None:
    for name in disk.list_dir(path):
        child = os.path.join(path, name)
        if disk.list_dir(child) or not _is_file(disk, child):
            _remove_tree(disk, child)
        else:
            disk.remove(child)


def _is_file(disk: Disk, path: str) -> bool:
    try:
        disk.open(path).close()
        return True
    except (IsADirectoryError, OSError):
        return False


def _files_under(disk: Disk, path: str) -> list[str]:
    found: list[str] = []
    for name in disk.list_dir(path):
        child = os.path.join(path, name)
        if _is_file(disk, child):
            found.append(child)
        else:
            found.extend(_files_under(disk, child))
    return found


@pytest.mark.parametrize("damage", ["delete", "zero", "truncate"])
def test_damaged_consume_queues_are_rebuilt(harness: StoreHarness, damage: str) -> None:
    store = harness.open()
    for index in range(150):  # three consume-queue files per queue (64 entries each)
        store.append_durable([message(index, queue_id=index % 2)])
    wait_dispatched(store)
    expected = {queue_id: read_all(store, "orders", queue_id) for queue_id in (0, 1)}
    harness.crash()
    files = _files_under(harness.disk, os.path.join(harness.data_dir, "consumequeue"))
    assert len(files) == 4
    for path in files:
        handle = harness.disk.open(path)
        size = handle.size()
        if damage == "zero":
            handle.pwrite(bytes(size), 0)
        elif damage == "truncate":
            handle.truncate(size // 2)
        handle.sync()
        handle.close()
        if damage == "delete":
            harness.disk.remove(path)
    store = harness.open()
    assert {queue_id: read_all(store, "orders", queue_id) for queue_id in (0, 1)} == expected
    assert store.append_durable([message(999, queue_id=1)]).records[0].queue_offset == 75


@pytest.mark.parametrize("damage", ["delete", "flip"])
def test_damaged_key_index_is_rebuilt(harness: StoreHarness, damage: str) -> None:
    store = harness.open()
    for index in range(120):
        store.append_durable([message(index)])
    wait_dispatched(store)
    harness.close()
    runs = _files_under(harness.disk, os.path.join(harness.data_dir, "index"))
    assert len(runs) >= 3
    for path in runs:
        if damage == "delete":
            harness.disk.remove(path)
        else:
            _damage(harness.disk, path, 60, b"\x5a\x5a")
    store = harness.open()
    for index in (0, 61, 119):
        assert [record.message_id for record in store.find_by_message_id(f"id-{index}")] == [f"id-{index}"]
    assert len(store.find_by_key("order-3", 0, 2**62, max_results=100)) == 12


@pytest.mark.parametrize("damage", ["delete", "flip", "truncate"])
def test_damaged_checkpoint_means_a_full_rebuild(harness: StoreHarness, damage: str) -> None:
    store = harness.open()
    for index in range(60):
        store.append_durable([message(index, queue_id=index % 3)])
    wait_dispatched(store)
    expected = [read_all(store, "orders", queue_id) for queue_id in range(3)]
    harness.crash()
    path = os.path.join(harness.data_dir, "checkpoint")
    if damage == "delete":
        harness.disk.remove(path)
    elif damage == "flip":
        _damage(harness.disk, path, 20, b"\x00\x01")
    else:
        handle = harness.disk.open(path)
        handle.truncate(10)
        handle.sync()
        handle.close()
    store = harness.open()
    assert store.recovery is not None and not store.recovery.checkpoint_found
    assert store.recovery.scanned_from == 0 and store.recovery.records_scanned == 60
    assert [read_all(store, "orders", queue_id) for queue_id in range(3)] == expected
    assert store.append_durable([message(1000, queue_id=2)]).records[0].queue_offset == 20


def test_a_lost_write_before_a_surviving_later_segment_is_a_torn_tail(simulated: StoreHarness) -> None:
    # Power loss may keep the writes to a later segment while the earlier segment's last write is
    # lost (two files, written back independently). None of it was acknowledged: recovery must cut
    # it all, not serve the later records with a hole before them and not call it corruption.
    store = simulated.open()
    store.append_durable([message(0, size=3000)])
    store._group_commit.abandon()  # nothing more becomes durable
    first = store.append([message(1, size=62_000)]).records[0]  # fills most of segment 0
    later = store.append([message(2, size=20_000)]).records[0]  # rolls over into segment 1
    assert store.log.segment_for(first.physical_offset) is not store.log.segment_for(later.physical_offset)
    later_bytes = store.log.read(later.physical_offset, later.size)
    later_path, later_file_offset = _segment_path(store, later.physical_offset)
    simulated.crash()
    # "Segment 1's write survived, segment 0's did not": put record 2's bytes back, durably.
    _damage(simulated.disk, later_path, later_file_offset, later_bytes)
    store = simulated.open()
    report = store.recovery
    assert report is not None and report.corrupt_ranges == []
    assert report.torn_tail is not None and report.torn_tail.start_offset == first.physical_offset
    assert [item[1] for item in read_all(store, "orders", 0)] == ["id-0"]
    assert store.append_durable([message(3)]).records[0].queue_offset == 1
    simulated.crash()
    store = simulated.open()  # the stale record 2 must not come back either
    assert [item[1] for item in read_all(store, "orders", 0)] == ["id-0", "id-3"]


def test_record_fields_say_what_was_durable_when_they_were_written(harness: StoreHarness) -> None:
    store = harness.open()
    first = store.append_durable([message(0)]).records[0]
    second = store.append_durable([message(1)]).records[0]
    data = store.log.read(second.physical_offset, second.size)
    assert durable_before(data, 0) >= first.physical_offset + first.size


def test_segment_rollovers_are_not_mistaken_for_damage(harness: StoreHarness) -> None:
    store = harness.open()
    for index in range(40):
        store.append_durable([message(index, size=5000)])  # ~12 records per 64 KiB segment
    wait_dispatched(store)
    assert len(store.log.segments) >= 4
    harness.crash()
    harness.disk.remove(os.path.join(harness.data_dir, "checkpoint"))  # scan every segment boundary
    store = harness.open()
    assert store.recovery is not None
    assert store.recovery.torn_tail is None and store.recovery.corrupt_ranges == []
    assert [item[1] for item in read_all(store, "orders", 0)] == [f"id-{i}" for i in range(40)]


def test_reads_in_a_segment_cut_short_name_the_file_and_offset(
    harness: StoreHarness, caplog: pytest.LogCaptureFixture
) -> None:
    # Media damage: a segment that is not the last loses its end (the file is shorter than the
    # next segment's start says). Records past the cut are never served; reading one fails with
    # the segment's path and the record's offset in it, whether the cut goes through the record or
    # the record lies wholly past the end of the file.
    store = harness.open()
    appended = [store.append_durable([message(index, size=5000)]).records[0] for index in range(30)]
    wait_dispatched(store)
    segment = store.log.segments[1]
    inside = [item for item in appended if segment.base_offset <= item.physical_offset < segment.end_offset]
    assert len(inside) >= 4
    cut_through, past_the_cut = inside[1], inside[3]
    harness.close()
    handle = harness.disk.open(segment.path)
    handle.truncate(cut_through.physical_offset - segment.base_offset + 100)
    handle.sync()
    handle.close()
    store = harness.open()
    assert segment.path in caplog.text and "cut short" in caplog.text
    for victim in (cut_through, past_the_cut):
        file_offset = victim.physical_offset - segment.base_offset
        with pytest.raises(CorruptRecordError) as raised:
            store.read_at(victim.physical_offset, victim.size)
        assert (raised.value.file, raised.value.file_offset) == (segment.path, file_offset)
        assert f"{segment.path} at byte {file_offset}" in str(raised.value)
        with pytest.raises(CorruptRecordError) as raised:
            store.read_queue("orders", 0, victim.queue_offset, 1)
        assert (raised.value.file, raised.value.file_offset) == (segment.path, file_offset)
    before = inside[0]
    assert store.read_at(before.physical_offset, before.size).message_id == f"id-{before.queue_offset}"
