"""Fault 13: wall-clock jumps of +-10 minutes through the injected clock. Retry, delay and
check-back timers still fire, and never early.

An in-process broker on a :class:`FakeClock` holds three kinds of timers at once: delayed messages
(due at a wall-clock instant), nacked deliveries (visible again a backoff after the nack) and open
transactions (checked back once old enough). The clock then moves in seeded steps, some of them
jumps of the wall clock alone by up to 10 minutes either way; after each step the broker's timers
run and the consumer takes what is due. "Never early" is judged by the clock each timer follows:
a delayed message is published no earlier than its delivery time, a nacked message comes back no
earlier than its backoff after the nack (both wall clock), a transaction is checked only once its
age by the wall *or* the monotonic clock reaches the timeout (the broker's documented rule). Then
time passes, the consumer drains, and the checker counts: every message exactly once.
"""

from __future__ import annotations

import asyncio
import random

from durability.conftest import FaultRun
from homing.broker.broker import BrokerOptions
from homing.broker.message_codec import DELIVER_AT
from homing.broker.metadata import GroupConfig
from homing.broker.model import Delivery, MessageType, SendReceipt
from homing.broker.transactions import CheckRequest
from homing.testing.durability.history import Outcome
from homing.testing.durability.inprocess import InProcessBroker, InProcessWorkload, new_message

FAULT = "13 clock jumps"
TIMEOUT_S = 6.0
BACKOFF_S = 5.0
TEN_MINUTES_MS = 10 * 60 * 1000


async def _round(fault_run: FaultRun, rng: random.Random, options: BrokerOptions) -> None:
    """One round: timers of every kind, seeded steps and jumps of the clock, a settle, a drain."""
    node = InProcessBroker(rng.randrange(1 << 30), options=options)
    broker = await node.start()
    clock = node.fake_clock
    node.put_group(GroupConfig("g", max_delivery_attempts=50, backoff_s=(BACKOFF_S,)))
    nacked_at: dict[str, int] = {}  # uid -> wall ms of its nack
    early: list[str] = []

    def refuse_first(delivery: Delivery) -> bool:
        uid = delivery.message.message_id
        if uid in nacked_at:
            if clock.now_ms() < nacked_at[uid] + BACKOFF_S * 1000:
                early.append(
                    f"{uid} redelivered {nacked_at[uid] + BACKOFF_S * 1000 - clock.now_ms()} ms early"
                )
            return False
        if not uid.startswith("retry"):
            return False
        nacked_at[uid] = clock.now_ms()
        return True

    workload = InProcessWorkload(node, rng, invisible_s=30, poison=refuse_first)
    prepared: dict[str, tuple[int, float]] = {}  # uid -> (wall ms, monotonic s) when prepared
    dues: list[int] = []

    async def checker(request: CheckRequest) -> bool:
        uid = request.message.message_id
        wall_ms, mono_s = prepared[uid]
        if clock.now_ms() - wall_ms < TIMEOUT_S * 1000 and clock.monotonic_s() - mono_s < TIMEOUT_S:
            early.append(f"transaction {uid} checked before its timeout by either clock")
        await node.running.end_transaction(
            topic=request.topic, message_id=uid, transaction_id=request.transaction_id, commit=True,
            source="check",
        )  # fmt: skip
        return True

    broker.transaction_checker = checker

    async def send(prefix: str, kind: MessageType, **fields: object) -> None:
        uid = f"{prefix}-{workload.new_uid()}"
        workload.history.attempt(uid, prefix)
        if kind is MessageType.TRANSACTION:
            prepared[uid] = (clock.now_ms(), clock.monotonic_s())
        [result] = await node.running.send([new_message("orders", uid, kind, **fields)])
        assert isinstance(result, SendReceipt), result
        workload.history.outcome(uid, Outcome.OK, uid)

    for _ in range(rng.randint(8, 20)):
        choice = rng.random()
        if choice < 0.4:
            due = clock.now_ms() + rng.randint(1_000, 15 * 60 * 1000)
            dues.append(due)
            await send("delay", MessageType.DELAY, delivery_timestamp_ms=due)
        elif choice < 0.7:
            await send("retry", MessageType.NORMAL)
        else:
            await send("tx", MessageType.TRANSACTION)

    async def step() -> None:
        await node.running.timers.deliver_due()
        await node.running._check_transactions()
        while await workload.consume_once(max_messages=64):
            pass

    for _ in range(rng.randint(10, 30)):
        if rng.random() < 0.1:  # a crash now and then: the timers' progress must survive it
            restarted = await node.restart(crash=True)
            restarted.transaction_checker = checker
        if rng.random() < 0.3:
            clock.jump_wall_ms(rng.choice((-1, 1)) * rng.randint(1, TEN_MINUTES_MS))
        else:
            clock.advance(rng.uniform(0.5, 30))
        await step()
    # The faults stop; time passes until the wall clock is past every due time again (the
    # jumps back may add up to hours), in steps a timer must not sleep through; then drain.
    settled = max(dues, default=0) + 60_000
    steps = 0
    while steps < 60 or clock.now_ms() < settled:
        clock.advance(30)
        await step()
        steps += 1
    report = await workload.check()
    fault_run.record(report)
    assert not early, early
    published = _published_delays(node)
    assert len(published) == sum(1 for uid in workload.history.attempts if uid.startswith("delay"))
    for stored_ms, due_ms in published:
        assert stored_ms >= due_ms, f"a delayed message was published {due_ms - stored_ms} ms early"
    await node.stop()


def test_timers_fire_never_early_across_clock_jumps(fault_run: FaultRun) -> None:
    options = BrokerOptions(
        chore_interval_s=3600,
        transaction_timeout_s=TIMEOUT_S,
        transaction_check_interval_s=30,
        transaction_max_checks=100,
    )

    async def scenario() -> None:
        for _ in range(fault_run.profile.clock_jump_rounds):
            await _round(fault_run, fault_run.rng, options)

    asyncio.run(scenario())


def _published_delays(node: InProcessBroker) -> list[tuple[int, int]]:
    """(store time, delivery time) of every delayed message published to its topic."""
    store = node.running.store
    found = []
    config = node.running.metadata.find_topic("orders")
    assert config is not None
    for queue_id in range(config.queue_count):
        offset, end = store.queue_bounds("orders", queue_id)
        for record in (
            store.read_queue("orders", queue_id, offset, end - offset).records if end > offset else []
        ):
            if DELIVER_AT in record.properties:
                found.append((record.store_timestamp_ms, int(record.properties[DELIVER_AT])))
    return found
