"""Transactional outbox: a message is sent if and only if the business transaction commits.

Write the message in the business transaction, let a relay deliver it::

    outbox = Outbox()                      # table homing_outbox; outbox.create_table(engine) once
    with Session(engine) as session, session.begin():
        session.add(order)
        outbox.add(session, "orders", body, keys=[order.id])   # same transaction, no commit here

    async with producer_sender("broker:8081") as send:         # or: homing outbox relay --db URL
        task = asyncio.create_task(OutboxRelay(outbox, engine, send).run())

For transactional (half) messages sent by the producer itself, write a witness instead
(:meth:`Outbox.add_witness`) and answer the broker's check-back with
:class:`OutboxTransactionChecker`. The theory of operation of each part is in its module:
writing (``_outbox``), claiming (``_claims``), relaying (``_relay``), checking (``_checker``);
docs/OUTBOX-INBOX.md puts them together.

Needs the ``db`` extra (SQLAlchemy and the drivers). The names below are loaded on first use, so
that ``homing.outbox._cli`` (part of the ``homing`` command) imports without SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from homing.outbox._checker import OutboxTransactionChecker, TransactionResolution
    from homing.outbox._claims import supports_skip_locked
    from homing.outbox._errors import InvalidOutboxMessage, OutboxError, TransactionFenced
    from homing.outbox._ids import format_message_id, message_id_time_ms, new_message_id
    from homing.outbox._outbox import DEFAULT_TABLE_NAME, Outbox, OutboxMessage, OutboxStatus
    from homing.outbox._relay import OutboxAlert, OutboxRelay, RelayPass, RelaySettings, Send, backoff_ms
    from homing.outbox._senders import ClientUnavailable, RecordingSender, SenderFactory, producer_sender

_HOMES: Final = {
    "DEFAULT_TABLE_NAME": "_outbox",
    "ClientUnavailable": "_senders",
    "InvalidOutboxMessage": "_errors",
    "Outbox": "_outbox",
    "OutboxAlert": "_relay",
    "OutboxError": "_errors",
    "OutboxMessage": "_outbox",
    "OutboxRelay": "_relay",
    "OutboxStatus": "_outbox",
    "OutboxTransactionChecker": "_checker",
    "RecordingSender": "_senders",
    "RelayPass": "_relay",
    "RelaySettings": "_relay",
    "Send": "_relay",
    "SenderFactory": "_senders",
    "TransactionFenced": "_errors",
    "TransactionResolution": "_checker",
    "backoff_ms": "_relay",
    "format_message_id": "_ids",
    "message_id_time_ms": "_ids",
    "new_message_id": "_ids",
    "producer_sender": "_senders",
    "supports_skip_locked": "_claims",
}

__all__ = [
    "DEFAULT_TABLE_NAME",
    "ClientUnavailable",
    "InvalidOutboxMessage",
    "Outbox",
    "OutboxAlert",
    "OutboxError",
    "OutboxMessage",
    "OutboxRelay",
    "OutboxStatus",
    "OutboxTransactionChecker",
    "RecordingSender",
    "RelayPass",
    "RelaySettings",
    "Send",
    "SenderFactory",
    "TransactionFenced",
    "TransactionResolution",
    "backoff_ms",
    "format_message_id",
    "message_id_time_ms",
    "new_message_id",
    "producer_sender",
    "supports_skip_locked",
]


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'homing.outbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"homing.outbox.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
