"""What the timer and transaction services need from the broker: a way to publish for real.

The broker's send path implements it: it picks the queue (hashing FIFO message groups), appends
durably and returns only once the messages are durable. Keeping it a protocol lets those services
be tested with a small stand-in and keeps the dependency one-way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from homing.broker.model import Message, SendReceipt

__all__ = ["Publisher"]


class Publisher(Protocol):
    async def publish(self, messages: Sequence[Message]) -> list[SendReceipt]:
        """Store ``messages`` in their topics (all or nothing) and return once they are durable.

        Raises :class:`homing.broker.errors.BrokerError` when they were not stored.
        """
        ...
