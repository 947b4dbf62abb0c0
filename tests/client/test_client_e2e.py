"""The client against a real ``homing broker`` process on 127.0.0.1 (free port, temporary data dir)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_helpers import FAST, run

from homing.broker.metadata import GroupConfig
from homing.client import (
    AsyncProducer,
    AsyncPushConsumer,
    AsyncSimpleConsumer,
    ClientConfig,
    Credentials,
    Message,
    Producer,
    ReceivedMessage,
    SimpleConsumer,
    TransactionResolution,
    UnauthorizedError,
)
from homing.testing.broker_process import BrokerProcess, seed_metadata


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    directory = tmp_path_factory.mktemp("client-e2e")
    options = {
        # Redeliveries and released push messages come back within a test's patience.
        "retry_backoff": (1.0,),
        "push_invisible_duration_s": 2.0,
        "long_polling_timeout_s": 2.0,
        # An undecided transaction is checked back within a second or two.
        "transaction_timeout_s": 1.0,
        "transaction_check_interval_s": 1.0,
    }
    with BrokerProcess(directory / "data", options=options) as process:
        yield process


def test_send_receive_ack(broker: BrokerProcess) -> None:
    async def scenario() -> None:
        async with AsyncProducer(broker.endpoint, topics=["e2e-basic"], timings=FAST) as producer:
            first = await producer.send(
                Message("e2e-basic", b"first", tag="a", keys="k-1", properties={"p": "1"})
            )
            # Concurrent sends travel in batches; each caller still gets its own receipt.
            rest = await asyncio.gather(
                *(producer.send(Message("e2e-basic", f"m{i}".encode())) for i in range(40))
            )
        sent = {first.message_id: b"first", **{r.message_id: f"m{i}".encode() for i, r in enumerate(rest)}}
        assert len(sent) == 41
        received: dict[str, ReceivedMessage] = {}
        async with AsyncSimpleConsumer(
            broker.endpoint,
            group="e2e-basic-g",
            subscriptions={"e2e-basic": "*"},
            await_duration_s=1,
            timings=FAST,
        ) as consumer:
            while len(received) < 41:
                batch = await consumer.receive(max_messages=32, invisible_duration=30)
                assert batch, "the broker stopped delivering before every message arrived"
                for message in batch:
                    received[message.message_id] = message
                    await consumer.ack(message)
            assert await consumer.receive(max_messages=32, invisible_duration=30) == []
        assert {message_id: message.body for message_id, message in received.items()} == sent
        one = received[first.message_id]
        assert (one.tag, one.keys, dict(one.properties), one.delivery_attempt) == (
            "a",
            ("k-1",),
            {"p": "1"},
            1,
        )
        assert one.born_at is not None and one.stored_at is not None

    run(scenario())


def test_simple_consumer_redelivery_after_changed_invisibility(broker: BrokerProcess) -> None:
    async def scenario() -> None:
        async with AsyncProducer(broker.endpoint, timings=FAST) as producer:
            receipt = await producer.send(Message("e2e-invisible", b"x"))
        async with AsyncSimpleConsumer(
            broker.endpoint,
            group="e2e-invisible-g",
            subscriptions={"e2e-invisible": "*"},
            await_duration_s=3,
            timings=FAST,
        ) as consumer:
            (message,) = await consumer.receive(invisible_duration=30)
            await consumer.change_invisible_duration(message, 1)
            again = await consumer.receive(invisible_duration=30)
            assert [m.message_id for m in again] == [receipt.message_id]
            assert again[0].delivery_attempt == 2
            await consumer.ack(again[0])

    run(scenario())


def test_push_consumer_success_failure_and_redelivery(broker: BrokerProcess) -> None:
    async def scenario() -> None:
        async with AsyncProducer(broker.endpoint, timings=FAST) as producer:
            good = await producer.send(Message("e2e-push", b"good"))
            flaky = await producer.send(Message("e2e-push", b"flaky"))
        attempts: list[tuple[str, int]] = []
        done = asyncio.Event()
        consumer = AsyncPushConsumer(
            broker.endpoint, group="e2e-push-g", timings=FAST, assignment_interval_s=0.5
        )

        @consumer.subscribe("e2e-push")
        async def handle(message: ReceivedMessage) -> None:
            attempts.append((message.message_id, message.delivery_attempt))
            if message.message_id == flaky.message_id and message.delivery_attempt == 1:
                raise RuntimeError("first delivery fails")
            if message.message_id == flaky.message_id:
                done.set()

        async with consumer:
            async with asyncio.timeout(20):
                await done.wait()
            await asyncio.sleep(0.5)  # bounded: the ack of the redelivery reaches the broker
        assert sorted(attempts) == sorted(
            [(good.message_id, 1), (flaky.message_id, 1), (flaky.message_id, 2)]
        )
        # Both were acked: a new consumer of the group gets nothing.
        async with AsyncSimpleConsumer(
            broker.endpoint,
            group="e2e-push-g",
            subscriptions={"e2e-push": "*"},
            await_duration_s=2,
            timings=FAST,
        ) as check:
            assert await check.receive(invisible_duration=30) == []

    run(scenario(), timeout_s=60)


def test_push_consumer_shutdown_leaves_unprocessed_messages_to_others(broker: BrokerProcess) -> None:
    async def scenario() -> None:
        async with AsyncProducer(broker.endpoint, timings=FAST) as producer:
            ids = [
                (await producer.send(Message("e2e-shutdown", f"{i}".encode()))).message_id for i in range(3)
            ]
        started = asyncio.Event()
        release = asyncio.Event()
        handled: list[str] = []
        consumer = AsyncPushConsumer(broker.endpoint, group="e2e-shutdown-g", max_concurrency=1, timings=FAST)

        @consumer.subscribe("e2e-shutdown")
        async def handle(message: ReceivedMessage) -> None:
            started.set()
            await release.wait()
            handled.append(message.message_id)

        await consumer.start()
        await started.wait()
        closing = asyncio.ensure_future(consumer.close())
        await asyncio.sleep(0.2)
        release.set()
        await closing
        assert len(handled) == 1  # only the running handler finished (and was acked)
        rest: list[str] = []
        async with AsyncSimpleConsumer(
            broker.endpoint,
            group="e2e-shutdown-g",
            subscriptions={"e2e-shutdown": "*"},
            await_duration_s=2,
            timings=FAST,
        ) as other:
            for _ in range(10):
                for message in await other.receive(invisible_duration=30):
                    rest.append(message.message_id)
                    await other.ack(message)
                if len(rest) == 2:
                    break
        assert sorted(rest + handled) == sorted(ids)
        assert handled[0] not in rest

    run(scenario(), timeout_s=60)


def test_credentials_are_checked(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials.toml"
    credentials.write_text('app = "s3cret"\n')
    credentials.chmod(0o600)
    with BrokerProcess(tmp_path / "data", options={"credentials_file": str(credentials)}) as secured:

        async def scenario() -> None:
            good = ClientConfig(secured.endpoint, credentials=Credentials("app", "s3cret"))
            async with AsyncProducer(good, timings=FAST) as producer:
                await producer.send(Message("e2e-auth", b"x"))
            bad = ClientConfig(secured.endpoint, credentials=Credentials("app", "wrong"))
            with pytest.raises(UnauthorizedError):
                async with AsyncProducer(bad, topics=["e2e-auth"], timings=FAST):
                    pass
            with pytest.raises(UnauthorizedError):
                async with AsyncProducer(secured.endpoint, topics=["e2e-auth"], timings=FAST):
                    pass

        run(scenario())


def test_sync_twins_against_the_broker(broker: BrokerProcess) -> None:
    with Producer(broker.endpoint, timings=FAST) as producer:
        receipt = producer.send(Message("e2e-sync", b"x"))
    with SimpleConsumer(
        broker.endpoint, group="e2e-sync-g", subscriptions={"e2e-sync": "*"}, await_duration_s=2, timings=FAST
    ) as consumer:
        (message,) = consumer.receive(invisible_duration=30)
        consumer.ack(message)
    assert message.message_id == receipt.message_id and message.body == b"x"


def test_transaction_commit_rollback_and_check(broker: BrokerProcess) -> None:
    async def scenario() -> None:
        async with AsyncProducer(
            broker.endpoint, timings=FAST, checker=lambda message: TransactionResolution.COMMIT
        ) as producer:
            async with producer.transaction() as tx:
                committed = await tx.send(Message("e2e-tx", b"commit"))
            with pytest.raises(LookupError):
                async with producer.transaction() as tx:
                    await tx.send(Message("e2e-tx", b"rollback"))
                    raise LookupError("abandon")
        async with AsyncSimpleConsumer(
            broker.endpoint, group="e2e-tx-g", subscriptions={"e2e-tx": "*"}, await_duration_s=2, timings=FAST
        ) as consumer:
            messages = await consumer.receive(invisible_duration=30)
            assert [m.message_id for m in messages] == [committed.message_id]

    run(scenario())


def test_delay_message_arrives_after_its_delay(broker: BrokerProcess) -> None:
    async def scenario() -> None:
        async with AsyncProducer(broker.endpoint, timings=FAST) as producer:
            receipt = await producer.send(Message("e2e-delay", b"later", delay=4))
            sent_at = asyncio.get_running_loop().time()
        async with AsyncSimpleConsumer(
            broker.endpoint,
            group="e2e-delay-g",
            subscriptions={"e2e-delay": "*"},
            await_duration_s=1,
            timings=FAST,
        ) as consumer:
            assert await consumer.receive(invisible_duration=30) == []
            messages: list[ReceivedMessage] = []
            for _ in range(10):
                messages = await consumer.receive(invisible_duration=30)
                if messages:
                    break
            assert [m.message_id for m in messages] == [receipt.message_id]
            assert asyncio.get_running_loop().time() - sent_at >= 3.5  # not before its delivery time
            assert messages[0].deliver_at is not None

    run(scenario(), timeout_s=60)


def test_an_orphaned_transaction_is_settled_by_the_checker(broker: BrokerProcess) -> None:
    async def scenario() -> None:
        asked: list[ReceivedMessage] = []

        def checker(message: ReceivedMessage) -> TransactionResolution:
            asked.append(message)
            return TransactionResolution.COMMIT

        async with AsyncProducer(
            broker.endpoint, topics=["e2e-orphan"], timings=FAST, checker=checker
        ) as producer:
            # Sent but never ended, as if the producer had died before its commit.
            half = await producer.transaction().send(Message("e2e-orphan", b"orphan"))
            async with AsyncSimpleConsumer(
                broker.endpoint,
                group="e2e-orphan-g",
                subscriptions={"e2e-orphan": "*"},
                await_duration_s=2,
                timings=FAST,
            ) as consumer:
                messages: list[ReceivedMessage] = []
                for _ in range(10):
                    messages = await consumer.receive(invisible_duration=30)
                    if messages:
                        break
                assert [m.message_id for m in messages] == [half.message_id]
                await consumer.ack(messages[0])
        assert [(m.message_id, m.transaction_id) for m in asked][:1] == [
            (half.message_id, half.transaction_id)
        ]

    run(scenario(), timeout_s=60)


def test_recall_a_delay_message_before_it_is_delivered(broker: BrokerProcess) -> None:
    async def scenario() -> None:
        async with AsyncProducer(broker.endpoint, timings=FAST) as producer:
            recalled = await producer.send(Message("e2e-recall", b"never", delay=2))
            kept = await producer.send(Message("e2e-recall", b"later", delay=2))
            assert recalled.recall_handle
            await producer.recall(recalled)
        async with AsyncSimpleConsumer(
            broker.endpoint,
            group="e2e-recall-g",
            subscriptions={"e2e-recall": "*"},
            await_duration_s=1,
            timings=FAST,
        ) as consumer:
            received: list[str] = []
            for _ in range(6):
                for message in await consumer.receive(invisible_duration=30):
                    received.append(message.message_id)
                    await consumer.ack(message)
            assert received == [kept.message_id]

    run(scenario(), timeout_s=60)


def test_fifo_push_consumer_keeps_each_groups_order(tmp_path: Path) -> None:
    seed_metadata(tmp_path / "data", groups=[GroupConfig(name="e2e-fifo-g", fifo=True, backoff_s=(1.0,))])
    options = {"retry_backoff": (1.0,), "long_polling_timeout_s": 2.0}
    with BrokerProcess(tmp_path / "data", options=options) as fifo_broker:

        async def scenario() -> None:
            async with AsyncProducer(fifo_broker.endpoint, timings=FAST) as producer:
                for i in range(5):
                    for group in ("a", "b", "c"):
                        await producer.send(Message("e2e-fifo", f"{group}{i}".encode(), message_group=group))
            order: dict[str, list[str]] = {"a": [], "b": [], "c": []}
            running: set[str] = set()
            overlaps: list[str] = []
            failed_once: set[str] = set()
            consumer = AsyncPushConsumer(
                fifo_broker.endpoint, group="e2e-fifo-g", timings=FAST, max_concurrency=8
            )

            @consumer.subscribe("e2e-fifo")
            async def handle(message: ReceivedMessage) -> None:
                group = message.message_group or ""
                if group in running:
                    overlaps.append(group)
                running.add(group)
                try:
                    await asyncio.sleep(0.01)
                    body = message.body.decode()
                    if body == "b1" and body not in failed_once:
                        failed_once.add(body)
                        raise RuntimeError("b1 fails once: b2.. must wait for its redelivery")
                    order[group].append(body)
                finally:
                    running.discard(group)

            async with consumer:
                async with asyncio.timeout(30):
                    while sum(len(bodies) for bodies in order.values()) < 15:
                        await asyncio.sleep(0.05)
            assert overlaps == []
            for group, bodies in order.items():
                assert bodies == [f"{group}{i}" for i in range(5)], group

        run(scenario(), timeout_s=60)
