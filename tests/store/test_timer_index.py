"""The timer index on its own: due buckets, late entries, commits, crashes, damage; on both disks."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from homing.store import OsDisk, SimulatedDisk
from homing.store.disk import Disk
from homing.store.timer_index import ENTRY_SIZE, TimerEntry, TimerIndex, TimerIndexDamagedError

T0 = 1_767_225_600_000  # a bucket start (whole second)
SIZE = 100


class IndexHarness:
    """Opens, kills and reopens a TimerIndex over one disk and directory."""

    def __init__(self, disk: Disk, directory: str) -> None:
        self.disk = disk
        self.directory = directory
        self.index: TimerIndex | None = None

    def open(self, *, reset_at: int | None = T0) -> TimerIndex:
        index = TimerIndex(self.disk, self.directory)
        if not index.open():
            assert reset_at is not None, "expected a readable progress"
            index.reset(source_offset=0, delivered_bucket_ms=reset_at)
        self.index = index
        return index

    def kill(self, *, power_loss: bool = False, torn: bool = False) -> None:
        """kill -9 (written bytes stay in the page cache), or a power loss on the simulated disk."""
        assert self.index is not None
        self.index.abandon()
        self.index = None
        if power_loss:
            assert isinstance(self.disk, SimulatedDisk)
            self.disk.crash(torn=torn)

    def bucket_path(self, bucket_ms: int) -> str:
        return os.path.join(self.directory, "buckets", f"{bucket_ms:020d}")


@pytest.fixture(params=["os", "simulated"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IndexHarness]:
    if request.param == "os":
        yield IndexHarness(OsDisk(), str(tmp_path / "timer"))
    else:
        yield IndexHarness(SimulatedDisk(seed=3), "/data/timer")


def drain(index: TimerIndex, now_ms: int, max_slots: int = 64) -> list[TimerEntry]:
    """Everything due at ``now_ms``, marked processed and committed slice by slice."""
    found: list[TimerEntry] = []
    while (due := index.read_due(now_ms, max_slots)) is not None:
        found.extend(due.entries)
        index.mark_processed(due.bucket_ms, due.end_slot, len(due.entries))
        index.commit()
    return found


def add(index: TimerIndex, source: int, deliver_at_ms: int, *, verify: bool = False) -> None:
    index.add(deliver_at_ms, source, physical_offset=source * SIZE, size=SIZE, verify=verify)


def test_a_bucket_is_handed_out_at_its_last_millisecond_never_before(harness: IndexHarness) -> None:
    index = harness.open()
    add(index, 0, T0 + 2_999)
    add(index, 1, T0 + 2_000)
    add(index, 2, T0 + 1_500)
    index.commit()
    assert drain(index, T0 + 1_998) == []
    assert [entry.source_offset for entry in drain(index, T0 + 1_999)] == [2]
    assert drain(index, T0 + 2_998) == []
    # File order inside a bucket: the order they were fed.
    assert [entry.source_offset for entry in drain(index, T0 + 2_999)] == [0, 1]
    assert index.pending_count == 0
    assert drain(index, T0 + 60_000) == []


def test_late_entries_join_the_cursors_bucket(harness: IndexHarness) -> None:
    index = harness.open()
    add(index, 0, T0 + 500)
    index.commit()
    assert [entry.source_offset for entry in drain(index, T0 + 999)] == [0]
    assert index.delivered_bucket_ms == T0 + 1_000
    # Due in the past, or in a bucket already processed: handed out with the cursor's bucket.
    add(index, 1, T0 - 10_000)
    add(index, 2, T0 + 700)
    index.commit()
    assert drain(index, T0 + 1_998) == []
    late = drain(index, T0 + 1_999)
    assert [(entry.source_offset, entry.deliver_at_ms) for entry in late] == [(1, T0 - 10_000), (2, T0 + 700)]


def test_nothing_uncommitted_is_handed_out_and_entries_survive_restart(harness: IndexHarness) -> None:
    index = harness.open()
    for source in range(10):
        add(index, source, T0 + 1_000 * (source % 3), verify=source == 4)
    index.commit()
    got = drain(index, T0 + 999)
    assert [entry.source_offset for entry in got] == [0, 3, 6, 9]
    index.close()
    index = harness.open(reset_at=None)
    assert index.indexed_until == 10
    assert index.pending_count == 6
    rest = drain(index, T0 + 5_000)
    assert [entry.source_offset for entry in rest] == [1, 4, 7, 2, 5, 8]
    assert [entry.verify for entry in rest] == [False, True, False, False, False, False]


def test_processed_bucket_files_are_removed_once_the_cursor_is_durable(harness: IndexHarness) -> None:
    index = harness.open()
    add(index, 0, T0)
    add(index, 1, T0 + 5_000)
    index.commit()
    assert harness.disk.exists(harness.bucket_path(T0))
    drain(index, T0 + 999)
    assert not harness.disk.exists(harness.bucket_path(T0 + 1_000))
    index.read_due(T0 + 2_000)  # crosses the empty buckets; the processed file goes with the commit
    index.commit()
    assert not harness.disk.exists(harness.bucket_path(T0))
    assert harness.disk.exists(harness.bucket_path(T0 + 5_000))
    assert index.next_bucket_ms() == T0 + 5_000


def test_entries_written_but_not_committed_are_not_duplicated_after_a_kill(harness: IndexHarness) -> None:
    index = harness.open()
    for source in range(3):
        add(index, source, T0 + 2_000)
    index.commit()
    for source in range(3, 6):
        add(index, source, T0 + 2_000)
    index.flush()  # in the files (the page cache), never committed
    harness.kill()
    index = harness.open(reset_at=None)
    assert index.indexed_until == 3
    # The feeder feeds again from indexed_until: the orphans of the last epoch must not count.
    for source in range(3, 6):
        add(index, source, T0 + 2_000)
    index.commit()
    assert [entry.source_offset for entry in drain(index, T0 + 3_000)] == list(range(6))


@pytest.mark.parametrize("torn", [False, True])
def test_power_loss_keeps_exactly_what_was_committed(tmp_path: Path, torn: bool) -> None:
    for seed in range(12):
        harness = IndexHarness(SimulatedDisk(seed=seed), "/data/timer")
        index = harness.open()
        for source in range(20):
            add(index, source, T0 + 1_000 * (source % 4))
        index.commit()
        processed = drain(index, T0 + 999)
        for source in range(20, 40):
            add(index, source, T0 + 1_000 * (source % 4))
        index.flush()
        harness.kill(power_loss=True, torn=torn)
        index = harness.open(reset_at=None)
        assert index.indexed_until == 20
        for source in range(20, 40):
            add(index, source, T0 + 1_000 * (source % 4))
        index.commit()
        rest = drain(index, T0 + 10_000)
        seen = [entry.source_offset for entry in processed + rest]
        assert sorted(seen) == list(range(40)), seed


def test_a_torn_tail_is_cut_before_appending(harness: IndexHarness) -> None:
    index = harness.open()
    add(index, 0, T0 + 1_000)
    index.commit()
    handle = harness.disk.open(harness.bucket_path(T0 + 1_000))
    handle.pwrite(b"\x01" * (ENTRY_SIZE + 7), ENTRY_SIZE)  # a garbage entry and a partial one
    handle.sync()
    handle.close()
    assert [entry.source_offset for entry in drain(index, T0 + 999)] == []
    add(index, 1, T0 + 1_000)
    index.commit()
    handle = harness.disk.open(harness.bucket_path(T0 + 1_000))
    assert handle.size() == 2 * ENTRY_SIZE
    handle.close()
    assert [entry.source_offset for entry in drain(index, T0 + 1_999)] == [0, 1]


def test_a_bad_entry_in_the_middle_is_damage(harness: IndexHarness) -> None:
    index = harness.open()
    for source in range(3):
        add(index, source, T0)
    index.commit()
    handle = harness.disk.open(harness.bucket_path(T0))
    handle.pwrite(b"\xff\xff", ENTRY_SIZE + 3)
    handle.sync()
    handle.close()
    with pytest.raises(TimerIndexDamagedError, match="fails its checksum"):
        drain(index, T0 + 999)


def test_a_file_shorter_than_the_cursor_is_damage(harness: IndexHarness) -> None:
    index = harness.open()
    for source in range(4):
        add(index, source, T0)
    index.commit()
    due = index.read_due(T0 + 999, 2)
    assert due is not None
    index.mark_processed(due.bucket_ms, due.end_slot, 2)
    index.commit()
    handle = harness.disk.open(harness.bucket_path(T0))
    handle.truncate(ENTRY_SIZE)
    handle.sync()
    handle.close()
    with pytest.raises(TimerIndexDamagedError, match="already processed"):
        index.read_due(T0 + 999)


def test_missing_or_damaged_progress_asks_for_a_reset_and_reset_forgets_everything(
    harness: IndexHarness,
) -> None:
    index = harness.open()
    add(index, 0, T0 + 3_000)
    index.close()
    progress = os.path.join(harness.directory, "progress")
    handle = harness.disk.open(progress)
    handle.pwrite(b"\x00", 20)
    handle.sync()
    handle.close()
    index = TimerIndex(harness.disk, harness.directory)
    assert index.open() is False
    index.reset(source_offset=0, delivered_bucket_ms=T0, extra=b"mine")
    assert index.extra == b"mine"
    assert harness.disk.list_dir(os.path.join(harness.directory, "buckets")) == []
    assert drain(index, T0 + 10_000) == []
    harness.disk.remove(progress)
    assert TimerIndex(harness.disk, harness.directory).open() is False


def test_a_wider_or_narrower_bucket_width_is_a_rebuild(harness: IndexHarness) -> None:
    harness.open().close()
    assert TimerIndex(harness.disk, harness.directory, bucket_width_ms=500).open() is False


def test_processed_and_finished_are_exact(harness: IndexHarness) -> None:
    index = harness.open()
    add(index, 0, T0 + 100)
    add(index, 1, T0 + 200)
    add(index, 2, T0 + 1_100)
    index.commit()
    due = index.read_due(T0 + 999, 1)
    assert due is not None and [entry.source_offset for entry in due.entries] == [0]
    index.mark_processed(due.bucket_ms, due.end_slot, 1)
    assert index.is_processed(0, T0 + 100)
    assert not index.is_finished(0, T0 + 100)  # the cursor's bucket: only a read can tell
    assert not index.is_processed(1, T0 + 200)
    assert not index.is_processed(2, T0 + 1_100)
    assert not index.is_processed(7, T0 + 100)  # not indexed yet
    drain(index, T0 + 999)
    assert index.is_finished(0, T0 + 100) and index.is_finished(1, T0 + 200)
    add(index, 3, T0 + 50)  # late: sits in the cursor's bucket, unprocessed
    assert not index.is_finished(3, T0 + 50)
    assert not index.is_processed(3, T0 + 50)
    index.commit()
    drain(index, T0 + 1_999)
    assert index.is_processed(3, T0 + 50) and index.is_processed(2, T0 + 1_100)


def test_a_long_gap_is_crossed_without_probing_every_second(harness: IndexHarness) -> None:
    index = harness.open()
    add(index, 0, T0 + 36 * 3_600_000)  # a day and a half ahead
    index.commit()
    assert drain(index, T0 + 36 * 3_600_000 - 1) == []
    assert index.delivered_bucket_ms == T0 + 36 * 3_600_000
    assert [entry.source_offset for entry in drain(index, T0 + 36 * 3_600_000 + 999)] == [0]
    # Nothing left: the cursor follows the clock up to the last due bucket.
    drain(index, T0 + 40 * 3_600_000)
    assert index.delivered_bucket_ms == T0 + 40 * 3_600_000


def test_cuts_are_dropped_once_their_buckets_are_passed(harness: IndexHarness) -> None:
    index = harness.open()
    add(index, 0, T0 + 1_000)
    index.commit()
    for _ in range(3):
        harness.kill()
        index = harness.open(reset_at=None)
    assert index._cuts  # the first epoch still has a pending entry
    assert [entry.source_offset for entry in drain(index, T0 + 1_999)] == [0]
    drain(index, T0 + 5_000)
    assert not index._cuts


@dataclass
class _Model:
    """Every fed source comes out once; again only if it came out uncommitted before a crash."""

    deliver_at: dict[int, int] = field(default_factory=dict)
    out: set[int] = field(default_factory=set)
    uncommitted: set[int] = field(default_factory=set)
    may_repeat: set[int] = field(default_factory=set)

    def handed_out(self, entry: TimerEntry, now_ms: int) -> None:
        assert entry.deliver_at_ms <= now_ms, "handed out early"
        source = entry.source_offset
        assert source not in self.out or source in self.may_repeat, f"source {source} handed out twice"
        self.out.add(source)
        self.may_repeat.discard(source)
        self.uncommitted.add(source)

    def committed(self) -> None:
        self.uncommitted.clear()

    def crashed(self) -> None:
        self.may_repeat |= self.uncommitted
        self.uncommitted.clear()


@pytest.mark.parametrize("seed", range(6))
def test_random_feeds_clock_moves_and_crashes_against_a_model(seed: int) -> None:
    rng = random.Random(seed)
    harness = IndexHarness(SimulatedDisk(seed=seed), "/data/timer")
    model = _Model()
    index = harness.open()
    now = T0
    next_source = 0
    for _step in range(400):
        action = rng.random()
        if action < 0.45:
            for _ in range(rng.randint(1, 20)):
                deliver_at = now + rng.randint(-3_000, 8_000)
                model.deliver_at[next_source] = deliver_at
                add(index, next_source, deliver_at)
                next_source += 1
            if rng.random() < 0.5:
                index.commit()
                model.committed()
        elif action < 0.75:
            now += rng.randint(0, 2_500)
            due = index.read_due(now, rng.randint(1, 16))
            if due is not None:
                for entry in due.entries:
                    model.handed_out(entry, now)
                index.mark_processed(due.bucket_ms, due.end_slot, len(due.entries))
                if rng.random() < 0.7:
                    index.commit()
                    model.committed()
        elif action < 0.85:
            index.flush()
        else:
            harness.kill(power_loss=True, torn=rng.random() < 0.5)
            model.crashed()
            index = harness.open(reset_at=None)
            # The feeder starts again where the committed index ends.
            for source in range(index.indexed_until, next_source):
                add(index, source, model.deliver_at[source])
    now += 20_000
    for entry in drain(index, now):
        model.handed_out(entry, now)
    assert model.out == set(range(next_source))
    assert index.pending_count == 0
