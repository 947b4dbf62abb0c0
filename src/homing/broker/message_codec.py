"""How a broker :class:`Message` is kept in a store record, and back.

Native record fields hold the topic, queue, body, message id, tag, keys and born time; the
message type sits in the low 8 bits of the record flags. Everything else the broker must remember
travels as a *system property*, a record property whose name starts with :data:`SYSTEM_PREFIX`.
Users may not set names with that prefix (checked on send), so the two never collide.

System properties (all values text):

- ``__homing.group``        FIFO message group
- ``__homing.deliver_at``   delivery timestamp, ms (delayed messages)
- ``__homing.born_host``    producer host
- ``__homing.trace``        W3C traceparent
- ``__homing.gzip``         "1" if the body is gzip-compressed as sent
- ``__homing.topic``        the real topic of a message parked in a system topic (delay, half, DLQ)
- ``__homing.queue``        the real queue id of such a message, when it has one
- further names defined by the modules that use them (DLQ history, transaction state, timers)
"""

from __future__ import annotations

from collections.abc import Mapping

from homing.broker.model import Message, MessageType
from homing.store.record import NewRecord, StoredRecord

__all__ = [
    "BORN_HOST",
    "DELIVER_AT",
    "GROUP",
    "GZIP",
    "REAL_QUEUE",
    "REAL_TOPIC",
    "SYSTEM_PREFIX",
    "TRACE",
    "from_record",
    "is_system_property",
    "system_properties",
    "to_record",
]

SYSTEM_PREFIX = "__homing."
GROUP = SYSTEM_PREFIX + "group"
DELIVER_AT = SYSTEM_PREFIX + "deliver_at"
BORN_HOST = SYSTEM_PREFIX + "born_host"
TRACE = SYSTEM_PREFIX + "trace"
GZIP = SYSTEM_PREFIX + "gzip"
REAL_TOPIC = SYSTEM_PREFIX + "topic"
REAL_QUEUE = SYSTEM_PREFIX + "queue"

_TYPE_MASK = 0xFF
_TYPES = {int(kind): kind for kind in MessageType}


def is_system_property(name: str) -> bool:
    return name.startswith(SYSTEM_PREFIX)


def to_record(
    message: Message,
    *,
    topic: str | None = None,
    queue_id: int,
    extra_system_properties: Mapping[str, str] | None = None,
) -> NewRecord:
    """The record for ``message`` stored under ``topic`` (default: its own) and ``queue_id``."""
    properties = dict(message.properties)
    if message.message_group is not None:
        properties[GROUP] = message.message_group
    if message.delivery_timestamp_ms is not None:
        properties[DELIVER_AT] = str(message.delivery_timestamp_ms)
    if message.born_host:
        properties[BORN_HOST] = message.born_host
    if message.trace_context:
        properties[TRACE] = message.trace_context
    if message.body_is_gzip:
        properties[GZIP] = "1"
    if extra_system_properties:
        properties.update(extra_system_properties)
    return NewRecord(
        topic=topic if topic is not None else message.topic,
        queue_id=queue_id,
        body=message.body,
        message_id=message.message_id,
        tag=message.tag,
        keys=message.keys,
        properties=properties,
        flags=int(message.message_type),
        born_timestamp_ms=message.born_timestamp_ms,
    )


def system_properties(record: StoredRecord) -> dict[str, str]:
    return {name: value for name, value in record.properties.items() if is_system_property(name)}


def from_record(record: StoredRecord) -> Message:
    """The message a record holds; a message parked in a system topic gets its real topic back."""
    properties = record.properties
    # Every delivery comes through here: the prefix test inline, the type by a dict lookup.
    prefix = SYSTEM_PREFIX
    user = {name: value for name, value in properties.items() if not name.startswith(prefix)}
    deliver_at = properties.get(DELIVER_AT)
    message_type = _TYPES.get(record.flags & _TYPE_MASK, MessageType.NORMAL)
    real_queue = properties.get(REAL_QUEUE)
    return Message(
        topic=properties.get(REAL_TOPIC, record.topic),
        body=record.body,
        message_id=record.message_id,
        message_type=message_type,
        tag=record.tag,
        keys=record.keys,
        properties=user,
        message_group=properties.get(GROUP),
        delivery_timestamp_ms=int(deliver_at) if deliver_at is not None else None,
        born_timestamp_ms=record.born_timestamp_ms,
        born_host=properties.get(BORN_HOST, ""),
        trace_context=properties.get(TRACE),
        queue_id=int(real_queue) if real_queue is not None else record.queue_id,
        queue_offset=record.queue_offset,
        store_timestamp_ms=record.store_timestamp_ms,
        body_is_gzip=properties.get(GZIP) == "1",
    )
