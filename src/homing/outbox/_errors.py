"""Errors of the outbox, under Homing's one root :class:`~homing.errors.HomingError`."""

from __future__ import annotations

from homing.errors import HomingError

__all__ = ["InvalidOutboxMessage", "OutboxError", "TransactionFenced"]


class OutboxError(HomingError):
    """Root of the outbox's errors."""


class InvalidOutboxMessage(OutboxError, ValueError):
    """A message the broker would refuse (empty topic, oversized body...). Nothing was written."""


class TransactionFenced(OutboxError):
    """The transaction checker has already answered ROLLBACK for this message id.

    Raised by :meth:`Outbox.add_witness` when the checker's fence row holds the id. The business
    transaction must roll back: the broker has discarded (or will discard) the half message, so
    committing the business change would commit it without its message.
    """
