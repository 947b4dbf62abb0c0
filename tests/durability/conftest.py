"""The durability proof's fixtures: a seed per test, the profile, and the results table.

Each test module names its fault (``FAULT``, one of ``homing.testing.durability.FAULTS``); the
``fault_run`` fixture gives the test its seed (derived from the base seed and the test id) and
records every checker verdict in the session's table, which is printed at the end and written as
JSON to ``tests/durability/results/latest.json`` (or ``$HOMING_DURABILITY_RESULTS``).

Replay a failure with the base seed it prints: ``HOMING_DURABILITY_SEED=<seed> pytest '<test id>'``.
Run the long profile with ``HOMING_DURABILITY_PROFILE=soak`` (``scripts/soak`` does).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from homing.testing.durability import (
    CheckReport,
    Profile,
    ResultsTable,
    base_seed,
    current_profile,
    derive_seed,
)

RESULTS_VARIABLE = "HOMING_DURABILITY_RESULTS"
DEFAULT_RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"

RESULTS = ResultsTable(seed=base_seed(), profile=current_profile().name)


def results_path() -> Path:
    return Path(os.environ.get(RESULTS_VARIABLE) or DEFAULT_RESULTS)


@dataclass
class FaultRun:
    """One fault test: its seed, random source, profile and recorded verdicts."""

    fault: str
    test: str
    seed: int
    profile: Profile
    rng: random.Random
    started: float = field(default_factory=time.monotonic)
    reports: list[CheckReport] = field(default_factory=list)

    @property
    def replay(self) -> str:
        return f"seed {self.seed} (replay: HOMING_DURABILITY_SEED={base_seed()} pytest '{self.test}')"

    def record(self, report: CheckReport, context: str = "") -> CheckReport:
        """Add the verdict to the table, then fail the test unless it passed."""
        RESULTS.add(self.fault, self.test, self.seed, report, time.monotonic() - self.started)
        self.started = time.monotonic()
        self.reports.append(report)
        print(f"{self.test}: {report.summary()}")
        report.assert_passed(f"{self.test}: {self.replay}" + (f"\n{context}" if context else ""))
        return report


@pytest.fixture
def fault_run(request: pytest.FixtureRequest) -> Iterator[FaultRun]:
    fault = getattr(request.module, "FAULT", None)
    assert isinstance(fault, str), f"{request.module.__name__} must name its FAULT"
    seed = derive_seed(base_seed(), request.node.nodeid)
    run = FaultRun(fault, request.node.nodeid, seed, current_profile(), random.Random(seed))
    print(f"{request.node.nodeid}: {run.replay}")
    yield run


@pytest.fixture
def profile() -> Profile:
    return current_profile()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS.records:
        return
    path = RESULTS.write(results_path())
    terminalreporter.section("durability results")
    terminalreporter.write_line(
        f"base seed {RESULTS.seed} (replay: HOMING_DURABILITY_SEED={RESULTS.seed}), profile {RESULTS.profile}"
    )
    for line in RESULTS.markdown().splitlines():
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"written to {path}")
