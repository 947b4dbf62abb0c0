"""The checker itself: it must catch what it is there to catch (a checker that passes everything
proves nothing). Also the event logs, the inbox, seeds and the results table."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from homing.testing.durability import (
    CheckViolation,
    EventLog,
    History,
    Outcome,
    ResultsTable,
    SqliteInbox,
    check,
    derive_seed,
    load_history,
)
from homing.testing.durability.inbox import _SCHEMA as INBOX_SCHEMA
from homing.testing.durability.official_workload import _SCHEMA as OFFICIAL_SCHEMA


def _history(outcomes: dict[str, Outcome]) -> History:
    history = History()
    for uid, outcome in outcomes.items():
        history.attempt(uid, "p")
        history.outcome(uid, outcome, uid)
    return history


def _deliver(history: History, uid: str, *, queue_offset: int = -1, applied: bool = True) -> None:
    history.apply_event({"ev": "recv", "uid": uid, "mid": uid, "c": "c", "att": 1, "topic": "t", "q": 0,
                         "off": queue_offset})  # fmt: skip
    if applied:
        history.apply_event({"ev": "apply", "uid": uid, "first": True})


def test_a_clean_run_passes_and_counts() -> None:
    history = _history({"a": Outcome.OK, "b": Outcome.OK, "c": Outcome.UNKNOWN, "d": Outcome.FAILED})
    for uid in ("a", "b", "c"):
        _deliver(history, uid)
    report = check(history, effects={"a": 1, "b": 1, "c": 1})
    assert report.passed, report.summary()
    assert (report.attempted, report.acked, report.unknown, report.failed) == (4, 2, 1, 1)
    assert report.recovered == ["c"] and report.lost == [] and report.received == 3


def test_an_acknowledged_message_without_effect_is_lost() -> None:
    history = _history({"a": Outcome.OK, "b": Outcome.OK})
    _deliver(history, "a")
    _deliver(history, "b", applied=False)  # delivered, but its effect never happened (acked early)
    report = check(history, effects={"a": 1})
    assert report.lost == ["b"]
    with pytest.raises(CheckViolation, match="lost 1 acknowledged"):
        report.assert_passed()


def test_unexpected_forbidden_and_double_effects_fail() -> None:
    history = _history({"a": Outcome.OK, "r": Outcome.FAILED})
    _deliver(history, "a")
    _deliver(history, "ghost")
    report = check(history, effects={"a": 2, "ghost": 1, "r": 1}, forbidden={"r"})
    assert report.unexpected == ["ghost"]
    assert report.forbidden == ["r"]
    assert report.effect_violations["a"] == "2 effects"
    assert not report.passed


def test_dead_letters_count_once_and_never_with_an_effect() -> None:
    history = _history({"p": Outcome.OK, "q": Outcome.OK, "s": Outcome.OK})
    report = check(history, effects={"s": 1}, dead_letters={"p": 1, "q": 2})
    assert report.dead_lettered == ["p", "q"] and report.lost == []
    assert report.effect_violations == {"q": "2 dead-letter copies"}
    both = check(history, effects={"p": 1, "q": 1, "s": 1}, dead_letters={"p": 1})
    assert both.effect_violations == {"p": "took effect and was dead-lettered"}


def test_duplicates_are_reported_but_allowed() -> None:
    history = _history({"a": Outcome.OK})
    _deliver(history, "a")
    history.apply_event({"ev": "recv", "uid": "a", "mid": "a", "c": "c2", "att": 2})
    history.apply_event({"ev": "apply", "uid": "a", "first": False})
    report = check(history, effects={"a": 1}, stored_copies={"a": 1})
    assert report.duplicated == ["a"] and report.passed


def test_in_flight_lag_slow_drains_and_offset_conflicts_fail() -> None:
    history = _history({"a": Outcome.OK, "b": Outcome.OK})
    _deliver(history, "a", queue_offset=3)
    _deliver(history, "b", queue_offset=3)
    report = check(history, effects={"a": 1, "b": 1}, in_flight=1, lag=2, drain_s=61)
    failures = "\n".join(report.failures())
    for expected in ("in flight", "lag 2", "drain took", "two messages at one queue offset"):
        assert expected in failures


def test_event_logs_merge_and_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    with EventLog(tmp_path / "p.jsonl") as log:
        log.write("attempt", uid="a", p="p")
        log.write("outcome", uid="a", outcome="ok", mid="a")
        log.write("attempt", uid="b", p="p")  # the process died before b's outcome
    with (tmp_path / "p.jsonl").open("a") as handle:
        handle.write('{"ev":"outc')  # killed mid-line
    with EventLog(tmp_path / "c.jsonl") as log:
        log.write("recv", uid="a", mid="a", c="c", att=1)
        log.write("apply", uid="a", first=True)
        log.write("ack", uid="a", ok=True)
    history = load_history([tmp_path / "p.jsonl", tmp_path / "c.jsonl"])
    assert history.attempts["a"].outcome is Outcome.OK
    assert history.attempts["b"].outcome is Outcome.UNKNOWN
    assert history.acks["a"] == 1 and history.first_applied["a"] == 1
    assert check(history, effects={"a": 1}).passed
    duplicate = History()
    duplicate.attempt("x")
    with pytest.raises(ValueError, match="attempted twice"):
        duplicate.attempt("x")


def test_the_inbox_applies_once_across_connections_and_matches_the_official_workload(tmp_path: Path) -> None:
    path = tmp_path / "inbox.sqlite"
    with SqliteInbox(path, consumer="one") as first, SqliteInbox(path, consumer="two") as second:
        assert first.apply("a", "m1") is True
        assert second.apply("a", "m1") is False
        assert second.apply("b", "m2") is True
        assert first.effect_counts() == {"a": 1, "b": 1}
        assert first.is_processed("b") and first.processed_count() == 2
    assert INBOX_SCHEMA == OFFICIAL_SCHEMA, "the official workload writes the same inbox tables"
    source = (Path(__file__).parents[2] / "src/homing/testing/durability/official_workload.py").read_text()
    imported = {
        node.module or "" for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)
    } | {
        alias.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert not any(name.startswith("homing") for name in imported), "it runs in the official client's venv"


def test_seeds_are_stable_and_distinct() -> None:
    assert derive_seed(7, "a") == derive_seed(7, "a")
    assert len({derive_seed(7, "a"), derive_seed(7, "b"), derive_seed(8, "a")}) == 3


def test_the_results_table_round_trips_and_renders(tmp_path: Path) -> None:
    table = ResultsTable(seed=42)
    history = _history({"a": Outcome.OK, "b": Outcome.UNKNOWN})
    _deliver(history, "a")
    _deliver(history, "b")
    table.add("2 power loss", "t1", 1, check(history, effects={"a": 1, "b": 1}))
    table.add("2 power loss", "t2", 2, check(history, effects={"b": 1}))
    path = table.write(tmp_path / "latest.json")
    again = ResultsTable.read(path)
    assert [row.runs for row in again.rows()] == [2] and again.rows()[0].lost == 1
    assert not again.passed
    assert "| 2 power loss | 2 | 2 | 1 | 0 | 0 | 2 |" in again.markdown()
    assert json.loads(path.read_text())["seed"] == 42
    with pytest.raises(ValueError, match="unknown fault"):
        table.add("99 nonsense", "t", 0, check(History(), effects={}))
