"""The SQL inbox on real databases: effects and record commit together, duplicates never run twice."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, Table, func, insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from homing.clock import FakeClock
from homing.inbox import AlreadyProcessed, Inbox, InboxError, InboxOutcome


@dataclass(frozen=True)
class Delivery:
    message_id: str
    body: str = ""


def effect_counts(engine: Engine, effects: Table) -> Counter[str]:
    with engine.connect() as connection:
        return Counter(connection.execute(select(effects.c.message_id)).scalars())


def record_count(engine: Engine, inbox: Inbox) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(inbox.table)).scalar_one())


def test_the_handler_runs_and_its_record_commits_with_its_effects(
    engine: Engine, inbox: Inbox, effects: Table
) -> None:
    @inbox.idempotent(sessionmaker(engine))
    def handle(session: Session, message: Delivery) -> str:
        session.execute(insert(effects).values(message_id=message.message_id, worker="w"))
        return f"handled {message.body}"

    outcome = handle(Delivery("m-1", "hello"))
    assert outcome == InboxOutcome("m-1", duplicate=False, result="handled hello")
    assert effect_counts(engine, effects) == {"m-1": 1}
    assert inbox.is_processed(engine, "m-1")


def test_a_redelivered_message_is_acknowledged_without_running_again(
    engine: Engine, inbox: Inbox, effects: Table
) -> None:
    runs: list[str] = []

    @inbox.idempotent(sessionmaker(engine))
    def handle(session: Session, message: Delivery) -> None:
        runs.append(message.message_id)
        session.execute(insert(effects).values(message_id=message.message_id, worker="w"))

    assert not handle(Delivery("m-1")).duplicate
    assert handle(Delivery("m-1")) == InboxOutcome("m-1", duplicate=True, result=None)
    assert handle(Delivery("m-1")).duplicate
    assert runs == ["m-1"]
    assert effect_counts(engine, effects) == {"m-1": 1}


def test_a_failing_handler_leaves_neither_effects_nor_record(
    engine: Engine, inbox: Inbox, effects: Table
) -> None:
    failures = [RuntimeError("downstream said no")]

    @inbox.idempotent(sessionmaker(engine))
    def handle(session: Session, message: Delivery) -> None:
        session.execute(insert(effects).values(message_id=message.message_id, worker="w"))
        if failures:
            raise failures.pop()

    with pytest.raises(RuntimeError, match="downstream said no"):
        handle(Delivery("m-1"))
    assert effect_counts(engine, effects) == {}
    assert not inbox.is_processed(engine, "m-1")
    # The redelivery runs the handler again, from scratch.
    assert not handle(Delivery("m-1")).duplicate
    assert effect_counts(engine, effects) == {"m-1": 1}


def test_a_handler_must_not_commit_by_itself(engine: Engine, inbox: Inbox, effects: Table) -> None:
    @inbox.idempotent(sessionmaker(engine))
    def handle(session: Session, message: Delivery) -> None:
        session.execute(insert(effects).values(message_id=message.message_id, worker="w"))
        session.commit()

    with pytest.raises(InboxError, match="committed or rolled back"):
        handle(Delivery("m-1"))
    # What it committed, it committed together with the record: the redelivery is a duplicate.
    assert handle(Delivery("m-1")).duplicate
    assert effect_counts(engine, effects) == {"m-1": 1}


def test_a_business_key_can_replace_the_message_id(engine: Engine, inbox: Inbox, effects: Table) -> None:
    @inbox.idempotent(sessionmaker(engine), message_id=lambda message: f"order:{message.body}")
    def handle(session: Session, message: Delivery) -> None:
        session.execute(insert(effects).values(message_id=message.message_id, worker="w"))

    assert not handle(Delivery("m-1", "order-7")).duplicate
    assert handle(Delivery("m-2", "order-7")).duplicate  # another message, same business fact
    assert effect_counts(engine, effects) == {"m-1": 1}
    assert inbox.is_processed(engine, "order:order-7")


def test_each_consumer_processes_a_message_once(
    engine: Engine, inbox: Inbox, effects: Table, metadata: MetaData
) -> None:
    other = Inbox("shipping", table_name=inbox.table.name)
    for consumer in (inbox, other):

        def work(session: Session, name: str = consumer.consumer) -> None:
            session.execute(insert(effects).values(message_id="m-1", worker=name))

        for _ in range(2):
            consumer.process(sessionmaker(engine), "m-1", work)
    with engine.connect() as connection:
        workers = Counter(connection.execute(select(effects.c.worker)).scalars())
    assert workers == {"payments": 1, "shipping": 1}


def test_a_message_without_an_id_is_refused(engine: Engine, inbox: Inbox) -> None:
    handle = inbox.wrap(lambda session, message: None, sessionmaker(engine))
    with pytest.raises(TypeError, match="message_id"):
        handle(object())
    with pytest.raises(ValueError, match="message_id"):
        inbox.process(sessionmaker(engine), "x" * 129, lambda session: None)


def test_claim_composes_with_the_callers_own_transaction(
    engine: Engine, inbox: Inbox, effects: Table
) -> None:
    def consume(message_id: str) -> bool:
        try:
            with Session(engine) as session, session.begin():
                inbox.claim(session, message_id)
                session.execute(insert(effects).values(message_id=message_id, worker="w"))
        except AlreadyProcessed:
            return False
        return True

    assert consume("m-1") is True
    assert consume("m-1") is False
    assert effect_counts(engine, effects) == {"m-1": 1}


def test_the_async_wrapper_runs_the_handler_in_a_thread(engine: Engine, inbox: Inbox, effects: Table) -> None:
    threads: list[str] = []

    @inbox.idempotent_async(sessionmaker(engine))
    def handle(session: Session, message: Delivery) -> int:
        threads.append(threading.current_thread().name)
        session.execute(insert(effects).values(message_id=message.message_id, worker="w"))
        return 7

    async def scenario() -> list[InboxOutcome[int]]:
        return [await handle(Delivery("m-1")), await handle(Delivery("m-1"))]

    first, second = asyncio.run(scenario())
    assert (first.duplicate, first.result, second.duplicate) == (False, 7, True)
    assert threads and threads[0] != threading.main_thread().name
    assert effect_counts(engine, effects) == {"m-1": 1}


def test_purge_removes_old_records_of_this_consumer_only(
    engine: Engine, inbox: Inbox, clock: FakeClock
) -> None:
    other = Inbox("shipping", table_name=inbox.table.name, clock=clock)
    factory = sessionmaker(engine)
    inbox.process(factory, "old", lambda session: None)
    other.process(factory, "old", lambda session: None)
    clock.advance(3600)
    inbox.process(factory, "new", lambda session: None)
    assert inbox.purge(engine, before_ms=clock.now_ms()) == 1
    assert not inbox.is_processed(engine, "old")
    assert inbox.is_processed(engine, "new")
    assert other.is_processed(engine, "old")
    assert record_count(engine, inbox) == 2


# ------------------------------------------------------------------------------------------------
# Concurrent deliveries of one message


def wait_for_lock_waiters(engine: Engine, backend: str, count: int) -> None:
    """Poll the server until ``count`` sessions wait for a row lock."""
    if backend == "postgresql":
        query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        interval_s = 0.01
    else:
        query = "SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'"
        interval_s = 0.15  # InnoDB refreshes this table only when last read over 0.1 s ago
    deadline = time.monotonic() + 30
    with engine.connect() as connection:
        while connection.execute(text(query)).scalar_one() < count:
            assert time.monotonic() < deadline, f"fewer than {count} deliveries waited on the lock"
            connection.rollback()
            time.sleep(interval_s)


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
@pytest.mark.parametrize("first_succeeds", [True, False])
def test_concurrent_deliveries_wait_for_the_first_and_follow_its_outcome(
    backend: str, engine: Engine, inbox: Inbox, effects: Table, first_succeeds: bool
) -> None:
    in_handler = threading.Event()
    finish = threading.Event()
    outcomes: dict[str, InboxOutcome[None] | BaseException] = {}

    def handler_for(worker: str) -> None:
        def handle(session: Session, message: Delivery) -> None:
            session.execute(insert(effects).values(message_id=message.message_id, worker=worker))
            if worker == "first":
                in_handler.set()
                assert finish.wait(60)
                if not first_succeeds:
                    raise RuntimeError("first delivery failed")

        try:
            outcomes[worker] = inbox.wrap(handle, sessionmaker(engine))(Delivery("m-1"))
        except BaseException as error:
            outcomes[worker] = error

    first = threading.Thread(target=handler_for, args=("first",))
    first.start()
    assert in_handler.wait(60)
    others = [threading.Thread(target=handler_for, args=(name,)) for name in ("second", "third")]
    for thread in others:
        thread.start()
    wait_for_lock_waiters(engine, backend, 2)  # both redeliveries are blocked on the record
    finish.set()
    for thread in [first, *others]:
        thread.join(60)

    effects_by_worker = effect_counts(engine, effects)
    assert effects_by_worker == {"m-1": 1}
    if first_succeeds:
        assert outcomes["first"] == InboxOutcome("m-1", duplicate=False, result=None)
        assert outcomes["second"] == outcomes["third"] == InboxOutcome("m-1", duplicate=True)
    else:
        assert isinstance(outcomes["first"], RuntimeError)
        # One of the waiting deliveries did the work; the other saw it done (perhaps after
        # losing a deadlock, which the inbox reruns).
        later = sorted(
            outcome.duplicate
            for outcome in (outcomes["second"], outcomes["third"])
            if isinstance(outcome, InboxOutcome)
        )
        assert later == [False, True], outcomes


def test_many_workers_racing_over_many_ids_give_one_effect_each(
    url: str, engine: Engine, inbox: Inbox, effects: Table
) -> None:
    ids = [f"m-{index}" for index in range(40)]
    errors: list[BaseException] = []
    ran = Counter[str]()
    lock = threading.Lock()

    def worker(seed: int) -> None:
        order = ids * 2  # every worker sees every message twice
        random.Random(seed).shuffle(order)

        def handle(session: Session, message: Delivery) -> None:
            session.execute(insert(effects).values(message_id=message.message_id, worker=str(seed)))

        wrapped = inbox.wrap(handle, sessionmaker(engine))
        try:
            for message_id in order:
                if not wrapped(Delivery(message_id)).duplicate:
                    with lock:
                        ran[message_id] += 1
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    assert effect_counts(engine, effects) == dict.fromkeys(ids, 1)
    assert ran == dict.fromkeys(ids, 1)
    assert record_count(engine, inbox) == len(ids)


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_a_deadlock_victim_is_rerun_whole(
    backend: str, engine: Engine, inbox: Inbox, metadata: MetaData
) -> None:
    accounts = Table(
        f"accounts_{inbox.table.name[-8:]}",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("balance", Integer, nullable=False),
        mysql_engine="InnoDB",
    )
    accounts.create(engine)
    try:
        with engine.begin() as connection:
            connection.execute(insert(accounts), [{"id": 1, "balance": 0}, {"id": 2, "balance": 0}])
        both_hold_one = threading.Barrier(2, timeout=30)
        runs = Counter[str]()
        outcomes: dict[str, object] = {}

        def transfer(name: str, first: int, second: int) -> None:
            def handle(session: Session, message: Delivery) -> None:
                runs[name] += 1
                session.execute(
                    update(accounts).where(accounts.c.id == first).values(balance=accounts.c.balance + 1)
                )
                if runs[name] == 1:
                    both_hold_one.wait()  # each holds one row; each now wants the other's: deadlock
                session.execute(
                    update(accounts).where(accounts.c.id == second).values(balance=accounts.c.balance + 1)
                )

            try:
                outcomes[name] = inbox.wrap(handle, sessionmaker(engine))(Delivery(name))
            except BaseException as error:
                outcomes[name] = error

        threads = [
            threading.Thread(target=transfer, args=("a", 1, 2)),
            threading.Thread(target=transfer, args=("b", 2, 1)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert outcomes == {
            "a": InboxOutcome("a", duplicate=False, result=None),
            "b": InboxOutcome("b", duplicate=False, result=None),
        }
        assert sorted(runs.values()) == [1, 2]  # the victim ran again, from scratch
        with engine.connect() as connection:
            assert connection.execute(select(accounts.c.balance).order_by(accounts.c.id)).scalars().all() == [
                2,
                2,
            ]
    finally:
        accounts.drop(engine)
