"""Between the client's types and the protocol's: pure functions, no IO.

Kept apart from the clients so that the tricky parts (matching send results to the messages of a
batch, reading the broker's settings, checking body digests) are tested without sockets.
"""

from __future__ import annotations

import hashlib
import platform
import socket
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from google.protobuf import timestamp_pb2

from homing.client._config import Endpoints
from homing.client._errors import ClientError, ProtocolError, status_error
from homing.client._message import FilterExpression, MessageType, ReceivedMessage
from homing.client._retry import RetryPolicy, duration
from homing.protocol import definition_pb2, service_pb2

__all__ = [
    "CorruptedMessageError",
    "ServerSettings",
    "build_settings",
    "decode_message",
    "match_send_results",
    "parse_settings",
]

DEFAULT_MAX_BODY_BYTES: Final = 4 * 1024 * 1024
DEFAULT_RECEIVE_BATCH_SIZE: Final = 32
DEFAULT_LONG_POLLING_TIMEOUT_S: Final = 20.0
MAX_LONG_POLLING_TIMEOUT_S: Final = 60.0
MAX_RECEIVE_BATCH_SIZE: Final = 1024
MAX_GUNZIPPED_BODY_BYTES: Final = 64 * 1024 * 1024

PROTO_MESSAGE_TYPES: Final[Mapping[MessageType, definition_pb2.MessageType.ValueType]] = {
    MessageType.NORMAL: definition_pb2.NORMAL,
    MessageType.FIFO: definition_pb2.FIFO,
    MessageType.DELAY: definition_pb2.DELAY,
    MessageType.TRANSACTION: definition_pb2.TRANSACTION,
}
_MESSAGE_TYPES_FROM_PROTO: Final = {number: kind for kind, number in PROTO_MESSAGE_TYPES.items()}


def timestamp(ms: int) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromMilliseconds(ms)
    return value


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What the broker's settings reply told this client (defaults until it arrives)."""

    retry: RetryPolicy
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    validate_message_type: bool = False
    fifo: bool = False
    receive_batch_size: int = DEFAULT_RECEIVE_BATCH_SIZE
    long_polling_timeout_s: float = DEFAULT_LONG_POLLING_TIMEOUT_S


def parse_settings(settings: definition_pb2.Settings, current: ServerSettings) -> ServerSettings:
    """Merge a settings reply into ``current``; values absent or out of range keep the current ones."""
    retry = current.retry
    if settings.HasField("backoff_policy"):
        retry = RetryPolicy.from_proto(settings.backoff_policy, current.retry)
    max_body_bytes = current.max_body_bytes
    validate_message_type = current.validate_message_type
    fifo = current.fifo
    batch = current.receive_batch_size
    long_polling_s = current.long_polling_timeout_s
    if settings.HasField("publishing"):
        if settings.publishing.max_body_size > 0:
            max_body_bytes = settings.publishing.max_body_size
        validate_message_type = settings.publishing.validate_message_type
    if settings.HasField("subscription"):
        subscription = settings.subscription
        if subscription.HasField("fifo"):
            fifo = subscription.fifo
        if subscription.HasField("receive_batch_size") and subscription.receive_batch_size > 0:
            batch = min(subscription.receive_batch_size, MAX_RECEIVE_BATCH_SIZE)
        if subscription.HasField("long_polling_timeout"):
            seconds = (
                subscription.long_polling_timeout.seconds + subscription.long_polling_timeout.nanos / 1e9
            )
            if seconds > 0:
                long_polling_s = min(seconds, MAX_LONG_POLLING_TIMEOUT_S)
    return ServerSettings(retry, max_body_bytes, validate_message_type, fifo, batch, long_polling_s)


@dataclass(frozen=True, slots=True)
class SubscriptionRequest:
    group: str
    filters: Mapping[str, FilterExpression] = field(default_factory=dict)


def resource(name: str, namespace: str) -> definition_pb2.Resource:
    return definition_pb2.Resource(name=name, resource_namespace=namespace)


def filter_to_proto(expression: FilterExpression) -> definition_pb2.FilterExpression:
    return definition_pb2.FilterExpression(
        type=definition_pb2.SQL if expression.sql else definition_pb2.TAG, expression=expression.expression
    )


def user_agent(version: str) -> definition_pb2.UA:
    return definition_pb2.UA(
        language=definition_pb2.PYTHON,
        version=version,
        platform=(
            f"{platform.system()} {platform.release()} {platform.machine()}; "
            f"Python {platform.python_version()}"
        ),
        hostname=socket.gethostname(),
    )


def build_settings(
    *,
    client_type: definition_pb2.ClientType.ValueType,
    access_point: Endpoints,
    request_timeout_s: float,
    retry: RetryPolicy,
    namespace: str,
    version: str,
    publishing_topics: Sequence[str] | None = None,
    subscription: SubscriptionRequest | None = None,
) -> definition_pb2.Settings:
    """The client's settings, as written first on every Telemetry stream."""
    settings = definition_pb2.Settings(
        client_type=client_type,
        access_point=access_point.to_proto(),
        backoff_policy=retry.to_proto(),
        request_timeout=duration(request_timeout_s),
        user_agent=user_agent(version),
    )
    if publishing_topics is not None:
        settings.publishing.CopyFrom(
            definition_pb2.Publishing(topics=[resource(topic, namespace) for topic in publishing_topics])
        )
    if subscription is not None:
        settings.subscription.CopyFrom(
            definition_pb2.Subscription(
                group=resource(subscription.group, namespace),
                subscriptions=[
                    definition_pb2.SubscriptionEntry(
                        topic=resource(topic, namespace), expression=filter_to_proto(f)
                    )
                    for topic, f in subscription.filters.items()
                ],
            )
        )
    return settings


def match_send_results(
    message_ids: Sequence[str], response: service_pb2.SendMessageResponse
) -> list[service_pb2.SendResultEntry | ClientError]:
    """One outcome per message sent in one SendMessage call, in the order sent.

    Brokers answer a batch in two ways. Homing (and a proxy for a single message) returns one
    entry per message, in order, each with its own status. The Apache proxy stores a batch of
    several messages as one RocketMQ batch and returns a single entry whose ``message_id`` joins
    the ids with commas and whose offset is the first message's (the batch occupies consecutive
    offsets of one queue). Anything else cannot be matched and is a :class:`ProtocolError` for
    every message: its outcome is unknown.
    """
    count = len(message_ids)
    entries = list(response.entries)
    overall = response.status
    if not entries:
        if overall.code in (definition_pb2.OK, definition_pb2.MULTIPLE_RESULTS):
            error: ClientError = ProtocolError(
                f"SendMessage answered {overall.code} without any result entry"
            )
        else:
            error = status_error(overall)
        return [error] * count
    if len(entries) == count:
        by_id: dict[str, service_pb2.SendResultEntry] | None = None  # made only if the order differs
        ordered = []
        for entry, message_id in zip(entries, message_ids, strict=True):
            entry_id = entry.message_id
            if entry_id and entry_id != message_id:
                if by_id is None:
                    by_id = {other.message_id: other for other in entries if other.message_id}
                found = by_id.get(message_id)
                if found is None:
                    return [
                        ProtocolError(f"SendMessage answered for {entry.message_id!r}, not {message_id!r}")
                    ] * count
                entry = found
            ordered.append(entry)
        return [_entry_outcome(entry, overall) for entry in ordered]
    if len(entries) == 1 and count > 1:
        entry = entries[0]
        ids = entry.message_id.split(",") if entry.message_id else []
        outcome = _entry_outcome(entry, overall)
        if isinstance(outcome, ClientError):
            return [outcome] * count
        if ids and ids != list(message_ids):
            return [
                ProtocolError(f"SendMessage answered for ids {entry.message_id!r}, not the batch sent")
            ] * count
        results: list[service_pb2.SendResultEntry | ClientError] = []
        for index, message_id in enumerate(message_ids):
            results.append(
                service_pb2.SendResultEntry(
                    status=entry.status,
                    message_id=message_id,
                    transaction_id=entry.transaction_id,
                    offset=entry.offset + index,
                    recall_handle=entry.recall_handle,
                )
            )
        return results
    return [ProtocolError(f"SendMessage answered {len(entries)} results for {count} messages")] * count


def _entry_outcome(
    entry: service_pb2.SendResultEntry, overall: definition_pb2.Status
) -> service_pb2.SendResultEntry | ClientError:
    # An entry without a status takes the call's (some servers fill only the overall status).
    status = entry.status if entry.HasField("status") and entry.status.code else overall
    code = status.code
    if code == definition_pb2.OK:
        return entry
    if code == definition_pb2.MULTIPLE_RESULTS:
        return ProtocolError("a send result entry says MULTIPLE_RESULTS")
    return status_error(status)


class CorruptedMessageError(ClientError):
    """A received body does not match its digest, or cannot be decompressed."""


def _checksum_matches(kind: definition_pb2.DigestType.ValueType, expected: str, body: bytes) -> bool:
    text = expected.strip()
    if kind == definition_pb2.CRC32:
        crc = zlib.crc32(body)
        # Clients disagree on how to write a CRC32: hex of either case (padded or not) or decimal.
        try:
            return int(text, 16) == crc or (text.isdigit() and int(text) == crc)
        except ValueError:
            return False
    if kind == definition_pb2.MD5:
        return hashlib.md5(body).hexdigest() == text.lower()
    if kind == definition_pb2.SHA1:
        return hashlib.sha1(body).hexdigest() == text.lower()
    return True  # no digest, or one this client does not know: nothing to check against


def _ms(value: timestamp_pb2.Timestamp) -> int:
    return value.seconds * 1000 + value.nanos // 1_000_000


def decode_message(
    message: definition_pb2.Message,
    endpoint: Endpoints,
    transaction_id: str | None = None,
    *,
    strict: bool = True,
) -> ReceivedMessage:
    """A received protocol message as a :class:`ReceivedMessage`; raises CorruptedMessageError.

    ``strict=False`` never raises: the body is left as received (used to nack a corrupted message).
    """
    system = message.system_properties
    has = system.HasField
    body = message.body
    if not strict:
        pass
    elif has("body_digest") and not _checksum_matches(
        system.body_digest.type, system.body_digest.checksum, body
    ):
        raise CorruptedMessageError(
            f"message {system.message_id} of {message.topic.name}: body does not match its digest"
        )
    if strict and system.body_encoding == definition_pb2.GZIP:
        try:
            # wbits=31: a gzip stream; max_length bounds what a hostile body can expand to.
            body = zlib.decompressobj(wbits=31).decompress(body, MAX_GUNZIPPED_BODY_BYTES + 1)
        except zlib.error as error:
            raise CorruptedMessageError(
                f"message {system.message_id}: body is not valid gzip: {error}"
            ) from None
        if len(body) > MAX_GUNZIPPED_BODY_BYTES:
            raise CorruptedMessageError(f"message {system.message_id}: gzipped body expands beyond the limit")
    # Every received message comes through here: empty keys and properties skip the (slow)
    # generic conversions, and each field is read once.
    keys = system.keys
    user_properties = message.user_properties
    tag = system.tag if has("tag") else ""
    message_group = system.message_group if has("message_group") else ""
    trace_context = system.trace_context if has("trace_context") else ""
    return ReceivedMessage(
        topic=message.topic.name,
        body=body,
        message_id=system.message_id,
        tag=tag or None,
        keys=tuple(keys) if keys else (),
        properties=dict(user_properties) if user_properties else {},
        message_group=message_group or None,
        message_type=_MESSAGE_TYPES_FROM_PROTO.get(system.message_type, MessageType.NORMAL),
        delivery_attempt=system.delivery_attempt if has("delivery_attempt") else 1,
        born_host=system.born_host,
        born_timestamp_ms=_ms(system.born_timestamp) if has("born_timestamp") else None,
        store_timestamp_ms=_ms(system.store_timestamp) if has("store_timestamp") else None,
        deliver_timestamp_ms=_ms(system.delivery_timestamp) if has("delivery_timestamp") else None,
        queue_id=system.queue_id,
        queue_offset=system.queue_offset if has("queue_offset") else None,
        trace_context=trace_context or None,
        receipt_handle=system.receipt_handle if has("receipt_handle") else "",
        endpoint=str(endpoint),
        transaction_id=transaction_id,
    )
