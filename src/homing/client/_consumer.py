"""The simple consumer, and what both consumers share: receive, ack, change of invisibility.

A received message stays *invisible* to the group for a while; the consumer acks it when done
(AckMessage: it is never delivered again) or changes its invisibility (ChangeInvisibleDuration:
the broker delivers it again when that time is up, with ``delivery_attempt`` one higher). A
message neither acked nor changed becomes visible again on its own. After the group's maximum
attempts the broker moves it to the dead-letter queue. The client never acks what it did not
process: the broker's redelivery is the safety net, acks are the promise.
"""

from __future__ import annotations

import itertools
import logging
import math
import types
from collections.abc import Mapping
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
from homing.client._errors import InvalidArgumentError, NotFoundError, status_error
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

    async def ack(self, message: ReceivedMessage) -> None:
        if not message.receipt_handle:
            raise InvalidArgumentError(
                f"message {message.message_id} has no receipt handle: it cannot be acked"
            )
        self.session.require_open()
        group, topic = self._group_and_topic(message)
        endpoints = Endpoints.parse(message.endpoint)
        response = await self.session.invoke(
            self.session.stub(endpoints).AckMessage,
            service_pb2.AckMessageRequest(
                group=group,
                topic=topic,
                entries=[
                    service_pb2.AckMessageEntry(
                        message_id=message.message_id, receipt_handle=message.receipt_handle
                    )
                ],
            ),
            what=f"AckMessage of {message.message_id} at {endpoints}",
        )
        status = response.status
        for entry in response.entries:
            if entry.HasField("status") and entry.status.code != definition_pb2.OK:
                status = entry.status
        if status.code != definition_pb2.OK:
            raise status_error(status)

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
        """The message is done: the broker never delivers it to this group again."""
        await self._operations.ack(message)

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
