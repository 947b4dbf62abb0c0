"""Smoke test of the official-client harness (tests/official_clients/, see its README).

Without any broker, it proves that scripts/setup-official-clients installs both official clients on
this machine and that both driver scripts are wired to them: each one starts, parses its JSON
arguments, runs the real client against a closed port and ends on its own, in time, with a JSON
``error`` event and exit status 1. Setup failures fail the test; nothing here is skipped.

Standard library only: the drivers run in their own interpreters, never next to Homing's modules.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CLOSED_PORT = "127.0.0.1:1"
# The drivers' own watchdog fires first; the subprocess timeout only catches a driver that ignores it.
WATCHDOG_S = 45
PROCESS_TIMEOUT_S = 90

# One JSON argument object per action, all aimed at the closed port.
ACTIONS: dict[str, dict[str, Any]] = {
    "produce": {
        "topic": "HomingSmoke",
        "messages": [
            {"body": "hello", "tag": "smoke", "keys": ["k1", "k2"], "properties": {"a": "b"}},
            {"body": "ordered", "message_group": "g1"},
        ],
    },
    "produce-transaction": {"topic": "HomingSmoke", "messages": [{"body": "half"}], "decision": "commit"},
    "recall": {"topic": "HomingSmoke", "recall_handle": "no-such-handle"},
    "simple-consume": {"topic": "HomingSmoke", "group": "HomingSmokeGroup", "duration_s": 5},
    "push-consume": {"topic": "HomingSmoke", "group": "HomingSmokeGroup", "duration_s": 5},
}
LOG_FILES = {
    "python": Path("logs/rocketmq_python/rocketmq_client.log"),
    "node": Path("logs/rocketmq/rocketmq_client_nodejs.log"),
}


def _setup() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "scripts" / "setup-official-clients")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.fixture(scope="module")
def drivers() -> dict[str, list[str]]:
    """The command line of each driver; fails (never skips) when the clients cannot be installed."""
    result = _setup()
    if result.returncode != 0:
        pytest.fail("scripts/setup-official-clients failed:\n" + result.stdout + result.stderr, pytrace=False)
    node = shutil.which("node")
    if node is None:
        pytest.fail("scripts/setup-official-clients succeeded but node is not on PATH", pytrace=False)
    return {
        "python": [str(REPO / ".venv-rocketmq" / "bin" / "python"), "-I", str(HERE / "python_client.py")],
        "node": [node, str(HERE / "node" / "client.js")],
    }


def _run(command: list[str], home: Path) -> tuple[int, list[dict[str, Any]], str]:
    """Runs a driver with HOME (where the clients write their logs) in `home`; returns its events."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PYTHON") and key not in ("NODE_OPTIONS", "NODE_PATH", "EGG_LOG")
    }
    environment["HOME"] = str(home)
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=environment,
            timeout=PROCESS_TIMEOUT_S,
            check=False,
            cwd=home,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{command} did not end within {PROCESS_TIMEOUT_S} s: {exc}", pytrace=False)
    events: list[dict[str, Any]] = []
    for line in result.stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line on stdout: {line!r}\nstderr:\n{result.stderr}", pytrace=False)
        assert isinstance(event, dict) and isinstance(event.get("event"), str), line
        events.append(event)
    return result.returncode, events, result.stderr


def test_setup_is_idempotent_and_quiet(drivers: dict[str, list[str]]) -> None:
    result = _setup()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "" and result.stderr == ""


@pytest.mark.parametrize("client", ["python", "node"])
def test_produce_against_a_closed_port_fails_cleanly(
    client: str, drivers: dict[str, list[str]], tmp_path: Path
) -> None:
    arguments = {
        "endpoint": CLOSED_PORT,
        "timeout_s": WATCHDOG_S,
        "request_timeout_s": 2,
        **ACTIONS["produce"],
    }
    status, events, stderr = _run([*drivers[client], "produce", json.dumps(arguments)], tmp_path)

    assert status == 1, f"exit status {status}, events {events}, stderr:\n{stderr}"
    assert events, f"no event on stdout; stderr:\n{stderr}"
    last = events[-1]
    assert last["event"] == "error" and last["error"], last
    assert [e for e in events if e["event"] == "error"] == [last]
    # Every message the driver got as far as sending failed: none may claim success.
    assert not [e for e in events if e["event"] == "sent" and e["ok"]], events
    # The client logged to $HOME/logs, not to stdout.
    assert (tmp_path / LOG_FILES[client]).is_file()


@pytest.mark.parametrize("action", sorted(set(ACTIONS) - {"produce"}))
@pytest.mark.parametrize("client", ["python", "node"])
def test_every_other_action_ends_with_an_error_event_against_a_closed_port(
    client: str, action: str, drivers: dict[str, list[str]], tmp_path: Path
) -> None:
    arguments = {"endpoint": CLOSED_PORT, "timeout_s": WATCHDOG_S, **ACTIONS[action]}
    status, events, stderr = _run([*drivers[client], action, json.dumps(arguments)], tmp_path)

    assert status == 1, f"exit status {status}, events {events}, stderr:\n{stderr}"
    assert events and events[-1]["event"] == "error", f"events {events}, stderr:\n{stderr}"
    assert events[-1]["error_type"] != "Timeout", events[-1]


@pytest.mark.parametrize("client", ["python", "node"])
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["no-such-action", "{}"], "unknown action"),
        (["produce", '{"endpoint": "127.0.0.1:1", "topic": "T", "no_such_key": 1}'], "no_such_key"),
        (["produce", '{"endpoint": "127.0.0.1:1", "topic": "T", "messages": [{"bdy": "x"}]}'], "bdy"),
        (["produce", "not json"], "JSON"),
        (["produce", '{"topic": "T"}'], "endpoint"),
    ],
)
def test_bad_arguments_exit_2_with_an_error_event(
    client: str, argv: list[str], message: str, drivers: dict[str, list[str]], tmp_path: Path
) -> None:
    status, events, stderr = _run([*drivers[client], *argv], tmp_path)

    assert status == 2, f"exit status {status}, events {events}, stderr:\n{stderr}"
    assert len(events) == 1 and events[0]["event"] == "error", events
    assert events[0]["error_type"] == "UsageError" and message in events[0]["error"], events[0]
