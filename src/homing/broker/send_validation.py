"""Checks on every message before anything is stored: a clear status, never a partial write.

Limits are explicit and follow RocketMQ's where it has them (tag, key and property rules,
property size), and the broker's settings otherwise (body size, maximum delay).
"""

from __future__ import annotations

from homing.broker.errors import BrokerError
from homing.broker.message_codec import SYSTEM_PREFIX
from homing.broker.metadata import TopicConfig
from homing.broker.model import Message, MessageType

__all__ = ["MessageLimits", "validate_message"]

MAX_MESSAGE_ID_LENGTH = 128
MAX_TAG_LENGTH = 1024
MAX_KEYS = 64
MAX_KEY_LENGTH = 1024
MAX_GROUP_LENGTH = 1024
MAX_PROPERTIES_BYTES = 16 * 1024
_FORBIDDEN_TEXT = ("\x1e", "\x1f")  # separators of the record format
_SEPARATOR_1, _SEPARATOR_2 = _FORBIDDEN_TEXT


class MessageLimits:
    def __init__(self, max_body_bytes: int, max_delay_ms: int) -> None:
        self.max_body_bytes = max_body_bytes
        self.max_delay_ms = max_delay_ms


def _bad_text(value: str) -> bool:
    return _SEPARATOR_1 in value or _SEPARATOR_2 in value  # every message goes through: no generator


def validate_message(message: Message, topic: TopicConfig, limits: MessageLimits, now_ms: int) -> None:
    """Raise :class:`BrokerError` with the protocol status that names what is wrong."""
    if (
        not message.message_id
        or len(message.message_id) > MAX_MESSAGE_ID_LENGTH
        or _bad_text(message.message_id)
    ):
        raise BrokerError("ILLEGAL_MESSAGE_ID", f"message id must be 1-{MAX_MESSAGE_ID_LENGTH} characters")
    if not message.body:
        raise BrokerError("MESSAGE_BODY_EMPTY", "message body is empty")
    if len(message.body) > limits.max_body_bytes:
        raise BrokerError(
            "MESSAGE_BODY_TOO_LARGE",
            f"message body is {len(message.body)} bytes; the limit is {limits.max_body_bytes}",
        )
    if message.tag is not None:
        if not message.tag.strip() or "|" in message.tag or len(message.tag) > MAX_TAG_LENGTH:
            raise BrokerError(
                "ILLEGAL_MESSAGE_TAG",
                f"tag {message.tag!r} must be non-blank, without '|', at most {MAX_TAG_LENGTH}",
            )
        if _bad_text(message.tag):
            raise BrokerError("ILLEGAL_MESSAGE_TAG", "tag holds a reserved control character")
    if len(message.keys) > MAX_KEYS:
        raise BrokerError("ILLEGAL_MESSAGE_KEY", f"at most {MAX_KEYS} keys per message")
    for key in message.keys:
        if not key.strip() or len(key) > MAX_KEY_LENGTH or _bad_text(key):
            raise BrokerError(
                "ILLEGAL_MESSAGE_KEY", f"key {key[:64]!r} must be non-blank text of at most {MAX_KEY_LENGTH}"
            )
    size = 0
    for name, value in message.properties.items():
        if not name or name.startswith(SYSTEM_PREFIX) or _bad_text(name) or _bad_text(value):
            raise BrokerError(
                "ILLEGAL_MESSAGE_PROPERTY_KEY",
                f"property name {name[:64]!r} is empty, reserved (prefix {SYSTEM_PREFIX!r}) "
                "or holds a control character",
            )
        size += len(name.encode()) + len(value.encode())
    if size > MAX_PROPERTIES_BYTES:
        raise BrokerError(
            "MESSAGE_PROPERTIES_TOO_LARGE", f"properties are {size} bytes; at most {MAX_PROPERTIES_BYTES}"
        )
    kind = message.message_type
    if kind not in topic.message_types:
        accepted = ", ".join(item.name for item in topic.message_types)
        raise BrokerError(
            "MESSAGE_PROPERTY_CONFLICT_WITH_TYPE",
            f"topic {topic.name!r} accepts {accepted} messages, not {kind.name}",
        )
    if kind == MessageType.FIFO:
        if (
            not message.message_group
            or len(message.message_group) > MAX_GROUP_LENGTH
            or _bad_text(message.message_group)
        ):
            raise BrokerError(
                "ILLEGAL_MESSAGE_GROUP",
                f"a FIFO message needs a message group of 1-{MAX_GROUP_LENGTH} characters",
            )
    elif message.message_group is not None:
        raise BrokerError(
            "MESSAGE_PROPERTY_CONFLICT_WITH_TYPE", f"a {kind.name} message cannot have a message group"
        )
    if kind == MessageType.DELAY:
        if message.delivery_timestamp_ms is None:
            raise BrokerError("ILLEGAL_DELIVERY_TIME", "a DELAY message needs a delivery timestamp")
        if message.delivery_timestamp_ms - now_ms > limits.max_delay_ms:
            raise BrokerError(
                "ILLEGAL_DELIVERY_TIME",
                f"delivery time is more than the maximum delay ({limits.max_delay_ms // 1000} s) ahead",
            )
    elif message.delivery_timestamp_ms is not None:
        raise BrokerError(
            "MESSAGE_PROPERTY_CONFLICT_WITH_TYPE", f"a {kind.name} message cannot have a delivery time"
        )
