"""The synchronous twins: the same surface as the asyncio clients (checked here) and the same behaviour."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from client_fake_broker import Code, FakeBroker
from client_helpers import FAST, wait_until_sync

from homing.client import (
    AsyncProducer,
    AsyncPushConsumer,
    AsyncSimpleConsumer,
    AsyncTransaction,
    ClientStateError,
    Message,
    PersistenceTimeoutError,
    Producer,
    PushConsumer,
    ReceivedMessage,
    SimpleConsumer,
    Transaction,
    TransactionResolution,
)
from homing.protocol import definition_pb2

T = TypeVar("T")

TWINS = [
    (AsyncProducer, Producer),
    (AsyncTransaction, Transaction),
    (AsyncPushConsumer, PushConsumer),
    (AsyncSimpleConsumer, SimpleConsumer),
]
_LIFECYCLE = {"__aenter__": "__enter__", "__aexit__": "__exit__"}


def _public(cls: type) -> dict[str, object]:
    return {
        name: member
        for name, member in vars(cls).items()
        if not name.startswith("_") or name in _LIFECYCLE or name in _LIFECYCLE.values()
    }


@pytest.mark.parametrize(("asynchronous", "synchronous"), TWINS, ids=lambda cls: cls.__name__)
def test_twins_have_the_same_methods_and_parameters(asynchronous: type, synchronous: type) -> None:
    async_members = _public(asynchronous)
    sync_members = _public(synchronous)
    expected_names = {_LIFECYCLE.get(name, name) for name in async_members}
    assert set(sync_members) == expected_names
    for name, member in async_members.items():
        twin = sync_members[_LIFECYCLE.get(name, name)]
        if isinstance(member, property):
            assert isinstance(twin, property), name
            continue
        assert callable(member) and callable(twin), name
        # Coroutine functions become plain functions; everything else keeps its kind.
        assert not inspect.iscoroutinefunction(twin), name
        async_parameters = list(inspect.signature(member).parameters.values())
        sync_parameters = list(inspect.signature(twin).parameters.values())
        if name == "__init__" and asynchronous is AsyncTransaction:
            continue  # made by the producer, never by the user
        assert [(p.name, p.kind, p.default) for p in sync_parameters] == [
            (p.name, p.kind, p.default) for p in async_parameters
        ], name


# ------------------------------------------------------------------------------------------------
# Behaviour


class BrokerThread:
    """A fake broker on an event loop in a thread of its own (the twins run their own loops)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.broker = FakeBroker()
        self.run(self.broker.start())

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def stop(self) -> None:
        self.run(self.broker.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def fake() -> Iterator[BrokerThread]:
    thread = BrokerThread()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def broker(fake: BrokerThread) -> FakeBroker:
    return fake.broker


def test_producer_sends_batches_and_retries_like_its_async_twin(broker: FakeBroker) -> None:
    with Producer(broker.endpoint, timings=FAST, linger_s=0.05) as producer:
        producer.send(Message("orders", b"warm-up"))
        broker.send_requests.clear()
        # The first call stays outstanding a while: the threads' sends meet behind it, whatever
        # the scheduling of a busy machine (a send that finds nothing outstanding goes at once).
        broker.send_delay_s = 0.2
        results: list[str] = []
        threads = [
            threading.Thread(
                target=lambda i=i: results.append(
                    producer.send(Message("orders", f"{i}".encode())).message_id
                )
            )
            for i in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        # Sends from eight threads met on the producer's loop and travelled together.
        assert len(results) == 8
        assert sum(len(request.messages) for request in broker.send_requests) == 8
        assert len(broker.send_requests) < 8
        broker.send_delay_s = 0.0
        broker.send_failures = [Code.MASTER_PERSISTENCE_TIMEOUT] * 3
        with pytest.raises(PersistenceTimeoutError):
            producer.send(Message("orders", b"x"))
        ids = {request.messages[0].system_properties.message_id for request in broker.send_requests[-3:]}
        assert len(ids) == 1
    with pytest.raises(ClientStateError):
        producer.send(Message("orders", b"after close"))


def test_sync_transactions_commit_roll_back_and_answer_checks(fake: BrokerThread) -> None:
    broker = fake.broker
    asked: list[str] = []

    def checker(message: ReceivedMessage) -> TransactionResolution:
        asked.append(message.message_id)
        return TransactionResolution.ROLLBACK

    with Producer(broker.endpoint, timings=FAST, checker=checker) as producer:
        with producer.transaction() as tx:
            committed = tx.send(Message("orders", b"a"))
        assert tx.state == "committed"
        with pytest.raises(RuntimeError), producer.transaction() as tx:
            tx.send(Message("orders", b"b"))
            raise RuntimeError("abandon")
        assert tx.state == "rolled back"
        orphan = producer.transaction().send(Message("orders", b"c"))
        assert orphan.transaction_id is not None
        fake.run(broker.check_transaction(producer.client_id, orphan.transaction_id))
        wait_until_sync(lambda: len(broker.end_transactions) == 3, what="the check's answer")
    assert asked == [orphan.message_id]
    resolutions = [(e.message_id, e.resolution, e.source) for e in broker.end_transactions]
    assert resolutions[0] == (committed.message_id, definition_pb2.COMMIT, definition_pb2.SOURCE_CLIENT)
    assert resolutions[1][1:] == (definition_pb2.ROLLBACK, definition_pb2.SOURCE_CLIENT)
    assert resolutions[2] == (orphan.message_id, definition_pb2.ROLLBACK, definition_pb2.SOURCE_SERVER_CHECK)


def test_push_consumer_runs_plain_handlers_acks_and_nacks(broker: FakeBroker) -> None:
    with Producer(broker.endpoint, timings=FAST) as producer:
        good = producer.send(Message("orders", b"good"))
        flaky = producer.send(Message("orders", b"flaky"))
    attempts: list[tuple[bytes, int, str]] = []
    consumer = PushConsumer(broker.endpoint, group="billing", timings=FAST, assignment_interval_s=0.2)

    @consumer.subscribe("orders")
    def handle(message: ReceivedMessage) -> None:
        attempts.append((message.body, message.delivery_attempt, threading.current_thread().name))
        if message.body == b"flaky" and message.delivery_attempt == 1:
            raise ValueError("first delivery fails")

    with consumer:
        wait_until_sync(lambda: len(broker.acks) == 2, what="two acks")
    assert sorted((body, attempt) for body, attempt, _ in attempts) == [
        (b"flaky", 1),
        (b"flaky", 2),
        (b"good", 1),
    ]
    assert all(name.startswith("homing-handler") for _, _, name in attempts)
    assert sorted(message_id for _, message_id in broker.acks) == sorted([good.message_id, flaky.message_id])
    assert [(message_id, seconds) for _, message_id, seconds in broker.nacks] == [(flaky.message_id, 0.05)]


def test_simple_consumer_twin(broker: FakeBroker) -> None:
    with Producer(broker.endpoint, timings=FAST) as producer:
        sent = producer.send(Message("orders", b"x"))
    with SimpleConsumer(
        broker.endpoint, group="audit", subscriptions={"orders": "*"}, await_duration_s=0.2, timings=FAST
    ) as consumer:
        (message,) = consumer.receive(max_messages=4, invisible_duration=20)
        assert message.message_id == sent.message_id
        consumer.change_invisible_duration(message, 15)
        consumer.ack(message)
        assert consumer.receive(max_messages=4, invisible_duration=20) == []
    assert broker.acks == [("audit", sent.message_id)]
    assert broker.nacks == [("audit", sent.message_id, 15.0)]


def test_a_twin_called_from_its_own_loop_refuses_instead_of_hanging(broker: FakeBroker) -> None:
    with Producer(broker.endpoint, timings=FAST) as producer:
        thread = producer._thread

        async def inside() -> None:
            with pytest.raises(ClientStateError, match="its own event loop"):
                thread.run(asyncio.sleep(0))

        thread.run(inside())
