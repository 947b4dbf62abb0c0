"""What the transaction service writes: transaction ids, half-message properties, op records, progress.

Pure functions and layouts only; :mod:`homing.broker.transactions` holds the service and its theory
of operation.

Transaction id (text, 32 upper-case hex digits)::

    chars  field
    0-15   the half message's queue offset in ``%HOMING_HALF%``/0 when it was first stored
    16-31  a 64-bit random nonce

The offset makes ids unique within a store; the nonce makes them unguessable and keeps ids of a
wiped-and-recreated store from colliding with old ones. Clients treat the id as opaque.

Half message (topic ``%HOMING_HALF%``, queue 0): the producer's message as
:func:`homing.broker.message_codec.to_record` stores it, plus these system properties:

- ``__homing.topic``              the real topic
- ``__homing.txn.nonce``          16 hex digits; with the record's own queue offset, the id
- ``__homing.txn.id``             renewed copies only: the full id (their offset is not the first one)
- ``__homing.txn.prepared_ms``    renewed copies only: when the first half was stored
- ``__homing.txn.checks``         renewed copies only: checks recorded so far
- ``__homing.txn.last_check_ms``  renewed copies only, if checked: when the last check was recorded
- ``__homing.txn.parked``         renewed copies only, if parked: ``"1"``

Op record (topic ``%HOMING_HALF_OPS%``, queue 0), one per decision or check; ``keys`` is the one
transaction id (so the key index finds the ops of an id), the message id field is empty, the
properties are ``__homing.topic`` (real topic) and ``__homing.txn.message_id``. Body, 16 bytes,
little-endian::

    offset size  field
    0      1     version      1
    1      1     kind         1 COMMIT, 2 ROLLBACK, 3 CHECKED, 4 PARKED
    2      1     source       0 broker, 1 producer, 2 check (a producer answering a check), 3 admin
    3      1     reserved     0
    4      4     checks       CHECKED: the number of this check (1, 2...); others: checks so far
    8      8     at_ms        wall time of the decision or check, ms since the epoch (signed)

Progress file (``<data_dir>/transactions``, framed by :mod:`homing.store.atomic_file`), 20 bytes::

    offset size  field
    0      1     version      1
    1      3     reserved     0
    4      8     half_offset  every half message below this queue offset is resolved or superseded
    12     8     ops_offset   no op at or past ``half_offset``'s transactions sits below this offset
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import IntEnum

from homing.broker.message_codec import REAL_TOPIC, SYSTEM_PREFIX
from homing.broker.system_topics import HALF_OPS_TOPIC
from homing.store import NewRecord, StoredRecord

__all__ = [
    "TRANSACTION_ID_LENGTH",
    "TXN_CHECKS",
    "TXN_ID",
    "TXN_LAST_CHECK_MS",
    "TXN_MESSAGE_ID",
    "TXN_NONCE",
    "TXN_PARKED",
    "TXN_PREPARED_MS",
    "HalfState",
    "Op",
    "OpKind",
    "OpSource",
    "decode_half",
    "decode_op",
    "decode_progress",
    "encode_progress",
    "format_transaction_id",
    "op_record",
    "original_half_properties",
    "parse_transaction_id",
    "renewed_half_properties",
]

TRANSACTION_ID_LENGTH = 32
_TRANSACTION_ID = re.compile(r"[0-9A-F]{32}")
_NONCE = re.compile(r"[0-9A-F]{16}")
_UINT64 = (1 << 64) - 1

TXN_NONCE = SYSTEM_PREFIX + "txn.nonce"
TXN_ID = SYSTEM_PREFIX + "txn.id"
TXN_PREPARED_MS = SYSTEM_PREFIX + "txn.prepared_ms"
TXN_CHECKS = SYSTEM_PREFIX + "txn.checks"
TXN_LAST_CHECK_MS = SYSTEM_PREFIX + "txn.last_check_ms"
TXN_PARKED = SYSTEM_PREFIX + "txn.parked"
TXN_MESSAGE_ID = SYSTEM_PREFIX + "txn.message_id"

_OP_VERSION = 1
_OP_BODY = struct.Struct("<BBBBIq")
assert _OP_BODY.size == 16
_MAX_CHECKS = 0xFFFFFFFF

_PROGRESS_VERSION = 1
_PROGRESS = struct.Struct("<B3xQQ")
assert _PROGRESS.size == 20


# ---------------------------------------------------------------------- transaction ids


def format_transaction_id(half_offset: int, nonce: int) -> str:
    assert 0 <= half_offset <= _UINT64 and 0 <= nonce <= _UINT64
    return f"{half_offset:016X}{nonce:016X}"


def parse_transaction_id(text: str) -> int | None:
    """The first half offset an id names, or ``None`` if ``text`` is not shaped like one of our ids."""
    if len(text) != TRANSACTION_ID_LENGTH or _TRANSACTION_ID.fullmatch(text) is None:
        return None
    return int(text[:16], 16)


# ---------------------------------------------------------------------- half messages


@dataclass(frozen=True, slots=True)
class HalfState:
    """What a half record says about its transaction."""

    transaction_id: str
    prepared_ms: int
    checks: int
    last_check_ms: int | None
    parked: bool
    renewed: bool


def original_half_properties(topic: str, nonce: int) -> dict[str, str]:
    return {REAL_TOPIC: topic, TXN_NONCE: f"{nonce:016X}"}


def renewed_half_properties(topic: str, state: HalfState) -> dict[str, str]:
    properties = {
        REAL_TOPIC: topic,
        TXN_ID: state.transaction_id,
        TXN_PREPARED_MS: str(state.prepared_ms),
        TXN_CHECKS: str(state.checks),
    }
    if state.last_check_ms is not None:
        properties[TXN_LAST_CHECK_MS] = str(state.last_check_ms)
    if state.parked:
        properties[TXN_PARKED] = "1"
    return properties


def decode_half(record: StoredRecord) -> HalfState:
    """The transaction state a half record carries; ``ValueError`` if it is not a valid half record."""
    properties = record.properties
    if not properties.get(REAL_TOPIC):
        raise ValueError("half record without a real topic")
    if not record.message_id:
        raise ValueError("half record without a message id")
    renewed_id = properties.get(TXN_ID)
    if renewed_id is None:
        nonce = properties.get(TXN_NONCE, "")
        if _NONCE.fullmatch(nonce) is None:
            raise ValueError(f"half record with a bad nonce {nonce!r}")
        return HalfState(
            transaction_id=format_transaction_id(record.queue_offset, int(nonce, 16)),
            prepared_ms=record.store_timestamp_ms,
            checks=0,
            last_check_ms=None,
            parked=False,
            renewed=False,
        )
    if parse_transaction_id(renewed_id) is None:
        raise ValueError(f"renewed half record with a bad transaction id {renewed_id!r}")
    last_check = properties.get(TXN_LAST_CHECK_MS)
    checks = int(properties.get(TXN_CHECKS, "0"))
    if checks < 0:
        raise ValueError(f"renewed half record with {checks} checks")
    return HalfState(
        transaction_id=renewed_id,
        prepared_ms=int(properties[TXN_PREPARED_MS]) if TXN_PREPARED_MS in properties else 0,
        checks=checks,
        last_check_ms=int(last_check) if last_check is not None else None,
        parked=properties.get(TXN_PARKED) == "1",
        renewed=True,
    )


# ---------------------------------------------------------------------- op records


class OpKind(IntEnum):
    COMMIT = 1
    ROLLBACK = 2
    CHECKED = 3
    PARKED = 4

    @property
    def final(self) -> bool:
        return self in (OpKind.COMMIT, OpKind.ROLLBACK)


class OpSource(IntEnum):
    BROKER = 0
    PRODUCER = 1
    CHECK = 2
    ADMIN = 3


@dataclass(frozen=True, slots=True)
class Op:
    kind: OpKind
    source: OpSource
    checks: int
    at_ms: int
    transaction_id: str
    topic: str
    message_id: str


def op_record(op: Op) -> NewRecord:
    assert 0 <= op.checks <= _MAX_CHECKS
    assert parse_transaction_id(op.transaction_id) is not None
    return NewRecord(
        topic=HALF_OPS_TOPIC,
        queue_id=0,
        body=_OP_BODY.pack(_OP_VERSION, op.kind, op.source, 0, op.checks, op.at_ms),
        keys=(op.transaction_id,),
        properties={REAL_TOPIC: op.topic, TXN_MESSAGE_ID: op.message_id},
    )


def decode_op(record: StoredRecord) -> Op:
    """The op a record holds; ``ValueError`` if it is not one this version understands."""
    if len(record.body) != _OP_BODY.size:
        raise ValueError(f"op body of {len(record.body)} bytes, expected {_OP_BODY.size}")
    version, kind, source, _, checks, at_ms = _OP_BODY.unpack(record.body)
    if version != _OP_VERSION:
        raise ValueError(f"op version {version}")
    if kind not in OpKind._value2member_map_ or source not in OpSource._value2member_map_:
        raise ValueError(f"op kind {kind} / source {source} unknown")
    if len(record.keys) != 1 or parse_transaction_id(record.keys[0]) is None:
        raise ValueError(f"op keys {record.keys!r} do not name one transaction id")
    return Op(
        kind=OpKind(kind),
        source=OpSource(source),
        checks=checks,
        at_ms=at_ms,
        transaction_id=record.keys[0],
        topic=record.properties.get(REAL_TOPIC, ""),
        message_id=record.properties.get(TXN_MESSAGE_ID, ""),
    )


# ---------------------------------------------------------------------- progress file


def encode_progress(half_offset: int, ops_offset: int) -> bytes:
    assert half_offset >= 0 and ops_offset >= 0
    return _PROGRESS.pack(_PROGRESS_VERSION, half_offset, ops_offset)


def decode_progress(payload: bytes) -> tuple[int, int] | None:
    if len(payload) != _PROGRESS.size:
        return None
    version, half_offset, ops_offset = _PROGRESS.unpack(payload)
    if version != _PROGRESS_VERSION:
        return None
    return half_offset, ops_offset
