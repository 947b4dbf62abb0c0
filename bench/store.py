"""Store-layer benchmark: durable appends, memory with a large backlog, restart after ``kill -9``.

Run ``python bench/store.py [--quick] [--data-dir DIR]``. Each result is one JSON object per line on
stdout; progress goes to stderr. See ``bench/README.md`` for what each row means.

Every row is measured on the real disk (never tmpfs: the point is a real ``fdatasync``), with 1 KiB
bodies and the store's default ``sync`` flush mode unless the row says otherwise. The fsync ceiling
of the disk is measured in the same run and repeated in every row, so rows compare as ratios.

Rows that need a process of their own (memory, restart) run this file again as a child
(``--child ...``); the child reports JSON lines on its stdout to the driver.
"""

from __future__ import annotations

import argparse
import array
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from homing.store import MessageStore, NewRecord, StoreConfig
from homing.store.group_commit import DurabilityCallback, FlushMode

BODY_BYTES = 1024
TOPIC = "bench"
QUEUES = 8
POOL_RECORDS = 4096
CEILING_WRITE_BYTES = 4096
MIB = 1024 * 1024
GIB = 1024 * MIB

# Pipelined defaults, chosen with --sweep (see bench/README.md).
PIPELINED_WRITERS = 2
PIPELINED_BATCH = 64
PIPELINED_WINDOW = 16

Row = dict[str, object]


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def emit(row: Row) -> None:
    print(json.dumps(row), flush=True)


# ----------------------------------------------------------------------------- helpers


def make_pool(body_bytes: int, count: int = POOL_RECORDS) -> list[NewRecord]:
    """Records reused in a cycle: building them is the caller's cost, not the store's."""
    body = os.urandom(body_bytes)
    return [
        NewRecord(TOPIC, index % QUEUES, body, message_id=f"{index:032x}", born_timestamp_ms=1)
        for index in range(count)
    ]


def make_batches(pool: Sequence[NewRecord], batch: int) -> list[list[NewRecord]]:
    return [list(pool[start : start + batch]) for start in range(0, len(pool) - batch + 1, batch)]


def percentile_ms(sorted_ns: Sequence[int], fraction: float) -> float | None:
    if not sorted_ns:
        return None
    index = min(len(sorted_ns) - 1, int(fraction * len(sorted_ns)))
    return round(sorted_ns[index] / 1e6, 4)


def rss_anon_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no RssAnon in /proc/self/status")


def filesystem_of(path: str) -> tuple[str, str]:
    """(mount point, file-system type) holding ``path``."""
    path = os.path.realpath(path)
    best = ("/", "unknown")
    with open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) < 3:
                continue
            mount_point, fs_type = fields[1], fields[2]
            inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best[0]):
                best = (mount_point, fs_type)
    return best


def free_bytes(path: str) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


@dataclass(slots=True)
class Measured:
    messages: int
    seconds: float
    latencies_ns: list[int]
    syncs: int
    log_bytes: int
    # CPU time of the whole process (every thread: writers, flusher, dispatcher, allocator) while
    # measuring, user and system; None where the work ran in a child process.
    cpu_user_s: float | None = None
    cpu_system_s: float | None = None


def result_row(name: str, measured: Measured, ceiling: float, body_bytes: int, **parameters: object) -> Row:
    latencies = sorted(measured.latencies_ns)
    seconds = measured.seconds
    rate = measured.messages / seconds if seconds > 0 else 0.0
    row: Row = {
        "name": name,
        "msgs_per_s": round(rate),
        "mb_per_s": round(rate * body_bytes / 1e6, 1),
        "p50_ms": percentile_ms(latencies, 0.50),
        "p99_ms": percentile_ms(latencies, 0.99),
        "syncs_per_s": round(measured.syncs / seconds) if seconds > 0 else 0,
        "fsync_ceiling_per_s": round(ceiling),
        "x_fsync_ceiling": round(rate / ceiling, 1) if ceiling > 0 else None,
        "msgs_per_sync": round(measured.messages / measured.syncs, 1) if measured.syncs else None,
        "messages": measured.messages,
        "seconds": round(seconds, 3),
        "body_bytes": body_bytes,
        "log_bytes_per_msg": round(measured.log_bytes / measured.messages) if measured.messages else None,
    }
    if measured.cpu_user_s is not None and measured.cpu_system_s is not None and measured.messages:
        row["cpu_user_us_per_msg"] = round(measured.cpu_user_s / measured.messages * 1e6, 2)
        row["cpu_system_us_per_msg"] = round(measured.cpu_system_s / measured.messages * 1e6, 2)
    row["load_1m"] = round(os.getloadavg()[0], 2)
    row.update(parameters)
    return row


def open_store(data_dir: str, flush_mode: FlushMode = "sync") -> MessageStore:
    store = MessageStore(StoreConfig(data_dir=data_dir, flush_mode=flush_mode))
    store.open()
    return store


# ----------------------------------------------------------------------------- fsync ceiling


def measure_fsync_ceiling(directory: str, seconds: float) -> tuple[float, Row]:
    """4 KiB appends to a fresh file, each followed by ``fdatasync``: the disk's durable-write rate."""
    path = os.path.join(directory, "fsync-ceiling")
    block = os.urandom(CEILING_WRITE_BYTES)
    latencies: list[int] = []
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        os.fsync(fd)
        started = time.perf_counter_ns()
        deadline = started + int(seconds * 1e9)
        now = started
        while now < deadline:
            os.write(fd, block)
            os.fdatasync(fd)
            after = time.perf_counter_ns()
            latencies.append(after - now)
            now = after
        elapsed = (now - started) / 1e9
    finally:
        os.close(fd)
        os.remove(path)
    rate = len(latencies) / elapsed
    latencies.sort()
    mount_point, fs_type = filesystem_of(directory)
    return rate, {
        "name": "fsync_ceiling",
        "msgs_per_s": round(rate),
        "mb_per_s": round(rate * CEILING_WRITE_BYTES / 1e6, 1),
        "p50_ms": percentile_ms(latencies, 0.50),
        "p99_ms": percentile_ms(latencies, 0.99),
        "syncs_per_s": round(rate),
        "fsync_ceiling_per_s": round(rate),
        "messages": len(latencies),
        "seconds": round(elapsed, 3),
        "write_bytes": CEILING_WRITE_BYTES,
        "mount_point": mount_point,
        "fs_type": fs_type,
        "load_1m": round(os.getloadavg()[0], 2),
    }


# ----------------------------------------------------------------------------- synchronous writers


def run_synchronous(store: MessageStore, pool: Sequence[NewRecord], writers: int, seconds: float) -> Measured:
    """``writers`` threads, each calling ``append_durable`` with one record at a time."""
    per_writer: list[list[int]] = [[] for _ in range(writers)]
    barrier = threading.Barrier(writers + 1)
    deadline_box: list[int] = [0]
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        latencies = per_writer[number]
        records = [[record] for record in pool[number::writers]]
        barrier.wait()
        deadline = deadline_box[0]
        try:
            for batch in itertools.cycle(records):
                began = time.perf_counter_ns()
                if began >= deadline:
                    return
                store.append_durable(batch)
                latencies.append(time.perf_counter_ns() - began)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(number,)) for number in range(writers)]
    for thread in threads:
        thread.start()
    syncs_before, offset_before = store.sync_count, store.write_offset
    cpu_before = os.times()
    started = time.perf_counter_ns()
    deadline_box[0] = started + int(seconds * 1e9)
    barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = (time.perf_counter_ns() - started) / 1e9
    cpu_after = os.times()
    if errors:
        raise errors[0]
    latencies = [value for values in per_writer for value in values]
    return Measured(
        len(latencies),
        elapsed,
        latencies,
        store.sync_count - syncs_before,
        store.write_offset - offset_before,
        cpu_after.user - cpu_before.user,
        cpu_after.system - cpu_before.system,
    )


# ----------------------------------------------------------------------------- pipelined writers


def run_pipelined(
    store: MessageStore,
    pool: Sequence[NewRecord],
    *,
    writers: int,
    batch: int,
    window: int,
    seconds: float | None = None,
    messages: int | None = None,
) -> Measured:
    """Writers append batches without waiting, each keeping up to ``window`` batches not yet durable.

    Durability is learnt through ``add_durability_callback`` (on the flusher thread); a batch's
    latency runs from its ``append`` call to its callback. Stops after ``seconds`` or once
    ``messages`` (rounded up to whole batches per writer) were appended, then waits for the rest.
    """
    assert (seconds is None) != (messages is None)
    batches = make_batches(pool, batch)
    per_writer: list[list[int]] = [[] for _ in range(writers)]
    barrier = threading.Barrier(writers + 1)
    deadline_box: list[int] = [0]
    errors: list[BaseException] = []
    done_ns: list[int] = [0] * writers
    batches_each = -(-messages // (batch * writers)) if messages is not None else None

    def writer(number: int) -> None:
        latencies = per_writer[number]
        slots = threading.Semaphore(window)

        def on_durable(began: int) -> DurabilityCallback:
            # Runs on the flusher thread: must be quick and never block.
            def callback(error: BaseException | None) -> None:
                if error is not None:
                    errors.append(error)
                else:
                    latencies.append(time.perf_counter_ns() - began)
                slots.release()

            return callback

        barrier.wait()
        deadline = deadline_box[0]
        sent = 0
        try:
            for records in itertools.cycle(batches[number::writers] or batches):
                if batches_each is not None and sent >= batches_each:
                    break
                slots.acquire()
                began = time.perf_counter_ns()
                if batches_each is None and began >= deadline:
                    slots.release()
                    break
                end = store.append(records).end_offset
                store.add_durability_callback(end, on_durable(began))
                sent += 1
            for _ in range(window):  # wait for every batch still in flight
                slots.acquire()
        except BaseException as error:
            errors.append(error)
        done_ns[number] = time.perf_counter_ns()

    threads = [threading.Thread(target=writer, args=(number,)) for number in range(writers)]
    for thread in threads:
        thread.start()
    syncs_before, offset_before = store.sync_count, store.write_offset
    cpu_before = os.times()
    started = time.perf_counter_ns()
    deadline_box[0] = started + int((seconds or 0) * 1e9)
    barrier.wait()
    for thread in threads:
        thread.join()
    cpu_after = os.times()
    if errors:
        raise errors[0]
    elapsed = (max(done_ns) - started) / 1e9
    latencies = [value for values in per_writer for value in values]
    return Measured(
        len(latencies) * batch,
        elapsed,
        latencies,
        store.sync_count - syncs_before,
        store.write_offset - offset_before,
        cpu_after.user - cpu_before.user,
        cpu_after.system - cpu_before.system,
    )


# ----------------------------------------------------------------------------- child processes


def child_memory(data_dir: str, checkpoints: list[int], body_bytes: int) -> None:
    """Fill a store with pipelined durable appends; report RssAnon at each backlog size.

    Besides the reading at each checkpoint (taken once the dispatcher has caught up), a sampler
    thread keeps the highest RssAnon seen while filling. Batch latencies are kept in a compact
    array (8 bytes per batch of 64, ~1.2 MB at 10 million messages), counted in the figures.
    """
    pool = make_pool(body_bytes)
    store = open_store(data_dir)
    report({"event": "opened", "stored": 0, "rss_anon_mb": rss_anon_mb()})
    peak = [0.0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.2):
            peak[0] = max(peak[0], rss_anon_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stored = 0
    seconds = 0.0
    syncs = 0
    log_bytes = 0
    latencies = array.array("q")
    for target in checkpoints:
        measured = run_pipelined(
            store,
            pool,
            writers=PIPELINED_WRITERS,
            batch=PIPELINED_BATCH,
            window=PIPELINED_WINDOW,
            messages=target - stored,
        )
        stored += measured.messages
        seconds += measured.seconds
        syncs += measured.syncs
        log_bytes += measured.log_bytes
        latencies.extend(measured.latencies_ns)
        del measured
        wait_dispatched(store)
        report(
            {
                "event": "checkpoint",
                "stored": stored,
                "rss_anon_mb": rss_anon_mb(),
                "log_bytes": store.write_offset,
            }
        )
    sampling.set()
    sampler.join()
    store.close()
    ordered = sorted(latencies)
    report(
        {
            "event": "done",
            "messages": stored,
            "seconds": seconds,
            "syncs": syncs,
            "log_bytes": log_bytes,
            "p50_ms": percentile_ms(ordered, 0.5),
            "p99_ms": percentile_ms(ordered, 0.99),
            "rss_anon_mb_peak_while_filling": peak[0],
            "rss_anon_mb_after_close": rss_anon_mb(),
        }
    )


def wait_dispatched(store: MessageStore, timeout_s: float = 60.0) -> None:
    """Until the dispatcher caught up with everything written (the steady state of a backlog)."""
    deadline = time.monotonic() + timeout_s
    while store.dispatched_offset < store.write_offset and time.monotonic() < deadline:
        time.sleep(0.01)


def child_fill(data_dir: str, fill_bytes: int, flush_mode: FlushMode) -> None:
    """Append until the log holds ``fill_bytes``, say so, and keep appending until killed.

    ``sync``: the pipelined load of :func:`run_pipelined` (durable appends, the default mode).
    ``async``: batches appended back to back, never waiting (the flusher syncs every 0.2 s).
    """
    pool = make_pool(BODY_BYTES)
    store = open_store(data_dir, flush_mode)
    started = time.monotonic()
    written = 0

    def announce() -> None:
        report(
            {
                "event": "filled",
                "log_bytes": store.write_offset,
                "messages": written,
                "seconds": time.monotonic() - started,
                "syncs": store.sync_count,
                "flushed_offset": store.flushed_offset,
                "dispatched_offset": store.dispatched_offset,
            }
        )

    if flush_mode == "sync":
        while store.write_offset < fill_bytes:
            written += run_pipelined(
                store,
                pool,
                writers=PIPELINED_WRITERS,
                batch=PIPELINED_BATCH,
                window=PIPELINED_WINDOW,
                messages=16_384,
            ).messages
        announce()
        while True:
            run_pipelined(
                store,
                pool,
                writers=PIPELINED_WRITERS,
                batch=PIPELINED_BATCH,
                window=PIPELINED_WINDOW,
                messages=16_384,
            )
    for records in itertools.cycle(make_batches(pool, PIPELINED_BATCH)):
        store.append(records)
        written += len(records)
        if written % (64 * PIPELINED_BATCH) == 0 and store.write_offset >= fill_bytes:
            break
    announce()
    for records in itertools.cycle(make_batches(pool, PIPELINED_BATCH)):
        store.append(records)


def child_open(data_dir: str) -> None:
    """Open a store left by a killed process; report when it serves (a durable append done)."""
    began = time.monotonic()
    store = MessageStore(StoreConfig(data_dir=data_dir))
    recovery = store.open()
    opened = time.monotonic()
    store.append_durable([NewRecord(TOPIC, 0, b"x" * BODY_BYTES, message_id="after-restart")])
    served = time.monotonic()
    readable = store.read_queue(TOPIC, 0, 0, 1)
    report(
        {
            "event": "ready",
            "open_call_s": round(opened - began, 4),
            "first_durable_append_s": round(served - opened, 4),
            "recovery_duration_s": round(recovery.duration_s, 4),
            "records_scanned": recovery.records_scanned,
            "scanned_bytes": recovery.end_offset - recovery.scanned_from,
            "log_bytes": recovery.end_offset,
            "abnormal_shutdown": recovery.abnormal_shutdown,
            "checkpoint_found": recovery.checkpoint_found,
            "torn_tail_bytes": recovery.torn_tail.bytes_cut if recovery.torn_tail is not None else 0,
            "queue0_readable": bool(readable.records),
            "queue0_length": readable.max_queue_offset,
        }
    )
    store.close()


def report(event: dict[str, object]) -> None:
    print(json.dumps(event), flush=True)


def spawn_child(*arguments: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--child", *arguments],
        stdout=subprocess.PIPE,
        text=True,
    )


def read_event(stream: IO[str] | None) -> dict[str, object]:
    assert stream is not None
    line = stream.readline()
    if not line:
        raise RuntimeError("the child process ended without reporting")
    event = json.loads(line)
    assert isinstance(event, dict)
    return event


def finish(child: subprocess.Popen[str]) -> None:
    if child.wait() != 0:
        raise RuntimeError(f"child process failed with exit status {child.returncode}")


def number(event: dict[str, object], key: str) -> float:
    value = event[key]
    assert isinstance(value, int | float)
    return float(value)


# ----------------------------------------------------------------------------- rows


@dataclass(slots=True)
class Options:
    quick: bool
    data_dir: str
    keep: bool
    sweep: bool
    only: list[str]
    created_data_dir: bool
    restart_fill: FlushMode


def fresh_dir(options: Options, name: str) -> str:
    path = os.path.join(options.data_dir, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def cleanup(options: Options, path: str) -> None:
    if not options.keep:
        shutil.rmtree(path, ignore_errors=True)


def bench_single(options: Options, ceiling: float) -> None:
    path = fresh_dir(options, "single")
    store = open_store(path)
    try:
        measured = run_synchronous(store, make_pool(BODY_BYTES), 1, 2.0 if options.quick else 8.0)
    finally:
        store.close()
        cleanup(options, path)
    emit(result_row("store_append_single", measured, ceiling, BODY_BYTES, writers=1, batch=1))


def bench_concurrent(options: Options, ceiling: float, writers: int = 16) -> None:
    path = fresh_dir(options, f"concurrent{writers}")
    store = open_store(path)
    try:
        measured = run_synchronous(store, make_pool(BODY_BYTES), writers, 3.0 if options.quick else 8.0)
    finally:
        store.close()
        cleanup(options, path)
    emit(
        result_row(
            f"store_append_concurrent{writers}", measured, ceiling, BODY_BYTES, writers=writers, batch=1
        )
    )


def bench_pipelined(
    options: Options,
    ceiling: float,
    *,
    name: str = "store_append_pipelined",
    writers: int = PIPELINED_WRITERS,
    batch: int = PIPELINED_BATCH,
    window: int = PIPELINED_WINDOW,
    seconds: float | None = None,
) -> None:
    path = fresh_dir(options, "pipelined")
    store = open_store(path)
    try:
        measured = run_pipelined(
            store,
            make_pool(BODY_BYTES),
            writers=writers,
            batch=batch,
            window=window,
            seconds=seconds if seconds is not None else (3.0 if options.quick else 8.0),
        )
    finally:
        store.close()
        cleanup(options, path)
    emit(
        result_row(
            name,
            measured,
            ceiling,
            BODY_BYTES,
            writers=writers,
            batch=batch,
            window_per_writer=window,
            latency="per batch: append call to durability callback",
        )
    )


def bench_sweep(options: Options, ceiling: float) -> None:
    for writers, batch, window in [
        (1, 64, 32),
        (2, 16, 32),
        (2, 32, 32),
        (2, 64, 4),
        (2, 64, 8),
        (2, 64, 16),
        (2, 64, 32),
        (2, 128, 8),
        (2, 128, 32),
        (2, 256, 16),
        (4, 64, 16),
        (4, 256, 8),
    ]:
        progress(f"sweep: writers={writers} batch={batch} window={window}")
        bench_pipelined(
            options,
            ceiling,
            name="store_append_pipelined_sweep",
            writers=writers,
            batch=batch,
            window=window,
            seconds=4.0,
        )


def bench_memory(options: Options, ceiling: float) -> None:
    messages = 1_000_000 if options.quick else 10_000_000
    body_bytes = BODY_BYTES
    note = None
    path = fresh_dir(options, "memory")
    # Record size on disk is the body plus ~110 bytes of header and fields; one spare segment.
    per_record = body_bytes + 110
    needed = messages * per_record + 2 * 256 * MIB
    available = free_bytes(path)
    if needed > available * 0.8:
        scaled = int(available * 0.8 - 2 * 256 * MIB) // per_record
        if scaled >= 1_000_000:
            note = f"scaled down from {messages} to {scaled} messages: {available / GIB:.1f} GiB free"
            messages = scaled
        else:
            body_bytes = 64
            per_record = body_bytes + 110
            note = f"bodies cut to {body_bytes} bytes: only {available / GIB:.1f} GiB free"
    checkpoints = sorted({messages // 10, messages // 4, messages // 2, messages * 3 // 4, messages})
    progress(f"memory: {messages} messages of {body_bytes} bytes, RssAnon at {checkpoints}")
    child = spawn_child("memory", path, ",".join(map(str, checkpoints)), str(body_bytes))
    rss: dict[str, float] = {}
    try:
        opened = read_event(child.stdout)
        rss["0"] = number(opened, "rss_anon_mb")
        while True:
            event = read_event(child.stdout)
            if event["event"] == "done":
                break
            stored = int(number(event, "stored"))
            rss[str(stored)] = number(event, "rss_anon_mb")
            progress(f"memory: {stored} stored, RssAnon {rss[str(stored)]} MB")
        finish(child)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        cleanup(options, path)
    measured = Measured(
        int(number(event, "messages")),
        number(event, "seconds"),
        [],
        int(number(event, "syncs")),
        int(number(event, "log_bytes")),
    )
    row = result_row("store_memory_10m", measured, ceiling, body_bytes)
    row["p50_ms"] = event["p50_ms"]
    row["p99_ms"] = event["p99_ms"]
    loaded = [value for key, value in rss.items() if key != "0"]
    row.update(
        {
            "rss_anon_mb_by_stored": rss,
            "rss_anon_mb_max": max(loaded),
            "rss_anon_mb_growth_first_to_last": round(loaded[-1] - loaded[0], 1),
            "rss_anon_mb_peak_while_filling": event["rss_anon_mb_peak_while_filling"],
            "rss_anon_mb_after_close": event["rss_anon_mb_after_close"],
            "measured_in": "child process running the store (its own /proc/self/status)",
            "fill": (
                f"pipelined, {PIPELINED_WRITERS} writers x batch {PIPELINED_BATCH}"
                f" x window {PIPELINED_WINDOW}, sync flush"
            ),
            "writers": PIPELINED_WRITERS,
            "batch": PIPELINED_BATCH,
            "latency": "per batch: append call to durability callback",
        }
    )
    if note is not None:
        row["note"] = note
    emit(row)


def bench_restart(options: Options, ceiling: float) -> None:
    flush_mode = options.restart_fill
    fill_bytes = 256 * MIB if options.quick else GIB
    path = fresh_dir(options, "restart")
    progress(f"restart: filling {fill_bytes // MIB} MiB ({flush_mode} flush), then kill -9")
    filler = spawn_child("fill", path, str(fill_bytes), flush_mode)
    opener: subprocess.Popen[str] | None = None
    try:
        filled = read_event(filler.stdout)
        os.kill(filler.pid, signal.SIGKILL)
        filler.wait()
        progress("restart: killed; opening a fresh store")
        began = time.monotonic()
        opener = spawn_child("open", path)
        ready = read_event(opener.stdout)
        open_s = time.monotonic() - began
        finish(opener)
    finally:
        for child in (filler, opener):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()
        cleanup(options, path)
    fill_seconds = number(filled, "seconds")
    fill_messages = number(filled, "messages")
    fill_rate = fill_messages / fill_seconds
    row: Row = {
        "name": f"store_restart_after_kill9_{'256mib' if options.quick else '1gib'}",
        "open_s": round(open_s, 4),
        "open_s_means": "from spawning the new process to its first durable append (outside view)",
        "recovery_duration_s": ready["recovery_duration_s"],
        "open_call_s": ready["open_call_s"],
        "first_durable_append_s": ready["first_durable_append_s"],
        "records_scanned": ready["records_scanned"],
        "scanned_bytes": ready["scanned_bytes"],
        "log_bytes": ready["log_bytes"],
        "abnormal_shutdown": ready["abnormal_shutdown"],
        "checkpoint_found": ready["checkpoint_found"],
        "torn_tail_bytes": ready["torn_tail_bytes"],
        "serves_reads": ready["queue0_readable"],
        # The fill before the kill: what msgs_per_s, mb_per_s and syncs_per_s describe here.
        "fill_flush_mode": flush_mode,
        "msgs_per_s": round(fill_rate),
        "mb_per_s": round(fill_rate * BODY_BYTES / 1e6, 1),
        "p50_ms": None,
        "p99_ms": None,
        "syncs_per_s": round(number(filled, "syncs") / fill_seconds),
        "fsync_ceiling_per_s": round(ceiling),
        "fill_log_bytes_at_kill": filled["log_bytes"],
        "messages": int(fill_messages),
        "seconds": round(fill_seconds, 3),
        "body_bytes": BODY_BYTES,
        "load_1m": round(os.getloadavg()[0], 2),
    }
    emit(row)


# ----------------------------------------------------------------------------- main

ROWS = ["single", "concurrent16", "pipelined", "memory", "restart"]


def parse(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (under 2 minutes in all)")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="directory on the disk to measure (default: a new directory under /var/tmp)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    parser.add_argument("--sweep", action="store_true", help="also try several pipelined batch/window shapes")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(ROWS)}")
    parser.add_argument(
        "--restart-fill",
        choices=["sync", "async"],
        default="sync",
        help="flush mode of the process filling the log before the kill -9 (default: sync)",
    )
    parsed = parser.parse_args(argv)
    created = not parsed.data_dir
    data_dir = tempfile.mkdtemp(prefix="homing-bench-", dir="/var/tmp") if created else str(parsed.data_dir)
    only = [name for name in str(parsed.only).split(",") if name]
    for name in only:
        if name not in ROWS:
            parser.error(f"unknown row {name!r}; choose from {', '.join(ROWS)}")
    fill: FlushMode = "async" if parsed.restart_fill == "async" else "sync"
    return Options(bool(parsed.quick), data_dir, bool(parsed.keep), bool(parsed.sweep), only, created, fill)


def run_child(arguments: Sequence[str]) -> None:
    kind, data_dir, *rest = arguments
    if kind == "memory":
        child_memory(data_dir, [int(value) for value in rest[0].split(",")], int(rest[1]))
    elif kind == "fill":
        mode: FlushMode = "async" if rest[1] == "async" else "sync"
        child_fill(data_dir, int(rest[0]), mode)
    elif kind == "open":
        child_open(data_dir)
    else:
        raise SystemExit(f"unknown child {kind!r}")


def main(argv: Sequence[str]) -> None:
    if argv[:1] == ["--child"]:
        run_child(argv[1:])
        return
    options = parse(argv)
    os.makedirs(options.data_dir, exist_ok=True)
    mount_point, fs_type = filesystem_of(options.data_dir)
    if fs_type in ("tmpfs", "ramfs"):
        raise SystemExit(f"{options.data_dir} is on {fs_type}: fdatasync would measure nothing")
    progress(f"data under {options.data_dir} ({fs_type} at {mount_point}); quick={options.quick}")
    wanted = options.only or ROWS
    started = time.monotonic()
    try:
        progress("fsync ceiling")
        ceiling, ceiling_row = measure_fsync_ceiling(options.data_dir, 2.0 if options.quick else 3.0)
        emit(ceiling_row)
        if "single" in wanted:
            progress("single writer")
            bench_single(options, ceiling)
        if "concurrent16" in wanted:
            progress("16 synchronous writers")
            bench_concurrent(options, ceiling)
        if "pipelined" in wanted:
            progress("pipelined writers")
            bench_pipelined(options, ceiling)
            if options.sweep:
                bench_sweep(options, ceiling)
        if "memory" in wanted:
            bench_memory(options, ceiling)
        if "restart" in wanted:
            bench_restart(options, ceiling)
    finally:
        if options.created_data_dir and not options.keep:
            shutil.rmtree(options.data_dir, ignore_errors=True)
    progress(f"done in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
