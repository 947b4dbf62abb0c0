"""The asyncio producer: sends that succeed only when the broker said OK, and transactions.

Theory of operation
-------------------

``send`` checks the message against what only the broker knows (its body limit, from the settings
reply) and the moment (a delivery time must lie ahead, within ``max_delay_s``), gives it a message
id, and makes *attempts*. An attempt goes to one broker endpoint of the topic's route; plain
messages (NORMAL) are coalesced with concurrent sends of the same topic into one SendMessage
(:mod:`homing.client._batching`), FIFO, delay and transactional messages travel alone (a proxy
routes a multi-message request by its first message only). The attempt's own result entry decides:
OK returns a :class:`SendReceipt`; a retriable failure (a persistence timeout, throttling, an
unreachable broker, a deadline) waits the retry policy's backoff and tries again *with the same
message id*, so a copy stored by an attempt that only looked failed is recognisable downstream;
anything else, or the last attempt's failure, is raised.

The deadline of an attempt (``send_timeout_s``, 10 s) is longer than the broker's flush timeout
(Homing's default is 5 s): a slow fsync then comes back as a retriable status from the broker
instead of the client abandoning an attempt that is about to succeed, and retrying it.

Transactions: ``tx.send`` stores a half message (not delivered) and remembers its transaction id;
leaving the ``async with`` block ends every half message of the transaction with EndTransaction:
COMMIT on a normal exit, ROLLBACK on an exception. If the producer dies in between, the broker
asks (RecoverOrphanedTransactionCommand over Telemetry) and the ``checker`` answers.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import time
import types
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final, Self

from google.protobuf import timestamp_pb2

from homing.client import _tracing
from homing.client._batching import Batcher, Outcome
from homing.client._codec import (
    PROTO_MESSAGE_TYPES,
    CorruptedMessageError,
    ServerSettings,
    build_settings,
    decode_message,
    match_send_results,
    resource,
    timestamp,
)
from homing.client._config import ClientConfig, Endpoints, resolve_config
from homing.client._errors import (
    ClientError,
    ClientStateError,
    InvalidArgumentError,
    NotFoundError,
    ProtocolError,
    status_error,
)
from homing.client._ids import next_message_id
from homing.client._message import (
    Message,
    MessageType,
    ReceivedMessage,
    SendReceipt,
    TransactionResolution,
    validate_topic,
)
from homing.client._retry import DEFAULT_PRODUCER_RETRY, RetryPolicy
from homing.client._session import ClientSession, Route, Timings, client_version
from homing.client._transport import Transport
from homing.protocol import definition_pb2, service_pb2

__all__ = ["AsyncProducer", "AsyncTransaction", "TransactionChecker"]

log = logging.getLogger("homing.client")

TransactionChecker = Callable[[ReceivedMessage], TransactionResolution | Awaitable[TransactionResolution]]
"""Answers a broker's question about a transaction: a function or coroutine function of the message."""

DEFAULT_SEND_TIMEOUT_S: Final = 10.0
DEFAULT_MAX_DELAY_S: Final = 72 * 3600.0
MAX_BATCH_MESSAGES: Final = 1024
MAX_PENDING_CHECKS: Final = 1024
CHECK_CONCURRENCY: Final = 16
MAX_CACHED_RESOURCES: Final = 4096
_BORN_HOST: Final = socket.gethostname()


def _positive(name: str, value: float, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= maximum:
        raise InvalidArgumentError(f"{name} must be > 0 and <= {maximum:g}, not {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class _HalfMessage:
    """A transactional message the broker holds until its transaction ends."""

    topic: str
    message_id: str
    transaction_id: str
    endpoints: Endpoints
    trace_context: str


class AsyncProducer:
    """Sends messages; ``send`` returns only once the broker said OK, and raises otherwise.

    ``config`` is a :class:`ClientConfig`, an endpoints string, or None to read ``HOMING_CLIENT_*``.
    ``topics`` are fetched and announced at start (others on first use). ``checker`` answers the
    broker's questions about transactions this producer left undecided (required for
    :meth:`transaction`). ``retry_policy`` overrides the broker's. ``linger_s``,
    ``max_batch_messages`` and ``max_batch_bytes`` bound how concurrent sends are coalesced;
    ``max_in_flight_requests`` bounds the SendMessage calls outstanding. ``max_delay_s`` is the
    furthest ahead a delivery time may lie (Homing's and RocketMQ's default maximum, 72 h).

    Use ``async with AsyncProducer(...) as producer:`` (or ``start()`` and ``close()``).
    """

    def __init__(
        self,
        config: ClientConfig | str | None = None,
        *,
        topics: Iterable[str] = (),
        checker: TransactionChecker | None = None,
        retry_policy: RetryPolicy | None = None,
        send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
        linger_s: float = 0.001,
        max_batch_messages: int = 256,
        max_batch_bytes: int = 4 * 1024 * 1024,
        max_in_flight_requests: int = 64,
        max_delay_s: float = DEFAULT_MAX_DELAY_S,
        transport: Transport | None = None,
        timings: Timings | None = None,
    ) -> None:
        self._config = resolve_config(config)
        self._topics: list[str] = [validate_topic(topic, sending=True) for topic in topics]
        self._checker = checker
        self._retry_policy = retry_policy
        self._send_timeout_s = _positive("send_timeout_s", send_timeout_s, 3600)
        if isinstance(linger_s, bool) or not 0 <= linger_s <= 1:
            raise InvalidArgumentError(f"linger_s must be 0-1 s, not {linger_s!r}")
        if not 1 <= max_batch_messages <= MAX_BATCH_MESSAGES:
            raise InvalidArgumentError(
                f"max_batch_messages must be 1-{MAX_BATCH_MESSAGES}, not {max_batch_messages}"
            )
        if not 1 <= max_batch_bytes <= 64 * 1024 * 1024:
            raise InvalidArgumentError(f"max_batch_bytes must be 1 byte to 64 MiB, not {max_batch_bytes}")
        if not 1 <= max_in_flight_requests <= 10_000:
            raise InvalidArgumentError(
                f"max_in_flight_requests must be 1-10000, not {max_in_flight_requests}"
            )
        self._max_delay_s = _positive("max_delay_s", max_delay_s, 365 * 24 * 3600.0)
        self._session = ClientSession(
            self._config,
            client_type=definition_pb2.PRODUCER,
            settings_request=self._settings_request,
            initial_settings=ServerSettings(retry=DEFAULT_PRODUCER_RETRY),
            on_command=self._on_command,
            transport=transport,
            timings=timings,
        )
        self._batcher_options = (linger_s, max_batch_messages, max_batch_bytes, max_in_flight_requests)
        self._batcher: Batcher | None = None
        self._endpoint_turn = 0
        self._active_sends = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._checks: set[asyncio.Task[None]] = set()
        self._oneway_tasks: set[asyncio.Future[service_pb2.SendResultEntry]] = set()
        self._check_slots = asyncio.Semaphore(CHECK_CONCURRENCY)
        self._executor: ThreadPoolExecutor | None = None
        self._resources: dict[str, definition_pb2.Resource] = {}

    # ------------------------------------------------------------------ lifecycle

    @property
    def client_id(self) -> str:
        """The ``x-mq-client-id`` this producer is known by on the broker."""
        return self._session.client_id

    async def start(self) -> None:
        """Fetch the routes of ``topics``, open Telemetry and wait for the broker's settings."""
        linger_s, max_messages, max_bytes, max_in_flight = self._batcher_options
        self._batcher = Batcher(
            self._send_batch,
            linger_s=linger_s,
            max_messages=max_messages,
            max_bytes=lambda: min(max_bytes, self._session.settings.max_body_bytes),
            max_in_flight=max_in_flight,
        )
        await self._session.start(self._topics)

    async def close(self) -> None:
        """Let sends already under way finish, then leave. Sends after this raise ClientStateError."""
        if self._closing:
            await self._session.close()
            return
        self._closing = True
        await self._idle.wait()
        if self._batcher is not None:
            await self._batcher.close()
        await asyncio.gather(*self._oneway_tasks, return_exceptions=True)
        for task in list(self._checks):
            task.cancel()
        await asyncio.gather(*self._checks, return_exceptions=True)
        await self._session.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ sending

    async def send(self, message: Message) -> SendReceipt:
        """Send ``message``; returns its receipt once the broker said OK, raises a ClientError otherwise.

        Retriable failures are retried (same message id) as the retry policy says. If the call is
        cancelled, the message may or may not have been stored.
        """
        return await self._send(message, message.message_type)

    async def send_oneway(self, message: Message) -> str:
        """Hand ``message`` over without waiting for the broker: **lossy**.

        Returns the message id once the message is queued for sending. Nobody learns whether it
        was stored: a failure (even a retriable one) is only logged, and the message is not
        retried. Use :meth:`send` for anything that must not be lost.
        """
        self._begin()
        try:
            message_type = message.message_type
            endpoints, route = await self._prepare(message)
            now_ms = _now_ms()
            deliver_at_ms = self._check_message(message, message_type, route, now_ms)
            message_id = message.message_id or next_message_id()
            proto = self._to_proto(message, message_type, message_id, now_ms, deliver_at_ms, None)
            if message_type is MessageType.NORMAL:
                assert self._batcher is not None
                future = self._batcher.submit(message.topic, endpoints, proto)
                future.add_done_callback(_log_oneway_outcome)
            else:
                task = asyncio.ensure_future(self._send_alone(endpoints, proto))
                self._oneway_tasks.add(task)
                task.add_done_callback(self._oneway_tasks.discard)
                task.add_done_callback(_log_oneway_outcome)
            return message_id
        finally:
            self._end()

    async def recall(self, receipt: SendReceipt) -> None:
        """Cancel a delay message before it is delivered (``receipt.recall_handle`` must be set)."""
        if not receipt.recall_handle:
            raise InvalidArgumentError(
                "this receipt has no recall handle (only delay messages can be recalled)"
            )
        self._session.require_open()
        access_point = self._config.access_point
        response = await self._session.invoke(
            self._session.stub(access_point).RecallMessage,
            service_pb2.RecallMessageRequest(
                topic=resource(receipt.topic, self._config.namespace), recall_handle=receipt.recall_handle
            ),
            what=f"RecallMessage at {access_point}",
        )
        if response.status.code != definition_pb2.OK:
            raise status_error(response.status)

    def transaction(self) -> AsyncTransaction:
        """A transaction: ``async with producer.transaction() as tx: await tx.send(message)``.

        Commits on a normal exit, rolls back on an exception. Needs a ``checker``: without one, a
        producer that dies between send and commit leaves the broker asking nobody.
        """
        if self._checker is None:
            raise ClientStateError("transactions need a checker: AsyncProducer(..., checker=...)")
        self._session.require_open()
        return AsyncTransaction(self)

    def _begin(self) -> None:
        if self._closing:
            raise ClientStateError("the producer is closed")
        self._session.require_open()
        self._active_sends += 1
        self._idle.clear()

    def _end(self) -> None:
        self._active_sends -= 1
        if self._active_sends == 0:
            self._idle.set()

    async def _send(self, message: Message, message_type: MessageType) -> SendReceipt:
        if not isinstance(message, Message):
            raise InvalidArgumentError(f"expected a homing Message, not {type(message).__name__}")
        self._begin()
        try:
            message_id = message.message_id or next_message_id()
            with _tracing.send_span(message, message_type, message_id, self._config.namespace) as traceparent:
                endpoints, route = await self._prepare(message)
                now_ms = _now_ms()
                deliver_at_ms = self._check_message(message, message_type, route, now_ms)
                proto = self._to_proto(message, message_type, message_id, now_ms, deliver_at_ms, traceparent)
                return await self._attempts(message, message_type, proto, route, endpoints)
        finally:
            self._end()

    async def _attempts(
        self,
        message: Message,
        message_type: MessageType,
        proto: definition_pb2.Message,
        route: Route,
        endpoints: Endpoints,
    ) -> SendReceipt:
        policy = self._retry_policy or self._session.settings.retry
        # A retried half message would be a second transaction; the broker's check settles the first.
        max_attempts = 1 if message_type is MessageType.TRANSACTION else policy.max_attempts
        attempt = 1
        while True:
            try:
                if message_type is MessageType.NORMAL:
                    assert self._batcher is not None
                    entry = await self._batcher.send(message.topic, endpoints, proto)
                else:
                    entry = await self._send_alone(endpoints, proto)
                return SendReceipt(
                    message_id=proto.system_properties.message_id,
                    topic=message.topic,
                    offset=entry.offset,
                    endpoint=str(endpoints),
                    transaction_id=entry.transaction_id or None,
                    recall_handle=entry.recall_handle or None,
                )
            except ClientError as error:
                if not error.retriable or attempt >= max_attempts or not self._session.is_open:
                    if attempt > 1:
                        message_id = proto.system_properties.message_id
                        error.add_note(f"gave up after {attempt} attempts (message id {message_id})")
                    raise
                delay_s = policy.backoff_s(attempt)
                log.info(
                    "send of %s to %r failed (attempt %d of %d), retrying in %.3f s: %s",
                    proto.system_properties.message_id,
                    message.topic,
                    attempt,
                    max_attempts,
                    delay_s,
                    error,
                )
                await asyncio.sleep(delay_s)
                attempt += 1
                endpoints = self._pick_endpoints(route, message)
                await self._session.ensure_ready(endpoints)

    async def _prepare(self, message: Message) -> tuple[Endpoints, Route]:
        """The topic's route and a broker endpoint that has answered our settings."""
        topic = message.topic
        route = await self._session.route(topic)
        if topic not in self._topics:
            # Announce the topic, so that the broker knows whom to ask about its transactions.
            self._topics.append(topic)
            await self._session.resend_settings()
        endpoints = self._pick_endpoints(route, message)
        await self._session.ensure_ready(endpoints)
        return endpoints, route

    def _pick_endpoints(self, route: Route, message: Message) -> Endpoints:
        candidates = route.writable_endpoints()
        if not candidates:
            raise NotFoundError(
                definition_pb2.TOPIC_NOT_FOUND,
                "TOPIC_NOT_FOUND",
                f"topic {route.topic!r} has no writable queue",
                False,
            )
        if message.message_group is not None:
            # One group, one endpoint: the broker behind it keeps the group's order.
            return candidates[zlib.crc32(message.message_group.encode()) % len(candidates)]
        self._endpoint_turn += 1
        return candidates[self._endpoint_turn % len(candidates)]

    def _check_message(
        self, message: Message, message_type: MessageType, route: Route, now_ms: int
    ) -> int | None:
        """What only the broker's settings and the clock can tell; returns the delivery time (ms)."""
        settings = self._session.settings
        if len(message.body) > settings.max_body_bytes:
            raise InvalidArgumentError(
                f"body is {len(message.body)} bytes; the broker accepts at most {settings.max_body_bytes}"
            )
        if settings.validate_message_type and not route.accepts(PROTO_MESSAGE_TYPES[message_type]):
            raise InvalidArgumentError(
                f"topic {message.topic!r} does not accept {message_type.value} messages (see its route)"
            )
        if message.delay_s is not None:
            deliver_at_ms: int | None = now_ms + round(message.delay_s * 1000)
        else:
            deliver_at_ms = message.deliver_at_ms
        if deliver_at_ms is not None:
            ahead_s = (deliver_at_ms - now_ms) / 1000
            if ahead_s <= 0:
                raise InvalidArgumentError(f"deliver_at is {-ahead_s:.3f} s in the past")
            if ahead_s > self._max_delay_s:
                raise InvalidArgumentError(
                    f"deliver_at is {ahead_s:.0f} s ahead; the maximum delay is {self._max_delay_s:.0f} s"
                )
        return deliver_at_ms

    def _to_proto(
        self,
        message: Message,
        message_type: MessageType,
        message_id: str,
        now_ms: int,
        deliver_at_ms: int | None,
        traceparent: str | None,
    ) -> definition_pb2.Message:
        # Built in one constructor call per message, with the topic's Resource made once: the
        # field-by-field way (a Timestamp object, CopyFrom) cost several times as much per send.
        system = definition_pb2.SystemProperties(
            message_id=message_id,
            body_encoding=definition_pb2.IDENTITY,
            message_type=PROTO_MESSAGE_TYPES[message_type],
            born_timestamp=_born_timestamp(now_ms),
            born_host=_BORN_HOST,
        )
        if message.keys:
            system.keys.extend(message.keys)
        if message.tag is not None:
            system.tag = message.tag
        if message.message_group is not None:
            system.message_group = message.message_group
        if deliver_at_ms is not None:
            system.delivery_timestamp.CopyFrom(timestamp(deliver_at_ms))
        if traceparent:
            system.trace_context = traceparent
        proto = definition_pb2.Message(
            topic=self._topic_resource(message.topic), system_properties=system, body=message.body
        )
        if message.properties:
            proto.user_properties.update(message.properties)
        return proto

    def _topic_resource(self, topic: str) -> definition_pb2.Resource:
        found = self._resources.get(topic)
        if found is None:
            if len(self._resources) >= MAX_CACHED_RESOURCES:
                self._resources.clear()
            found = self._resources[topic] = resource(topic, self._config.namespace)
        return found

    async def _send_alone(
        self, endpoints: Endpoints, proto: definition_pb2.Message
    ) -> service_pb2.SendResultEntry:
        (outcome,) = await self._send_batch(endpoints, [proto])
        if isinstance(outcome, ClientError):
            raise outcome
        return outcome

    async def _send_batch(
        self, endpoints: Endpoints, messages: Sequence[definition_pb2.Message]
    ) -> list[Outcome]:
        try:
            response = await self._session.send_message(
                endpoints,
                service_pb2.SendMessageRequest(messages=messages),
                timeout_s=self._send_timeout_s,
                what=f"SendMessage of {len(messages)} message(s) to {endpoints}",
            )
        except ClientError as error:
            return [error] * len(messages)
        return match_send_results([message.system_properties.message_id for message in messages], response)

    def _settings_request(self) -> definition_pb2.Settings:
        return build_settings(
            client_type=definition_pb2.PRODUCER,
            access_point=self._config.access_point,
            request_timeout_s=self._config.request_timeout_s,
            retry=self._retry_policy or DEFAULT_PRODUCER_RETRY,
            namespace=self._config.namespace,
            version=client_version(),
            publishing_topics=self._topics,
        )

    # ------------------------------------------------------------------ transactions

    async def _end_transaction(
        self,
        half: _HalfMessage,
        resolution: TransactionResolution,
        source: definition_pb2.TransactionSource.ValueType,
    ) -> None:
        """EndTransaction, retried on retriable failures (ending twice the same way is harmless)."""
        assert resolution is not TransactionResolution.UNKNOWN
        request = service_pb2.EndTransactionRequest(
            topic=resource(half.topic, self._config.namespace),
            message_id=half.message_id,
            transaction_id=half.transaction_id,
            resolution=definition_pb2.COMMIT
            if resolution is TransactionResolution.COMMIT
            else definition_pb2.ROLLBACK,
            source=source,
            trace_context=half.trace_context,
        )
        policy = self._retry_policy or self._session.settings.retry
        attempt = 1
        while True:
            try:
                response = await self._session.invoke(
                    self._session.stub(half.endpoints).EndTransaction,
                    request,
                    what=f"EndTransaction ({resolution.value}) of {half.message_id} at {half.endpoints}",
                )
                if response.status.code != definition_pb2.OK:
                    raise status_error(response.status)
                return
            except ClientError as error:
                if not error.retriable or attempt >= policy.max_attempts or not self._session.is_open:
                    raise
                await asyncio.sleep(policy.backoff_s(attempt))
                attempt += 1

    async def _on_command(self, endpoints: Endpoints, command: service_pb2.TelemetryCommand) -> None:
        if command.WhichOneof("command") != "recover_orphaned_transaction_command":
            return
        if len(self._checks) >= MAX_PENDING_CHECKS:
            log.warning(
                "dropping a transaction check: %d checks pending (the broker asks again)", len(self._checks)
            )
            return
        task = asyncio.ensure_future(self._check(endpoints, command.recover_orphaned_transaction_command))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _check(
        self, endpoints: Endpoints, command: service_pb2.RecoverOrphanedTransactionCommand
    ) -> None:
        async with self._check_slots:
            try:
                message = decode_message(command.message, endpoints, command.transaction_id)
            except CorruptedMessageError as error:
                log.error("cannot answer a transaction check: %s", error)
                return
            if self._checker is None:
                log.warning(
                    "the broker asks about transaction %s of %r but this producer has no checker",
                    command.transaction_id,
                    message.topic,
                )
                return
            try:
                resolution = await self._run_checker(message)
            except Exception:
                log.exception(
                    "the transaction checker failed for message %s (the broker asks again)",
                    message.message_id,
                )
                return
            if resolution is TransactionResolution.UNKNOWN:
                return
            half = _HalfMessage(
                message.topic,
                message.message_id,
                command.transaction_id,
                endpoints,
                message.trace_context or "",
            )
            try:
                await self._end_transaction(half, resolution, definition_pb2.SOURCE_SERVER_CHECK)
            except ClientError as error:
                log.warning("answering the check of transaction %s failed: %s", command.transaction_id, error)

    async def _run_checker(self, message: ReceivedMessage) -> TransactionResolution:
        checker = self._checker
        assert checker is not None
        if inspect.iscoroutinefunction(checker):
            result: object = await checker(message)
        else:
            # A plain function may block (a database query): keep it off the event loop.
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="homing-checker")
            result = await asyncio.get_running_loop().run_in_executor(self._executor, checker, message)
            if inspect.isawaitable(result):
                result = await result
        if not isinstance(result, TransactionResolution):
            raise TypeError(f"the checker returned {result!r}, not a TransactionResolution")
        return result


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _born_timestamp(ms: int) -> timestamp_pb2.Timestamp:
    seconds, milliseconds = divmod(ms, 1000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=milliseconds * 1_000_000)


def _log_oneway_outcome(future: asyncio.Future[service_pb2.SendResultEntry]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("a one-way send failed (nobody was waiting for it): %s", future.exception())


class AsyncTransaction:
    """Messages sent with :meth:`send` are delivered only if the transaction commits.

    ``async with``: a normal exit commits, an exception rolls back (and propagates). :meth:`commit`
    and :meth:`rollback` end it explicitly; a transaction ends once.
    """

    def __init__(self, producer: AsyncProducer) -> None:
        self._producer = producer
        self._halves: list[_HalfMessage] = []
        self._state = "open"

    @property
    def state(self) -> str:
        """``open``, ``committed``, ``rolled back`` or ``failed`` (the end was not confirmed)."""
        return self._state

    async def send(self, message: Message) -> SendReceipt:
        """Store ``message`` as part of the transaction (not delivered until it commits). Not retried."""
        if self._state != "open":
            raise ClientStateError(f"the transaction is {self._state}")
        if message.message_type is not MessageType.NORMAL:
            raise InvalidArgumentError(
                "a transactional message cannot have a message_group or a delivery time"
            )
        receipt = await self._producer._send(message, MessageType.TRANSACTION)
        if not receipt.transaction_id:
            raise ProtocolError(f"the broker stored {receipt.message_id} without giving a transaction id")
        self._halves.append(
            _HalfMessage(
                message.topic,
                receipt.message_id,
                receipt.transaction_id,
                Endpoints.parse(receipt.endpoint),
                "",
            )
        )
        return receipt

    async def commit(self) -> None:
        """Deliver every message of the transaction."""
        await self._end(TransactionResolution.COMMIT)

    async def rollback(self) -> None:
        """Discard every message of the transaction."""
        await self._end(TransactionResolution.ROLLBACK)

    async def _end(self, resolution: TransactionResolution) -> None:
        if self._state != "open":
            raise ClientStateError(f"the transaction is already {self._state}")
        self._state = "ending"
        errors: list[ClientError] = []
        for half in self._halves:
            try:
                await self._producer._end_transaction(half, resolution, definition_pb2.SOURCE_CLIENT)
            except ClientError as error:
                errors.append(error)
        if errors:
            self._state = "failed"
            first = errors[0]
            first.add_note(
                f"{len(errors)} of {len(self._halves)} message(s) could not be ended ({resolution.value}); "
                "the broker will ask the checker about them"
            )
            raise first
        self._state = "committed" if resolution is TransactionResolution.COMMIT else "rolled back"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> None:
        if self._state != "open":
            return
        if exc_type is None:
            await self.commit()
            return
        try:
            await self.rollback()
        except ClientError as error:
            # Never hide the exception that caused the rollback; the broker's check settles it.
            log.warning("rolling back after %s failed: %s", exc_type.__name__, error)
