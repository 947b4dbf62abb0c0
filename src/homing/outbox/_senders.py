"""What the relay sends through: Homing's asyncio producer, or a test double.

A sender factory takes the broker endpoint (or None) and returns an async context manager that
yields a ``send`` coroutine function (:data:`homing.outbox.Send`); the context manager owns the
connection. ``homing outbox relay --sender MODULE:FACTORY`` accepts any such factory, which is how
the command is tested without a broker and how a deployment plugs in its own transport.
"""

from __future__ import annotations

import copy
import importlib
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

from homing.errors import HomingError
from homing.outbox._outbox import OutboxMessage
from homing.outbox._relay import Send

__all__ = [
    "CLIENT_MODULE",
    "ClientUnavailable",
    "RecordingSender",
    "SenderFactory",
    "import_client",
    "producer_sender",
]

CLIENT_MODULE: Final = "homing.client"

SenderFactory = Callable[[str | None], AbstractAsyncContextManager[Send]]


class ClientUnavailable(HomingError):
    """The asyncio client (:data:`CLIENT_MODULE`) is not installed or not built yet."""


def import_client() -> Any:
    """:data:`CLIENT_MODULE`, imported now; :class:`ClientUnavailable` if it is missing."""
    try:
        return importlib.import_module(CLIENT_MODULE)
    except ModuleNotFoundError as error:
        if error.name in (CLIENT_MODULE, CLIENT_MODULE.rpartition(".")[0]):
            raise ClientUnavailable(
                f"the asyncio client is not built yet ({CLIENT_MODULE} is missing)"
            ) from None
        raise


@asynccontextmanager
async def producer_sender(endpoint: str | None) -> AsyncIterator[Send]:
    """Send through ``homing.client.AsyncProducer`` connected to ``endpoint``.

    The client is imported here, when a relay starts, so that the outbox does not depend on it at
    import time. Each row becomes a ``Message`` carrying the row's ``message_id``, so that a
    resend is recognisable downstream as the same message. A delivery time that has already
    passed (the row waited in the outbox) is dropped: the message is due, and the producer
    refuses delivery times in the past.
    """
    if not endpoint:
        raise ClientUnavailable("a broker endpoint is needed to send through the Homing client")
    client = import_client()
    async with client.AsyncProducer(endpoint) as producer:

        async def send(message: OutboxMessage) -> object:
            deliver_at_ms = message.deliver_at_ms
            if deliver_at_ms is not None and deliver_at_ms <= time.time_ns() // 1_000_000:
                deliver_at_ms = None
            outgoing = client.Message(
                message.topic,
                message.body,
                tag=message.tag,
                keys=list(message.keys),
                properties=dict(message.properties),
                message_group=message.message_group,
                deliver_at=None if deliver_at_ms is None else deliver_at_ms / 1000,
                message_id=message.message_id,
            )
            receipt: object = await producer.send(outgoing)
            return receipt

        yield send


class RecordingSender:
    """A ``send`` test double: records every call, succeeds unless told to fail.

    Thread-safe, so relays running in several threads may share one. ``attempts`` lists every
    call, ``sent`` the calls that succeeded. :meth:`fail_next` makes the next calls fail;
    ``failing_topics`` makes every message of those topics fail until removed. ``after_send``
    runs after a successful send is recorded and before the relay sees the OK: raising from it
    (a ``BaseException`` that the relay does not catch) simulates a relay killed between the
    broker's OK and marking the row.
    """

    def __init__(self, after_send: Callable[[OutboxMessage], object] | None = None) -> None:
        self._lock = threading.Lock()
        self.attempts: list[OutboxMessage] = []
        self.sent: list[OutboxMessage] = []
        self.after_send = after_send
        self._failures_left = 0
        self._failure: Exception = ConnectionError("simulated send failure")
        self.failing_topics: set[str] = set()

    def fail_next(self, count: int = 1, error: Exception | None = None) -> None:
        """Make the next ``count`` calls raise ``error``."""
        with self._lock:
            self._failures_left = count
            if error is not None:
                self._failure = error

    def sent_counts(self) -> Counter[str]:
        """How often each message id was sent successfully."""
        with self._lock:
            return Counter(message.message_id for message in self.sent)

    async def __call__(self, message: OutboxMessage) -> str:
        with self._lock:
            self.attempts.append(message)
            if self._failures_left > 0 or message.topic in self.failing_topics:
                self._failures_left = max(0, self._failures_left - 1)
                # A copy: re-raising one instance would chain every traceback onto it.
                raise copy.copy(self._failure)
            self.sent.append(message)
        if self.after_send is not None:
            self.after_send(message)
        return message.message_id
