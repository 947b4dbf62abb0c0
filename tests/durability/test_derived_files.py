"""Fault 5: derived files deleted, zeroed or truncated: consume queues, key index, checkpoint and
the pop-state snapshot. They are rebuilt from the log; consumer progress never jumps forward past
messages not yet consumed.

An in-process broker (simulated disk) stores messages in four queues; a consumer acks about half
of them and holds some more in flight. The broker stops (cleanly or as kill -9, seeded), files of
one kind are damaged, and it starts again: everything not acked before must still be delivered
(the checker's ``lost``), nothing acked takes effect twice (the inbox), and the group ends with no
lag and nothing in flight. Each kind x damage is one case; ``derived_damage_rounds`` more rounds
damage a seeded mix of files.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from durability.conftest import FaultRun
from homing.broker.metadata import TopicConfig
from homing.testing.durability.faults import damage_file
from homing.testing.durability.history import Outcome
from homing.testing.durability.inprocess import InProcessBroker, InProcessWorkload, disk_files

FAULT = "5 derived files lost"

KINDS: dict[str, Callable[[str], bool]] = {
    "consume queues": lambda path: "/consumequeue/" in path,
    "key index": lambda path: "/index/" in path,
    "checkpoint": lambda path: path == "/data/checkpoint",
    "pop state": lambda path: path == "/data/popstate",
}


async def _round(fault_run: FaultRun, rng: random.Random, kinds: list[str], how: str | None) -> list[str]:
    node = InProcessBroker(rng.randrange(1 << 30), checkpoint_interval_s=0.01)
    await node.start()
    node.running.metadata.put_topic(TopicConfig("orders", queue_count=4))
    workload = InProcessWorkload(node, rng, invisible_s=5)
    for _ in range(rng.randint(60, 200)):
        assert (await workload.send())[1] is Outcome.OK
    target = len(workload.history.attempts) // 2
    while sum(workload.history.acks.values()) < target:
        assert await workload.consume_once(max_messages=rng.randint(1, 16))
    held = await workload.receive(max_messages=rng.randint(1, 10))  # in flight, never acked
    node.running.consumption.write_snapshot()
    await asyncio.sleep(0.05)  # let the dispatcher write a checkpoint covering the queues
    await node.stop(crash=rng.random() < 0.5)
    done: list[str] = []
    files = disk_files(node.disk, "/data")
    for kind in kinds:
        victims = [path for path in files if KINDS[kind](path)]
        assert victims, f"no {kind} file to damage among {files}"
        for path in rng.sample(victims, k=rng.randint(1, len(victims))):
            done.append(damage_file(node.disk, path, how or rng.choice(("delete", "zero", "truncate")), rng))
    await node.start()
    node.fake_clock.advance(6)  # the held deliveries' invisible time ends
    report = await workload.check()
    report.notes.append(f"held {len(held)} in flight; " + "; ".join(done))
    fault_run.record(report)
    await node.stop()
    return done


@pytest.mark.parametrize("how", ["delete", "zero", "truncate"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_damaged_derived_files_are_rebuilt_and_progress_never_jumps(
    fault_run: FaultRun, kind: str, how: str
) -> None:
    asyncio.run(_round(fault_run, fault_run.rng, [kind], how))


def test_a_seeded_mix_of_damaged_derived_files(fault_run: FaultRun) -> None:
    rng = fault_run.rng

    async def scenario() -> None:
        for _ in range(fault_run.profile.derived_damage_rounds):
            kinds = rng.sample(list(KINDS), k=rng.randint(1, len(KINDS)))
            await _round(fault_run, rng, kinds, None)

    asyncio.run(scenario())
