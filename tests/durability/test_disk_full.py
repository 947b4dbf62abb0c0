"""Fault 6: a full disk, with a real broker process on a size-limited tmpfs, through a client.

Ballast takes most of a 32 MiB tmpfs; producers (Homing's client, one attempt per send so that a
refusal is definite) and a consumer run until the disk is full and sends are refused, either by
the broker's guard (``max_disk_used_ratio`` 0.9) or by the file system itself (ratio 1.0: ENOSPC).
A refusal must be clean (TOO_MANY_REQUESTS, the broker not fenced) and never an OK; a refused send
must never appear. The ballast is then removed: sends resume without a restart. Finally the broker
is killed with SIGKILL and restarted, the consumer drains, and the checker counts.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from durability.conftest import FaultRun
from homing.testing.durability.faults import tmpfs
from homing.testing.durability.history import Outcome
from homing.testing.durability.processes import Cluster, WorkloadProcess

FAULT = "6 disk full"
SIZE = 32 * 1024 * 1024


def _fill(path: Path, leave_bytes: int) -> int:
    """Write ballast until only ``leave_bytes`` are free; returns its size."""
    stats = os.statvfs(path.parent)
    size = max(stats.f_bavail * stats.f_frsize - leave_bytes, 0)
    with path.open("wb") as handle:
        try:
            handle.write(b"\xab" * size)
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return size


@pytest.mark.root
@pytest.mark.parametrize("ratio", [0.9, 1.0], ids=["guard", "enospc"])
def test_a_full_disk_refuses_cleanly_never_acks_and_resumes(
    fault_run: FaultRun, tmp_path: Path, ratio: float
) -> None:
    rng = fault_run.rng
    with (
        tmpfs(tmp_path / "fs", SIZE) as mount,
        Cluster(
            tmp_path / "run",
            fault_run.seed,
            data_dir=mount / "data",
            broker_options={"max_disk_used_ratio": ratio, "segment_size_bytes": 1024 * 1024},
        ) as cluster,
    ):
        cluster.broker.start()
        ballast = mount / "ballast"
        leave = rng.randint(3, 5) * 1024 * 1024 if ratio == 1.0 else int(SIZE * 0.13)
        _fill(ballast, leave)
        producers = [
            cluster.producer(f"p{index}", rate=400, attempts=1, extra=["--body-size", "2048"])
            for index in range(2)
        ]
        consumer = cluster.consumer("c0")
        refusals = _wait_for_refusals(cluster, producers, at_least=20)
        health = cluster.admin("/v1/health")
        assert health["status"] == "ok", f"a full disk must not fence the store: {health}"
        ballast.unlink()
        cluster.wait_for_progress(producers)  # sends resume once space is free, without a restart
        cluster.stop(producers)
        cluster.broker.kill()
        cluster.broker.start()
        drained = cluster.drain()
        cluster.stop([consumer])
        history = cluster.history()
        refused = history.uids(Outcome.FAILED)
        report = cluster.check(drained=drained, forbidden=refused, history=history)
        codes = {
            attempt.error.split(":")[0]
            for attempt in history.attempts.values()
            if attempt.outcome is Outcome.FAILED
        }
        report.notes.append(f"{len(refused)} sends refused ({', '.join(sorted(codes))}); first {refusals}")
        fault_run.record(report, cluster.describe_failure())
        assert codes == {"TooManyRequestsError"}, f"refusals must be TOO_MANY_REQUESTS, got {codes}"


def _wait_for_refusals(
    cluster: Cluster, producers: list[WorkloadProcess], at_least: int, timeout_s: float = 60.0
) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        refused = sum(
            1
            for process in producers
            for event in process.events()
            if event.get("outcome") == Outcome.FAILED.value
        )
        if refused >= at_least:
            return refused
        if time.monotonic() > deadline:
            raise AssertionError(
                f"only {refused} refusals within {timeout_s:g} s\n{cluster.describe_failure()}"
            )
        time.sleep(0.1)
