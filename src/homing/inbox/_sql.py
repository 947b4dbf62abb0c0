"""The idempotent inbox on a SQL database: effects and "processed" commit together.

Theory of operation. A broker delivers at least once, so a consumer sees some messages twice (a
redelivery after a lost ack, a producer's resend under the same id). The inbox makes the *effect*
happen once: the handler's database work and a processed-record ``(consumer, message_id)`` are
written in one transaction, and the record's primary key lets only one such transaction commit.

The record is inserted *first*, before the handler runs, in the handler's own transaction:

- no record yet: the insert succeeds, the handler runs, and the commit makes record and effects
  durable together. If the handler raises, the rollback removes both, and the redelivery runs it
  again from scratch;
- a committed record: the insert fails with a key conflict, the transaction is rolled back
  untouched, and the delivery is reported as a duplicate (acknowledge it; the handler did not run);
- a concurrent delivery of the same id holds an uncommitted record: the database makes this
  insert wait on that row's lock. If the other transaction commits, this insert fails as a
  duplicate; if it rolls back, this insert succeeds and this worker does the work. Exactly one
  effect either way, with no window between "checked" and "recorded" (which a SELECT-then-INSERT
  would have).

Inserting first also means a duplicate costs one failed insert, not a wasted handler run. The key
conflict is told apart from other errors by the driver's code
(:mod:`homing.outbox._database_errors`). A deadlock or serialization failure (the database picked
this transaction as a victim, as MariaDB can when three deliveries of one id race) reruns the
whole transaction, a bounded number of times: that is safe because nothing of it was committed.

The handler must do its database work through the session it is given, and must not commit or
roll back itself; effects outside the database (an e-mail, an HTTP call) are not covered and may
repeat, as with any at-least-once delivery.

Async: the handler is synchronous SQLAlchemy code and runs in a worker thread
(:meth:`Inbox.wrap_async`), so it works with the ordinary sync drivers of every supported
database and never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Index,
    MetaData,
    String,
    Table,
    delete,
    insert,
    select,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from homing.clock import Clock, SystemClock
from homing.inbox._errors import AlreadyProcessed, InboxError
from homing.inbox._outcome import InboxOutcome, default_message_id
from homing.outbox._database_errors import is_key_conflict, is_transaction_conflict

__all__ = ["DEFAULT_INBOX_TABLE_NAME", "Inbox", "inbox_table"]

log = logging.getLogger("homing.inbox")

MessageT = TypeVar("MessageT")
ResultT = TypeVar("ResultT")

DEFAULT_INBOX_TABLE_NAME: Final = "homing_inbox"
MAX_CONSUMER_LENGTH: Final = 200  # with the id, inside InnoDB's 3072-byte key limit in utf8mb4
MAX_MESSAGE_ID_LENGTH: Final = 128  # the broker's limit
DEFAULT_MAX_ATTEMPTS: Final = 5
DEFAULT_PURGE_BATCH: Final = 1000

Executor = Session | Connection


class SessionHandlerDecorator(Protocol):
    """What :meth:`Inbox.idempotent` returns: keeps the handler's message and result types."""

    def __call__(
        self, handler: Callable[[Session, MessageT], ResultT], /
    ) -> Callable[[MessageT], InboxOutcome[ResultT]]: ...


class AsyncSessionHandlerDecorator(Protocol):
    """What :meth:`Inbox.idempotent_async` returns."""

    def __call__(
        self, handler: Callable[[Session, MessageT], ResultT], /
    ) -> Callable[[MessageT], Awaitable[InboxOutcome[ResultT]]]: ...


def inbox_table(metadata: MetaData, name: str) -> Table:
    """The processed-records table ``name``, defined in ``metadata`` (may be the application's).

    ======================  ==================  ===============================================
    column                  type                meaning
    ======================  ==================  ===============================================
    consumer                text(200), PK       who processed it (consumer group or handler)
    message_id              text(128), PK       the message id, or a business key
    processed_at_ms         big integer         commit time by the consumer's clock (for purge)
    ======================  ==================  ===============================================
    """
    return Table(
        name,
        metadata,
        Column("consumer", String(MAX_CONSUMER_LENGTH), primary_key=True),
        Column("message_id", String(MAX_MESSAGE_ID_LENGTH), primary_key=True),
        Column("processed_at_ms", BigInteger, nullable=False),
        Index(f"ix_{name}_processed", "consumer", "processed_at_ms"),  # for purge
        # Row locks and transactions need InnoDB; a MyISAM default would silently break both.
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )


def _check_id(value: str, what: str, limit: int) -> None:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ValueError(f"{what} must be a string of 1-{limit} characters")


class Inbox:
    """Processed-records of one consumer (name it after the consumer group or the handler).

    Two consumers that must each handle every message (two consumer groups) need two names;
    two workers of one consumer share the name, which is what makes them deduplicate each other.
    """

    def __init__(
        self,
        consumer: str,
        *,
        table_name: str = DEFAULT_INBOX_TABLE_NAME,
        metadata: MetaData | None = None,
        clock: Clock | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        _check_id(consumer, "consumer", MAX_CONSUMER_LENGTH)
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.consumer = consumer
        self.metadata = metadata if metadata is not None else MetaData()
        self.table = inbox_table(self.metadata, table_name)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.max_attempts = max_attempts

    def create_table(self, bind: Engine | Connection) -> None:
        """Create the table if missing (migrations may do this instead)."""
        self.table.create(bind, checkfirst=True)

    def drop_table(self, bind: Engine | Connection) -> None:
        self.table.drop(bind, checkfirst=True)

    # ------------------------------------------------------------------------------ low level

    def claim(self, executor: Executor, message_id: str) -> None:
        """Insert the processed-record in the caller's transaction, before any other work.

        Raises :class:`AlreadyProcessed` if a committed record exists (after waiting for a
        concurrent transaction holding the same id to finish). Let it propagate out of the
        transaction so that it rolls back. Call it first: on PostgreSQL the failed insert aborts
        the transaction, so nothing done before it could commit anyway.
        """
        _check_id(message_id, "message_id", MAX_MESSAGE_ID_LENGTH)
        try:
            executor.execute(
                insert(self.table).values(
                    consumer=self.consumer, message_id=message_id, processed_at_ms=self.clock.now_ms()
                )
            )
        except IntegrityError as error:
            if not is_key_conflict(error):
                raise
            raise AlreadyProcessed(self.consumer, message_id) from error

    def is_processed(self, bind: Engine | Connection, message_id: str) -> bool:
        """Whether a committed processed-record exists (for inspection; not for deciding)."""
        statement = select(self.table.c.message_id).where(
            self.table.c.consumer == self.consumer, self.table.c.message_id == message_id
        )
        if isinstance(bind, Engine):
            with bind.connect() as connection:
                return connection.execute(statement).first() is not None
        return bind.execute(statement).first() is not None

    # ------------------------------------------------------------------------------ handlers

    def process(
        self,
        session_factory: Callable[[], Session],
        message_id: str,
        work: Callable[[Session], ResultT],
    ) -> InboxOutcome[ResultT]:
        """Run ``work(session)`` once per ``message_id``, atomically with its record.

        Returns normally when the work ran and committed, and when the id was already processed
        (``duplicate=True``, the work did not run): acknowledge in both cases. Raises what the
        work raised (nothing committed): negatively acknowledge.
        """
        _check_id(message_id, "message_id", MAX_MESSAGE_ID_LENGTH)
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self._process_once(session_factory, message_id, work)
            except AlreadyProcessed:
                return InboxOutcome(message_id, duplicate=True)
            except DBAPIError as error:
                if attempt == self.max_attempts or not is_transaction_conflict(error):
                    raise
                log.info(
                    "inbox %s: message %s lost a transaction conflict (attempt %d); rerunning",
                    self.consumer,
                    message_id,
                    attempt,
                )
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _process_once(
        self,
        session_factory: Callable[[], Session],
        message_id: str,
        work: Callable[[Session], ResultT],
    ) -> InboxOutcome[ResultT]:
        with session_factory() as session:
            with session.begin():
                self.claim(session, message_id)
                result = work(session)
                if not session.in_transaction():
                    raise InboxError(
                        "the handler committed or rolled back the inbox's session; it must leave "
                        "that to the inbox, which commits its work together with the record"
                    )
            return InboxOutcome(message_id, duplicate=False, result=result)

    def wrap(
        self,
        handler: Callable[[Session, MessageT], ResultT],
        session_factory: Callable[[], Session],
        message_id: Callable[[MessageT], str] = default_message_id,
    ) -> Callable[[MessageT], InboxOutcome[ResultT]]:
        """``handler(session, message)`` made idempotent: see :meth:`process`.

        ``message_id`` picks the deduplication key (default: ``message.message_id``; pass a
        business key to collapse distinct messages that mean the same thing).
        """

        def handle(message: MessageT) -> InboxOutcome[ResultT]:
            return self.process(
                session_factory, message_id(message), lambda session: handler(session, message)
            )

        return handle

    def wrap_async(
        self,
        handler: Callable[[Session, MessageT], ResultT],
        session_factory: Callable[[], Session],
        message_id: Callable[[MessageT], str] = default_message_id,
    ) -> Callable[[MessageT], Awaitable[InboxOutcome[ResultT]]]:
        """:meth:`wrap` for an asyncio consumer: the (sync) handler runs in a worker thread.

        Cancelling the awaiting task does not stop the thread: its transaction still commits or
        rolls back as a whole, and a redelivery then finds the record or not. Either is correct.
        """
        handle = self.wrap(handler, session_factory, message_id)

        async def handle_async(message: MessageT) -> InboxOutcome[ResultT]:
            return await asyncio.to_thread(handle, message)

        return handle_async

    def idempotent(
        self, session_factory: Callable[[], Session], message_id: Callable[[Any], str] = default_message_id
    ) -> SessionHandlerDecorator:
        """Decorator form of :meth:`wrap`::

        @inbox.idempotent(Session)
        def on_order(session: Session, message: MessageView) -> None: ...
        """

        def decorate(
            handler: Callable[[Session, MessageT], ResultT],
        ) -> Callable[[MessageT], InboxOutcome[ResultT]]:
            return self.wrap(handler, session_factory, message_id)

        return decorate

    def idempotent_async(
        self, session_factory: Callable[[], Session], message_id: Callable[[Any], str] = default_message_id
    ) -> AsyncSessionHandlerDecorator:
        """Decorator form of :meth:`wrap_async`."""

        def decorate(
            handler: Callable[[Session, MessageT], ResultT],
        ) -> Callable[[MessageT], Awaitable[InboxOutcome[ResultT]]]:
            return self.wrap_async(handler, session_factory, message_id)

        return decorate

    # ------------------------------------------------------------------------------ retention

    def purge(self, engine: Engine, *, before_ms: int, limit: int = DEFAULT_PURGE_BATCH) -> int:
        """Delete at most ``limit`` of this consumer's records processed before ``before_ms``.

        A message redelivered after its record is purged runs again. Keep records longer than a
        message can come back: the broker's whole retry schedule, and any offset reset or
        dead-letter resend you might do.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        columns = self.table.c
        old = (columns.consumer == self.consumer) & (columns.processed_at_ms < before_ms)
        with engine.begin() as connection:
            # Two steps, because MySQL refuses a LIMIT in a subquery of DELETE on the same table.
            ids = list(
                connection.execute(
                    select(columns.message_id).where(old).order_by(columns.processed_at_ms).limit(limit)
                ).scalars()
            )
            if not ids:
                return 0
            result = connection.execute(delete(self.table).where(old, columns.message_id.in_(ids)))
            return int(result.rowcount)
