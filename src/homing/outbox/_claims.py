"""The relay's database side: claim due rows, then mark each one sent or failed.

Theory of operation. A claim is a lease written into the row: ``claimed_by`` (the relay's id) and
``claim_expires_at_ms``. A row is claimable when it is an undelivered message, it is due
(``next_attempt_at_ms <= now``) and nobody holds an unexpired lease on it. Claiming is one short
transaction:

1. select up to ``limit`` claimable ids, oldest due first. Where the database has it (PostgreSQL,
   MySQL 8, MariaDB 10.6+), the select is ``FOR UPDATE SKIP LOCKED``: concurrent relays then take
   disjoint batches without waiting on each other. SQLite has no row locks; there the transaction
   starts with ``BEGIN IMMEDIATE``, which takes the database's write lock first, so claims run one
   at a time;
2. drop FIFO rows that are not the head of their group (see below);
3. ``UPDATE ... SET claimed_by, claim_expires_at_ms WHERE id IN (...) AND <still claimable>``.
   The repeated condition is what makes a double claim impossible on every database, with or
   without SKIP LOCKED: a concurrent claimer's UPDATE of the same row re-reads it after the first
   commit (PostgreSQL, InnoDB) or runs after it (SQLite) and finds it leased;
4. read back the rows this claim holds (``claimed_by`` and the exact expiry), and commit.

The relay then sends without holding any transaction open, and marks each row in its own short
transaction: sent (``sent_at_ms``) only after the broker's OK, or failed (attempts + 1, the next
attempt pushed back, the lease dropped). A relay that dies between claim and mark leaves a lease
that expires; another relay then claims the row again and resends it under the same message id.
So a lease must outlast a send (the relay enforces ``send_timeout < lease``), and the relays'
clocks must agree to well within a lease.

Marking failed only succeeds while this relay still holds the claim, so a relay whose lease ran
out cannot clobber the newer owner's bookkeeping. Marking sent succeeds whoever holds the claim:
the broker has the message, and that is the fact the row must record.

FIFO groups: a row with a ``message_group`` is claimable only when no older undelivered message of
its group exists, so a group is sent one message at a time in ``id`` order, and a failing head
blocks its group (as FIFO requires). The check in step 1 is a filter for efficiency; on MySQL and
MariaDB a locking read may skip a locked older row, so step 2 repeats it as a plain read, which
sees every undelivered row whether locked or not. A stale read can only show an older row as still
undelivered (``sent_at_ms`` is set once and never cleared), so step 2 errs towards waiting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table, and_, exists, or_, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import ColumnElement

from homing.outbox._outbox import OutboxMessage, message_from_row
from homing.outbox._schema import KIND_MESSAGE

__all__ = ["Claim", "ClaimStore", "supports_skip_locked"]


@dataclass(frozen=True, slots=True)
class Claim:
    """The rows one claim holds, and the lease that identifies it."""

    relay_id: str
    expires_at_ms: int
    messages: Sequence[OutboxMessage]


def supports_skip_locked(dialect: Dialect) -> bool:
    """Whether ``SELECT ... FOR UPDATE SKIP LOCKED`` is understood by this database."""
    if dialect.name == "postgresql":
        return True
    if dialect.name in ("mysql", "mariadb"):
        version = tuple(dialect.server_version_info or ())
        if getattr(dialect, "is_mariadb", False):
            return version >= (10, 6)
        return version >= (8, 0, 1)
    return False


class ClaimStore:
    """Claim, mark sent and mark failed, each in its own short transaction on ``engine``."""

    def __init__(self, engine: Engine, table: Table) -> None:
        self.engine = engine
        self.table = table

    def _claimable(self, now_ms: int) -> ColumnElement[bool]:
        columns = self.table.c
        return and_(
            columns.kind == KIND_MESSAGE,
            columns.sent_at_ms.is_(None),
            columns.next_attempt_at_ms <= now_ms,
            or_(columns.claim_expires_at_ms.is_(None), columns.claim_expires_at_ms <= now_ms),
        )

    def _older_in_group(self) -> ColumnElement[bool]:
        """True for a row that has an older undelivered message in its FIFO group."""
        columns = self.table.c
        older = self.table.alias("older")
        return exists().where(
            older.c.message_group == columns.message_group,
            older.c.kind == KIND_MESSAGE,
            older.c.sent_at_ms.is_(None),
            older.c.id < columns.id,
        )

    def _begin_write(self, connection: Connection) -> None:
        if self.engine.dialect.name != "sqlite":
            return
        # pysqlite opens transactions lazily, at the first write; BEGIN IMMEDIATE takes the write
        # lock now, so the select below and the update see the same database.
        driver_connection: Any = connection.connection.driver_connection
        if not getattr(driver_connection, "in_transaction", True):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    def claim(self, relay_id: str, now_ms: int, limit: int, lease_ms: int) -> Claim:
        """Lease up to ``limit`` due messages to ``relay_id`` until ``now_ms + lease_ms``."""
        assert limit >= 1 and lease_ms >= 1
        columns = self.table.c
        claimable = self._claimable(now_ms)
        older_in_group = self._older_in_group()
        head_of_group = or_(columns.message_group.is_(None), ~older_in_group)
        candidates = (
            select(columns.id)
            .where(claimable, head_of_group)
            .order_by(columns.next_attempt_at_ms, columns.id)
            .limit(limit)
        )
        dialect = self.engine.dialect
        if supports_skip_locked(dialect):
            # OF: lock only outbox rows of the outer query, not the rows the FIFO subquery reads.
            # MariaDB has no OF clause; there step 2 below covers what the lock may hide.
            of = self.table if dialect.name == "postgresql" else None
            candidates = candidates.with_for_update(skip_locked=True, of=of)
        expires_at_ms = now_ms + lease_ms
        with self.engine.begin() as connection:
            self._begin_write(connection)
            row_ids = list(connection.execute(candidates).scalars())
            if row_ids:
                not_heads = set(
                    connection.execute(
                        select(columns.id).where(
                            columns.id.in_(row_ids), columns.message_group.is_not(None), older_in_group
                        )
                    ).scalars()
                )
                row_ids = [row_id for row_id in row_ids if row_id not in not_heads]
            if not row_ids:
                return Claim(relay_id, expires_at_ms, ())
            connection.execute(
                update(self.table)
                .where(columns.id.in_(row_ids), claimable)
                .values(claimed_by=relay_id, claim_expires_at_ms=expires_at_ms)
            )
            rows = connection.execute(
                select(self.table)
                .where(
                    columns.id.in_(row_ids),
                    columns.claimed_by == relay_id,
                    columns.claim_expires_at_ms == expires_at_ms,
                )
                .order_by(columns.id)
            ).all()
        return Claim(relay_id, expires_at_ms, tuple(message_from_row(row) for row in rows))

    def mark_sent(self, message: OutboxMessage, now_ms: int) -> bool:
        """Record delivery; False if the row was already marked (another relay resent it)."""
        columns = self.table.c
        with self.engine.begin() as connection:
            result = connection.execute(
                update(self.table)
                .where(columns.id == message.row_id, columns.sent_at_ms.is_(None))
                .values(
                    sent_at_ms=now_ms,
                    attempts=columns.attempts + 1,
                    claimed_by=None,
                    claim_expires_at_ms=None,
                )
            )
            return int(result.rowcount) == 1

    def mark_failed(
        self, message: OutboxMessage, claim: Claim, next_attempt_at_ms: int, error_text: str
    ) -> bool:
        """Record a failed attempt and release the lease; False if this claim no longer holds it."""
        columns = self.table.c
        with self.engine.begin() as connection:
            result = connection.execute(
                update(self.table)
                .where(
                    columns.id == message.row_id,
                    columns.sent_at_ms.is_(None),
                    columns.claimed_by == claim.relay_id,
                    columns.claim_expires_at_ms == claim.expires_at_ms,
                )
                .values(
                    attempts=columns.attempts + 1,
                    next_attempt_at_ms=next_attempt_at_ms,
                    last_error=error_text,
                    claimed_by=None,
                    claim_expires_at_ms=None,
                )
            )
            return int(result.rowcount) == 1
