"""A real ``homing broker`` in a subprocess, for tests that talk to it as clients would.

:class:`BrokerProcess` starts ``python -m homing broker`` on 127.0.0.1 with its own data directory
and log file, waits until the broker logs that it is listening, and stops it gracefully
(SIGTERM), abruptly (:meth:`BrokerProcess.kill`: SIGKILL, as a crash) or restarts it on the same
port and data directory. Settings are passed as command-line flags (``options``); stray
``HOMING_*`` variables of the calling environment are dropped so they cannot change the broker.

:func:`seed_metadata` writes topics and consumer groups into a data directory before the broker
starts: e.g. a FIFO group, or a group with few delivery attempts (the admin API at
:attr:`BrokerProcess.admin_url` can do the same on a running broker).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from homing.broker.metadata import GroupConfig, Metadata, TopicConfig
from homing.clock import SystemClock
from homing.config import SETTINGS, format_durations
from homing.store import OsDisk

__all__ = ["BrokerProcess", "BrokerStartError", "free_port", "seed_metadata"]

LISTENING_MESSAGE = "listening on"  # homing.server.app.LISTENING_MESSAGE, without importing gRPC
_FLAGS = {setting.name: setting for setting in SETTINGS}


class BrokerStartError(RuntimeError):
    """The broker process exited or did not become ready; the message holds its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def seed_metadata(
    data_dir: str | os.PathLike[str],
    *,
    topics: Iterable[TopicConfig] = (),
    groups: Iterable[GroupConfig] = (),
) -> None:
    """Create or update topics and groups in ``data_dir``; the broker must not be running there."""
    path = Path(data_dir)
    path.mkdir(parents=True, exist_ok=True)
    clock = SystemClock()
    metadata = Metadata(OsDisk(), str(path), now_ms=clock.now_ms, random_bytes=os.urandom)
    metadata.open()
    for topic in topics:
        metadata.put_topic(topic)
    for group in groups:
        metadata.put_group(group)


def _flag_arguments(options: Mapping[str, object]) -> list[str]:
    arguments: list[str] = []
    for name, value in options.items():
        setting = _FLAGS.get(name)
        if setting is None:
            raise ValueError(f"unknown broker setting {name!r}")
        if setting.is_boolean:
            arguments.append(f"--{setting.flag}" if value else f"--no-{setting.flag}")
        elif isinstance(value, tuple):
            arguments += [f"--{setting.flag}", format_durations(value)]
        else:
            arguments += [f"--{setting.flag}", str(value)]
    return arguments


class BrokerProcess:
    """``homing broker`` on ``127.0.0.1:<port>`` (a free port unless given) over ``data_dir``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        options: Mapping[str, object] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.options = dict(options or {})
        # Each broker gets its own admin port too, so tests can run brokers side by side.
        self.options.setdefault("admin_listen", f"{host}:{free_port(host)}")
        self.log_path = (
            Path(log_path)
            if log_path is not None
            else self.data_dir.parent / (self.data_dir.name + ".broker.log")
        )
        self._python = python
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.options['admin_listen']}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def command(self) -> list[str]:
        return [
            self._python,
            "-m",
            "homing",
            "broker",
            "--listen",
            self.endpoint,
            "--data-dir",
            str(self.data_dir),
            *_flag_arguments(self.options),
        ]

    def _environment(self) -> dict[str, str]:
        return {name: value for name, value in os.environ.items() if not name.startswith("HOMING_")}

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 60.0) -> Self:
        """Start the broker and return once it accepts requests; raises :class:`BrokerStartError`."""
        assert not self.running, "the broker is already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        start_offset = self._log.tell()
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self._environment(),
        )
        deadline = time.monotonic() + timeout_s
        while True:
            with self.log_path.open("rb") as log:
                log.seek(start_offset)
                if LISTENING_MESSAGE.encode() in log.read():
                    return self
            code = self._process.poll()
            if code is not None:
                self._close_log()
                raise BrokerStartError(f"the broker exited with status {code}:\n{self.log_text()[-4000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerStartError(
                    f"the broker was not ready within {timeout_s:g} s:\n{self.log_text()[-4000:]}"
                )
            time.sleep(0.05)

    def wait_exit(self, timeout_s: float) -> int | None:
        """Wait for the broker to end on its own: its exit status, or None if still running."""
        process = self._process
        if process is None:
            return None
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait: the exit status (0 for a clean shutdown). Kills it after ``timeout_s``."""
        process = self._process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                self._close_log()
                raise BrokerStartError(f"the broker did not stop within {timeout_s:g} s") from None
        self._close_log()
        return process.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash or power cut of the process would (the OS keeps what was written)."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        self._close_log()

    def restart(self, *, crash: bool = False, timeout_s: float = 60.0) -> Self:
        """Stop (or kill, with ``crash``) and start again on the same port and data directory."""
        if crash:
            self.kill()
        else:
            self.stop()
        return self.start(timeout_s)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.running:
            self.stop()

    def __repr__(self) -> str:
        return f"BrokerProcess({self.endpoint}, data_dir={str(self.data_dir)!r}, pid={self.pid})"
