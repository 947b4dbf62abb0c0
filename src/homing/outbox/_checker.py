"""The transaction checker: answers the broker's check-back from the outbox.

Theory of operation. A transactional producer sends a half message (stored, invisible), runs its
business transaction, then tells the broker COMMIT or ROLLBACK. If it dies in between, the broker
asks back: "did the transaction of this message commit?". The business transaction writes a
*witness* row under the half message's id (:meth:`Outbox.add_witness`), so the answer is in the
database:

- a witness (or message) row with that id is committed: **COMMIT**;
- a *fence* row holds the id (this checker answered ROLLBACK before): **ROLLBACK**;
- no row, and the message is younger than the grace period: the transaction may still be running,
  so **UNKNOWN** (the broker asks again later);
- no row, and older than the grace period: the checker *fences* the id by inserting a fence row
  under the same unique ``message_id``, then answers **ROLLBACK**.

The fence is what makes ROLLBACK safe rather than a guess. "Absent" alone cannot tell a rolled
back transaction from a slow one that has not committed yet; if the checker said ROLLBACK and the
slow transaction committed afterwards, the business change would stand without its message. With
the fence in place that commit is impossible: the witness insert hits the unique key and the
business transaction fails (:class:`TransactionFenced`). If instead the business transaction is
committing at that very moment, the fence insert waits on its row lock and then hits the unique
key itself, and the answer is COMMIT. Whichever insert the database serialises first wins, and
the answer always matches the database.

Any database error (unreachable, lock wait timeout) gives UNKNOWN: the broker will ask again, and
an answer is never invented. The message's age comes from ``born_at_ms`` when the caller has it
(the check-back carries the half message's born time) and otherwise from the time written in
outbox message ids (:mod:`homing.outbox._ids`); with neither, the answer stays UNKNOWN and the
broker eventually parks the transaction where an operator can see it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import Any, Final

from sqlalchemy import Connection, Engine, insert, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from homing.clock import Clock
from homing.outbox._database_errors import is_key_conflict
from homing.outbox._ids import message_id_time_ms
from homing.outbox._outbox import Outbox
from homing.outbox._schema import KIND_FENCE, KIND_MESSAGE, KIND_WITNESS
from homing.outbox._senders import import_client

__all__ = ["OutboxTransactionChecker", "TransactionResolution"]

log = logging.getLogger("homing.outbox")

DEFAULT_GRACE_PERIOD_S: Final = 60.0
DEFAULT_LOCK_TIMEOUT_S: Final = 5.0


class TransactionResolution(enum.Enum):
    """The answer to a check-back (RocketMQ's COMMIT / ROLLBACK / UNKNOWN)."""

    COMMIT = "commit"
    ROLLBACK = "rollback"
    UNKNOWN = "unknown"


_ANSWER_FOR_KIND: Final = {
    KIND_MESSAGE: TransactionResolution.COMMIT,
    KIND_WITNESS: TransactionResolution.COMMIT,
    KIND_FENCE: TransactionResolution.ROLLBACK,
}


class OutboxTransactionChecker:
    """Answers check-backs for half messages whose ids are outbox witness ids.

    ``grace_period_s`` must exceed the longest business transaction that writes a witness: a
    transaction still open after it is fenced (and then fails on commit, consistently, rather
    than committing without its message). ``lock_timeout_s`` bounds how long the fence insert
    waits on a transaction that is committing the same id right now (PostgreSQL; on MySQL and
    MariaDB the server's ``innodb_lock_wait_timeout`` applies).
    """

    def __init__(
        self,
        outbox: Outbox,
        engine: Engine,
        *,
        grace_period_s: float = DEFAULT_GRACE_PERIOD_S,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        clock: Clock | None = None,
    ) -> None:
        if not grace_period_s > 0 or not lock_timeout_s > 0:
            raise ValueError("grace_period_s and lock_timeout_s must be positive")
        self.outbox = outbox
        self.engine = engine
        self.grace_period_ms = round(grace_period_s * 1000)
        self.lock_timeout_ms = max(1, round(lock_timeout_s * 1000))
        self.clock = clock if clock is not None else outbox.clock

    def check(self, message_id: str, born_at_ms: int | None = None) -> TransactionResolution:
        """The answer for the half message ``message_id`` (born at ``born_at_ms``, if known)."""
        try:
            return self._check(message_id, born_at_ms)
        except DBAPIError:
            log.warning(
                "transaction check of %s: database error; answering UNKNOWN", message_id, exc_info=True
            )
            return TransactionResolution.UNKNOWN

    async def check_async(self, message_id: str, born_at_ms: int | None = None) -> TransactionResolution:
        """:meth:`check` in a worker thread, for an asyncio producer's check-back callback."""
        return await asyncio.to_thread(self.check, message_id, born_at_ms)

    async def check_received_message(self, message: Any) -> Any:
        """The Homing client's checker: ``AsyncProducer(..., checker=checker.check_received_message)``.

        Takes the client's ``ReceivedMessage`` (its ``message_id`` and ``born_timestamp_ms``) and
        answers with the client's own ``TransactionResolution`` (imported when first called, so
        the outbox does not need the client to import).
        """
        answer = await self.check_async(message.message_id, getattr(message, "born_timestamp_ms", None))
        return import_client().TransactionResolution(answer.value)

    def _check(self, message_id: str, born_at_ms: int | None) -> TransactionResolution:
        kind = self.outbox.kind_of(self.engine, message_id)
        if kind is not None:
            return _ANSWER_FOR_KIND[kind]
        if born_at_ms is None:
            born_at_ms = message_id_time_ms(message_id)
        if born_at_ms is None or self.clock.now_ms() - born_at_ms < self.grace_period_ms:
            return TransactionResolution.UNKNOWN
        return self._fence(message_id)

    def _fence(self, message_id: str) -> TransactionResolution:
        now_ms = self.clock.now_ms()
        try:
            with self.engine.begin() as connection:
                self._limit_lock_wait(connection)
                connection.execute(
                    insert(self.outbox.table).values(
                        message_id=message_id,
                        kind=KIND_FENCE,
                        topic="",
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
            # The business transaction (or another checker) got there first: its row decides.
            kind = self.outbox.kind_of(self.engine, message_id)
            if kind is None:  # committed, then purged between the two statements
                return TransactionResolution.UNKNOWN
            return _ANSWER_FOR_KIND[kind]
        log.info("transaction check of %s: no committed witness after the grace period; fenced", message_id)
        return TransactionResolution.ROLLBACK

    def _limit_lock_wait(self, connection: Connection) -> None:
        if self.engine.dialect.name == "postgresql":
            # SET LOCAL ends with this transaction, so a pooled connection is left as it was.
            connection.execute(text(f"SET LOCAL lock_timeout = {int(self.lock_timeout_ms)}"))
