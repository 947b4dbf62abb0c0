"""Errors of the inbox, under Homing's one root :class:`~homing.errors.HomingError`."""

from __future__ import annotations

from homing.errors import HomingError

__all__ = ["AlreadyProcessed", "InboxError", "MessageInProgress"]


class InboxError(HomingError):
    """Root of the inbox's errors (and misuse, such as a handler that commits by itself)."""


class AlreadyProcessed(InboxError):
    """The message id has a committed processed-record: this delivery is a duplicate.

    Raised by :meth:`Inbox.claim` inside the caller's transaction. Let it propagate out of the
    transaction (which rolls back, as it must: on PostgreSQL the failed insert has aborted it),
    then acknowledge the message.
    """

    def __init__(self, consumer: str, message_id: str) -> None:
        super().__init__(f"consumer {consumer!r} has already processed message {message_id}")
        self.consumer = consumer
        self.message_id = message_id


class MessageInProgress(InboxError):
    """Redis inbox: another worker holds this message's lease right now (or died holding it).

    Do not acknowledge: the other worker may still fail. Let the consumer negatively acknowledge;
    the message comes back after the broker's retry delay, when the lease has ended one way or
    the other.
    """

    retriable = True

    def __init__(self, consumer: str, message_id: str) -> None:
        super().__init__(f"consumer {consumer!r} is processing message {message_id} elsewhere")
        self.consumer = consumer
        self.message_id = message_id
