"""Fault 9: a consumer killed inside its handler; a push consumer shut down with messages in flight.

Killed: consumer processes (Homing's simple consumer) kill themselves with SIGKILL inside the
handler of a seeded delivery, before or after the inbox transaction (seeded), one after another,
while a producer sends and a steady consumer shares the group. What they held must come back
after its invisible time; what they applied must not take effect twice.

Shut down: push consumers whose handlers take a seeded 0.2-1.5 s are stopped (SIGTERM: close with
a 0.5 s shutdown timeout) while handlers run. A message must never be acked before its handler
finished: one acked but not applied would be lost to the application, and the checker's effect
count catches exactly that.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from durability.conftest import FaultRun
from homing.testing.durability.processes import Cluster

FAULT = "9 consumer killed"


def test_consumers_killed_in_their_handler_lose_nothing_and_apply_once(
    fault_run: FaultRun, tmp_path: Path
) -> None:
    profile, rng = fault_run.profile, fault_run.rng
    with Cluster(tmp_path, fault_run.seed) as cluster:
        cluster.broker.start()
        producer = cluster.producer("p0", rate=100)  # sends until every victim has had its chance
        steady = cluster.consumer("steady", extra=["--batch", "4"])
        died_inside = 0
        for index in range(profile.consumer_kills):
            phase = rng.choice(("before-apply", "after-apply"))
            victim = cluster.consumer(
                f"victim{index}",
                extra=["--die-after", str(rng.randint(1, 30)), "--die-phase", phase, "--batch", "8"],
            )
            deadline = time.monotonic() + 20
            while victim.alive and time.monotonic() < deadline:
                time.sleep(0.05)
            if victim.alive:
                victim.terminate()  # nothing came its way in time
            elif victim.process.returncode == -signal.SIGKILL and victim.count("dying"):
                died_inside += 1
        cluster.stop([producer])
        drained = cluster.drain()
        cluster.stop([steady])
        report = cluster.check(drained=drained)
        report.notes.append(
            f"{died_inside} of {profile.consumer_kills} consumers killed inside their handler"
        )
        fault_run.record(report, cluster.describe_failure())
        assert died_inside >= profile.consumer_kills // 2, f"only {died_inside} consumers died in a handler"


def test_push_consumers_shut_down_mid_handler_never_ack_early(fault_run: FaultRun, tmp_path: Path) -> None:
    profile, rng = fault_run.profile, fault_run.rng
    with Cluster(tmp_path, fault_run.seed, broker_options={"push_invisible_duration_s": 3.0}) as cluster:
        cluster.broker.start()
        producer = cluster.producer("p0", count=40 * profile.consumer_kills, rate=200)
        stopped_mid_handler = 0
        for index in range(max(2, profile.consumer_kills // 2)):
            pusher = cluster.consumer(
                f"push{index}",
                mode="push",
                extra=["--batch", "8", "--handler-delay-ms", "200,1500", "--shutdown-timeout-s", "0.5"],
            )
            # A slow start (a loaded machine) must not turn the clean shutdown into a default SIGTERM
            # death before the handlers exist: the fault's timing counts from a started client.
            pusher.wait_for("started")
            time.sleep(rng.uniform(1.0, 3.0))  # the fault's timing, drawn from the seed
            before = pusher.count("recv") - pusher.count("apply")
            code = pusher.terminate()
            assert code == 0, pusher.stderr_tail()
            stopped_mid_handler += before > 0
        assert producer.wait(120) == 0, producer.stderr_tail()
        final = cluster.consumer("push-final", mode="push", extra=["--batch", "16"])
        drained = cluster.drain()
        cluster.stop([final])
        report = cluster.check(drained=drained)
        report.notes.append(f"{stopped_mid_handler} push consumers stopped with handlers running")
        fault_run.record(report, cluster.describe_failure())
        assert stopped_mid_handler > 0, "no push consumer was stopped while a handler ran"
