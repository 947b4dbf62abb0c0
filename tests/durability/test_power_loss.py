"""Fault 2: power loss. The simulated disk drops everything not fsynced at the crash, or keeps a
torn prefix of it, while producers send and consumers receive and ack.

An in-process broker on a :class:`SimulatedDisk` runs four producers and two consumers (acks go
through the pop journal in the same log); after a seeded number of completed sends the power goes
(torn or not, drawn from the seed), the broker restarts on what survived, and the load resumes.
After ``power_loss_cycles`` cycles the consumers drain and the checker counts: every
acknowledged send must have its effect exactly once.
"""

from __future__ import annotations

import asyncio

from durability.conftest import FaultRun
from homing.testing.durability.inprocess import InProcessBroker, InProcessWorkload, Load

FAULT = "2 power loss"


def test_power_loss_under_load_keeps_every_acknowledged_send(fault_run: FaultRun) -> None:
    profile, rng = fault_run.profile, fault_run.rng

    async def scenario() -> None:
        node = InProcessBroker(fault_run.seed)
        await node.start()
        workload = InProcessWorkload(node, rng, invisible_s=5)
        torn_tails = crashes = 0
        for _ in range(profile.power_loss_cycles):
            load = Load(workload, producers=4, consumers=2)
            await load.until_sent(rng.randint(*profile.sends_per_cycle))
            await load.crash(power_loss=True, torn=rng.random() < 0.5)
            crashes += 1
            await node.start()
            assert node.store is not None and node.store.recovery is not None
            torn_tails += node.store.recovery.torn_tail is not None
            assert node.store.recovery.corrupt_ranges == [], "a power loss must never look like corruption"
        report = await workload.check()
        report.notes.append(f"{crashes} power losses, {torn_tails} torn tails cut")
        fault_run.record(report)
        assert report.acked > profile.power_loss_cycles

    asyncio.run(scenario())
