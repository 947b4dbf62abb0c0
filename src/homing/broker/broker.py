"""The broker: one object the server adapter talks to, wiring the services over one store.

It implements :class:`homing.broker.publisher.Publisher` (the durable send path: pick the queue,
append, wait for durability) and adds what the protocol needs around it: validation, long polling
(waiting until messages arrive, or an in-flight delivery becomes visible again), client liveness
for push renewal, and the periodic chores (renewals, pop-state snapshots, retention).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from homing.broker.clients import ClientRegistry
from homing.broker.consumption import ConsumptionService
from homing.broker.durable import append_durably
from homing.broker.errors import BrokerError
from homing.broker.filters import CompiledFilter
from homing.broker.message_codec import to_record
from homing.broker.metadata import DEFAULT_BACKOFF_S, GroupConfig, Metadata, TopicConfig
from homing.broker.model import Delivery, Message, MessageType, SendReceipt
from homing.broker.send_validation import MessageLimits, validate_message
from homing.broker.system_topics import is_dlq_topic
from homing.broker.timers import TimerService, TimerSettings, levels_ms_from_seconds
from homing.broker.transactions import CheckRequest, TransactionService
from homing.clock import Clock
from homing.store import MessageStore

__all__ = ["Broker", "BrokerOptions", "TransactionChecker"]

# Sends a check-back to a live producer; True if one received it (then the check counts).
TransactionChecker = Callable[[CheckRequest], Awaitable[bool]]

log = logging.getLogger("homing.broker")

MAX_SEND_BATCH = 1024


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    auto_create: bool = True
    max_body_bytes: int = 4 * 1024 * 1024
    max_delay_s: float = 24 * 3600.0
    push_invisible_s: float = 60.0
    push_max_renew_s: float = 3 * 3600.0
    max_delivery_attempts: int = 17
    retry_backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S
    delay_levels_s: tuple[float, ...] = (
        1,
        5,
        10,
        30,
        60,
        120,
        180,
        240,
        300,
        360,
        420,
        480,
        540,
        600,
        1200,
        1800,
        3600,
        7200,
    )
    transaction_timeout_s: float = 6.0
    transaction_check_interval_s: float = 60.0
    transaction_max_checks: int = 15
    snapshot_interval_s: float = 30.0
    retention_interval_s: float = 60.0
    transaction_progress_interval_s: float = 10.0
    chore_interval_s: float = 1.0
    extra: dict[str, object] = field(default_factory=dict)


class Broker:
    def __init__(
        self,
        store: MessageStore,
        clock: Clock,
        options: BrokerOptions | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.store = store
        self.clock = clock
        self.options = options or BrokerOptions()
        self.metadata = Metadata(
            store.disk,
            store.config.data_dir,
            now_ms=clock.now_ms,
            random_bytes=random_bytes,
            auto_create=self.options.auto_create,
            default_group=GroupConfig(
                name="",
                max_delivery_attempts=self.options.max_delivery_attempts,
                backoff_s=self.options.retry_backoff_s,
            ),
        )
        self.clients = ClientRegistry(clock.monotonic_s)
        self.consumption = ConsumptionService(
            store,
            self.metadata,
            clock,
            self,
            push_invisible_s=self.options.push_invisible_s,
            push_max_renew_s=self.options.push_max_renew_s,
            client_alive=self.clients.alive,
        )
        self.limits = MessageLimits(self.options.max_body_bytes, int(self.options.max_delay_s * 1000))
        self.timers = TimerService(
            store,
            self,
            clock,
            TimerSettings(
                delay_levels_ms=levels_ms_from_seconds(self.options.delay_levels_s),
                max_delay_ms=int(self.options.max_delay_s * 1000),
            ),
        )
        self.transactions = TransactionService(
            store,
            clock,
            self,
            transaction_timeout_s=self.options.transaction_timeout_s,
            check_interval_s=self.options.transaction_check_interval_s,
            max_checks=self.options.transaction_max_checks,
        )
        self.transaction_checker: TransactionChecker | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self._round_robin = itertools.count()
        self._arrivals: asyncio.Event | None = None
        # Receives in progress (long polls): only they need waking when messages arrive. Read by
        # the store's dispatcher thread without a lock (an int, under the GIL): a receive counts
        # itself before it looks for messages, so a dispatch it did not see is one that wakes it.
        self._long_polls = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._chores: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._arrivals = asyncio.Event()
        self.metadata.open()
        self.consumption.open()
        self.timers.open()
        self.transactions.open()
        self.store.add_dispatch_listener(self._on_dispatch)
        self._stopping = asyncio.Event()
        self._chores = asyncio.create_task(self._run_chores(), name="homing-broker-chores")
        self._timer_task = asyncio.create_task(self.timers.run(self._stopping), name="homing-timers")

    async def close(self) -> None:
        self._stopping.set()
        for task in (self._chores, self._timer_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._chores = self._timer_task = None
        self.consumption.write_snapshot()
        self.timers.close()
        self.transactions.close()

    def _on_dispatch(self) -> None:
        # Runs on the store's dispatcher thread: hand over to the loop, if anyone is waiting (a
        # loop wake-up per dispatch costs a self-pipe write and a pass of the loop).
        loop = self._loop
        if self._long_polls and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake_receivers)

    def _wake_receivers(self) -> None:
        if self._long_polls and self._arrivals is not None:
            self._arrivals.set()
            self._arrivals = asyncio.Event()

    def wake_receivers(self) -> None:
        """Something other than a new message may let a receive succeed (an ack unblocking FIFO)."""
        self._wake_receivers()

    # ------------------------------------------------------------------ sending

    def topic_for_send(self, name: str) -> TopicConfig:
        if is_dlq_topic(name):
            raise BrokerError(
                "ILLEGAL_TOPIC", f"{name!r} is a dead-letter topic: resend from it with the admin API"
            )
        return self.metadata.topic(name)

    def _queue_for(self, message: Message, topic: TopicConfig) -> int:
        if message.message_group is not None:
            # Every message of a group goes to one queue, chosen by the broker so that all
            # clients agree (they hash differently): CRC32 of the group name.
            return zlib.crc32(message.message_group.encode()) % topic.queue_count
        return next(self._round_robin) % topic.queue_count

    async def publish(self, messages: Sequence[Message]) -> list[SendReceipt]:
        """Store messages in their topics now (all or nothing); return once durable."""
        if not messages:
            return []
        return await self._store_durably(
            [(message, self.metadata.topic(message.topic, create=True)) for message in messages]
        )

    async def _store_durably(self, messages: Sequence[tuple[Message, TopicConfig]]) -> list[SendReceipt]:
        records = [
            to_record(message, queue_id=self._queue_for(message, topic)) for message, topic in messages
        ]
        result = await append_durably(self.store, records)
        return [
            SendReceipt(message.message_id, record.queue_id, appended.queue_offset)
            for (message, _), record, appended in zip(messages, records, result.records, strict=True)
        ]

    async def send(self, messages: Sequence[Message]) -> list[SendReceipt | BrokerError]:
        """The SendMessage path: validate each message, then store the valid ones together."""
        if len(messages) > MAX_SEND_BATCH:
            raise BrokerError("BAD_REQUEST", f"at most {MAX_SEND_BATCH} messages per send")
        now = self.clock.now_ms()
        outcomes: list[SendReceipt | BrokerError | None] = [None] * len(messages)
        immediate: list[tuple[Message, TopicConfig]] = []  # NORMAL and FIFO: stored now, together
        immediate_at: list[int] = []
        special: list[tuple[int, Message]] = []  # DELAY and TRANSACTION: each its own way
        for index, message in enumerate(messages):
            try:
                topic = self.topic_for_send(message.topic)
                validate_message(message, topic, self.limits, now)
            except BrokerError as error:
                outcomes[index] = error
                continue
            if message.message_type is MessageType.NORMAL or message.message_type is MessageType.FIFO:
                immediate.append((message, topic))
                immediate_at.append(index)
            else:
                special.append((index, message))
        if immediate:
            try:
                receipts = await self._store_durably(immediate)
                for index, receipt in zip(immediate_at, receipts, strict=True):
                    outcomes[index] = receipt
            except BrokerError as error:
                for index in immediate_at:
                    outcomes[index] = error

        async def send_special(message: Message) -> SendReceipt | BrokerError:
            try:
                return await self._send_special(message)
            except BrokerError as error:
                return error

        if special:
            # Together, not one after the other: each waits for its own durable append, and
            # appends in flight at once share one group commit (one fsync, not one per message).
            results = await asyncio.gather(*(send_special(message) for _, message in special))
            for (index, _), result in zip(special, results, strict=True):
                outcomes[index] = result
        return [
            outcome if outcome is not None else BrokerError("INTERNAL_ERROR", "no outcome")
            for outcome in outcomes
        ]

    async def _send_special(self, message: Message) -> SendReceipt:
        if message.message_type == MessageType.DELAY:
            receipt, recall_handle = await self.timers.schedule(message)
            return replace(receipt, recall_handle=recall_handle)
        if message.message_type == MessageType.TRANSACTION:
            return await self.transactions.prepare(message)
        raise BrokerError("BAD_REQUEST", f"unexpected message type {message.message_type.name}")

    async def end_transaction(
        self, *, topic: str, message_id: str, transaction_id: str, commit: bool, source: str = "producer"
    ) -> None:
        if source not in ("producer", "check", "admin"):
            raise BrokerError("BAD_REQUEST", f"unknown transaction end source {source!r}")
        await self.transactions.end(topic, message_id, transaction_id, commit, source)  # type: ignore[arg-type]

    async def recall(self, *, topic: str, recall_handle: str) -> str:
        """Cancel a delayed message that is not due yet; returns its message id."""
        return await self.timers.recall(topic, recall_handle)

    # ------------------------------------------------------------------ consuming

    async def receive(
        self,
        *,
        group: str,
        topic: str,
        message_filter: CompiledFilter,
        max_messages: int,
        invisible_s: float | None,
        client_id: str,
        long_poll_timeout_s: float,
        attempt_id: str = "",
        max_bytes: int | None = None,
    ) -> list[Delivery]:
        """Deliveries, waiting up to ``long_poll_timeout_s`` for some to become available.

        ``max_bytes`` bounds the bodies of one answer (see :meth:`ConsumptionService.receive`).
        """
        deadline = self.clock.monotonic_s() + max(long_poll_timeout_s, 0.0)
        self._long_polls += 1
        try:
            while True:
                waiter = self._arrivals
                deliveries = await self.consumption.receive(
                    group_name=group,
                    topic=topic,
                    message_filter=message_filter,
                    max_messages=max_messages,
                    invisible_s=invisible_s,
                    client_id=client_id,
                    attempt_id=attempt_id,
                    max_bytes=max_bytes,
                )
                remaining = deadline - self.clock.monotonic_s()
                if deliveries or remaining <= 0 or waiter is None:
                    return deliveries
                wait_s = min(remaining, 1.0)  # re-check at least every second: expiry timers
                next_visible = self.consumption.next_visible_ms(group, topic)
                if next_visible is not None:
                    wait_s = min(wait_s, max((next_visible - self.clock.now_ms()) / 1000, 0.01))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.wait(), wait_s)
        finally:
            self._long_polls -= 1

    async def ack(self, group: str, topic: str, receipt_handle: str) -> None:
        await self.consumption.ack(group, topic, receipt_handle)
        self._wake_receivers()

    async def ack_many(
        self, group: str, topic: str, receipt_handles: Sequence[str]
    ) -> list[BrokerError | None]:
        outcomes = await self.consumption.ack_many(group, topic, receipt_handles)
        self._wake_receivers()
        return outcomes

    async def change_invisible_duration(
        self, group: str, topic: str, receipt_handle: str, invisible_s: float | None
    ) -> str:
        handle = await self.consumption.change_invisible_duration(group, topic, receipt_handle, invisible_s)
        self._wake_receivers()
        return handle

    async def forward_to_dead_letter(self, group: str, topic: str, receipt_handle: str, reason: str) -> None:
        await self.consumption.forward_to_dead_letter(group, topic, receipt_handle, reason)
        self._wake_receivers()

    # ------------------------------------------------------------------ chores

    async def _check_transactions(self) -> None:
        checker = self.transaction_checker
        if checker is None:
            return
        for request in self.transactions.due_checks(self.clock.now_ms()):
            if await checker(request):
                await self.transactions.record_check(request.transaction_id, request.check_number)

    async def _run_chores(self) -> None:
        last_snapshot = last_retention = last_progress = self.clock.monotonic_s()
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.options.chore_interval_s)
            try:
                await self.consumption.renew_push_deliveries()
                await self._check_transactions()
                now = self.clock.monotonic_s()
                if now - last_progress >= self.options.transaction_progress_interval_s:
                    await self.transactions.renew_old_halves(self.clock.now_ms())
                    self.transactions.save_progress()
                    last_progress = now
                if now - last_snapshot >= self.options.snapshot_interval_s:
                    self.consumption.write_snapshot()
                    last_snapshot = now
                if now - last_retention >= self.options.retention_interval_s:
                    await asyncio.to_thread(self.store.enforce_retention, self.retention_progress())
                    last_retention = now
                self._wake_receivers()  # lets long polls notice expired deliveries promptly
            except BrokerError as error:
                log.error("broker chore failed: %s", error)
            except OSError as error:
                log.error("broker chore IO error: %s", error)

    def retention_progress(self) -> dict[tuple[str, int], int]:
        """Per queue, the lowest offset still needed: by consumers, pending timers, open transactions."""
        needed = self.consumption.progress()
        for floors in (self.timers.retention_floors(), self.transactions.retention_progress()):
            for key, offset in floors.items():
                needed[key] = min(needed.get(key, offset), offset)
        return needed
