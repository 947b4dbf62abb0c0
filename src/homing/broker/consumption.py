"""Receive, ack, change invisibility, dead-letter: consumption with at-least-once delivery.

Theory of operation. A receive pops messages for a consumer group: first deliveries whose
invisible time has passed (redeliveries, attempt + 1), then new offsets past the cursor, skipping
those the subscription's filter rejects. Each delivery gets a signed receipt handle naming its
attempt. The pop is recorded as one journal event (see :mod:`homing.broker.pop_state`), and the
messages are returned only once that event is durable, so a restart knows what was in flight and
at which attempt. An ack is durable before it is confirmed. A handle from an older attempt is stale
and refused with ``INVALID_RECEIPT_HANDLE``; acking something already done is idempotent.

When a delivery's invisible time ends and its attempt has reached the group's maximum, it moves to
``%DLQ%<group>`` (same message id, properties, plus the attempt count, original topic and last
error) instead of being redelivered; only after the dead-letter copy is durable is the original
marked done. FIFO groups block a queue while any of its deliveries is still invisible, and
redeliver in offset order, so retries keep the order.

Push consumers send no invisible duration: they get a default that the broker renews while the
client is alive, up to a maximum; a client that goes away lets its deliveries expire.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from homing.broker.durable import append_durably
from homing.broker.errors import BrokerError
from homing.broker.filters import CompiledFilter, TagFilter
from homing.broker.message_codec import SYSTEM_PREFIX, from_record
from homing.broker.metadata import GroupConfig, Metadata
from homing.broker.model import Delivery, Message
from homing.broker.pop_state import Event, InFlight, PopState, QueueCursor, decode_event, encode_event
from homing.broker.publisher import Publisher
from homing.broker.receipt_handle import ReceiptHandle, decode_handle, encode_handle
from homing.broker.system_topics import POP_JOURNAL_TOPIC, dlq_topic
from homing.clock import Clock
from homing.store import CorruptRecordError, MessageStore, NewRecord, StoredRecord
from homing.store.atomic_file import read_framed_file, write_framed_file

__all__ = ["DLQ_ATTEMPTS", "DLQ_ORIGIN_TOPIC", "DLQ_REASON", "ConsumptionService", "QueueProgress"]

log = logging.getLogger("homing.broker.consumption")

DLQ_ORIGIN_TOPIC = SYSTEM_PREFIX + "dlq.origin_topic"
DLQ_ORIGIN_QUEUE = SYSTEM_PREFIX + "dlq.origin_queue"
DLQ_ORIGIN_OFFSET = SYSTEM_PREFIX + "dlq.origin_offset"
DLQ_ATTEMPTS = SYSTEM_PREFIX + "dlq.attempts"
DLQ_REASON = SYSTEM_PREFIX + "dlq.reason"

MAX_RECEIVE_BATCH = 1024
MAX_INFLIGHT_PER_QUEUE = 100_000
MIN_INVISIBLE_S = 1.0
MAX_INVISIBLE_S = 12 * 3600.0
_READ_CHUNK = 256


@dataclass(frozen=True, slots=True)
class QueueProgress:
    topic: str
    queue_id: int
    committed: int
    next_pop: int
    queue_end: int
    in_flight: int

    @property
    def lag(self) -> int:
        return max(self.queue_end - self.committed, 0)


class ConsumptionService:
    def __init__(
        self,
        store: MessageStore,
        metadata: Metadata,
        clock: Clock,
        publisher: Publisher,
        *,
        push_invisible_s: float = 60.0,
        push_max_renew_s: float = 3 * 3600.0,
        client_alive: Callable[[str], bool] = lambda client_id: True,
    ) -> None:
        self._store = store
        self._metadata = metadata
        self._clock = clock
        self._publisher = publisher
        self.push_invisible_s = push_invisible_s
        self.push_max_renew_s = push_max_renew_s
        self._client_alive = client_alive
        self.state = PopState()
        self._snapshot_path = os.path.join(store.config.data_dir, "popstate")
        self._moving: set[tuple[str, str, int, int]] = set()  # dead-letter moves under way
        self._last_attempt: dict[tuple[str, str, str], tuple[str, list[Delivery]]] = {}
        self.dead_lettered = 0

    # ------------------------------------------------------------------ recovery

    def open(self) -> None:
        payload = read_framed_file(self._store.disk, self._snapshot_path)
        state: PopState | None = None
        if payload is not None:
            try:
                state = PopState.from_snapshot(payload)
            except (ValueError, KeyError, TypeError) as error:
                log.warning("pop state snapshot unreadable (%s): replaying the whole journal", error)
        if state is None:
            state = PopState()
            state.journal_next, _ = self._store.queue_bounds(POP_JOURNAL_TOPIC, 0)
        self.state = state
        replayed = self._replay_journal()
        repaired = self._repair_orphans()
        if self._clamp_past_the_end():
            self.write_snapshot()  # durable before anything is delivered from the clamped cursors
        log.info(
            "pop state: %d cursors, %d journal events replayed, %d orphans",
            len(state.cursors),
            replayed,
            repaired,
        )

    def _replay_journal(self) -> int:
        offset = self.state.journal_next
        _, end = self._store.queue_bounds(POP_JOURNAL_TOPIC, 0)
        replayed = 0
        while offset < end:
            try:
                read = self._store.read_queue(POP_JOURNAL_TOPIC, 0, offset, 1000)
            except CorruptRecordError as error:
                # A lost event can only make us redeliver (see _repair_orphans), never skip.
                log.error("pop journal record at %d unreadable, skipped: %s", offset, error)
                offset += 1
                continue
            for record in read.records:
                self.state.apply(decode_event(record.body))
                replayed += 1
            offset = max(read.next_queue_offset, offset + 1) if not read.records else read.next_queue_offset
        self.state.journal_next = max(self.state.journal_next, end)
        return replayed

    def _repair_orphans(self) -> int:
        now = self._clock.now_ms()
        repaired = 0
        for cursor in self.state.cursors.values():
            for offset in cursor.orphans():
                cursor.inflight[offset] = InFlight(
                    attempt=1, visible_at_ms=now, popped_at_ms=now, client_id="", push=False
                )
                repaired += 1
        return repaired

    def _clamp_past_the_end(self) -> int:
        """Cursors past the end of their queue (a pop-state file restored from elsewhere, a log cut
        back) continue at the end: neither from 0 again nor from where they were, which would skip
        the next messages, written at the offsets in between."""
        clamped = 0
        for (group, topic, queue_id), cursor in self.state.cursors.items():
            _, high = self._store.queue_bounds(topic, queue_id)
            if cursor.next_pop > high or cursor.committed > high:
                log.warning(
                    "group %s: progress on %s/%d (%d) is past the end of the queue (%d); "
                    "continuing at the end",
                    group, topic, queue_id, cursor.next_pop, high,
                )  # fmt: skip
                cursor.clamp_to(high)
                clamped += 1
        return clamped

    def write_snapshot(self) -> None:
        if self._store.fenced:
            return
        write_framed_file(self._store.disk, self._snapshot_path, self.state.snapshot())

    # ------------------------------------------------------------------ journal

    def _apply(self, event: Event, events: list[Event]) -> None:
        """Apply now, so that concurrent calls see it; collected for :meth:`_commit`."""
        self.state.apply(event)
        events.append(event)

    async def _commit(self, events: Sequence[Event]) -> None:
        """Return once these (already applied) events are durable in the journal.

        Every event is idempotent, so replaying one the snapshot already holds is harmless.
        """
        if not events:
            return
        records = [
            NewRecord(topic=POP_JOURNAL_TOPIC, queue_id=0, body=encode_event(event)) for event in events
        ]
        result = await append_durably(self._store, records)
        self.state.journal_next = max(self.state.journal_next, result.records[-1].queue_offset + 1)

    # ------------------------------------------------------------------ cursors

    def _cursor(self, group: GroupConfig, topic: str, queue_id: int, events: list[Event]) -> QueueCursor:
        cursor = self.state.cursor(group.name, topic, queue_id)
        if cursor is not None:
            return cursor
        low, high = self._store.queue_bounds(topic, queue_id)
        if group.consume_from == "latest":
            start = high
        elif group.consume_from == "timestamp":
            start = self._first_offset_at(topic, queue_id, group.consume_from_ms, low, high)
        else:
            start = low
        self._apply({"k": "start", "g": group.name, "t": topic, "q": queue_id, "o": start}, events)
        cursor = self.state.cursor(group.name, topic, queue_id)
        assert cursor is not None
        return cursor

    def _first_offset_at(self, topic: str, queue_id: int, timestamp_ms: int, low: int, high: int) -> int:
        while low < high:
            middle = (low + high) // 2
            records = self._store.read_queue(topic, queue_id, middle, 1).records
            if records and records[0].store_timestamp_ms < timestamp_ms:
                low = middle + 1
            else:
                high = middle
        return low

    # ------------------------------------------------------------------ receive

    async def receive(
        self,
        *,
        group_name: str,
        topic: str,
        message_filter: CompiledFilter,
        max_messages: int,
        invisible_s: float | None,
        client_id: str,
        attempt_id: str = "",
        max_bytes: int | None = None,
    ) -> list[Delivery]:
        """Pop up to ``max_messages`` deliveries now (no waiting; long polling is the caller's).

        ``max_bytes``: stop once the bodies popped add up to this much (the first message is
        always taken, whatever its size), so that the answer fits in one response.
        """
        if not 1 <= max_messages <= MAX_RECEIVE_BATCH:
            raise BrokerError("BAD_REQUEST", f"batch size must be 1-{MAX_RECEIVE_BATCH}")
        push = invisible_s is None
        if invisible_s is not None and not MIN_INVISIBLE_S <= invisible_s <= MAX_INVISIBLE_S:
            raise BrokerError(
                "ILLEGAL_INVISIBLE_TIME",
                f"invisible duration must be {MIN_INVISIBLE_S:g}-{MAX_INVISIBLE_S:g} s, got {invisible_s:g}",
            )
        group = self._metadata.group(group_name)
        topic_config = self._metadata.topic(topic)
        retry_key = (group_name, topic, client_id)
        if attempt_id and retry_key in self._last_attempt:
            previous_attempt, previous = self._last_attempt[retry_key]
            if previous_attempt == attempt_id and self._all_still_current(group_name, previous):
                return previous  # the client retries a receive whose answer it lost
        now = self._clock.now_ms()
        duration_ms = int((self.push_invisible_s if invisible_s is None else invisible_s) * 1000)
        visible_at = now + duration_ms
        events: list[Event] = []
        deliveries: list[Delivery] = []
        dead: list[tuple[QueueCursor, int, StoredRecord, InFlight]] = []
        queue_ids = list(range(topic_config.queue_count))
        if not group.fifo:  # spread load: start where the previous receive stopped
            start = hash((group_name, topic, now)) % len(queue_ids)
            queue_ids = queue_ids[start:] + queue_ids[:start]
        bytes_left = max_bytes if max_bytes is not None else -1  # -1: no limit
        for queue_id in queue_ids:
            if len(deliveries) >= max_messages or bytes_left == 0:
                break
            cursor = self._cursor(group, topic, queue_id, events)
            bytes_left = self._pop_queue(
                group, topic, queue_id, cursor, message_filter, max_messages - len(deliveries),
                bytes_left, now, visible_at, client_id, push, events, deliveries, dead,
            )  # fmt: skip
        await self._commit(events)
        for cursor, offset, record, delivery in dead:
            await self._dead_letter(
                group, topic, cursor, offset, record, delivery.attempt, "max delivery attempts reached"
            )
        if attempt_id:
            self._last_attempt[retry_key] = (attempt_id, deliveries)
        return deliveries

    def _all_still_current(self, group_name: str, deliveries: list[Delivery]) -> bool:
        for delivery in deliveries:
            handle = decode_handle(self._metadata.secret, group_name, delivery.receipt_handle)
            cursor = self.state.cursor(group_name, handle.topic, handle.queue_id)
            current = cursor.inflight.get(handle.queue_offset) if cursor is not None else None
            if current is None or current.attempt != handle.delivery_attempt:
                return False
        return True

    def _pop_queue(
        self,
        group: GroupConfig,
        topic: str,
        queue_id: int,
        cursor: QueueCursor,
        message_filter: CompiledFilter,
        budget: int,
        bytes_left: int,
        now: int,
        visible_at: int,
        client_id: str,
        push: bool,
        events: list[Event],
        deliveries: list[Delivery],
        dead: list[tuple[QueueCursor, int, StoredRecord, InFlight]],
    ) -> int:
        """Pop from one queue into ``deliveries``; returns the bytes left (``bytes_left`` -1: no limit)."""
        key_prefix = (group.name, topic, queue_id)
        low, high = self._store.queue_bounds(topic, queue_id)
        if low > cursor.committed:
            # Retention removed messages this group never saw (only possible with the explicit
            # disk-pressure override, or for a group created after they expired): nothing to wait for.
            self._apply({"k": "skipto", "g": group.name, "t": topic, "q": queue_id, "o": low}, events)
        if group.fifo and any(item.visible_at_ms > now for item in cursor.inflight.values()):
            return bytes_left  # a FIFO queue is blocked while a delivery of it is invisible
        delivered: list[list[int]] = []
        skipped: list[int] = []
        # 1. Redeliveries, oldest offset first. Runs of consecutive offsets are read with one
        # read_queue each, never more of a run than the budget left (each offset takes at most
        # one unit of it), so exactly the records the one-by-one loop would read are read.
        due = [
            offset
            for offset in sorted(cursor.inflight)
            if cursor.inflight[offset].visible_at_ms <= now and (*key_prefix, offset) not in self._moving
        ]
        index = 0
        while index < len(due) and len(delivered) < budget:
            room = budget - len(delivered)
            end = index + 1
            while end < len(due) and end - index < room and due[end] == due[end - 1] + 1:
                end += 1
            records = self._read_run(topic, queue_id, due[index], due[end - 1] + 1)
            for offset in due[index:end]:
                if len(delivered) >= budget:
                    break  # the byte limit was reached
                delivery = cursor.inflight[offset]
                record = records.get(offset)
                if record is None:
                    skipped.append(offset)
                    continue
                if delivery.attempt >= group.max_delivery_attempts:
                    self._moving.add((*key_prefix, offset))
                    dead.append((cursor, offset, record, delivery))
                    continue
                delivered.append([offset, delivery.attempt + 1])
                deliveries.append(self._delivery(group.name, record, delivery.attempt + 1, now, visible_at))
                if bytes_left >= 0:
                    bytes_left = max(bytes_left - len(record.body), 0)
                    if bytes_left == 0:
                        budget = len(delivered)  # nothing more this time
            index = end
        # 2. New messages.
        # A tag filter ignores the properties: skip building their view per record.
        tag_filter = message_filter if isinstance(message_filter, TagFilter) else None
        position = cursor.next_pop
        in_flight_room = MAX_INFLIGHT_PER_QUEUE - len(cursor.inflight)
        while len(delivered) < budget and position < high and in_flight_room > len(delivered):
            batch, next_offset, damaged = self._read_past_damage(
                topic, queue_id, position, min(_READ_CHUNK, budget - len(delivered))
            )
            skipped.extend(damaged)
            if not batch:
                if not damaged:
                    break
                position = max(position, next_offset)
                continue
            for fresh in batch:
                if len(delivered) >= budget:
                    break
                position = fresh.queue_offset + 1
                if (
                    tag_filter.matches_tag(fresh.tag)
                    if tag_filter is not None
                    else message_filter.matches(fresh.tag, _user_and_system_view(fresh))
                ):
                    delivered.append([fresh.queue_offset, 1])
                    deliveries.append(self._delivery(group.name, fresh, 1, now, visible_at))
                    if bytes_left >= 0:
                        bytes_left = max(bytes_left - len(fresh.body), 0)
                        if bytes_left == 0:
                            budget = len(delivered)  # nothing more this time
                else:
                    skipped.append(fresh.queue_offset)
            if next_offset > position and len(delivered) < budget:
                position = next_offset
        if delivered or skipped:
            event = {
                "k": "pop", "g": group.name, "t": topic, "q": queue_id, "d": delivered, "s": skipped,
                "v": visible_at, "at": now, "c": client_id, "p": push,
            }  # fmt: skip
            self._apply(event, events)
        return bytes_left

    def _read_run(self, topic: str, queue_id: int, start: int, end: int) -> dict[int, StoredRecord]:
        """The records of queue offsets [start, end) by offset; those expired by retention are absent."""
        found: dict[int, StoredRecord] = {}
        position = start
        while position < end:
            records, next_offset, damaged = self._read_past_damage(topic, queue_id, position, end - position)
            got = [record for record in records if position <= record.queue_offset < end]
            if not got:
                if not damaged:
                    break
                position = max(position + 1, next_offset)
                continue
            for record in got:
                found[record.queue_offset] = record
            position = got[-1].queue_offset + 1
        return found

    def _read_past_damage(
        self, topic: str, queue_id: int, position: int, count: int
    ) -> tuple[list[StoredRecord], int, list[int]]:
        """``read_queue``, stepping over records the store finds damaged (a bit flip, a cut segment).

        Returns (records, next offset, damaged offsets). A damaged record is never delivered: the
        store's error names its file and offset and is logged here; its offset is done for the
        group (like a message removed by retention), so that one bad record does not block the
        rest of its queue forever.
        """
        try:
            read = self._store.read_queue(topic, queue_id, position, count)
            return read.records, read.next_queue_offset, []
        except CorruptRecordError:
            pass
        records: list[StoredRecord] = []
        damaged: list[int] = []
        offset = position
        while len(records) + len(damaged) < count:
            try:
                read = self._store.read_queue(topic, queue_id, offset, 1)
            except CorruptRecordError as error:
                log.error(
                    "%s/%d: the message at offset %d is unreadable, never delivered: %s",
                    topic, queue_id, offset, error,
                )  # fmt: skip
                damaged.append(offset)
                offset += 1
                continue
            if not read.records:
                offset = max(offset, read.next_queue_offset)
                break
            records += read.records
            offset = read.next_queue_offset
        return records, offset, damaged

    def _read_one(self, topic: str, queue_id: int, offset: int) -> StoredRecord | None:
        read = self._store.read_queue(topic, queue_id, offset, 1)
        if read.records and read.records[0].queue_offset == offset:
            return read.records[0]
        return None  # expired by retention

    def _delivery(
        self, group_name: str, record: StoredRecord, attempt: int, now: int, visible_at: int
    ) -> Delivery:
        handle = ReceiptHandle(record.topic, record.queue_id, record.queue_offset, attempt, now, visible_at)
        return Delivery(
            message=from_record(record),
            receipt_handle=encode_handle(self._metadata.secret, group_name, handle),
            delivery_attempt=attempt,
            invisible_until_ms=visible_at,
        )

    # ------------------------------------------------------------------ ack / change / dead-letter

    def _current(
        self, group_name: str, topic: str, text: str
    ) -> tuple[ReceiptHandle, QueueCursor, InFlight | None]:
        handle = decode_handle(self._metadata.secret, group_name, text)
        if handle.topic != topic:
            raise BrokerError(
                "INVALID_RECEIPT_HANDLE", f"receipt handle is for topic {handle.topic!r}, not {topic!r}"
            )
        cursor = self.state.cursor(group_name, topic, handle.queue_id)
        if cursor is None:
            raise BrokerError(
                "INVALID_RECEIPT_HANDLE", "receipt handle refers to nothing this group received"
            )
        if cursor.is_done(handle.queue_offset):
            return handle, cursor, None
        delivery = cursor.inflight.get(handle.queue_offset)
        if delivery is None or delivery.attempt != handle.delivery_attempt:
            raise BrokerError(
                "INVALID_RECEIPT_HANDLE",
                "receipt handle is stale: the message was delivered again since (attempt "
                f"{delivery.attempt if delivery else '?'}, handle attempt {handle.delivery_attempt})",
            )
        return handle, cursor, delivery

    async def ack(self, group_name: str, topic: str, receipt_handle: str) -> None:
        outcome = (await self.ack_many(group_name, topic, [receipt_handle]))[0]
        if outcome is not None:
            raise outcome

    async def ack_many(
        self, group_name: str, topic: str, receipt_handles: Sequence[str]
    ) -> list[BrokerError | None]:
        """Ack several deliveries with one journal record; per handle, None (acked) or its error.

        One durable append for the whole call: an AckMessage of 32 entries costs one share of a
        group commit, not 32. Acks are idempotent: one already done is acked again without a write.
        """
        outcomes: list[BrokerError | None] = []
        done: dict[int, list[int]] = {}  # queue id -> offsets
        for receipt_handle in receipt_handles:
            try:
                handle, _, delivery = self._current(group_name, topic, receipt_handle)
            except BrokerError as error:
                outcomes.append(error)
                continue
            outcomes.append(None)
            if delivery is not None:
                done.setdefault(handle.queue_id, []).append(handle.queue_offset)
        events: list[Event] = []
        for queue_id, offsets in done.items():
            self._apply({"k": "done", "g": group_name, "t": topic, "q": queue_id, "o": offsets}, events)
        try:
            await self._commit(events)
        except BrokerError as error:
            return [error if outcome is None else outcome for outcome in outcomes]
        return outcomes

    async def change_invisible_duration(
        self, group_name: str, topic: str, receipt_handle: str, invisible_s: float | None
    ) -> str:
        """Set when the delivery becomes visible again; returns the new receipt handle.

        ``invisible_s`` None means "nack with the group's backoff for this attempt".
        """
        handle, _, delivery = self._current(group_name, topic, receipt_handle)
        if delivery is None:
            raise BrokerError("INVALID_RECEIPT_HANDLE", "the message was already acknowledged")
        group = self._metadata.group(group_name)
        seconds = group.backoff_for_attempt(delivery.attempt) if invisible_s is None else invisible_s
        if not 0 <= seconds <= MAX_INVISIBLE_S:
            raise BrokerError("ILLEGAL_INVISIBLE_TIME", f"invisible duration must be 0-{MAX_INVISIBLE_S:g} s")
        now = self._clock.now_ms()
        visible_at = now + int(seconds * 1000)
        events: list[Event] = []
        self._apply(
            {"k": "inv", "g": group_name, "t": topic, "q": handle.queue_id, "o": handle.queue_offset,
             "a": delivery.attempt, "v": visible_at, "p": False},  # a nack or extension: no more renewals
            events,
        )  # fmt: skip
        await self._commit(events)
        new_handle = replace(handle, popped_at_ms=now, invisible_until_ms=visible_at)
        return encode_handle(self._metadata.secret, group_name, new_handle)

    async def forward_to_dead_letter(
        self, group_name: str, topic: str, receipt_handle: str, reason: str
    ) -> None:
        handle, cursor, delivery = self._current(group_name, topic, receipt_handle)
        if delivery is None:
            return
        record = self._read_one(topic, handle.queue_id, handle.queue_offset)
        group = self._metadata.group(group_name)
        key = (group_name, topic, handle.queue_id, handle.queue_offset)
        if record is None or key in self._moving:
            return
        self._moving.add(key)
        await self._dead_letter(group, topic, cursor, handle.queue_offset, record, delivery.attempt, reason)

    async def _dead_letter(
        self,
        group: GroupConfig,
        topic: str,
        cursor: QueueCursor,
        offset: int,
        record: StoredRecord,
        attempts: int,
        reason: str,
    ) -> None:
        key = (group.name, topic, record.queue_id, offset)
        try:
            original = from_record(record)
            properties = dict(original.properties)
            message = replace(
                original,
                topic=dlq_topic(group.name),
                properties=properties,
            )
            extra = {
                DLQ_ORIGIN_TOPIC: topic,
                DLQ_ORIGIN_QUEUE: str(record.queue_id),
                DLQ_ORIGIN_OFFSET: str(offset),
                DLQ_ATTEMPTS: str(attempts),
                DLQ_REASON: reason,
            }
            if not self._already_dead_lettered(group.name, topic, record.queue_id, offset, record.message_id):
                await self._publisher.publish([_with_system_properties(message, extra)])
            events: list[Event] = []
            self._apply(
                {"k": "done", "g": group.name, "t": topic, "q": record.queue_id, "o": [offset]}, events
            )
            await self._commit(events)
            self.dead_lettered += 1
            log.warning(
                "message %s of %s moved to %s after %d attempts: %s",
                record.message_id, topic, dlq_topic(group.name), attempts, reason,
            )  # fmt: skip
        finally:
            self._moving.discard(key)

    def _already_dead_lettered(
        self, group_name: str, topic: str, queue_id: int, offset: int, message_id: str
    ) -> bool:
        """Whether the group's dead-letter queue holds a copy of this very delivery already.

        A crash between the copy becoming durable and the original being marked done leaves the
        original due again; without this check it would be copied a second time.
        """
        target = dlq_topic(group_name)
        origin = (topic, str(queue_id), str(offset))
        for stored in self._store.find_by_message_id(message_id):
            properties = stored.properties
            found = (
                properties.get(DLQ_ORIGIN_TOPIC),
                properties.get(DLQ_ORIGIN_QUEUE),
                properties.get(DLQ_ORIGIN_OFFSET),
            )
            if stored.topic == target and found == origin:
                return True
        return False

    # ------------------------------------------------------------------ timers and views

    def next_visible_ms(self, group_name: str, topic: str) -> int | None:
        """When the earliest in-flight delivery of this group and topic becomes visible again."""
        earliest: int | None = None
        for (group, cursor_topic, _), cursor in self.state.cursors.items():
            if group != group_name or cursor_topic != topic:
                continue
            for delivery in cursor.inflight.values():
                if earliest is None or delivery.visible_at_ms < earliest:
                    earliest = delivery.visible_at_ms
        return earliest

    async def renew_push_deliveries(self, renew_before_s: float = 20.0) -> int:
        """Extend push deliveries of live clients that would soon become visible (up to the maximum)."""
        now = self._clock.now_ms()
        horizon = now + int(renew_before_s * 1000)
        renewals: list[Event] = []
        for (group, topic, queue_id), cursor in self.state.cursors.items():
            for offset, delivery in cursor.inflight.items():
                if not delivery.push or delivery.visible_at_ms > horizon or delivery.visible_at_ms <= now:
                    continue
                if now - delivery.popped_at_ms >= self.push_max_renew_s * 1000:
                    continue
                if not self._client_alive(delivery.client_id):
                    continue
                renewals.append(
                    {"k": "inv", "g": group, "t": topic, "q": queue_id, "o": offset, "a": delivery.attempt,
                     "v": now + int(self.push_invisible_s * 1000)}
                )  # fmt: skip
        events: list[Event] = []
        for event in renewals:
            self._apply(event, events)
        await self._commit(events)
        return len(renewals)

    def progress(self) -> dict[tuple[str, int], int]:
        """Per queue, the lowest offset any group still needs (for retention)."""
        needed: dict[tuple[str, int], int] = {}
        for (_, topic, queue_id), cursor in self.state.cursors.items():
            key = (topic, queue_id)
            needed[key] = min(needed.get(key, cursor.committed), cursor.committed)
        return needed

    def group_progress(self, group_name: str) -> list[QueueProgress]:
        rows = []
        for (group, topic, queue_id), cursor in sorted(self.state.cursors.items()):
            if group != group_name:
                continue
            _, end = self._store.queue_bounds(topic, queue_id)
            rows.append(
                QueueProgress(topic, queue_id, cursor.committed, cursor.next_pop, end, len(cursor.inflight))
            )
        return rows


def _user_and_system_view(record: StoredRecord) -> dict[str, str]:
    """The properties a SQL92 filter sees: the user's (system properties stay hidden)."""
    return {name: value for name, value in record.properties.items() if not name.startswith(SYSTEM_PREFIX)}


def _with_system_properties(message: Message, extra: dict[str, str]) -> Message:
    return replace(message, properties={**message.properties, **extra})
