"""The relay against real databases: send, mark after OK, back off, retry forever, never double-claim."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine, RowMapping, create_engine, func, select
from sqlalchemy.orm import Session

from homing.clock import FakeClock
from homing.outbox import (
    Outbox,
    OutboxAlert,
    OutboxMessage,
    OutboxRelay,
    RecordingSender,
    RelayPass,
    RelaySettings,
    backoff_ms,
)
from homing.outbox._claims import ClaimStore

T = TypeVar("T")

SETTINGS = RelaySettings(
    batch_size=10,
    lease_s=30,
    send_timeout_s=5,
    backoff_min_s=1,
    backoff_max_s=8,
    alert_after_attempts=3,
    poll_interval_s=0.01,
)


class SimulatedCrash(BaseException):
    """Stands for the relay process dying: the relay does not catch BaseException."""


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def add_messages(engine: Engine, outbox: Outbox, count: int, **fields: Any) -> list[str]:
    with Session(engine) as session, session.begin():
        return [
            outbox.add(session, "orders", f"message {index}".encode(), **fields) for index in range(count)
        ]


def row_of(engine: Engine, outbox: Outbox, message_id: str) -> RowMapping:
    with engine.connect() as connection:
        statement = select(outbox.table).where(outbox.table.c.message_id == message_id)
        return connection.execute(statement).mappings().one()


def row_count(engine: Engine, outbox: Outbox) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(outbox.table)).scalar_one())


def make_relay(
    outbox: Outbox,
    engine: Engine,
    sender: Any,
    clock: FakeClock,
    relay_id: str = "relay-a",
    alerts: list[OutboxAlert] | None = None,
    settings: RelaySettings = SETTINGS,
) -> OutboxRelay:
    return OutboxRelay(
        outbox,
        engine,
        sender,
        settings=settings,
        clock=clock,
        relay_id=relay_id,
        on_alert=None if alerts is None else alerts.append,
    )


# ------------------------------------------------------------------------------------------------
# Sending and marking


def test_a_row_is_marked_sent_only_after_the_broker_said_ok(
    engine: Engine, outbox: Outbox, clock: FakeClock
) -> None:
    [message_id] = add_messages(engine, outbox, 1)
    seen_during_send: list[RowMapping] = []

    async def send(message: OutboxMessage) -> None:
        seen_during_send.append(row_of(engine, outbox, message.message_id))
        clock.advance(0.25)  # the broker takes its time

    result = run(make_relay(outbox, engine, send, clock).run_once())
    assert result == RelayPass(claimed=1, sent=1, failed=0)
    [during] = seen_during_send
    assert during["sent_at_ms"] is None
    assert during["claimed_by"] == "relay-a"
    after = row_of(engine, outbox, message_id)
    assert after["sent_at_ms"] == clock.now_ms()
    assert after["attempts"] == 1
    assert after["claimed_by"] is None and after["claim_expires_at_ms"] is None
    assert run(make_relay(outbox, engine, send, clock).run_once()) == RelayPass()  # sent rows stay sent


def test_only_committed_rows_are_relayed(engine: Engine, outbox: Outbox, clock: FakeClock) -> None:
    [committed] = add_messages(engine, outbox, 1)
    with Session(engine) as session:
        session.begin()
        outbox.add(session, "orders", b"rolled back")
        session.rollback()
    sender = RecordingSender()
    run(make_relay(outbox, engine, sender, clock).drain())
    assert [message.message_id for message in sender.sent] == [committed]


def test_failures_back_off_by_the_clock_and_are_retried_forever(
    engine: Engine, outbox: Outbox, clock: FakeClock
) -> None:
    [message_id] = add_messages(engine, outbox, 1)
    sender = RecordingSender()
    sender.fail_next(1000, ConnectionError("broker unreachable"))
    alerts: list[OutboxAlert] = []
    relay = make_relay(outbox, engine, sender, clock, alerts=alerts)
    expected_delays_ms = [1000, 2000, 4000, 8000] + [8000] * 26  # doubling, capped at backoff_max
    for failures, delay_ms in enumerate(expected_delays_ms, start=1):
        assert run(relay.run_once()) == RelayPass(claimed=1, sent=0, failed=1)
        row = row_of(engine, outbox, message_id)
        assert row["attempts"] == failures
        assert row["next_attempt_at_ms"] == clock.now_ms() + delay_ms
        assert row["last_error"] == "ConnectionError: broker unreachable"
        assert row["sent_at_ms"] is None and row["claimed_by"] is None
        # Not due before its time, however often the relay looks.
        assert run(relay.run_once()) == RelayPass()
        clock.advance((delay_ms - 1) / 1000)
        assert run(relay.run_once()) == RelayPass()
        clock.advance(0.001)
    assert [alert.attempts for alert in alerts] == list(range(3, 31, 3))
    assert alerts[0].message.message_id == message_id
    assert alerts[0].error == "ConnectionError: broker unreachable"
    assert row_count(engine, outbox) == 1  # thirty failures later, the row is still there
    sender.fail_next(0)
    assert run(relay.run_once()) == RelayPass(claimed=1, sent=1, failed=0)
    assert row_of(engine, outbox, message_id)["attempts"] == 31
    assert row_count(engine, outbox) == 1  # delivered rows stay until purged


def test_backoff_schedule_is_exponential_and_capped() -> None:
    settings = RelaySettings(backoff_min_s=0.5, backoff_max_s=60)
    assert [backoff_ms(failures, settings) for failures in range(1, 10)] == [
        500,
        1000,
        2000,
        4000,
        8000,
        16000,
        32000,
        60000,
        60000,
    ]
    assert backoff_ms(10_000, settings) == 60000


def test_a_send_that_never_answers_times_out_and_is_retried(
    engine: Engine, outbox: Outbox, clock: FakeClock
) -> None:
    [message_id] = add_messages(engine, outbox, 1)

    async def hang(message: OutboxMessage) -> None:
        await asyncio.Event().wait()

    settings = RelaySettings(lease_s=1, send_timeout_s=0.05, backoff_min_s=1, backoff_max_s=1)
    relay = make_relay(outbox, engine, hang, clock, settings=settings)
    assert run(relay.run_once()) == RelayPass(claimed=1, sent=0, failed=1)
    assert "TimeoutError" in row_of(engine, outbox, message_id)["last_error"]
    clock.advance(1)
    sender = RecordingSender()
    assert run(make_relay(outbox, engine, sender, clock).run_once()).sent == 1


def test_a_broken_alert_hook_does_not_stop_delivery(
    engine: Engine, outbox: Outbox, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    add_messages(engine, outbox, 1)
    sender = RecordingSender()
    sender.fail_next(1)

    def broken(alert: OutboxAlert) -> None:
        raise RuntimeError("pager down")

    settings = RelaySettings(alert_after_attempts=1, backoff_min_s=1, backoff_max_s=1)
    relay = OutboxRelay(outbox, engine, sender, settings=settings, clock=clock, on_alert=broken)
    with caplog.at_level(logging.ERROR, logger="homing.outbox"):
        assert run(relay.run_once()).failed == 1
    assert "the on_alert hook raised" in caplog.text
    assert "has failed 1 times" in caplog.text
    clock.advance(1)
    assert run(relay.run_once()).sent == 1


# ------------------------------------------------------------------------------------------------
# Crashes and leases


def test_a_relay_killed_between_send_and_mark_is_resent_with_the_same_id(
    engine: Engine, outbox: Outbox, clock: FakeClock
) -> None:
    [message_id] = add_messages(engine, outbox, 1)

    def die(message: OutboxMessage) -> None:
        raise SimulatedCrash

    dying = RecordingSender(after_send=die)
    with pytest.raises(SimulatedCrash):
        run(make_relay(outbox, engine, dying, clock, relay_id="relay-a").run_once())
    row = row_of(engine, outbox, message_id)
    assert row["sent_at_ms"] is None and row["claimed_by"] == "relay-a"

    survivor = RecordingSender()
    relay_b = make_relay(outbox, engine, survivor, clock, relay_id="relay-b")
    assert run(relay_b.run_once()) == RelayPass()  # the dead relay's lease still holds
    clock.advance(SETTINGS.lease_s)
    assert run(relay_b.run_once()) == RelayPass(claimed=1, sent=1, failed=0)
    assert [message.message_id for message in dying.sent + survivor.sent] == [message_id, message_id]
    assert dying.sent[0].body == survivor.sent[0].body
    assert row_of(engine, outbox, message_id)["sent_at_ms"] == clock.now_ms()


def test_an_expired_claim_cannot_overwrite_the_new_owner(
    engine: Engine, outbox: Outbox, clock: FakeClock
) -> None:
    add_messages(engine, outbox, 1)
    store = ClaimStore(engine, outbox.table)
    first = store.claim("relay-a", clock.now_ms(), 10, 1000)
    assert len(first.messages) == 1
    assert store.claim("relay-b", clock.now_ms(), 10, 1000).messages == ()
    clock.advance(1)
    second = store.claim("relay-b", clock.now_ms(), 10, 1000)
    assert [message.message_id for message in second.messages] == [first.messages[0].message_id]
    assert not store.mark_failed(first.messages[0], first, clock.now_ms() + 5000, "late")
    assert store.mark_sent(second.messages[0], clock.now_ms())
    assert not store.mark_sent(first.messages[0], clock.now_ms())  # already recorded


# ------------------------------------------------------------------------------------------------
# FIFO groups


def test_a_message_group_is_sent_in_order_and_its_failing_head_blocks_it(
    engine: Engine, outbox: Outbox, clock: FakeClock
) -> None:
    with Session(engine) as session, session.begin():
        group_one = [
            outbox.add(session, "fifo-1", f"g1-{index}".encode(), message_group="g1") for index in range(3)
        ]
        group_two = [
            outbox.add(session, "fifo-2", f"g2-{index}".encode(), message_group="g2") for index in range(2)
        ]
        loose = outbox.add(session, "loose", b"no group")
    sender = RecordingSender()
    sender.failing_topics.add("fifo-1")
    relay = make_relay(outbox, engine, sender, clock)

    assert run(relay.run_once()) == RelayPass(claimed=3, sent=2, failed=1)  # one head per group
    assert [message.message_id for message in sender.sent] in ([group_two[0], loose], [loose, group_two[0]])
    assert run(relay.run_once()) == RelayPass(claimed=1, sent=1, failed=0)  # g2 moves on; g1 waits
    assert run(relay.run_once()) == RelayPass()
    sender.failing_topics.clear()
    clock.advance(1)
    for _ in range(3):
        assert run(relay.run_once()) == RelayPass(claimed=1, sent=1, failed=0)
    sent_ids = [message.message_id for message in sender.sent]
    assert [message_id for message_id in sent_ids if message_id in group_one] == group_one
    assert [message_id for message_id in sent_ids if message_id in group_two] == group_two


# ------------------------------------------------------------------------------------------------
# Several relays at once


def test_concurrent_relays_never_claim_a_row_twice(
    url: str, backend: str, outbox: Outbox, engine: Engine
) -> None:
    total = 400
    with Session(engine) as session, session.begin():
        for index in range(total):
            outbox.add(session, "orders", f"message {index}".encode())
    sender = RecordingSender()
    claimed_by_relay: dict[str, int] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def relay_process(relay_id: str) -> None:
        # Its own engine and pool, as a separate relay process would have.
        own_engine = create_engine(url)
        own_outbox = Outbox(table_name=outbox.table.name)  # the system clock
        settings = RelaySettings(batch_size=7, lease_s=60, send_timeout_s=30)
        relay = OutboxRelay(own_outbox, own_engine, sender, settings=settings, relay_id=relay_id)

        async def work() -> int:
            claimed = 0
            while own_outbox.status(own_engine).undelivered > 0:
                claimed += (await relay.drain()).claimed
            return claimed

        try:
            start.wait()
            claimed_by_relay[relay_id] = run(work())
        except BaseException as error:
            errors.append(error)
        finally:
            own_engine.dispose()

    threads = [threading.Thread(target=relay_process, args=(f"relay-{index}",)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    counts = sender.sent_counts()
    assert len(counts) == total
    assert set(counts.values()) == {1}, {key: value for key, value in counts.items() if value != 1}
    assert sum(claimed_by_relay.values()) == total
    with engine.connect() as connection:
        sent_rows = connection.execute(
            select(func.count()).where(outbox.table.c.sent_at_ms.is_not(None), outbox.table.c.attempts == 1)
        ).scalar_one()
    assert sent_rows == total


# ------------------------------------------------------------------------------------------------
# The background task


def test_run_delivers_in_the_background_and_wakes_on_demand(
    engine: Engine, outbox: Outbox, clock: FakeClock
) -> None:
    async def scenario() -> None:
        delivered = asyncio.Event()
        loop = asyncio.get_running_loop()
        sender = RecordingSender(after_send=lambda message: loop.call_soon_threadsafe(delivered.set))
        settings = RelaySettings(poll_interval_s=3600)  # only wake() can start a pass in time
        relay = make_relay(outbox, engine, sender, clock, settings=settings)
        task = asyncio.create_task(relay.run())
        await asyncio.sleep(0)
        [message_id] = await asyncio.to_thread(add_messages, engine, outbox, 1)
        relay.wake()
        await asyncio.wait_for(delivered.wait(), timeout=30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [message.message_id for message in sender.sent] == [message_id]

    run(scenario())


def test_run_survives_an_unreachable_database(caplog: pytest.LogCaptureFixture) -> None:
    # Port 1 on loopback: nothing listens, so every connection is refused at once.
    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/test")
    relay = OutboxRelay(Outbox(), engine, RecordingSender(), settings=RelaySettings(poll_interval_s=0.01))

    async def scenario() -> None:
        task = asyncio.create_task(relay.run())
        for _ in range(3000):
            if caplog.text.count("claiming failed") >= 2:
                break
            await asyncio.sleep(0.01)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.ERROR, logger="homing.outbox"):
        run(scenario())
    assert caplog.text.count("claiming failed") >= 2


def test_settings_refuse_impossible_limits() -> None:
    for bad in (
        {"batch_size": 0},
        {"batch_size": 10_001},
        {"lease_s": 10, "send_timeout_s": 10},
        {"backoff_min_s": 5, "backoff_max_s": 1},
        {"backoff_min_s": 0},
        {"alert_after_attempts": 0},
        {"poll_interval_s": 0},
    ):
        with pytest.raises(ValueError):
            RelaySettings(**bad)


def test_an_in_memory_sqlite_database_is_refused() -> None:
    with pytest.raises(ValueError, match="file database"):
        OutboxRelay(Outbox(), create_engine("sqlite://"), RecordingSender())
