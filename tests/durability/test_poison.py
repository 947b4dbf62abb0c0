"""Fault 12: poison messages, with a broker restart in between. Each ends consumed or in the DLQ,
exactly once, with its history.

An in-process broker (simulated disk, fake clock); the group allows 3 delivery attempts with a 1 s
backoff. The handler refuses (nacks) a seeded fifth of the uids, always. Mid-way the broker
restarts (cleanly, as kill -9, or on a power loss, drawn from the seed). After the drain every
good uid has exactly one effect, every poison uid exactly one dead-letter copy, whose properties
say where it came from, after how many attempts and why. A second test crashes the broker right
between a dead-letter copy becoming durable and the original being marked done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from durability.conftest import FaultRun
from homing.broker.broker import Broker
from homing.broker.metadata import GroupConfig
from homing.broker.model import Message, SendReceipt
from homing.broker.system_topics import is_dlq_topic
from homing.testing.durability.history import Outcome
from homing.testing.durability.inprocess import InProcessBroker, InProcessWorkload

FAULT = "12 poison messages"
ATTEMPTS = 3


def _workload(node: InProcessBroker, fault_run: FaultRun, poison: set[str]) -> InProcessWorkload:
    node.put_group(GroupConfig("g", max_delivery_attempts=ATTEMPTS, backoff_s=(1.0,)))
    return InProcessWorkload(
        node, fault_run.rng, invisible_s=5, poison=lambda delivery: delivery.message.message_id in poison
    )


def _assert_history(node: InProcessBroker, poison: set[str]) -> None:
    letters = node.admin.dead_letters("g", limit=10_000)
    assert {item["message_id"] for item in letters} == poison
    for item in letters:
        assert item["origin_topic"] == "orders", item
        assert item["attempts"] == ATTEMPTS, item
        assert item["reason"], item


@pytest.mark.parametrize("restart", ["clean", "crash", "power_loss"])
def test_poison_messages_end_in_the_dlq_exactly_once_across_a_restart(
    fault_run: FaultRun, restart: str
) -> None:
    profile, rng = fault_run.profile, fault_run.rng

    async def scenario() -> None:
        for _ in range(profile.poison_rounds):
            node = InProcessBroker(rng.randrange(1 << 30))
            await node.start()
            poison: set[str] = set()
            workload = _workload(node, fault_run, poison)
            uids = [workload.new_uid() for _ in range(rng.randint(20, 60))]
            poison.update(uid for uid in uids if rng.random() < 0.2)
            workload._next = 0  # send exactly those uids
            for _ in uids:
                assert (await workload.send())[1] is Outcome.OK
            restart_at = rng.randint(1, ATTEMPTS + 1)
            for round_ in range(ATTEMPTS + 2):
                while await workload.consume_once(max_messages=16):
                    pass
                if round_ == restart_at:
                    await node.restart(crash=restart == "crash", power_loss=restart == "power_loss")
                    node.put_group(GroupConfig("g", max_delivery_attempts=ATTEMPTS, backoff_s=(1.0,)))
                node.fake_clock.advance(1.5)
            report = await workload.check()
            assert set(report.dead_lettered) == poison, f"{report.dead_lettered} != {sorted(poison)}"
            fault_run.record(report)
            _assert_history(node, poison)
            await node.stop()

    asyncio.run(scenario())


class _CrashAfterDeadLetter:
    """The broker's publisher, except that once a dead-letter copy is durable it never returns:
    the test cuts the power right there, before the original is marked done."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.copied = asyncio.Event()

    async def publish(self, messages: Sequence[Message]) -> list[SendReceipt]:
        receipts = await self.broker.publish(messages)
        if any(is_dlq_topic(message.topic) for message in messages):
            self.copied.set()
            await asyncio.Event().wait()  # the process dies here
        return receipts


def test_a_crash_between_the_dead_letter_copy_and_the_done_mark_leaves_one_copy(fault_run: FaultRun) -> None:
    rng = fault_run.rng

    async def scenario() -> None:
        node = InProcessBroker(fault_run.seed)
        broker = await node.start()
        poison: set[str] = set()
        workload = _workload(node, fault_run, poison)
        for _ in range(10):
            uid, outcome = await workload.send()
            assert outcome is Outcome.OK
            if rng.random() < 0.5 or not poison:
                poison.add(uid)
        hook = _CrashAfterDeadLetter(broker)
        broker.consumption._publisher = hook
        consumer = asyncio.create_task(_consume_until_copied(workload, hook))
        await asyncio.wait_for(hook.copied.wait(), 30)
        await node.stop(power_loss=True, torn=rng.random() < 0.5)
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await node.start()
        node.put_group(GroupConfig("g", max_delivery_attempts=ATTEMPTS, backoff_s=(1.0,)))
        report = await workload.check()
        fault_run.record(report)
        _assert_history(node, poison)

    asyncio.run(scenario())


async def _consume_until_copied(workload: InProcessWorkload, hook: _CrashAfterDeadLetter) -> None:
    while not hook.copied.is_set():
        await workload.consume_once(max_messages=16)
        workload.node.fake_clock.advance(1.5)
        await asyncio.sleep(0)
