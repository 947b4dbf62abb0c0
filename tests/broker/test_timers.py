"""Delayed messages end to end over a real store: never early, never lost, recallable, restartable.

Time is a FakeClock moved by hand and delivery is driven by calling ``deliver_due``: no sleeps.
The publisher is a small stand-in that stores what it is given in the real topic, durably, as the
broker's send path would; what counts as delivered is what the store holds in the real topic.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import functools
import os
import tracemalloc
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ParamSpec

import pytest

from homing.broker.durable import append_durably
from homing.broker.errors import BrokerError
from homing.broker.message_codec import to_record
from homing.broker.model import Message, MessageType, SendReceipt
from homing.broker.system_topics import TIMER_EVENTS_TOPIC, TIMER_TOPIC
from homing.broker.timers import (
    DEFAULT_DELAY_LEVELS_MS,
    MAX_PUBLISH_MESSAGES,
    RecallHandle,
    TimerService,
    TimerSettings,
    decode_recall_handle,
    delivery_time_for_level,
    encode_recall_handle,
    levels_ms_from_seconds,
    timer_record,
)
from homing.clock import FakeClock
from homing.config import parse_durations
from homing.store import MessageStore, OsDisk, SimulatedDisk, StoreConfig
from homing.store.disk import Disk
from homing.store.timer_index import ENTRY_SIZE

P = ParamSpec("P")
TOPIC = "orders"
SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS


def async_test(function: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test body on a fresh event loop (pytest-asyncio is not a dependency)."""

    @functools.wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(function(*args, **kwargs))

    return run


class ProcessDied(BaseException):
    """Stands for the process being killed at that point (nothing after it runs)."""


class RecordingPublisher:
    """Stores messages in their real topic (queue 0) durably and notes when each was published."""

    def __init__(self, clock: FakeClock, *, keep: bool = True) -> None:
        self.clock = clock
        self.store: MessageStore | None = None
        self.keep = keep
        self.published: list[tuple[int, Message]] = []  # (clock at publish, message)
        self.count = 0
        self.die_after_next_publish = False
        self.fail_next: BrokerError | None = None
        self.on_publish: Callable[[], None] | None = None

    async def publish(self, messages: Sequence[Message]) -> list[SendReceipt]:
        assert self.store is not None
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        result = await append_durably(self.store, [to_record(message, queue_id=0) for message in messages])
        now = self.clock.now_ms()
        self.count += len(messages)
        if self.keep:
            self.published.extend((now, message) for message in messages)
        if self.on_publish is not None:
            self.on_publish()
        if self.die_after_next_publish:
            self.die_after_next_publish = False
            raise ProcessDied
        return [
            SendReceipt(message.message_id, 0, appended.queue_offset)
            for message, appended in zip(messages, result.records, strict=True)
        ]


class TimerHarness:
    """A store and a timer service over one disk, opened, killed and reopened like a process."""

    def __init__(self, disk: Disk, data_dir: str, *, settings: TimerSettings | None = None) -> None:
        self.disk = disk
        self.clock = FakeClock()
        self.config = StoreConfig(
            data_dir=data_dir, segment_size_bytes=1024 * 1024, checkpoint_interval_s=0.05
        )
        self.settings = settings
        self.publisher = RecordingPublisher(self.clock)
        self.store: MessageStore | None = None
        self.service: TimerService | None = None
        self._ids = 0

    def open(self) -> TimerService:
        assert self.store is None
        self.store = MessageStore(self.config, disk=self.disk, clock=self.clock)
        self.store.open()
        self.publisher.store = self.store
        self.service = TimerService(self.store, self.publisher, self.clock, self.settings)
        self.service.open()
        return self.service

    def close(self) -> None:
        if self.service is not None:
            self.service.close()
            self.service = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def kill(self, *, power_loss: bool = False) -> None:
        """kill -9 (the page cache survives) or, on the simulated disk, a power loss."""
        if self.service is not None:
            self.service.halt()
            self.service = None
        if self.store is not None:
            self.store.halt()
            self.store = None
        if power_loss:
            assert isinstance(self.disk, SimulatedDisk)
            self.disk.crash()

    def restart(self, how: str) -> TimerService:
        if how == "clean":
            self.close()
        else:
            self.kill(power_loss=how == "power loss")
        return self.open()

    def message(self, deliver_at_ms: int, topic: str = TOPIC, body: bytes | None = None) -> Message:
        self._ids += 1
        return Message(
            topic=topic,
            body=body if body is not None else f"body {self._ids}".encode(),
            message_id=f"01{self._ids:030X}",
            message_type=MessageType.DELAY,
            tag="t",
            keys=(f"key-{self._ids}",),
            properties={"n": str(self._ids)},
            delivery_timestamp_ms=deliver_at_ms,
            born_timestamp_ms=self.clock.now_ms(),
        )

    async def schedule(self, *deliver_at_ms: int) -> list[tuple[Message, str]]:
        assert self.service is not None
        messages = [self.message(at) for at in deliver_at_ms]
        scheduled = await self.service.schedule_many(messages)
        return [(message, handle) for message, (_, handle) in zip(messages, scheduled, strict=True)]

    async def deliver_until(self, end_ms: int, step_ms: int = 100) -> None:
        """Move the clock to ``end_ms`` in steps, delivering at each (as the loop would)."""
        assert self.service is not None
        while self.clock.now_ms() < end_ms:
            self.clock.advance(min(step_ms, end_ms - self.clock.now_ms()) / 1000)
            await self.service.deliver_due()

    def stored(self, topic: str = TOPIC) -> list[str]:
        """Message ids the store holds in ``topic``, queue 0, in order: what was really delivered."""
        assert self.store is not None
        self.store.dispatch_now()
        ids: list[str] = []
        offset, end = self.store.queue_bounds(topic, 0)
        while offset < end:
            read = self.store.read_queue(topic, 0, offset, 256)
            ids.extend(record.message_id for record in read.records)
            offset = read.next_queue_offset
        return ids

    def assert_never_early(self) -> None:
        for published_at, message in self.publisher.published:
            assert message.delivery_timestamp_ms is not None
            assert published_at >= message.delivery_timestamp_ms, f"{message.message_id} delivered early"

    def timer_dir(self) -> str:
        return os.path.join(self.config.data_dir, "timer")


@pytest.fixture(params=["os", "simulated"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TimerHarness]:
    if request.param == "os":
        result = TimerHarness(OsDisk(), str(tmp_path / "data"))
    else:
        result = TimerHarness(SimulatedDisk(seed=5), "/data")
    yield result
    result.kill()


@pytest.fixture
def simulated() -> Iterator[TimerHarness]:
    result = TimerHarness(SimulatedDisk(seed=9), "/data")
    yield result
    result.kill()


# --------------------------------------------------------------------------- levels and validation


def test_delay_levels_are_rocketmqs_and_configurable() -> None:
    now = 1_000_000
    assert [delivery_time_for_level(level, now) - now for level in (1, 2, 3, 4, 5)] == [
        1_000,
        5_000,
        10_000,
        30_000,
        60_000,
    ]
    assert delivery_time_for_level(17, now) - now == 3_600_000
    assert delivery_time_for_level(18, now) - now == 7_200_000
    assert delivery_time_for_level(99, now) - now == 7_200_000, "above the last level: the last level"
    assert delivery_time_for_level(2, now, (250, 750)) == now + 750
    with pytest.raises(BrokerError) as refused:
        delivery_time_for_level(0, now)
    assert refused.value.code == "ILLEGAL_DELIVERY_TIME"
    default_setting = "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h"
    assert levels_ms_from_seconds(parse_durations(default_setting)) == DEFAULT_DELAY_LEVELS_MS
    with pytest.raises(ValueError):
        TimerSettings(delay_levels_ms=(1000, 0))
    with pytest.raises(ValueError):
        TimerSettings(bucket_width_ms=5000)


@async_test
async def test_delivery_times_too_far_ahead_or_missing_are_refused(harness: TimerHarness) -> None:
    service = harness.open()
    now = harness.clock.now_ms()
    limit = service.settings.max_delay_ms
    for message, code in [
        (harness.message(now + limit + 1), "ILLEGAL_DELIVERY_TIME"),
        (replace(harness.message(now), delivery_timestamp_ms=None), "ILLEGAL_DELIVERY_TIME"),
        (harness.message(now + 1000, topic=TIMER_TOPIC), "ILLEGAL_TOPIC"),
    ]:
        with pytest.raises(BrokerError) as refused:
            await service.schedule(message)
        assert refused.value.code == code
    receipt, _ = await service.schedule(harness.message(now + limit))
    assert receipt.queue_offset == 0 and receipt.queue_id == -1
    assert harness.stored(TIMER_TOPIC) == [receipt.message_id]


# --------------------------------------------------------------------------- delivery


@async_test
async def test_never_early_never_more_than_a_second_late_and_in_time_order(harness: TimerHarness) -> None:
    service = harness.open()
    t0 = harness.clock.now_ms()
    offsets_ms = [4_321, 1_000, 2_500, 999, 7_000, 2_501, 3_000, 60, 6_999, 1_001, 5_500, 4_000]
    scheduled = await harness.schedule(*(t0 + offset for offset in offsets_ms))
    assert service.pending_count() == 0, "indexed on the next step"
    await service.deliver_due()
    assert service.pending_count() == len(offsets_ms)
    assert service.next_due_ms() == t0 - t0 % 1000 + 999
    await harness.deliver_until(t0 + 9_000, step_ms=37)
    harness.assert_never_early()
    for published_at, message in harness.publisher.published:
        assert message.delivery_timestamp_ms is not None
        assert published_at - message.delivery_timestamp_ms <= 1_000 + 37, "resolution is one second"
    times = [message.delivery_timestamp_ms or 0 for _, message in harness.publisher.published]
    assert times == sorted(times)
    assert sorted(harness.stored()) == sorted(message.message_id for message, _ in scheduled)
    # What comes out is the message that went in, in its real topic.
    first = harness.publisher.published[0][1]
    original = next(message for message, _ in scheduled if message.message_id == first.message_id)
    assert (first.topic, first.body, first.tag, first.keys, first.properties) == (
        original.topic,
        original.body,
        original.tag,
        original.keys,
        original.properties,
    )
    assert first.message_type == MessageType.DELAY
    assert service.pending_count() == 0 and service.next_due_ms() is None


@async_test
async def test_a_delivery_time_in_the_past_goes_out_within_a_second(harness: TimerHarness) -> None:
    service = harness.open()
    now = harness.clock.now_ms()
    [(message, _)] = await harness.schedule(now - 5 * MINUTE_MS)
    await harness.deliver_until(now + 1_000)
    assert harness.stored() == [message.message_id]
    assert service.pending_count() == 0


@async_test
async def test_a_publish_failure_delivers_nothing_and_is_retried(harness: TimerHarness) -> None:
    service = harness.open()
    now = harness.clock.now_ms()
    scheduled = await harness.schedule(now + 500, now + 600)
    harness.clock.advance(1.0)
    harness.publisher.fail_next = BrokerError("MASTER_PERSISTENCE_TIMEOUT", "slow disk")
    with pytest.raises(BrokerError):
        await service.deliver_due()
    assert harness.stored() == [] and service.pending_count() == 2
    assert await service.deliver_due() == 2
    assert harness.stored() == [message.message_id for message, _ in scheduled]


@pytest.mark.parametrize("how", ["clean", "kill -9", "power loss"])
@async_test
async def test_pending_timers_survive_a_restart_and_go_out_exactly_once(
    how: str, simulated: TimerHarness
) -> None:
    harness = simulated
    harness.open()
    t0 = harness.clock.now_ms()
    scheduled = await harness.schedule(*(t0 + 200 * index for index in range(60)))
    await harness.deliver_until(t0 + 4_000)
    before = harness.stored()
    assert 0 < len(before) < 60
    service = harness.restart(how)
    assert service.pending_count() == 60 - len(before)
    await harness.deliver_until(t0 + 15_000)
    counts = Counter(harness.stored())
    assert set(counts) == {message.message_id for message, _ in scheduled}, "nothing lost"
    assert max(counts.values()) == 1, "nothing delivered twice"
    harness.assert_never_early()


@async_test
async def test_restart_on_the_real_disk_keeps_every_timer(tmp_path: Path) -> None:
    for how in ("clean", "kill -9"):
        harness = TimerHarness(OsDisk(), str(tmp_path / how))
        harness.open()
        t0 = harness.clock.now_ms()
        scheduled = await harness.schedule(*(t0 + 300 * index for index in range(30)))
        await harness.deliver_until(t0 + 3_000)
        harness.restart(how)
        await harness.deliver_until(t0 + 12_000)
        assert Counter(harness.stored()) == Counter(message.message_id for message, _ in scheduled)
        harness.close()


@pytest.mark.parametrize("power_loss", [False, True])
@async_test
async def test_a_crash_between_publish_and_progress_does_not_duplicate(
    power_loss: bool, simulated: TimerHarness
) -> None:
    harness = simulated
    harness.open()
    t0 = harness.clock.now_ms()
    scheduled = await harness.schedule(*(t0 + 300 + index for index in range(40)))
    harness.clock.advance(1.0)
    harness.publisher.die_after_next_publish = True
    service = harness.service
    assert service is not None
    with pytest.raises(ProcessDied):
        await service.deliver_due()
    assert len(harness.stored()) == 40, "published durably, progress never written"
    harness.kill(power_loss=power_loss)
    harness.open()
    await harness.deliver_until(t0 + 3_000)
    assert Counter(harness.stored()) == Counter(message.message_id for message, _ in scheduled)


@async_test
async def test_more_due_than_one_batch_all_go_out_in_batches(simulated: TimerHarness) -> None:
    harness = simulated
    service = harness.open()
    t0 = harness.clock.now_ms()
    count = 2 * MAX_PUBLISH_MESSAGES + 17
    for start in range(0, count, 200):
        await harness.schedule(*(t0 + 100 + index % 800 for index in range(start, min(count, start + 200))))
    harness.clock.advance(1.0)
    assert await service.deliver_due() == count
    assert len(set(harness.stored())) == count
    # A restart right after: the re-check of the first batch finds nothing to publish again.
    harness.restart("power loss")
    await harness.deliver_until(t0 + 5_000)
    assert len(harness.stored()) == count


# --------------------------------------------------------------------------- clock jumps


@async_test
async def test_a_clock_step_back_of_ten_minutes_fires_nothing_early(harness: TimerHarness) -> None:
    service = harness.open()
    t0 = harness.clock.now_ms()
    early, later = await harness.schedule(t0 + 2_000, t0 + 6_000)
    await harness.deliver_until(t0 + 3_000)
    assert harness.stored() == [early[0].message_id]
    harness.clock.jump_wall_ms(-10 * MINUTE_MS)
    # Scheduled while the clock is back, due before the delivered cursor: still not early.
    [(while_back, _)] = await harness.schedule(harness.clock.now_ms() + 2_000)
    await harness.deliver_until(t0 + 3_998, step_ms=1_000)
    assert harness.stored() == [early[0].message_id], "nothing goes out before the clock catches up"
    await harness.deliver_until(t0 + 5_999)
    # The one scheduled while the clock was back waited for the delivered cursor: late, never early.
    assert harness.stored() == [early[0].message_id, while_back.message_id]
    await harness.deliver_until(t0 + 7_000)
    assert harness.stored() == [early[0].message_id, while_back.message_id, later[0].message_id]
    harness.assert_never_early()
    assert service.pending_count() == 0


@async_test
async def test_a_clock_step_forward_of_ten_minutes_delivers_everything_due_in_order(
    harness: TimerHarness,
) -> None:
    service = harness.open()
    t0 = harness.clock.now_ms()
    scheduled = await harness.schedule(
        *(t0 + offset for offset in (9 * MINUTE_MS, 30_000, 11 * MINUTE_MS, 5_000))
    )
    await service.deliver_due()
    harness.clock.jump_wall_ms(10 * MINUTE_MS)
    assert await service.deliver_due() == 3
    by_time = sorted(scheduled, key=lambda item: item[0].delivery_timestamp_ms or 0)
    assert harness.stored() == [message.message_id for message, _ in by_time[:3]]
    await harness.deliver_until(t0 + 11 * MINUTE_MS + 1_000, step_ms=1_000)
    assert harness.stored() == [message.message_id for message, _ in by_time]
    harness.assert_never_early()


# --------------------------------------------------------------------------- recall


@async_test
async def test_a_recalled_message_is_never_delivered_even_across_restarts(simulated: TimerHarness) -> None:
    harness = simulated
    service = harness.open()
    t0 = harness.clock.now_ms()
    (kept, _), (recalled, handle), (recalled_later, handle_later) = await harness.schedule(
        t0 + 3_000, t0 + 3_000, t0 + 60_000
    )
    assert await service.recall(TOPIC, handle) == recalled.message_id
    assert await service.recall(TOPIC, handle) == recalled.message_id, "recalling twice is the same answer"
    assert harness.stored(TIMER_EVENTS_TOPIC) == [recalled.message_id]
    service = harness.restart("power loss")
    assert service.recalled_count == 1
    await harness.deliver_until(t0 + 10_000, step_ms=500)
    assert await service.recall(TOPIC, handle_later) == recalled_later.message_id
    service = harness.restart("kill -9")
    await harness.deliver_until(t0 + 70_000, step_ms=1_000)
    assert harness.stored() == [kept.message_id]
    # Once the timer floor passes them, recalls are forgotten (the set stays bounded).
    assert service.recalled_count == 0
    service = harness.restart("clean")
    assert service.recalled_count == 0


@async_test
async def test_recall_after_delivery_or_once_due_is_refused(harness: TimerHarness) -> None:
    service = harness.open()
    t0 = harness.clock.now_ms()
    (delivered, delivered_handle), (_, due_handle) = await harness.schedule(t0 + 1_000, t0 + 2_500)
    await harness.deliver_until(t0 + 2_000)
    assert harness.stored() == [delivered.message_id]
    with pytest.raises(BrokerError) as refused:
        await service.recall(TOPIC, delivered_handle)
    assert refused.value.code == "MESSAGE_NOT_FOUND"
    harness.clock.advance(0.6)  # due now, not yet delivered (its bucket ends at +2.999 s)
    with pytest.raises(BrokerError) as refused:
        await service.recall(TOPIC, due_handle)
    assert refused.value.code == "MESSAGE_NOT_FOUND"
    # Even with the clock stepped back before its time, a delivered message cannot be recalled.
    harness.clock.jump_wall_ms(-10 * MINUTE_MS)
    with pytest.raises(BrokerError) as refused:
        await service.recall(TOPIC, delivered_handle)
    assert refused.value.code == "MESSAGE_NOT_FOUND"


@async_test
async def test_forged_or_garbage_recall_handles_are_refused(harness: TimerHarness) -> None:
    service = harness.open()
    t0 = harness.clock.now_ms()
    [(message, handle)] = await harness.schedule(t0 + MINUTE_MS)
    real = decode_recall_handle(handle)
    assert real == RecallHandle(TOPIC, message.message_id, t0 + MINUTE_MS, 0)
    forged = [
        "",
        "not base64 !",
        "x" * 5000,
        handle + "A",
        handle[:-3],
        base64.urlsafe_b64encode(b"v1 orders broker 1767225600000 0123").decode(),
        handle + "=",  # not the canonical spelling
        encode_recall_handle(replace(real, deliver_at_ms=real.deliver_at_ms + 1)),
        encode_recall_handle(replace(real, message_id="01" + "F" * 30)),
        encode_recall_handle(replace(real, topic="payments")),
    ]
    for text in forged:
        with pytest.raises(BrokerError) as refused:
            await service.recall(TOPIC, text)
        assert refused.value.code == "BAD_REQUEST", text
    for topic, text in [
        ("payments", handle),  # a handle only works with its own topic
        ("payments", encode_recall_handle(replace(real, topic="payments"))),  # names the wrong message
    ]:
        with pytest.raises(BrokerError) as refused:
            await service.recall(topic, text)
        assert refused.value.code == "BAD_REQUEST", text
    with pytest.raises(BrokerError) as refused:
        await service.recall(TOPIC, encode_recall_handle(replace(real, timer_offset=7)))
    assert refused.value.code == "MESSAGE_NOT_FOUND"
    await harness.deliver_until(t0 + MINUTE_MS + 1_000, step_ms=1_000)
    assert harness.stored() == [message.message_id], "failed recalls change nothing"


# --------------------------------------------------------------------------- derived data


@pytest.mark.parametrize("damage", ["progress deleted", "progress corrupted", "timer directory deleted"])
@async_test
async def test_lost_progress_or_index_is_rebuilt_without_loss_or_duplicates(
    damage: str, harness: TimerHarness
) -> None:
    harness.open()
    t0 = harness.clock.now_ms()
    scheduled = await harness.schedule(*(t0 + 250 * index for index in range(40)))
    await harness.deliver_until(t0 + 4_000)
    assert 0 < len(harness.stored()) < 40
    harness.close()
    timer_dir = harness.timer_dir()
    progress = os.path.join(timer_dir, "progress")
    if damage == "progress deleted":
        harness.disk.remove(progress)
    elif damage == "progress corrupted":
        handle = harness.disk.open(progress)
        handle.pwrite(b"\xde\xad", 30)
        handle.sync()
        handle.close()
    else:
        buckets = os.path.join(timer_dir, "buckets")
        for name in harness.disk.list_dir(buckets):
            harness.disk.remove(os.path.join(buckets, name))
        harness.disk.remove(progress)
    service = harness.open()
    await harness.deliver_until(t0 + 12_000)
    assert Counter(harness.stored()) == Counter(message.message_id for message, _ in scheduled)
    harness.assert_never_early()
    assert service.pending_count() == 0


@async_test
async def test_a_damaged_bucket_file_is_rebuilt_from_the_log(harness: TimerHarness) -> None:
    service = harness.open()
    t0 = harness.clock.now_ms()
    scheduled = await harness.schedule(*(t0 + 5_000 + index for index in range(10)))
    await harness.deliver_until(t0 + 1_000)
    bucket = (t0 + 5_000) - (t0 + 5_000) % 1000
    path = os.path.join(harness.timer_dir(), "buckets", f"{bucket:020d}")
    handle = harness.disk.open(path)
    handle.pwrite(b"\x00" * 8, ENTRY_SIZE * 2)  # the third entry of ten
    handle.sync()
    handle.close()
    await harness.deliver_until(t0 + 7_000)
    assert Counter(harness.stored()) == Counter(message.message_id for message, _ in scheduled)
    assert service.pending_count() == 0


@pytest.mark.parametrize("fault", ["write", "sync"])
@async_test
async def test_index_write_and_sync_failures_lose_and_duplicate_nothing(
    fault: str, simulated: TimerHarness
) -> None:
    harness = simulated
    service = harness.open()
    t0 = harness.clock.now_ms()
    scheduled = await harness.schedule(*(t0 + 2_000 + index for index in range(5)))
    await service.deliver_due()
    scheduled += await harness.schedule(
        *(t0 + 2_000 + index for index in range(5, 10)), t0 + 3_000, t0 + 3_001
    )
    disk = harness.disk
    assert isinstance(disk, SimulatedDisk)
    if fault == "write":
        disk.fail_next_write(errno.EIO, "timer/buckets", after_bytes=2 * ENTRY_SIZE + 5)
    else:
        disk.fail_next_sync(errno.EIO, "timer/buckets")
    with pytest.raises(OSError):
        await service.deliver_due()
    # The next step goes on (after a failed fsync: from a rebuilt index, as the pages are suspect) ...
    await service.deliver_due()
    # ... and what it made durable really is: the power goes before anything was due.
    service = harness.restart("power loss")
    await harness.deliver_until(t0 + 5_000)
    assert Counter(harness.stored()) == Counter(message.message_id for message, _ in scheduled)
    assert service.pending_count() == 0


@pytest.mark.parametrize("with_floors", [True, False])
@async_test
async def test_retention_keeps_timers_until_delivered_when_given_the_floors(
    with_floors: bool, simulated: TimerHarness
) -> None:
    harness = simulated
    harness.config = replace(harness.config, segment_size_bytes=64 * 1024, retention_s=60.0)
    service = harness.open()
    t0 = harness.clock.now_ms()
    body = b"x" * 1000
    [long] = await service.schedule_many([replace(harness.message(t0 + 2 * 3_600_000), body=body)])
    short = [replace(harness.message(t0 + 1_000), body=body) for _ in range(200)]
    await service.schedule_many(short)
    await harness.deliver_until(t0 + 2_000)
    assert len(harness.stored()) == 200
    floors = service.retention_floors()
    assert floors[(TIMER_TOPIC, 0)] == 0, "the long timer holds the floor"
    harness.clock.advance(3600)
    await service.deliver_due()
    await service.schedule(harness.message(harness.clock.now_ms() + 1_000, body=body))  # a young segment
    store = harness.store
    assert store is not None
    progress = service.retention_floors() if with_floors else {}
    deleted = store.enforce_retention(progress)
    await harness.deliver_until(t0 + 2 * 3_600_000 + 3_000, step_ms=60_000)
    if with_floors:
        assert long[0].message_id in harness.stored()
        assert service.undeliverable_count == 0
    else:
        assert deleted, "without the floors the timer's segment goes"
        assert long[0].message_id not in harness.stored()
        assert service.undeliverable_count == 1


# --------------------------------------------------------------------------- loop and scale


@async_test
async def test_run_delivers_until_stopped(simulated: TimerHarness) -> None:
    harness = simulated
    service = harness.open()
    stop = asyncio.Event()
    [(message, _)] = await harness.schedule(harness.clock.now_ms() - 1)
    harness.clock.advance(1.0)
    harness.publisher.on_publish = stop.set
    await asyncio.wait_for(service.run(stop), timeout=30)
    assert harness.stored() == [message.message_id]


@pytest.mark.slow
@async_test
async def test_two_hundred_thousand_pending_timers_live_on_disk_not_in_memory(tmp_path: Path) -> None:
    count = 200_000
    traced = 10_000  # fed while memory is traced (tracemalloc slows Python several times)
    buckets = 100
    harness = TimerHarness(OsDisk(), str(tmp_path / "data"))
    harness.publisher = RecordingPublisher(harness.clock, keep=False)
    harness.config = replace(harness.config, segment_size_bytes=64 * 1024 * 1024, index_buffer_entries=1_000)
    service = harness.open()
    writer = harness.store
    assert writer is not None
    t0 = harness.clock.now_ms() - harness.clock.now_ms() % 1000 + 10_000

    def append(start: int, end: int) -> None:
        for first in range(start, end, 10_000):
            writer.append_durable(
                [
                    timer_record(harness.message(t0 + (index % buckets) * 1000 + index % 997, body=b"b"))
                    for index in range(first, min(end, first + 10_000))
                ]
            )

    append(0, count - traced)
    await service.deliver_due()
    append(count - traced, count)
    harness.close()
    store = harness.store = MessageStore(harness.config, disk=harness.disk, clock=harness.clock)
    store.open()
    harness.publisher.store = store
    tracemalloc.start()
    try:
        # Open with 190,000 timers pending, index the last 10,000, deliver two buckets' worth.
        service = harness.service = TimerService(store, harness.publisher, harness.clock)
        service.open()
        await service.deliver_due()
        assert service.pending_count() == count
        harness.clock.advance((t0 - harness.clock.now_ms() + 1_999) / 1000)
        delivered = await service.deliver_due()
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert delivered == 2 * count // buckets
    assert service.pending_count() == count - delivered
    # Holding the pending timers, even packed as 40-byte index entries, would take 8 MB (as objects,
    # several times that). The peak counts the store's threads too (dispatching what was published).
    assert peak_bytes < count * ENTRY_SIZE / 2, f"peak {peak_bytes} bytes"
    harness.close()
