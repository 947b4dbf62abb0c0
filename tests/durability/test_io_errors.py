"""Fault 7: EIO on a write or an fsync. The store fences itself and no OK follows the error.

An in-process broker on a :class:`SimulatedDisk` runs producers and consumers; at a seeded moment
the next write or fsync of the commit log fails with EIO (Linux then may have marked the pages
clean: the simulated disk drops them). From the first error a client sees, no send and no ack may
be confirmed; the broker must stay fenced (refusing writes) until restarted. Then the power goes,
the broker restarts, the load resumes; at the end the checker counts.

An fsync failure of a *derived* file (a consume queue, the checkpoint) must not lose anything
either: it is rebuilt from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno

import pytest

from durability.conftest import FaultRun
from homing.broker.errors import BrokerError
from homing.testing.durability.inprocess import InProcessBroker, InProcessWorkload, Load

FAULT = "7 write/fsync EIO"


def _no_ok_after_the_first_error(completions: list[tuple[str, str, bool]], start: int) -> str | None:
    """The first confirmation (send or ack) after the first failure from ``start`` on, if any."""
    failed_at = next((index for index in range(start, len(completions)) if not completions[index][2]), None)
    if failed_at is None:
        return "no operation failed after the fault was armed"
    failed_kind, failed_uid, _ = completions[failed_at]
    for kind, uid, ok in completions[failed_at + 1 :]:
        if ok:
            return f"{kind} of {uid} confirmed after {failed_kind} of {failed_uid} failed"
    return None


@pytest.mark.parametrize("operation", ["write", "fsync"])
def test_eio_on_the_commit_log_fences_and_nothing_after_it_is_confirmed(
    fault_run: FaultRun, operation: str
) -> None:
    profile, rng = fault_run.profile, fault_run.rng

    async def scenario() -> None:
        node = InProcessBroker(fault_run.seed)
        await node.start()
        workload = InProcessWorkload(node, rng, invisible_s=5)
        for _ in range(profile.eio_rounds):
            load = Load(workload, producers=3, consumers=2)
            await load.until_sent(rng.randint(*profile.sends_per_cycle))
            armed_at = len(workload.completions)
            for _ in range(10):
                # Aim at the active segment: the allocator preparing the next one (a .tmp file) may
                # fail on its own without fencing anything, as it should.
                store = node.running.store
                active = store.log.segment_for(store.write_offset) or store.log.segments[-1]
                node.disk.clear_faults()
                if operation == "write":
                    node.disk.fail_next_write(errno.EIO, active.path, after_bytes=rng.randrange(0, 200))
                else:
                    node.disk.fail_next_sync(errno.EIO, active.path)
                with contextlib.suppress(TimeoutError):
                    await load.until(lambda: node.store is not None and node.store.fenced, timeout_s=5)
                    break
            assert node.store is not None and node.store.fenced, "the armed fault never fenced the store"
            await load.until_sent(5)  # clients keep trying against the fenced broker
            problem = _no_ok_after_the_first_error(workload.completions, armed_at)
            assert problem is None, f"{problem}; {fault_run.replay}"
            with pytest.raises(BrokerError):  # still fenced: refused, not silently accepted
                await node.running.publish([workload.message(workload.new_uid())])
            await load.crash(power_loss=True, torn=rng.random() < 0.5)
            node.disk.clear_faults()
            await node.start()
        report = await workload.check()
        fault_run.record(report)
        assert report.acked > 0

    asyncio.run(scenario())


@pytest.mark.parametrize("target", ["consumequeue", "checkpoint", "index"])
def test_eio_on_a_derived_file_loses_nothing(fault_run: FaultRun, target: str) -> None:
    profile, rng = fault_run.profile, fault_run.rng

    async def scenario() -> None:
        node = InProcessBroker(fault_run.seed)
        await node.start()
        workload = InProcessWorkload(node, rng, invisible_s=5)
        for _ in range(profile.eio_rounds):
            load = Load(workload, producers=3, consumers=2)
            await load.until_sent(rng.randint(*profile.sends_per_cycle))
            node.disk.fail_next_sync(errno.EIO, target)
            await load.until_sent(rng.randint(*profile.sends_per_cycle))
            await load.crash(power_loss=True, torn=rng.random() < 0.5)
            node.disk.clear_faults()
            await node.start()
        report = await workload.check()
        fault_run.record(report)

    asyncio.run(scenario())
