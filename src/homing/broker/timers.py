"""Delayed messages: kept in the log until due, then published to their real topic; recallable until then.

Theory of operation
-------------------

*Schedule.* A delayed message is appended durably to the system topic :data:`TIMER_TOPIC`, queue 0,
as it will be published (same id, body, properties) plus its real topic. The sender is acknowledged
once that record is durable: from then on the log is the only thing that must survive. The reply
carries a *recall handle* naming the timer (topic, message id, delivery time, timer queue offset).

*Index.* :class:`~homing.store.timer_index.TimerIndex` files each timer under its delivery second.
It is derived: :meth:`TimerService.deliver_due` first feeds it every timer record past its
``indexed_until`` (reading the timer queue), then commits. Pending timers cost disk, not memory:
the service holds one slice of a bucket, one publish batch and the recall set, each bounded.

*Delivery.* :meth:`TimerService.deliver_due` hands every due bucket's entries, in batches, to the
:class:`~homing.broker.publisher.Publisher`, which stores them durably in their real topic, keeping
the message id. Only after ``publish`` returns is the batch marked delivered (a durable progress
write). A bucket is due once the injected clock reaches its last millisecond, so a message is never
delivered before its time and at most one bucket (1 s) after. If the wall clock steps back, nothing
is delivered until it passes the due time again; if it steps forward, everything due goes out.
:meth:`TimerService.run` calls it at the end of each bucket (at least once a second). It needs no
wake-up from the store when a timer is scheduled: whatever is fed in the meantime sits in a bucket
that is not due before that moment (a timer already due joins the bucket being delivered next).

*Exactly once, and where only at least once.* A crash between ``publish`` and the progress write
would publish that batch again at restart. So the first batch's worth of messages after every
start is checked against the store's message-id index first (a record with the same id, real topic
and delivery time means it was published), as is everything a rebuild re-feeds that may already have
been delivered. A duplicate (same message id) remains possible only when that check cannot see the
earlier copy: a publish that timed out but became durable later, or a progress file lost while the
wall clock had stepped back. A loss is never the price.

*Recall.* :meth:`TimerService.recall` appends a durable recall event to :data:`TIMER_EVENTS_TOPIC`
and adds the timer to the recall set; a recalled timer is skipped when its bucket is delivered. The
set is derived too: rebuilt at start from the events topic, from the *events floor* on. Recall is
refused once the message is due or delivered (as RocketMQ does).

*Floors.* Retention must not delete a timer record before it is delivered. The *timer floor* is the
lowest timer queue offset whose timer is not yet finished, advanced lazily by reading timer records
in order; the *events floor* is the lowest recall event still needed (a recall is kept until the
timer floor passes its timer, so that a rebuild never resurrects a recalled timer).
:meth:`TimerService.retention_floors` gives both in the form ``MessageStore.enforce_retention``
takes; whoever runs retention must merge them into the progress it passes.

*Rebuild.* If the progress file is missing or damaged, or the index contradicts itself, the index is
reset and fed again from the timer floor (or the timer queue's start when the floor is lost too).
Timers that may have been delivered already are flagged and checked before delivery (see above).

The service's bytes in the index progress (``extra``), little-endian::

    offset size  field
    0      4     version             1
    4      8     timer_floor         TIMER_TOPIC queue offset: every timer before it is finished
    12     8     events_floor        TIMER_EVENTS_TOPIC queue offset: no recall before it is needed
    20     8     verify_below_ms     after a rebuild: timers due before this may have been delivered
    28     8     verify_until        ... if their timer offset is below this (0: nothing to verify)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace

from homing.broker.durable import append_durably
from homing.broker.errors import BrokerError
from homing.broker.message_codec import DELIVER_AT, REAL_TOPIC, SYSTEM_PREFIX, from_record, to_record
from homing.broker.model import Message, SendReceipt
from homing.broker.publisher import Publisher
from homing.broker.system_topics import TIMER_EVENTS_TOPIC, TIMER_TOPIC, is_internal_topic
from homing.clock import Clock
from homing.store import CorruptRecordError, MessageStore, NewRecord, StoredRecord
from homing.store.errors import StoreError
from homing.store.message_store import QueueRead
from homing.store.timer_index import (
    DEFAULT_BUCKET_WIDTH_MS,
    DueSlice,
    TimerEntry,
    TimerIndex,
    TimerIndexDamagedError,
)

__all__ = [
    "DEFAULT_DELAY_LEVELS_MS",
    "DEFAULT_MAX_DELAY_MS",
    "RecallHandle",
    "TimerOpenReport",
    "TimerService",
    "TimerSettings",
    "decode_recall_handle",
    "delivery_time_for_level",
    "encode_recall_handle",
    "levels_ms_from_seconds",
    "timer_record",
]

log = logging.getLogger("homing.broker.timers")

_SECOND_MS = 1000
_MINUTE_MS = 60 * _SECOND_MS
_HOUR_MS = 60 * _MINUTE_MS

# RocketMQ's 18 levels: 1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h.
DEFAULT_DELAY_LEVELS_MS: tuple[int, ...] = (
    1 * _SECOND_MS,
    5 * _SECOND_MS,
    10 * _SECOND_MS,
    30 * _SECOND_MS,
    *(minutes * _MINUTE_MS for minutes in range(1, 11)),
    20 * _MINUTE_MS,
    30 * _MINUTE_MS,
    1 * _HOUR_MS,
    2 * _HOUR_MS,
)
assert len(DEFAULT_DELAY_LEVELS_MS) == 18
# The RocketMQ proxy refuses delivery times more than a day ahead (maxDelayTimeMills) with
# ILLEGAL_DELIVERY_TIME; the broker behind it would take 3 days. Clients speak to the proxy.
DEFAULT_MAX_DELAY_MS = 24 * _HOUR_MS

# Property names of timer events (the message codec reserves the prefix for the broker).
EVENT_KIND = SYSTEM_PREFIX + "timer_event"
TIMER_OFFSET = SYSTEM_PREFIX + "timer_offset"
_RECALL = "recall"

# Limits, explicit.
MAX_PUBLISH_MESSAGES = 256  # one publish call, and the batch re-checked after a start
MAX_PUBLISH_BYTES = 4 * 1024 * 1024
MAX_PENDING_RECALLS = 100_000
_READ_SLOTS = 2 * MAX_PUBLISH_MESSAGES
_FEED_READ_BATCH = 128  # timer records read per call (they carry bodies)
_FEED_YIELD_EVERY = 2_048  # records fed between yields to the event loop
_FLOOR_SCAN_BUDGET = 16_384  # timer records the floor may pass per step
_EVENTS_READ_BATCH = 256
_MAX_WAIT_S = 1.0  # the loop looks at the clock at least this often (clock steps, retries)
_MAX_HANDLE_CHARS = 1024
_HANDLE_VERSION = 1
_HANDLE_HEAD = struct.Struct("<BQQ")
_LENGTH = struct.Struct("<H")
_EXTRA = struct.Struct("<IQQQQ")
_EXTRA_VERSION = 1


def levels_ms_from_seconds(levels_s: Sequence[float]) -> tuple[int, ...]:
    """Delay levels as settings hold them (seconds) to milliseconds."""
    return tuple(round(level * 1000) for level in levels_s)


def delivery_time_for_level(
    level: int, now_ms: int, levels_ms: Sequence[int] = DEFAULT_DELAY_LEVELS_MS
) -> int:
    """The delivery timestamp of a message sent at ``now_ms`` with RocketMQ delay ``level`` (1-based).

    A level above the highest is the highest, as the RocketMQ broker clamps it.
    """
    assert levels_ms, "at least one delay level"
    if level < 1:
        raise BrokerError("ILLEGAL_DELIVERY_TIME", f"delay level {level} is not a level; levels start at 1")
    return now_ms + levels_ms[min(level, len(levels_ms)) - 1]


@dataclass(frozen=True, slots=True)
class TimerSettings:
    delay_levels_ms: tuple[int, ...] = DEFAULT_DELAY_LEVELS_MS
    max_delay_ms: int = DEFAULT_MAX_DELAY_MS
    bucket_width_ms: int = DEFAULT_BUCKET_WIDTH_MS
    max_pending_recalls: int = MAX_PENDING_RECALLS

    def __post_init__(self) -> None:
        if not self.delay_levels_ms or any(level <= 0 for level in self.delay_levels_ms):
            raise ValueError("delay levels must be positive durations")
        if self.max_delay_ms <= 0 or self.max_pending_recalls <= 0:
            raise ValueError("max_delay_ms and max_pending_recalls must be positive")
        if not 0 < self.bucket_width_ms <= _SECOND_MS:
            raise ValueError("bucket_width_ms must be within (0, 1000]: the timer resolution is 1 s")


@dataclass(frozen=True, slots=True)
class RecallHandle:
    topic: str
    message_id: str
    deliver_at_ms: int
    timer_offset: int  # the timer record's queue offset in TIMER_TOPIC


def encode_recall_handle(handle: RecallHandle) -> str:
    """base64url (unpadded) of: version u8, timer_offset u64, deliver_at_ms u64, topic, message id
    (each text a u16 length then UTF-8)."""
    topic = handle.topic.encode()
    message_id = handle.message_id.encode()
    raw = b"".join(
        (
            _HANDLE_HEAD.pack(_HANDLE_VERSION, handle.timer_offset, handle.deliver_at_ms),
            _LENGTH.pack(len(topic)),
            topic,
            _LENGTH.pack(len(message_id)),
            message_id,
        )
    )
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_recall_handle(text: str) -> RecallHandle:
    """The handle's fields; ``BAD_REQUEST`` for anything this service did not write."""
    bad = BrokerError("BAD_REQUEST", "malformed recall handle")
    if not text or len(text) > _MAX_HANDLE_CHARS:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as error:
        raise bad from error
    # Only the canonical spelling is accepted: one handle, one string.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != text:
        raise bad
    try:
        version, timer_offset, deliver_at_ms = _HANDLE_HEAD.unpack_from(raw, 0)
        position = _HANDLE_HEAD.size
        (topic_length,) = _LENGTH.unpack_from(raw, position)
        position += _LENGTH.size
        topic = raw[position : position + topic_length].decode()
        position += topic_length
        (id_length,) = _LENGTH.unpack_from(raw, position)
        position += _LENGTH.size
        message_id = raw[position : position + id_length].decode()
        position += id_length
    except (struct.error, UnicodeDecodeError) as error:
        raise bad from error
    if version != _HANDLE_VERSION or position != len(raw) or not topic or not message_id:
        raise bad
    return RecallHandle(topic, message_id, deliver_at_ms, timer_offset)


def timer_record(message: Message) -> NewRecord:
    """The TIMER_TOPIC record that keeps ``message`` until it is due."""
    assert message.delivery_timestamp_ms is not None
    return to_record(
        message, topic=TIMER_TOPIC, queue_id=0, extra_system_properties={REAL_TOPIC: message.topic}
    )


def _deliver_at(record: StoredRecord) -> int | None:
    text = record.properties.get(DELIVER_AT)
    if text is None or not text.isdigit():
        return None
    return int(text)


@dataclass(frozen=True, slots=True)
class TimerOpenReport:
    rebuilt: bool
    reason: str | None  # why the index was rebuilt
    pending_count: int
    recalls_loaded: int


@dataclass(frozen=True, slots=True)
class _Recall:
    deliver_at_ms: int
    event_offset: int  # its event's queue offset in TIMER_EVENTS_TOPIC


class TimerService:
    """Delayed delivery and recall over one :class:`MessageStore` (see the module doc)."""

    def __init__(
        self,
        store: MessageStore,
        publisher: Publisher,
        clock: Clock,
        settings: TimerSettings | None = None,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._clock = clock
        self.settings = settings if settings is not None else TimerSettings()
        self._index: TimerIndex | None = None
        self._lock = asyncio.Lock()
        # Insertion order is event order, so the first value holds the events floor.
        self._recalled: dict[int, _Recall] = {}
        self._timer_floor = 0
        self._events_floor = 0
        self._verify_below_ms = 0
        self._verify_until = 0
        self._verify_budget = 0
        self._floor_blocker: tuple[int, int] | None = None
        self.delivered_count = 0  # messages published since open
        self.undeliverable_count = 0  # timers whose record could not be read (logged each time)

    # ----------------------------------------------------------------- lifecycle

    def open(self) -> TimerOpenReport:
        """Recover: load (or rebuild) the index and the recall set. Call after the store is open."""
        assert self._index is None, "already open"
        index = TimerIndex(
            self._store.disk,
            os.path.join(self._store.config.data_dir, "timer"),
            self.settings.bucket_width_ms,
        )
        self._index = index
        reason: str | None = None
        try:
            loaded = index.open()
        except TimerIndexDamagedError as damage:
            reason = str(damage)
            self._load_extra(index.extra)
            self._rebuild(known=True)
        else:
            if not loaded or not self._load_extra(index.extra):
                reason = "no readable timer progress"
                self._rebuild(known=False)
        if reason is not None:
            pending_records = self._store.queue_bounds(TIMER_TOPIC, 0)[1] - self._timer_floor
            level = logging.WARNING if pending_records > 0 else logging.INFO
            log.log(
                level,
                "timer index rebuilt from the log (%s): %d timer records to feed",
                reason,
                pending_records,
            )
        self._load_recalls()
        # The batch in flight when the last run stopped may have been published already.
        self._verify_budget = MAX_PUBLISH_MESSAGES
        return TimerOpenReport(reason is not None, reason, index.pending_count, len(self._recalled))

    def close(self) -> None:
        """Make the progress durable (a clean shutdown). Stop :meth:`run` first."""
        if self._index is None:
            return
        self._index.commit(self._extra_bytes())
        self._index.close()
        self._index = None

    def halt(self) -> None:
        """Stop as ``kill -9`` would: nothing more is written (for tests and fault injection)."""
        if self._index is not None:
            self._index.abandon()
            self._index = None

    def _require_index(self) -> TimerIndex:
        if self._index is None:
            raise BrokerError("INTERNAL_SERVER_ERROR", "the timer service is not open")
        return self._index

    # ----------------------------------------------------------------- schedule

    async def schedule(self, message: Message) -> tuple[SendReceipt, str]:
        """Keep ``message`` durably until its delivery timestamp; return its receipt and recall handle."""
        return (await self.schedule_many([message]))[0]

    async def schedule_many(self, messages: Sequence[Message]) -> list[tuple[SendReceipt, str]]:
        """:meth:`schedule` for a batch, all or nothing, with one durable append."""
        now_ms = self._clock.now_ms()
        for message in messages:
            self._validate(message, now_ms)
        result = await append_durably(self._store, [timer_record(message) for message in messages])
        scheduled: list[tuple[SendReceipt, str]] = []
        for message, appended in zip(messages, result.records, strict=True):
            assert message.delivery_timestamp_ms is not None
            handle = RecallHandle(
                message.topic, message.message_id, message.delivery_timestamp_ms, appended.queue_offset
            )
            # Not yet in a queue of its topic: the queue is chosen when it is published.
            receipt = SendReceipt(message.message_id, queue_id=-1, queue_offset=appended.queue_offset)
            scheduled.append((receipt, encode_recall_handle(handle)))
        return scheduled

    def _validate(self, message: Message, now_ms: int) -> None:
        deliver_at = message.delivery_timestamp_ms
        if deliver_at is None or deliver_at < 0:
            raise BrokerError("ILLEGAL_DELIVERY_TIME", "a delayed message needs a delivery timestamp")
        if deliver_at - now_ms > self.settings.max_delay_ms:
            raise BrokerError(
                "ILLEGAL_DELIVERY_TIME",
                f"delivery time {deliver_at} is more than {self.settings.max_delay_ms} ms ahead",
            )
        if is_internal_topic(message.topic):
            raise BrokerError("ILLEGAL_TOPIC", f"{message.topic} is internal")
        if not message.message_id:
            raise BrokerError("ILLEGAL_MESSAGE_ID", "a delayed message needs a message id")

    # ----------------------------------------------------------------- recall

    async def recall(self, topic: str, recall_handle: str) -> str:
        """Cancel a delayed message before it is due; return its message id.

        ``BAD_REQUEST`` for a handle this service did not issue for ``topic``; ``MESSAGE_NOT_FOUND``
        once the message is due or delivered. Recalling twice is fine (the same answer).
        """
        handle = decode_recall_handle(recall_handle)
        if handle.topic != topic:
            raise BrokerError("BAD_REQUEST", f"the recall handle does not belong to topic {topic}")
        async with self._lock:
            index = self._require_index()
            self._store.dispatch_now()
            record = self._timer_record_at(handle.timer_offset)
            if record is None:
                raise BrokerError("MESSAGE_NOT_FOUND", "no delayed message for this recall handle any more")
            named = (record.message_id, record.properties.get(REAL_TOPIC), _deliver_at(record))
            if named != (handle.message_id, handle.topic, handle.deliver_at_ms):
                raise BrokerError("BAD_REQUEST", "the recall handle does not match the message it names")
            if handle.timer_offset in self._recalled:
                return handle.message_id
            # A timer not indexed yet is not processed yet either: no need to feed the index first.
            if handle.deliver_at_ms <= self._clock.now_ms() or index.is_processed(
                handle.timer_offset, handle.deliver_at_ms
            ):
                raise BrokerError(
                    "MESSAGE_NOT_FOUND", "the delayed message is due or delivered: too late to recall"
                )
            if len(self._recalled) >= self.settings.max_pending_recalls:
                raise BrokerError("TOO_MANY_REQUESTS", "too many recalls pending; try again later")
            event = NewRecord(
                topic=TIMER_EVENTS_TOPIC,
                queue_id=0,
                body=b"",
                message_id=handle.message_id,
                properties={
                    EVENT_KIND: _RECALL,
                    TIMER_OFFSET: str(handle.timer_offset),
                    DELIVER_AT: str(handle.deliver_at_ms),
                    REAL_TOPIC: handle.topic,
                },
                born_timestamp_ms=self._clock.now_ms(),
            )
            result = await append_durably(self._store, [event])
            self._recalled[handle.timer_offset] = _Recall(
                handle.deliver_at_ms, result.records[0].queue_offset
            )
            return handle.message_id

    def _timer_record_at(self, timer_offset: int) -> StoredRecord | None:
        low, high = self._store.queue_bounds(TIMER_TOPIC, 0)
        if not low <= timer_offset < high:
            return None
        try:
            read = self._store.read_queue(TIMER_TOPIC, 0, timer_offset, 1)
        except CorruptRecordError:
            return None
        if not read.records or read.records[0].queue_offset != timer_offset:
            return None
        return read.records[0]

    def _load_recalls(self) -> None:
        self._recalled.clear()
        low, high = self._store.queue_bounds(TIMER_EVENTS_TOPIC, 0)
        offset = max(self._events_floor, low)
        while offset < high:
            read = self._read_queue_skipping_corrupt(TIMER_EVENTS_TOPIC, offset, _EVENTS_READ_BATCH)
            for record in read.records:
                if record.properties.get(EVENT_KIND) != _RECALL:
                    continue
                timer_offset_text = record.properties.get(TIMER_OFFSET, "")
                deliver_at = _deliver_at(record)
                if not timer_offset_text.isdigit() or deliver_at is None:
                    log.error("recall event at offset %d is malformed; ignored", record.queue_offset)
                    continue
                timer_offset = int(timer_offset_text)
                if timer_offset >= self._timer_floor and timer_offset not in self._recalled:
                    self._recalled[timer_offset] = _Recall(deliver_at, record.queue_offset)
            assert read.next_queue_offset > offset, "a read must make progress"
            offset = read.next_queue_offset
        if len(self._recalled) > self.settings.max_pending_recalls:
            log.warning(
                "%d recalls pending, over the limit of %d",
                len(self._recalled),
                self.settings.max_pending_recalls,
            )

    # ----------------------------------------------------------------- delivery

    async def deliver_due(self) -> int:
        """Publish every timer due by the clock now; return how many messages were published."""
        async with self._lock:
            index = self._require_index()
            before = self.delivered_count
            try:
                await self._deliver_step(index)
            except TimerIndexDamagedError as damage:
                log.error("timer index damaged (%s): rebuilding it from the log", damage)
                self._rebuild(known=True)
                await self._deliver_step(index)
            return self.delivered_count - before

    async def _deliver_step(self, index: TimerIndex) -> None:
        await self._feed(index)
        while (due := index.read_due(self._clock.now_ms(), _READ_SLOTS)) is not None:
            self.delivered_count += await self._deliver_slice(index, due)
        self._advance_floors(index)
        index.commit(self._extra_bytes())

    async def _deliver_slice(self, index: TimerIndex, due: DueSlice) -> int:
        batch: list[tuple[int, int, Message]] = []  # (deliver_at, timer offset, message)
        batch_bytes = 0
        processed = 0
        end_slot = due.end_slot
        for entry in due.entries:
            if len(batch) >= MAX_PUBLISH_MESSAGES or batch_bytes >= MAX_PUBLISH_BYTES:
                end_slot = entry.slot
                break
            processed += 1
            if entry.source_offset in self._recalled:
                continue
            message = self._load(entry)
            if message is None:
                continue
            check = entry.verify
            if self._verify_budget > 0:
                self._verify_budget -= 1
                check = True
            if check and self._already_published(message, entry.deliver_at_ms):
                log.info("timer %s was published before a restart; not again", message.message_id)
                continue
            batch.append((entry.deliver_at_ms, entry.source_offset, message))
            batch_bytes += len(message.body)
        if batch:
            batch.sort(key=lambda item: (item[0], item[1]))
            try:
                await self._publisher.publish([message for _, _, message in batch])
            except BaseException:
                # It may have become durable anyway (a persistence timeout): check the retry.
                self._verify_budget = max(self._verify_budget, MAX_PUBLISH_MESSAGES)
                raise
        index.mark_processed(due.bucket_ms, end_slot, processed)
        index.commit(self._extra_bytes())
        return len(batch)

    def _load(self, entry: TimerEntry) -> Message | None:
        try:
            record = self._store.read_at(entry.physical_offset, entry.size)
        except (KeyError, CorruptRecordError) as error:
            self.undeliverable_count += 1
            log.error(
                "timer at offset %d cannot be delivered, its record is unreadable: %s",
                entry.source_offset,
                error,
            )
            return None
        if record.topic != TIMER_TOPIC or record.queue_offset != entry.source_offset:
            self.undeliverable_count += 1
            log.error("timer at offset %d points at a record that is not it; skipped", entry.source_offset)
            return None
        return replace(from_record(record), queue_id=-1, queue_offset=-1, store_timestamp_ms=0)

    def _already_published(self, message: Message, deliver_at_ms: int) -> bool:
        wanted = str(deliver_at_ms)
        for record in self._store.find_by_message_id(message.message_id):
            if record.topic == message.topic and record.properties.get(DELIVER_AT) == wanted:
                return True
        return False

    # ----------------------------------------------------------------- feeding

    async def _feed(self, index: TimerIndex) -> None:
        """Index every timer record the store can serve past ``indexed_until``."""
        self._store.dispatch_now()
        low, high = self._store.queue_bounds(TIMER_TOPIC, 0)
        offset = index.indexed_until
        if offset < low:
            log.error("timer records [%d, %d) left the log before they were indexed", offset, low)
            index.skip_source(low)
            offset = low
        fed_since_yield = 0
        while offset < high:
            read = self._read_queue_skipping_corrupt(TIMER_TOPIC, offset, _FEED_READ_BATCH)
            for record in read.records:
                deliver_at = _deliver_at(record)
                if deliver_at is None:
                    log.error("timer record at offset %d has no delivery time; skipped", record.queue_offset)
                    continue
                verify = record.queue_offset < self._verify_until and deliver_at < self._verify_below_ms
                index.add(deliver_at, record.queue_offset, record.physical_offset, record.size, verify=verify)
            assert read.next_queue_offset > offset, "a read must make progress"
            offset = read.next_queue_offset
            index.skip_source(offset)
            fed_since_yield += len(read.records)
            if fed_since_yield >= _FEED_YIELD_EVERY:
                fed_since_yield = 0
                await asyncio.sleep(0)
        if self._verify_until and index.indexed_until >= self._verify_until:
            self._verify_below_ms = self._verify_until = 0

    def _read_queue_skipping_corrupt(self, topic: str, offset: int, max_count: int) -> QueueRead:
        """A queue read that steps over a corrupt record (reported by the store, logged here)."""
        try:
            return self._store.read_queue(topic, 0, offset, max_count)
        except CorruptRecordError:
            pass
        records: list[StoredRecord] = []
        position = offset
        while len(records) < max_count:
            try:
                read = self._store.read_queue(topic, 0, position, 1)
            except CorruptRecordError as error:
                log.error("%s: skipping the corrupt record at queue offset %d: %s", topic, position, error)
                position += 1
                continue
            if not read.records:
                position = max(position, read.next_queue_offset)
                break
            records.extend(read.records)
            position = read.next_queue_offset
        low, high = self._store.queue_bounds(topic, 0)
        return QueueRead(records, max(position, offset + 1), low, high)

    # ----------------------------------------------------------------- floors and rebuild

    def _advance_floors(self, index: TimerIndex) -> None:
        before = self._timer_floor
        self._advance_timer_floor(index)
        if self._timer_floor > before and self._recalled:
            for timer_offset in [offset for offset in self._recalled if offset < self._timer_floor]:
                del self._recalled[timer_offset]
        if self._recalled:
            self._events_floor = next(iter(self._recalled.values())).event_offset
        else:
            self._events_floor = self._store.queue_bounds(TIMER_EVENTS_TOPIC, 0)[1]

    def _advance_timer_floor(self, index: TimerIndex) -> None:
        blocker = self._floor_blocker
        if blocker is not None and blocker[0] == self._timer_floor and not index.is_finished(*blocker):
            return
        self._floor_blocker = None
        low, _ = self._store.queue_bounds(TIMER_TOPIC, 0)
        floor = max(self._timer_floor, low)
        budget = _FLOOR_SCAN_BUDGET
        while floor < index.indexed_until and budget > 0:
            read = self._read_queue_skipping_corrupt(TIMER_TOPIC, floor, min(_FEED_READ_BATCH, budget))
            budget -= max(1, len(read.records))
            blocked = False
            for record in read.records:
                deliver_at = _deliver_at(record)
                # A record without a delivery time was never indexed: nothing waits for it.
                if deliver_at is not None and not index.is_finished(record.queue_offset, deliver_at):
                    self._floor_blocker = (record.queue_offset, deliver_at)
                    floor = record.queue_offset
                    blocked = True
                    break
                floor = record.queue_offset + 1
            if blocked:
                break
            moved = min(max(floor, read.next_queue_offset), index.indexed_until)
            if moved <= floor and not read.records:
                break
            floor = moved
        self._timer_floor = floor

    def _rebuild(self, *, known: bool) -> None:
        """Reset the index to be fed again; ``known``: the delivered cursor and the floors are trusted."""
        index = self._require_index()
        low, high = self._store.queue_bounds(TIMER_TOPIC, 0)
        if known:
            bucket = index.delivered_bucket_ms
            # Everything due before the cursor (and in its bucket, if it was started) may be delivered.
            verify_below = bucket + index.bucket_width_ms if index.delivered_slots > 0 else bucket
            start = max(self._timer_floor, low)
        else:
            now_ms = self._clock.now_ms()
            bucket = index.bucket_of(now_ms)
            verify_below = now_ms + 1
            start = low
            self._events_floor = self._store.queue_bounds(TIMER_EVENTS_TOPIC, 0)[0]
        self._timer_floor = start
        self._floor_blocker = None
        self._verify_below_ms = verify_below
        self._verify_until = high
        index.reset(source_offset=start, delivered_bucket_ms=bucket, extra=self._extra_bytes())

    def _extra_bytes(self) -> bytes:
        return _EXTRA.pack(
            _EXTRA_VERSION, self._timer_floor, self._events_floor, self._verify_below_ms, self._verify_until
        )

    def _load_extra(self, extra: bytes) -> bool:
        if len(extra) != _EXTRA.size:
            return False
        version, timer_floor, events_floor, verify_below, verify_until = _EXTRA.unpack(extra)
        if version != _EXTRA_VERSION:
            return False
        self._timer_floor = timer_floor
        self._events_floor = events_floor
        self._verify_below_ms = verify_below
        self._verify_until = verify_until
        return True

    # ----------------------------------------------------------------- loop and queries

    async def run(self, stop_event: asyncio.Event) -> None:
        """Deliver due timers until ``stop_event`` is set, looking at the clock at every bucket's end."""
        while not stop_event.is_set():
            try:
                await self.deliver_due()
                wait_s = self._seconds_until_due()
            except (BrokerError, StoreError, OSError) as error:
                # Nothing was marked delivered: the same timers are tried again.
                log.error("timer delivery failed, retrying in %.0f s: %s", _MAX_WAIT_S, error)
                wait_s = _MAX_WAIT_S
            if wait_s <= 0:
                await asyncio.sleep(0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_event.wait(), wait_s)

    def _seconds_until_due(self) -> float:
        index = self._require_index()
        wait_ms = index.due_at_ms(index.delivered_bucket_ms) - self._clock.now_ms()
        # At most a second: the wall clock may step, and nothing else wakes the loop.
        return min(max(wait_ms, 0), _MAX_WAIT_S * 1000) / 1000

    def pending_count(self) -> int:
        """Timers indexed and not yet delivered (recalled ones count until their time passes)."""
        return self._require_index().pending_count

    def next_due_ms(self) -> int | None:
        """When the next non-empty bucket is delivered (lists the index directory: for admin use)."""
        index = self._require_index()
        bucket = index.next_bucket_ms()
        return None if bucket is None else index.due_at_ms(bucket)

    def retention_floors(self) -> dict[tuple[str, int], int]:
        """Lowest queue offsets still needed, as committed: merge into ``enforce_retention``'s progress."""
        extra = self._require_index().extra
        timer_floor = events_floor = 0  # unknown: keep everything
        if len(extra) == _EXTRA.size:
            _, timer_floor, events_floor, _, _ = _EXTRA.unpack(extra)
        return {(TIMER_TOPIC, 0): timer_floor, (TIMER_EVENTS_TOPIC, 0): events_floor}

    @property
    def recalled_count(self) -> int:
        return len(self._recalled)
