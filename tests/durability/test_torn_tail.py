"""Fault 3: a torn tail, cut at every byte of the last record, and garbage after it, with the broker
on top (the store-level cases are tests/store/test_store_recovery.py).

A broker stores messages, a consumer acks some (pop-journal records in the same log), and one last
message is written whose fsync never completed: in the crash only its first k bytes landed, for
every k (``torn_stride`` 1: every byte). Each variant starts a broker on those bytes: recovery must
cut and report the tail (never call it corruption), serve every acknowledged message exactly once,
never serve the torn one, and accept new sends. A second test appends random garbage after the last
record instead.
"""

from __future__ import annotations

import asyncio
import random

from durability.conftest import FaultRun
from homing.broker.metadata import TopicConfig
from homing.store import SimulatedDisk
from homing.testing.durability.checker import CheckReport
from homing.testing.durability.history import Outcome
from homing.testing.durability.inbox import SqliteInbox
from homing.testing.durability.inprocess import InProcessBroker, InProcessWorkload, clone_disk

FAULT = "3 torn tail"


async def _base(fault_run: FaultRun) -> tuple[SimulatedDisk, InProcessWorkload, str, str, int, int]:
    """A crashed disk whose last record is the torn message: (disk, workload, its uid, file, offset, size)."""
    node = InProcessBroker(fault_run.seed, checkpoint_interval_s=3600)
    await node.start()
    node.running.metadata.put_topic(TopicConfig("orders", queue_count=2))
    workload = InProcessWorkload(node, fault_run.rng, invisible_s=5)
    for _ in range(fault_run.rng.randint(8, 20)):
        assert (await workload.send())[1] is Outcome.OK
    await workload.consume_once(max_messages=fault_run.rng.randint(1, 6))
    torn, outcome = await workload.send()
    assert outcome is Outcome.OK
    workload.history.outcome(torn, Outcome.UNKNOWN, error="its fsync never completed (the crash tore it)")
    store = node.running.store
    store.dispatch_now()
    [record] = store.find_by_message_id(torn)
    assert record.physical_offset + record.size == store.write_offset, (
        "the torn message must be the last record"
    )
    segment = store.log.segment_for(record.physical_offset)
    assert segment is not None
    path, file_offset = segment.path, record.physical_offset - segment.base_offset
    await node.stop(crash=True)
    return node.disk, workload, torn, path, file_offset, record.size


async def _recover(
    fault_run: FaultRun,
    disk: SimulatedDisk,
    base: InProcessWorkload,
    torn: str,
    cut_at: tuple[str, int] | None,
) -> CheckReport:
    """Start a broker on ``disk`` and check it against the base run's sends and a copy of its inbox;
    ``cut_at``: (file, file offset) where recovery must report a torn tail, None: no tail to cut."""
    node = InProcessBroker(fault_run.seed, disk=disk, checkpoint_interval_s=3600)
    await node.start()
    try:
        recovery = node.running.store.recovery
        assert recovery is not None and recovery.corrupt_ranges == [], (
            f"a torn tail reported as corruption: {recovery}"
        )
        tail = recovery.torn_tail
        if cut_at is None:
            assert tail is None, tail
        else:
            assert tail is not None and (tail.file, tail.file_offset) == cut_at, f"{tail} is not at {cut_at}"
        inbox = SqliteInbox(":memory:", consumer="variant")
        for uid, count in base.inbox.effect_counts().items():
            for _ in range(count):
                inbox.apply(uid, uid)
        workload = InProcessWorkload(node, random.Random(0), invisible_s=5, inbox=inbox, prefix="after")
        workload.history.attempts = dict(base.history.attempts)
        for _ in range(3):  # the broker takes new sends where the cut left off
            assert (await workload.send())[1] is Outcome.OK
        node.fake_clock.advance(6)
        return await workload.check(forbidden={torn} if torn else ())
    finally:
        await node.stop()


def test_a_tail_torn_at_every_byte_of_the_last_record_is_cut_and_reported(fault_run: FaultRun) -> None:
    async def scenario() -> None:
        disk, base, torn, path, file_offset, size = await _base(fault_run)
        torn_reported = 0
        for kept in range(0, size, fault_run.profile.torn_stride):
            copy = clone_disk(disk, seed=kept)
            handle = copy.open(path)
            handle.pwrite(bytes(size - kept), file_offset + kept)  # only the first `kept` bytes landed
            handle.sync()
            handle.close()
            report = await _recover(fault_run, copy, base, torn, (path, file_offset) if kept else None)
            torn_reported += 1
            fault_run.record(report, f"kept {kept} of {size} bytes of the last record")
        assert torn_reported == len(range(0, size, fault_run.profile.torn_stride))

    asyncio.run(scenario())


def test_garbage_after_the_last_record_is_cut_and_reported(fault_run: FaultRun) -> None:
    rng = fault_run.rng

    async def scenario() -> None:
        disk, base, torn, path, file_offset, size = await _base(fault_run)
        for _ in range(8):
            copy = clone_disk(disk, seed=rng.randrange(1 << 30))
            handle = copy.open(path)
            garbage = bytes(value or 1 for value in rng.randbytes(rng.randint(1, 4096)))
            handle.pwrite(garbage, file_offset + size)
            handle.sync()
            handle.close()
            node = InProcessBroker(fault_run.seed, disk=copy, checkpoint_interval_s=3600)
            await node.start()
            recovery = node.running.store.recovery
            await node.stop()
            assert recovery is not None and recovery.corrupt_ranges == [], recovery
            assert recovery.torn_tail is not None and recovery.torn_tail.file == path, recovery
            assert recovery.torn_tail.file_offset == file_offset + size, (
                recovery
            )  # the garbage, not the record
        # The torn message itself survived here (only garbage followed it): it is a recovered unknown.
        copy = clone_disk(disk)
        handle = copy.open(path)
        handle.pwrite(bytes(value or 1 for value in rng.randbytes(512)), file_offset + size)
        handle.sync()
        handle.close()
        report = await _recover(fault_run, copy, base, "", (path, file_offset + size))
        fault_run.record(report)
        assert torn in report.recovered

    asyncio.run(scenario())
