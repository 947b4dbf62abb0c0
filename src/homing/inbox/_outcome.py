"""What an inbox-wrapped handler returns, and how a message's id is found."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["InboxOutcome", "default_message_id"]

ResultT = TypeVar("ResultT")


@dataclass(frozen=True, slots=True)
class InboxOutcome(Generic[ResultT]):
    """A wrapped handler's normal return: it ran (``result`` is its value) or it was a duplicate.

    Both mean "acknowledge the message". A handler failure is not an outcome: it raises, so that
    the consumer negatively acknowledges and the message is redelivered.
    """

    message_id: str
    duplicate: bool
    result: ResultT | None = None


def default_message_id(message: object) -> str:
    """``message.message_id``: what Homing's and RocketMQ's message views carry."""
    value = getattr(message, "message_id", None)
    if not isinstance(value, str) or not value:
        raise TypeError(
            f"{type(message).__name__} has no message_id string; pass message_id= to the inbox "
            "to say which id (or business key) identifies the message"
        )
    return value
