"""Fault 1: kill -9 of the broker in a loop while producers send synchronously and consumers consume.

Two producers on Homing's client and one on the official Python client send unique ids one after
another; two consumers (Homing's simple consumer, and the official one) apply every delivery to
one SQLite inbox and ack it. The broker is killed with SIGKILL a seeded 50-300 ms after each time
it is listening again (every fifth time 1-2.5 s, so that traffic is in full flight at the kill),
``kill_cycles`` times (25 in CI, 300 in the soak profile). Then it stays
up, the producers stop, the consumers drain, and the checker counts.
"""

from __future__ import annotations

import time
from pathlib import Path

from durability.conftest import FaultRun
from homing.testing.durability.processes import Cluster, ensure_official_client

FAULT = "1 kill -9 loop"


def test_kill_9_loop_loses_nothing_acknowledged(fault_run: FaultRun, tmp_path: Path) -> None:
    profile, rng = fault_run.profile, fault_run.rng
    ensure_official_client()
    with Cluster(tmp_path, fault_run.seed) as cluster:
        cluster.broker.start()
        producers = [cluster.producer(f"p{index}", rate=80) for index in range(2)]
        producers.append(cluster.official("produce", "official-p", rate=40))
        consumers = [cluster.consumer("c0"), cluster.consumer("c1", extra=["--batch", "8"])]
        consumers.append(cluster.official("consume", "official-c", invisible_s=3))
        restarts = []
        for cycle in range(profile.kill_cycles):
            # The fault's timing, drawn from the seed: 50-300 ms of life after each start; every
            # fifth cycle a longer 1-2.5 s, so that the clients reconnect and traffic is in full
            # flight (sends, pops, acks) when the next kill lands.
            gap = rng.uniform(1.0, 2.5) if cycle % 5 == 4 else rng.uniform(*profile.kill_gap_s)
            time.sleep(gap)
            cluster.broker.kill()
            started = time.monotonic()
            cluster.broker.start()
            restarts.append(time.monotonic() - started)
        healed = cluster.wait_for_progress(producers)  # every producer gets through again
        cluster.stop(producers)
        drained = cluster.drain()
        cluster.stop(consumers)
        history = cluster.history()
        report = cluster.check(drained=drained, history=history)
        report.notes.append(
            f"{len(restarts)} kills, restarts took {max(restarts):.2f} s at most; clients back after "
            f"{max(healed.values()):.2f} s at most"
        )
        fault_run.record(report, cluster.describe_failure())
        for producer in producers:
            acked = sum(
                1
                for attempt in history.attempts.values()
                if attempt.producer == producer.name and attempt.outcome == "ok"
            )
            assert acked > 0, f"{producer.name} never got a send through\n{cluster.describe_failure()}"
        assert report.acked > profile.kill_cycles, "the producers should have been acknowledged many times"
