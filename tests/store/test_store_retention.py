"""Retention: a segment goes only when it is old enough AND every consumer is past it."""

from __future__ import annotations

from conftest import StoreHarness, message, read_all, wait_dispatched

HOUR_S = 3600.0


def _fill(harness: StoreHarness, count: int) -> None:
    store = harness.store
    assert store is not None
    for index in range(count):
        store.append_durable([message(index, size=2000)])
    wait_dispatched(store)


def test_young_segments_are_kept_even_when_consumed(harness: StoreHarness) -> None:
    store = harness.open()
    _fill(harness, 100)
    assert len(store.log.segments) >= 4
    assert store.enforce_retention({("orders", 0): 100}) == []


def test_old_segments_go_only_once_every_consumer_is_past_them(harness: StoreHarness) -> None:
    store = harness.open()
    _fill(harness, 60)
    harness.clock.advance(73 * HOUR_S)
    store.append_durable([message(1000, size=2000)])  # a new segment's first record is "now"
    wait_dispatched(store)
    segments_before = len(store.log.segments)
    assert store.enforce_retention({("orders", 0): 0}) == [], "unconsumed: nothing may go"
    deleted = store.enforce_retention({("orders", 0): 40})
    assert deleted, "the segments wholly before offset 40 are old and consumed"
    assert len(store.log.segments) == segments_before - len(deleted)
    remaining = read_all(store, "orders", 0)
    assert remaining[0][0] <= 40, "nothing a consumer still needs was deleted"
    assert [item[0] for item in remaining] == list(range(remaining[0][0], 61))
    # Reopen: the trimmed consume queue and key index stay consistent with the log.
    store = harness.reopen()
    assert read_all(store, "orders", 0) == remaining
    assert store.find_by_message_id("id-0") == []
    assert [r.message_id for r in store.find_by_message_id("id-59")] == ["id-59"]


def test_queues_without_consumers_do_not_hold_segments(harness: StoreHarness) -> None:
    store = harness.open()
    _fill(harness, 60)
    harness.clock.advance(73 * HOUR_S)
    store.append_durable([message(1000, size=2000)])
    assert store.enforce_retention({}) != []


def test_override_under_pressure_deletes_unconsumed_segments_loudly(harness: StoreHarness) -> None:
    harness.configure(retention_override_under_pressure=True)
    store = harness.open()
    _fill(harness, 60)
    store.guard.max_used_ratio = store.guard.usage().used_ratio / 2  # under pressure
    store.guard.refresh()
    deleted = store.enforce_retention({("orders", 0): 0})
    assert deleted, "the explicit override allows deleting unconsumed data under disk pressure"
    harness.configure(retention_override_under_pressure=False)


def test_without_override_pressure_deletes_nothing_unconsumed(harness: StoreHarness) -> None:
    store = harness.open()
    _fill(harness, 60)
    store.guard.max_used_ratio = store.guard.usage().used_ratio / 2
    store.guard.refresh()
    assert store.enforce_retention({("orders", 0): 0}) == []
