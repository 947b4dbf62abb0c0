"""The asyncio push consumer: handlers run per message; ack after success, nack after an exception.

Theory of operation
-------------------

Every ``assignment_interval_s`` (5 s) the consumer asks the broker which queues of each subscribed
topic to read (QueryAssignment; a Homing or Apache broker hands a normal group one "any queue"
assignment per broker, a FIFO group every queue). Each assigned queue gets a *receive loop* that
long-polls ReceiveMessage with ``auto_renew``: the broker keeps the received messages invisible,
renewing as needed, until they are acked or nacked, or until it learns the client is gone.

Concurrency is bounded by ``max_concurrency``: a receive loop first reserves free *slots*, asks
for at most that many messages, and each message holds its slot until its handler has finished
and its ack or nack was sent. So the consumer never holds more messages than it can run.

A message is acked only after its handler returned. A handler that raises gets the message
*nacked*: ChangeInvisibleDuration to the retry policy's backoff for its delivery attempt, so the
broker delivers it again later and, after the group's maximum attempts, moves it to the
dead-letter queue. For a FIFO group (the broker's settings say so) the messages of one message
group run one after another, in order; when one fails, the ones behind it in this client are
nacked with the same backoff rather than run out of order.

``close`` stops receiving, lets the handlers that are running finish (up to
``shutdown_timeout_s``, then cancels them), acks or nacks what finished, and leaves every message
that was not processed unacknowledged: the broker delivers it again (after NotifyClientTermination
it stops renewing them).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import types
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Self, TypeVar, overload

from homing.client import _tracing
from homing.client._codec import ServerSettings, SubscriptionRequest, build_settings, decode_message, resource
from homing.client._config import ClientConfig, Endpoints, resolve_config
from homing.client._consumer import AckCoalescer, ConsumerOperations
from homing.client._errors import ClientError, ClientStateError, InvalidArgumentError, status_error
from homing.client._message import FilterExpression, ReceivedMessage, validate_group, validate_topic
from homing.client._retry import DEFAULT_CONSUMER_RETRY, RetryPolicy
from homing.client._session import ClientSession, Timings, client_version
from homing.client._transport import Transport
from homing.protocol import definition_pb2, service_pb2

__all__ = ["AsyncPushConsumer", "MessageHandler"]

log = logging.getLogger("homing.client")

MessageHandler = Callable[[ReceivedMessage], object]
"""A function or coroutine function of the message; returning means success, raising means failure."""
_Handler = TypeVar("_Handler", bound=MessageHandler)

MAX_CONCURRENCY: Final = 10_000
ACK_ATTEMPTS: Final = 3
RECEIVE_FAILURE_BACKOFF_MAX_S: Final = 10.0


class _Slots:
    """Counts the messages the consumer may still take; receive loops wait for a free slot."""

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._available = asyncio.Event()
        self._available.set()

    async def reserve(self, at_most: int) -> int:
        while self._free <= 0:
            self._available.clear()
            await self._available.wait()
        taken = min(self._free, at_most)
        self._free -= taken
        return taken

    def release(self, count: int) -> None:
        self._free += count
        if self._free > 0:
            self._available.set()


@dataclass(frozen=True, slots=True)
class _Subscription:
    topic: str
    expression: FilterExpression
    handler: MessageHandler


class AsyncPushConsumer:
    """Runs a handler for every message of the subscribed topics; acks on return, nacks on exception.

    Subscribe before starting, with a decorator or an argument::

        consumer = AsyncPushConsumer(config, group="billing")

        @consumer.subscribe("orders", tag="paid")
        async def on_paid(message: ReceivedMessage) -> None: ...

        async with consumer:
            await stop_event.wait()

    Coroutine functions run on the event loop; plain functions run in a thread pool of
    ``max_concurrency`` threads. ``retry_policy`` overrides the broker's redelivery backoff.
    """

    def __init__(
        self,
        config: ClientConfig | str | None = None,
        *,
        group: str,
        max_concurrency: int = 20,
        retry_policy: RetryPolicy | None = None,
        shutdown_timeout_s: float = 30.0,
        assignment_interval_s: float = 5.0,
        transport: Transport | None = None,
        timings: Timings | None = None,
    ) -> None:
        self._config = resolve_config(config)
        self._group = validate_group(group)
        if isinstance(max_concurrency, bool) or not 1 <= max_concurrency <= MAX_CONCURRENCY:
            raise InvalidArgumentError(
                f"max_concurrency must be 1-{MAX_CONCURRENCY}, not {max_concurrency!r}"
            )
        if not 0 <= shutdown_timeout_s <= 3600:
            raise InvalidArgumentError(f"shutdown_timeout_s must be 0-3600, not {shutdown_timeout_s!r}")
        if not 0 < assignment_interval_s <= 600:
            raise InvalidArgumentError(
                f"assignment_interval_s must be > 0 and <= 600, not {assignment_interval_s!r}"
            )
        self._max_concurrency = max_concurrency
        self._retry_policy = retry_policy
        self._shutdown_timeout_s = float(shutdown_timeout_s)
        self._assignment_interval_s = float(assignment_interval_s)
        self._subscriptions: dict[str, _Subscription] = {}
        self._session = ClientSession(
            self._config,
            client_type=definition_pb2.PUSH_CONSUMER,
            settings_request=self._settings_request,
            initial_settings=ServerSettings(retry=DEFAULT_CONSUMER_RETRY),
            group=self._group,
            transport=transport,
            timings=timings,
        )
        self._operations = ConsumerOperations(self._session, self._group)
        self._acks = AckCoalescer(self._operations)
        self._slots = _Slots(max_concurrency)
        self._receive_loops: dict[tuple[str, str, int, str], asyncio.Task[None]] = {}
        self._assignment_task: asyncio.Task[None] | None = None
        self._handling: set[asyncio.Task[bool]] = set()
        self._fifo_backlogs: dict[tuple[str, str], collections.deque[ReceivedMessage]] = {}
        self._fifo_workers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._stopping = False
        self._started = False
        self._executor: ThreadPoolExecutor | None = None

    @property
    def group(self) -> str:
        return self._group

    @property
    def client_id(self) -> str:
        return self._session.client_id

    # ------------------------------------------------------------------ subscriptions

    @overload
    def subscribe(
        self, topic: str, handler: _Handler, *, tag: str | None = None, sql: str | None = None
    ) -> _Handler: ...

    @overload
    def subscribe(
        self, topic: str, handler: None = None, *, tag: str | None = None, sql: str | None = None
    ) -> Callable[[_Handler], _Handler]: ...

    def subscribe(
        self, topic: str, handler: _Handler | None = None, *, tag: str | None = None, sql: str | None = None
    ) -> _Handler | Callable[[_Handler], _Handler]:
        """Run ``handler`` for the messages of ``topic`` matching ``tag`` (default ``"*"``) or ``sql``.

        Without ``handler``, returns a decorator. One handler per topic; subscribe before start.
        """
        if self._started:
            raise ClientStateError("subscribe before the consumer starts")
        validate_topic(topic, sending=False)
        if tag is not None and sql is not None:
            raise InvalidArgumentError("give tag or sql, not both")
        expression = FilterExpression.sql92(sql) if sql is not None else FilterExpression.tag(tag or "*")
        if topic in self._subscriptions:
            raise InvalidArgumentError(f"topic {topic!r} already has a handler")

        def register(function: _Handler) -> _Handler:
            if not callable(function):
                raise InvalidArgumentError("a handler must be callable")
            self._subscriptions[topic] = _Subscription(topic, expression, function)
            return function

        if handler is None:
            return register
        return register(handler)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Fetch routes, open Telemetry, wait for the broker's settings and start receiving."""
        if not self._subscriptions:
            raise ClientStateError("subscribe to at least one topic before starting")
        self._started = True
        await self._session.start(self._subscriptions)
        try:
            await self._refresh_assignments(raise_errors=True)
        except BaseException:
            await self.close()
            raise
        self._assignment_task = self._session.spawn(self._assignment_loop(), "assignments")

    async def close(self) -> None:
        """Stop receiving, let running handlers finish (bounded), then leave. Idempotent."""
        if self._stopping:
            await self._session.close()
            return
        self._stopping = True
        if self._assignment_task is not None:
            self._assignment_task.cancel()
        loops = list(self._receive_loops.values())
        self._receive_loops.clear()
        for loop_task in loops:
            loop_task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        running: set[asyncio.Task[object]] = set(self._handling) | set(self._fifo_workers.values())
        if running:
            _, late = await asyncio.wait(running, timeout=self._shutdown_timeout_s)
            if late:
                log.warning(
                    "%d handler(s) still running after %g s: cancelled, their messages are not acked",
                    len(late),
                    self._shutdown_timeout_s,
                )
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        await self._acks.wait_idle()
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

    # ------------------------------------------------------------------ assignments and receiving

    async def _assignment_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._assignment_interval_s)
            await self._refresh_assignments(raise_errors=False)

    async def _refresh_assignments(self, *, raise_errors: bool) -> None:
        for topic in self._subscriptions:
            try:
                queues = await self._query_assignment(topic)
            except ClientError as error:
                if raise_errors:
                    raise
                log.warning("QueryAssignment of %r failed (keeping the current queues): %s", topic, error)
                continue
            wanted = {_queue_key(topic, queue): queue for queue in queues}
            for key in [key for key in self._receive_loops if key[0] == topic and key not in wanted]:
                self._receive_loops.pop(key).cancel()
            for key, queue in wanted.items():
                if key not in self._receive_loops and not self._stopping:
                    self._receive_loops[key] = self._session.spawn(
                        self._receive_loop(self._subscriptions[topic], queue), f"receive {key}"
                    )

    async def _query_assignment(self, topic: str) -> list[definition_pb2.MessageQueue]:
        route = await self._session.route(topic)
        endpoints = route.all_endpoints()[0]
        await self._session.ensure_ready(endpoints)
        namespace = self._config.namespace
        response = await self._session.invoke(
            self._session.stub(endpoints).QueryAssignment,
            service_pb2.QueryAssignmentRequest(
                topic=resource(topic, namespace),
                group=resource(self._group, namespace),
                endpoints=self._config.access_point.to_proto(),
            ),
            what=f"QueryAssignment of {topic!r} at {endpoints}",
        )
        if response.status.code != definition_pb2.OK:
            raise status_error(response.status)
        return [
            assignment.message_queue
            for assignment in response.assignments
            if assignment.message_queue.broker.endpoints.addresses
            and assignment.message_queue.permission in (definition_pb2.READ, definition_pb2.READ_WRITE)
        ]

    async def _receive_loop(self, subscription: _Subscription, queue: definition_pb2.MessageQueue) -> None:
        attempt_id: str | None = None
        failures = 0
        while not self._stopping:
            reserved = await self._slots.reserve(self._session.settings.receive_batch_size)
            handed = 0
            try:
                if self._stopping:
                    return
                # A retried receive reuses its attempt id, so a broker can hand back what the
                # failed attempt had already taken (FIFO queues would otherwise stay locked).
                attempt_id = attempt_id or str(uuid.uuid4())
                messages, corrupted = await self._operations.receive(
                    queue,
                    subscription.expression,
                    batch_size=reserved,
                    long_polling_timeout_s=self._session.settings.long_polling_timeout_s,
                    invisible_duration_s=None,
                    auto_renew=True,
                    attempt_id=attempt_id,
                )
                attempt_id = None
                failures = 0
                for proto, error in corrupted:
                    log.error("nacking a corrupted message: %s", error)
                    message = decode_message(
                        proto, Endpoints.from_proto(queue.broker.endpoints), strict=False
                    )
                    handed += 1
                    self._track(self._nack_only(message))
                for message in messages:
                    handed += 1
                    self._dispatch(subscription, message)
            except ClientError as error:
                failures += 1
                delay_s = min(RECEIVE_FAILURE_BACKOFF_MAX_S, 0.2 * 2 ** min(failures, 10))
                log.warning(
                    "receiving from %r failed, again in %.1f s: %s", subscription.topic, delay_s, error
                )
                self._slots.release(reserved)
                reserved = 0
                await asyncio.sleep(delay_s)
            finally:
                if reserved > handed:
                    self._slots.release(reserved - handed)
                elif handed > reserved:
                    # The broker sent more than asked: take the excess from future slots.
                    self._slots.release(reserved - handed)

    def _track(self, coroutine: Coroutine[Any, Any, bool]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)

    def _dispatch(self, subscription: _Subscription, message: ReceivedMessage) -> None:
        if self._session.settings.fifo and message.message_group is not None:
            key = (message.topic, message.message_group)
            backlog = self._fifo_backlogs.setdefault(key, collections.deque())
            backlog.append(message)
            if key not in self._fifo_workers:
                self._fifo_workers[key] = asyncio.get_running_loop().create_task(
                    self._run_group(subscription, key), name=f"homing fifo {key}"
                )
        else:
            self._track(self._consume(subscription, message))

    async def _run_group(self, subscription: _Subscription, key: tuple[str, str]) -> None:
        """One message group of a FIFO group: its messages one after another, in order."""
        backlog = self._fifo_backlogs[key]
        try:
            while backlog and not self._stopping:
                message = backlog.popleft()
                if not await self._consume(subscription, message):
                    # Running the later ones now would break the group's order: return them to the
                    # broker with the failed one's backoff, so they come back after it.
                    delay_s = self._backoff_s(message)
                    while backlog:
                        later = backlog.popleft()
                        self._track(self._nack_only(later, delay_s))
        finally:
            # What was not started (shutdown) keeps no slot and gets no ack: the broker redelivers it.
            self._slots.release(len(backlog))
            backlog.clear()
            del self._fifo_backlogs[key]
            del self._fifo_workers[key]

    # ------------------------------------------------------------------ one message

    async def _consume(self, subscription: _Subscription, message: ReceivedMessage) -> bool:
        """Run the handler; ack after success, nack after failure. Holds one slot until done."""
        try:
            try:
                with _tracing.process_span(message, self._group, self._config.namespace):
                    await self._run_handler(subscription.handler, message)
            except Exception:
                log.exception(
                    "handler of %r failed for message %s (delivery %d): nacking",
                    message.topic,
                    message.message_id,
                    message.delivery_attempt,
                )
                await self._nack(message, self._backoff_s(message))
                return False
            await self._ack(message)
            return True
        finally:
            self._slots.release(1)

    async def _nack_only(self, message: ReceivedMessage, delay_s: float | None = None) -> bool:
        try:
            await self._nack(message, self._backoff_s(message) if delay_s is None else delay_s)
        finally:
            self._slots.release(1)
        return False

    async def _run_handler(self, handler: MessageHandler, message: ReceivedMessage) -> None:
        if inspect.iscoroutinefunction(handler):
            await handler(message)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._max_concurrency, thread_name_prefix="homing-handler")
        result = await asyncio.get_running_loop().run_in_executor(self._executor, handler, message)
        if inspect.isawaitable(result):
            await result

    def _backoff_s(self, message: ReceivedMessage) -> float:
        policy = self._retry_policy or self._session.settings.retry
        return policy.backoff_s(max(message.delivery_attempt, 1))

    async def _ack(self, message: ReceivedMessage) -> None:
        for attempt in range(1, ACK_ATTEMPTS + 1):
            try:
                await self._acks.ack(message)
                return
            except ClientError as error:
                if not error.retriable or attempt == ACK_ATTEMPTS:
                    # Not lost: unacked, the message is delivered again (at least once).
                    log.warning("ack of %s failed, it will be delivered again: %s", message.message_id, error)
                    return
                await asyncio.sleep(0.1 * attempt)

    async def _nack(self, message: ReceivedMessage, delay_s: float) -> None:
        for attempt in range(1, ACK_ATTEMPTS + 1):
            try:
                await self._operations.change_invisible_duration(message, max(delay_s, 0.001))
                return
            except ClientError as error:
                if not error.retriable or attempt == ACK_ATTEMPTS:
                    log.warning("nack of %s failed: %s", message.message_id, error)
                    return
                await asyncio.sleep(0.1 * attempt)

    def _settings_request(self) -> definition_pb2.Settings:
        return build_settings(
            client_type=definition_pb2.PUSH_CONSUMER,
            access_point=self._config.access_point,
            request_timeout_s=self._config.request_timeout_s,
            retry=self._retry_policy or DEFAULT_CONSUMER_RETRY,
            namespace=self._config.namespace,
            version=client_version(),
            subscription=SubscriptionRequest(
                self._group, {topic: sub.expression for topic, sub in self._subscriptions.items()}
            ),
        )


def _queue_key(topic: str, queue: definition_pb2.MessageQueue) -> tuple[str, str, int, str]:
    return (topic, queue.broker.name, queue.id, str(Endpoints.from_proto(queue.broker.endpoints)))
