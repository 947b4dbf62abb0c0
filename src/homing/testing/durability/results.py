"""The table every run ends with: per fault, runs and counts; printed and written as JSON.

Each checker verdict is one *run* of its fault. :class:`ResultsTable` accumulates them (a pytest
session, or many sessions in a soak), renders a Markdown table (what docs/DURABILITY.md shows) and
round-trips through JSON so that soak iterations can be merged.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from homing.testing.durability.checker import CheckReport

__all__ = ["COLUMNS", "FAULTS", "FaultRow", "ResultsTable", "RunRecord"]

# Fault names, in the order of the fault matrix (RELIABILITY.md); rows print in this order.
FAULTS = (
    "1 kill -9 loop",
    "2 power loss",
    "3 torn tail",
    "4 mid-log damage",
    "5 derived files lost",
    "6 disk full",
    "7 write/fsync EIO",
    "8 SIGSTOP pauses",
    "9 consumer killed",
    "10 outbox",
    "11 transactions",
    "12 poison messages",
    "13 clock jumps",
    "14 fuzzing",
    "R regressions",
)

COLUMNS = ("fault", "runs", "acked", "lost", "unexpected", "duplicated", "recovered")


@dataclass(slots=True)
class RunRecord:
    """One checker verdict."""

    fault: str
    test: str
    seed: int
    passed: bool
    counts: dict[str, Any]
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    at: float = field(default_factory=time.time)


@dataclass(slots=True)
class FaultRow:
    fault: str
    runs: int = 0
    failed_runs: int = 0
    attempted: int = 0
    acked: int = 0
    lost: int = 0
    unexpected: int = 0
    duplicated: int = 0
    recovered: int = 0
    dead_lettered: int = 0
    seconds: float = 0.0

    def add(self, record: RunRecord) -> None:
        counts = record.counts
        self.runs += 1
        self.failed_runs += 0 if record.passed else 1
        self.attempted += int(counts.get("attempted", 0))
        self.acked += int(counts.get("acked", 0))
        self.lost += int(counts.get("lost", 0))
        self.unexpected += int(counts.get("unexpected", 0)) + int(counts.get("forbidden", 0))
        self.duplicated += int(counts.get("duplicated", 0))
        self.recovered += int(counts.get("recovered", 0))
        self.dead_lettered += int(counts.get("dead_lettered", 0))
        self.seconds += record.seconds


@dataclass(slots=True)
class ResultsTable:
    seed: int | None = None
    profile: str = "ci"
    records: list[RunRecord] = field(default_factory=list)
    sessions: int = 1

    def add(self, fault: str, test: str, seed: int, report: CheckReport, seconds: float = 0.0) -> RunRecord:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        record = RunRecord(fault, test, seed, report.passed, report.counts(), report.failures(), seconds)
        self.records.append(record)
        return record

    def add_records(self, records: Iterable[RunRecord]) -> None:
        self.records.extend(records)

    def rows(self) -> list[FaultRow]:
        rows: dict[str, FaultRow] = {}
        for record in self.records:
            rows.setdefault(record.fault, FaultRow(record.fault)).add(record)
        order = {name: index for index, name in enumerate(FAULTS)}
        return sorted(rows.values(), key=lambda row: order.get(row.fault, len(order)))

    @property
    def passed(self) -> bool:
        return all(record.passed for record in self.records)

    def markdown(self) -> str:
        lines = [
            "| fault | runs | acked | lost | unexpected | duplicated | recovered | dead-lettered "
            "| failed runs |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        totals = FaultRow("total")
        for row in self.rows():
            lines.append(
                f"| {row.fault} | {row.runs} | {row.acked} | {row.lost} | {row.unexpected} | "
                f"{row.duplicated} | {row.recovered} | {row.dead_lettered} | {row.failed_runs} |"
            )
            for name in ("runs", "failed_runs", "acked", "lost", "unexpected", "duplicated", "recovered"):
                setattr(totals, name, getattr(totals, name) + getattr(row, name))
            totals.dead_lettered += row.dead_lettered
        lines.append(
            f"| **total** | {totals.runs} | {totals.acked} | {totals.lost} | {totals.unexpected} | "
            f"{totals.duplicated} | {totals.recovered} | {totals.dead_lettered} | {totals.failed_runs} |"
        )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "profile": self.profile,
            "sessions": self.sessions,
            "passed": self.passed,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "table": [asdict(row) for row in self.rows()],
            "runs": [asdict(record) for record in self.records],
        }

    def write(self, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(target.name + ".tmp")
        temporary.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        os.replace(temporary, target)
        return target

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResultsTable:
        table = cls(seed=data.get("seed"), profile=str(data.get("profile", "ci")))
        table.sessions = int(data.get("sessions", 1))
        for raw in data.get("runs", []):
            table.records.append(
                RunRecord(
                    fault=str(raw["fault"]),
                    test=str(raw["test"]),
                    seed=int(raw["seed"]),
                    passed=bool(raw["passed"]),
                    counts=dict(raw["counts"]),
                    failures=list(raw.get("failures", [])),
                    seconds=float(raw.get("seconds", 0.0)),
                    at=float(raw.get("at", 0.0)),
                )
            )
        return table

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ResultsTable:
        return cls.from_json(json.loads(Path(path).read_text()))
