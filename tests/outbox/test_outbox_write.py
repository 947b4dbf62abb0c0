"""Writing outbox rows: they exist if and only if the caller's transaction commits."""

from __future__ import annotations

import asyncio
import random
import re

import pytest
from sqlalchemy import Engine, Table, func, insert, select
from sqlalchemy.orm import Session

from homing.clock import FakeClock
from homing.outbox import (
    InvalidOutboxMessage,
    Outbox,
    OutboxRelay,
    RecordingSender,
    format_message_id,
    message_id_time_ms,
)
from homing.outbox._claims import ClaimStore


def count_rows(engine: Engine, table: Table) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


def test_row_exists_after_the_business_transaction_commits(
    engine: Engine, outbox: Outbox, orders: Table
) -> None:
    with Session(engine) as session, session.begin():
        session.execute(insert(orders).values(id=1, item="book"))
        message_id = outbox.add(session, "orders", b"order 1 placed", keys=["1"])
    assert count_rows(engine, orders) == 1
    assert outbox.kind_of(engine, message_id) == "message"


def test_no_row_after_the_business_transaction_rolls_back(
    engine: Engine, outbox: Outbox, orders: Table
) -> None:
    with Session(engine) as session:
        session.begin()
        session.execute(insert(orders).values(id=1, item="book"))
        message_id = outbox.add(session, "orders", b"order 1 placed")
        session.rollback()
    assert count_rows(engine, orders) == 0
    assert count_rows(engine, outbox.table) == 0
    assert outbox.kind_of(engine, message_id) is None


def test_no_row_when_the_business_code_raises_after_adding(
    engine: Engine, outbox: Outbox, orders: Table
) -> None:
    with pytest.raises(RuntimeError, match="payment declined"), Session(engine) as session, session.begin():
        outbox.add(session, "orders", b"order 1 placed")
        session.execute(insert(orders).values(id=1, item="book"))
        raise RuntimeError("payment declined")
    assert count_rows(engine, orders) == 0
    assert count_rows(engine, outbox.table) == 0


def test_no_row_when_the_business_commit_itself_fails(engine: Engine, outbox: Outbox, orders: Table) -> None:
    with Session(engine) as session, session.begin():
        session.execute(insert(orders).values(id=1, item="book"))
    # The second transaction adds the message first, then breaks on the business table's key.
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"), Session(engine) as session, session.begin():
        outbox.add(session, "orders", b"order 1 placed again")
        session.execute(insert(orders).values(id=1, item="book"))
    assert count_rows(engine, outbox.table) == 0


def test_core_connection_works_like_a_session(engine: Engine, outbox: Outbox, orders: Table) -> None:
    with engine.begin() as connection:
        outbox.add(connection, "orders", b"committed")
    with engine.connect() as connection:
        outbox.add(connection, "orders", b"rolled back")
        connection.rollback()
    assert outbox.status(engine).undelivered == 1


def test_every_field_round_trips_to_the_sender(engine: Engine, outbox: Outbox, clock: FakeClock) -> None:
    body = bytes(random.Random(7).randbytes(1024 * 1024))  # binary, and above MySQL's 64 KiB BLOB
    with Session(engine) as session, session.begin():
        message_id = outbox.add(
            session,
            "payments",
            body,
            tag="captured",
            keys=["order-7", "customer-3"],
            properties={"currency": "EUR", "ünïcode": "✓"},
            deliver_at_ms=clock.now_ms() + 60_000,
        )
        grouped_id = outbox.add(session, "payments", b"fifo", message_group="customer-3")
    sender = RecordingSender()
    asyncio_run_drain(outbox, engine, sender, clock)
    first, second = sender.sent
    assert first.message_id == message_id
    assert first.topic == "payments"
    assert first.body == body
    assert first.tag == "captured"
    assert first.keys == ("order-7", "customer-3")
    assert dict(first.properties) == {"currency": "EUR", "ünïcode": "✓"}
    assert first.deliver_at_ms == clock.now_ms() + 60_000
    assert first.message_group is None
    assert first.created_at_ms == clock.now_ms()
    assert first.attempts == 0
    assert second.message_id == grouped_id
    assert second.message_group == "customer-3"
    assert second.deliver_at_ms is None


def asyncio_run_drain(outbox: Outbox, engine: Engine, sender: RecordingSender, clock: FakeClock) -> None:
    asyncio.run(OutboxRelay(outbox, engine, sender, clock=clock).drain())


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"topic": ""}, "topic"),
        ({"topic": "t" * 128}, "topic"),
        ({"topic": "%SYS"}, "topic"),
        ({"topic": "has space"}, "topic"),
        ({"tag": "tab\there"}, "control"),
        ({"properties": {"__RMQ.x": "x"}}, "reserved"),
        ({"properties": {"p": "new\nline"}}, "control"),
        ({"body": b""}, "empty"),
        ({"body": b"x" * 65}, "limit"),
        ({"body": "text"}, "bytes"),
        ({"tag": "a|b"}, r"\|"),
        ({"tag": " "}, "tag"),
        ({"keys": "one-string"}, "sequence"),
        ({"keys": ["k"] * 65}, "keys"),
        ({"keys": [""]}, "key"),
        ({"properties": {"__homing.topic": "x"}}, "reserved"),
        ({"properties": {"big": "x" * 17_000}}, "properties"),
        ({"message_group": "g", "deliver_at_ms": 1}, "not both"),
        ({"message_group": "g" * 256}, "message_group"),
        ({"message_id": "i" * 129}, "message_id"),
        ({"message_id": "has space"}, "message_id"),
    ],
)
def test_invalid_messages_are_refused_before_anything_is_written(
    engine: Engine, outbox: Outbox, changes: dict[str, object], complaint: str
) -> None:
    small = Outbox(table_name=outbox.table.name, max_body_bytes=64)
    arguments: dict[str, object] = {"topic": "orders", "body": b"ok"} | changes
    with pytest.raises(InvalidOutboxMessage, match=complaint), Session(engine) as session, session.begin():
        small.add(session, **arguments)  # type: ignore[arg-type]
    assert count_rows(engine, outbox.table) == 0


def test_message_ids_are_time_ordered_and_carry_their_creation_time(clock: FakeClock) -> None:
    seeded = random.Random(1)
    outbox = Outbox(clock=clock, random_bits=seeded.getrandbits)
    first = outbox.new_message_id()
    clock.advance(0.001)
    second = outbox.new_message_id()
    assert re.fullmatch(r"[0-9A-F]{32}", first)
    assert first < second
    assert message_id_time_ms(first) == clock.now_ms() - 1
    assert message_id_time_ms(second) == clock.now_ms()
    assert message_id_time_ms("not-an-outbox-id") is None
    assert format_message_id(0xABC, 1) == "000000000ABC" + "0" * 19 + "1"
    replay = Outbox(clock=FakeClock(), random_bits=random.Random(1).getrandbits)
    assert replay.new_message_id()[12:] == first[12:]


def test_explicit_message_id_is_kept_and_unique(engine: Engine, outbox: Outbox) -> None:
    with Session(engine) as session, session.begin():
        outbox.add(session, "orders", b"one", message_id="order-1-placed")
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"), Session(engine) as session, session.begin():
        outbox.add(session, "orders", b"two", message_id="order-1-placed")
    assert count_rows(engine, outbox.table) == 1


def test_purge_never_deletes_an_undelivered_message(engine: Engine, outbox: Outbox, clock: FakeClock) -> None:
    with Session(engine) as session, session.begin():
        delivered = outbox.add(session, "orders", b"delivered")
        undelivered = outbox.add(session, "orders", b"undelivered")
        outbox.add_witness(session, outbox.new_message_id(), "orders")
    store = ClaimStore(engine, outbox.table)
    claim = store.claim("relay", clock.now_ms(), 10, 1000)
    by_id = {message.message_id: message for message in claim.messages}
    assert store.mark_sent(by_id[delivered], clock.now_ms())
    clock.advance(3600)
    assert outbox.purge(engine, before_ms=clock.now_ms() + 1, limit=1) == 1
    assert outbox.purge(engine, before_ms=clock.now_ms() + 1) == 1  # the witness
    assert outbox.purge(engine, before_ms=clock.now_ms() + 1) == 0
    assert outbox.kind_of(engine, delivered) is None
    assert outbox.kind_of(engine, undelivered) == "message"
    assert outbox.status(engine).undelivered == 1


def test_status_reports_the_backlog(engine: Engine, outbox: Outbox, clock: FakeClock) -> None:
    assert outbox.status(engine).undelivered == 0
    assert outbox.status(engine).oldest_undelivered_created_at_ms is None
    created = clock.now_ms()
    with Session(engine) as session, session.begin():
        outbox.add(session, "orders", b"a")
        clock.advance(1)
        outbox.add(session, "orders", b"b")
    status = outbox.status(engine)
    assert (status.undelivered, status.oldest_undelivered_created_at_ms, status.most_attempts) == (
        2,
        created,
        0,
    )
