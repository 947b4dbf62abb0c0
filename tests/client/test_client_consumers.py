"""AsyncPushConsumer and AsyncSimpleConsumer against the in-process fake broker."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections import defaultdict

import pytest
from client_fake_broker import Code, FakeBroker
from client_helpers import FAST, run, wait_until

from homing.client import (
    AsyncProducer,
    AsyncPushConsumer,
    AsyncSimpleConsumer,
    ClientStateError,
    FilterExpression,
    InvalidArgumentError,
    Message,
    ReceivedMessage,
    RetryPolicy,
)
from homing.protocol import definition_pb2


async def publish(broker: FakeBroker, *messages: Message) -> list[str]:
    async with AsyncProducer(broker.endpoint, timings=FAST) as producer:
        receipts = [await producer.send(message) for message in messages]
    return [receipt.message_id for receipt in receipts]


def push_consumer(broker: FakeBroker, group: str = "billing", **options: object) -> AsyncPushConsumer:
    return AsyncPushConsumer(
        broker.endpoint,
        group=group,
        timings=FAST,
        assignment_interval_s=0.2,
        **options,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------------------------------------
# Push consumer


def test_push_consumer_acks_after_the_handler_returns() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            ids = await publish(broker, *(Message("orders", f"m{i}".encode(), tag="paid") for i in range(5)))
            seen: list[tuple[str, bool]] = []
            consumer = push_consumer(broker)

            @consumer.subscribe("orders", tag="paid")
            async def handle(message: ReceivedMessage) -> None:
                # Not acked while the handler runs.
                seen.append((message.message_id, message.message_id in {i for _, i in broker.acks}))

            async with consumer:
                await wait_until(lambda: len(broker.acks) == 5, what="five acks")
            assert sorted(message_id for message_id, _ in seen) == sorted(ids)
            assert not any(acked_before for _, acked_before in seen)
            assert {group for group, _ in broker.acks} == {"billing"}
            assert broker.nacks == []
            (request, *_) = broker.receive_requests
            assert request.auto_renew and not request.HasField("invisible_duration")
            assert request.filter_expression.expression == "paid"
            assert request.group.name == "billing"
            (peer,) = [
                p for p in broker.peers.values() if p.settings[0].client_type == definition_pb2.PUSH_CONSUMER
            ]
            subscription = peer.settings[0].subscription
            assert subscription.group.name == "billing"
            assert [(e.topic.name, e.expression.expression) for e in subscription.subscriptions] == [
                ("orders", "paid")
            ]
            assert broker.terminations[-1][1].group.name == "billing"

    run(scenario())


def test_an_exception_nacks_with_the_backoff_and_the_message_comes_back() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:  # consumer backoff from its settings: 0.05 s
            (message_id,) = await publish(broker, Message("orders", b"x"))
            attempts: list[int] = []
            consumer = push_consumer(broker)

            @consumer.subscribe("orders")
            def handle(message: ReceivedMessage) -> None:  # a plain function: runs in a thread
                attempts.append(message.delivery_attempt)
                if message.delivery_attempt < 3:
                    raise ValueError("not yet")

            async with consumer:
                await wait_until(lambda: len(broker.acks) == 1, what="the third delivery to be acked")
            assert attempts == [1, 2, 3]
            assert broker.nacks == [("billing", message_id, 0.05), ("billing", message_id, 0.05)]
            assert broker.acks == [("billing", message_id)]

    run(scenario())


def test_a_retry_policy_sets_the_nack_backoff_per_attempt() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            await publish(broker, Message("orders", b"x"))
            consumer = push_consumer(broker, retry_policy=RetryPolicy(max_attempts=5, delays_s=(0.01, 0.02)))

            @consumer.subscribe("orders")
            async def handle(message: ReceivedMessage) -> None:
                raise RuntimeError("always")

            async with consumer:
                await wait_until(lambda: len(broker.nacks) >= 3, what="three nacks")
            assert [seconds for _, _, seconds in broker.nacks[:3]] == [0.01, 0.02, 0.02]
            assert broker.acks == []

    run(scenario())


def test_concurrency_is_bounded() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            await publish(broker, *(Message("orders", b"x") for _ in range(12)))
            running = 0
            peak = 0
            release = asyncio.Event()
            consumer = push_consumer(broker, max_concurrency=3)

            @consumer.subscribe("orders")
            async def handle(message: ReceivedMessage) -> None:
                nonlocal running, peak
                running += 1
                peak = max(peak, running)
                await release.wait()
                running -= 1

            async with consumer:
                await wait_until(lambda: running == 3, what="three handlers")
                await asyncio.sleep(0.2)  # bounded: more would have started by now if allowed
                assert running == 3
                # Nothing beyond the three is held: the broker still has the rest.
                assert len(broker.in_flight_ids()) == 3
                release.set()
                await wait_until(lambda: len(broker.acks) == 12, what="every ack")
            assert peak == 3
            assert all(request.batch_size <= 3 for request in broker.receive_requests)

    run(scenario())


def test_graceful_shutdown_finishes_running_handlers_and_acks_nothing_else() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            ids = await publish(broker, *(Message("orders", f"m{i}".encode()) for i in range(2)))
            started = asyncio.Event()
            finish = asyncio.Event()
            consumer = push_consumer(broker, max_concurrency=1)

            @consumer.subscribe("orders")
            async def handle(message: ReceivedMessage) -> None:
                started.set()
                await finish.wait()

            await consumer.start()
            await started.wait()
            closing = asyncio.ensure_future(consumer.close())
            await asyncio.sleep(0.1)
            assert not closing.done()  # waiting for the handler
            finish.set()
            await closing
            # The running one finished and was acked; the other was never taken nor acked.
            assert broker.acks == [("billing", ids[0])]
            assert broker.nacks == []
            assert broker.methods_called()[-1] == "NotifyClientTermination"

    run(scenario())


def test_a_handler_past_the_shutdown_timeout_is_cancelled_and_not_acked() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            await publish(broker, Message("orders", b"x"))
            cancelled = asyncio.Event()
            consumer = push_consumer(broker, shutdown_timeout_s=0.2)

            @consumer.subscribe("orders")
            async def handle(message: ReceivedMessage) -> None:
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    cancelled.set()
                    raise

            await consumer.start()
            await wait_until(lambda: len(broker.in_flight_ids()) == 1, what="the delivery")
            await consumer.close()
            assert cancelled.is_set()
            assert broker.acks == [] and broker.nacks == []

    run(scenario())


def test_fifo_groups_run_one_message_at_a_time_in_order() -> None:
    async def scenario() -> None:
        async with FakeBroker(fifo_groups=frozenset({"billing"}), queues_per_topic=1) as broker:
            messages = [
                Message("orders", f"{group}-{i}".encode(), message_group=group)
                for i in range(4)
                for group in "ab"
            ]
            await publish(broker, *messages)
            order: dict[str, list[str]] = defaultdict(list)
            running: dict[str, int] = defaultdict(int)
            overlap = []
            consumer = push_consumer(broker, max_concurrency=8)

            @consumer.subscribe("orders")
            async def handle(message: ReceivedMessage) -> None:
                group = message.message_group or ""
                running[group] += 1
                overlap.append(running[group])
                await asyncio.sleep(0.01)
                order[group].append(message.body.decode())
                running[group] -= 1

            async with consumer:
                await wait_until(lambda: len(broker.acks) == 8, what="every ack")
            assert order["a"] == [f"a-{i}" for i in range(4)]
            assert order["b"] == [f"b-{i}" for i in range(4)]
            assert max(overlap) == 1
            # A FIFO group is assigned every queue.
            assert all(request.message_queue.id >= 0 for request in broker.receive_requests)

    run(scenario())


def test_fifo_failure_returns_the_rest_of_the_group_instead_of_running_it_out_of_order() -> None:
    async def scenario() -> None:
        async with FakeBroker(fifo_groups=frozenset({"billing"}), queues_per_topic=1) as broker:
            await publish(broker, *(Message("orders", f"{i}".encode(), message_group="g") for i in range(3)))
            handled: list[tuple[str, int]] = []
            consumer = push_consumer(broker)

            @consumer.subscribe("orders")
            async def handle(message: ReceivedMessage) -> None:
                handled.append((message.body.decode(), message.delivery_attempt))
                if message.body == b"0" and message.delivery_attempt == 1:
                    raise RuntimeError("first try fails")

            async with consumer:
                await wait_until(lambda: len(broker.acks) == 3, what="every ack")
            bodies = [body for body, _ in handled]
            # "1" and "2" never ran before "0" succeeded.
            assert bodies.index("0", 1) < bodies.index("1") < bodies.index("2")
            assert handled[0] == ("0", 1)

    run(scenario())


def test_subscriptions_are_checked() -> None:
    consumer = AsyncPushConsumer("127.0.0.1:1", group="g")
    with pytest.raises(InvalidArgumentError, match="tag or sql"):
        consumer.subscribe("orders", tag="a", sql="b")
    consumer.subscribe("orders", lambda message: None, sql="a > 1")
    with pytest.raises(InvalidArgumentError, match="already has a handler"):
        consumer.subscribe("orders", lambda message: None)
    with pytest.raises(InvalidArgumentError, match="invalid consumer group"):
        AsyncPushConsumer("127.0.0.1:1", group="%bad")

    async def empty() -> None:
        with pytest.raises(ClientStateError, match="subscribe to at least one topic"):
            await AsyncPushConsumer("127.0.0.1:1", group="g").start()

    run(empty())


def test_receive_failures_back_off_and_recover() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            broker.receive_failures = [Code.TOO_MANY_REQUESTS, Code.INTERNAL_SERVER_ERROR]
            await publish(broker, Message("orders", b"x"))
            consumer = push_consumer(broker)
            consumer.subscribe("orders", lambda message: None)
            async with consumer:
                await wait_until(lambda: len(broker.acks) == 1, what="the ack after recovery")
            # The failed receives were retried with the same attempt id.
            first, second, third = broker.receive_requests[:3]
            assert first.attempt_id == second.attempt_id == third.attempt_id

    run(scenario())


# ------------------------------------------------------------------------------------------------
# Simple consumer


def test_simple_consumer_receive_ack_and_change_invisibility() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            ids = await publish(broker, *(Message("orders", f"m{i}".encode(), tag="t") for i in range(3)))
            async with AsyncSimpleConsumer(
                broker.endpoint,
                group="audit",
                subscriptions={"orders": "t"},
                await_duration_s=0.3,
                timings=FAST,
            ) as consumer:
                messages = await consumer.receive(max_messages=2, invisible_duration=30)
                assert [m.message_id for m in messages] == ids[:2]
                (request,) = broker.receive_requests
                assert request.batch_size == 2 and not request.auto_renew
                assert request.invisible_duration.seconds == 30
                assert request.long_polling_timeout.ToMilliseconds() == 300
                await consumer.ack(messages[0])
                old_handle = messages[1].receipt_handle
                await consumer.change_invisible_duration(messages[1], 0.05)
                assert messages[1].receipt_handle != old_handle
                await asyncio.sleep(0.1)  # the changed invisibility (0.05 s) runs out
                again = await consumer.receive(max_messages=5, invisible_duration=30)
                assert sorted(m.message_id for m in again) == sorted(ids[1:])
                redelivered = next(m for m in again if m.message_id == ids[1])
                assert redelivered.delivery_attempt == 2
                for message in again:
                    await consumer.ack(message)
                assert await consumer.receive(max_messages=1, invisible_duration=30) == []
            assert [message_id for _, message_id in broker.acks] == [ids[0], *(m.message_id for m in again)]
            assert broker.nacks == [("audit", ids[1], 0.05)]

    run(scenario())


def test_simple_consumer_ack_with_a_stale_receipt_handle_fails() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            await publish(broker, Message("orders", b"x"))
            async with AsyncSimpleConsumer(
                broker.endpoint, group="audit", subscriptions={"orders": FilterExpression.tag()}, timings=FAST
            ) as consumer:
                (message,) = await consumer.receive(invisible_duration=30)
                await consumer.ack(message)
                from homing.client import BadRequestError

                with pytest.raises(BadRequestError) as raised:
                    await consumer.ack(message)
                assert raised.value.code_name == "INVALID_RECEIPT_HANDLE"

    run(scenario())


def test_simple_consumer_ack_many_sends_one_call_per_topic_with_per_message_outcomes() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            await publish(
                broker,
                *(Message("orders", f"o{i}".encode()) for i in range(4)),
                *(Message("refunds", f"r{i}".encode()) for i in range(2)),
            )
            async with AsyncSimpleConsumer(
                broker.endpoint,
                group="audit",
                subscriptions={"orders": "*", "refunds": "*"},
                await_duration_s=0.3,
                timings=FAST,
            ) as consumer:
                received: list[ReceivedMessage] = []
                while len(received) < 6:
                    received += await consumer.receive(max_messages=8, invisible_duration=30)
                await consumer.ack(received[0])  # its handle is now stale: that entry alone fails
                broker.calls.clear()
                outcomes = await consumer.ack_many(received)
                assert broker.methods_called().count("AckMessage") == 2  # one per topic
                from homing.client import BadRequestError

                assert isinstance(outcomes[0], BadRequestError)
                assert outcomes[0].code_name == "INVALID_RECEIPT_HANDLE"
                assert outcomes[1:] == [None] * 5
                assert sorted(message_id for _, message_id in broker.acks) == sorted(
                    m.message_id for m in received
                )
                assert await consumer.ack_many([]) == []
                no_handle = dataclasses.replace(received[1], receipt_handle="")
                with pytest.raises(InvalidArgumentError, match="no receipt handle"):
                    await consumer.ack_many([received[1], no_handle])

    run(scenario())


def test_simple_consumer_acks_made_together_share_a_call_and_keep_their_own_outcomes() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            await publish(broker, *(Message("orders", f"o{i}".encode()) for i in range(5)))
            async with AsyncSimpleConsumer(
                broker.endpoint, group="audit", subscriptions={"orders": "*"}, timings=FAST
            ) as consumer:
                received = await consumer.receive(max_messages=8, invisible_duration=30)
                assert len(received) == 5
                await consumer.ack(received[0])
                broker.calls.clear()
                outcomes = await asyncio.gather(
                    *(consumer.ack(message) for message in received), return_exceptions=True
                )
                assert broker.methods_called().count("AckMessage") == 1
                from homing.client import BadRequestError

                assert isinstance(outcomes[0], BadRequestError)  # already acked: a stale handle
                assert outcomes[1:] == [None] * 4

    run(scenario())


def test_push_consumer_coalesces_the_acks_of_handlers_that_finish_together() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            ids = await publish(broker, *(Message("orders", f"m{i}".encode()) for i in range(20)))
            release = asyncio.Event()
            consumer = push_consumer(broker)

            @consumer.subscribe("orders")
            async def handle(message: ReceivedMessage) -> None:
                await release.wait()

            async with consumer:
                await wait_until(lambda: len(broker.receive_requests) >= 1, what="a receive")
                await asyncio.sleep(0.2)  # every message is held by a waiting handler
                broker.calls.clear()
                release.set()
                await wait_until(lambda: len(broker.acks) == 20, what="twenty acks")
                ack_calls = broker.methods_called().count("AckMessage")
            assert sorted(message_id for _, message_id in broker.acks) == sorted(ids)
            assert 1 <= ack_calls < 20

    run(scenario())


def test_simple_consumer_checks_its_arguments() -> None:
    with pytest.raises(InvalidArgumentError, match="at least one subscription"):
        AsyncSimpleConsumer("h:1", group="g", subscriptions={})
    consumer = AsyncSimpleConsumer("h:1", group="g", subscriptions={"orders": "*"})

    async def scenario() -> None:
        with pytest.raises(InvalidArgumentError, match="max_messages"):
            await consumer.receive(max_messages=0)
        with pytest.raises(InvalidArgumentError, match="invisible_duration"):
            await consumer.receive(invisible_duration=0)
        with pytest.raises(ClientStateError, match="not started"):
            await consumer.receive()

    run(scenario())


def test_handlers_in_threads_do_not_block_the_loop() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            await publish(broker, *(Message("orders", b"x") for _ in range(4)))
            barrier = threading.Barrier(4, timeout=5)
            consumer = push_consumer(broker, max_concurrency=4)

            @consumer.subscribe("orders")
            def handle(message: ReceivedMessage) -> None:
                barrier.wait()  # only passes if four handlers run at once, in four threads

            async with consumer:
                await wait_until(lambda: len(broker.acks) == 4, what="four acks")
            assert broker.nacks == []

    run(scenario())


def test_corrupted_messages_never_reach_a_handler() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            (message_id,) = await publish(broker, Message("orders", b"x"))
            broker.corrupt_digests = True
            handled: list[str] = []
            consumer = push_consumer(broker)
            consumer.subscribe("orders", lambda message: handled.append(message.message_id))
            async with consumer:
                await wait_until(lambda: len(broker.nacks) >= 1, what="the nack of the corrupted message")
            assert handled == [] and broker.acks == []
            assert broker.nacks[0][1] == message_id
            async with AsyncSimpleConsumer(
                broker.endpoint,
                group="audit",
                subscriptions={"orders": "*"},
                await_duration_s=0.2,
                timings=FAST,
            ) as simple:
                assert await simple.receive(invisible_duration=30) == []
            assert len(broker.receive_requests) >= 2

    run(scenario())
