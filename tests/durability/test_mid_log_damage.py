"""Fault 4: a bit flip, and a truncation, in the middle of the log: detected, reported, never served.

A broker stores messages over several small segments (four queues), cleanly stopped. Then media
damage: one seeded bit of one record in the middle of the log flips, or a segment that is not the
last is cut short in the middle. On restart (and on reads) the damage must be reported with its
file and offset, the damaged messages must never be delivered, and every other message must be,
exactly once. Damage destroys data Homing does not claim to repair: the destroyed messages are
listed in the report, not counted as lost, and must never be served.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from durability.conftest import FaultRun
from homing.broker.metadata import TopicConfig
from homing.store import StoredRecord
from homing.testing.durability.history import Outcome
from homing.testing.durability.inprocess import InProcessBroker, InProcessWorkload

FAULT = "4 mid-log damage"


def _records(node: InProcessBroker) -> list[StoredRecord]:
    store = node.running.store
    store.dispatch_now()
    found: list[StoredRecord] = []
    for queue_id in range(4):
        offset, end = store.queue_bounds("orders", queue_id)
        found += store.read_queue("orders", queue_id, offset, end - offset).records
    return sorted(found, key=lambda record: record.physical_offset)


@pytest.mark.parametrize("damage", ["bit flip", "truncation"])
def test_mid_log_damage_is_reported_and_never_served(
    fault_run: FaultRun, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    rng = fault_run.rng

    async def scenario() -> None:
        node = InProcessBroker(fault_run.seed, segment_size_bytes=8 * 1024, checkpoint_interval_s=3600)
        await node.start()
        node.running.metadata.put_topic(TopicConfig("orders", queue_count=4))
        workload = InProcessWorkload(node, rng, invisible_s=5)
        for _ in range(rng.randint(120, 200)):
            assert (await workload.send())[1] is Outcome.OK
        records = _records(node)
        segments = node.running.store.log.segments
        assert len(segments) >= 3, "the damage needs segments before and after it"
        await node.stop()
        if damage == "bit flip":
            victim = rng.choice(records[len(records) // 4 : -len(records) // 4])
            segment = next(
                item for item in segments if item.base_offset <= victim.physical_offset < item.end_offset
            )
            at = victim.physical_offset - segment.base_offset + rng.randrange(victim.size)
            node.disk.flip_bit(segment.path, at, rng.randrange(8))
            destroyed = {victim.message_id}
            where = (segment.path, victim.physical_offset)
        else:
            segment = rng.choice(segments[:-2])
            inside = [
                item for item in records if segment.base_offset <= item.physical_offset < segment.end_offset
            ]
            cut_record = rng.choice(inside[1:-1] or inside)
            cut = cut_record.physical_offset - segment.base_offset + rng.randrange(1, cut_record.size)
            handle = node.disk.open(segment.path)
            handle.truncate(cut)
            handle.sync()
            handle.close()
            destroyed = {
                item.message_id
                for item in inside
                if item.physical_offset + item.size > segment.base_offset + cut
            }
            where = (segment.path, cut_record.physical_offset)
        for uid in destroyed:
            workload.history.outcome(uid, Outcome.UNKNOWN, error=f"destroyed by the injected {damage}")
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            await node.start()
            recovery = node.running.store.recovery
            assert recovery is not None and recovery.torn_tail is None, (
                f"damage mid-log cut as a torn tail: {recovery}"
            )
            report = await workload.check(forbidden=destroyed)
        reported = " ".join(
            [str(item) for item in recovery.corrupt_ranges]
            + [record.getMessage() for record in caplog.records]
        )
        report.notes.append(
            f"{damage}: {len(destroyed)} message(s) destroyed at {where}; reported: {reported[:300]}"
        )
        fault_run.record(report)
        assert where[0] in reported, f"the damage in {where[0]} was not reported: {reported[:2000]}"

    asyncio.run(scenario())
