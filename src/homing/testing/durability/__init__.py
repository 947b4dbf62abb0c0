"""The durability proof: workloads, a checker, fault helpers and the results table.

Every fault test (tests/durability/, ``scripts/soak``) follows one pattern: run a workload that
logs every send attempt and its outcome and every delivery (applied idempotently through an
inbox), inject faults drawn from a seed, heal, drain, then let :func:`check` count: lost,
unexpected, duplicated, recovered, dead-lettered, per-id effects, and what the broker still has in
flight. See docs/DURABILITY.md ("Durability results") and /work/shared/RELIABILITY.md.

Modules: :mod:`~homing.testing.durability.history` (events), :mod:`~homing.testing.durability.inbox`
(SQLite inbox), :mod:`~homing.testing.durability.checker`, :mod:`~homing.testing.durability.results`
(the table), :mod:`~homing.testing.durability.seeds` (seeds and profiles),
:mod:`~homing.testing.durability.inprocess` (broker on a simulated disk and a fake clock),
:mod:`~homing.testing.durability.processes` (a real broker and workload processes),
:mod:`~homing.testing.durability.workload` (the workload process, Homing's client),
``official_workload.py`` (the same with the official RocketMQ Python client) and
:mod:`~homing.testing.durability.soak` (``scripts/soak``).
"""

from homing.testing.durability.checker import MAX_DRAIN_S, CheckReport, CheckViolation, check
from homing.testing.durability.history import Attempt, Delivery, EventLog, History, Outcome, load_history
from homing.testing.durability.inbox import SqliteInbox
from homing.testing.durability.results import FAULTS, ResultsTable, RunRecord
from homing.testing.durability.seeds import Profile, base_seed, current_profile, derive_seed

__all__ = [
    "FAULTS",
    "MAX_DRAIN_S",
    "Attempt",
    "CheckReport",
    "CheckViolation",
    "Delivery",
    "EventLog",
    "History",
    "Outcome",
    "Profile",
    "ResultsTable",
    "RunRecord",
    "SqliteInbox",
    "base_seed",
    "check",
    "current_profile",
    "derive_seed",
    "load_history",
]
