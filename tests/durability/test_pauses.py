"""Fault 8: SIGSTOP of the broker, and of a consumer, for longer than the invisible time and the
client timeouts.

Two producers and two consumers (invisible time 3 s, send timeout 2 s) run against a real
broker; handlers take a seeded 2-20 ms per message, so a consumer usually holds some. The broker
is frozen for a seeded 4-6 s: sends time out with an unknown outcome, deliveries pass their
invisible time. Then one consumer is frozen for a seeded 5-8 s while it
holds messages: they go to the other consumer; when it thaws it finishes its handler (the inbox
makes it a no-op) and its stale acks are refused. Effect-once must hold throughout.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from durability.conftest import FaultRun
from homing.testing.durability.processes import Cluster

FAULT = "8 SIGSTOP pauses"


def test_pauses_longer_than_every_timeout_keep_effects_exactly_once(
    fault_run: FaultRun, tmp_path: Path
) -> None:
    profile, rng = fault_run.profile, fault_run.rng
    with Cluster(tmp_path, fault_run.seed) as cluster:
        cluster.broker.start()
        producers = [  # p0 never retries: its timeouts stay unknown outcomes
            cluster.producer(
                f"p{index}", rate=60, attempts=1 if index == 0 else 0, extra=["--send-timeout-s", "2"]
            )
            for index in range(2)
        ]
        consumers = [
            cluster.consumer(f"c{index}", extra=["--batch", "8", "--handler-delay-ms", "2,20"])
            for index in range(2)
        ]
        cluster.wait_for_progress(producers)
        paused = []
        for _ in range(profile.pause_cycles):
            broker_pid = cluster.broker.pid
            assert broker_pid is not None
            os.kill(broker_pid, signal.SIGSTOP)
            pause = rng.uniform(4.0, 6.0)  # the fault's timing, drawn from the seed
            time.sleep(pause)
            os.kill(broker_pid, signal.SIGCONT)
            paused.append(f"broker {pause:.1f} s")
            cluster.wait_for_progress(producers)
            victim = rng.choice(consumers)
            cluster.wait_for_progress([victim], "apply")
            victim.pause()
            pause = rng.uniform(5.0, 8.0)
            time.sleep(pause)
            victim.resume()
            paused.append(f"{victim.name} {pause:.1f} s")
            cluster.wait_for_progress(consumers, "apply")
        cluster.wait_for_progress(producers)
        cluster.stop(producers)
        drained = cluster.drain()
        cluster.stop(consumers)
        report = cluster.check(drained=drained)
        report.notes.append("paused: " + ", ".join(paused))
        fault_run.record(report, cluster.describe_failure())
