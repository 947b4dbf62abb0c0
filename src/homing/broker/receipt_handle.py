"""Receipt handles: what a consumer presents to ack or extend one delivery of one message.

A handle names the delivery exactly (topic, queue, queue offset, delivery attempt) plus when it
was made and until when it is invisible, and is signed with the broker's secret (HMAC-SHA256,
truncated to 128 bits) over those bytes *and the consumer group*, so a handle cannot be forged,
altered, or used by another group. Whether it is still current is decided against the pop state:
a handle from an earlier delivery attempt is stale.

Text form: ``v1.`` + base64url (no padding) of::

    offset size  field
    0      2     topic_length
    2      n     topic (UTF-8)
    2+n    4     queue_id
    6+n    8     queue_offset
    14+n   4     delivery_attempt
    18+n   8     popped_at_ms
    26+n   8     invisible_until_ms
    34+n   16    HMAC-SHA256(secret, group UTF-8 + 0x00 + bytes [0, 34+n))[:16]
"""

from __future__ import annotations

import binascii
import hmac
import struct
from dataclasses import dataclass

from homing.broker.errors import BrokerError

__all__ = ["ReceiptHandle", "decode_handle", "encode_handle"]

_PREFIX = "v1."
# base64url by hand around binascii (what base64.urlsafe_b64encode/-decode do, minus their layers:
# a handle is made for every delivery and read for every ack).
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_FIXED = struct.Struct(">iqiqq")
_MAC_BYTES = 16
MAX_HANDLE_LENGTH = 1024


@dataclass(slots=True)  # not frozen: one is made per delivery and per ack (see model.py); never mutated
class ReceiptHandle:
    topic: str
    queue_id: int
    queue_offset: int
    delivery_attempt: int
    popped_at_ms: int
    invisible_until_ms: int


def _mac(secret: bytes, group: str, payload: bytes) -> bytes:
    # hmac.digest: the one-shot C implementation, the same bytes as hmac.new(...).digest()
    return hmac.digest(secret, group.encode() + b"\x00" + payload, "sha256")[:_MAC_BYTES]


def encode_handle(secret: bytes, group: str, handle: ReceiptHandle) -> str:
    topic = handle.topic.encode()
    payload = (
        len(topic).to_bytes(2, "big")
        + topic
        + _FIXED.pack(
            handle.queue_id,
            handle.queue_offset,
            handle.delivery_attempt,
            handle.popped_at_ms,
            handle.invisible_until_ms,
        )
    )
    token = binascii.b2a_base64(payload + _mac(secret, group, payload), newline=False)
    return _PREFIX + token.translate(_TO_URLSAFE).rstrip(b"=").decode()


def decode_handle(secret: bytes, group: str, text: str) -> ReceiptHandle:
    """The handle; ``BrokerError(INVALID_RECEIPT_HANDLE)`` if malformed, forged or another group's."""

    def invalid(why: str) -> BrokerError:
        return BrokerError("INVALID_RECEIPT_HANDLE", f"invalid receipt handle: {why}")

    if not text or len(text) > MAX_HANDLE_LENGTH or not text.startswith(_PREFIX):
        raise invalid("unknown format")
    token = text[len(_PREFIX) :]
    try:
        encoded = (token + "=" * (-len(token) % 4)).encode("ascii").translate(_FROM_URLSAFE)
        raw = binascii.a2b_base64(encoded)
    except (binascii.Error, ValueError) as error:  # UnicodeEncodeError is a ValueError
        raise invalid("not base64") from error
    # The decoder ignores stray characters and the unused low bits of the last one: accept only the
    # one spelling this broker writes, so that a handle is a single string (an altered copy is refused).
    canonical = binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).rstrip(b"=")
    if canonical != token.encode("ascii"):
        raise invalid("not in canonical form")
    if len(raw) < 2 + _FIXED.size + _MAC_BYTES:
        raise invalid("too short")
    payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(secret, group, payload)):
        raise invalid("signature does not match (forged, altered, or from another consumer group)")
    topic_length = int.from_bytes(payload[:2], "big")
    if len(payload) != 2 + topic_length + _FIXED.size:
        raise invalid("bad length")
    try:
        topic = payload[2 : 2 + topic_length].decode()
    except UnicodeDecodeError as error:  # pragma: no cover - signed by us, so written by us
        raise invalid("bad topic") from error
    queue_id, queue_offset, attempt, popped_at_ms, invisible_until_ms = _FIXED.unpack_from(
        payload, 2 + topic_length
    )
    return ReceiptHandle(topic, queue_id, queue_offset, attempt, popped_at_ms, invisible_until_ms)
