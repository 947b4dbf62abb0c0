"""A weaker inbox on Redis, for handlers that have no database of their own.

Theory of operation. One key per ``(consumer, message id)``, ``<namespace>:<consumer>:<id>``,
moves through two states, each with an expiry:

1. ``SET key "processing:<token>" NX PX <lease>``: only one worker gets the lease. That worker
   runs the handler. The others read the key: ``done`` means a duplicate (acknowledge without
   running); ``processing:...`` means someone else is on it right now, so they raise
   :class:`MessageInProgress` and the consumer negatively acknowledges: the other worker may
   still fail, and acknowledging now could lose the message's effect.
2. Handler returned: ``SET key done PX <remember>``. Handler raised: the key is deleted if it
   still holds this worker's token (a compare-and-delete script, so a lease that expired and was
   taken by another worker is left alone), and the error propagates: the redelivery runs the
   handler again.

Why it is weaker than the SQL inbox, exactly. The SQL inbox commits the record and the effects in
one transaction; here the effects and the key are in different systems, so:

- **Crash after the effects, before ``SET done``** (kill -9, Redis unreachable at that moment):
  the lease expires, the redelivery runs the handler again. *Duplicate effect.*
- **Handler slower than the lease**: the lease expires while it runs and a redelivery starts a
  second, concurrent run. *Duplicate effect.* Size the lease above the handler's worst case.
- **Redis forgets the key**: no persistence or ``appendfsync everysec`` across a Redis crash
  (up to about a second of keys lost), failover to a replica that had not received the key
  (replication is asynchronous), an eviction policy that evicts keys with an expiry
  (``volatile-*`` or ``allkeys-*`` under ``maxmemory``), a ``FLUSHALL``. *Duplicate effect.*
- **A redelivery after the ``done`` key expired** (``remember_s``): *duplicate effect.*
- **Crash while processing**: the key stays ``processing`` until the lease expires; deliveries in
  that window are refused with :class:`MessageInProgress`. *Delay*, not loss: the broker retries.

What it never does: acknowledge a message whose handler has not returned successfully. ``done`` is
written only after the handler returns, and every other path raises. So the failure mode is
always a duplicate or a delay, never a lost effect. If ``SET done`` itself fails after the handler
succeeded, the outcome is still reported as processed (the effect happened; asking for a
redelivery would only repeat it), and the failure is logged.

Expiry is Redis's own clock; the worker's clock plays no part.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, TypeVar

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from homing.inbox._errors import MessageInProgress
from homing.inbox._outcome import InboxOutcome, default_message_id

__all__ = ["AsyncRedisInbox", "RedisInbox"]

log = logging.getLogger("homing.inbox")

MessageT = TypeVar("MessageT")
ResultT = TypeVar("ResultT")

DONE: Final = b"done"
PROCESSING_PREFIX: Final = b"processing:"
DEFAULT_NAMESPACE: Final = "homing:inbox"
DEFAULT_LEASE_S: Final = 60.0
DEFAULT_REMEMBER_S: Final = 7 * 24 * 3600.0
MAX_MESSAGE_ID_LENGTH: Final = 128
# A lease can expire between a failed SET NX and the GET that follows; then try again, a few times.
MAX_BEGIN_ROUNDS: Final = 3


class HandlerDecorator(Protocol):
    """What :meth:`RedisInbox.idempotent` returns: keeps the handler's message and result types."""

    def __call__(
        self, handler: Callable[[MessageT], ResultT], /
    ) -> Callable[[MessageT], InboxOutcome[ResultT]]: ...


class AsyncHandlerDecorator(Protocol):
    """What :meth:`AsyncRedisInbox.idempotent` returns."""

    def __call__(
        self, handler: Callable[[MessageT], Awaitable[ResultT]], /
    ) -> Callable[[MessageT], Awaitable[InboxOutcome[ResultT]]]: ...


# KEYS[1] the message key, ARGV[1] the value this worker wrote. Deletes only its own lease.
_RELEASE_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class _RedisInboxBase:
    """What the sync and async variants share: names, limits and the meaning of a key's value."""

    def __init__(self, consumer: str, namespace: str, lease_s: float, remember_s: float) -> None:
        if not consumer or ":" in consumer:
            raise ValueError("consumer must be a non-empty name without ':'")
        if not lease_s > 0 or not remember_s > 0:
            raise ValueError("lease_s and remember_s must be positive")
        self.consumer = consumer
        self.namespace = namespace
        self.lease_ms = max(1, round(lease_s * 1000))
        self.remember_ms = max(1, round(remember_s * 1000))

    def key(self, message_id: str) -> str:
        if not message_id or len(message_id) > MAX_MESSAGE_ID_LENGTH:
            raise ValueError(f"message_id must be 1-{MAX_MESSAGE_ID_LENGTH} characters")
        return f"{self.namespace}:{self.consumer}:{message_id}"

    @staticmethod
    def new_lease() -> bytes:
        return PROCESSING_PREFIX + secrets.token_hex(16).encode()

    def refuse_or_duplicate(self, message_id: str, value: object) -> bool:
        """After losing SET NX: True for a duplicate; raises if another worker holds the lease.

        False if the key vanished in between (expired): the caller tries SET NX again.
        """
        if value is None:
            return False
        if _as_bytes(value) == DONE:
            return True
        raise MessageInProgress(self.consumer, message_id)

    def log_lease_kept(self, message_id: str) -> None:
        log.warning(
            "inbox %s: the handler of message %s failed and its lease could not be released; "
            "redeliveries are refused until the lease expires",
            self.consumer,
            message_id,
            exc_info=True,
        )

    def log_unrecorded(self, message_id: str) -> None:
        log.error(
            "inbox %s: message %s was processed but could not be recorded in Redis; a "
            "redelivery would run it again",
            self.consumer,
            message_id,
            exc_info=True,
        )


def _as_bytes(value: object) -> bytes:
    # A client made with decode_responses=True returns str; the comparison must not depend on it.
    return value.encode() if isinstance(value, str) else bytes(value)  # type: ignore[call-overload]


class RedisInbox(_RedisInboxBase):
    """The Redis inbox for synchronous handlers (``redis.Redis``)."""

    def __init__(
        self,
        client: Redis,
        consumer: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        lease_s: float = DEFAULT_LEASE_S,
        remember_s: float = DEFAULT_REMEMBER_S,
    ) -> None:
        super().__init__(consumer, namespace, lease_s, remember_s)
        self.client = client
        self._release: Any = client.register_script(_RELEASE_SCRIPT)

    def _begin(self, key: str, message_id: str, lease: bytes) -> bool:
        """True if this worker got the lease, False for a duplicate."""
        client: Any = self.client
        for _ in range(MAX_BEGIN_ROUNDS):
            if client.set(key, lease, nx=True, px=self.lease_ms):
                return True
            if self.refuse_or_duplicate(message_id, client.get(key)):
                return False
        raise MessageInProgress(self.consumer, message_id)

    def process(self, message_id: str, work: Callable[[], ResultT]) -> InboxOutcome[ResultT]:
        """Run ``work()`` unless ``message_id`` is done; see the module's list of caveats."""
        key = self.key(message_id)
        lease = self.new_lease()
        if not self._begin(key, message_id, lease):
            return InboxOutcome(message_id, duplicate=True)
        try:
            result = work()
        except BaseException:
            try:
                self._release(keys=[key], args=[lease])
            except RedisError:
                self.log_lease_kept(message_id)
            raise
        try:
            self.client.set(key, DONE, px=self.remember_ms)
        except RedisError:
            self.log_unrecorded(message_id)
        return InboxOutcome(message_id, duplicate=False, result=result)

    def wrap(
        self,
        handler: Callable[[MessageT], ResultT],
        message_id: Callable[[MessageT], str] = default_message_id,
    ) -> Callable[[MessageT], InboxOutcome[ResultT]]:
        """``handler(message)`` made (weakly) idempotent."""

        def handle(message: MessageT) -> InboxOutcome[ResultT]:
            return self.process(message_id(message), lambda: handler(message))

        return handle

    def idempotent(self, message_id: Callable[[Any], str] = default_message_id) -> HandlerDecorator:
        """Decorator form of :meth:`wrap`."""

        def decorate(handler: Callable[[MessageT], ResultT]) -> Callable[[MessageT], InboxOutcome[ResultT]]:
            return self.wrap(handler, message_id)

        return decorate


class AsyncRedisInbox(_RedisInboxBase):
    """The Redis inbox for asyncio handlers (``redis.asyncio.Redis``)."""

    def __init__(
        self,
        client: AsyncRedis,
        consumer: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        lease_s: float = DEFAULT_LEASE_S,
        remember_s: float = DEFAULT_REMEMBER_S,
    ) -> None:
        super().__init__(consumer, namespace, lease_s, remember_s)
        self.client = client
        self._release: Any = client.register_script(_RELEASE_SCRIPT)

    async def _begin(self, key: str, message_id: str, lease: bytes) -> bool:
        client: Any = self.client
        for _ in range(MAX_BEGIN_ROUNDS):
            if await client.set(key, lease, nx=True, px=self.lease_ms):
                return True
            if self.refuse_or_duplicate(message_id, await client.get(key)):
                return False
        raise MessageInProgress(self.consumer, message_id)

    async def process(self, message_id: str, work: Callable[[], Awaitable[ResultT]]) -> InboxOutcome[ResultT]:
        """Await ``work()`` unless ``message_id`` is done; see the module's list of caveats."""
        key = self.key(message_id)
        lease = self.new_lease()
        if not await self._begin(key, message_id, lease):
            return InboxOutcome(message_id, duplicate=True)
        try:
            result = await work()
        except BaseException:
            try:
                await self._release(keys=[key], args=[lease])
            except RedisError:
                self.log_lease_kept(message_id)
            raise
        client: Any = self.client
        try:
            await client.set(key, DONE, px=self.remember_ms)
        except RedisError:
            self.log_unrecorded(message_id)
        return InboxOutcome(message_id, duplicate=False, result=result)

    def wrap(
        self,
        handler: Callable[[MessageT], Awaitable[ResultT]],
        message_id: Callable[[MessageT], str] = default_message_id,
    ) -> Callable[[MessageT], Awaitable[InboxOutcome[ResultT]]]:
        """``async handler(message)`` made (weakly) idempotent."""

        async def handle(message: MessageT) -> InboxOutcome[ResultT]:
            return await self.process(message_id(message), lambda: handler(message))

        return handle

    def idempotent(self, message_id: Callable[[Any], str] = default_message_id) -> AsyncHandlerDecorator:
        """Decorator form of :meth:`wrap`."""

        def decorate(
            handler: Callable[[MessageT], Awaitable[ResultT]],
        ) -> Callable[[MessageT], Awaitable[InboxOutcome[ResultT]]]:
            return self.wrap(handler, message_id)

        return decorate
