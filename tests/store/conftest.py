"""Fixtures shared by the store tests: every store test runs on the real and the simulated disk."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from homing.clock import FakeClock
from homing.store import MessageStore, NewRecord, OsDisk, SimulatedDisk, StoreConfig
from homing.store.disk import Disk


class StoreHarness:
    """Opens, crashes and reopens stores over one disk and data directory."""

    def __init__(self, disk: Disk, data_dir: str, simulated: bool) -> None:
        self.disk = disk
        self.simulated = simulated
        self.clock = FakeClock()
        self.config = StoreConfig(
            data_dir=data_dir,
            segment_size_bytes=64 * 1024,
            consume_queue_entries_per_file=64,
            index_buffer_entries=50,
            checkpoint_interval_s=0.05,
        )
        self.store: MessageStore | None = None

    def configure(self, **changes: object) -> None:
        self.config = replace(self.config, **changes)  # type: ignore[arg-type]

    def open(self) -> MessageStore:
        assert self.store is None, "close or crash the previous store first"
        self.store = MessageStore(self.config, disk=self.disk, clock=self.clock)
        self.store.open()
        return self.store

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def crash(self) -> None:
        """Power loss on the simulated disk; a kill -9 (page cache survives) on the real one."""
        if self.store is not None:
            self.store.halt()
            self.store = None
        if isinstance(self.disk, SimulatedDisk):
            self.disk.crash()

    def reopen(self) -> MessageStore:
        self.close()
        return self.open()

    @property
    def data_dir(self) -> str:
        return self.config.data_dir


@pytest.fixture(params=["os", "simulated"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreHarness]:
    if request.param == "os":
        result = StoreHarness(OsDisk(), str(tmp_path / "data"), simulated=False)
    else:
        result = StoreHarness(SimulatedDisk(seed=7), "/data", simulated=True)
    yield result
    if result.store is not None:
        result.store.halt()


@pytest.fixture
def simulated(tmp_path: Path) -> Iterator[StoreHarness]:
    result = StoreHarness(SimulatedDisk(seed=11), "/data", simulated=True)
    yield result
    if result.store is not None:
        result.store.halt()


def message(index: int, topic: str = "orders", queue_id: int = 0, size: int = 100) -> NewRecord:
    return NewRecord(
        topic=topic,
        queue_id=queue_id,
        body=(f"body-{index}-".encode() * (size // 8 + 1))[:size],
        message_id=f"id-{index}",
        tag=f"tag{index % 3}",
        keys=(f"key-{index}", f"order-{index % 10}"),
        properties={"index": str(index)},
        born_timestamp_ms=1_700_000_000_000 + index,
    )


def read_all(store: MessageStore, topic: str, queue_id: int) -> list[tuple[int, str, bytes]]:
    """(queue offset, message id, body) of every record of a queue, in order."""
    found: list[tuple[int, str, bytes]] = []
    offset, end = store.queue_bounds(topic, queue_id)
    while offset < end:
        read = store.read_queue(topic, queue_id, offset, 100)
        found.extend((record.queue_offset, record.message_id, record.body) for record in read.records)
        assert read.next_queue_offset > offset, "a read must make progress"
        offset = read.next_queue_offset
    return found


def wait_dispatched(store: MessageStore) -> None:
    """Block until everything durable is readable (the dispatcher follows the flushed offset)."""
    store.wait_durable(store.write_offset)
    store.dispatch_now()
