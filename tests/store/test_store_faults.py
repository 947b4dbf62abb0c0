"""Faults: a failed write or fsync fences the store; a full disk is a clean, retriable refusal."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import StoreHarness, message, read_all, wait_dispatched

from homing.store import (
    DiskFullError,
    MessageStore,
    OsDisk,
    PersistenceTimeoutError,
    SimulatedDisk,
    StoreConfig,
    StoreFencedError,
)
from homing.store.disk import DiskFile


def test_failed_fsync_fences_and_nothing_after_it_is_acknowledged(simulated: StoreHarness) -> None:
    store = simulated.open()
    acknowledged = [store.append_durable([message(index)]).records[0] for index in range(5)]
    disk = simulated.disk
    assert isinstance(disk, SimulatedDisk)
    disk.fail_next_sync(errno.EIO, path_substring="commitlog")
    result = store.append([message(5)])
    with pytest.raises(StoreFencedError, match="failed sync"):
        store.wait_durable(result.end_offset)
    assert store.fenced
    with pytest.raises(StoreFencedError, match="refuses writes"):
        store.append([message(6)])
    # The kernel may have dropped the failed pages and report the next sync as a success:
    # a store that retried now would acknowledge data that is gone. It must not try.
    with pytest.raises(StoreFencedError):
        store.wait_durable(result.end_offset, timeout_s=0.5)
    simulated.crash()
    store = simulated.open()
    survivors = read_all(store, "orders", 0)
    assert [item[1] for item in survivors][:5] == [f"id-{i}" for i in range(5)]
    assert len(survivors) == len(acknowledged)  # the unacknowledged record was lost with its pages


def test_failed_write_fences_the_store(simulated: StoreHarness) -> None:
    store = simulated.open()
    store.append_durable([message(0)])
    disk = simulated.disk
    assert isinstance(disk, SimulatedDisk)
    disk.fail_next_write(errno.EIO, path_substring="commitlog", after_bytes=40)
    with pytest.raises(StoreFencedError, match="write failed"):
        store.append([message(1)])
    with pytest.raises(StoreFencedError):
        store.append([message(2)])
    simulated.crash()
    store = simulated.open()
    assert [item[1] for item in read_all(store, "orders", 0)] == ["id-0"]


def test_enospc_on_a_record_write_is_a_clean_refusal(simulated: StoreHarness) -> None:
    store = simulated.open()
    store.append_durable([message(0)])
    disk = simulated.disk
    assert isinstance(disk, SimulatedDisk)
    before = store.write_offset
    disk.fail_next_write(errno.ENOSPC, path_substring="commitlog", after_bytes=30)
    with pytest.raises(DiskFullError):
        store.append([message(1)])
    assert store.write_offset == before and not store.fenced
    segment = store.log.segment_for(before)
    assert segment is not None
    assert not any(segment.file.pread(200, before - segment.base_offset)), "no partial record left"
    assert store.append_durable([message(2)]).records[0].queue_offset == 1


class _StallingFile:
    """Wraps a file so that its syncs can be held: a slow or stuck device."""

    def __init__(self, inner: DiskFile, disk: _StallingDisk) -> None:
        self._inner = inner
        self._disk = disk

    @property
    def path(self) -> str:
        return self._inner.path

    def pread(self, size: int, offset: int) -> bytes:
        return self._inner.pread(size, offset)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        self._inner.pwrite(data, offset)

    def sync(self) -> None:
        if self._disk.stall:
            self._disk.stalled.set()
            self._disk.release.wait()
        self._inner.sync()

    def size(self) -> int:
        return self._inner.size()

    def truncate(self, size: int) -> None:
        self._inner.truncate(size)

    def close(self) -> None:
        self._inner.close()


class _StallingDisk(SimulatedDisk):
    def __init__(self) -> None:
        super().__init__(seed=3)
        self.release = threading.Event()
        self.stalled = threading.Event()  # set once a sync is held
        self.stall = False

    def open(self, path: str, *, create: bool = False) -> DiskFile:  # type: ignore[override]
        handle = super().open(path, create=create)
        return _StallingFile(handle, self) if "commitlog" in path else handle


def test_a_flush_slower_than_the_timeout_is_never_reported_as_success() -> None:
    disk = _StallingDisk()
    store = MessageStore(
        StoreConfig(data_dir="/data", segment_size_bytes=64 * 1024, flush_timeout_s=0.2), disk
    )
    store.open()
    try:
        store.append_durable([message(0)])
        disk.stall = True
        result = store.append([message(1)])
        with pytest.raises(PersistenceTimeoutError):
            store.wait_durable(result.end_offset)
        disk.stall = False
        disk.release.set()
        store.wait_durable(result.end_offset)  # it does become durable later: a retry would dedupe
    finally:
        disk.release.set()
        store.close()


def test_after_a_failed_write_no_waiter_is_told_durable_even_if_a_later_sync_succeeds() -> None:
    # A is written and waits for its sync; B's write fails (EIO) while that sync runs; then the sync
    # succeeds and covers A's bytes. The store is fenced: A's outcome is unknown and reported as an
    # error, never as success (docs/DURABILITY.md). What was durable before the fence stays so.
    disk = _StallingDisk()
    store = MessageStore(StoreConfig(data_dir="/data", segment_size_bytes=64 * 1024), disk)
    store.open()
    try:
        before = store.append_durable([message(0)])
        disk.stall = True
        a = store.append([message(1)])
        callback_outcomes: list[BaseException | None] = []
        store.add_durability_callback(a.end_offset, callback_outcomes.append)
        waiter_outcomes: list[BaseException | None] = []

        def wait_for_a() -> None:
            try:
                store.wait_durable(a.end_offset, timeout_s=30)
                waiter_outcomes.append(None)
            except BaseException as error:  # recorded and asserted on below
                waiter_outcomes.append(error)

        waiter = threading.Thread(target=wait_for_a)
        waiter.start()
        assert disk.stalled.wait(10), "the sync covering A never started"
        disk.fail_next_write(errno.EIO, path_substring="commitlog")
        with pytest.raises(StoreFencedError, match="write failed"):
            store.append([message(2)])  # B
        assert store.fenced
        assert len(callback_outcomes) == 1 and isinstance(callback_outcomes[0], StoreFencedError)
        disk.stall = False
        disk.release.set()  # the sync covering A now succeeds
        waiter.join(10)
        assert len(waiter_outcomes) == 1 and isinstance(waiter_outcomes[0], StoreFencedError)
        assert store.flushed_offset < a.end_offset
        with pytest.raises(StoreFencedError, match="failed write"):
            store.wait_durable(a.end_offset, timeout_s=1)
        late: list[BaseException | None] = []
        store.add_durability_callback(a.end_offset, late.append)
        assert len(late) == 1 and isinstance(late[0], StoreFencedError)
        store.wait_durable(before.end_offset)  # durable before the fence: still acknowledged
    finally:
        disk.release.set()
        store.close()


def test_a_failed_write_fails_waiters_whose_sync_has_not_started() -> None:
    # The flusher is held in the sync of an earlier record; A is written after that sync took the
    # write offset, so nothing covers it yet when B's write fails: A's waiter fails at once.
    disk = _StallingDisk()
    store = MessageStore(StoreConfig(data_dir="/data", segment_size_bytes=64 * 1024), disk)
    store.open()
    try:
        disk.stall = True
        earlier = store.append([message(0)])
        assert disk.stalled.wait(10)
        a = store.append([message(1)])
        outcomes: list[BaseException | None] = []
        store.add_durability_callback(earlier.end_offset, outcomes.append)
        store.add_durability_callback(a.end_offset, outcomes.append)
        disk.fail_next_write(errno.EIO, path_substring="commitlog")
        with pytest.raises(StoreFencedError):
            store.append([message(2)])
        assert len(outcomes) == 2 and all(isinstance(item, StoreFencedError) for item in outcomes)
        disk.stall = False
        disk.release.set()
        with pytest.raises(StoreFencedError):
            store.wait_durable(a.end_offset, timeout_s=1)
        assert store.flushed_offset < earlier.end_offset  # the sync still running counted for nothing
    finally:
        disk.release.set()
        store.close()


def test_disk_guard_refuses_before_writing_and_resumes(harness: StoreHarness) -> None:
    store = harness.open()
    store.append_durable([message(0)])
    usage = store.guard.usage()
    assert usage.used_ratio > 0
    store.guard.max_used_ratio = usage.used_ratio / 2
    store.guard.refresh()
    before = store.write_offset
    with pytest.raises(DiskFullError, match="guard") as raised:
        store.append([message(1)])
    assert raised.value.retriable
    assert store.write_offset == before
    store.guard.max_used_ratio = 1.0
    store.guard.refresh()
    assert store.append_durable([message(2)]).records[0].queue_offset == 1


# -- a real full file system: a small tmpfs


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


@pytest.mark.root
def test_a_full_filesystem_refuses_cleanly_and_resumes(small_tmpfs: Path) -> None:
    config = StoreConfig(
        data_dir=str(small_tmpfs / "data"),
        segment_size_bytes=128 * 1024,
        max_disk_used_ratio=1.0,  # let the file system itself run out
        consume_queue_entries_per_file=4096,
    )
    store = MessageStore(config, OsDisk())
    store.open()
    ballast = small_tmpfs / "ballast"
    acknowledged: list[str] = []
    try:
        with pytest.raises(DiskFullError):
            for index in range(10_000):
                store.append_durable([message(index, size=1000)])
                acknowledged.append(f"id-{index}")
        assert not store.fenced
        assert acknowledged, "some writes fit before the disk filled"
        # Fill what is left with ballast, then free it: writing must resume.
        with open(ballast, "wb") as handle:
            try:
                handle.write(bytes(1024 * 1024))
            except OSError as error:
                assert error.errno == errno.ENOSPC
        os.remove(ballast)
        for segment in store.log.segments[:-1]:
            store.log.delete_segment(segment)  # make room as retention would
        for index in range(10_000, 10_020):
            store.append_durable([message(index, size=1000)])
            acknowledged.append(f"id-{index}")
        wait_dispatched(store)
    finally:
        store.close()
    store = MessageStore(config, OsDisk())
    store.open()
    try:
        _, end = store.queue_bounds("orders", 0)
        survivors = [r.message_id for r in store.read_queue("orders", 0, 0, 10_000).records]
        assert end == len(acknowledged)
        assert acknowledged[-20:] == survivors[-20:]
    finally:
        store.close()


@pytest.mark.root
def test_disk_guard_on_a_real_filesystem(small_tmpfs: Path) -> None:
    config = StoreConfig(
        data_dir=str(small_tmpfs / "data"), segment_size_bytes=64 * 1024, max_disk_used_ratio=0.75
    )
    store = MessageStore(config, OsDisk())
    store.open()
    try:
        store.append_durable([message(0)])
        ballast = small_tmpfs / "ballast"
        ballast.write_bytes(bytes(700 * 1024))
        store.guard.refresh()
        with pytest.raises(DiskFullError, match="guard"):
            store.append([message(1)])
        ballast.unlink()
        store.guard.refresh()
        assert store.append_durable([message(2)]).records[0].queue_offset == 1
    finally:
        store.close()
