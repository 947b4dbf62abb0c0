"""AsyncProducer against the in-process fake broker: lifecycle, retries, batching, limits, transactions."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

import pytest
from client_fake_broker import Code, FakeBroker
from client_helpers import FAST, run, wait_until

from homing.client import (
    AsyncProducer,
    BadRequestError,
    ClientConfig,
    ClientStateError,
    Credentials,
    DeadlineExceededError,
    InvalidArgumentError,
    Message,
    NotFoundError,
    PersistenceTimeoutError,
    ReceivedMessage,
    RetryPolicy,
    SettingsTimeoutError,
    Timings,
    TransactionResolution,
)
from homing.protocol import definition_pb2


def producer(broker: FakeBroker, **options: object) -> AsyncProducer:
    return AsyncProducer(broker.endpoint, timings=FAST, **options)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# Lifecycle


def test_start_send_close_follow_the_protocol() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            async with producer(broker, topics=["orders"]) as client:
                receipt = await client.send(Message("orders", b"hello", tag="paid", keys=["k1"]))
                await wait_until(lambda: len(broker.heartbeats) >= 1, what="a heartbeat")
                await wait_until(
                    lambda: broker.methods_called().count("QueryRoute") >= 2, what="a route refresh"
                )
            methods = broker.methods_called()
            # Route first, then Telemetry with settings, and only then the send.
            assert methods[:2] == ["QueryRoute", "Telemetry"]
            assert methods.index("SendMessage") > methods.index("Telemetry")
            assert methods[-1] == "NotifyClientTermination"
            (peer,) = broker.peers.values()
            settings = peer.settings[0]
            assert settings.client_type == definition_pb2.PRODUCER
            assert [topic.name for topic in settings.publishing.topics] == ["orders"]
            assert settings.access_point.addresses[0].port == broker.port
            assert settings.user_agent.language == definition_pb2.PYTHON
            # Every call carries the client's id; the heartbeat says it is a producer.
            assert {metadata["x-mq-client-id"] for _, metadata in broker.calls} == {client.client_id}
            assert broker.heartbeats[0].client_type == definition_pb2.PRODUCER
            (stored,) = broker.stored["orders"]
            assert receipt.message_id == stored.message.system_properties.message_id
            assert receipt.offset == 0 and receipt.topic == "orders" and receipt.endpoint == broker.endpoint
            assert stored.message.system_properties.tag == "paid"
            assert list(stored.message.system_properties.keys) == ["k1"]
            assert stored.message.system_properties.message_type == definition_pb2.NORMAL

    run(scenario())


def test_send_before_start_and_after_close_is_refused() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            client = producer(broker)
            with pytest.raises(ClientStateError, match="not started"):
                await client.send(Message("orders", b"x"))
            await client.start()
            await client.close()
            with pytest.raises(ClientStateError, match="closed"):
                await client.send(Message("orders", b"x"))
            assert "SendMessage" not in broker.methods_called()

    run(scenario())


def test_start_fails_clearly_without_a_settings_reply() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            broker.answer_settings = False
            client = AsyncProducer(
                broker.endpoint, topics=["orders"], timings=Timings(settings_timeout_s=0.3)
            )
            with pytest.raises(SettingsTimeoutError, match="did not answer the client's settings") as raised:
                await client.start()
            assert raised.value.retriable
            with pytest.raises(ClientStateError):
                await client.send(Message("orders", b"x"))

    run(scenario())


def test_unknown_topic_fails_at_start() -> None:
    async def scenario() -> None:
        async with FakeBroker(known_topics=frozenset({"orders"})) as broker:
            with pytest.raises(NotFoundError) as raised:
                await producer(broker, topics=["nope"]).start()
            assert raised.value.code_name == "TOPIC_NOT_FOUND" and not raised.value.retriable

    run(scenario())


def test_credentials_and_namespace_reach_every_call() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            config = ClientConfig(broker.endpoint, credentials=Credentials("AK", "SK"), namespace="shop")
            async with AsyncProducer(config, timings=FAST) as client:
                await client.send(Message("orders", b"x"))
            for _, metadata in broker.calls:
                assert metadata["x-mq-namespace"] == "shop"
                assert metadata["authorization"].startswith(
                    "MQv2-HMAC-SHA1 Credential=AK, SignedHeaders=x-mq-date-time,"
                )
            request = broker.send_requests[0]
            assert request.messages[0].topic.resource_namespace == "shop"

    run(scenario())


# ------------------------------------------------------------------------------------------------
# Retries


def test_retriable_failures_are_retried_with_the_same_message_id() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            broker.send_failures = [Code.MASTER_PERSISTENCE_TIMEOUT, Code.TOO_MANY_REQUESTS]
            async with producer(broker) as client:
                receipt = await client.send(Message("orders", b"x"))
            ids = [request.messages[0].system_properties.message_id for request in broker.send_requests]
            assert ids == [receipt.message_id] * 3
            assert len(broker.stored["orders"]) == 1

    run(scenario())


def test_retries_stop_at_the_servers_max_attempts() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:  # its settings say 3 attempts
            broker.send_failures = [Code.MASTER_PERSISTENCE_TIMEOUT] * 5
            async with producer(broker) as client:
                with pytest.raises(PersistenceTimeoutError) as raised:
                    await client.send(Message("orders", b"x"))
            assert len(broker.send_requests) == 3
            assert raised.value.retriable
            assert any("gave up after 3 attempts" in note for note in raised.value.__notes__)

    run(scenario())


def test_a_retry_policy_overrides_the_servers() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:  # its settings would allow 3 attempts only
            broker.send_failures = [Code.INTERNAL_SERVER_ERROR] * 4
            policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.001, max_backoff_s=0.01)
            async with producer(broker, retry_policy=policy) as client:
                receipt = await client.send(Message("orders", b"x"))
            ids = [request.messages[0].system_properties.message_id for request in broker.send_requests]
            assert ids == [receipt.message_id] * 5

    run(scenario())


def test_backoff_between_attempts_follows_the_policy() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            broker.send_failures = [Code.TOO_MANY_REQUESTS] * 2
            policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.2, max_backoff_s=1, multiplier=2)
            async with producer(broker, retry_policy=policy) as client:
                loop = asyncio.get_running_loop()
                started = loop.time()
                await client.send(Message("orders", b"x"))
                elapsed = loop.time() - started
            # 0.2 s after the first failure, 0.4 s after the second.
            assert elapsed >= 0.6

    run(scenario())


def test_non_retriable_failures_are_raised_at_once() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            broker.send_failures = [Code.ILLEGAL_MESSAGE_PROPERTY_KEY]
            async with producer(broker) as client:
                with pytest.raises(BadRequestError) as raised:
                    await client.send(Message("orders", b"x"))
            assert raised.value.code_name == "ILLEGAL_MESSAGE_PROPERTY_KEY" and not raised.value.retriable
            assert len(broker.send_requests) == 1

    run(scenario())


def test_a_slow_broker_past_the_send_timeout_is_retried_with_the_same_id() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            broker.send_delay_s = 0.5
            async with producer(broker, send_timeout_s=0.2) as client:
                with pytest.raises(DeadlineExceededError) as raised:
                    await client.send(Message("orders", b"x"))
            assert raised.value.retriable
            ids = {request.messages[0].system_properties.message_id for request in broker.send_requests}
            assert len(broker.send_requests) == 3 and len(ids) == 1

    run(scenario())


def test_the_default_send_timeout_outlasts_a_five_second_flush() -> None:
    client = AsyncProducer("127.0.0.1:1")
    assert client._send_timeout_s == 10.0


# ------------------------------------------------------------------------------------------------
# Batching


def test_concurrent_sends_are_coalesced_and_each_caller_gets_its_own_result() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            # The message with body "bad" is refused on its own; its companions are stored.
            broker.send_entry_codes = lambda m: Code.ILLEGAL_MESSAGE_TAG if m.body == b"bad" else Code.OK
            async with producer(broker, linger_s=0.05) as client:
                await client.send(Message("orders", b"warm-up"))
                broker.send_requests.clear()
                bodies = [f"m{i}".encode() for i in range(20)] + [b"bad"]
                outcomes = await asyncio.gather(
                    *(client.send(Message("orders", body)) for body in bodies), return_exceptions=True
                )
            (request,) = broker.send_requests
            assert len(request.messages) == 21
            receipts = outcomes[:20]
            assert isinstance(outcomes[20], BadRequestError)
            stored = {s.message.system_properties.message_id: s.message.body for s in broker.stored["orders"]}
            for body, receipt in zip(bodies, receipts, strict=False):
                assert not isinstance(receipt, BaseException)
                assert stored[receipt.message_id] == body
            assert (
                len({receipt.offset for receipt in receipts if not isinstance(receipt, BaseException)}) == 20
            )

    run(scenario())


def test_a_lone_sender_does_not_wait_for_the_linger() -> None:
    # Nothing is outstanding between one send and the next, so there is nothing to wait for.
    async def scenario() -> None:
        async with FakeBroker() as broker:
            async with producer(broker, linger_s=0.5) as client:
                await client.send(Message("orders", b"warm-up"))
                started = time.monotonic()
                for index in range(5):
                    await client.send(Message("orders", f"m{index}".encode()))
                assert time.monotonic() - started < 0.5
            assert [len(request.messages) for request in broker.send_requests] == [1] * 6

    run(scenario())


def test_batches_respect_their_size_limits() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            async with producer(broker, linger_s=0.05, max_batch_messages=4) as client:
                await client.send(Message("orders", b"warm-up"))
                broker.send_requests.clear()
                await asyncio.gather(*(client.send(Message("orders", b"x")) for _ in range(10)))
                assert sorted(len(r.messages) for r in broker.send_requests) == [2, 4, 4]
                broker.send_requests.clear()
            async with producer(broker, linger_s=0.05, max_batch_bytes=3000) as client:
                await client.send(Message("orders", b"warm-up"))
                broker.send_requests.clear()
                await asyncio.gather(*(client.send(Message("orders", b"y" * 1000)) for _ in range(6)))
                assert all(sum(m.ByteSize() for m in r.messages) <= 3000 for r in broker.send_requests)
                assert sum(len(r.messages) for r in broker.send_requests) == 6
                assert len(broker.send_requests) >= 3

    run(scenario())


def test_a_batch_never_outgrows_the_brokers_body_limit() -> None:
    # A broker sized for its largest body must accept any batch: the batch limit follows it down.
    async def scenario() -> None:
        async with FakeBroker(max_body_size=2500) as broker:
            async with producer(broker, linger_s=0.05) as client:
                await client.send(Message("orders", b"warm-up"))
                broker.send_requests.clear()
                await asyncio.gather(*(client.send(Message("orders", b"z" * 1000)) for _ in range(6)))
            assert all(sum(m.ByteSize() for m in r.messages) <= 2500 for r in broker.send_requests)
            assert sum(len(r.messages) for r in broker.send_requests) == 6

    run(scenario())


def test_fifo_delay_and_other_topics_are_not_mixed_into_batches() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            async with producer(broker, linger_s=0.05) as client:
                await client.send(Message("orders", b"warm-up"))
                await client.send(Message("invoices", b"warm-up"))
                broker.send_requests.clear()
                await asyncio.gather(
                    client.send(Message("orders", b"a")),
                    client.send(Message("orders", b"b")),
                    client.send(Message("invoices", b"c")),
                    client.send(Message("orders", b"d", message_group="g")),
                    client.send(Message("orders", b"e", message_group="g2")),
                    client.send(Message("orders", b"f", delay=30)),
                )
            shapes = sorted(
                (r.messages[0].topic.name, len(r.messages), r.messages[0].system_properties.message_type)
                for r in broker.send_requests
            )
            assert shapes == sorted(
                [
                    ("orders", 2, definition_pb2.NORMAL),
                    ("invoices", 1, definition_pb2.NORMAL),
                    ("orders", 1, definition_pb2.FIFO),
                    ("orders", 1, definition_pb2.FIFO),
                    ("orders", 1, definition_pb2.DELAY),
                ]
            )

    run(scenario())


def test_an_apache_style_batch_answer_is_shared_out() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            broker.apache_batches = True
            async with producer(broker, linger_s=0.05) as client:
                await client.send(Message("orders", b"warm-up"))
                receipts = await asyncio.gather(*(client.send(Message("orders", b"x")) for _ in range(3)))
            assert [receipt.offset for receipt in receipts] == [1, 2, 3]
            assert len({receipt.message_id for receipt in receipts}) == 3

    run(scenario())


def test_a_retry_of_one_entry_keeps_its_id_while_companions_succeed() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            refused_once: set[str] = set()

            def codes(message: definition_pb2.Message) -> int:
                message_id = message.system_properties.message_id
                if message.body == b"flaky" and message_id not in refused_once:
                    refused_once.add(message_id)
                    return Code.MASTER_PERSISTENCE_TIMEOUT
                return Code.OK

            broker.send_entry_codes = codes
            async with producer(broker, linger_s=0.05) as client:
                await client.send(Message("orders", b"warm-up"))
                broker.send_requests.clear()
                flaky, steady = await asyncio.gather(
                    client.send(Message("orders", b"flaky")), client.send(Message("orders", b"steady"))
                )
            first, second = broker.send_requests
            assert len(first.messages) == 2 and len(second.messages) == 1
            assert second.messages[0].system_properties.message_id == flaky.message_id
            assert flaky.message_id in refused_once and steady.message_id not in refused_once

    run(scenario())


# ------------------------------------------------------------------------------------------------
# Input checked before anything is sent


def test_body_over_the_servers_limit_is_refused_before_sending() -> None:
    async def scenario() -> None:
        async with FakeBroker(max_body_size=100) as broker:
            async with producer(broker, topics=["orders"]) as client:
                with pytest.raises(InvalidArgumentError, match="the broker accepts at most 100"):
                    await client.send(Message("orders", b"x" * 101))
                await client.send(Message("orders", b"x" * 100))
            assert len(broker.send_requests) == 1

    run(scenario())


def test_delivery_times_must_lie_ahead_within_the_maximum() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            async with producer(broker, topics=["orders"], max_delay_s=3600) as client:
                past = datetime.now(UTC) - timedelta(seconds=5)
                with pytest.raises(InvalidArgumentError, match="in the past"):
                    await client.send(Message("orders", b"x", deliver_at=past))
                with pytest.raises(InvalidArgumentError, match="the maximum delay is 3600 s"):
                    await client.send(Message("orders", b"x", delay=timedelta(hours=2)))
                assert broker.send_requests == []
                receipt = await client.send(Message("orders", b"x", delay=60))
            (request,) = broker.send_requests
            system = request.messages[0].system_properties
            ahead_ms = system.delivery_timestamp.ToMilliseconds() - system.born_timestamp.ToMilliseconds()
            assert ahead_ms == 60_000
            assert system.message_type == definition_pb2.DELAY
            assert receipt.recall_handle == "recall-" + receipt.message_id

    run(scenario())


def test_recall_a_delay_message() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            async with producer(broker) as client:
                receipt = await client.send(Message("orders", b"x", delay=60))
                await client.recall(receipt)
                plain = await client.send(Message("orders", b"y"))
                with pytest.raises(InvalidArgumentError, match="no recall handle"):
                    await client.recall(plain)
            assert broker.methods_called().count("RecallMessage") == 1

    run(scenario())


def test_a_given_message_id_is_used() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            async with producer(broker) as client:
                receipt = await client.send(Message("orders", b"x", message_id="outbox-42"))
            assert receipt.message_id == "outbox-42"
            assert broker.send_requests[0].messages[0].system_properties.message_id == "outbox-42"

    run(scenario())


# ------------------------------------------------------------------------------------------------
# One-way


def test_send_oneway_does_not_wait_and_failures_are_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            async with producer(broker) as client:
                message_id = await client.send_oneway(Message("orders", b"x"))
                await wait_until(lambda: "orders" in broker.stored, what="the one-way message")
                broker.send_failures = [Code.MASTER_PERSISTENCE_TIMEOUT]
                await client.send_oneway(Message("orders", b"lost"))
            assert broker.stored["orders"][0].message.system_properties.message_id == message_id
            assert len(broker.stored["orders"]) == 1
            assert len(broker.send_requests) == 2  # the failed one-way send was not retried

    with caplog.at_level(logging.WARNING, logger="homing.client"):
        run(scenario())
    assert any("one-way send failed" in record.getMessage() for record in caplog.records)


def test_close_waits_for_sends_under_way() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            client = producer(broker)
            await client.start()
            await client.send(Message("orders", b"warm-up"))
            broker.send_delay_s = 0.3
            sending = asyncio.ensure_future(client.send(Message("orders", b"x")))
            await wait_until(lambda: len(broker.send_requests) == 2, what="the send to reach the broker")
            await client.close()
            assert sending.done()
            assert (await sending).offset == 1

    run(scenario())


# ------------------------------------------------------------------------------------------------
# Transactions


def _checker(answer: TransactionResolution) -> object:
    def check(message: ReceivedMessage) -> TransactionResolution:
        return answer

    return check


def test_transaction_commits_on_normal_exit() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            async with producer(broker, checker=lambda m: TransactionResolution.COMMIT) as client:
                async with client.transaction() as tx:
                    first = await tx.send(Message("orders", b"a"))
                    second = await tx.send(Message("orders", b"b"))
                    assert "orders" not in broker.stored  # half messages: not delivered yet
                assert tx.state == "committed"
            assert first.transaction_id and second.transaction_id
            ends = [(e.message_id, e.transaction_id, e.resolution, e.source) for e in broker.end_transactions]
            assert ends == [
                (first.message_id, first.transaction_id, definition_pb2.COMMIT, definition_pb2.SOURCE_CLIENT),
                (
                    second.message_id,
                    second.transaction_id,
                    definition_pb2.COMMIT,
                    definition_pb2.SOURCE_CLIENT,
                ),
            ]
            assert [s.message.body for s in broker.stored["orders"]] == [b"a", b"b"]
            sent = [r.messages[0].system_properties.message_type for r in broker.send_requests]
            assert sent == [definition_pb2.TRANSACTION] * 2

    run(scenario())


def test_transaction_rolls_back_on_exception_and_the_exception_propagates() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            async with producer(broker, checker=lambda m: TransactionResolution.COMMIT) as client:
                with pytest.raises(KeyError, match="boom"):
                    async with client.transaction() as tx:
                        await tx.send(Message("orders", b"a"))
                        raise KeyError("boom")
                assert tx.state == "rolled back"
                with pytest.raises(ClientStateError):
                    await tx.send(Message("orders", b"late"))
            assert [e.resolution for e in broker.end_transactions] == [definition_pb2.ROLLBACK]
            assert "orders" not in broker.stored

    run(scenario())


def test_transactional_sends_are_not_retried_and_need_a_checker() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            async with producer(broker) as client:
                with pytest.raises(ClientStateError, match="need a checker"):
                    client.transaction()
            broker.send_failures = [Code.MASTER_PERSISTENCE_TIMEOUT]
            async with producer(broker, checker=lambda m: TransactionResolution.COMMIT) as client:
                with pytest.raises(PersistenceTimeoutError):
                    async with client.transaction() as tx:
                        await tx.send(Message("orders", b"a"))
                with pytest.raises(InvalidArgumentError, match="cannot have a message_group"):
                    async with client.transaction() as tx:
                        await tx.send(Message("orders", b"a", message_group="g"))
            assert len(broker.send_requests) == 1
            assert broker.end_transactions == []

    run(scenario())


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (TransactionResolution.COMMIT, definition_pb2.COMMIT),
        (TransactionResolution.ROLLBACK, definition_pb2.ROLLBACK),
        (TransactionResolution.UNKNOWN, None),
    ],
)
@pytest.mark.parametrize("asynchronous", [False, True])
def test_check_back_is_answered_by_the_checker(
    answer: TransactionResolution, expected: int | None, asynchronous: bool
) -> None:
    asked: list[ReceivedMessage] = []

    def sync_check(message: ReceivedMessage) -> TransactionResolution:
        asked.append(message)
        return answer

    async def async_check(message: ReceivedMessage) -> TransactionResolution:
        asked.append(message)
        return answer

    async def scenario() -> None:
        async with FakeBroker() as broker:
            checker = async_check if asynchronous else sync_check
            async with producer(broker, checker=checker) as client:
                tx = client.transaction()
                receipt = await tx.send(Message("orders", b"half", tag="t"))
                # The producer "dies" before ending it: the broker asks instead.
                assert receipt.transaction_id is not None
                await broker.check_transaction(client.client_id, receipt.transaction_id)
                await wait_until(lambda: len(asked) == 1, what="the checker to be asked")
                if expected is not None:
                    await wait_until(lambda: len(broker.end_transactions) == 1, what="the check's answer")
                else:
                    await asyncio.sleep(0.2)  # a bounded wait: nothing may arrive
            assert asked[0].message_id == receipt.message_id
            assert asked[0].transaction_id == receipt.transaction_id
            assert asked[0].body == b"half" and asked[0].tag == "t"
            if expected is None:
                assert broker.end_transactions == []
            else:
                (end,) = broker.end_transactions
                assert (end.transaction_id, end.resolution, end.source) == (
                    receipt.transaction_id,
                    expected,
                    definition_pb2.SOURCE_SERVER_CHECK,
                )

    run(scenario())


def test_a_failing_checker_leaves_the_transaction_to_a_later_check(caplog: pytest.LogCaptureFixture) -> None:
    def check(message: ReceivedMessage) -> TransactionResolution:
        raise RuntimeError("database down")

    async def scenario() -> None:
        async with FakeBroker() as broker:
            async with producer(broker, checker=check) as client:
                receipt = await client.transaction().send(Message("orders", b"half"))
                assert receipt.transaction_id is not None
                await broker.check_transaction(client.client_id, receipt.transaction_id)
                await wait_until(
                    lambda: any("checker failed" in r.getMessage() for r in caplog.records), what="the log"
                )
            assert broker.end_transactions == []

    with caplog.at_level(logging.ERROR, logger="homing.client"):
        run(scenario())


def test_message_type_must_be_accepted_by_the_route() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            original = broker._queue

            def normal_only(topic: str, queue_id: int) -> definition_pb2.MessageQueue:
                queue = original(topic, queue_id)
                del queue.accept_message_types[:]
                queue.accept_message_types.append(definition_pb2.NORMAL)
                return queue

            broker._queue = normal_only  # type: ignore[method-assign]
            async with producer(broker) as client:
                await client.send(Message("orders", b"x"))
                with pytest.raises(InvalidArgumentError, match="does not accept fifo messages"):
                    await client.send(Message("orders", b"x", message_group="g"))
            assert len(broker.send_requests) == 1

    run(scenario())
