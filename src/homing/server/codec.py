"""Protocol messages to and from the broker's model, converting exactly.

Going in (SendMessage), a wire ``Message`` becomes a :class:`~homing.broker.model.Message`. A body
digest, when the client sent one, is checked against the body as sent (``MESSAGE_CORRUPTED`` when
it does not match); a gzip body is kept compressed and flagged. Going out (ReceiveMessage, and the
message of a transaction check-back), every system property a client may read is filled in; the
official clients are strict about some of them:

- ``body_digest`` is always there, MD5 in uppercase hex (the one form every client validates; the
  Node client throws on a message without a digest);
- ``body_encoding`` is IDENTITY or GZIP, never unspecified (the Python client raises on it);
- ``delivery_attempt`` counts from 1.

Timestamps are ``google.protobuf.Timestamp`` and durations ``Duration`` on the wire; the broker
keeps milliseconds and seconds. The conversions below are exact to the millisecond (floor for
timestamps, so that a time is never moved later than it was). Both clients put correct values on
the wire; the Python client's "seconds" quirks are in its own API, not in the protocol.
"""

from __future__ import annotations

import hashlib
import ipaddress
import zlib
from collections.abc import Iterable

from google.protobuf import duration_pb2, timestamp_pb2

from homing.broker.errors import BrokerError
from homing.broker.model import Delivery, Message, MessageType
from homing.config import Address
from homing.protocol import definition_pb2

__all__ = [
    "body_md5",
    "decode_message",
    "duration_s",
    "encode_delivery",
    "encode_message",
    "endpoints_of",
    "message_type_from_wire",
    "message_types_to_wire",
    "set_timestamp",
    "timestamp_ms",
    "to_duration",
    "to_timestamp",
    "verify_body_digest",
]

MAX_DURATION_S = 10 * 365 * 24 * 3600.0  # larger durations are nonsense, not a feature

_TO_WIRE: dict[MessageType, definition_pb2.MessageType.ValueType] = {
    MessageType.NORMAL: definition_pb2.NORMAL,
    MessageType.FIFO: definition_pb2.FIFO,
    MessageType.DELAY: definition_pb2.DELAY,
    MessageType.TRANSACTION: definition_pb2.TRANSACTION,
}
_FROM_WIRE = {wire: model for model, wire in _TO_WIRE.items()}


# ---------------------------------------------------------------------------------- time


def timestamp_ms(timestamp: timestamp_pb2.Timestamp) -> int:
    """Milliseconds since the epoch, rounded down (a sub-millisecond remainder is dropped)."""
    return timestamp.seconds * 1000 + timestamp.nanos // 1_000_000


def to_timestamp(milliseconds: int) -> timestamp_pb2.Timestamp:
    seconds, remainder = divmod(milliseconds, 1000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=remainder * 1_000_000)


def duration_s(duration: duration_pb2.Duration) -> float:
    """Seconds, as a float; raises ``BAD_REQUEST`` for negative or absurd values."""
    seconds = duration.seconds + duration.nanos / 1e9
    if not 0 <= seconds <= MAX_DURATION_S:
        raise BrokerError("BAD_REQUEST", f"duration of {seconds:g} s is out of range")
    return seconds


def to_duration(seconds: float) -> duration_pb2.Duration:
    nanos_total = max(round(seconds * 1e9), 0)
    whole, nanos = divmod(nanos_total, 1_000_000_000)
    return duration_pb2.Duration(seconds=whole, nanos=nanos)


# ---------------------------------------------------------------------------------- types, routes


def message_type_from_wire(kind: definition_pb2.MessageType.ValueType) -> MessageType:
    model = _FROM_WIRE.get(kind)
    if model is None:
        name = definition_pb2.MessageType.Name(kind) if kind in definition_pb2.MessageType.values() else kind
        raise BrokerError("UNSUPPORTED", f"message type {name} is not supported by this broker")
    return model


def message_types_to_wire(kinds: Iterable[MessageType]) -> list[definition_pb2.MessageType.ValueType]:
    return [_TO_WIRE[kind] for kind in kinds]


def endpoints_of(address: Address) -> definition_pb2.Endpoints:
    """The ``Endpoints`` clients are sent to: IPv4, IPv6 or a domain name, as the host is."""
    try:
        version = ipaddress.ip_address(address.host).version
        scheme = definition_pb2.IPv4 if version == 4 else definition_pb2.IPv6
    except ValueError:
        scheme = definition_pb2.DOMAIN_NAME
    return definition_pb2.Endpoints(
        scheme=scheme, addresses=[definition_pb2.Address(host=address.host, port=address.port)]
    )


# ---------------------------------------------------------------------------------- digests


def body_md5(body: bytes) -> str:
    return hashlib.md5(body, usedforsecurity=False).hexdigest().upper()


def _crc32_matches(body: bytes, checksum: str) -> bool:
    # The clients disagree on the text: decimal (Node, Java) or 8 hex digits (Python).
    value = zlib.crc32(body) & 0xFFFFFFFF
    text = checksum.strip()
    if text.isdigit() and int(text) == value:
        return True
    return text.lower() == f"{value:08x}"


def verify_body_digest(body: bytes, digest: definition_pb2.Digest) -> None:
    """Raise ``MESSAGE_CORRUPTED`` if ``digest`` (CRC32, MD5 or SHA1 of the body as sent) does not match."""
    kind = digest.type
    checksum = digest.checksum.strip()
    if kind == definition_pb2.DIGEST_TYPE_UNSPECIFIED:
        return
    if kind == definition_pb2.CRC32:
        matches = _crc32_matches(body, checksum)
    elif kind == definition_pb2.MD5:
        matches = hashlib.md5(body, usedforsecurity=False).hexdigest() == checksum.lower()
    elif kind == definition_pb2.SHA1:
        matches = hashlib.sha1(body, usedforsecurity=False).hexdigest() == checksum.lower()
    else:
        raise BrokerError("MESSAGE_CORRUPTED", f"unknown body digest type {int(kind)}")
    if not matches:
        name = definition_pb2.DigestType.Name(kind)
        raise BrokerError("MESSAGE_CORRUPTED", f"body {name} digest does not match the body sent")


# ---------------------------------------------------------------------------------- in


def decode_message(wire: definition_pb2.Message, topic: str) -> Message:
    """The broker message for a SendMessage entry, stored under ``topic`` (namespace applied).

    Raises :class:`BrokerError` for what the wire form itself gets wrong (a bad digest, an
    unsupported type); the broker validates everything else.
    """
    properties = wire.system_properties
    if properties.HasField("body_digest"):
        verify_body_digest(wire.body, properties.body_digest)
    message_group = properties.message_group if properties.HasField("message_group") else ""
    delivery_ms = (
        timestamp_ms(properties.delivery_timestamp) if properties.HasField("delivery_timestamp") else None
    )
    kind = properties.message_type
    if kind == definition_pb2.MESSAGE_TYPE_UNSPECIFIED:
        # Not from an official client (they always say); infer it as RocketMQ 4 did.
        if message_group:
            kind = definition_pb2.FIFO
        elif delivery_ms is not None:
            kind = definition_pb2.DELAY
        else:
            kind = definition_pb2.NORMAL
    tag = properties.tag if properties.HasField("tag") and properties.tag != "" else None
    born_ms = timestamp_ms(properties.born_timestamp) if properties.HasField("born_timestamp") else 0
    trace = properties.trace_context if properties.HasField("trace_context") else ""
    keys = properties.keys
    user_properties = wire.user_properties
    return Message(
        topic=topic,
        body=wire.body,
        message_id=properties.message_id,
        message_type=message_type_from_wire(kind),
        tag=tag,
        keys=tuple(keys) if keys else (),  # the empty cases skip the slow generic conversions
        properties=dict(user_properties) if user_properties else {},
        message_group=message_group or None,
        delivery_timestamp_ms=delivery_ms,
        born_timestamp_ms=born_ms,
        born_host=properties.born_host,
        trace_context=trace or None,
        body_is_gzip=properties.body_encoding == definition_pb2.GZIP,
    )


# ---------------------------------------------------------------------------------- out


def _fill_message(
    wire: definition_pb2.Message, message: Message, topic: definition_pb2.Resource, store_host: str
) -> definition_pb2.SystemProperties:
    """Fill an empty ``wire`` in place: no intermediate sub-messages to build and copy."""
    wire.topic.CopyFrom(topic)
    if message.properties:
        wire.user_properties.update(message.properties)
    wire.body = message.body
    system = wire.system_properties
    if message.keys:
        system.keys.extend(message.keys)
    system.message_id = message.message_id
    digest = system.body_digest
    digest.type = definition_pb2.MD5
    digest.checksum = body_md5(message.body)
    system.body_encoding = definition_pb2.GZIP if message.body_is_gzip else definition_pb2.IDENTITY
    system.message_type = _TO_WIRE[message.message_type]
    system.born_host = message.born_host
    system.store_host = store_host
    system.queue_id = max(message.queue_id, 0)
    if message.tag is not None:
        system.tag = message.tag
    if message.born_timestamp_ms > 0:
        set_timestamp(system.born_timestamp, message.born_timestamp_ms)
    if message.store_timestamp_ms > 0:
        set_timestamp(system.store_timestamp, message.store_timestamp_ms)
    if message.delivery_timestamp_ms is not None:
        set_timestamp(system.delivery_timestamp, message.delivery_timestamp_ms)
    if message.queue_offset >= 0:
        system.queue_offset = message.queue_offset
    if message.message_group is not None:
        system.message_group = message.message_group
    if message.trace_context is not None:
        system.trace_context = message.trace_context
    return system


def set_timestamp(field: timestamp_pb2.Timestamp, milliseconds: int) -> None:
    """``field.CopyFrom(to_timestamp(milliseconds))`` without the intermediate message."""
    seconds, remainder = divmod(milliseconds, 1000)
    field.SetInParent()
    field.seconds = seconds
    field.nanos = remainder * 1_000_000


def encode_message(
    message: Message, *, topic: definition_pb2.Resource, store_host: str
) -> definition_pb2.Message:
    """The wire form of a stored message (no delivery fields), e.g. for a transaction check-back."""
    wire = definition_pb2.Message()
    _fill_message(wire, message, topic, store_host)
    return wire


def encode_delivery(
    delivery: Delivery,
    *,
    topic: definition_pb2.Resource,
    store_host: str,
    now_ms: int,
    into: definition_pb2.Message | None = None,
) -> definition_pb2.Message:
    """The wire form of one delivery: the message plus its receipt handle, attempt and invisibility.

    ``into``: an empty message to fill in place (e.g. a response's ``message`` field) instead of a
    new one.
    """
    wire = definition_pb2.Message() if into is None else into
    system = _fill_message(wire, delivery.message, topic, store_host)
    system.receipt_handle = delivery.receipt_handle
    system.delivery_attempt = delivery.delivery_attempt
    nanos_total = max(round(max(delivery.invisible_until_ms - now_ms, 0) / 1000 * 1e9), 0)
    whole, nanos = divmod(nanos_total, 1_000_000_000)
    duration = system.invisible_duration
    duration.SetInParent()
    duration.seconds = whole
    duration.nanos = nanos
    return wire
