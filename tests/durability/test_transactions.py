"""Fault 11: a transactional producer killed before commit; the broker restarted during check-back;
check-backs exhausted: parked and visible, never silent.

A producer process (Homing's client) opens one transaction per uid, each meant to end in commit,
rollback or nothing at all (seeded). It ends the first few itself, then kills itself (SIGKILL)
with the rest open. A second process answers the broker's check-backs from the same decisions
(UNKNOWN for "nothing"). While checks are under way the broker is killed and restarted. In the
end: every committed uid is delivered exactly once, no rolled-back or undecided uid ever is, and
every undecided transaction is listed by the admin API as parked after its last check.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from durability.conftest import FaultRun
from homing.testing.durability.history import History, Outcome
from homing.testing.durability.processes import Cluster

FAULT = "11 transactions"
MAX_CHECKS = 3


def test_killed_transactional_producer_and_broker_restarts_during_check_back(
    fault_run: FaultRun, tmp_path: Path
) -> None:
    profile, rng = fault_run.profile, fault_run.rng
    options = {
        "transaction_timeout_s": 1.0,
        "transaction_check_interval_s": 1.0,
        "transaction_max_checks": MAX_CHECKS,
    }
    with Cluster(tmp_path, fault_run.seed, broker_options=options) as cluster:
        decisions = {
            f"tx-{index:04d}": rng.choices(("commit", "rollback", "unknown"), weights=(5, 3, 2))[0]
            for index in range(profile.transactions)
        }
        decisions_file = tmp_path / "decisions.json"
        decisions_file.write_text(json.dumps(decisions))
        cluster.broker.start()
        end_first = rng.randint(0, len(decisions) // 2)
        producer = cluster.workload(
            "transact", "tx-producer", "--decisions", str(decisions_file), "--end-first", str(end_first)
        )
        assert producer.wait(60) == -signal.SIGKILL, producer.stderr_tail()
        assert producer.count("dying") == 1
        checker = cluster.workload("check-back", "tx-checker", "--decisions", str(decisions_file))
        restarts = 0
        for _ in range(2):  # kill -9 of the broker while check-backs are being answered
            before = checker.count("check")
            deadline = time.monotonic() + 30
            while checker.count("check") <= before and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.5))  # the fault's timing, drawn from the seed
            cluster.broker.kill()
            cluster.broker.start()
            restarts += 1
        undecided = {uid for uid, decision in decisions.items() if decision == "unknown"}
        listed = _wait_until_only_parked_remain(cluster, undecided)
        consumer = cluster.consumer("c0")

        def history_of_decisions() -> History:
            history = cluster.history()
            for uid, attempt in history.attempts.items():
                if decisions.get(uid) != "commit" and attempt.outcome is Outcome.OK:
                    attempt.outcome = Outcome.FAILED  # rolled back or never decided: must never arrive
            return history

        forbidden = {uid for uid, decision in decisions.items() if decision != "commit"}
        drained = cluster.drain(history=history_of_decisions())
        cluster.stop([checker, consumer])
        history = history_of_decisions()
        report = cluster.check(drained=drained, forbidden=forbidden, history=history)
        report.notes.append(
            f"{len(decisions)} transactions, {end_first} ended by the producer before it died, "
            f"{sum(history.checks.values())} check-backs answered, {restarts} broker restarts, "
            f"{len(listed)} parked"
        )
        fault_run.record(report, cluster.describe_failure())
        assert set(listed) == undecided, f"parked {sorted(listed)} != undecided {sorted(undecided)}"


def _wait_until_only_parked_remain(
    cluster: Cluster, undecided: set[str], timeout_s: float = 60.0
) -> dict[str, dict[str, object]]:
    """Poll the admin API until every transaction left is an undecided one, parked after its last check."""
    deadline = time.monotonic() + timeout_s
    while True:
        listing = cluster.admin("/v1/transactions")
        open_ones = {item["message_id"]: item for item in listing["transactions"]}
        if (
            set(open_ones) <= undecided
            and all(item["parked"] for item in open_ones.values())
            and len(open_ones) == len(undecided)
        ):
            return open_ones
        if time.monotonic() > deadline:
            raise AssertionError(
                f"transactions not settled within {timeout_s:g} s: {json.dumps(listing)[:3000]}\n"
                f"{cluster.describe_failure()}"
            )
        time.sleep(0.2)
