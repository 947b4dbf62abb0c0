"""All consume queues of the store, found by (topic, queue id).

Directory layout: ``consumequeue/<topic, percent-encoded>/<queue id>/<20-digit first entry>``.
Topics may hold characters a file name cannot (RocketMQ's own ``%RETRY%`` / ``%DLQ%`` prefixes use
``%``), so the directory name is the percent-encoding of the UTF-8 topic.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import quote, unquote

from homing.store.consume_queue import ConsumeQueue
from homing.store.disk import Disk

__all__ = ["QueueKey", "QueueTable"]

QueueKey = tuple[str, int]


def _topic_directory(topic: str) -> str:
    return quote(topic, safe="-_")


class QueueTable:
    def __init__(self, disk: Disk, directory: str, entries_per_file: int) -> None:
        self._disk = disk
        self.directory = directory
        self.entries_per_file = entries_per_file
        self._queues: dict[QueueKey, ConsumeQueue] = {}

    def open(self) -> None:
        self._disk.make_dirs(self.directory)
        for topic_name in self._disk.list_dir(self.directory):
            topic = unquote(topic_name)
            for queue_name in self._disk.list_dir(os.path.join(self.directory, topic_name)):
                if queue_name.isdigit():
                    self.get((topic, int(queue_name)))

    def close(self) -> None:
        for queue in self._queues.values():
            queue.close()
        self._queues.clear()

    def get(self, key: QueueKey) -> ConsumeQueue:
        queue = self._queues.get(key)
        if queue is None:
            topic, queue_id = key
            path = os.path.join(self.directory, _topic_directory(topic), str(queue_id))
            queue = ConsumeQueue(self._disk, path, self.entries_per_file)
            queue.open()
            self._queues[key] = queue
        return queue

    def find(self, key: QueueKey) -> ConsumeQueue | None:
        return self._queues.get(key)

    def __iter__(self) -> Iterator[tuple[QueueKey, ConsumeQueue]]:
        return iter(list(self._queues.items()))

    def __len__(self) -> int:
        return len(self._queues)
