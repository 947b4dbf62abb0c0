"""wait_durable: the bridge from the store's flusher thread to asyncio waiters; append_durably: the
appends of one loop pass written and awaited together."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from homing.broker.durable import DurableAppend, append_durably, wait_durable
from homing.broker.errors import BrokerError
from homing.store import MessageStore, NewRecord, SimulatedDisk, StoreConfig, StoreFencedError
from homing.store.group_commit import DurabilityCallback


@dataclass
class _Config:
    flush_timeout_s: float = 5.0


@dataclass
class _FakeStore:
    """Collects durability callbacks; the test releases them from another thread, like the flusher."""

    config: _Config = field(default_factory=_Config)
    callbacks: list[tuple[int, DurabilityCallback]] = field(default_factory=list)
    fenced: bool = False  # wait_durable confirms nothing once the store is fenced

    def add_durability_callback(self, end_offset: int, callback: DurabilityCallback) -> None:
        self.callbacks.append((end_offset, callback))

    def release(self, error: BaseException | None = None) -> None:
        pending, self.callbacks = self.callbacks, []
        thread = threading.Thread(target=lambda: [callback(error) for _, callback in pending])
        thread.start()
        thread.join()


def _store(fake: _FakeStore) -> MessageStore:
    return cast(MessageStore, fake)


def _run(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    def run() -> None:
        asyncio.run(test())

    run.__name__ = test.__name__
    return run


async def _until_registered(fake: _FakeStore, count: int) -> None:
    while len(fake.callbacks) < count:
        await asyncio.sleep(0)


@_run
async def test_waiters_of_one_flush_are_all_released_with_one_wake_up() -> None:
    fake = _FakeStore()
    loop = asyncio.get_running_loop()
    waiters = [asyncio.create_task(wait_durable(_store(fake), offset)) for offset in range(1, 6)]
    await _until_registered(fake, 5)
    wakes = 0
    original = loop.call_soon_threadsafe

    def counting(*args: object, **kwargs: object) -> asyncio.Handle:
        nonlocal wakes
        wakes += 1
        return original(*args, **kwargs)  # type: ignore[arg-type]

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:
        fake.release()
        await asyncio.wait_for(asyncio.gather(*waiters), 5)
    finally:
        del loop.call_soon_threadsafe
    assert wakes == 1


@_run
async def test_a_settle_on_the_loop_thread_itself_works() -> None:
    fake = _FakeStore()
    task = asyncio.create_task(wait_durable(_store(fake), 1))
    await _until_registered(fake, 1)
    fake.callbacks.pop()[1](None)  # already durable: the store calls back at once, on this thread
    await asyncio.wait_for(task, 5)


@_run
async def test_not_durable_in_time_is_a_persistence_timeout_and_a_late_flush_is_harmless() -> None:
    fake = _FakeStore(config=_Config(flush_timeout_s=0.05))
    with pytest.raises(BrokerError) as caught:
        await wait_durable(_store(fake), 1)
    assert caught.value.code == "MASTER_PERSISTENCE_TIMEOUT"
    assert isinstance(caught.value.__cause__, TimeoutError)
    fake.release()
    await asyncio.sleep(0.01)


@_run
async def test_a_fenced_store_is_an_internal_error() -> None:
    fake = _FakeStore()
    task = asyncio.create_task(wait_durable(_store(fake), 1))
    await _until_registered(fake, 1)
    fake.release(StoreFencedError("disk gone"))
    with pytest.raises(BrokerError) as caught:
        await asyncio.wait_for(task, 5)
    assert caught.value.code == "INTERNAL_SERVER_ERROR"


@_run
async def test_a_cancelled_waiter_then_flushed_breaks_nothing() -> None:
    fake = _FakeStore()
    cancelled = asyncio.create_task(wait_durable(_store(fake), 1))
    other = asyncio.create_task(wait_durable(_store(fake), 2))
    await _until_registered(fake, 2)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    fake.release()
    await asyncio.wait_for(other, 5)


# ---------------------------------------------------------------------------------- append_durably


def _new_record(body: bytes = b"x", topic: str = "orders") -> NewRecord:
    return NewRecord(topic=topic, queue_id=0, body=body, message_id="01" + body.hex()[:30])


def _real_store(directory: str, **config: Any) -> MessageStore:
    config.setdefault("segment_size_bytes", 256 * 1024)
    store = MessageStore(StoreConfig(data_dir=directory, flush_mode="sync", **config), SimulatedDisk(seed=7))
    store.open()
    return store


class _CountingStore:
    """A real store, counting its appends and durability callbacks."""

    def __init__(self, store: MessageStore) -> None:
        self.store = store
        self.appends: list[int] = []
        self.callbacks = 0
        original_append, original_callback = store.append, store.add_durability_callback

        def append(records: Sequence[NewRecord]) -> Any:
            self.appends.append(len(records))
            return original_append(records)

        def add_durability_callback(end_offset: int, callback: DurabilityCallback) -> None:
            self.callbacks += 1
            original_callback(end_offset, callback)

        store.append = append  # type: ignore[method-assign]
        store.add_durability_callback = add_durability_callback  # type: ignore[method-assign]


@_run
async def test_appends_of_one_loop_pass_share_one_store_append_and_one_durability_wait() -> None:
    store = _real_store("/data")
    counting = _CountingStore(store)
    try:
        results = await asyncio.gather(
            *(append_durably(store, [_new_record(bytes([n]) * n) for n in range(1, k + 2)]) for k in range(5))
        )
        assert counting.appends == [15]  # 1 + 2 + 3 + 4 + 5 records, in one append
        assert counting.callbacks == 1
        # Each call gets its own records, in order, at consecutive queue offsets in call order.
        offsets = [[record.queue_offset for record in result.records] for result in results]
        assert offsets == [[0], [1, 2], [3, 4, 5], [6, 7, 8, 9], [10, 11, 12, 13, 14]]
        assert all(store.flushed_offset >= result.end_offset for result in results)
        # A later pass is a new append.
        await append_durably(store, [_new_record(b"later")])
        assert counting.appends == [15, 1]
    finally:
        store.close()


@_run
async def test_an_invalid_call_fails_alone_and_the_others_of_its_pass_are_stored() -> None:
    store = _real_store("/data")
    counting = _CountingStore(store)
    try:
        too_big = [_new_record(b"y" * (512 * 1024))]  # does not fit in a segment
        outcomes = await asyncio.gather(
            append_durably(store, [_new_record(b"a")]),
            append_durably(store, too_big),
            append_durably(store, [_new_record(b"b"), _new_record(b"c")]),
            return_exceptions=True,
        )
        assert isinstance(outcomes[1], BrokerError) and outcomes[1].code == "BAD_REQUEST"
        good = [outcome for outcome in outcomes if isinstance(outcome, DurableAppend)]
        assert [[record.queue_offset for record in result.records] for result in good] == [[0], [1, 2]]
        assert counting.appends == [4, 1, 1, 2]  # together, refused; then each call alone
        store.dispatch_now()
        assert [record.body for record in store.read_queue("orders", 0, 0, 10).records] == [b"a", b"b", b"c"]
    finally:
        store.close()


@_run
async def test_a_pass_larger_than_a_store_batch_is_split_between_calls() -> None:
    store = _real_store("/data", max_batch_records=4)
    counting = _CountingStore(store)
    try:
        await asyncio.gather(*(append_durably(store, [_new_record(bytes([n]) * 3)] * 3) for n in range(3)))
        assert counting.appends == [3, 3, 3]  # never more than 4 records in one append, calls kept whole
    finally:
        store.close()


@_run
async def test_a_closed_store_refuses_every_call_of_the_pass() -> None:
    store = _real_store("/data")
    store.close()
    outcomes = await asyncio.gather(
        append_durably(store, [_new_record(b"a")]),
        append_durably(store, [_new_record(b"b")]),
        return_exceptions=True,
    )
    assert [outcome.code for outcome in outcomes if isinstance(outcome, BrokerError)] == [
        "INTERNAL_SERVER_ERROR",
        "INTERNAL_SERVER_ERROR",
    ]


@_run
async def test_a_pass_not_durable_in_time_is_a_persistence_timeout_for_each_call() -> None:
    store = _real_store("/data", flush_timeout_s=0.05)
    store.add_durability_callback = lambda end_offset, callback: None  # type: ignore[method-assign]
    try:
        outcomes = await asyncio.gather(
            append_durably(store, [_new_record(b"a")]),
            append_durably(store, [_new_record(b"b")]),
            return_exceptions=True,
        )
        assert [getattr(outcome, "code", None) for outcome in outcomes] == ["MASTER_PERSISTENCE_TIMEOUT"] * 2
    finally:
        store.close()
