"""The checkpoint: how far the derived data (consume queues, key index) is known durable.

Recovery scans the log only from here, which is what makes a restart after a crash quick. It is
written with :mod:`homing.store.atomic_file` (temp, fsync, rename, fsync directory) and only
after the files it vouches for were synced. Losing or damaging it costs time, never data: recovery
then rebuilds everything from the start of the log.

Payload: UTF-8 JSON ``{"version": 1, "queues_offset": int, "index_offset": int,
"queues": [[topic, queue_id, next_queue_offset], ...], "written_at_ms": int}``. Every consume
queue is complete for records before ``queues_offset``, the key index for records before
``index_offset``; ``queues`` lists each queue's length at that point (a floor: a queue found
shorter on disk was damaged and is rebuilt).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from homing.store.atomic_file import read_framed_file, write_framed_file
from homing.store.disk import Disk

__all__ = ["Checkpoint", "read_checkpoint", "write_checkpoint"]

_VERSION = 1


@dataclass(slots=True)
class Checkpoint:
    queues_offset: int
    index_offset: int
    queues: dict[tuple[str, int], int] = field(default_factory=dict)
    written_at_ms: int = 0


def write_checkpoint(disk: Disk, path: str, checkpoint: Checkpoint) -> None:
    payload = {
        "version": _VERSION,
        "queues_offset": checkpoint.queues_offset,
        "index_offset": checkpoint.index_offset,
        "queues": [
            [topic, queue_id, length] for (topic, queue_id), length in sorted(checkpoint.queues.items())
        ],
        "written_at_ms": checkpoint.written_at_ms,
    }
    write_framed_file(disk, path, json.dumps(payload, separators=(",", ":")).encode())


def read_checkpoint(disk: Disk, path: str) -> Checkpoint | None:
    """The checkpoint, or None when it is missing, damaged or of an unknown version."""
    payload = read_framed_file(disk, path)
    if payload is None:
        return None
    try:
        document = json.loads(payload)
        if document.get("version") != _VERSION:
            return None
        return Checkpoint(
            queues_offset=int(document["queues_offset"]),
            index_offset=int(document["index_offset"]),
            queues={
                (str(topic), int(queue_id)): int(length) for topic, queue_id, length in document["queues"]
            },
            written_at_ms=int(document["written_at_ms"]),
        )
    except (ValueError, KeyError, TypeError):
        return None
