"""SendMessage and AckMessage with many entries: each entry done, durably, with shared fsyncs.

The servicer runs in this process in front of a real broker over a store on the real disk (in
``tmp_path``); requests go through ``MessagingServicer`` as gRPC hands them over. Regressions: the
entries of an AckMessage, and the delayed and transactional messages of a SendMessage, used to be
handled one after the other, each waiting for its own fsync: 32 entries cost 32 fsyncs in a row
(bench/broker.py ``consume_ack``: ~40 ms per AckMessage of 32). Now they wait together and share
group commits. How many groups that makes depends on when the store's sync thread wakes up (a few;
up to 6 seen), so the tests only require far fewer than one per entry.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from google.protobuf import timestamp_pb2

from homing.broker.broker import Broker, BrokerOptions
from homing.broker.filters import compile_filter
from homing.broker.model import Message
from homing.clock import SystemClock
from homing.config import Address
from homing.protocol import definition_pb2, service_pb2
from homing.server.servicer import MessagingServicer
from homing.store import MessageStore, StoreConfig

ENTRIES = 32


class FakeContext:
    """What the servicer reads of a grpc.aio call context."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-mq-client-id", "batch-client"),)

    def time_remaining(self) -> float | None:
        return 10.0


@asynccontextmanager
async def serving(data_dir: Path) -> AsyncIterator[tuple[MessageStore, Broker, MessagingServicer]]:
    clock = SystemClock()
    store = MessageStore(StoreConfig(data_dir=str(data_dir), segment_size_bytes=4 * 1024 * 1024), clock=clock)
    store.open()
    broker = Broker(store, clock, BrokerOptions(chore_interval_s=3600))
    await broker.open()
    try:
        yield (
            store,
            broker,
            MessagingServicer(
                broker, advertise=Address("127.0.0.1", 8081), long_polling_timeout_s=1.0, clock=clock
            ),
        )
    finally:
        await broker.close()
        store.close()


def assert_shared_fsyncs(syncs: int, what: str) -> None:
    # One after the other, each waiting for its own fsync, would be at least ENTRIES.
    assert 1 <= syncs < ENTRIES // 2, f"{syncs} fsyncs for {what}"


async def ack_a_batch(data_dir: Path) -> None:
    async with serving(data_dir) as (store, broker, servicer):
        await broker.send(
            [Message(topic="orders", body=b"x", message_id=f"01{index:030X}") for index in range(ENTRIES)]
        )
        store.dispatch_now()  # into the consume queues now, rather than by the dispatcher thread
        deliveries = await broker.receive(
            group="readers",
            topic="orders",
            message_filter=compile_filter("TAG", "*"),
            max_messages=ENTRIES,
            invisible_s=60,
            client_id="batch-client",
            long_poll_timeout_s=0,
        )
        assert len(deliveries) == ENTRIES
        entries = [
            service_pb2.AckMessageEntry(
                message_id=delivery.message.message_id, receipt_handle=delivery.receipt_handle
            )
            for delivery in deliveries
        ]
        # One handle twice and one that is not a handle: each entry gets its own status.
        entries.insert(5, entries[3])
        entries.append(service_pb2.AckMessageEntry(message_id="01FF", receipt_handle="not-a-handle"))
        syncs_before = store.sync_count
        response = await servicer.AckMessage(
            service_pb2.AckMessageRequest(
                group=definition_pb2.Resource(name="readers"),
                topic=definition_pb2.Resource(name="orders"),
                entries=entries,
            ),
            FakeContext(),  # type: ignore[arg-type]
        )
        syncs = store.sync_count - syncs_before

        assert [(entry.message_id, entry.receipt_handle) for entry in response.entries] == [
            (entry.message_id, entry.receipt_handle) for entry in entries
        ]
        codes = [entry.status.code for entry in response.entries]
        assert codes[:-1] == [definition_pb2.OK] * (ENTRIES + 1)
        assert codes[-1] == definition_pb2.INVALID_RECEIPT_HANDLE
        assert response.status.code == definition_pb2.MULTIPLE_RESULTS
        # Acked in earnest: nothing of the group is in flight, every queue is committed to its end.
        progress = broker.consumption.group_progress("readers")
        assert progress and all(row.in_flight == 0 and row.committed == row.queue_end for row in progress)
        assert_shared_fsyncs(syncs, f"one AckMessage of {ENTRIES} entries")


def test_ack_message_acks_every_entry_with_shared_fsyncs(tmp_path: Path) -> None:
    asyncio.run(ack_a_batch(tmp_path / "data"))


async def send_delayed_and_transactional(data_dir: Path) -> None:
    async with serving(data_dir) as (store, broker, servicer):
        due = timestamp_pb2.Timestamp()
        due.FromMilliseconds(broker.clock.now_ms() + 3_600_000)
        messages = []
        for index in range(ENTRIES):
            properties = definition_pb2.SystemProperties(message_id=f"01{index:030X}")
            if index % 2:
                properties.message_type = definition_pb2.TRANSACTION
            else:
                properties.message_type = definition_pb2.DELAY
                properties.delivery_timestamp.CopyFrom(due)
            messages.append(
                definition_pb2.Message(
                    topic=definition_pb2.Resource(name="orders"), body=b"x", system_properties=properties
                )
            )
        # One that the broker refuses (a delay beyond max_delay_s) keeps its own status.
        messages[4].system_properties.delivery_timestamp.FromMilliseconds(broker.clock.now_ms() + 10**10)
        syncs_before = store.sync_count
        response = await servicer.SendMessage(
            service_pb2.SendMessageRequest(messages=messages),
            FakeContext(),  # type: ignore[arg-type]
        )
        syncs = store.sync_count - syncs_before

        assert [entry.message_id for entry in response.entries] == [
            message.system_properties.message_id for message in messages
        ]
        for index, entry in enumerate(response.entries):
            if index == 4:
                assert entry.status.code == definition_pb2.ILLEGAL_DELIVERY_TIME
            elif index % 2:
                assert (entry.status.code, bool(entry.transaction_id)) == (definition_pb2.OK, True)
            else:
                assert (entry.status.code, bool(entry.recall_handle)) == (definition_pb2.OK, True)
        assert (
            len({entry.transaction_id for entry in response.entries if entry.transaction_id}) == ENTRIES // 2
        )
        store.dispatch_now()
        assert await broker.timers.deliver_due() == 0  # indexes the new timers; none is due
        assert broker.timers.pending_count() == ENTRIES // 2 - 1
        assert broker.transactions.counts().pending == ENTRIES // 2
        assert_shared_fsyncs(syncs, f"one SendMessage of {ENTRIES} delayed and transactional messages")


def test_send_message_stores_delayed_and_transactional_messages_with_shared_fsyncs(tmp_path: Path) -> None:
    asyncio.run(send_delayed_and_transactional(tmp_path / "data"))
