"""Runs the official-client drivers (tests/official_clients/, see its README) from server tests.

Each driver runs in its own interpreter (the official Python client must never share one with
Homing's protocol modules) with HOME in a temporary folder, where the clients write their logs.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DRIVERS = REPO / "tests" / "official_clients"
CLIENTS = ("python", "node")
LOG_FILES = {
    "python": Path("logs/rocketmq_python/rocketmq_client.log"),
    "node": Path("logs/rocketmq/rocketmq_client_nodejs.log"),
}

Event = dict[str, Any]


@functools.cache
def driver_commands() -> dict[str, tuple[str, ...]]:
    """The command line of each driver; fails (never skips) when the clients cannot be installed."""
    setup = subprocess.run(
        [str(REPO / "scripts" / "setup-official-clients")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if setup.returncode != 0:
        pytest.fail("scripts/setup-official-clients failed:\n" + setup.stdout + setup.stderr, pytrace=False)
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH after scripts/setup-official-clients", pytrace=False)
    return {
        "python": (str(REPO / ".venv-rocketmq" / "bin" / "python"), "-I", str(DRIVERS / "python_client.py")),
        "node": (node, str(DRIVERS / "node" / "client.js")),
    }


def driver_environment(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYTHON", "HOMING_")) and name not in ("NODE_OPTIONS", "NODE_PATH", "EGG_LOG")
    }
    environment["HOME"] = str(home)
    environment.setdefault("TZ", "UTC")
    environment.update(extra or {})
    return environment


@dataclass
class DriverRun:
    """What a driver printed, and how it ended."""

    client: str
    action: str
    returncode: int
    events: list[Event]
    stderr: str
    home: Path

    def of(self, kind: str) -> list[Event]:
        return [event for event in self.events if event.get("event") == kind]

    def done(self) -> Event:
        finished = self.of("done")
        assert finished, self.describe()
        return finished[-1]

    def client_log(self) -> str:
        try:
            return (self.home / LOG_FILES[self.client]).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self) -> str:
        lines = "\n".join(json.dumps(event) for event in self.events[-40:])
        return (
            f"{self.client} {self.action} exited {self.returncode}\n--- events\n{lines}\n"
            f"--- stderr (tail)\n{self.stderr[-2000:]}\n--- client log (tail)\n{self.client_log()[-3000:]}"
        )

    def check(self) -> DriverRun:
        """Self, if the driver completed its action (exit status 0)."""
        assert self.returncode == 0, self.describe()
        return self


def _parse(line: str) -> Event | None:
    line = line.strip()
    if not line:
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return {"event": "unparsed", "line": line}
    return event if isinstance(event, dict) else {"event": "unparsed", "line": line}


def run_driver(
    client: str,
    action: str,
    arguments: dict[str, Any],
    home: Path,
    *,
    timeout_s: float = 180.0,
    env: dict[str, str] | None = None,
) -> DriverRun:
    completed = subprocess.run(
        [*driver_commands()[client], action, json.dumps(arguments)],
        capture_output=True,
        text=True,
        env=driver_environment(home, env),
        timeout=timeout_s,
        check=False,
    )
    events = [event for event in map(_parse, completed.stdout.splitlines()) if event is not None]
    return DriverRun(client, action, completed.returncode, events, completed.stderr, home)


@dataclass
class DriverProcess:
    """A driver running in the background: wait for events as they come, then for its end."""

    client: str
    action: str
    home: Path
    process: subprocess.Popen[str]
    stderr_file: IO[str]
    events: list[Event] = field(default_factory=list)
    _lines: queue.Queue[Event | None] = field(default_factory=queue.Queue)

    @classmethod
    def start(
        cls,
        client: str,
        action: str,
        arguments: dict[str, Any],
        home: Path,
        *,
        env: dict[str, str] | None = None,
    ) -> DriverProcess:
        environment = driver_environment(home, env)
        stderr_file = (home / f"{action}.stderr").open("w+")
        process = subprocess.Popen(
            [*driver_commands()[client], action, json.dumps(arguments)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            text=True,
            env=environment,
        )
        running = cls(client, action, home, process, stderr_file)
        threading.Thread(target=running._pump, daemon=True).start()
        return running

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event = _parse(line)
            if event is not None:
                self._lines.put(event)
        self._lines.put(None)

    def wait_for(self, kind: str, timeout_s: float = 60.0, count: int = 1) -> list[Event]:
        """Events until ``count`` events of ``kind`` have been seen; fails on timeout or exit."""
        deadline = time.monotonic() + timeout_s
        while len([event for event in self.events if event.get("event") == kind]) < count:
            try:
                event = self._lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                self.process.kill()
                pytest.fail(
                    f"no {count} {kind!r} event(s) within {timeout_s:g} s\n{self.finish().describe()}"
                )
            if event is None:
                self._lines.put(None)
                pytest.fail(f"the driver ended before {count} {kind!r} event(s)\n{self.finish().describe()}")
            self.events.append(event)
        return self.events

    def finish(self, timeout_s: float = 180.0) -> DriverRun:
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        while True:
            try:
                event = self._lines.get(timeout=5)
            except queue.Empty:
                break
            if event is None:
                break
            self.events.append(event)
        self.stderr_file.seek(0)
        stderr = self.stderr_file.read()
        self.stderr_file.close()
        return DriverRun(self.client, self.action, self.process.returncode, self.events, stderr, self.home)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
