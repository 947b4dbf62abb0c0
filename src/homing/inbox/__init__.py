"""Idempotent inbox: a redelivered message is acknowledged without running its handler again.

On a SQL database (SQLite, PostgreSQL, MySQL/MariaDB) the handler's work and the record "this
message was processed" commit in one transaction, so the effect happens exactly once::

    inbox = Inbox("order-service")         # table homing_inbox; inbox.create_table(engine) once

    @inbox.idempotent(sessionmaker(engine))
    def on_payment(session: Session, message: MessageView) -> None:
        session.add(Payment(...))          # through this session; the inbox commits

    outcome = on_payment(message)          # returns: acknowledge; raises: negatively acknowledge

For handlers without a database, :class:`RedisInbox` / :class:`AsyncRedisInbox` keep the record
in Redis; weaker (see ``_redis`` for exactly how). docs/OUTBOX-INBOX.md has the whole picture.
Needs the ``db`` extra.
"""

from homing.inbox._errors import AlreadyProcessed, InboxError, MessageInProgress
from homing.inbox._outcome import InboxOutcome, default_message_id
from homing.inbox._redis import AsyncRedisInbox, RedisInbox
from homing.inbox._sql import DEFAULT_INBOX_TABLE_NAME, Inbox

__all__ = [
    "DEFAULT_INBOX_TABLE_NAME",
    "AlreadyProcessed",
    "AsyncRedisInbox",
    "Inbox",
    "InboxError",
    "InboxOutcome",
    "MessageInProgress",
    "RedisInbox",
    "default_message_id",
]
