"""The whole promise, end to end: committed business changes reach a consumer, their effect once.

Business transactions write outbox rows (some roll back); a relay sends through the real Homing
client to a real ``homing broker`` process and "dies" five times between the broker's OK and
marking the row sent; a second relay resends those rows under the same ids once their leases end;
a consumer handles every delivery through the SQL inbox on the same database. Counted at the end:
every committed message arrived, nothing else did, the resends arrived as duplicates, and each
message's effect exists exactly once.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import Column, Engine, Integer, String, Table, insert, select
from sqlalchemy.orm import Session, sessionmaker

from homing.client import AsyncSimpleConsumer, ReceivedMessage
from homing.clock import FakeClock
from homing.inbox import Inbox
from homing.outbox import Outbox, OutboxMessage, OutboxRelay, RelaySettings, producer_sender
from homing.testing.broker_process import BrokerProcess

COMMITTED = 20
ROLLED_BACK = 5
CRASHES = 5


class SimulatedCrash(BaseException):
    """The relay process dies: the relay does not catch BaseException."""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    with BrokerProcess(tmp_path_factory.mktemp("outbox-e2e") / "data") as process:
        yield process


def test_committed_messages_arrive_and_take_effect_once(
    broker: BrokerProcess, backend: str, engine: Engine, outbox: Outbox, clock: FakeClock
) -> None:
    topic = f"outbox-e2e-{backend}-{secrets.token_hex(3)}"
    inbox = Inbox("billing", table_name=f"homing_inbox_{secrets.token_hex(4)}", metadata=outbox.metadata)
    effects = Table(
        f"effects_{secrets.token_hex(4)}",
        outbox.metadata,
        Column("row_id", Integer, primary_key=True, autoincrement=True),
        Column("message_id", String(128), nullable=False),
        mysql_engine="InnoDB",
    )
    inbox.create_table(engine)
    effects.create(engine)
    try:
        committed = write_business_transactions(engine, outbox, topic)
        asyncio.run(asyncio.wait_for(relay_with_crashes(broker, engine, outbox, clock), 120))
        deliveries = asyncio.run(asyncio.wait_for(consume(broker, engine, inbox, effects, topic), 120))
        with engine.connect() as connection:
            effect_counts = Counter(connection.execute(select(effects.c.message_id)).scalars())
    finally:
        effects.drop(engine)
        inbox.drop_table(engine)

    assert set(deliveries) == set(committed)  # nothing lost, nothing unexpected
    assert sum(deliveries.values()) == COMMITTED + CRASHES  # the resends arrived, as duplicates
    assert effect_counts == dict.fromkeys(committed, 1)


def write_business_transactions(engine: Engine, outbox: Outbox, topic: str) -> list[str]:
    committed: list[str] = []
    for index in range(COMMITTED + ROLLED_BACK):
        with Session(engine) as session:
            session.begin()
            message_id = outbox.add(session, topic, f"order {index}".encode(), keys=[f"order-{index}"])
            if index < COMMITTED:
                session.commit()
                committed.append(message_id)
            else:
                session.rollback()
    return committed


async def relay_with_crashes(broker: BrokerProcess, engine: Engine, outbox: Outbox, clock: FakeClock) -> None:
    one_at_a_time = RelaySettings(batch_size=1, lease_s=60, send_timeout_s=30)
    async with producer_sender(broker.endpoint) as send:

        async def send_then_die(message: OutboxMessage) -> None:
            await send(message)
            raise SimulatedCrash  # after the broker's OK, before the row is marked

        for _ in range(CRASHES):
            dying = OutboxRelay(outbox, engine, send_then_die, settings=one_at_a_time, clock=clock)
            with pytest.raises(SimulatedCrash):
                await dying.run_once()
        clock.advance(one_at_a_time.lease_s)  # the dead relays' leases run out
        survivor = OutboxRelay(outbox, engine, send, clock=clock)
        result = await survivor.drain()
    assert result.sent == COMMITTED and result.failed == 0
    assert outbox.status(engine).undelivered == 0


async def consume(
    broker: BrokerProcess, engine: Engine, inbox: Inbox, effects: Table, topic: str
) -> Counter[str]:
    def handle(session: Session, message: ReceivedMessage) -> None:
        session.execute(insert(effects).values(message_id=message.message_id))

    handle_once = inbox.wrap_async(handle, sessionmaker(engine))
    deliveries: Counter[str] = Counter()
    async with AsyncSimpleConsumer(
        broker.endpoint, group=f"{topic}-billing", subscriptions={topic: "*"}, await_duration_s=1
    ) as consumer:
        idle_polls = 0
        while idle_polls < 2 or sum(deliveries.values()) < COMMITTED + CRASHES:
            batch = await consumer.receive(max_messages=32, invisible_duration=30)
            idle_polls = 0 if batch else idle_polls + 1
            assert idle_polls < 10, f"deliveries stopped at {sum(deliveries.values())}"
            for message in batch:
                deliveries[message.message_id] += 1
                await handle_once(message)  # returned: processed or a duplicate, so ack
                await consumer.ack(message)
    return deliveries
