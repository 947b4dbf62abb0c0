"""The broker's own types: what comes in on a send and what goes out on a receive.

Plain data, free of the wire format: the server adapter translates protocol messages to and from
these, and :mod:`homing.broker.message_codec` maps them to and from store records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

__all__ = ["Delivery", "Message", "MessageType", "SendReceipt"]


class MessageType(IntEnum):
    """Stored in the low bits of a record's flags; values are Homing's own (not the wire's)."""

    NORMAL = 1
    FIFO = 2
    DELAY = 3
    TRANSACTION = 4


# Message, SendReceipt and Delivery are made for every message sent and received: plain (not
# frozen) dataclasses, because a frozen one's __init__ sets each field through object.__setattr__,
# about 5 times the cost (4.5 µs against 0.8 µs for a Message). Treat them as immutable all the
# same: make a changed copy with dataclasses.replace.


@dataclass(slots=True)
class Message:
    topic: str
    body: bytes
    message_id: str
    message_type: MessageType = MessageType.NORMAL
    tag: str | None = None
    keys: tuple[str, ...] = ()
    properties: dict[str, str] = field(default_factory=dict)  # user properties only
    message_group: str | None = None
    delivery_timestamp_ms: int | None = None
    born_timestamp_ms: int = 0
    born_host: str = ""
    trace_context: str | None = None
    # Filled in for stored messages:
    queue_id: int = -1
    queue_offset: int = -1
    store_timestamp_ms: int = 0
    body_is_gzip: bool = False


@dataclass(slots=True)
class SendReceipt:
    message_id: str
    queue_id: int
    queue_offset: int
    transaction_id: str = ""
    recall_handle: str = ""  # delayed messages only: what RecallMessage takes


@dataclass(slots=True)
class Delivery:
    message: Message
    receipt_handle: str
    delivery_attempt: int  # 1 for the first delivery
    invisible_until_ms: int
