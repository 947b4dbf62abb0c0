"""The outbox table, column by column.

One table holds three kinds of row, told apart by ``kind``:

``message``
    A message to deliver. The relay claims it, sends it, and sets ``sent_at_ms`` after the broker's
    OK. Never deleted before that; :meth:`Outbox.purge` removes delivered rows after a retention.
``witness``
    Proof that a business transaction committed, for a transactional (half) message that the
    producer sent itself. The relay never sends it; the transaction checker answers COMMIT for it.
``fence``
    Written by the transaction checker when it answers ROLLBACK, under the same unique
    ``message_id``: a business transaction that later tries to commit the witness fails on the
    unique key instead of committing a change whose message the broker has discarded.

=====================  ==================  =====================================================
column                 type                meaning
=====================  ==================  =====================================================
id                     big integer, PK     insertion order; claims and FIFO groups follow it
message_id             text(128), unique   stable message id, made at insert (see ``_ids``)
kind                   text(16)            ``message``, ``witness`` or ``fence``
topic                  text(255)           destination topic (empty for a fence)
body                   bytes               message body (PostgreSQL bytea, MySQL LONGBLOB)
tag                    text(1024), null    message tag
message_keys           text (JSON)         JSON list of strings (``keys`` is reserved in MySQL)
properties             text (JSON)         JSON object of string to string
message_group          text(255), null     FIFO group: sent one at a time, in ``id`` order
deliver_at_ms          big integer, null   delayed delivery time, ms since the epoch
created_at_ms          big integer         when the row was written, by the writer's clock
attempts               integer             send attempts finished (failed ones, plus the OK one)
next_attempt_at_ms     big integer         not claimed before this time (backoff after failures)
claimed_by             text(255), null     relay holding the lease
claim_expires_at_ms    big integer, null   the lease ends; then any relay may claim the row again
sent_at_ms             big integer, null   when the broker said OK; null until delivered
last_error             text, null          the last send failure, for operators
=====================  ==================  =====================================================

Times are integer milliseconds from Homing's :class:`~homing.clock.Clock` rather than database
timestamps: they compare without time zones, and tests move them with a fake clock. JSON is kept
in text columns so that the three databases store and return exactly the same bytes.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql

__all__ = [
    "KIND_FENCE",
    "KIND_MESSAGE",
    "KIND_WITNESS",
    "MAX_GROUP_LENGTH",
    "MAX_MESSAGE_ID_LENGTH",
    "MAX_TAG_LENGTH",
    "MAX_TOPIC_LENGTH",
    "outbox_table",
]

KIND_MESSAGE: Final = "message"
KIND_WITNESS: Final = "witness"
KIND_FENCE: Final = "fence"

MAX_MESSAGE_ID_LENGTH: Final = 128  # the broker's limit
MAX_TOPIC_LENGTH: Final = 255
MAX_TAG_LENGTH: Final = 1024  # the broker's limit
# Indexed: 255 four-byte characters stay inside InnoDB's 3072-byte index key limit.
MAX_GROUP_LENGTH: Final = 255
MAX_RELAY_ID_LENGTH: Final = 255

# SQLite makes only an INTEGER PRIMARY KEY an alias of its rowid (and so auto-incrementing).
_ROW_ID = BigInteger().with_variant(Integer(), "sqlite")
# SQLAlchemy's LargeBinary is a 64 KiB BLOB on MySQL; message bodies may be megabytes.
_BODY = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")


def outbox_table(metadata: MetaData, name: str) -> Table:
    """Define the outbox table ``name`` in ``metadata`` (which may be the application's own)."""
    return Table(
        name,
        metadata,
        Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        Column("message_id", String(MAX_MESSAGE_ID_LENGTH), nullable=False, unique=True),
        Column("kind", String(16), nullable=False),
        Column("topic", String(MAX_TOPIC_LENGTH), nullable=False),
        Column("body", _BODY, nullable=False),
        Column("tag", String(MAX_TAG_LENGTH)),
        Column("message_keys", Text, nullable=False),
        Column("properties", Text, nullable=False),
        Column("message_group", String(MAX_GROUP_LENGTH)),
        Column("deliver_at_ms", BigInteger),
        Column("created_at_ms", BigInteger, nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("next_attempt_at_ms", BigInteger, nullable=False),
        Column("claimed_by", String(MAX_RELAY_ID_LENGTH)),
        Column("claim_expires_at_ms", BigInteger),
        Column("sent_at_ms", BigInteger),
        Column("last_error", Text),
        # The relay's question: undelivered messages that are due, oldest first.
        Index(f"ix_{name}_due", "kind", "sent_at_ms", "next_attempt_at_ms"),
        # The FIFO question: is there an older undelivered message in this group?
        Index(f"ix_{name}_group", "message_group", "sent_at_ms", "id"),
        # Row locks and transactions need InnoDB; a MyISAM default would silently break both.
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
