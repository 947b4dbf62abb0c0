"""Appending, reading, finding and restarting: the store's everyday behaviour, on both disks."""

from __future__ import annotations

import threading

import pytest
from conftest import StoreHarness, message, read_all, wait_dispatched

from homing.store import InvalidRecordError, NewRecord, StoreClosedError


def test_append_then_read_back_byte_for_byte(harness: StoreHarness) -> None:
    store = harness.open()
    sent = [message(index, queue_id=index % 2) for index in range(40)]
    result = store.append(sent[:10])
    store.wait_durable(result.end_offset)
    for record in sent[10:]:
        store.append_durable([record])
    wait_dispatched(store)
    for queue_id in (0, 1):
        got = read_all(store, "orders", queue_id)
        expected = [record for record in sent if record.queue_id == queue_id]
        assert [item[0] for item in got] == list(range(len(expected)))
        assert [(item[1], item[2]) for item in got] == [(r.message_id, r.body) for r in expected]
    first = store.read_queue("orders", 1, 0, 1).records[0]
    assert first.tag == "tag1"
    assert first.keys == ("key-1", "order-1")
    assert first.properties == {"index": "1"}
    assert first.born_timestamp_ms == 1_700_000_000_001
    assert first.store_timestamp_ms == harness.clock.now_ms()


def test_nothing_is_readable_before_it_is_durable(simulated: StoreHarness) -> None:
    store = simulated.open()
    store.append_durable([message(0)])
    wait_dispatched(store)
    # Stop the flusher from syncing: the next append is written but never flushed.
    store._group_commit.abandon()  # the flusher is gone: nothing more becomes durable
    store.append([message(1)])
    store.dispatch_now()
    assert [item[1] for item in read_all(store, "orders", 0)] == ["id-0"]


def test_records_roll_over_many_segments_and_survive_restart(harness: StoreHarness) -> None:
    store = harness.open()
    sent = [message(index, size=3000) for index in range(120)]  # ~370 KB over 64 KB segments
    for start in range(0, len(sent), 7):
        store.append_durable(sent[start : start + 7])
    assert len(store.log.segments) >= 6
    wait_dispatched(store)
    before = read_all(store, "orders", 0)
    store = harness.reopen()
    assert read_all(store, "orders", 0) == before
    assert [item[1] for item in before] == [record.message_id for record in sent]
    store.append_durable([message(999)])
    wait_dispatched(store)
    assert read_all(store, "orders", 0)[-1][:2] == (120, "id-999")


def test_queue_offsets_continue_after_restart(harness: StoreHarness) -> None:
    store = harness.open()
    store.append_durable([message(index, topic="a", queue_id=3) for index in range(5)])
    store = harness.reopen()
    result = store.append_durable([message(5, topic="a", queue_id=3)])
    assert result.records[0].queue_offset == 5


def test_find_by_message_id_and_key(harness: StoreHarness) -> None:
    store = harness.open()
    for index in range(200):  # several index runs (buffer of 50 entries)
        store.append_durable([message(index)])
    wait_dispatched(store)
    assert [record.message_id for record in store.find_by_message_id("id-123")] == ["id-123"]
    now = harness.clock.now_ms()
    found = store.find_by_key("order-4", now - 1000, now + 1000, max_results=100)
    assert sorted(record.message_id for record in found) == sorted(f"id-{i}" for i in range(4, 200, 10))
    assert store.find_by_key("order-4", now + 1000, now + 2000) == []
    assert store.find_by_message_id("id-none") == []
    store = harness.reopen()
    assert [record.message_id for record in store.find_by_message_id("id-7")] == ["id-7"]
    assert len(store.find_by_key("key-199", 0, 2**62)) == 1


def test_concurrent_writers_share_fsyncs(harness: StoreHarness) -> None:
    store = harness.open()
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            for index in range(50):
                store.append_durable([message(worker * 1000 + index, queue_id=worker)])
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    wait_dispatched(store)
    for worker in range(8):
        ids = [item[1] for item in read_all(store, "orders", worker)]
        assert ids == [f"id-{worker * 1000 + index}" for index in range(50)]
    assert store.sync_count <= 400  # 400 durable appends; group commit may only merge syncs


def test_invalid_batch_writes_nothing(harness: StoreHarness) -> None:
    store = harness.open()
    store.append_durable([message(0)])
    before = store.write_offset
    bad = NewRecord(topic="orders", queue_id=0, body=b"x", keys=("bad\x1fkey",))
    with pytest.raises(InvalidRecordError, match="reserved"):
        store.append([message(1), bad])
    assert store.write_offset == before
    too_big = NewRecord(topic="orders", queue_id=0, body=bytes(70 * 1024))
    with pytest.raises(InvalidRecordError, match="does not fit in a segment"):
        store.append([too_big])
    assert store.write_offset == before
    assert store.append_durable([message(2)]).records[0].queue_offset == 1


def test_empty_tag_and_no_tag_stay_distinct(harness: StoreHarness) -> None:
    store = harness.open()
    store.append_durable([NewRecord("t", 0, b"a", tag=""), NewRecord("t", 0, b"b", tag=None)])
    wait_dispatched(store)
    records = store.read_queue("t", 0, 0, 10).records
    assert [record.tag for record in records] == ["", None]


def test_closed_store_refuses_writes(harness: StoreHarness) -> None:
    store = harness.open()
    harness.close()
    with pytest.raises(StoreClosedError):
        store.append([message(0)])


def test_async_mode_acknowledges_before_the_flush_and_flushes_soon(harness: StoreHarness) -> None:
    harness.configure(flush_mode="async", async_flush_interval_s=0.01)
    store = harness.open()
    result = store.append([message(index) for index in range(10)])
    store.wait_durable(result.end_offset, timeout_s=5)
    assert store.flushed_offset >= result.end_offset
    wait_dispatched(store)
    assert len(read_all(store, "orders", 0)) == 10
