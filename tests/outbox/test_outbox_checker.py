"""The transaction checker answers check-backs from the outbox, and its ROLLBACK is binding."""

from __future__ import annotations

import asyncio
import enum
import inspect
import sys
import threading
import time
import types
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, create_engine, insert, select, text
from sqlalchemy.orm import Session

from homing.clock import FakeClock
from homing.outbox import (
    Outbox,
    OutboxRelay,
    OutboxTransactionChecker,
    RecordingSender,
    TransactionFenced,
    TransactionResolution,
)

GRACE_S = 60.0


@pytest.fixture
def checker(outbox: Outbox, engine: Engine, clock: FakeClock) -> OutboxTransactionChecker:
    return OutboxTransactionChecker(outbox, engine, grace_period_s=GRACE_S, lock_timeout_s=10, clock=clock)


def test_a_committed_witness_answers_commit(
    engine: Engine, outbox: Outbox, checker: OutboxTransactionChecker, clock: FakeClock
) -> None:
    message_id = outbox.new_message_id()  # the id the half message was sent with
    with Session(engine) as session, session.begin():
        outbox.add_witness(session, message_id, "orders")
    assert checker.check(message_id) is TransactionResolution.COMMIT
    clock.advance(10 * GRACE_S)
    assert checker.check(message_id) is TransactionResolution.COMMIT
    # The relay never sends a witness: the producer's half message is the delivery.
    sender = RecordingSender()
    asyncio.run(OutboxRelay(outbox, engine, sender, clock=clock).drain())
    assert sender.attempts == []


def test_absent_within_the_grace_period_is_unknown(
    engine: Engine, outbox: Outbox, checker: OutboxTransactionChecker, clock: FakeClock
) -> None:
    message_id = outbox.new_message_id()
    clock.advance(GRACE_S - 0.001)
    assert checker.check(message_id) is TransactionResolution.UNKNOWN
    assert outbox.kind_of(engine, message_id) is None  # nothing fenced yet
    # ...so a slow business transaction can still commit.
    with Session(engine) as session, session.begin():
        outbox.add_witness(session, message_id, "orders")
    assert checker.check(message_id) is TransactionResolution.COMMIT


def test_absent_after_the_grace_period_is_fenced_and_rolled_back(
    engine: Engine, outbox: Outbox, checker: OutboxTransactionChecker, clock: FakeClock, orders: object
) -> None:
    message_id = outbox.new_message_id()
    clock.advance(GRACE_S)
    assert checker.check(message_id) is TransactionResolution.ROLLBACK
    assert outbox.kind_of(engine, message_id) == "fence"
    assert checker.check(message_id) is TransactionResolution.ROLLBACK  # asked again: same answer
    # A business transaction that shows up after the answer cannot commit without its message.
    with pytest.raises(TransactionFenced), Session(engine) as session, session.begin():
        session.execute(insert(orders).values(id=1, item="late"))  # type: ignore[arg-type]
        outbox.add_witness(session, message_id, "orders")
    with engine.connect() as connection:
        assert connection.execute(select(orders)).all() == []  # type: ignore[call-overload]


def test_a_rolled_back_business_transaction_answers_rollback(
    engine: Engine, outbox: Outbox, checker: OutboxTransactionChecker, clock: FakeClock
) -> None:
    message_id = outbox.new_message_id()
    with Session(engine) as session:
        session.begin()
        outbox.add_witness(session, message_id, "orders")
        session.rollback()
    assert checker.check(message_id) is TransactionResolution.UNKNOWN
    clock.advance(GRACE_S)
    assert checker.check(message_id) is TransactionResolution.ROLLBACK


def test_the_born_time_of_the_check_back_wins_over_the_id(
    outbox: Outbox, checker: OutboxTransactionChecker, clock: FakeClock
) -> None:
    assert checker.check("custom-id-without-time") is TransactionResolution.UNKNOWN
    clock.advance(GRACE_S)
    assert checker.check("custom-id-without-time") is TransactionResolution.UNKNOWN  # age unknowable
    born = clock.now_ms() - round(GRACE_S * 1000)
    assert checker.check("custom-id-without-time", born_at_ms=born) is TransactionResolution.ROLLBACK
    young = outbox.new_message_id()
    assert checker.check(young, born_at_ms=born) is TransactionResolution.ROLLBACK


def test_an_unreachable_database_answers_unknown(outbox: Outbox, clock: FakeClock) -> None:
    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/test")
    checker = OutboxTransactionChecker(outbox, engine, clock=clock)
    message_id = outbox.new_message_id()
    clock.advance(3600)
    assert checker.check(message_id) is TransactionResolution.UNKNOWN
    assert asyncio.run(checker.check_async(message_id)) is TransactionResolution.UNKNOWN


def test_check_async_answers_like_check(
    engine: Engine, outbox: Outbox, checker: OutboxTransactionChecker
) -> None:
    message_id = outbox.new_message_id()
    with Session(engine) as session, session.begin():
        outbox.add_witness(session, message_id, "orders")
    assert asyncio.run(checker.check_async(message_id)) is TransactionResolution.COMMIT


def wait_until_blocked_on_a_lock(engine: Engine, backend: str) -> None:
    """Poll the server until some session of this database waits for a row lock."""
    if backend == "postgresql":
        query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        interval_s = 0.01
    else:
        query = "SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'"
        # InnoDB refreshes this table's cache only when it was last read over 0.1 s ago.
        interval_s = 0.15
    deadline = time.monotonic() + 30
    with engine.connect() as connection:
        while connection.execute(text(query)).scalar_one() == 0:
            assert time.monotonic() < deadline, "the checker never waited on the business transaction"
            connection.rollback()  # a fresh snapshot for the next look
            time.sleep(interval_s)


# SQLite has one writer at a time: there is no uncommitted row for the checker to wait on.
@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
@pytest.mark.parametrize("business_commits", [True, False])
def test_the_checker_waits_for_a_business_transaction_committing_the_same_id(
    backend: str,
    engine: Engine,
    outbox: Outbox,
    checker: OutboxTransactionChecker,
    clock: FakeClock,
    business_commits: bool,
) -> None:
    message_id = outbox.new_message_id()
    clock.advance(GRACE_S)  # old enough to be fenced, yet its transaction is still open
    answers: list[TransactionResolution] = []
    with Session(engine) as session:
        session.begin()
        outbox.add_witness(session, message_id, "orders")
        checking = threading.Thread(target=lambda: answers.append(checker.check(message_id)))
        checking.start()
        wait_until_blocked_on_a_lock(engine, backend)
        if business_commits:
            session.commit()
        else:
            session.rollback()
        checking.join(timeout=60)
    expected = TransactionResolution.COMMIT if business_commits else TransactionResolution.ROLLBACK
    assert answers == [expected]
    assert outbox.kind_of(engine, message_id) == ("witness" if business_commits else "fence")


def test_the_client_checker_answers_with_the_clients_enum(
    engine: Engine, outbox: Outbox, checker: OutboxTransactionChecker, monkeypatch: pytest.MonkeyPatch
) -> None:
    class ClientResolution(enum.Enum):  # the client's TransactionResolution has these values
        COMMIT = "commit"
        ROLLBACK = "rollback"
        UNKNOWN = "unknown"

    client = types.ModuleType("homing.client")
    client.TransactionResolution = ClientResolution  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "homing.client", client)
    committed = outbox.new_message_id()
    with Session(engine) as session, session.begin():
        outbox.add_witness(session, committed, "orders")

    @dataclass
    class Received:
        message_id: str
        born_timestamp_ms: int | None

    assert inspect.iscoroutinefunction(checker.check_received_message)  # so the client awaits it
    answer = asyncio.run(checker.check_received_message(Received(committed, None)))
    assert answer is ClientResolution.COMMIT
    old = Received("absent-id", born_timestamp_ms=0)
    assert asyncio.run(checker.check_received_message(old)) is ClientResolution.ROLLBACK
