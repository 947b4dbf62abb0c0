"""Homing against its durable peers on this machine: Redis (AOF, fsync always), RabbitMQ (quorum and
classic durable queues, publisher confirms) and NATS JetStream (file storage, sync_interval always).

Run ``python bench/peers.py [--quick]``. It starts every server itself on free 127.0.0.1 ports with
durable settings (data on the real disk, never tmpfs), measures each (system, client, mode) cell in
a child process of its own, stops the servers and prints one JSON object per line on stdout
(progress goes to stderr). The rows are also written to ``bench/results/peers-<time>.jsonl`` with
a chart (``.svg``) beside them; ``--docs`` also rewrites the generated part of
``docs/PERFORMANCE.md`` and ``docs/peers.svg`` from the run. ``--report FILE.jsonl`` redraws the
chart and the table from an earlier run without measuring anything.

Modes, 1 KiB messages, every one acknowledged only once durable:

- ``single``: one synchronous producer (send, wait for the ack, repeat); latency per message.
- ``concurrent16``: 16 synchronous producers, each with a connection of its own.
- ``pipelined``: many messages in flight: Homing's client batching; the peers' best pipelining.
- ``consume``: drain a backlog (filled beforehand, not measured), acking each message.

Each system is driven by the fastest client available (a minimal raw-protocol client: RESP
pipelining over asyncio streams, AMQP 0-9-1 frames with publisher confirms, the NATS protocol with
JetStream acks) and by the usual Python library (redis-py, aio-pika, nats-py) as a second row.
Homing is driven by its own client (``homing.client``) and by a raw gRPC client on the generated
stubs (``raw-grpc``). See docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR / "peers"))

import peer_report  # noqa: E402
from peer_common import (  # noqa: E402
    END_LINE,
    MODES,
    RESULT_PREFIX,
    START_LINE,
    CellSpec,
    Row,
    cpu_seconds,
    emit_line,
    load_average,
    percentile_ms,
    process_tree,
    progress,
    rss_mb,
)

# system -> (server key, [primary client, second client])
SYSTEMS: dict[str, tuple[str, list[str]]] = {
    "homing": ("homing", ["homing.client", "raw-grpc"]),
    "redis-always": ("redis", ["raw-resp", "redis-py"]),
    "rabbitmq-quorum": ("rabbitmq", ["raw-amqp", "aio-pika"]),
    "rabbitmq-classic": ("rabbitmq", ["raw-amqp", "aio-pika"]),
    "nats-always": ("nats", ["raw-nats", "nats-py"]),
}

# The module of bench/peers/ that runs a system's cells.
CELL_MODULES = {
    "homing": "peer_homing",
    "redis-always": "peer_redis",
    "rabbitmq-quorum": "peer_amqp",
    "rabbitmq-classic": "peer_amqp",
    "nats-always": "peer_nats",
}

CEILING_WRITE_BYTES = 4096


def emit(row: Row, out: list[Row], sink: Path | None) -> None:
    out.append(row)
    line = json.dumps(row)
    print(line, flush=True)
    if sink is not None:
        with sink.open("a") as file:
            file.write(line + "\n")


# ----------------------------------------------------------------------------- fsync ceiling


def fsync_ceiling(directory: Path, seconds: float) -> Row:
    """4 KiB appends, each followed by fdatasync, on a fresh file in the data directory."""
    from peer_servers import filesystem_of

    path = directory / "fsync-ceiling.bin"
    block = os.urandom(CEILING_WRITE_BYTES)
    latencies: list[int] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        start = time.perf_counter_ns()
        deadline = start + int(seconds * 1e9)
        while True:
            before = time.perf_counter_ns()
            os.write(fd, block)
            os.fdatasync(fd)
            after = time.perf_counter_ns()
            latencies.append(after - before)
            if after >= deadline:
                break
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    elapsed = (time.perf_counter_ns() - start) / 1e9
    latencies.sort()
    mount, fstype = filesystem_of(directory)
    return {
        "system": "fsync_ceiling",
        "client": None,
        "mode": "append_4k_fdatasync",
        "msgs_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": percentile_ms(latencies, 0.50),
        "p99_ms": percentile_ms(latencies, 0.99),
        "cpu_s": None,
        "rss_mb": None,
        "seconds": round(elapsed, 3),
        "mount": mount,
        "fs_type": fstype,
        "load_avg": load_average(),
    }


# ----------------------------------------------------------------------------- one cell


def run_cell_process(spec: CellSpec, server_pid: int, timeout_s: float, log_dir: Path) -> Row:
    """Run one cell in a child process; the server's CPU and memory are read around its window."""
    log_path = log_dir / f"{spec.tag}.log"
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--cell", spec.to_json()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        timer = threading.Timer(timeout_s, child.kill)
        timer.start()
        cpu_start: float | None = None
        cpu_end: float | None = None
        memory: float | None = None
        result: Row | None = None
        try:
            assert child.stdout is not None
            for line in child.stdout:
                line = line.rstrip("\n")
                if line == START_LINE:
                    cpu_start = cpu_seconds(process_tree(server_pid))
                elif line == END_LINE:
                    pids = process_tree(server_pid)
                    cpu_end = cpu_seconds(pids)
                    memory = rss_mb(pids)
                elif line.startswith(RESULT_PREFIX):
                    result = json.loads(line[len(RESULT_PREFIX) :])
            child.wait()
        finally:
            timer.cancel()
            if child.poll() is None:
                child.kill()
                child.wait()
    if result is None:
        error = log_path.read_text(errors="replace").strip().splitlines()
        reason = "timed out" if child.returncode == -9 else f"exit status {child.returncode}"
        return {"error": f"{reason}: {' | '.join(error[-3:])[-600:]}"}
    if cpu_start is not None and cpu_end is not None:
        result["cpu_s"] = round(cpu_end - cpu_start, 3)
    result["rss_mb"] = memory
    return result


def cell_main(spec_json: str) -> int:
    """The child side: run the cell's workload and print its result line."""
    spec = CellSpec.from_json(spec_json)
    module = importlib.import_module(CELL_MODULES[spec.system])
    for name, value in spec.extra.items():  # --set overrides of the module's shape constants
        current = getattr(module, name, None)
        if not isinstance(current, int) or isinstance(current, bool):
            raise SystemExit(f"{CELL_MODULES[spec.system]}.{name} is not an integer setting")
        setattr(module, name, int(value))
    run_cell: Callable[[CellSpec], Coroutine[Any, Any, Row]] = module.run_cell
    result = asyncio.run(run_cell(spec))
    emit_line(RESULT_PREFIX + json.dumps(result))
    return 0


# ----------------------------------------------------------------------------- the run


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one short round: finishes within 10 minutes")
    parser.add_argument("--rounds", type=int, help="rounds over the whole matrix (default 1 quick, 3 full)")
    parser.add_argument(
        "--duration", type=float, help="measured seconds per cell (default 2.5 quick, 6 full)"
    )
    parser.add_argument("--warmup", type=float, help="seconds before each window opens (default 0.5 / 1)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of systems")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of modes")
    parser.add_argument(
        "--clients",
        default="all",
        help="'all', 'primary' (each system's first client only) or a comma-separated list of client names",
    )
    parser.add_argument("--data-dir", type=Path, help="where the servers keep their data (default: /var/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory and the logs")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    parser.add_argument(
        "--docs", action="store_true", help="rewrite docs/PERFORMANCE.md's table and docs/peers.svg"
    )
    parser.add_argument("--no-setup", action="store_true", help="do not run scripts/setup-bench first")
    parser.add_argument("--report", type=Path, help="only redraw the chart and table from this JSONL file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SYSTEM.NAME=VALUE",
        help="override a shape constant of a system's cell module, e.g. redis-always.PIPELINE_CONNECTIONS=16",
    )
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    if args.cell is not None:
        return cell_main(args.cell)
    if args.report is not None:
        earlier = [json.loads(line) for line in args.report.read_text().splitlines() if line.strip()]
        write_reports(earlier, args.report.with_suffix(".svg"), args.docs)
        return 0

    if not args.no_setup:
        subprocess.run([str(REPO / "scripts" / "setup-bench")], check=True)
    rounds = args.rounds or (1 if args.quick else 3)
    duration = args.duration or (2.5 if args.quick else 6.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    fill_s, fill_max = (6.0, 150_000) if args.quick else (15.0, 400_000)
    systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    modes = [name.strip() for name in args.modes.split(",") if name.strip()]
    for name in systems:
        if name not in SYSTEMS:
            raise SystemExit(f"unknown system {name!r}: choose from {', '.join(SYSTEMS)}")
    for name in modes:
        if name not in MODES:
            raise SystemExit(f"unknown mode {name!r}: choose from {', '.join(MODES)}")
    client_kinds = 1 if args.clients == "primary" else 2
    chosen_clients = None if args.clients in ("all", "primary") else set(args.clients.split(","))
    overrides: dict[str, dict[str, str]] = {}
    for item in args.set:
        target, _, value = item.partition("=")
        system_name, _, constant = target.partition(".")
        if system_name not in SYSTEMS or not constant or not value:
            raise SystemExit(
                f"--set {item!r}: expected SYSTEM.NAME=VALUE with a system of {', '.join(SYSTEMS)}"
            )
        overrides.setdefault(system_name, {})[constant] = value

    from peer_servers import SERVERS, Server, ServerError, filesystem_of

    base = args.data_dir or Path("/var/tmp")
    base.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="homing-peers-", dir=base))
    mount, fstype = filesystem_of(run_dir)
    if fstype in ("tmpfs", "ramfs"):
        shutil.rmtree(run_dir)
        raise SystemExit(f"{run_dir} is on {fstype} ({mount}): the servers' data must be on a real disk")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    sink = args.results_dir / f"peers-{stamp}.jsonl"
    log_dir = run_dir / "cells"
    log_dir.mkdir()
    rows: list[Row] = []
    started = time.monotonic()

    servers: dict[str, Server] = {}
    try:
        for key in dict.fromkeys(SYSTEMS[name][0] for name in systems):
            progress(f"starting {key}")
            server = SERVERS[key](run_dir / key)
            servers[key] = server
            server.start()
            progress(f"{key}: {server.version} on {server.endpoint} ({server.note})")
        emit(
            {
                "system": "run",
                "event": "start",
                "quick": args.quick,
                "rounds": rounds,
                "duration_s": duration,
                "warmup_s": warmup,
                "body_bytes": 1024,
                "time": stamp,
                "load_avg": load_average(),
                "cpus": os.cpu_count(),
                "data_dir": str(run_dir),
                "mount": mount,
                "fs_type": fstype,
                "servers": [server.describe() for server in servers.values()],
            },
            rows,
            sink,
        )
        ceiling = fsync_ceiling(run_dir, 2.0 if args.quick else 3.0)
        emit(ceiling, rows, sink)
        cell_number = 0
        for round_number in range(1, rounds + 1):
            for mode in modes:
                for kind in range(client_kinds):
                    # Rotate the order of the systems from one pass to the next: drift hits all alike.
                    shift = (round_number + kind + modes.index(mode)) % len(systems)
                    for system in systems[shift:] + systems[:shift]:
                        key, clients = SYSTEMS[system]
                        client = clients[kind]
                        if chosen_clients is not None and client not in chosen_clients:
                            continue
                        cell_number += 1
                        spec = CellSpec(
                            system=system,
                            client=client,
                            mode=mode,
                            endpoint=servers[key].endpoint,
                            warmup_s=0.0 if mode == "consume" else warmup,
                            duration_s=duration,
                            fill_s=fill_s,
                            fill_max=fill_max,
                            tag=f"{cell_number:03d}-{system}-{client}-{mode}".replace(".", "_"),
                            extra=overrides.get(system, {}),
                        )
                        load = load_average()
                        progress(f"round {round_number}: {system} / {client} / {mode} (load {load[0]})")
                        result = run_cell_process(
                            spec,
                            servers[key].pid,
                            timeout_s=warmup + duration + fill_s + 120,
                            log_dir=log_dir,
                        )
                        row: Row = {
                            "system": system,
                            "client": client,
                            "mode": mode,
                            "msgs_per_s": result.pop("msgs_per_s", None),
                            "p50_ms": result.pop("p50_ms", None),
                            "p99_ms": result.pop("p99_ms", None),
                            "cpu_s": result.pop("cpu_s", None),
                            "rss_mb": result.pop("rss_mb", None),
                            **result,
                            "round": round_number,
                            "load1": load[0],
                        }
                        emit(row, rows, sink)
                        if "error" in row:
                            progress(f"  failed: {row['error']}")
                        else:
                            progress(f"  {row['msgs_per_s']} msgs/s, p50 {row['p50_ms']} ms")
        emit(
            {
                "system": "run",
                "event": "end",
                "load_avg": load_average(),
                "elapsed_s": round(time.monotonic() - started, 1),
                "fsync_ceiling_per_s": ceiling["msgs_per_s"],
            },
            rows,
            sink,
        )
        emit(peer_report.ratios_row(peer_report.summarise(rows)), rows, sink)
    except ServerError as error:
        progress(f"a server did not start: {error}")
        return 1
    finally:
        for key, server in servers.items():
            progress(f"stopping {key}")
            try:
                server.stop()
            except Exception as error:  # keep stopping the others
                progress(f"stopping {key} failed: {error}")
        if args.keep:
            progress(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    write_reports(rows, sink.with_suffix(".svg"), args.docs)
    progress(f"rows in {sink}")
    return 0


def write_reports(rows: list[Row], svg_path: Path, docs: bool) -> None:
    summary = peer_report.summarise(rows)
    svg = peer_report.svg_chart(summary)
    svg_path.write_text(svg)
    progress(f"chart in {svg_path}")
    table = peer_report.markdown(summary)
    print(table, file=sys.stderr)
    if docs:
        (REPO / "docs" / "peers.svg").write_text(svg)
        peer_report.update_docs(REPO / "docs" / "PERFORMANCE.md", table)
        progress("docs/PERFORMANCE.md and docs/peers.svg updated")


if __name__ == "__main__":
    sys.exit(main())
