"""Writing to the outbox inside the caller's transaction, and reading it back.

Theory of operation: a service that changes its database and must tell the world about it cannot
do both atomically with two systems, so it does one: it writes the message as a row of the
``homing_outbox`` table in the *same* database transaction as its business change. The commit
makes both durable or neither; a relay (:mod:`homing.outbox._relay`) later copies committed rows to
the broker. :meth:`Outbox.add` therefore never commits, flushes or opens anything of its own: it
issues one INSERT on the session or connection it is handed, and the caller's commit or rollback
decides.

Every row gets a stable message id at insert. The relay sends the message under that id, so a
message that is sent twice (relay crash between the broker's OK and marking the row sent) arrives
as two copies with one id, which an idempotent inbox (:mod:`homing.inbox`) deduplicates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from sqlalchemy import Connection, Engine, MetaData, Row, Table, delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from homing.clock import Clock, SystemClock
from homing.outbox._database_errors import is_key_conflict
from homing.outbox._errors import InvalidOutboxMessage, TransactionFenced
from homing.outbox._ids import new_message_id
from homing.outbox._schema import (
    KIND_FENCE,
    KIND_MESSAGE,
    KIND_WITNESS,
    MAX_GROUP_LENGTH,
    MAX_MESSAGE_ID_LENGTH,
    MAX_TAG_LENGTH,
    outbox_table,
)

__all__ = ["DEFAULT_TABLE_NAME", "Outbox", "OutboxMessage", "OutboxStatus"]

DEFAULT_TABLE_NAME: Final = "homing_outbox"
DEFAULT_MAX_BODY_BYTES: Final = 4 * 1024 * 1024  # the broker's default limit
MAX_KEYS: Final = 64  # the broker's limits, checked here so that a bad row never reaches the relay
MAX_KEY_LENGTH: Final = 1024
MAX_PROPERTIES_BYTES: Final = 16 * 1024
RESERVED_PROPERTY_PREFIXES: Final = ("__homing.", "__RMQ.")
# RocketMQ's name rules, as the broker and the client apply them.
_TOPIC: Final = re.compile(r"[A-Za-z0-9_-][%A-Za-z0-9_-]{0,126}")
_MESSAGE_ID: Final = re.compile(r"[A-Za-z0-9_.:@#=+/-]{1,128}")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
DEFAULT_PURGE_BATCH: Final = 1000

Executor = Session | Connection
"""Where the caller's transaction lives: an ORM session or a Core connection."""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One message row, as the relay hands it to ``send``."""

    row_id: int
    message_id: str
    topic: str
    body: bytes
    tag: str | None = None
    keys: tuple[str, ...] = ()
    properties: Mapping[str, str] = field(default_factory=dict)
    message_group: str | None = None
    deliver_at_ms: int | None = None
    created_at_ms: int = 0
    attempts: int = 0
    """Send attempts finished before this one (0 on the first send)."""


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """What an operator asks first: how much is waiting, since when, and how stuck."""

    undelivered: int
    oldest_undelivered_created_at_ms: int | None
    most_attempts: int


def _check_text(value: str, what: str, limit: int) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > limit or _CONTROL.search(value):
        raise InvalidOutboxMessage(
            f"{what} must be non-blank text of at most {limit} characters, without control characters"
        )


def check_topic(topic: str) -> None:
    if not isinstance(topic, str) or _TOPIC.fullmatch(topic) is None:
        raise InvalidOutboxMessage(
            f"topic {str(topic)[:80]!r}: 1-127 letters, digits, '_', '-' or '%', not starting with '%'"
        )


def check_message_id(message_id: str) -> None:
    if not isinstance(message_id, str) or _MESSAGE_ID.fullmatch(message_id) is None:
        raise InvalidOutboxMessage(
            f"message_id {str(message_id)[:80]!r}: 1-{MAX_MESSAGE_ID_LENGTH} letters, digits or '_.:@#=+/-'"
        )


def validate_message(
    topic: str,
    body: bytes,
    tag: str | None,
    keys: Sequence[str],
    properties: Mapping[str, str],
    message_group: str | None,
    deliver_at_ms: int | None,
    max_body_bytes: int,
) -> None:
    """Refuse, before anything is written, what the broker would refuse on every retry.

    A row the broker can never accept would be retried forever by the relay; it is cheaper to fail
    the business transaction now, while the caller can still see why.
    """
    check_topic(topic)
    if not isinstance(body, bytes | bytearray | memoryview):
        raise InvalidOutboxMessage(f"body must be bytes, not {type(body).__name__}")
    if not body:
        raise InvalidOutboxMessage("body is empty")
    if len(body) > max_body_bytes:
        raise InvalidOutboxMessage(f"body is {len(body)} bytes; the limit is {max_body_bytes}")
    if tag is not None:
        _check_text(tag, "tag", MAX_TAG_LENGTH)
        if "|" in tag:
            raise InvalidOutboxMessage("a tag may not contain '|'")
    if isinstance(keys, str):
        raise InvalidOutboxMessage("keys must be a sequence of strings, not one string")
    if len(keys) > MAX_KEYS:
        raise InvalidOutboxMessage(f"at most {MAX_KEYS} keys per message")
    for key in keys:
        _check_text(key, "each key", MAX_KEY_LENGTH)
    size = 0
    for name, value in properties.items():
        if not isinstance(name, str) or not isinstance(value, str) or not name:
            raise InvalidOutboxMessage("properties map non-empty strings to strings")
        if _CONTROL.search(name) or _CONTROL.search(value):
            raise InvalidOutboxMessage(f"property {name[:64]!r} holds a control character")
        if name.startswith(RESERVED_PROPERTY_PREFIXES):
            raise InvalidOutboxMessage(f"property names starting {RESERVED_PROPERTY_PREFIXES} are reserved")
        size += len(name.encode()) + len(value.encode())
    if size > MAX_PROPERTIES_BYTES:
        raise InvalidOutboxMessage(f"properties are {size} bytes; at most {MAX_PROPERTIES_BYTES}")
    if message_group is not None:
        _check_text(message_group, "message_group", MAX_GROUP_LENGTH)
        if deliver_at_ms is not None:
            # RocketMQ 5 gives a message one type: FIFO or delayed, not both.
            raise InvalidOutboxMessage("a message has a message_group or a deliver_at_ms, not both")
    if deliver_at_ms is not None and deliver_at_ms < 0:
        raise InvalidOutboxMessage("deliver_at_ms is milliseconds since the epoch")


def message_from_row(row: Row[tuple[object, ...]]) -> OutboxMessage:
    """Decode one full outbox row (selected with every column)."""
    mapping = row._mapping
    keys = json.loads(str(mapping["message_keys"]))
    properties = json.loads(str(mapping["properties"]))
    return OutboxMessage(
        row_id=int(mapping["id"]),
        message_id=str(mapping["message_id"]),
        topic=str(mapping["topic"]),
        body=bytes(mapping["body"]),
        tag=mapping["tag"],
        keys=tuple(keys),
        properties=dict(properties),
        message_group=mapping["message_group"],
        deliver_at_ms=mapping["deliver_at_ms"],
        created_at_ms=int(mapping["created_at_ms"]),
        attempts=int(mapping["attempts"]),
    )


class Outbox:
    """The outbox table and the operations on it that run in the caller's transaction.

    ``metadata`` may be the application's own :class:`~sqlalchemy.MetaData`, so that its
    migrations (Alembic's autogenerate, ``metadata.create_all``) include the table. ``clock`` and
    ``random_bits`` are inputs so that tests replay times and ids exactly.
    """

    def __init__(
        self,
        *,
        table_name: str = DEFAULT_TABLE_NAME,
        metadata: MetaData | None = None,
        clock: Clock | None = None,
        random_bits: Callable[[int], int] | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be at least 1")
        self.metadata = metadata if metadata is not None else MetaData()
        self.table: Table = outbox_table(self.metadata, table_name)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._random_bits = random_bits
        self.max_body_bytes = max_body_bytes

    # ------------------------------------------------------------------------------ schema

    def create_table(self, bind: Engine | Connection) -> None:
        """Create the table and its indexes if missing (migrations may do this instead)."""
        self.table.create(bind, checkfirst=True)

    def drop_table(self, bind: Engine | Connection) -> None:
        """Drop the table if it exists (tests; never while undelivered rows matter)."""
        self.table.drop(bind, checkfirst=True)

    def new_message_id(self) -> str:
        """A fresh id, e.g. for a half message sent before its business transaction commits."""
        now_ms = self.clock.now_ms()
        if self._random_bits is None:
            return new_message_id(now_ms)
        return new_message_id(now_ms, self._random_bits)

    # ------------------------------------------------------------------------------ writing

    def add(
        self,
        executor: Executor,
        topic: str,
        body: bytes,
        *,
        tag: str | None = None,
        keys: Sequence[str] = (),
        properties: Mapping[str, str] | None = None,
        message_group: str | None = None,
        deliver_at_ms: int | None = None,
        message_id: str | None = None,
    ) -> str:
        """Write a message row in the caller's transaction and return its message id.

        Nothing is committed here: the row exists if and only if the caller's transaction
        commits. Raises :class:`InvalidOutboxMessage` (nothing written) for what the broker would
        refuse; database errors propagate unchanged so that the caller's transaction handling sees
        them.
        """
        properties = dict(properties or {})
        validate_message(
            topic, body, tag, keys, properties, message_group, deliver_at_ms, self.max_body_bytes
        )
        if message_id is None:
            message_id = self.new_message_id()
        else:
            check_message_id(message_id)
        now_ms = self.clock.now_ms()
        executor.execute(
            insert(self.table).values(
                message_id=message_id,
                kind=KIND_MESSAGE,
                topic=topic,
                body=bytes(body),
                tag=tag,
                message_keys=json.dumps(list(keys)),
                properties=json.dumps(properties, sort_keys=True),
                message_group=message_group,
                deliver_at_ms=deliver_at_ms,
                created_at_ms=now_ms,
                attempts=0,
                next_attempt_at_ms=now_ms,
            )
        )
        return message_id

    def add_witness(self, executor: Executor, message_id: str, topic: str) -> None:
        """Record, in the caller's transaction, that the half message ``message_id`` may commit.

        For transactional messages the producer sends itself (half message first, business
        transaction second, then commit): the witness row is what the transaction checker finds
        when the broker asks whether the business transaction committed. The relay never sends
        it. Raises :class:`TransactionFenced` if the checker has already answered ROLLBACK for
        this id; the caller's transaction must then roll back (on PostgreSQL it can do nothing
        else).
        """
        check_message_id(message_id)
        check_topic(topic)
        now_ms = self.clock.now_ms()
        try:
            executor.execute(
                insert(self.table).values(
                    message_id=message_id,
                    kind=KIND_WITNESS,
                    topic=topic,
                    body=b"",
                    message_keys="[]",
                    properties="{}",
                    created_at_ms=now_ms,
                    attempts=0,
                    next_attempt_at_ms=now_ms,
                )
            )
        except IntegrityError as error:
            if not is_key_conflict(error):
                raise
            raise TransactionFenced(
                f"message id {message_id} is already in the outbox: the transaction checker has "
                "answered ROLLBACK for it (or the id was used twice); roll this transaction back"
            ) from error

    # ------------------------------------------------------------------------------ reading

    def kind_of(self, bind: Engine | Connection, message_id: str) -> str | None:
        """The kind of the row holding ``message_id`` (committed rows only), or None."""
        statement = select(self.table.c.kind).where(self.table.c.message_id == message_id)
        if isinstance(bind, Engine):
            with bind.connect() as connection:
                return connection.execute(statement).scalar_one_or_none()
        return bind.execute(statement).scalar_one_or_none()

    def status(self, engine: Engine) -> OutboxStatus:
        """Undelivered messages: how many, the oldest one's age, the most attempts among them."""
        table = self.table
        statement = select(
            func.count(), func.min(table.c.created_at_ms), func.coalesce(func.max(table.c.attempts), 0)
        ).where(table.c.kind == KIND_MESSAGE, table.c.sent_at_ms.is_(None))
        with engine.connect() as connection:
            count, oldest, most = connection.execute(statement).one()
        return OutboxStatus(int(count), None if oldest is None else int(oldest), int(most))

    # ------------------------------------------------------------------------------ retention

    def purge(self, engine: Engine, *, before_ms: int, limit: int = DEFAULT_PURGE_BATCH) -> int:
        """Delete at most ``limit`` finished rows older than ``before_ms``; return how many.

        Finished means: a message delivered before ``before_ms``, or a witness or fence written
        before it. An undelivered message is never deleted, however old. Keep ``before_ms`` well
        behind the broker's transaction check window (checks x interval): a witness or fence
        purged while the broker may still ask about its half message would turn a COMMIT into a
        ROLLBACK answer.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        table = self.table
        finished = ((table.c.kind == KIND_MESSAGE) & (table.c.sent_at_ms < before_ms)) | (
            table.c.kind.in_((KIND_WITNESS, KIND_FENCE)) & (table.c.created_at_ms < before_ms)
        )
        with engine.begin() as connection:
            # Two steps, because MySQL refuses a LIMIT in a subquery of DELETE on the same table.
            row_ids = (
                connection.execute(select(table.c.id).where(finished).order_by(table.c.id).limit(limit))
                .scalars()
                .all()
            )
            if not row_ids:
                return 0
            result = connection.execute(delete(table).where(table.c.id.in_(row_ids), finished))
            return int(result.rowcount)
