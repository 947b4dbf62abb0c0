"""Homing's protocol extensions in the client: used where served, the standard RPCs elsewhere.

Against a fake broker without the extensions (what an Apache RocketMQ broker answers), with them,
with send streams that break, and against a real ``homing broker``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_fake_broker import FakeBroker
from client_helpers import FAST, run

from homing.client import AsyncProducer, AsyncSimpleConsumer, Message
from homing.testing.broker_process import BrokerProcess


async def _produce_and_consume(endpoint: str, topic: str, count: int) -> list[bytes]:
    async with AsyncProducer(endpoint, topics=[topic], timings=FAST) as producer:
        await producer.send(Message(topic, b"first"))
        await asyncio.gather(*(producer.send(Message(topic, f"m{i}".encode())) for i in range(count - 1)))
    bodies: list[bytes] = []
    async with AsyncSimpleConsumer(
        endpoint, group=f"{topic}-g", subscriptions={topic: "*"}, await_duration_s=1, timings=FAST
    ) as consumer:
        while len(bodies) < count:
            received = await consumer.receive(max_messages=32, invisible_duration=30)
            assert received, f"only {len(bodies)} of {count} received"
            await asyncio.gather(*(consumer.ack(message) for message in received))
            bodies += [message.body for message in received]
    return bodies


def test_against_a_broker_without_extensions_the_standard_rpcs_are_used_after_one_try() -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            bodies = await _produce_and_consume(broker.endpoint, "plain", 5)
            assert sorted(bodies) == sorted([b"first", *(f"m{i}".encode() for i in range(4))])
            called = broker.methods_called()
            # Never reached the fake's code: the server answered UNIMPLEMENTED before any handler.
            assert "SendStream" not in called and "ReceiveBatch" not in called
            assert called.count("SendMessage") >= 2 and called.count("ReceiveMessage") >= 1

    run(scenario())


def test_where_served_sends_go_over_a_stream_and_receives_come_in_one_response() -> None:
    async def scenario() -> None:
        async with FakeBroker(extensions=True) as broker:
            bodies = await _produce_and_consume(broker.endpoint, "streamed", 5)
            assert len(bodies) == 5
            called = broker.methods_called()
            assert called.count("SendStream") == 1  # one stream for every send of the producer
            assert called.count("SendMessage") == len(
                broker.send_requests
            )  # the fake's calls, via the stream
            assert "ReceiveBatch" in called
            assert called.count("ReceiveMessage") == called.count("ReceiveBatch")  # each batch is one

    run(scenario())


def test_a_broken_send_stream_fails_its_sends_retriably_and_the_next_send_opens_a_new_one() -> None:
    async def scenario() -> None:
        async with FakeBroker(extensions=True) as broker:
            assert broker.extensions is not None
            async with AsyncProducer(broker.endpoint, topics=["broken"], timings=FAST) as producer:
                await producer.send(Message("broken", b"before"))
                broker.extensions.streams_to_break = 1
                receipt = await producer.send(Message("broken", b"retried"))  # the producer retries
                assert receipt.message_id
                assert broker.extensions.streams_opened == 2
            stored = [item.message.body for item in broker.stored.get("broken", [])]
            assert stored == [b"before", b"retried"]

    run(scenario())


@pytest.fixture(scope="module")
def homing_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    directory: Path = tmp_path_factory.mktemp("client-extensions")
    with BrokerProcess(directory / "data", options={"long_polling_timeout_s": 2.0}) as process:
        yield process


def test_a_homing_broker_serves_them(homing_broker: BrokerProcess) -> None:
    async def scenario() -> None:
        async with AsyncProducer(homing_broker.endpoint, topics=["served"], timings=FAST) as producer:
            await producer.send(Message("served", b"x"))
            session = producer._session
            assert list(session._send_streams) == [homing_broker.endpoint]  # the send used a stream
            assert session._extensions.usable(homing_broker.endpoint)
        async with AsyncSimpleConsumer(
            homing_broker.endpoint, group="served-g", subscriptions={"served": "*"}, timings=FAST
        ) as consumer:
            (message,) = await consumer.receive(max_messages=8, invisible_duration=30)
            await consumer.ack(message)
            assert consumer._session._extensions.usable(homing_broker.endpoint)
        assert message.body == b"x"

    run(scenario())
