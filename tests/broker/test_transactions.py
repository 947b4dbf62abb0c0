"""Transactional messages on a real store (simulated or real disk, fake clock): no sockets, no sleeps.

What must hold whatever happens: a committed transaction's message is published (at least once,
with its message id), a rolled-back one never is, and an unresolved one is checked back on time,
then parked, never dropped.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest

from homing.broker.durable import append_durably
from homing.broker.errors import BrokerError
from homing.broker.message_codec import from_record, to_record
from homing.broker.model import Message, MessageType, SendReceipt
from homing.broker.system_topics import HALF_OPS_TOPIC, HALF_TOPIC
from homing.broker.transaction_records import (
    Op,
    OpKind,
    OpSource,
    decode_op,
    decode_progress,
    encode_progress,
    format_transaction_id,
    op_record,
    parse_transaction_id,
)
from homing.broker.transactions import (
    PROGRESS_FILE,
    CheckRequest,
    TransactionCounts,
    TransactionService,
    TransactionSource,
)
from homing.clock import FakeClock
from homing.store import MessageStore, OsDisk, SimulatedDisk, StoreConfig, StoredRecord
from homing.store.atomic_file import write_framed_file
from homing.store.disk import Disk

T = TypeVar("T")
Restart = Literal["clean", "halt", "power"]
RESTARTS: tuple[Restart, ...] = ("clean", "halt", "power")
SOURCES: tuple[TransactionSource, ...] = ("producer", "check", "admin")
TOPIC = "orders"


def run(factory: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await factory()

    return asyncio.run(main())


class RecordingPublisher:
    """The broker's send path reduced to what transactions need: append durably, remember what."""

    def __init__(self, store: MessageStore, published: list[Message]) -> None:
        self.store = store
        self.published = published
        self.after_publish: Callable[[], None] | None = None  # one-shot fault injection

    async def publish(self, messages: Sequence[Message]) -> list[SendReceipt]:
        result = await append_durably(self.store, [to_record(message, queue_id=0) for message in messages])
        self.published.extend(messages)
        hook, self.after_publish = self.after_publish, None
        if hook is not None:
            hook()
        return [
            SendReceipt(message.message_id, 0, appended.queue_offset)
            for message, appended in zip(messages, result.records, strict=True)
        ]


class Harness:
    """A store and a transaction service over one disk; stopped and reopened in every way."""

    def __init__(
        self, disk: Disk | None = None, data_dir: str = "/data", seed: int = 3, **options: Any
    ) -> None:
        self.disk: Disk = disk if disk is not None else SimulatedDisk(seed=seed)
        self.data_dir = data_dir
        self.clock = FakeClock()
        self.rng = random.Random(seed)
        self.options = options
        self.published: list[Message] = []
        self._store: MessageStore | None = None
        self._service: TransactionService | None = None
        self._publisher: RecordingPublisher | None = None
        self._ids = 0

    @property
    def store(self) -> MessageStore:
        assert self._store is not None
        return self._store

    @property
    def service(self) -> TransactionService:
        assert self._service is not None
        return self._service

    @property
    def publisher(self) -> RecordingPublisher:
        assert self._publisher is not None
        return self._publisher

    def open(self) -> TransactionService:
        assert self._store is None
        config = StoreConfig(data_dir=self.data_dir, segment_size_bytes=256 * 1024)
        self._store = MessageStore(config, self.disk, self.clock)
        self._store.open()
        self._publisher = RecordingPublisher(self._store, self.published)
        self._service = TransactionService(
            self._store, self.clock, self._publisher, rng=self.rng, **self.options
        )
        self._service.open()
        return self._service

    def stop(self, how: Restart) -> None:
        if how == "clean":
            self.service.close()
            self.store.close()
        else:
            self.store.halt()  # kill -9: the page cache survives
            if how == "power":
                assert isinstance(self.disk, SimulatedDisk)
                self.disk.crash()  # only what was synced survives
        self._store = self._service = self._publisher = None

    def restart(self, how: Restart) -> TransactionService:
        self.stop(how)
        return self.open()

    def close(self) -> None:
        if self._store is not None:
            self.stop("clean")

    def message(self, topic: str = TOPIC, **fields: Any) -> Message:
        self._ids += 1
        return Message(
            topic=topic,
            body=f"body {self._ids}".encode(),
            message_id=f"MSG{self._ids:06d}",
            message_type=MessageType.TRANSACTION,
            born_timestamp_ms=1_700_000_000_000 + self._ids,
            **fields,
        )

    async def prepare(self, topic: str = TOPIC, **fields: Any) -> tuple[Message, str]:
        message = self.message(topic, **fields)
        receipt = await self.service.prepare(message)
        assert receipt.message_id == message.message_id and receipt.transaction_id
        return message, receipt.transaction_id

    async def end(
        self, message: Message, transaction_id: str, commit: bool, source: TransactionSource = "producer"
    ) -> None:
        await self.service.end(message.topic, message.message_id, transaction_id, commit, source)

    async def commit(
        self, message: Message, transaction_id: str, source: TransactionSource = "producer"
    ) -> None:
        await self.end(message, transaction_id, True, source)

    async def rollback(
        self, message: Message, transaction_id: str, source: TransactionSource = "producer"
    ) -> None:
        await self.end(message, transaction_id, False, source)

    def due(self, max_count: int | None = None) -> list[CheckRequest]:
        return self.service.due_checks(self.clock.now_ms(), max_count)

    async def check_all(self) -> list[CheckRequest]:
        """One scan whose checks all reach a producer that does not answer yet."""
        requests = self.due()
        for request in requests:
            assert await self.service.record_check(request.transaction_id, request.check_number)
        return requests

    def visible(self, topic: str = TOPIC) -> list[StoredRecord]:
        """Every durable record of ``topic``/0: what consumers can read."""
        self.store.dispatch_now()
        offset, end = self.store.queue_bounds(topic, 0)
        records: list[StoredRecord] = []
        while offset < end:
            read = self.store.read_queue(topic, 0, offset, 100)
            records.extend(read.records)
            assert read.next_queue_offset > offset
            offset = read.next_queue_offset
        return records

    def visible_ids(self, topic: str = TOPIC) -> list[str]:
        return [record.message_id for record in self.visible(topic)]


def refused(error: pytest.ExceptionInfo[BrokerError], code: str = "INVALID_TRANSACTION_ID") -> str:
    assert error.value.code == code, error.value
    return error.value.message


# ---------------------------------------------------------------------- commit and rollback


def test_commit_publishes_the_message_once_with_its_id_and_the_half_stays_invisible() -> None:
    async def scenario() -> None:
        harness = Harness()
        service = harness.open()
        message = harness.message(tag="TagA", keys=("order-1",), properties={"p": "1"}, born_host="host-1")
        receipt = await service.prepare(message)
        assert parse_transaction_id(receipt.transaction_id) == receipt.queue_offset
        assert harness.visible_ids() == []
        assert [record.message_id for record in harness.visible(HALF_TOPIC)] == [message.message_id]
        assert service.counts() == TransactionCounts(pending=1, parked=0)

        await service.end(TOPIC, message.message_id, receipt.transaction_id, True, "producer")
        await service.end(TOPIC, message.message_id, receipt.transaction_id, True, "producer")  # again: OK
        records = harness.visible()
        assert [record.message_id for record in records] == [message.message_id]
        got = from_record(records[0])
        assert (got.body, got.tag, got.keys, got.properties, got.born_host, got.message_type) == (
            message.body,
            "TagA",
            ("order-1",),
            {"p": "1"},
            "host-1",
            MessageType.TRANSACTION,
        )
        assert harness.published == [message]
        assert service.counts() == TransactionCounts(pending=0, parked=0)
        assert service.list_unresolved() == []
        harness.clock.advance(24 * 3600)
        assert harness.due() == []
        harness.close()

    run(scenario)


@pytest.mark.parametrize("how", RESTARTS)
def test_rollback_never_publishes_even_across_restarts(how: Restart) -> None:
    async def scenario() -> None:
        harness = Harness()
        harness.open()
        message, transaction_id = await harness.prepare()
        await harness.rollback(message, transaction_id)
        await harness.rollback(message, transaction_id)  # again: OK
        harness.restart(how)
        assert harness.visible_ids() == []
        assert harness.service.counts() == TransactionCounts(0, 0)
        harness.clock.advance(24 * 3600)
        assert harness.due() == []
        await harness.rollback(message, transaction_id)  # still idempotent after the restart
        assert harness.published == []
        harness.close()

    run(scenario)


def test_prepare_refuses_a_message_without_id_or_to_a_system_topic() -> None:
    async def scenario() -> None:
        harness = Harness()
        service = harness.open()
        with pytest.raises(BrokerError) as error:
            await service.prepare(Message(topic=TOPIC, body=b"x", message_id=""))
        refused(error, "ILLEGAL_MESSAGE_ID")
        with pytest.raises(BrokerError) as error:
            await service.prepare(Message(topic=HALF_TOPIC, body=b"x", message_id="M1"))
        refused(error, "ILLEGAL_TOPIC")
        assert service.counts() == TransactionCounts(0, 0)
        harness.close()

    run(scenario)


@pytest.mark.parametrize("how", [None, *RESTARTS])
def test_ending_again_the_same_way_is_ok_and_the_other_way_is_refused(how: Restart | None) -> None:
    async def scenario() -> None:
        # Only one outcome is remembered in memory: older ones are found through the key index.
        harness = Harness(max_remembered_outcomes=1)
        harness.open()
        committed, committed_id = await harness.prepare()
        rolled_back, rolled_back_id = await harness.prepare()
        third, third_id = await harness.prepare()
        await harness.commit(committed, committed_id)
        await harness.rollback(rolled_back, rolled_back_id)
        await harness.commit(third, third_id)
        if how is not None:
            harness.service.save_progress()  # the replay then starts past all three
            harness.restart(how)
        for source in SOURCES:
            await harness.commit(committed, committed_id, source)
            await harness.rollback(rolled_back, rolled_back_id, source)
        with pytest.raises(BrokerError) as error:
            await harness.rollback(committed, committed_id)
        assert "already committed" in refused(error)
        with pytest.raises(BrokerError) as error:
            await harness.commit(rolled_back, rolled_back_id, "admin")
        assert "already rolled back" in refused(error)
        assert harness.visible_ids() == [committed.message_id, third.message_id]
        harness.close()

    run(scenario)


def test_concurrent_conflicting_ends_let_exactly_one_win() -> None:
    async def scenario() -> None:
        harness = Harness()
        harness.open()
        chooser = random.Random(1)
        for _ in range(12):
            message, transaction_id = await harness.prepare()
            calls = [(chooser.random() < 0.5, chooser.choice(SOURCES)) for _ in range(4)]
            outcomes = await asyncio.gather(
                *(harness.end(message, transaction_id, commit, source) for commit, source in calls),
                return_exceptions=True,
            )
            winners = {
                commit for (commit, _), outcome in zip(calls, outcomes, strict=True) if outcome is None
            }
            assert len(winners) == 1
            [won] = winners
            for (commit, _), outcome in zip(calls, outcomes, strict=True):
                if commit != won:
                    assert isinstance(outcome, BrokerError) and outcome.code == "INVALID_TRANSACTION_ID"
            assert harness.visible_ids().count(message.message_id) == (1 if won else 0)
        harness.close()

    run(scenario)


def test_concurrent_prepares_get_distinct_ids_and_all_commit() -> None:
    async def scenario() -> None:
        harness = Harness()
        service = harness.open()
        messages = [harness.message() for _ in range(50)]
        receipts = await asyncio.gather(*(service.prepare(message) for message in messages))
        assert len({receipt.transaction_id for receipt in receipts}) == 50
        await asyncio.gather(
            *(
                service.end(TOPIC, message.message_id, receipt.transaction_id, True, "producer")
                for message, receipt in zip(messages, receipts, strict=True)
            )
        )
        assert sorted(harness.visible_ids()) == sorted(message.message_id for message in messages)
        assert service.progress() == (50, 50)
        harness.close()

    run(scenario)


def test_forged_and_mismatched_transaction_ids_are_refused() -> None:
    async def scenario() -> None:
        harness = Harness()
        service = harness.open()
        message, transaction_id = await harness.prepare()
        assert transaction_id[16:] != "0" * 16
        forged = [
            "",
            "nonsense",
            "0" * 32,
            transaction_id[:16] + "0" * 16,  # the right offset, another nonce
            transaction_id.lower(),
            transaction_id + "0",
            "G" * 32,
            format_transaction_id(12345, 678),
            "\x00" * 32,
        ]
        for candidate in forged:
            with pytest.raises(BrokerError) as error:
                await service.end(TOPIC, message.message_id, candidate, True, "producer")
            refused(error)
            assert not await service.record_check(candidate)
        with pytest.raises(BrokerError) as error:
            await service.end(TOPIC, "SOMEONE-ELSE", transaction_id, True, "producer")
        assert "SOMEONE-ELSE" in refused(error)
        with pytest.raises(BrokerError) as error:
            await service.end("payments", message.message_id, transaction_id, True, "producer")
        assert "payments" in refused(error)
        assert harness.visible_ids() == [] and harness.published == []
        assert service.counts() == TransactionCounts(1, 0)
        await harness.commit(message, transaction_id)
        with pytest.raises(BrokerError) as error:  # also once resolved
            await service.end(TOPIC, "SOMEONE-ELSE", transaction_id, True, "producer")
        refused(error)
        assert harness.visible_ids() == [message.message_id]
        harness.close()

    run(scenario)


# ---------------------------------------------------------------------- check-back


def test_checks_start_at_the_timeout_repeat_every_interval_and_park_after_the_last() -> None:
    async def scenario() -> None:
        harness = Harness()  # 6 s timeout, 60 s interval, 15 checks
        service = harness.open()
        message, transaction_id = await harness.prepare()
        prepared_ms = harness.clock.now_ms()
        harness.clock.advance(5)
        assert service.due_checks(prepared_ms + 5999) == []  # not a millisecond early
        harness.clock.advance(1)
        [request] = harness.due()
        assert (request.topic, request.transaction_id, request.check_number) == (TOPIC, transaction_id, 1)
        assert request.message == message
        assert await service.record_check(transaction_id, 1)
        assert not await service.record_check(transaction_id, 1)  # a repeated report counts once
        for number in range(2, 16):
            harness.clock.advance(59)
            assert harness.due() == []
            harness.clock.advance(1)
            [request] = harness.due()
            assert request.check_number == number
            assert await service.record_check(transaction_id, number)
        assert service.counts() == TransactionCounts(pending=0, parked=1)
        [unresolved] = service.list_unresolved()
        assert (unresolved.transaction_id, unresolved.message_id, unresolved.topic) == (
            transaction_id,
            message.message_id,
            TOPIC,
        )
        assert (unresolved.checks, unresolved.parked, unresolved.prepared_timestamp_ms) == (
            15,
            True,
            prepared_ms,
        )
        assert unresolved.born_timestamp_ms == message.born_timestamp_ms
        assert service.list_unresolved(include_parked=False) == []
        harness.clock.advance(7 * 24 * 3600)
        assert harness.due() == []  # parked: no more checks, and still there
        harness.restart("power")
        assert harness.service.counts() == TransactionCounts(pending=0, parked=1)
        assert harness.due() == []
        assert harness.visible_ids() == []
        harness.close()

    run(scenario)


def test_due_exactly_at_the_timeout_by_the_wall_clock_alone() -> None:
    async def scenario() -> None:
        harness = Harness()
        service = harness.open()
        _, transaction_id = await harness.prepare()
        prepared_ms = harness.clock.now_ms()
        assert service.due_checks(prepared_ms + 5999) == []
        [request] = service.due_checks(prepared_ms + 6000)  # the monotonic clock has not moved at all
        assert request.transaction_id == transaction_id
        assert await service.record_check(transaction_id, 1)
        recorded_ms = harness.clock.now_ms()
        assert service.due_checks(recorded_ms + 59_999) == []
        assert [r.check_number for r in service.due_checks(recorded_ms + 60_000)] == [2]
        harness.close()

    run(scenario)


def test_a_check_that_reaches_no_producer_is_offered_again_without_using_up_checks() -> None:
    async def scenario() -> None:
        harness = Harness(unreached_retry_s=5.0, max_checks=2)
        service = harness.open()
        first, first_id = await harness.prepare("a")
        second, second_id = await harness.prepare("b")
        harness.clock.advance(6)
        # Bounded scans, oldest first; one not recorded waits before it is offered again, so
        # unreachable producers of one topic do not starve the others.
        assert [request.transaction_id for request in harness.due(max_count=1)] == [first_id]
        assert [request.transaction_id for request in harness.due(max_count=1)] == [second_id]
        assert harness.due() == []
        harness.clock.advance(4)
        assert harness.due() == []
        harness.clock.advance(1)
        assert [request.check_number for request in harness.due()] == [1, 1]
        for _ in range(30):
            harness.clock.advance(60)
            assert [request.check_number for request in harness.due()] == [1, 1]
        assert service.counts() == TransactionCounts(pending=2, parked=0)
        harness.clock.advance(5)
        assert await service.record_check(first_id, 1)
        assert [unresolved.checks for unresolved in service.list_unresolved()] == [1, 0]
        await harness.rollback(first, first_id)
        await harness.commit(second, second_id)
        assert harness.visible_ids("b") == [second.message_id]
        harness.close()

    run(scenario)


def test_a_producer_answering_a_check_resolves_it() -> None:
    async def scenario() -> None:
        harness = Harness()
        service = harness.open()
        committed, _ = await harness.prepare()
        rolled_back, _ = await harness.prepare()
        harness.clock.advance(6)
        requests = harness.due()
        assert [request.message.message_id for request in requests] == [
            committed.message_id,
            rolled_back.message_id,
        ]
        for request, commit in zip(requests, (True, False), strict=True):
            await service.end(
                request.topic, request.message.message_id, request.transaction_id, commit, "check"
            )
            assert not await service.record_check(request.transaction_id, request.check_number)
        assert harness.visible_ids() == [committed.message_id]
        assert service.counts() == TransactionCounts(0, 0)
        harness.clock.advance(3600)
        assert harness.due() == []
        harness.close()

    run(scenario)


@pytest.mark.parametrize("commit", [True, False])
def test_an_operator_resolves_a_parked_transaction(commit: bool) -> None:
    async def scenario() -> None:
        harness = Harness(max_checks=2)
        service = harness.open()
        message, _ = await harness.prepare()
        harness.clock.advance(6)
        assert len(await harness.check_all()) == 1
        harness.clock.advance(60)
        assert len(await harness.check_all()) == 1
        assert service.counts() == TransactionCounts(pending=0, parked=1)
        [parked] = service.list_unresolved()
        await service.end(parked.topic, parked.message_id, parked.transaction_id, commit, "admin")
        expected = [message.message_id] if commit else []
        assert harness.visible_ids() == expected
        assert service.counts() == TransactionCounts(0, 0) and service.list_unresolved() == []
        harness.restart("power")
        assert harness.visible_ids() == expected
        assert harness.service.counts() == TransactionCounts(0, 0)
        harness.close()

    run(scenario)


def test_parking_is_recorded_so_a_changed_max_checks_does_not_undo_it() -> None:
    async def scenario() -> None:
        harness = Harness(max_checks=2)
        harness.open()
        _, parked_id = await harness.prepare()
        harness.clock.advance(6)
        await harness.check_all()
        harness.clock.advance(60)
        await harness.check_all()
        _, checked_id = await harness.prepare()
        harness.clock.advance(6)
        await harness.check_all()
        harness.options["max_checks"] = 5  # raised: the parked one stays parked
        service = harness.restart("power")
        assert [(u.transaction_id, u.parked) for u in service.list_unresolved()] == [
            (parked_id, True),
            (checked_id, False),
        ]
        harness.clock.advance(3600)
        assert [request.transaction_id for request in harness.due()] == [checked_id]
        harness.options["max_checks"] = 1  # lowered: out of checks counts as parked, unchecked
        service = harness.restart("clean")
        assert service.counts() == TransactionCounts(pending=0, parked=2)
        assert harness.due() == []
        harness.close()

    run(scenario)


def test_a_transaction_being_ended_is_not_offered_for_a_check() -> None:
    async def scenario() -> None:
        harness = Harness()
        harness.open()
        message, transaction_id = await harness.prepare()
        harness.clock.advance(6)
        ending = asyncio.create_task(harness.commit(message, transaction_id))
        await asyncio.sleep(0)  # the commit holds the transaction, its publish under way
        assert harness.due() == []
        await ending
        assert harness.due() == []
        assert harness.visible_ids() == [message.message_id]
        harness.close()

    run(scenario)


def test_a_half_stored_in_the_same_millisecond_as_a_scan_is_still_checked() -> None:
    async def scenario() -> None:
        harness = Harness()
        service = harness.open()
        _, first_id = await harness.prepare()
        harness.clock.advance(6)
        scan_ms = harness.clock.now_ms()
        [request] = harness.due()
        assert request.transaction_id == first_id
        _, second_id = await harness.prepare()  # same millisecond as the scan
        _, third_id = await harness.prepare()  # and as each other
        assert harness.clock.now_ms() == scan_ms
        assert await service.record_check(first_id, 1)
        assert harness.due() == []
        harness.clock.advance(5)
        assert harness.due() == []
        harness.clock.advance(1)
        assert [(r.transaction_id, r.check_number) for r in harness.due()] == [(second_id, 1), (third_id, 1)]
        harness.close()

    run(scenario)


def test_a_wall_clock_stepped_back_neither_brings_checks_early_nor_holds_them_back() -> None:
    async def scenario() -> None:
        harness = Harness()
        service = harness.open()
        _, transaction_id = await harness.prepare()
        harness.clock.jump_wall_ms(-10 * 60 * 1000)
        harness.clock.advance(5)
        assert harness.due() == []
        harness.clock.advance(1)
        [request] = harness.due()
        assert await service.record_check(transaction_id, request.check_number)
        harness.clock.jump_wall_ms(-10 * 60 * 1000)
        harness.clock.advance(59)
        assert harness.due() == []
        harness.clock.advance(1)
        assert [request.check_number for request in harness.due()] == [2]

        # After a restart only wall times are known: one from the future counts from now.
        _, later_id = await harness.prepare()
        harness.clock.jump_wall_ms(-10 * 60 * 1000)
        harness.restart("power")
        harness.clock.advance(5)
        assert [request.transaction_id for request in harness.due()] == []
        harness.clock.advance(1)
        assert later_id in [request.transaction_id for request in harness.due()]
        harness.close()

    run(scenario)


def test_a_wall_clock_stepped_forward_brings_due_checks_on_but_none_early() -> None:
    async def scenario() -> None:
        harness = Harness()
        service = harness.open()
        _, first_id = await harness.prepare()
        harness.clock.advance(1)
        harness.clock.jump_wall_ms(10 * 60 * 1000)
        [request] = harness.due()
        assert request.transaction_id == first_id
        assert await service.record_check(first_id, 1)
        _, second_id = await harness.prepare()
        harness.clock.advance(5)
        assert harness.due() == []
        harness.clock.advance(1)
        assert [request.transaction_id for request in harness.due()] == [second_id]
        harness.close()

    run(scenario)


# ---------------------------------------------------------------------- restarts and faults


@pytest.mark.parametrize(
    ("disk_kind", "how"),
    [("simulated", how) for how in RESTARTS] + [("os", "clean"), ("os", "halt")],
)
def test_every_state_survives_a_restart(tmp_path: Path, disk_kind: str, how: Restart) -> None:
    async def scenario() -> None:
        if disk_kind == "os":
            harness = Harness(OsDisk(), str(tmp_path / "data"), max_checks=3)
        else:
            harness = Harness(max_checks=3)
        service = harness.open()
        parked, parked_id = await harness.prepare()
        harness.clock.advance(6)
        assert len(await harness.check_all()) == 1
        harness.clock.advance(60)
        assert len(await harness.check_all()) == 1
        checked, checked_id = await harness.prepare()
        harness.clock.advance(60)
        assert len(await harness.check_all()) == 2  # the third check parks the first
        harness.clock.advance(60)
        assert len(await harness.check_all()) == 1
        committed, committed_id = await harness.prepare()
        rolled_back, rolled_back_id = await harness.prepare()
        fresh, fresh_id = await harness.prepare()
        await harness.commit(committed, committed_id)
        await harness.rollback(rolled_back, rolled_back_id)
        before = service.list_unresolved()
        assert [(u.transaction_id, u.checks, u.parked) for u in before] == [
            (parked_id, 3, True),
            (checked_id, 2, False),
            (fresh_id, 0, False),
        ]

        service = harness.restart(how)
        assert service.list_unresolved() == before
        assert service.counts() == TransactionCounts(pending=2, parked=1)
        assert harness.visible_ids() == [committed.message_id]
        await harness.commit(committed, committed_id)
        await harness.rollback(rolled_back, rolled_back_id)
        with pytest.raises(BrokerError) as error:
            await harness.rollback(committed, committed_id)
        refused(error)

        # The timers carry on from the stored times.
        assert harness.due() == []
        harness.clock.advance(6)
        [request] = await harness.check_all()
        assert (request.transaction_id, request.check_number) == (fresh_id, 1)
        harness.clock.advance(54)
        [request] = await harness.check_all()
        assert (request.transaction_id, request.check_number) == (checked_id, 3)
        assert service.counts() == TransactionCounts(pending=1, parked=2)

        await harness.commit(fresh, fresh_id)
        await harness.commit(parked, parked_id, "admin")
        await harness.rollback(checked, checked_id, "admin")
        expected = [committed.message_id, fresh.message_id, parked.message_id]
        assert harness.visible_ids() == expected
        service = harness.restart(how)
        assert harness.visible_ids() == expected
        assert service.counts() == TransactionCounts(0, 0)
        harness.clock.advance(24 * 3600)
        assert harness.due() == []
        harness.close()

    run(scenario)


@pytest.mark.parametrize("how", ["halt", "power"])
def test_a_crash_between_publish_and_commit_record_publishes_again_but_loses_nothing(how: Restart) -> None:
    async def scenario() -> None:
        harness = Harness()
        harness.open()
        message, transaction_id = await harness.prepare()
        harness.publisher.after_publish = lambda: harness.stop(how)
        with pytest.raises(BrokerError):
            await harness.commit(message, transaction_id)
        service = harness.open()
        assert harness.visible_ids() == [message.message_id]  # the publish was durable
        assert service.counts() == TransactionCounts(1, 0)  # the decision was not
        harness.clock.advance(6)
        [request] = harness.due()
        await service.end(TOPIC, message.message_id, request.transaction_id, True, "check")
        # A duplicate with the same message id: allowed (at least once), never a loss.
        assert harness.visible_ids() == [message.message_id, message.message_id]
        with pytest.raises(BrokerError) as error:
            await harness.rollback(message, transaction_id)
        refused(error)
        harness.close()

    run(scenario)


def test_a_commit_whose_record_was_refused_is_completed_without_publishing_again() -> None:
    async def scenario() -> None:
        harness = Harness()
        service = harness.open()
        message, transaction_id = await harness.prepare()
        disk = harness.disk
        assert isinstance(disk, SimulatedDisk)

        def fill_disk() -> None:
            disk.set_capacity(1)
            harness.store.guard.refresh()

        harness.publisher.after_publish = fill_disk
        with pytest.raises(BrokerError) as error:
            await harness.commit(message, transaction_id)
        refused(error, "TOO_MANY_REQUESTS")  # a clean refusal: the store is not fenced
        with pytest.raises(BrokerError) as error:
            await harness.rollback(message, transaction_id)
        assert "published" in refused(error)
        disk.set_capacity(None)
        harness.store.guard.refresh()
        await harness.commit(message, transaction_id)
        assert harness.published == [message]
        assert harness.visible_ids() == [message.message_id]
        assert service.counts() == TransactionCounts(0, 0)
        harness.restart("power")
        assert harness.visible_ids() == [message.message_id]
        assert harness.service.counts() == TransactionCounts(0, 0)
        harness.close()

    run(scenario)


def test_a_published_commit_whose_record_failed_cannot_be_rolled_back() -> None:
    async def scenario() -> None:
        harness = Harness()
        harness.open()
        message, transaction_id = await harness.prepare()
        disk = harness.disk
        assert isinstance(disk, SimulatedDisk)
        harness.publisher.after_publish = lambda: disk.fail_next_sync(errno.EIO, "commitlog")
        with pytest.raises(BrokerError) as error:
            await harness.commit(message, transaction_id)
        refused(error, "INTERNAL_SERVER_ERROR")  # the store fenced itself
        with pytest.raises(BrokerError) as error:
            await harness.rollback(message, transaction_id)
        assert "published" in refused(error)
        with pytest.raises(BrokerError) as error:
            await harness.commit(message, transaction_id)
        refused(error, "INTERNAL_SERVER_ERROR")
        assert harness.published == [message]  # the retry did not publish again
        service = harness.restart("power")
        assert harness.visible_ids() == [message.message_id]
        assert service.counts() == TransactionCounts(1, 0)
        await harness.commit(message, transaction_id)
        assert service.counts() == TransactionCounts(0, 0)
        assert harness.visible_ids().count(message.message_id) >= 1
        harness.close()

    run(scenario)


def test_a_prepare_that_was_not_durable_is_refused_and_leaves_nothing_to_resolve() -> None:
    async def scenario() -> None:
        harness = Harness()
        service = harness.open()
        disk = harness.disk
        assert isinstance(disk, SimulatedDisk)
        disk.fail_next_sync(errno.EIO, "commitlog")
        with pytest.raises(BrokerError) as error:
            await service.prepare(harness.message())
        refused(error, "INTERNAL_SERVER_ERROR")
        assert service.counts() == TransactionCounts(0, 0)
        assert service.progress() == (0, 0)
        service = harness.restart("power")
        assert service.counts() == TransactionCounts(0, 0)
        message, transaction_id = await harness.prepare()
        await harness.commit(message, transaction_id)
        assert harness.visible_ids() == [message.message_id]
        harness.close()

    run(scenario)


def test_the_progress_point_never_passes_a_prepare_still_in_flight() -> None:
    async def scenario() -> None:
        harness = Harness()
        service = harness.open()
        store = harness.store
        held: list[Callable[[BaseException | None], None]] = []
        register = store.add_durability_callback

        def hold_the_first(end_offset: int, callback: Callable[[BaseException | None], None]) -> None:
            if held:
                register(end_offset, callback)
            else:
                held.append(callback)  # its durability is reported only when the test says so

        store.add_durability_callback = hold_the_first  # type: ignore[method-assign]
        first = harness.message()
        first_task = asyncio.create_task(service.prepare(first))
        while not held:  # appended at offset 0 (at the end of a loop pass), now waiting
            await asyncio.sleep(0)
        second, second_id = await harness.prepare()  # offset 1, done first
        assert service.progress() == (0, 0)
        assert service.save_progress()
        store.add_durability_callback = register  # type: ignore[method-assign]
        held[0](None)
        first_id = (await first_task).transaction_id  # acknowledged: it must survive anything now
        harness.restart("halt")  # the progress file saved above is all the next start has
        assert {u.transaction_id for u in harness.service.list_unresolved()} == {first_id, second_id}
        await harness.commit(first, first_id)
        await harness.commit(second, second_id)
        assert harness.visible_ids() == [first.message_id, second.message_id]
        harness.close()

    run(scenario)


@pytest.mark.parametrize("how", ["clean", "halt"])
def test_a_damaged_half_record_is_reported_and_skipped_and_the_others_recover(how: Restart) -> None:
    async def scenario() -> None:
        harness = Harness()
        harness.open()
        prepared = [await harness.prepare() for _ in range(600)]  # past one replay batch
        damaged = harness.visible(HALF_TOPIC)[300]
        segment = harness.store.log.segment_for(damaged.physical_offset)
        assert segment is not None
        harness.stop(how)
        handle = harness.disk.open(segment.path)
        position = damaged.physical_offset - segment.base_offset + damaged.size - 1
        handle.pwrite(bytes([handle.pread(1, position)[0] ^ 0xFF]), position)  # a bit flip in the body
        handle.sync()
        handle.close()
        service = harness.open()
        assert service.recovery is not None and service.recovery.records_skipped == 1
        expected = [transaction_id for index, (_, transaction_id) in enumerate(prepared) if index != 300]
        assert [u.transaction_id for u in service.list_unresolved()] == expected
        for message, transaction_id in prepared[:2] + prepared[-2:]:
            await harness.commit(message, transaction_id)
        assert len(harness.visible_ids()) == 4
        harness.close()

    run(scenario)


def test_unresolved_transactions_are_bounded_with_a_clear_retriable_error() -> None:
    async def scenario() -> None:
        harness = Harness(max_unresolved=2)
        service = harness.open()
        first, first_id = await harness.prepare()
        await harness.prepare()
        with pytest.raises(BrokerError) as error:
            await harness.prepare()
        assert "unresolved" in refused(error, "TOO_MANY_REQUESTS") and error.value.retriable
        await harness.rollback(first, first_id)
        outcomes = await asyncio.gather(
            *(service.prepare(harness.message()) for _ in range(3)), return_exceptions=True
        )
        assert sum(isinstance(outcome, SendReceipt) for outcome in outcomes) == 1
        for outcome in outcomes:
            assert isinstance(outcome, SendReceipt) or (
                isinstance(outcome, BrokerError) and outcome.code == "TOO_MANY_REQUESTS"
            )
        service = harness.restart("power")
        assert service.counts() == TransactionCounts(2, 0)
        with pytest.raises(BrokerError) as error:
            await harness.prepare()
        refused(error, "TOO_MANY_REQUESTS")
        harness.close()

    run(scenario)


# ---------------------------------------------------------------------- progress, renewal, retention


def test_the_progress_file_shortens_the_replay_and_losing_it_only_lengthens_it() -> None:
    async def scenario() -> None:
        harness = Harness()
        service = harness.open()
        for _ in range(20):
            await harness.commit(*await harness.prepare())
        pending, pending_id = await harness.prepare()
        for _ in range(5):
            await harness.commit(*await harness.prepare())
        assert service.progress() == (20, 20)
        assert service.retention_progress() == {(HALF_TOPIC, 0): 20, (HALF_OPS_TOPIC, 0): 20}
        assert service.save_progress()
        assert not service.save_progress()  # unchanged: not written again

        service = harness.restart("power")
        recovery = service.recovery
        assert recovery is not None and recovery.progress_file_used
        assert (recovery.half_from, recovery.halves_replayed, recovery.ops_from, recovery.ops_replayed) == (
            20,
            6,
            20,
            5,
        )
        assert [u.transaction_id for u in service.list_unresolved()] == [pending_id]

        harness.stop("clean")
        path = os.path.join(harness.data_dir, PROGRESS_FILE)
        handle = harness.disk.open(path)
        handle.pwrite(b"\xff", 14)  # damage the payload: the frame's checksum no longer matches
        handle.sync()
        handle.close()
        service = harness.open()
        recovery = service.recovery
        assert recovery is not None and not recovery.progress_file_used
        assert (recovery.halves_replayed, recovery.ops_replayed) == (26, 25)
        assert [u.transaction_id for u in service.list_unresolved()] == [pending_id]

        harness.stop("halt")
        harness.disk.remove(path)
        service = harness.open()
        assert service.recovery is not None and service.recovery.halves_replayed == 26

        harness.stop("halt")  # a progress file that does not belong to these queues is ignored
        write_framed_file(harness.disk, path, encode_progress(1_000_000, 1_000_000))
        service = harness.open()
        assert service.recovery is not None and not service.recovery.progress_file_used
        assert [u.transaction_id for u in service.list_unresolved()] == [pending_id]
        await harness.commit(pending, pending_id)
        assert harness.visible_ids().count(pending.message_id) == 1
        harness.close()

    run(scenario)


def test_renewal_moves_an_old_parked_transaction_forward_and_keeps_its_state() -> None:
    async def scenario() -> None:
        harness = Harness(max_checks=2, renew_after_s=600)
        service = harness.open()
        message, transaction_id = await harness.prepare(tag="TagA", keys=("k",), properties={"p": "1"})
        prepared_ms = harness.clock.now_ms()
        harness.clock.advance(6)
        await harness.check_all()
        harness.clock.advance(60)
        await harness.check_all()
        for _ in range(30):
            await harness.commit(*await harness.prepare())
        assert service.progress() == (0, 0)  # the parked one holds everything back
        assert await service.renew_old_halves(harness.clock.now_ms()) == 0  # not old enough yet
        harness.clock.advance(600)
        assert await service.renew_old_halves(harness.clock.now_ms()) == 1
        assert await service.renew_old_halves(harness.clock.now_ms()) == 0  # the copy is new
        assert service.progress() == (31, 33)
        assert service.save_progress()

        service = harness.restart("power")
        recovery = service.recovery
        assert recovery is not None and (recovery.halves_replayed, recovery.ops_replayed) == (1, 0)
        [unresolved] = service.list_unresolved()
        assert (unresolved.transaction_id, unresolved.checks, unresolved.parked) == (transaction_id, 2, True)
        assert unresolved.prepared_timestamp_ms == prepared_ms
        assert unresolved.born_timestamp_ms == message.born_timestamp_ms
        await harness.commit(message, transaction_id, "admin")
        [record] = [record for record in harness.visible() if record.message_id == message.message_id]
        got = from_record(record)
        assert (got.topic, got.body, got.tag, got.keys, got.properties) == (
            TOPIC,
            message.body,
            "TagA",
            ("k",),
            {"p": "1"},
        )
        assert service.progress() == (32, 34)
        harness.close()

    run(scenario)


def test_renewal_of_a_pending_transaction_keeps_its_check_schedule() -> None:
    async def scenario() -> None:
        harness = Harness(renew_after_s=30, message_cache_bytes=0)  # read every half from the log
        service = harness.open()
        message, transaction_id = await harness.prepare()
        harness.clock.advance(6)
        [request] = await harness.check_all()
        assert request.message == message
        harness.clock.advance(30)
        assert await service.renew_old_halves(harness.clock.now_ms()) == 1
        service = harness.restart("halt")  # no progress file: the original half is replayed too
        assert service.progress() == (1, 1)  # the copy, not the original, is what is kept
        harness.clock.advance(29)
        assert harness.due() == []
        harness.clock.advance(1)
        [request] = harness.due()
        assert (request.transaction_id, request.check_number, request.message) == (transaction_id, 2, message)
        harness.close()

    run(scenario)


# ---------------------------------------------------------------------- layouts


def test_op_records_and_the_progress_payload_round_trip_and_refuse_garbage() -> None:
    transaction_id = format_transaction_id(7, 0xDEADBEEF)
    assert parse_transaction_id(transaction_id) == 7
    op = Op(OpKind.CHECKED, OpSource.BROKER, 3, -5, transaction_id, TOPIC, "MSG1")
    record = op_record(op)
    stored = StoredRecord(
        topic=record.topic,
        queue_id=0,
        queue_offset=0,
        physical_offset=0,
        size=0,
        flags=0,
        born_timestamp_ms=0,
        store_timestamp_ms=0,
        message_id="",
        tag=None,
        keys=tuple(record.keys),
        properties=dict(record.properties),
        body=record.body,
    )
    assert decode_op(stored) == op
    for body in (
        b"",
        record.body[:-1],
        b"\x02" + record.body[1:],
        record.body[:1] + b"\x09" + record.body[2:],
    ):
        with pytest.raises(ValueError):
            decode_op(StoredRecord(**{**_fields(stored), "body": body}))
    with pytest.raises(ValueError):
        decode_op(StoredRecord(**{**_fields(stored), "keys": ()}))
    assert decode_progress(encode_progress(3, 4)) == (3, 4)
    assert decode_progress(b"\x02" + encode_progress(3, 4)[1:]) is None
    assert decode_progress(b"short") is None


def _fields(record: StoredRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in StoredRecord.__slots__}


# ---------------------------------------------------------------------- random histories


@pytest.mark.parametrize("seed", range(6))
def test_random_histories_match_a_simple_model(seed: int) -> None:
    """Prepare, end (every way), check, wait, renew, save and restart (every way), at random."""

    async def scenario() -> None:
        chooser = random.Random(seed)
        harness = Harness(
            seed=seed, max_checks=3, renew_after_s=120, max_remembered_outcomes=3, message_cache_bytes=30
        )
        service = harness.open()
        model: dict[str, tuple[Message, str]] = {}  # transaction id -> (message, state)

        def check_against_model() -> None:
            pending = {tid for tid, (_, state) in model.items() if state == "pending"}
            assert {u.transaction_id for u in service.list_unresolved(max_count=10_000)} == pending
            expected = Counter(
                message.message_id for message, state in model.values() if state == "committed"
            )
            visible = Counter(harness.visible_ids("a") + harness.visible_ids("b"))
            assert visible == expected  # each committed exactly once, nothing else

        for _ in range(160):
            action = chooser.choices(
                ["prepare", "end", "check", "wait", "renew", "save", "restart"], [30, 30, 15, 15, 4, 3, 3]
            )[0]
            if action == "prepare":
                message, transaction_id = await harness.prepare(chooser.choice(["a", "b"]))
                model[transaction_id] = (message, "pending")
            elif action == "end" and model:
                transaction_id = chooser.choice(sorted(model))
                message, state = model[transaction_id]
                commit = chooser.random() < 0.5
                source = chooser.choice(SOURCES)
                wanted = "committed" if commit else "rolled back"
                if state in ("pending", wanted):
                    await harness.end(message, transaction_id, commit, source)
                    model[transaction_id] = (message, wanted)
                else:
                    with pytest.raises(BrokerError) as error:
                        await harness.end(message, transaction_id, commit, source)
                    refused(error)
            elif action == "check":
                for request in harness.due():
                    assert model[request.transaction_id][1] == "pending"
                    assert request.message == model[request.transaction_id][0]
                    roll = chooser.random()
                    if roll < 0.6:
                        assert await service.record_check(request.transaction_id, request.check_number)
                    elif roll < 0.8:
                        await service.end(
                            request.topic, request.message.message_id, request.transaction_id, True, "check"
                        )
                        model[request.transaction_id] = (request.message, "committed")
            elif action == "wait":
                harness.clock.advance(chooser.choice([1, 5, 6, 30, 61, 200]))
            elif action == "renew":
                await service.renew_old_halves(harness.clock.now_ms())
            elif action == "save":
                service.save_progress()
            elif action == "restart":
                service = harness.restart(chooser.choice(RESTARTS))
                check_against_model()
        check_against_model()
        harness.close()

    run(scenario)
