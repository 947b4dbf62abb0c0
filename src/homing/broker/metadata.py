"""Topics and consumer groups: their configuration, validated, kept in one small durable file.

The file is rewritten whole (temp, fsync, rename, fsync directory) on every change; it is tiny
and changes rarely. It also holds the broker's secret for signing receipt handles, made once
from the injected random source.

Names follow RocketMQ's rules: topics ``[%|a-zA-Z0-9_-]``, at most 127 characters; groups the same
characters, at most 255. A ``%`` prefix is reserved for the broker (only ``%DLQ%<group>`` topics
are visible to users).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from homing.broker.errors import BrokerError
from homing.broker.model import MessageType
from homing.broker.system_topics import is_dlq_topic
from homing.store.atomic_file import read_framed_file, write_framed_file
from homing.store.disk import Disk

__all__ = ["GroupConfig", "Metadata", "TopicConfig", "validate_group_name", "validate_topic_name"]

_NAME = re.compile(r"^[%|a-zA-Z0-9_-]+$")
MAX_TOPIC_LENGTH = 127
MAX_GROUP_LENGTH = 255
DEFAULT_QUEUE_COUNT = 8
MAX_QUEUE_COUNT = 1024
ALL_TYPES = (MessageType.NORMAL, MessageType.FIFO, MessageType.DELAY, MessageType.TRANSACTION)
DEFAULT_BACKOFF_S = (10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600, 7200)


def validate_topic_name(name: str, *, allow_dlq: bool = True) -> None:
    if not name or len(name) > MAX_TOPIC_LENGTH or not _NAME.match(name):
        raise BrokerError(
            "ILLEGAL_TOPIC",
            f"invalid topic {name!r}: use 1-{MAX_TOPIC_LENGTH} characters from letters, digits, "
            "'_', '-', '|', '%'",
        )
    if name.startswith("%") and not (allow_dlq and is_dlq_topic(name)):
        raise BrokerError("ILLEGAL_TOPIC", f"invalid topic {name!r}: names starting with '%' are reserved")


def validate_group_name(name: str) -> None:
    if not name or len(name) > MAX_GROUP_LENGTH or not _NAME.match(name) or name.startswith("%"):
        raise BrokerError(
            "ILLEGAL_CONSUMER_GROUP",
            f"invalid consumer group {name!r}: use 1-{MAX_GROUP_LENGTH} characters from letters, digits, "
            "'_', '-', '|', not starting with '%'",
        )


@dataclass(frozen=True, slots=True)
class TopicConfig:
    name: str
    queue_count: int = DEFAULT_QUEUE_COUNT
    message_types: tuple[MessageType, ...] = ALL_TYPES
    created_ms: int = 0


@dataclass(frozen=True, slots=True)
class GroupConfig:
    name: str
    fifo: bool = False
    max_delivery_attempts: int = 17
    backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S
    # "earliest" (default: nothing sent before the first subscription is skipped), "latest",
    # or "timestamp" with consume_from_ms.
    consume_from: str = "earliest"
    consume_from_ms: int = 0
    created_ms: int = 0

    def backoff_for_attempt(self, attempt: int) -> float:
        """Seconds to wait before delivery ``attempt + 1`` after delivery ``attempt`` failed."""
        levels = self.backoff_s or DEFAULT_BACKOFF_S
        return float(levels[min(max(attempt, 1), len(levels)) - 1])


@dataclass(slots=True)
class _Document:
    topics: dict[str, TopicConfig] = field(default_factory=dict)
    groups: dict[str, GroupConfig] = field(default_factory=dict)
    secret_hex: str = ""


class Metadata:
    def __init__(
        self,
        disk: Disk,
        data_dir: str,
        *,
        now_ms: Callable[[], int],
        random_bytes: Callable[[int], bytes],
        auto_create: bool = True,
        default_group: GroupConfig | None = None,
    ) -> None:
        self._disk = disk
        self._path = os.path.join(data_dir, "metadata.json")
        self._now_ms = now_ms
        self._random_bytes = random_bytes
        self.auto_create = auto_create
        self._default_group = default_group or GroupConfig(name="")
        self._document = _Document()

    def open(self) -> None:
        payload = read_framed_file(self._disk, self._path)
        if payload is not None:
            self._document = _decode(payload)
        elif self._disk.exists(self._path):
            raise BrokerError(
                "INTERNAL_SERVER_ERROR", f"{self._path} is damaged; refusing to start without it"
            )
        if not self._document.secret_hex:
            self._document.secret_hex = self._random_bytes(32).hex()
            self._save()

    @property
    def secret(self) -> bytes:
        return bytes.fromhex(self._document.secret_hex)

    def _save(self) -> None:
        write_framed_file(self._disk, self._path, _encode(self._document))

    # -- topics

    def topics(self) -> list[TopicConfig]:
        return sorted(self._document.topics.values(), key=lambda topic: topic.name)

    def find_topic(self, name: str) -> TopicConfig | None:
        return self._document.topics.get(name)

    def topic(self, name: str, *, create: bool | None = None) -> TopicConfig:
        """The topic; created on first use when auto-create is on (or ``create`` says so)."""
        existing = self._document.topics.get(name)
        if existing is not None:
            return existing
        validate_topic_name(name)
        if not (self.auto_create if create is None else create):
            raise BrokerError("TOPIC_NOT_FOUND", f"topic {name!r} does not exist and auto-create is off")
        return self.put_topic(TopicConfig(name=name, created_ms=self._now_ms()))

    def put_topic(self, topic: TopicConfig) -> TopicConfig:
        validate_topic_name(topic.name)
        if not 1 <= topic.queue_count <= MAX_QUEUE_COUNT:
            raise BrokerError("BAD_REQUEST", f"queue count must be 1-{MAX_QUEUE_COUNT}")
        existing = self._document.topics.get(topic.name)
        if existing is not None and topic.queue_count < existing.queue_count:
            raise BrokerError(
                "BAD_REQUEST", "a topic's queue count cannot shrink (messages would be stranded)"
            )
        if not topic.created_ms:
            topic = replace(topic, created_ms=self._now_ms())
        self._document.topics[topic.name] = topic
        self._save()
        return topic

    # -- groups

    def groups(self) -> list[GroupConfig]:
        return sorted(self._document.groups.values(), key=lambda group: group.name)

    def find_group(self, name: str) -> GroupConfig | None:
        return self._document.groups.get(name)

    def group(self, name: str, *, create: bool | None = None) -> GroupConfig:
        existing = self._document.groups.get(name)
        if existing is not None:
            return existing
        validate_group_name(name)
        if not (self.auto_create if create is None else create):
            raise BrokerError(
                "CONSUMER_GROUP_NOT_FOUND", f"consumer group {name!r} does not exist and auto-create is off"
            )
        return self.put_group(replace(self._default_group, name=name, created_ms=self._now_ms()))

    def put_group(self, group: GroupConfig) -> GroupConfig:
        validate_group_name(group.name)
        if group.max_delivery_attempts < 1:
            raise BrokerError("BAD_REQUEST", "max delivery attempts must be at least 1")
        if group.consume_from not in ("earliest", "latest", "timestamp"):
            raise BrokerError("BAD_REQUEST", "consume_from must be earliest, latest or timestamp")
        if not group.created_ms:
            group = replace(group, created_ms=self._now_ms())
        self._document.groups[group.name] = group
        self._save()
        return group


def _encode(document: _Document) -> bytes:
    return json.dumps(
        {
            "version": 1,
            "secret": document.secret_hex,
            "topics": [
                {**asdict(topic), "message_types": [int(kind) for kind in topic.message_types]}
                for topic in document.topics.values()
            ],
            "groups": [
                {**asdict(group), "backoff_s": list(group.backoff_s)} for group in document.groups.values()
            ],
        },
        sort_keys=True,
    ).encode()


def _decode(payload: bytes) -> _Document:
    raw = json.loads(payload)
    document = _Document(secret_hex=str(raw.get("secret", "")))
    for topic in raw.get("topics", []):
        types = tuple(MessageType(kind) for kind in topic.pop("message_types"))
        config = TopicConfig(**topic, message_types=types)
        document.topics[config.name] = config
    for group in raw.get("groups", []):
        backoff = tuple(float(value) for value in group.pop("backoff_s"))
        config_group = GroupConfig(**group, backoff_s=backoff)
        document.groups[config_group.name] = config_group
    return document
