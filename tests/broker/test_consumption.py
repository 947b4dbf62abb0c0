"""Consumption semantics on a real store (simulated disk, fake clock): the zero-loss core."""

from __future__ import annotations

import pytest

from homing.broker.errors import BrokerError
from homing.broker.filters import compile_filter
from homing.broker.metadata import GroupConfig
from homing.broker.model import Delivery
from homing.store import QueueRead
from homing.testing.in_process import FIFO, BrokerHarness, run


def test_send_receive_ack_and_nothing_is_redelivered() -> None:
    async def scenario() -> None:
        harness = BrokerHarness()
        broker = await harness.start()
        sent = [harness.message() for _ in range(10)]
        await harness.send(*sent)
        got = await harness.receive()
        assert sorted(d.message.message_id for d in got) == sorted(m.message_id for m in sent)
        assert all(d.delivery_attempt == 1 for d in got)
        for delivery in got:
            await broker.ack("g", "orders", delivery.receipt_handle)
            await broker.ack("g", "orders", delivery.receipt_handle)  # idempotent
        harness.clock.advance(3600)
        assert await harness.receive() == []
        await harness.stop()

    run(scenario)


def test_expired_delivery_comes_back_with_the_next_attempt_and_stale_handles_are_refused() -> None:
    async def scenario() -> None:
        harness = BrokerHarness()
        broker = await harness.start()
        await harness.send(harness.message())
        first = await harness.receive(invisible_s=10)
        assert len(first) == 1
        harness.clock.advance(9.9)
        assert await harness.receive(invisible_s=10) == []  # never before the invisible time ends
        harness.clock.advance(0.2)
        second = await harness.receive(invisible_s=10)
        assert [d.delivery_attempt for d in second] == [2]
        assert second[0].message.message_id == first[0].message.message_id
        with pytest.raises(BrokerError) as stale:
            await broker.ack("g", "orders", first[0].receipt_handle)
        assert stale.value.code == "INVALID_RECEIPT_HANDLE"
        await broker.ack("g", "orders", second[0].receipt_handle)
        await harness.stop()

    run(scenario)


@pytest.mark.parametrize(
    "handle",
    ["", "garbage", "v1.AAAA", "v1." + "A" * 80, "x" * 5000],
)
def test_forged_or_malformed_handles_are_refused(handle: str) -> None:
    async def scenario() -> None:
        harness = BrokerHarness()
        broker = await harness.start()
        await harness.send(harness.message())
        await harness.receive()
        with pytest.raises(BrokerError) as raised:
            await broker.ack("g", "orders", handle)
        assert raised.value.code == "INVALID_RECEIPT_HANDLE"
        await harness.stop()

    run(scenario)


def test_a_handle_of_another_group_is_refused() -> None:
    async def scenario() -> None:
        harness = BrokerHarness()
        broker = await harness.start()
        await harness.send(harness.message())
        delivery = (await harness.receive(group="a"))[0]
        await harness.receive(group="b")
        with pytest.raises(BrokerError) as raised:
            await broker.ack("b", "orders", delivery.receipt_handle)
        assert raised.value.code == "INVALID_RECEIPT_HANDLE"
        await harness.stop()

    run(scenario)


def test_nack_uses_the_group_backoff_then_dead_letters_after_the_last_attempt() -> None:
    async def scenario() -> None:
        harness = BrokerHarness()
        broker = await harness.start()
        broker.metadata.put_group(GroupConfig(name="g", max_delivery_attempts=3, backoff_s=(10, 30)))
        message = harness.message(properties={"order": "42"}, keys=("k1",))
        await harness.send(message)
        attempts = []
        for expected_wait in (10, 30):
            delivery = (await harness.receive())[0]
            attempts.append(delivery.delivery_attempt)
            await broker.change_invisible_duration("g", "orders", delivery.receipt_handle, None)  # nack
            harness.clock.advance(expected_wait - 0.5)
            assert await harness.receive() == []
            harness.clock.advance(0.5)
        delivery = (await harness.receive())[0]
        attempts.append(delivery.delivery_attempt)
        assert attempts == [1, 2, 3]
        await broker.change_invisible_duration("g", "orders", delivery.receipt_handle, 1)
        harness.clock.advance(1)
        assert await harness.receive() == []  # moved to the dead-letter queue instead
        dead = await harness.receive(group="dlq-reader", topic="%DLQ%g")
        assert len(dead) == 1
        assert dead[0].message.message_id == message.message_id
        assert dead[0].message.properties["order"] == "42"
        assert dead[0].message.keys == ("k1",)
        assert dead[0].message.topic == "%DLQ%g"
        assert broker.consumption.dead_lettered == 1
        # The original is done: no longer in flight, never moved a second time.
        harness.clock.advance(3600)
        assert await harness.receive() == []
        assert broker.consumption.dead_lettered == 1
        assert [
            (row.committed, row.in_flight) for row in broker.consumption.group_progress("g") if row.queue_end
        ] == [(1, 0)]
        await harness.stop()

    run(scenario)


def test_filters_skip_messages_without_losing_them_for_other_groups() -> None:
    async def scenario() -> None:
        harness = BrokerHarness()
        await harness.start()
        await harness.send(
            harness.message(tag="a"), harness.message(tag="b", properties={"region": "eu"}), harness.message()
        )
        only_a = await harness.receive(group="ga", message_filter=compile_filter("TAG", "a || c"))
        assert [d.message.tag for d in only_a] == ["a"]
        eu = await harness.receive(group="geu", message_filter=compile_filter("SQL92", "region = 'eu'"))
        assert [d.message.tag for d in eu] == ["b"]
        everything = await harness.receive(group="gall")
        assert len(everything) == 3
        await harness.stop()

    run(scenario)


def test_fifo_blocks_a_queue_while_in_flight_and_keeps_order_on_retry() -> None:
    async def scenario() -> None:
        harness = BrokerHarness()
        broker = await harness.start()
        broker.metadata.put_group(GroupConfig(name="g", fifo=True))
        sent = [harness.message(message_type=FIFO, message_group="order-7") for _ in range(3)]
        await harness.send(*sent)
        first = await harness.receive(max_messages=1)
        assert [d.message.message_id for d in first] == [sent[0].message_id]
        assert await harness.receive() == []  # the queue is blocked
        harness.clock.advance(31)  # the delivery expires: the same message comes back first
        again = await harness.receive(max_messages=1)
        assert [(d.message.message_id, d.delivery_attempt) for d in again] == [(sent[0].message_id, 2)]
        await broker.ack("g", "orders", again[0].receipt_handle)
        rest = await harness.receive()
        assert [d.message.message_id for d in rest] == [m.message_id for m in sent[1:]]
        await harness.stop()

    run(scenario)


@pytest.mark.parametrize("how", ["clean", "crash", "power_loss"])
def test_progress_and_in_flight_state_survive_restarts(how: str) -> None:
    async def scenario() -> None:
        harness = BrokerHarness()
        broker = await harness.start()
        sent = [harness.message() for _ in range(6)]
        await harness.send(*sent)
        got = await harness.receive(max_messages=4, invisible_s=60)
        for delivery in got[:2]:
            await broker.ack("g", "orders", delivery.receipt_handle)
        acked = {d.message.message_id for d in got[:2]}
        in_flight = {d.message.message_id for d in got[2:]}
        broker = await harness.restart(crash=how == "crash", power_loss=how == "power_loss")
        fresh = await harness.receive(invisible_s=60)
        fresh_ids = {d.message.message_id for d in fresh}
        assert not fresh_ids & acked
        assert not fresh_ids & in_flight, "still invisible after the restart"
        for delivery in fresh:
            await broker.ack("g", "orders", delivery.receipt_handle)
        harness.clock.advance(61)
        later = await harness.receive(invisible_s=60)
        assert {d.message.message_id for d in later} == in_flight
        assert all(d.delivery_attempt == 2 for d in later)
        every = acked | in_flight | fresh_ids
        assert every == {m.message_id for m in sent}
        await harness.stop()

    run(scenario)


def test_pop_state_snapshot_loss_replays_the_journal() -> None:
    async def scenario() -> None:
        harness = BrokerHarness()
        broker = await harness.start()
        await harness.send(*[harness.message() for _ in range(5)])
        got = await harness.receive(max_messages=5)
        for delivery in got[:3]:
            await broker.ack("g", "orders", delivery.receipt_handle)
        await harness.stop()
        harness.disk.remove("/data/popstate")
        await harness.start()
        harness.clock.advance(31)
        again = await harness.receive()
        assert sorted(d.message.message_id for d in again) == sorted(d.message.message_id for d in got[3:])
        await harness.stop()

    run(scenario)


def test_bad_sends_get_clear_statuses_and_store_nothing() -> None:
    async def scenario() -> None:
        harness = BrokerHarness()
        broker = await harness.start()
        before = broker.store.write_offset
        cases = {
            "ILLEGAL_TOPIC": harness.message(topic="bad topic!"),
            "MESSAGE_BODY_EMPTY": harness.message(body=b""),
            "ILLEGAL_MESSAGE_PROPERTY_KEY": harness.message(properties={"__homing.group": "x"}),
            "ILLEGAL_MESSAGE_GROUP": harness.message(message_type=FIFO),
            "ILLEGAL_MESSAGE_TAG": harness.message(tag="a|b"),
        }
        outcomes = await broker.send(list(cases.values()))
        assert [getattr(outcome, "code", None) for outcome in outcomes] == list(cases)
        big = harness.message(body=bytes(4 * 1024 * 1024 + 1))
        assert getattr((await broker.send([big]))[0], "code", None) == "MESSAGE_BODY_TOO_LARGE"
        assert broker.store.write_offset == before
        await harness.stop()

    run(scenario)


def test_a_push_nack_stops_renewal_so_the_message_comes_back_after_the_backoff() -> None:
    async def scenario() -> None:
        harness = BrokerHarness()
        broker = await harness.start()
        broker.metadata.put_group(GroupConfig(name="g", backoff_s=(5,)))
        await harness.send(harness.message())
        broker.clients.seen("client-1")
        delivery = (await harness.receive(invisible_s=None))[0]  # a push consumer
        harness.clock.advance(50)  # within 20 s of the 60 s default: renewed while the client lives
        broker.clients.seen("client-1")
        assert await broker.consumption.renew_push_deliveries() == 1
        await broker.change_invisible_duration("g", "orders", delivery.receipt_handle, None)  # nack
        harness.clock.advance(4)
        broker.clients.seen("client-1")
        assert await broker.consumption.renew_push_deliveries() == 0, "a nacked delivery is not renewed"
        harness.clock.advance(1)
        again = await harness.receive(invisible_s=None)
        assert [d.delivery_attempt for d in again] == [2]
        await harness.stop()

    run(scenario)


def test_redeliveries_are_read_in_runs_oldest_first_within_the_budget() -> None:
    async def scenario() -> None:
        harness = BrokerHarness()
        broker = await harness.start()
        sent = [harness.message() for _ in range(60)]
        await harness.send(*sent)
        first: list[Delivery] = []
        while batch := await harness.receive(invisible_s=10):
            first.extend(batch)
        assert len(first) == 60
        by_position = sorted(first, key=lambda d: (d.message.queue_id, d.message.queue_offset))
        acked = {d.message.message_id for d in by_position[::3]}  # holes: runs of two offsets
        for delivery in by_position[::3]:
            await broker.ack("g", "orders", delivery.receipt_handle)
        harness.clock.advance(11)
        assert harness.store is not None
        store = harness.store
        reads = 0
        read_queue = store.read_queue

        def counting(topic: str, queue_id: int, offset: int, count: int) -> QueueRead:
            nonlocal reads
            reads += 1
            return read_queue(topic, queue_id, offset, count)

        store.read_queue = counting  # type: ignore[method-assign,assignment]
        second: list[Delivery] = []
        while batch := await harness.receive(invisible_s=10, max_messages=7):
            assert len(batch) <= 7
            per_queue: dict[int, list[int]] = {}
            for delivery in batch:
                per_queue.setdefault(delivery.message.queue_id, []).append(delivery.message.queue_offset)
            assert all(offsets == sorted(offsets) for offsets in per_queue.values())
            second.extend(batch)
        del store.read_queue
        assert sorted(d.message.message_id for d in second) == sorted(
            m.message_id for m in sent if m.message_id not in acked
        )
        assert all(d.delivery_attempt == 2 for d in second)
        assert reads < len(second)  # runs of consecutive offsets take one read each
        for delivery in second:
            await broker.ack("g", "orders", delivery.receipt_handle)
        harness.clock.advance(3600)
        assert await harness.receive() == []
        await harness.stop()

    run(scenario)


def test_a_byte_limit_ends_a_receive_at_the_message_that_reaches_it_and_holds_nothing_back() -> None:
    async def scenario() -> None:
        harness = BrokerHarness()
        broker = await harness.start()
        sent = [harness.message(body=bytes([n]) * 1000) for n in range(10)]
        await harness.send(*sent)
        assert harness.store is not None
        harness.store.dispatch_now()

        async def receive(max_bytes: int | None) -> list[Delivery]:
            return await broker.receive(
                group="g", topic="orders", message_filter=compile_filter("TAG", "*"), max_messages=32,
                invisible_s=10, client_id="c", long_poll_timeout_s=0, max_bytes=max_bytes,
            )  # fmt: skip

        first = await receive(2500)
        assert len(first) == 3  # 1000 + 1000 + 1000 reaches 2500: the third is the last
        alone = await receive(1)
        assert len(alone) == 1  # one message always goes, whatever its size
        rest = await receive(None)
        assert len(rest) == 6
        got = [d.message.message_id for d in first + alone + rest]
        assert sorted(got) == sorted(m.message_id for m in sent)  # nothing skipped, nothing twice
        harness.clock.advance(11)  # all visible again: redeliveries obey the limit too
        again = await receive(1500)
        assert [d.delivery_attempt for d in again] == [2, 2]
        await harness.stop()

    run(scenario)
