"""kill -9 of a real process appending synchronously, hundreds of times.

Every append the child reported as durable must be present after restart; nothing it never
attempted may appear. kill -9 keeps the page cache, so this proves the recovery path (abort
marker, checkpoint, rescan, offsets) rather than fsync itself, which the simulated disk covers.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from homing.store import MessageStore, StoreConfig

CYCLES = 200
CHILD = Path(__file__).with_name("kill_loop_child.py")


def _read_store(data_dir: str) -> list[str]:
    store = MessageStore(
        StoreConfig(data_dir=data_dir, segment_size_bytes=256 * 1024, consume_queue_entries_per_file=512)
    )
    store.open()
    try:
        ids: list[str] = []
        for queue_id in (0, 1):
            offset, end = store.queue_bounds("kill", queue_id)
            while offset < end:
                read = store.read_queue("kill", queue_id, offset, 500)
                ids.extend(record.message_id for record in read.records)
                offset = read.next_queue_offset
        return ids
    finally:
        store.close()


def test_kill_nine_loop_loses_no_acknowledged_append(tmp_path: Path) -> None:
    seed = int(os.environ.get("KILL_LOOP_SEED", "20261122"))
    print(f"kill loop seed {seed}")
    rng = random.Random(seed)
    data_dir = str(tmp_path / "data")
    attempted: set[str] = set()
    acknowledged: set[str] = set()
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for cycle in range(CYCLES):
        child = subprocess.Popen(
            [sys.executable, str(CHILD), data_dir, f"c{cycle}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment,
        )
        assert child.stdout is not None
        ready = child.stdout.readline()
        assert ready == b"R\n", child.stderr.read() if child.stderr else ready
        time.sleep(rng.uniform(0.02, 0.15))  # the fault's timing, drawn from the seed
        child.send_signal(signal.SIGKILL)
        # Read through the same buffered reader as readline above (communicate() would bypass it).
        output = child.stdout.read()
        errors = child.stderr.read() if child.stderr is not None else b""
        assert child.wait(timeout=30) == -signal.SIGKILL, errors.decode()
        for line in output.decode().splitlines():
            kind, _, message_id = line.partition(" ")
            if kind == "A":
                attempted.add(message_id)
            elif kind == "K":
                acknowledged.add(message_id)
        if cycle % 20 == 19 or cycle == CYCLES - 1:
            present = _read_store(data_dir)
            assert len(present) == len(set(present)), "a record appears twice"
            lost = acknowledged - set(present)
            unexpected = set(present) - attempted
            assert not lost, f"cycle {cycle}: lost {len(lost)} acknowledged appends, e.g. {sorted(lost)[:5]}"
            assert not unexpected, f"cycle {cycle}: {len(unexpected)} records never attempted"
    assert len(acknowledged) > CYCLES, "the children should have acknowledged appends"
