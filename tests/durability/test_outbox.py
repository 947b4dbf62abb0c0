"""Fault 10: a producer crash between the database commit and the send: every committed outbox row
is delivered, no rolled-back one ever is.

Service processes write a business row and an outbox row (``homing.outbox``) in one SQLite
transaction per uid, rolling back a seeded tenth on purpose, and relay the outbox to the broker
(``OutboxRelay`` over Homing's client) from the same process. Each is killed with SIGKILL at a
seeded moment, mid-commit or mid-send, and a new one takes over the same database; once the broker
is killed too. A last relay-only process finishes the outbox; the consumer drains; the checker
counts: a committed transaction is an acknowledged send.
"""

from __future__ import annotations

import time
from pathlib import Path

from durability.conftest import FaultRun
from homing.testing.durability.history import Outcome
from homing.testing.durability.processes import Cluster

FAULT = "10 outbox"


def test_producers_crashing_between_commit_and_send_lose_no_committed_row(
    fault_run: FaultRun, tmp_path: Path
) -> None:
    profile, rng = fault_run.profile, fault_run.rng
    with Cluster(tmp_path, fault_run.seed) as cluster:
        cluster.broker.start()
        database = tmp_path / "service.sqlite"
        consumer = cluster.consumer("c0")
        crashes = max(3, profile.consumer_kills // 2)
        for index in range(crashes):
            app = cluster.workload(
                "outbox-app", f"app{index}", "--db", str(database), "--prefix", f"app{index}",
                "--count", "100000", "--rate", "80",
            )  # fmt: skip
            cluster.wait_for_progress([app], timeout_s=60)
            time.sleep(rng.uniform(0.3, 1.5))  # the fault's timing, drawn from the seed
            app.kill()
            if index == crashes // 2:
                cluster.broker.kill()
                cluster.broker.start()
        final = cluster.workload("outbox-app", "relay", "--db", str(database), "--prefix", "relay")
        history = cluster.history()
        committed = history.uids(Outcome.OK)
        drained = cluster.drain()
        cluster.stop([final, consumer])
        history = cluster.history()
        report = cluster.check(drained=drained, forbidden=history.uids(Outcome.FAILED), history=history)
        report.notes.append(f"{crashes} service processes killed; {len(committed)} transactions committed")
        fault_run.record(report, cluster.describe_failure())
        assert committed, "the services should have committed transactions"
