"""Telemetry streams: the one channel on which the broker can speak to a client first.

Each client opens a bidirectional ``Telemetry`` stream to the broker and writes its settings on it
(client type, topics or consumer group and subscriptions, request timeout, user agent); the broker
answers with the settings the client must use (:func:`settings_reply`). The stream then stays open
for the broker's commands: today the transaction check-back (``RecoverOrphanedTransactionCommand``).

:class:`TelemetryRegistry` keeps, per client id, the client's current stream and what its settings
said, so that the broker can find the producers of a topic (:meth:`~TelemetryRegistry.producers_for_topic`)
and write to one of them (:meth:`~TelemetryRegistry.send_command`). A client may open a new stream
before its old one is gone (the Node client re-opens one a second after it ends); the newest wins.
Outgoing commands wait in a bounded per-stream queue; a full queue refuses the command.

What the settings reply carries, and why (see docs/OFFICIAL-CLIENTS.md):

- an OK status: the Python client ignores settings without one;
- producers: an *exponential* backoff (3 attempts, 10 ms to 1 s, x2, as the Apache proxy sends;
  the Node producer hangs in startup without an exponential policy) and ``publishing`` with
  ``max_body_size`` set (both producers copy it: 0 would fail every send client-side) and
  ``validate_message_type``;
- consumers: ``subscription`` with the group's ``fifo`` flag, ``receive_batch_size`` 32 and the
  long polling timeout, plus the group's retry policy: a *customized* backoff (the group's levels,
  whole seconds) for the Python client, the only form it honours, and an *exponential* one that
  approximates the levels for every other client (the Node client understands no other form and
  takes its FIFO maximum attempts from it). Push consumers' nack delays are decided by the broker
  anyway (see ``MessagingServicer.ChangeInvisibleDuration``): Node sends its delay in the wrong unit.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from homing.broker.metadata import GroupConfig
from homing.broker.model import Message
from homing.protocol import definition_pb2, service_pb2
from homing.server.codec import encode_message, to_duration
from homing.server.names import unqualify

__all__ = [
    "CLIENT_KINDS",
    "OUTGOING_QUEUE_LIMIT",
    "SettingsPolicy",
    "TelemetryRegistry",
    "TelemetryStream",
    "settings_reply",
]

log = logging.getLogger("homing.server.telemetry")

OUTGOING_QUEUE_LIMIT = 1024
PRODUCER_MAX_ATTEMPTS = 3
PRODUCER_BACKOFF_INITIAL_S = 0.01
PRODUCER_BACKOFF_MAX_S = 1.0
PRODUCER_BACKOFF_MULTIPLIER = 2.0
RECEIVE_BATCH_SIZE = 32

CLIENT_KINDS: dict[int, str] = {
    definition_pb2.PRODUCER: "producer",
    definition_pb2.PUSH_CONSUMER: "push_consumer",
    definition_pb2.SIMPLE_CONSUMER: "simple_consumer",
}
"""Client types the broker serves, and their names in :class:`homing.broker.clients.ClientSession`."""


@dataclass(frozen=True, slots=True)
class SettingsPolicy:
    """The broker-wide values a settings reply is made of."""

    max_body_bytes: int
    long_polling_timeout_s: float
    receive_batch_size: int = RECEIVE_BATCH_SIZE


def _producer_backoff() -> definition_pb2.RetryPolicy:
    return definition_pb2.RetryPolicy(
        max_attempts=PRODUCER_MAX_ATTEMPTS,
        exponential_backoff=definition_pb2.ExponentialBackoff(
            initial=to_duration(PRODUCER_BACKOFF_INITIAL_S),
            max=to_duration(PRODUCER_BACKOFF_MAX_S),
            multiplier=PRODUCER_BACKOFF_MULTIPLIER,
        ),
    )


def _consumer_backoff(group: GroupConfig, language: int) -> definition_pb2.RetryPolicy:
    levels = group.backoff_s or (1.0,)
    if language == definition_pb2.PYTHON:
        # It reads only Duration.seconds: round up so that no level becomes 0.
        return definition_pb2.RetryPolicy(
            max_attempts=group.max_delivery_attempts,
            customized_backoff=definition_pb2.CustomizedBackoff(
                next=[to_duration(max(1, math.ceil(level))) for level in levels]
            ),
        )
    first, last = float(levels[0]), float(max(levels))
    multiplier = 1.0 if len(levels) < 2 or first <= 0 else max(float(levels[1]) / first, 1.0)
    return definition_pb2.RetryPolicy(
        max_attempts=group.max_delivery_attempts,
        exponential_backoff=definition_pb2.ExponentialBackoff(
            initial=to_duration(first), max=to_duration(last), multiplier=multiplier
        ),
    )


def settings_reply(
    client: definition_pb2.Settings,
    policy: SettingsPolicy,
    *,
    access_point: definition_pb2.Endpoints,
    group: GroupConfig | None,
) -> definition_pb2.Settings:
    """The settings a client must use, from the settings it wrote (already validated by the caller).

    ``group`` is the consumer group's configuration (None for producers).
    """
    reply = definition_pb2.Settings(
        client_type=client.client_type,
        access_point=client.access_point if client.HasField("access_point") else access_point,
        user_agent=client.user_agent,
        metric=definition_pb2.Metric(on=False),
    )
    if client.HasField("request_timeout"):
        reply.request_timeout.CopyFrom(client.request_timeout)
    if client.client_type == definition_pb2.PRODUCER:
        reply.backoff_policy.CopyFrom(_producer_backoff())
        reply.publishing.CopyFrom(
            definition_pb2.Publishing(
                topics=client.publishing.topics,
                max_body_size=policy.max_body_bytes,
                validate_message_type=True,
            )
        )
        return reply
    assert group is not None, "a consumer's settings need its group"
    reply.backoff_policy.CopyFrom(_consumer_backoff(group, client.user_agent.language))
    long_polling_s = policy.long_polling_timeout_s
    asked = client.subscription
    if asked.HasField("long_polling_timeout"):
        wanted = asked.long_polling_timeout.seconds + asked.long_polling_timeout.nanos / 1e9
        if wanted > 0:
            long_polling_s = min(wanted, long_polling_s)
    reply.subscription.CopyFrom(
        definition_pb2.Subscription(
            group=asked.group,
            subscriptions=asked.subscriptions,
            fifo=group.fifo,
            receive_batch_size=policy.receive_batch_size,
            long_polling_timeout=to_duration(long_polling_s),
        )
    )
    return reply


@dataclass(eq=False, slots=True)
class TelemetryStream:
    """One open Telemetry stream of one client, with what its latest settings said."""

    client_id: str
    namespace: str
    kind: str = ""  # "producer", "push_consumer", "simple_consumer" once settings arrived
    group: str = ""  # the broker's (namespace-qualified) name
    topics: tuple[str, ...] = ()  # the broker's names
    language: int = 0
    outgoing: asyncio.Queue[service_pb2.TelemetryCommand | None] = field(
        default_factory=lambda: asyncio.Queue(OUTGOING_QUEUE_LIMIT)
    )
    closed: bool = False

    def offer(self, command: service_pb2.TelemetryCommand) -> bool:
        """Queue ``command`` for the client; False if the stream is closed or its queue is full."""
        if self.closed:
            return False
        try:
            self.outgoing.put_nowait(command)
        except asyncio.QueueFull:
            log.warning("telemetry queue of client %s is full: command dropped", self.client_id)
            return False
        return True

    def close(self) -> None:
        """End the stream: the writer stops after the commands already queued."""
        if self.closed:
            return
        self.closed = True
        try:
            self.outgoing.put_nowait(None)
        except asyncio.QueueFull:
            # Make room for the end marker: the client is not reading anyway.
            self.outgoing.get_nowait()
            self.outgoing.put_nowait(None)


class TelemetryRegistry:
    """client id -> its current open stream and settings."""

    def __init__(self, store_host: str) -> None:
        self._store_host = store_host
        self._streams: dict[str, TelemetryStream] = {}
        self._turn = itertools.count()

    def open(self, client_id: str, namespace: str) -> TelemetryStream:
        stream = TelemetryStream(client_id, namespace)
        previous = self._streams.get(client_id)
        if previous is not None:
            # Keep what the old stream knew until the new one says otherwise.
            stream.kind, stream.group, stream.topics = previous.kind, previous.group, previous.topics
            stream.language = previous.language
        self._streams[client_id] = stream
        return stream

    def closed(self, stream: TelemetryStream) -> bool:
        """Forget ``stream``; True if it was its client's current stream (the client is now gone)."""
        stream.close()
        if self._streams.get(stream.client_id) is stream:
            del self._streams[stream.client_id]
            return True
        return False

    def find(self, client_id: str) -> TelemetryStream | None:
        return self._streams.get(client_id)

    def streams(self) -> list[TelemetryStream]:
        return list(self._streams.values())

    def close_all(self) -> None:
        for stream in list(self._streams.values()):
            stream.close()

    async def send_command(self, client_id: str, command: service_pb2.TelemetryCommand) -> bool:
        """Write ``command`` to the client's open stream; False if it has none (or it is full)."""
        stream = self._streams.get(client_id)
        return stream is not None and stream.offer(command)

    def producers_for_topic(self, topic: str) -> list[str]:
        """Client ids of producers with an open stream whose settings name ``topic`` (broker name)."""
        return sorted(
            stream.client_id
            for stream in self._streams.values()
            if stream.kind == "producer" and topic in stream.topics and not stream.closed
        )

    async def recover_orphaned_transaction(
        self,
        message: Message,
        transaction_id: str,
        *,
        topic: str | None = None,
        candidates: Sequence[str] | None = None,
    ) -> str | None:
        """Ask one producer of the topic to resolve a transaction; the client id asked, or None.

        ``topic`` (the broker's name; default ``message.topic``) picks the producers, ``candidates``
        (default: :meth:`producers_for_topic`) overrides them; they are tried in turn, starting at a
        rotating position so that checks spread over the producers. The message goes out with the
        digest and encoding the clients require (:func:`homing.server.codec.encode_message`).
        """
        topic_name = topic if topic is not None else message.topic
        client_ids = list(candidates) if candidates is not None else self.producers_for_topic(topic_name)
        if not client_ids:
            return None
        start = next(self._turn) % len(client_ids)
        for client_id in client_ids[start:] + client_ids[:start]:
            stream = self._streams.get(client_id)
            if stream is None:
                continue
            resource = definition_pb2.Resource(
                resource_namespace=stream.namespace, name=unqualify(stream.namespace, topic_name)
            )
            command = service_pb2.TelemetryCommand(
                recover_orphaned_transaction_command=service_pb2.RecoverOrphanedTransactionCommand(
                    message=encode_message(message, topic=resource, store_host=self._store_host),
                    transaction_id=transaction_id,
                )
            )
            if stream.offer(command):
                return client_id
        return None
