"""The simple consumer, and what both consumers share: receive, ack, change of invisibility.

A received message stays *invisible* to the group for a while; the consumer acks it when done
(AckMessage: it is never delivered again) or changes its invisibility (ChangeInvisibleDuration:
the broker delivers it again when that time is up, with ``delivery_attempt`` one higher). A
message neither acked nor changed becomes visible again on its own. After the group's maximum
attempts the broker moves it to the dead-letter queue. The client never acks what it did not
process: the broker's redelivery is the safety net, acks are the promise.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import types
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Final, Self

from homing.client._codec import (
    CorruptedMessageError,
    ServerSettings,
    SubscriptionRequest,
    build_settings,
    decode_message,
    filter_to_proto,
    resource,
)
from homing.client._config import ClientConfig, Endpoints, resolve_config
from homing.client._errors import (
    ClientError,
    InvalidArgumentError,
    NotFoundError,
    ProtocolError,
    status_error,
)
from homing.client._message import FilterExpression, ReceivedMessage, validate_group, validate_topic
from homing.client._retry import DEFAULT_CONSUMER_RETRY, duration
from homing.client._session import ClientSession, Timings, client_version
from homing.client._transport import Transport
from homing.protocol import definition_pb2, service_pb2

__all__ = ["AsyncSimpleConsumer", "ConsumerOperations"]

log = logging.getLogger("homing.client")

MAX_RECEIVE_MESSAGES: Final = 1024
MAX_INVISIBLE_DURATION_S: Final = 12 * 3600.0
MAX_AWAIT_DURATION_S: Final = 60.0
MAX_ACK_ENTRIES: Final = 1024
"""Entries of one AckMessage call (Homing's limit per call)."""


def match_ack_results(
    messages: Sequence[ReceivedMessage], response: service_pb2.AckMessageResponse
) -> list[ClientError | None]:
    """One outcome per message acked in one AckMessage call (None: acked).

    Entries are matched by receipt handle (in order when they line up); an entry without a status
    takes the call's, and so does every message of an answer without any entry. A message left
    out of an answer that has entries gets the call's status if that is an error, else a
    ProtocolError: its outcome is unknown.
    """
    overall = response.status
    entries = list(response.entries)
    if not entries:
        whole: ClientError | None = None
        if overall.code == definition_pb2.MULTIPLE_RESULTS:
            whole = ProtocolError("AckMessage answered MULTIPLE_RESULTS without any entry")
        elif overall.code != definition_pb2.OK:
            whole = status_error(overall)
        return [whole] * len(messages)
    if len(entries) == len(messages) and all(
        entry.receipt_handle in ("", message.receipt_handle)
        for entry, message in zip(entries, messages, strict=True)
    ):
        matched: list[service_pb2.AckMessageResultEntry | None] = list(entries)
    else:
        by_handle = {entry.receipt_handle: entry for entry in entries if entry.receipt_handle}
        matched = [by_handle.get(message.receipt_handle) for message in messages]
    outcomes: list[ClientError | None] = []
    for message, found in zip(messages, matched, strict=True):
        if found is not None and found.HasField("status") and found.status.code:
            status = found.status
        elif found is not None or overall.code not in (definition_pb2.OK, definition_pb2.MULTIPLE_RESULTS):
            status = overall
        else:
            outcomes.append(ProtocolError(f"AckMessage answered nothing for message {message.message_id}"))
            continue
        if status.code == definition_pb2.OK:
            outcomes.append(None)
        elif status.code == definition_pb2.MULTIPLE_RESULTS:
            outcomes.append(ProtocolError(f"the ack of {message.message_id} says MULTIPLE_RESULTS"))
        else:
            outcomes.append(status_error(status))
    return outcomes


def invisible_seconds(value: timedelta | float, what: str = "invisible_duration") -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        raise InvalidArgumentError(f"{what} must be a timedelta or a number of seconds")
    if not 0 < seconds <= MAX_INVISIBLE_DURATION_S:
        raise InvalidArgumentError(
            f"{what} must be > 0 and <= {MAX_INVISIBLE_DURATION_S:g} s, not {seconds:g}"
        )
    return float(seconds)


def subscription_filters(subscriptions: Mapping[str, str | FilterExpression]) -> dict[str, FilterExpression]:
    """``{topic: "tag expression" | FilterExpression}`` checked and normalised."""
    filters: dict[str, FilterExpression] = {}
    for topic, expression in subscriptions.items():
        validate_topic(topic, sending=False)
        if isinstance(expression, str):
            expression = FilterExpression.tag(expression)
        elif not isinstance(expression, FilterExpression):
            raise InvalidArgumentError(
                f"the filter of {topic!r} must be a tag expression or a FilterExpression"
            )
        filters[topic] = expression
    return filters


class ConsumerOperations:
    """Ack and change of invisibility of one group's messages, through a session."""

    def __init__(self, session: ClientSession, group: str) -> None:
        self.session = session
        self.group = group

    def _group_and_topic(
        self, message: ReceivedMessage
    ) -> tuple[definition_pb2.Resource, definition_pb2.Resource]:
        namespace = self.session.config.namespace
        return resource(self.group, namespace), resource(message.topic, namespace)

    async def ack_many(self, messages: Sequence[ReceivedMessage]) -> list[ClientError | None]:
        """Ack ``messages`` in as few calls as possible; one outcome per message, in order.

        An AckMessage carries one group and one topic, so the messages are grouped by (broker
        endpoint, topic), ``MAX_ACK_ENTRIES`` per call, and the calls made concurrently. None
        means acked; a :class:`ClientError` is that message's failure (its entry's status, or the
        call's when the call failed as a whole). Raises only for messages that cannot be acked at
        all (no receipt handle) or a closed client, before anything is sent.
        """
        for message in messages:
            if not message.receipt_handle:
                raise InvalidArgumentError(
                    f"message {message.message_id} has no receipt handle: it cannot be acked"
                )
        self.session.require_open()
        outcomes: list[ClientError | None] = [None] * len(messages)
        groups: dict[tuple[str, str], list[int]] = {}
        for index, message in enumerate(messages):
            groups.setdefault((message.endpoint, message.topic), []).append(index)
        chunks = [
            indexes[start : start + MAX_ACK_ENTRIES]
            for indexes in groups.values()
            for start in range(0, len(indexes), MAX_ACK_ENTRIES)
        ]
        results = await asyncio.gather(
            *(
                self._ack_call(Endpoints.parse(messages[chunk[0]].endpoint), [messages[i] for i in chunk])
                for chunk in chunks
            )
        )
        for chunk, chunk_outcomes in zip(chunks, results, strict=True):
            for index, outcome in zip(chunk, chunk_outcomes, strict=True):
                outcomes[index] = outcome
        return outcomes

    async def _ack_call(
        self, endpoints: Endpoints, messages: Sequence[ReceivedMessage]
    ) -> list[ClientError | None]:
        """One AckMessage of messages of one topic at one endpoint: one outcome per message."""
        group, topic = self._group_and_topic(messages[0])
        try:
            response = await self.session.invoke(
                self.session.stub(endpoints).AckMessage,
                service_pb2.AckMessageRequest(
                    group=group,
                    topic=topic,
                    entries=[
                        service_pb2.AckMessageEntry(
                            message_id=message.message_id, receipt_handle=message.receipt_handle
                        )
                        for message in messages
                    ],
                ),
                what=f"AckMessage of {len(messages)} message(s) at {endpoints}",
            )
        except ClientError as error:
            return [error] * len(messages)
        return match_ack_results(messages, response)

    async def change_invisible_duration(self, message: ReceivedMessage, seconds: float) -> None:
        """Hide the message for ``seconds`` from now; its receipt handle is replaced by the new one."""
        self.session.require_open()
        group, topic = self._group_and_topic(message)
        endpoints = Endpoints.parse(message.endpoint)
        response = await self.session.invoke(
            self.session.stub(endpoints).ChangeInvisibleDuration,
            service_pb2.ChangeInvisibleDurationRequest(
                group=group,
                topic=topic,
                receipt_handle=message.receipt_handle,
                invisible_duration=duration(seconds),
                message_id=message.message_id,
            ),
            what=f"ChangeInvisibleDuration of {message.message_id} at {endpoints}",
        )
        if response.status.code != definition_pb2.OK:
            raise status_error(response.status)
        if response.receipt_handle:
            message.receipt_handle = response.receipt_handle

    async def receive(
        self,
        queue: definition_pb2.MessageQueue,
        filter_expression: FilterExpression,
        *,
        batch_size: int,
        long_polling_timeout_s: float,
        invisible_duration_s: float | None,
        auto_renew: bool,
        attempt_id: str | None = None,
    ) -> tuple[list[ReceivedMessage], list[tuple[definition_pb2.Message, CorruptedMessageError]]]:
        """One long poll on ``queue``'s broker: the good messages, and the corrupted ones apart."""
        endpoints = Endpoints.from_proto(queue.broker.endpoints)
        await self.session.ensure_ready(endpoints)
        request = service_pb2.ReceiveMessageRequest(
            group=resource(self.group, self.session.config.namespace),
            message_queue=queue,
            filter_expression=filter_to_proto(filter_expression),
            batch_size=batch_size,
            auto_renew=auto_renew,
            long_polling_timeout=duration(long_polling_timeout_s),
        )
        if invisible_duration_s is not None:
            request.invisible_duration.CopyFrom(duration(invisible_duration_s))
        if attempt_id is not None:
            request.attempt_id = attempt_id
        # The deadline covers the long poll and an ordinary call's worth of slack on top.
        raw = await self.session.receive(
            endpoints, request, timeout_s=long_polling_timeout_s + self.session.config.request_timeout_s
        )
        good: list[ReceivedMessage] = []
        bad: list[tuple[definition_pb2.Message, CorruptedMessageError]] = []
        for proto in raw:
            try:
                good.append(decode_message(proto, endpoints))
            except CorruptedMessageError as error:
                bad.append((proto, error))
        return good, bad


class AckCoalescer:
    """Acks of messages finished one by one, sent together: ``await ack(message)`` per message.

    An ack waits only for the event loop to run what is ready (acks finished in the same pass go
    in one call) and, while ``max_in_flight`` ack calls are outstanding, for one of them to end:
    under load the acks pile up meanwhile and leave as one AckMessage per broker and topic (see
    :meth:`ConsumerOperations.ack_many`), so a busy consumer makes few calls and an idle one adds
    no delay. Each caller still gets its own outcome: ``ack`` returns once the broker said OK for
    its message, and raises that message's ClientError otherwise.
    """

    def __init__(self, operations: ConsumerOperations, *, max_in_flight: int = 4) -> None:
        assert max_in_flight >= 1
        self._operations = operations
        self._max_in_flight = max_in_flight
        self._pending: list[tuple[ReceivedMessage, asyncio.Future[None]]] = []
        self._scheduled = False
        self._calls: set[asyncio.Task[None]] = set()

    async def ack(self, message: ReceivedMessage) -> None:
        if not message.receipt_handle:
            raise InvalidArgumentError(
                f"message {message.message_id} has no receipt handle: it cannot be acked"
            )
        self._operations.session.require_open()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((message, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        await future

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending or len(self._calls) >= self._max_in_flight:
            return  # the end of an outstanding call flushes what waits
        batch, self._pending = self._pending[:MAX_ACK_ENTRIES], self._pending[MAX_ACK_ENTRIES:]
        task = asyncio.get_running_loop().create_task(self._send(batch), name="homing acks")
        self._calls.add(task)
        task.add_done_callback(self._call_done)
        if self._pending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _send(self, batch: list[tuple[ReceivedMessage, asyncio.Future[None]]]) -> None:
        outcomes: Sequence[BaseException | None]
        try:
            outcomes = await self._operations.ack_many([message for message, _ in batch])
        except BaseException as error:  # every waiting caller learns what happened
            outcomes = [error] * len(batch)
            if not isinstance(error, Exception):
                self._finish(batch, outcomes)
                raise
        self._finish(batch, outcomes)

    def _finish(
        self,
        batch: list[tuple[ReceivedMessage, asyncio.Future[None]]],
        outcomes: Sequence[BaseException | None],
    ) -> None:
        current = asyncio.current_task()
        if current is not None:
            self._calls.discard(current)  # before the callers wake: a new ack may go at once
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # the caller gave up (cancelled)
                continue
            if outcome is None:
                future.set_result(None)
            elif isinstance(outcome, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(outcome)
        if self._pending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _call_done(self, task: asyncio.Task[None]) -> None:
        self._calls.discard(task)
        if self._pending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def wait_idle(self) -> None:
        """Wait until every ack handed over has been answered (or failed)."""
        while self._calls or self._pending:
            if self._calls:
                await asyncio.gather(*list(self._calls), return_exceptions=True)
            else:
                await asyncio.sleep(0)


class AsyncSimpleConsumer:
    """Receives messages when asked; the application acks each one (or changes its invisibility).

    ``subscriptions`` maps topics to a tag expression (``"*"``, ``"a || b"``) or a
    :class:`FilterExpression`. ``await_duration_s`` is how long a :meth:`receive` waits for
    messages when there are none (a long poll).
    """

    def __init__(
        self,
        config: ClientConfig | str | None = None,
        *,
        group: str,
        subscriptions: Mapping[str, str | FilterExpression],
        await_duration_s: float = 20.0,
        transport: Transport | None = None,
        timings: Timings | None = None,
    ) -> None:
        self._config = resolve_config(config)
        self._group = validate_group(group)
        self._filters = subscription_filters(subscriptions)
        if not self._filters:
            raise InvalidArgumentError("a simple consumer needs at least one subscription")
        if isinstance(await_duration_s, bool) or not 0 <= await_duration_s <= MAX_AWAIT_DURATION_S:
            raise InvalidArgumentError(
                f"await_duration_s must be 0-{MAX_AWAIT_DURATION_S:g}, not {await_duration_s!r}"
            )
        self._await_duration_s = float(await_duration_s)
        self._session = ClientSession(
            self._config,
            client_type=definition_pb2.SIMPLE_CONSUMER,
            settings_request=self._settings_request,
            initial_settings=ServerSettings(retry=DEFAULT_CONSUMER_RETRY),
            group=self._group,
            transport=transport,
            timings=timings,
        )
        self._operations = ConsumerOperations(self._session, self._group)
        self._acks = AckCoalescer(self._operations)
        self._topic_turn = itertools.count()
        self._queue_turns: dict[str, itertools.count[int]] = {}

    @property
    def group(self) -> str:
        return self._group

    @property
    def client_id(self) -> str:
        return self._session.client_id

    async def start(self) -> None:
        """Fetch the routes of the subscribed topics, open Telemetry and wait for the broker's settings."""
        await self._session.start(self._filters)

    async def close(self) -> None:
        await self._acks.wait_idle()
        await self._session.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> None:
        await self.close()

    async def receive(
        self, max_messages: int = 16, invisible_duration: timedelta | float = 60.0
    ) -> list[ReceivedMessage]:
        """Up to ``max_messages`` messages of one subscribed topic (taken in turn), or [] after the wait.

        Each stays invisible to the group for ``invisible_duration`` (a timedelta or seconds):
        ack it before then, or it is delivered again.
        """
        if isinstance(max_messages, bool) or not 1 <= max_messages <= MAX_RECEIVE_MESSAGES:
            raise InvalidArgumentError(f"max_messages must be 1-{MAX_RECEIVE_MESSAGES}, not {max_messages!r}")
        invisible_s = invisible_seconds(invisible_duration)
        self._session.require_open()
        topics = list(self._filters)
        topic = topics[next(self._topic_turn) % len(topics)]
        route = await self._session.route(topic)
        queues = route.readable_queues()
        if not queues:
            raise NotFoundError(
                definition_pb2.TOPIC_NOT_FOUND,
                "TOPIC_NOT_FOUND",
                f"topic {topic!r} has no readable queue",
                False,
            )
        turn = self._queue_turns.setdefault(topic, itertools.count())
        queue = queues[next(turn) % len(queues)]
        messages, corrupted = await self._operations.receive(
            queue,
            self._filters[topic],
            batch_size=max_messages,
            long_polling_timeout_s=self._await_duration_s,
            invisible_duration_s=invisible_s,
            auto_renew=False,
        )
        for proto, error in corrupted:
            # Not handed out and not acked: it turns visible again and, after the group's attempts,
            # the broker moves it to the dead-letter queue.
            log.error("dropping a corrupted message of %r from this receive: %s", proto.topic.name, error)
        return messages

    async def ack(self, message: ReceivedMessage) -> None:
        """The message is done: the broker never delivers it to this group again.

        Returns once the broker said OK for this message; raises its error otherwise. Acks made
        concurrently (e.g. ``gather`` over a received batch) travel together in one AckMessage
        per broker and topic.
        """
        await self._acks.ack(message)

    async def ack_many(self, messages: Sequence[ReceivedMessage]) -> list[ClientError | None]:
        """Ack several messages at once: one AckMessage per broker and topic instead of one per message.

        Returns one outcome per message, in order: None when it was acked, else its
        :class:`ClientError` (a message whose ack failed is delivered again once its invisibility
        ends, as after a failed :meth:`ack`). Raises InvalidArgumentError, before sending anything,
        if a message has no receipt handle.
        """
        return await self._operations.ack_many(messages)

    async def change_invisible_duration(
        self, message: ReceivedMessage, invisible_duration: timedelta | float
    ) -> None:
        """Keep the message hidden for ``invisible_duration`` from now (to extend work, or to retry later).

        The message's ``receipt_handle`` is replaced by the broker's new one (the old one is void).
        """
        await self._operations.change_invisible_duration(message, invisible_seconds(invisible_duration))

    def _settings_request(self) -> definition_pb2.Settings:
        return build_settings(
            client_type=definition_pb2.SIMPLE_CONSUMER,
            access_point=self._config.access_point,
            request_timeout_s=self._config.request_timeout_s,
            retry=DEFAULT_CONSUMER_RETRY,
            namespace=self._config.namespace,
            version=client_version(),
            subscription=SubscriptionRequest(self._group, self._filters),
        )
