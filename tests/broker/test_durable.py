"""wait_durable: the bridge from the store's flusher thread to asyncio waiters."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from homing.broker.durable import wait_durable
from homing.broker.errors import BrokerError
from homing.store import MessageStore, StoreFencedError
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
