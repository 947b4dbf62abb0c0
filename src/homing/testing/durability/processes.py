"""A real ``homing broker`` process and workload processes around it, for process-level faults.

:class:`Cluster` owns one :class:`~homing.testing.BrokerProcess` and the workload processes of a
run (Homing's client: :mod:`homing.testing.durability.workload`; the official Python client:
``official_workload.py`` under ``.venv-rocketmq``), each with its own event log and stderr file
under the run's directory, all sharing one SQLite inbox per consumer group. After the faults, the
test heals, stops the producers, and calls :meth:`Cluster.drain` (the admin API's group
description must show nothing in flight and no lag, and every acknowledged uid must have its
effect, within 60 s) and :meth:`Cluster.check`.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from homing.testing.broker_process import BrokerProcess
from homing.testing.durability.checker import MAX_DRAIN_S, CheckReport, check
from homing.testing.durability.history import History, Outcome, load_history, read_events
from homing.testing.durability.inbox import SqliteInbox

__all__ = [
    "OFFICIAL_PYTHON",
    "OFFICIAL_WORKLOAD",
    "REPO",
    "Cluster",
    "WorkloadProcess",
    "ensure_official_client",
    "official_client_available",
]

REPO = Path(__file__).resolve().parents[4]
OFFICIAL_PYTHON = REPO / ".venv-rocketmq" / "bin" / "python"
OFFICIAL_WORKLOAD = Path(__file__).with_name("official_workload.py")


def official_client_available() -> bool:
    return OFFICIAL_PYTHON.exists()


def ensure_official_client() -> None:
    """Install the official clients if needed (``scripts/setup-official-clients``, idempotent)."""
    if official_client_available():
        return
    done = subprocess.run(
        [str(REPO / "scripts" / "setup-official-clients")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0 or not official_client_available():
        raise RuntimeError("scripts/setup-official-clients failed:\n" + done.stdout + done.stderr)


class WorkloadProcess:
    """One workload process: started at once, stopped with SIGTERM (clean) or SIGKILL (crash)."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: Mapping[str, str], cwd: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.stderr_path = log_path.with_suffix(".stderr")
        self._stderr: IO[bytes] = self.stderr_path.open("ab")
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr, env=dict(env), cwd=cwd
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait; SIGKILL if it does not end in time. The exit status."""
        if self.alive:
            self.resume()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stderr.close()
        return self.process.returncode

    def kill(self) -> None:
        if self.alive:
            self.process.kill()
            self.process.wait()
        self._stderr.close()

    def wait(self, timeout_s: float) -> int:
        code = self.process.wait(timeout_s)
        self._stderr.close()
        return code

    def pause(self) -> None:
        if self.alive:
            os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.alive:
            os.kill(self.pid, signal.SIGCONT)

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.log_path)

    def count(self, event: str) -> int:
        return sum(1 for item in self.events() if item.get("ev") == event)

    def wait_for(self, event: str, timeout_s: float = 60.0) -> None:
        """Wait until the process logged ``event`` (e.g. ``started``: its signal handlers are in place)."""
        deadline = time.monotonic() + timeout_s
        while not self.count(event):
            if not self.alive:
                raise RuntimeError(f"{self.name} ended before {event!r}: {self.stderr_tail()}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.name} did not log {event!r} in {timeout_s} s")
            time.sleep(0.05)

    def stderr_tail(self, chars: int = 3000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        return f"WorkloadProcess({self.name}, pid={self.pid}, alive={self.alive})"


class Cluster:
    """One broker process, its workloads, and the end of a run: drain and check."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        seed: int,
        *,
        broker_options: Mapping[str, object] | None = None,
        topic: str = "orders",
        group: str = "g",
        data_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.seed = seed
        self.rng = random.Random(seed)
        self.topic = topic
        self.group = group
        options: dict[str, object] = {
            "long_polling_timeout_s": 1.0,
            "segment_size_bytes": 1024 * 1024,
        }
        options.update(broker_options or {})
        self.broker = BrokerProcess(
            Path(data_dir) if data_dir is not None else self.root / "data", options=options
        )
        self.processes: list[WorkloadProcess] = []
        self._logs: list[Path] = []

    # ------------------------------------------------------------------ processes

    def inbox_path(self, group: str | None = None) -> Path:
        return self.root / f"inbox-{group or self.group}.sqlite"

    def _environment(self, official: bool, name: str) -> dict[str, str]:
        environment = {key: value for key, value in os.environ.items() if not key.startswith("HOMING_")}
        if official:
            environment = {key: value for key, value in environment.items() if not key.startswith("PYTHON")}
            home = self.root / "home" / name
            home.mkdir(parents=True, exist_ok=True)
            environment["HOME"] = str(home)  # the official client writes its logs under $HOME/logs
        environment["PYTHONUNBUFFERED"] = "1"
        return environment

    def _spawn(self, name: str, argv: list[str], official: bool) -> WorkloadProcess:
        log = self.root / "logs" / f"{name}.jsonl"
        log.parent.mkdir(parents=True, exist_ok=True)
        process = WorkloadProcess(name, argv, log, self._environment(official, name), REPO)
        self.processes.append(process)
        if log not in self._logs:
            self._logs.append(log)
        return process

    def workload(self, action: str, name: str, *arguments: str, topic: str | None = None) -> WorkloadProcess:
        """A Homing-client workload process (see :mod:`homing.testing.durability.workload`)."""
        log = self.root / "logs" / f"{name}.jsonl"
        argv = [
            sys.executable, "-m", "homing.testing.durability.workload", action,
            "--endpoint", self.broker.endpoint, "--topic", topic or self.topic, "--log", str(log),
            "--name", name, "--seed", str(self.rng.randrange(1 << 31)), *arguments,
        ]  # fmt: skip
        return self._spawn(name, argv, official=False)

    def producer(
        self,
        name: str,
        *,
        count: int | None = None,
        rate: float = 0.0,
        attempts: int = 0,
        extra: Iterable[str] = (),
    ) -> WorkloadProcess:
        arguments = ["--prefix", name, "--rate", str(rate), "--attempts", str(attempts), *extra]
        if count is not None:
            arguments += ["--count", str(count)]
        return self.workload("produce", name, *arguments)

    def consumer(
        self,
        name: str,
        *,
        group: str | None = None,
        mode: str = "simple",
        invisible_s: float = 3.0,
        extra: Iterable[str] = (),
    ) -> WorkloadProcess:
        group = group or self.group
        arguments = [
            "--group", group, "--inbox", str(self.inbox_path(group)), "--mode", mode,
            "--invisible-s", str(invisible_s), *extra,
        ]  # fmt: skip
        return self.workload("consume", name, *arguments)

    def official(self, action: str, name: str, **arguments: Any) -> WorkloadProcess:
        """An official-client workload process (``produce`` or ``consume``)."""
        if not official_client_available():
            raise RuntimeError(f"{OFFICIAL_PYTHON} is missing: run scripts/setup-official-clients")
        log = self.root / "logs" / f"{name}.jsonl"
        values: dict[str, Any] = {
            "endpoint": self.broker.endpoint, "topic": self.topic, "log": str(log), "name": name,
            "seed": self.rng.randrange(1 << 31),
        }  # fmt: skip
        if action == "produce":
            values["prefix"] = name
        else:
            values.setdefault("group", self.group)
            values["inbox"] = str(self.inbox_path(arguments.get("group", self.group)))
        values.update(arguments)
        argv = [str(OFFICIAL_PYTHON), "-I", str(OFFICIAL_WORKLOAD), action, json.dumps(values)]
        return self._spawn(name, argv, official=True)

    def wait_for_progress(
        self, processes: Iterable[WorkloadProcess], event: str = "outcome", *, timeout_s: float = 30.0
    ) -> dict[str, float]:
        """After healing: wait until each process logs a new successful ``event`` (an OK send, a
        confirmed ack). Returns the seconds each took; raises AssertionError on a timeout."""

        def successes(process: WorkloadProcess) -> int:
            return sum(
                1
                for item in process.events()
                if item.get("ev") == event
                and item.get("outcome", "ok") == "ok"
                and item.get("ok", True) is True
            )

        waiting = {process.name: (process, successes(process)) for process in processes}
        took: dict[str, float] = {}
        started = time.monotonic()
        while waiting:
            for name, (process, before) in list(waiting.items()):
                if successes(process) > before:
                    took[name] = time.monotonic() - started
                    del waiting[name]
            if waiting and time.monotonic() - started > timeout_s:
                raise AssertionError(
                    f"no new successful {event} within {timeout_s:g} s of healing from: "
                    f"{', '.join(sorted(waiting))}\n{self.describe_failure()}"
                )
            time.sleep(0.1)
        return took

    def stop(self, processes: Iterable[WorkloadProcess], timeout_s: float = 60.0) -> None:
        for process in processes:
            process.terminate(timeout_s)

    # ------------------------------------------------------------------ admin API

    def admin(self, path: str, *, timeout_s: float = 30.0) -> Any:
        """GET on the admin API, retried while the broker is (re)starting."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(self.broker.admin_url + path, timeout=5) as response:
                    return json.load(response)
            except urllib.error.HTTPError:
                raise
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def admin_post(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            self.broker.admin_url + path,
            data=json.dumps(dict(body or {})).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def group_state(self, group: str | None = None) -> tuple[int, int]:
        """(in flight, lag) of a group, from the admin API's group description."""
        try:
            described = self.admin(f"/v1/groups/{group or self.group}")
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return 0, 0
            raise
        return int(described["in_flight"]), int(described["lag"])

    def dead_letters(self, group: str | None = None) -> Counter[str]:
        found: Counter[str] = Counter()
        for item in self.admin(f"/v1/dlq/{group or self.group}?limit=1000"):
            body = base64.b64decode(item.get("body_base64", ""))
            uid = str(item["message_id"])
            if body.startswith(b"uid="):
                uid = body[4 : body.index(b";")].decode()
            found[uid] += 1
        return found

    def effects(self, group: str | None = None) -> Counter[str]:
        with SqliteInbox(self.inbox_path(group), consumer="checker") as inbox:
            return inbox.effect_counts()

    # ------------------------------------------------------------------ the end of a run

    def history(self) -> History:
        return load_history(self._logs)

    def drain(
        self,
        group: str | None = None,
        *,
        limit_s: float = MAX_DRAIN_S,
        extra_s: float = 15.0,
        history: History | None = None,
    ) -> tuple[float, int, int]:
        """Wait until the group is drained: (seconds, in flight, lag). Gives up ``extra_s`` past the limit.

        Drained: nothing in flight, no lag, and every acknowledged uid has its effect in the inbox
        (or is in the dead-letter queue), twice in a row.
        """
        started = time.monotonic()
        must_arrive = (history if history is not None else self.history()).uids(Outcome.OK)
        stable = 0
        in_flight = lag = -1
        while True:
            in_flight, lag = self.group_state(group)
            arrived = set(self.effects(group))
            if (
                in_flight == 0
                and lag == 0
                and (must_arrive <= arrived or must_arrive - arrived <= set(self.dead_letters(group)))
            ):
                stable += 1
                if stable >= 2:
                    break
            else:
                stable = 0
            if time.monotonic() - started > limit_s + extra_s:
                break
            time.sleep(0.25)
        return time.monotonic() - started, in_flight, lag

    def check(
        self,
        *,
        group: str | None = None,
        drained: tuple[float, int, int] | None = None,
        forbidden: Collection[str] = (),
        history: History | None = None,
    ) -> CheckReport:
        seconds, in_flight, lag = drained if drained is not None else self.drain(group)
        return check(
            history if history is not None else self.history(),
            effects=self.effects(group),
            dead_letters=self.dead_letters(group),
            forbidden=forbidden,
            in_flight=in_flight,
            lag=lag,
            drain_s=seconds,
        )

    def describe_failure(self) -> str:
        parts = [
            f"seed {self.seed}; run directory {self.root}",
            "--- broker log (tail)",
            self.broker.log_text()[-3000:],
        ]
        for process in self.processes:
            tail = process.stderr_tail(1500)
            if tail.strip():
                parts += [f"--- {process.name} stderr (tail)", tail]
        return "\n".join(parts)

    def close(self) -> None:
        for process in self.processes:
            if process.alive:
                process.kill()
        self.broker.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
