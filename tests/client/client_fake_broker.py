"""An in-process fake of the RocketMQ 5 MessagingService, on a real grpc.aio server at 127.0.0.1:0.

It behaves like the protocol where the client depends on it (routes, settings over Telemetry,
per-entry send results, long-polling receive, invisibility, ack, FIFO blocking, transactions and
check-backs) and records every call, so tests can assert on exactly what reached the wire. Faults
are injected on purpose: statuses for the next sends, a delay before answering, no settings reply.
It is deliberately small: it keeps no durable state and is not a model of the broker's storage.

With ``extensions=True`` it also serves Homing's ``homing.v1.Extensions`` (:class:`FakeExtensions`,
built on the same fake calls), with faults of its own: send streams broken before they answer.
Without, a client sees what an Apache RocketMQ broker answers: UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from google.protobuf import duration_pb2, timestamp_pb2

from homing.protocol import definition_pb2, extensions_pb2, extensions_pb2_grpc, service_pb2, service_pb2_grpc

Code = definition_pb2.Code


def status(code: int, message: str = "") -> definition_pb2.Status:
    return definition_pb2.Status(code=code, message=message or definition_pb2.Code.Name(code))  # type: ignore[arg-type]


def seconds_of(value: duration_pb2.Duration) -> float:
    return value.seconds + value.nanos / 1e9


@dataclass
class Stored:
    message: definition_pb2.Message
    queue_id: int
    offset: int


@dataclass
class InFlight:
    stored: Stored
    group: str
    attempt: int
    receipt_handle: str
    client_id: str
    visible_at: float  # loop time; inf while auto-renewed


@dataclass
class TelemetryPeer:
    client_id: str
    settings: list[definition_pb2.Settings] = field(default_factory=list)
    outgoing: asyncio.Queue[service_pb2.TelemetryCommand | None] = field(default_factory=asyncio.Queue)
    received: list[service_pb2.TelemetryCommand] = field(default_factory=list)


class FakeBroker(service_pb2_grpc.MessagingServiceServicer):
    def __init__(
        self,
        *,
        queues_per_topic: int = 4,
        fifo_groups: frozenset[str] = frozenset(),
        producer_backoff: definition_pb2.RetryPolicy | None = None,
        consumer_backoff: definition_pb2.RetryPolicy | None = None,
        max_body_size: int = 4 * 1024 * 1024,
        receive_batch_size: int = 32,
        long_polling_timeout_s: float = 0.5,
        max_delivery_attempts: int = 16,
        known_topics: frozenset[str] | None = None,
        extensions: bool = False,
    ) -> None:
        self.queues_per_topic = queues_per_topic
        self.fifo_groups = fifo_groups
        self.producer_backoff = producer_backoff or definition_pb2.RetryPolicy(
            max_attempts=3,
            exponential_backoff=definition_pb2.ExponentialBackoff(
                initial=duration_pb2.Duration(nanos=1_000_000),
                max=duration_pb2.Duration(nanos=10_000_000),
                multiplier=2,
            ),
        )
        self.consumer_backoff = consumer_backoff or definition_pb2.RetryPolicy(
            max_attempts=max_delivery_attempts,
            customized_backoff=definition_pb2.CustomizedBackoff(
                next=[duration_pb2.Duration(nanos=50_000_000)]
            ),
        )
        self.max_body_size = max_body_size
        self.receive_batch_size = receive_batch_size
        self.long_polling_timeout_s = long_polling_timeout_s
        self.max_delivery_attempts = max_delivery_attempts
        self.known_topics = known_topics
        self.extensions = FakeExtensions(self) if extensions else None
        self.answer_settings = True
        self.apache_batches = False  # answer a multi-message send with one comma-joined entry
        self.send_failures: list[int] = []  # codes for the next SendMessage calls (whole call)
        self.send_entry_codes: Callable[[definition_pb2.Message], int] | None = None
        self.send_delay_s = 0.0
        self.receive_failures: list[int] = []
        self.corrupt_digests = False  # deliver bodies whose digest does not match
        # Records
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.send_requests: list[service_pb2.SendMessageRequest] = []
        self.stored: dict[str, list[Stored]] = {}
        self.halves: dict[str, Stored] = {}
        self.end_transactions: list[service_pb2.EndTransactionRequest] = []
        self.acks: list[tuple[str, str]] = []  # (group, message id)
        self.nacks: list[tuple[str, str, float]] = []  # (group, message id, invisible seconds)
        self.receive_requests: list[service_pb2.ReceiveMessageRequest] = []
        self.heartbeats: list[service_pb2.HeartbeatRequest] = []
        self.terminations: list[tuple[str, service_pb2.NotifyClientTerminationRequest]] = []
        self.dead_letters: list[tuple[str, str]] = []
        self.peers: dict[str, TelemetryPeer] = {}
        self._cursors: dict[tuple[str, str], int] = {}
        self._in_flight: dict[str, InFlight] = {}
        self._handles = itertools.count(1)
        self._transactions = itertools.count(1)
        self._changed = asyncio.Condition()
        self._server: grpc.aio.Server | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> str:
        self._server = grpc.aio.server()
        service_pb2_grpc.add_MessagingServiceServicer_to_server(self, self._server)
        if self.extensions is not None:
            extensions_pb2_grpc.add_ExtensionsServicer_to_server(self.extensions, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self.endpoint

    async def stop(self) -> None:
        for peer in self.peers.values():
            peer.outgoing.put_nowait(None)
        if self._server is not None:
            await self._server.stop(grace=0.5)

    async def __aenter__(self) -> FakeBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _record(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
        metadata = {
            key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)
        }
        self.calls.append((method, metadata))
        return metadata

    def methods_called(self) -> list[str]:
        return [method for method, _ in self.calls]

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ------------------------------------------------------------------ routes

    def _queue(self, topic: str, queue_id: int) -> definition_pb2.MessageQueue:
        return definition_pb2.MessageQueue(
            topic=definition_pb2.Resource(name=topic),
            id=queue_id,
            permission=definition_pb2.READ_WRITE,
            broker=definition_pb2.Broker(
                name="fake",
                id=0,
                endpoints=definition_pb2.Endpoints(
                    scheme=definition_pb2.IPv4,
                    addresses=[definition_pb2.Address(host="127.0.0.1", port=self.port)],
                ),
            ),
            accept_message_types=[
                definition_pb2.NORMAL,
                definition_pb2.FIFO,
                definition_pb2.DELAY,
                definition_pb2.TRANSACTION,
            ],
        )

    async def QueryRoute(
        self, request: service_pb2.QueryRouteRequest, context: Any
    ) -> service_pb2.QueryRouteResponse:
        self._record("QueryRoute", context)
        topic = request.topic.name
        if self.known_topics is not None and topic not in self.known_topics:
            return service_pb2.QueryRouteResponse(status=status(Code.TOPIC_NOT_FOUND, f"no topic {topic}"))
        return service_pb2.QueryRouteResponse(
            status=status(Code.OK),
            message_queues=[self._queue(topic, i) for i in range(self.queues_per_topic)],
        )

    async def QueryAssignment(
        self, request: service_pb2.QueryAssignmentRequest, context: Any
    ) -> service_pb2.QueryAssignmentResponse:
        self._record("QueryAssignment", context)
        topic = request.topic.name
        if request.group.name in self.fifo_groups:
            queues = [self._queue(topic, i) for i in range(self.queues_per_topic)]
        else:
            queues = [self._queue(topic, -1)]
        return service_pb2.QueryAssignmentResponse(
            status=status(Code.OK), assignments=[definition_pb2.Assignment(message_queue=q) for q in queues]
        )

    # ------------------------------------------------------------------ telemetry

    def _settings_reply(self, settings: definition_pb2.Settings) -> definition_pb2.Settings:
        reply = definition_pb2.Settings()
        reply.CopyFrom(settings)
        if settings.client_type == definition_pb2.PRODUCER:
            reply.backoff_policy.CopyFrom(self.producer_backoff)
            reply.publishing.max_body_size = self.max_body_size
            reply.publishing.validate_message_type = True
        else:
            reply.backoff_policy.CopyFrom(self.consumer_backoff)
            group = settings.subscription.group.name
            reply.subscription.fifo = group in self.fifo_groups
            reply.subscription.receive_batch_size = self.receive_batch_size
            reply.subscription.long_polling_timeout.CopyFrom(
                duration_pb2.Duration(
                    seconds=int(self.long_polling_timeout_s), nanos=int(self.long_polling_timeout_s % 1 * 1e9)
                )
            )
        return reply

    async def Telemetry(
        self, request_iterator: AsyncIterator[service_pb2.TelemetryCommand], context: Any
    ) -> AsyncIterator[service_pb2.TelemetryCommand]:
        metadata = self._record("Telemetry", context)
        peer = TelemetryPeer(metadata.get("x-mq-client-id", ""))
        self.peers[peer.client_id] = peer

        async def read() -> None:
            try:
                async for command in request_iterator:
                    peer.received.append(command)
                    if command.WhichOneof("command") == "settings":
                        peer.settings.append(command.settings)
                        if self.answer_settings:
                            await peer.outgoing.put(
                                service_pb2.TelemetryCommand(
                                    status=status(Code.OK), settings=self._settings_reply(command.settings)
                                )
                            )
            finally:
                await peer.outgoing.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while True:
                item = await peer.outgoing.get()
                if item is None:
                    return
                yield item
        finally:
            reader.cancel()

    async def Heartbeat(
        self, request: service_pb2.HeartbeatRequest, context: Any
    ) -> service_pb2.HeartbeatResponse:
        self._record("Heartbeat", context)
        self.heartbeats.append(request)
        return service_pb2.HeartbeatResponse(status=status(Code.OK))

    async def NotifyClientTermination(
        self, request: service_pb2.NotifyClientTerminationRequest, context: Any
    ) -> service_pb2.NotifyClientTerminationResponse:
        metadata = self._record("NotifyClientTermination", context)
        client_id = metadata.get("x-mq-client-id", "")
        self.terminations.append((client_id, request))
        loop_time = asyncio.get_running_loop().time()
        for flight in self._in_flight.values():
            if flight.client_id == client_id and flight.visible_at == float("inf"):
                flight.visible_at = loop_time  # no more renewal: visible again
        await self._notify()
        return service_pb2.NotifyClientTerminationResponse(status=status(Code.OK))

    async def check_transaction(self, client_id: str, transaction_id: str) -> None:
        """Ask the producer ``client_id`` about a half message, as a broker's check-back does."""
        half = self.halves[transaction_id]
        message = definition_pb2.Message()
        message.CopyFrom(half.message)
        message.system_properties.body_digest.CopyFrom(
            definition_pb2.Digest(
                type=definition_pb2.MD5, checksum=hashlib.md5(message.body).hexdigest().upper()
            )
        )
        await self.peers[client_id].outgoing.put(
            service_pb2.TelemetryCommand(
                recover_orphaned_transaction_command=service_pb2.RecoverOrphanedTransactionCommand(
                    message=message, transaction_id=transaction_id
                )
            )
        )

    # ------------------------------------------------------------------ sending

    def _store(self, message: definition_pb2.Message) -> Stored:
        topic = message.topic.name
        entries = self.stored.setdefault(topic, [])
        group = message.system_properties.message_group
        queue_id = (
            zlib.crc32(group.encode()) % self.queues_per_topic
            if group
            else len(entries) % self.queues_per_topic
        )
        stored = Stored(message, queue_id, len(entries))
        entries.append(stored)
        return stored

    async def SendMessage(
        self, request: service_pb2.SendMessageRequest, context: Any
    ) -> service_pb2.SendMessageResponse:
        self._record("SendMessage", context)
        self.send_requests.append(request)
        if self.send_delay_s:
            await asyncio.sleep(self.send_delay_s)
        if self.send_failures:
            code = self.send_failures.pop(0)
            entries = [
                service_pb2.SendResultEntry(status=status(code), message_id=m.system_properties.message_id)
                for m in request.messages
            ]
            return service_pb2.SendMessageResponse(status=status(code), entries=entries)
        entries = []
        for message in request.messages:
            code = self.send_entry_codes(message) if self.send_entry_codes is not None else Code.OK
            if code != Code.OK:
                entries.append(
                    service_pb2.SendResultEntry(
                        status=status(code), message_id=message.system_properties.message_id
                    )
                )
                continue
            if message.system_properties.message_type == definition_pb2.TRANSACTION:
                transaction_id = f"tx-{next(self._transactions)}"
                self.halves[transaction_id] = Stored(message, 0, -1)
                entries.append(
                    service_pb2.SendResultEntry(
                        status=status(Code.OK),
                        message_id=message.system_properties.message_id,
                        transaction_id=transaction_id,
                    )
                )
                continue
            stored = self._store(message)
            entries.append(
                service_pb2.SendResultEntry(
                    status=status(Code.OK),
                    message_id=message.system_properties.message_id,
                    offset=stored.offset,
                    recall_handle="recall-" + message.system_properties.message_id
                    if message.system_properties.HasField("delivery_timestamp")
                    else "",
                )
            )
        await self._notify()
        codes = {entry.status.code for entry in entries}
        overall = status(codes.pop()) if len(codes) == 1 else status(Code.MULTIPLE_RESULTS)
        if self.apache_batches and len(entries) > 1 and overall.code == Code.OK:
            joined = service_pb2.SendResultEntry(
                status=status(Code.OK),
                message_id=",".join(entry.message_id for entry in entries),
                offset=entries[0].offset,
            )
            return service_pb2.SendMessageResponse(status=overall, entries=[joined])
        return service_pb2.SendMessageResponse(status=overall, entries=entries)

    async def EndTransaction(
        self, request: service_pb2.EndTransactionRequest, context: Any
    ) -> service_pb2.EndTransactionResponse:
        self._record("EndTransaction", context)
        self.end_transactions.append(request)
        half = self.halves.pop(request.transaction_id, None)
        if half is None:
            return service_pb2.EndTransactionResponse(status=status(Code.INVALID_TRANSACTION_ID))
        if request.resolution == definition_pb2.COMMIT:
            message = definition_pb2.Message()
            message.CopyFrom(half.message)
            message.system_properties.message_type = definition_pb2.NORMAL
            self._store(message)
            await self._notify()
        return service_pb2.EndTransactionResponse(status=status(Code.OK))

    async def RecallMessage(
        self, request: service_pb2.RecallMessageRequest, context: Any
    ) -> service_pb2.RecallMessageResponse:
        self._record("RecallMessage", context)
        return service_pb2.RecallMessageResponse(status=status(Code.OK), message_id=request.recall_handle[7:])

    # ------------------------------------------------------------------ receiving

    def _matches(self, message: definition_pb2.Message, expression: definition_pb2.FilterExpression) -> bool:
        if expression.type == definition_pb2.SQL or expression.expression in ("", "*"):
            return True
        tags = {tag.strip() for tag in expression.expression.split("||")}
        return message.system_properties.tag in tags

    def _take(
        self, group: str, request: service_pb2.ReceiveMessageRequest, client_id: str
    ) -> list[definition_pb2.Message]:
        topic = request.message_queue.topic.name
        loop_time = asyncio.get_running_loop().time()
        fifo = group in self.fifo_groups
        batch = max(request.batch_size, 1)
        visible_for = (
            seconds_of(request.invisible_duration) if request.HasField("invisible_duration") else 60.0
        )
        taken: list[InFlight] = []
        # Redeliveries first: in-flight messages whose invisibility ran out.
        mine = [
            f for f in self._in_flight.values() if f.group == group and f.stored.message.topic.name == topic
        ]
        for flight in sorted(mine, key=lambda f: f.stored.offset):
            if len(taken) >= batch:
                break
            if flight.visible_at <= loop_time:
                del self._in_flight[flight.receipt_handle]
                if flight.attempt >= self.max_delivery_attempts:
                    self.dead_letters.append((group, flight.stored.message.system_properties.message_id))
                    continue
                taken.append(
                    InFlight(
                        flight.stored, group, flight.attempt + 1, f"rh-{next(self._handles)}", client_id, 0
                    )
                )
        if fifo and any(
            f.group == group and f.stored.message.topic.name == topic for f in self._in_flight.values()
        ):
            return self._deliver(taken, request, visible_for, loop_time)  # blocked while any is unacked
        cursor_key = (group, topic)
        cursor = self._cursors.get(cursor_key, 0)
        entries = self.stored.get(topic, [])
        while cursor < len(entries) and len(taken) < batch:
            stored = entries[cursor]
            cursor += 1
            # (The fake delivers delay messages at once: no timers.)
            if self._matches(stored.message, request.filter_expression):
                taken.append(InFlight(stored, group, 1, f"rh-{next(self._handles)}", client_id, 0))
        self._cursors[cursor_key] = cursor
        return self._deliver(taken, request, visible_for, loop_time)

    def _deliver(
        self,
        taken: list[InFlight],
        request: service_pb2.ReceiveMessageRequest,
        visible_for: float,
        loop_time: float,
    ) -> list[definition_pb2.Message]:
        out = []
        for flight in taken:
            flight.visible_at = float("inf") if request.auto_renew else loop_time + visible_for
            self._in_flight[flight.receipt_handle] = flight
            message = definition_pb2.Message()
            message.CopyFrom(flight.stored.message)
            system = message.system_properties
            system.receipt_handle = flight.receipt_handle
            system.delivery_attempt = flight.attempt
            system.queue_id = flight.stored.queue_id
            system.queue_offset = flight.stored.offset
            system.body_encoding = definition_pb2.IDENTITY
            system.body_digest.CopyFrom(
                definition_pb2.Digest(
                    type=definition_pb2.MD5,
                    checksum=hashlib.md5(message.body + (b"!" if self.corrupt_digests else b""))
                    .hexdigest()
                    .upper(),
                )
            )
            system.store_timestamp.CopyFrom(timestamp_pb2.Timestamp(seconds=1_700_000_000))
            out.append(message)
        return out

    async def ReceiveMessage(
        self, request: service_pb2.ReceiveMessageRequest, context: Any
    ) -> AsyncIterator[service_pb2.ReceiveMessageResponse]:
        metadata = self._record("ReceiveMessage", context)
        self.receive_requests.append(request)
        if self.receive_failures:
            yield service_pb2.ReceiveMessageResponse(status=status(self.receive_failures.pop(0)))
            return
        group = request.group.name
        wait_s = seconds_of(request.long_polling_timeout) if request.HasField("long_polling_timeout") else 1.0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(wait_s, 5.0)
        while True:
            messages = self._take(group, request, metadata.get("x-mq-client-id", ""))
            remaining = deadline - loop.time()
            if messages or remaining <= 0:
                break
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.05))
        if not messages:
            yield service_pb2.ReceiveMessageResponse(status=status(Code.MESSAGE_NOT_FOUND))
            return
        yield service_pb2.ReceiveMessageResponse(status=status(Code.OK))
        for message in messages:
            yield service_pb2.ReceiveMessageResponse(message=message)
        yield service_pb2.ReceiveMessageResponse(
            delivery_timestamp=timestamp_pb2.Timestamp(seconds=1_700_000_000)
        )

    async def AckMessage(
        self, request: service_pb2.AckMessageRequest, context: Any
    ) -> service_pb2.AckMessageResponse:
        self._record("AckMessage", context)
        entries = []
        for entry in request.entries:
            flight = self._in_flight.get(entry.receipt_handle)
            if flight is None:
                entries.append(
                    service_pb2.AckMessageResultEntry(
                        message_id=entry.message_id,
                        receipt_handle=entry.receipt_handle,
                        status=status(Code.INVALID_RECEIPT_HANDLE),
                    )
                )
                continue
            del self._in_flight[entry.receipt_handle]
            self.acks.append((request.group.name, entry.message_id))
            entries.append(
                service_pb2.AckMessageResultEntry(
                    message_id=entry.message_id, receipt_handle=entry.receipt_handle, status=status(Code.OK)
                )
            )
        await self._notify()
        codes = {entry.status.code for entry in entries}
        overall = status(codes.pop()) if len(codes) == 1 else status(Code.MULTIPLE_RESULTS)
        return service_pb2.AckMessageResponse(status=overall, entries=entries)

    async def ChangeInvisibleDuration(
        self, request: service_pb2.ChangeInvisibleDurationRequest, context: Any
    ) -> service_pb2.ChangeInvisibleDurationResponse:
        self._record("ChangeInvisibleDuration", context)
        flight = self._in_flight.pop(request.receipt_handle, None)
        if flight is None:
            return service_pb2.ChangeInvisibleDurationResponse(status=status(Code.INVALID_RECEIPT_HANDLE))
        seconds = seconds_of(request.invisible_duration)
        self.nacks.append((request.group.name, request.message_id, seconds))
        flight.receipt_handle = f"rh-{next(self._handles)}"
        flight.visible_at = asyncio.get_running_loop().time() + seconds
        self._in_flight[flight.receipt_handle] = flight
        await self._notify()
        return service_pb2.ChangeInvisibleDurationResponse(
            status=status(Code.OK), receipt_handle=flight.receipt_handle
        )

    def in_flight_ids(self) -> list[str]:
        return [flight.stored.message.system_properties.message_id for flight in self._in_flight.values()]

    # ------------------------------------------------------------------ not used by the client

    async def ForwardMessageToDeadLetterQueue(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")

    async def PullMessage(self, request: Any, context: Any) -> AsyncIterator[service_pb2.PullMessageResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")
        yield service_pb2.PullMessageResponse()

    async def UpdateOffset(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")

    async def GetOffset(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")

    async def QueryOffset(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")

    async def SyncLiteSubscription(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")


class FakeExtensions(extensions_pb2_grpc.ExtensionsServicer):
    """``homing.v1.Extensions`` over the fake's own SendMessage and ReceiveMessage."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.streams_to_break = 0  # the next send streams fail (UNAVAILABLE) after reading a request
        self.streams_opened = 0

    async def ReceiveBatch(
        self, request: service_pb2.ReceiveMessageRequest, context: Any
    ) -> extensions_pb2.ReceiveBatchResponse:
        self.broker._record("ReceiveBatch", context)
        response = extensions_pb2.ReceiveBatchResponse()
        async for frame in self.broker.ReceiveMessage(request, context):
            content = frame.WhichOneof("content")
            if content == "status":
                response.status.CopyFrom(frame.status)
            elif content == "message":
                response.messages.append(frame.message)
            elif content == "delivery_timestamp":
                response.delivery_timestamp.CopyFrom(frame.delivery_timestamp)
        return response

    async def SendStream(
        self, request_iterator: AsyncIterator[extensions_pb2.StreamedSendRequest], context: Any
    ) -> AsyncIterator[extensions_pb2.StreamedSendResponse]:
        self.broker._record("SendStream", context)
        self.streams_opened += 1
        await context.send_initial_metadata(())
        async for item in request_iterator:
            if self.streams_to_break:
                self.streams_to_break -= 1
                await context.abort(grpc.StatusCode.UNAVAILABLE, "broken on purpose")
            response = await self.broker.SendMessage(item.request, context)
            yield extensions_pb2.StreamedSendResponse(request_id=item.request_id, response=response)
