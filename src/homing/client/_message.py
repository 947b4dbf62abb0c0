"""What the application hands over and gets back: messages, receipts, filters.

A :class:`Message` is checked when it is made, so most bad input (a bad topic name, a reserved
property, a blank tag, a delay together with a message group) fails at the line that wrote it and
never reaches the network. What depends on the broker (the body limit from its settings) or on the
moment of sending (a delivery time in the past) is checked by the producer before it sends.

The rules are the strictest of the servers this client talks to, so a message that passes here is
not refused by either: names as RocketMQ has them, property names RocketMQ keeps for itself
(``MessageConst.STRING_HASH_SET``, which the Apache proxy refuses) plus Homing's ``__homing.``
prefix, and Homing's limits on tags, keys and property sizes.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Final

from homing.client._errors import InvalidArgumentError

__all__ = [
    "RESERVED_PROPERTY_NAMES",
    "FilterExpression",
    "Message",
    "MessageType",
    "ReceivedMessage",
    "SendReceipt",
    "TransactionResolution",
    "validate_group",
    "validate_topic",
]

MAX_TOPIC_LENGTH: Final = 127
MAX_GROUP_LENGTH: Final = 255
MAX_TAG_LENGTH: Final = 1024
MAX_KEYS: Final = 64
MAX_KEY_LENGTH: Final = 1024
MAX_MESSAGE_GROUP_LENGTH: Final = 1024
MAX_PROPERTIES_BYTES: Final = 16 * 1024
MAX_MESSAGE_ID_LENGTH: Final = 128
_MESSAGE_ID: Final = re.compile(r"[A-Za-z0-9_.:@#=+/-]+")
_NAME: Final = re.compile(r"[%A-Za-z0-9_-]+")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")

RESERVED_PROPERTY_NAMES: Final = frozenset(
    {
        # RocketMQ's MessageConst.STRING_HASH_SET: the Apache proxy refuses these as user properties.
        "TRACE_ON", "MSG_REGION", "KEYS", "TAGS", "WAIT", "DELAY", "RETRY_TOPIC", "REAL_TOPIC",
        "REAL_QID", "TRAN_MSG", "PGROUP", "MIN_OFFSET", "MAX_OFFSET", "BUYER_ID", "ORIGIN_MESSAGE_ID",
        "TRANSFER_FLAG", "CORRECTION_FLAG", "MQ2_FLAG", "RECONSUME_TIME", "UNIQ_KEY",
        "MAX_RECONSUME_TIMES", "CONSUME_START_TIME", "POP_CK", "POP_CK_OFFSET", "1ST_POP_TIME",
        "TRAN_PREPARED_QUEUE_OFFSET", "DUP_INFO", "EXTEND_UNIQ_INFO", "INSTANCE_ID", "CORRELATION_ID",
        "REPLY_TO_CLIENT", "TTL", "ARRIVE_TIME", "PUSH_REPLY_TIME", "CLUSTER", "MSG_TYPE",
        "INNER_MULTI_QUEUE_OFFSET", "TIMER_DELAY_SEC", "TIMER_DELIVER_MS", "TIMER_ENQUEUE_MS",
        "TIMER_DEQUEUE_MS", "TIMER_ROLL_TIMES", "TIMER_OUT_MS", "TIMER_DEL_UNIQKEY", "TIMER_DELAY_LEVEL",
        "__BORNHOST", "BORN_TIMESTAMP",
        # Set by the proxy itself from the message's system properties; a user value would clash.
        "__SHARDINGKEY", "TRACE_CONTEXT", "__transactionId__", "CHECK_IMMUNITY_TIME_IN_SECONDS",
        "TRANSACTION_CHECK_TIMES",
    }
)  # fmt: skip
"""Property names a message may not carry (besides the prefixes ``__homing.`` and ``__RMQ.``)."""
RESERVED_PROPERTY_PREFIXES: Final = ("__homing.", "__RMQ.")


class MessageType(enum.Enum):
    """How the broker treats a message; the producer derives it from the message's fields."""

    NORMAL = "normal"
    FIFO = "fifo"
    DELAY = "delay"
    TRANSACTION = "transaction"


class TransactionResolution(enum.Enum):
    """A checker's answer about a transaction. UNKNOWN sends nothing: the broker asks again later."""

    COMMIT = "commit"
    ROLLBACK = "rollback"
    UNKNOWN = "unknown"


def _check_name(kind: str, name: object, max_length: int) -> str:
    if not isinstance(name, str):
        raise InvalidArgumentError(f"{kind} must be a string, not {type(name).__name__}")
    if not name or len(name) > max_length or not _NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"invalid {kind} {name[:80]!r}: use 1-{max_length} characters from letters, digits, '_', '-', '%'"
        )
    return name


def validate_topic(topic: object, *, sending: bool) -> str:
    """A topic name as RocketMQ allows it. Names starting with '%' are system topics: not sendable."""
    name = _check_name("topic", topic, MAX_TOPIC_LENGTH)
    if sending and name.startswith("%"):
        raise InvalidArgumentError(f"invalid topic {name!r}: names starting with '%' are the broker's")
    return name


def validate_group(group: object) -> str:
    name = _check_name("consumer group", group, MAX_GROUP_LENGTH)
    if name.startswith("%"):
        raise InvalidArgumentError(f"invalid consumer group {name!r}: names starting with '%' are reserved")
    return name


def _check_text(kind: str, value: object, max_length: int) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{kind} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise InvalidArgumentError(f"{kind} must not be blank")
    if len(value) > max_length:
        raise InvalidArgumentError(f"{kind} is {len(value)} characters; at most {max_length}")
    if _CONTROL.search(value):
        raise InvalidArgumentError(f"{kind} {value[:80]!r} holds a control character")
    return value


def _seconds(value: timedelta | float, what: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        raise InvalidArgumentError(f"{what} must be a timedelta or a number of seconds")
    return float(seconds)


def _epoch_ms(value: datetime | float, what: str) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidArgumentError(f"{what} needs a time zone (e.g. datetime.now(UTC) + ...)")
        return round(value.timestamp() * 1000)
    return round(_seconds(value, what) * 1000)


class Message:
    """A message to send. Immutable; checked on construction.

    ``body`` is bytes (text is encoded as UTF-8). ``keys`` are business keys the broker indexes
    (one string is one key). A ``message_group`` makes a FIFO message: messages of one group are
    delivered in order. ``deliver_at`` (an aware datetime or epoch seconds) or ``delay`` (a
    timedelta or seconds, counted from the send) makes a delay message. A message cannot be both.

    ``message_id`` is normally left out: the producer makes a RocketMQ id when the message is
    sent. Give one only when the id was fixed earlier (an outbox row), so that sending the same
    row again is recognisable downstream as the same message.
    """

    __slots__ = (
        "_body",
        "_delay_s",
        "_deliver_at_ms",
        "_keys",
        "_message_group",
        "_message_id",
        "_properties",
        "_tag",
        "_topic",
    )

    def __init__(
        self,
        topic: str,
        body: bytes | str,
        *,
        tag: str | None = None,
        keys: Iterable[str] | str = (),
        properties: Mapping[str, str] | None = None,
        message_group: str | None = None,
        deliver_at: datetime | float | None = None,
        delay: timedelta | float | None = None,
        message_id: str | None = None,
    ) -> None:
        self._topic = validate_topic(topic, sending=True)
        self._message_id = None if message_id is None else _check_message_id(message_id)
        if isinstance(body, str):
            body = body.encode()
        if not isinstance(body, bytes | bytearray | memoryview):
            raise InvalidArgumentError(f"body must be bytes or str, not {type(body).__name__}")
        self._body = bytes(body)
        if not self._body:
            raise InvalidArgumentError("body must not be empty")
        self._tag = None if tag is None else _check_text("tag", tag, MAX_TAG_LENGTH)
        if self._tag is not None and "|" in self._tag:
            raise InvalidArgumentError(f"tag {tag!r} must not contain '|' (it separates tags in filters)")
        key_list = [keys] if isinstance(keys, str) else list(keys)
        if len(key_list) > MAX_KEYS:
            raise InvalidArgumentError(f"{len(key_list)} keys; at most {MAX_KEYS}")
        self._keys = tuple(_check_text("key", key, MAX_KEY_LENGTH) for key in key_list)
        self._properties = MappingProxyType(_checked_properties(properties or {}))
        self._message_group = (
            None
            if message_group is None
            else _check_text("message_group", message_group, MAX_MESSAGE_GROUP_LENGTH)
        )
        if deliver_at is not None and delay is not None:
            raise InvalidArgumentError("give deliver_at or delay, not both")
        self._deliver_at_ms = None if deliver_at is None else _epoch_ms(deliver_at, "deliver_at")
        self._delay_s = None if delay is None else _seconds(delay, "delay")
        if self._delay_s is not None and self._delay_s <= 0:
            raise InvalidArgumentError(f"delay must be positive, not {self._delay_s:g} s")
        if self._message_group is not None and (deliver_at is not None or delay is not None):
            raise InvalidArgumentError(
                "a message cannot have both a message_group (FIFO) and a delivery time (delay)"
            )

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def message_id(self) -> str | None:
        """The id given at construction; None means the producer makes one when sending."""
        return self._message_id

    @property
    def body(self) -> bytes:
        return self._body

    @property
    def tag(self) -> str | None:
        return self._tag

    @property
    def keys(self) -> tuple[str, ...]:
        return self._keys

    @property
    def properties(self) -> Mapping[str, str]:
        return self._properties

    @property
    def message_group(self) -> str | None:
        return self._message_group

    @property
    def deliver_at_ms(self) -> int | None:
        """The delivery time given as ``deliver_at``, in epoch milliseconds (None for ``delay``)."""
        return self._deliver_at_ms

    @property
    def delay_s(self) -> float | None:
        """The delay given as ``delay``, in seconds; the producer adds it to the time of sending."""
        return self._delay_s

    @property
    def message_type(self) -> MessageType:
        """FIFO with a message group, DELAY with a delivery time, else NORMAL (transactions: ``tx.send``)."""
        if self._message_group is not None:
            return MessageType.FIFO
        if self._deliver_at_ms is not None or self._delay_s is not None:
            return MessageType.DELAY
        return MessageType.NORMAL

    def __repr__(self) -> str:
        parts = [f"topic={self._topic!r}", f"body=<{len(self._body)} bytes>"]
        for name in ("message_id", "tag", "keys", "message_group", "deliver_at_ms", "delay_s"):
            value = getattr(self, name)
            if value not in (None, ()):
                parts.append(f"{name}={value!r}")
        if self._properties:
            parts.append(f"properties={dict(self._properties)!r}")
        return f"Message({', '.join(parts)})"


def _check_message_id(message_id: object) -> str:
    if not isinstance(message_id, str):
        raise InvalidArgumentError(f"message_id must be a string, not {type(message_id).__name__}")
    if not 0 < len(message_id) <= MAX_MESSAGE_ID_LENGTH or not _MESSAGE_ID.fullmatch(message_id):
        raise InvalidArgumentError(
            f"message_id {message_id[:80]!r}: use 1-{MAX_MESSAGE_ID_LENGTH} letters, digits or '_.:@#=+/-'"
        )
    return message_id


def _checked_properties(properties: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(properties, Mapping):
        raise InvalidArgumentError("properties must be a mapping of str to str")
    checked: dict[str, str] = {}
    size = 0
    for name, value in properties.items():
        _check_text("property name", name, MAX_PROPERTIES_BYTES)
        if name in RESERVED_PROPERTY_NAMES or name.startswith(RESERVED_PROPERTY_PREFIXES):
            raise InvalidArgumentError(f"property name {name!r} is reserved by RocketMQ or Homing")
        _check_text(f"property {name!r}", value, MAX_PROPERTIES_BYTES)
        size += len(name.encode()) + len(value.encode())
        checked[name] = value
    if size > MAX_PROPERTIES_BYTES:
        raise InvalidArgumentError(f"properties are {size} bytes; at most {MAX_PROPERTIES_BYTES}")
    return checked


@dataclass(frozen=True, slots=True)
class SendReceipt:
    """The broker said OK: the message is stored (durably, on Homing) under ``message_id``.

    ``offset`` is its position in the queue the broker chose (the protocol does not say which queue).
    ``transaction_id`` is set for transactional messages, ``recall_handle`` for delay messages on
    brokers that can recall them. ``endpoint`` is the broker that accepted it.
    """

    message_id: str
    topic: str
    offset: int
    endpoint: str
    transaction_id: str | None = None
    recall_handle: str | None = None


@dataclass(frozen=True, slots=True)
class FilterExpression:
    """Which messages of a topic a consumer wants: a TAG expression (``"*"``, ``"a || b"``) or SQL92."""

    expression: str = "*"
    sql: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.expression, str) or not self.expression.strip():
            raise InvalidArgumentError("a filter expression must not be blank (use '*' for every message)")

    @classmethod
    def tag(cls, expression: str = "*") -> FilterExpression:
        return cls(expression, sql=False)

    @classmethod
    def sql92(cls, expression: str) -> FilterExpression:
        return cls(expression, sql=True)


def _datetime_from_ms(value_ms: int | None) -> datetime | None:
    return None if value_ms is None else datetime.fromtimestamp(value_ms / 1000, UTC)


@dataclass(slots=True, eq=False)
class ReceivedMessage:
    """A message as delivered to a consumer.

    ``delivery_attempt`` is 1 on the first delivery. ``receipt_handle`` names this delivery for
    ack and change of invisibility; it changes when the invisibility is changed. Timestamps are
    aware UTC datetimes (None when the broker did not say).
    """

    topic: str
    body: bytes
    message_id: str
    tag: str | None
    keys: tuple[str, ...]
    properties: Mapping[str, str]
    message_group: str | None
    message_type: MessageType
    delivery_attempt: int
    born_host: str
    born_timestamp_ms: int | None
    store_timestamp_ms: int | None
    deliver_timestamp_ms: int | None
    queue_id: int
    queue_offset: int | None
    trace_context: str | None
    receipt_handle: str
    endpoint: str = field(repr=False)
    transaction_id: str | None = None

    @property
    def born_at(self) -> datetime | None:
        return _datetime_from_ms(self.born_timestamp_ms)

    @property
    def stored_at(self) -> datetime | None:
        return _datetime_from_ms(self.store_timestamp_ms)

    @property
    def deliver_at(self) -> datetime | None:
        return _datetime_from_ms(self.deliver_timestamp_ms)
