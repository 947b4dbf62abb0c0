"""The RocketMQ 5 ``MessagingService``, served over grpc.aio in front of one broker.

Theory of operation. Every RPC starts the same way (:meth:`MessagingServicer._begin`): the
signature is checked when credentials are configured (:mod:`homing.server.auth`), the
``x-mq-client-id`` header must be there (``CLIENT_ID_REQUIRED``), the namespace is read
(:mod:`homing.server.names`) and the client is marked as seen. The request is then decoded into
the broker's types and the broker does the work. Outcomes travel as protocol statuses inside the
response, as the clients expect: a :class:`~homing.broker.errors.BrokerError` becomes its status,
an invalid filter ``ILLEGAL_FILTER_EXPRESSION``, and anything unexpected ``INTERNAL_SERVER_ERROR``
with the traceback in the broker's log only. gRPC status codes are used only where the protocol
has no status to carry one: a refused Telemetry stream (``UNAUTHENTICATED``/``INVALID_ARGUMENT``)
and the offset-based RPCs Homing does not serve (``UNIMPLEMENTED``).

Decisions worth knowing:

- Routes name one broker, ``homing`` with id 0 (clients use only id 0), at the advertised address,
  READ_WRITE (READ for dead-letter topics, which cannot be sent to). Every queue accepts the
  topic's message types (all four for auto-created topics).
- Push consumers (a non-FIFO group) get one assignment with queue id -1, "pop from any queue";
  FIFO groups get every queue. Receives pop from the whole topic whatever queue they name: the
  broker keeps FIFO order per queue itself.
- ReceiveMessage streams a status first (OK, or ``MESSAGE_NOT_FOUND`` when the long poll ends
  empty), then the messages, then the delivery timestamp. The long poll lasts what the request
  asks, at most ``long_polling_timeout_s``, and ends early enough to answer before the client's
  deadline. ``auto_renew`` (push consumers) means the broker picks and renews the invisible time.
- ChangeInvisibleDuration from a push consumer is a nack: the broker applies the group's retry
  backoff for that attempt and ignores the duration sent (the Node client sends seconds as
  milliseconds). Simple consumers get the duration they ask for.
- SendMessage answers per message; the overall status is the common status when all entries
  agree, else ``MULTIPLE_RESULTS`` (:func:`homing.server.status.combined_status`).
- EndTransaction and RecallMessage call ``broker.end_transaction(topic=, message_id=,
  transaction_id=, commit=, source="producer"|"check")`` and ``broker.recall(topic=,
  recall_handle=) -> message_id`` when the broker has them, else answer ``NOT_IMPLEMENTED``.
  An EndTransaction with an unspecified resolution ("don't know yet") is answered OK and
  changes nothing: the broker checks back later.
- Transaction check-backs go out through :attr:`MessagingServicer.telemetry`
  (:meth:`TelemetryRegistry.recover_orphaned_transaction`) to a producer of the topic.

Homing's extensions (``homing.v1.Extensions``, served by the same object for Homing's own client;
see docs/SERVER.md): ``ReceiveBatch`` is ReceiveMessage answered in one response (one gRPC write
instead of one per message, and at most ``MAX_BATCH_RESPONSE_BYTES`` of bodies), ``SendStream``
carries SendMessage calls over one long-lived stream (a stream message each way instead of a whole
call: about half the gRPC work per message on both sides). Each runs exactly the code of the RPC it
stands for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Never, Protocol, TypeVar

import grpc
from google.protobuf.message import Message as ProtobufMessage

from homing.broker.broker import Broker
from homing.broker.errors import BrokerError
from homing.broker.filters import CompiledFilter, FilterExpressionError, compile_filter
from homing.broker.metadata import GroupConfig
from homing.broker.model import Delivery, Message
from homing.broker.system_topics import is_dlq_topic
from homing.clock import Clock
from homing.config import Address
from homing.protocol import (
    definition_pb2,
    extensions_pb2,
    extensions_pb2_grpc,
    service_pb2,
    service_pb2_grpc,
)
from homing.server.auth import Authenticator
from homing.server.codec import (
    decode_message,
    duration_s,
    encode_delivery,
    endpoints_of,
    message_types_to_wire,
    set_timestamp,
    to_timestamp,
)
from homing.server.names import qualify, unqualify, validate_namespace
from homing.server.status import combined_status, error_status, ok_status, status
from homing.server.telemetry import (
    CLIENT_KINDS,
    SettingsPolicy,
    TelemetryRegistry,
    TelemetryStream,
    settings_reply,
)

__all__ = ["BROKER_NAME", "CallContext", "MessagingServicer"]

log = logging.getLogger("homing.server")

BROKER_NAME = "homing"
BROKER_ID = 0  # the official clients use only queues of broker id 0 (the master)
MAX_CLIENT_ID_CHARS = 256
MAX_ENTRIES_PER_CALL = 1024
MAX_RECEIVE_BATCH = 1024
MAX_STREAM_IN_FLIGHT = 1024  # SendStream requests read and not yet answered; then reading waits
LONG_POLL_MARGIN_S = 0.5  # answer this long before the client's deadline
# Bodies in one ReceiveBatch answer, at most (the first message goes whatever its size): well
# under the 130 MiB Homing's client accepts in one response.
MAX_BATCH_RESPONSE_BYTES = 32 * 1024 * 1024
INTERNAL_MESSAGE = "internal error in the broker (its log has the details)"

_Request = TypeVar("_Request", bound=ProtobufMessage)
_Response = TypeVar("_Response", bound=ProtobufMessage)
_Response_co = TypeVar("_Response_co", bound=ProtobufMessage, covariant=True)
_Context = grpc.aio.ServicerContext[Any, Any]


class _ResponseType(Protocol[_Response_co]):
    def __call__(self, *, status: definition_pb2.Status) -> _Response_co: ...


_Handler = Callable[["MessagingServicer", _Request, "CallContext"], Awaitable[_Response]]
_Rpc = Callable[["MessagingServicer", _Request, _Context], Coroutine[Any, Any, _Response]]


def _unary_rpc(
    response_type: _ResponseType[_Response],
) -> Callable[[_Handler[_Request, _Response]], _Rpc[_Request, _Response]]:
    """The gRPC method of a unary RPC, from its handler ``(self, request, call)`` of the same name.

    Every unary RPC has the same shape: the common start of a call (:meth:`MessagingServicer._begin`),
    the handler, and its errors turned into the response's status (:meth:`MessagingServicer._unary`).
    """

    def decorate(handler: _Handler[_Request, _Response]) -> _Rpc[_Request, _Response]:
        rpc_name = handler.__name__

        async def rpc(self: MessagingServicer, request: _Request, context: _Context) -> _Response:
            return await self._unary(rpc_name, request, handler, response_type, context=context)

        rpc.__name__ = rpc.__qualname__ = rpc_name
        rpc.__doc__ = handler.__doc__
        return rpc

    return decorate


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who is calling, in which namespace (from the request headers)."""

    client_id: str
    namespace: str
    language: str

    def namespace_of(self, resource: definition_pb2.Resource) -> str:
        namespace = self.namespace or resource.resource_namespace
        validate_namespace(namespace)
        return namespace

    def name(self, resource: definition_pb2.Resource) -> str:
        """The broker's name for a client's topic or group resource."""
        return qualify(self.namespace_of(resource), resource.name)

    def resource(self, broker_name: str, like: definition_pb2.Resource) -> definition_pb2.Resource:
        """A resource for the client, in the namespace of the resource it sent."""
        namespace = self.namespace_of(like)
        return definition_pb2.Resource(resource_namespace=namespace, name=unqualify(namespace, broker_name))


# The OK status of every entry of a call: assigning a message field copies it, so one instance can
# be shared, as long as nothing ever mutates it. Merging its bytes into an entry is cheaper still.
_OK = ok_status()
_OK_BYTES = _OK.SerializeToString()


def _metadata(context: _Context) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            headers[key.lower()] = value
    return headers


def _describe(response: ProtobufMessage) -> str:
    """``CODE message`` of a response's status, for the debug log."""
    outcome = getattr(response, "status", None)
    if not isinstance(outcome, definition_pb2.Status):
        return "?"
    return f"{definition_pb2.Code.Name(outcome.code)} {outcome.message}"


def _filter_of(expression: definition_pb2.FilterExpression) -> CompiledFilter:
    kind = "SQL92" if expression.type == definition_pb2.SQL else "TAG"
    return compile_filter(kind, expression.expression or None)


def _filter_error_status(error: FilterExpressionError) -> definition_pb2.Status:
    return status("ILLEGAL_FILTER_EXPRESSION", f"invalid filter expression: {error.message}")


class MessagingServicer(service_pb2_grpc.MessagingServiceServicer, extensions_pb2_grpc.ExtensionsServicer):
    """``apache.rocketmq.v2.MessagingService`` and ``homing.v1.Extensions`` over one broker."""

    def __init__(
        self,
        broker: Broker,
        *,
        advertise: Address,
        long_polling_timeout_s: float,
        clock: Clock,
        authenticator: Authenticator | None = None,
        telemetry: TelemetryRegistry | None = None,
    ) -> None:
        self._broker = broker
        self._endpoints = endpoints_of(advertise)
        self._store_host = str(advertise)
        self._long_polling_timeout_s = long_polling_timeout_s
        self._clock = clock
        self._authenticator = authenticator
        self.telemetry = telemetry if telemetry is not None else TelemetryRegistry(self._store_host)
        self._policy = SettingsPolicy(
            max_body_bytes=broker.options.max_body_bytes, long_polling_timeout_s=long_polling_timeout_s
        )
        self._closing = False
        self._receives: set[asyncio.Task[list[Delivery]]] = set()
        self._send_stream_readers: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    def begin_shutdown(self) -> None:
        """End telemetry streams and waiting receives now, so that the server can stop promptly.

        A receive cut short answers ``MESSAGE_NOT_FOUND``; anything it had already popped is
        redelivered when its invisible time ends (nothing acknowledged is affected).
        """
        self._closing = True
        self.telemetry.close_all()
        for task in list(self._receives):
            task.cancel()
        for reader in list(self._send_stream_readers):
            reader.cancel()  # read no more: the streams end once their sends in flight are answered

    # ------------------------------------------------------------------ common

    def _begin(self, context: _Context) -> CallContext:
        headers = _metadata(context)
        if self._authenticator is not None:
            self._authenticator.check(headers)
        client_id = headers.get("x-mq-client-id", "").strip()
        if not client_id:
            raise BrokerError("CLIENT_ID_REQUIRED", "the x-mq-client-id header is required")
        if len(client_id) > MAX_CLIENT_ID_CHARS:
            raise BrokerError(
                "BAD_REQUEST", f"x-mq-client-id is longer than {MAX_CLIENT_ID_CHARS} characters"
            )
        namespace = headers.get("x-mq-namespace", "").strip()
        validate_namespace(namespace)
        self._broker.clients.seen(client_id)
        return CallContext(client_id, namespace, headers.get("x-mq-language", ""))

    async def _begin_stream(self, context: _Context) -> CallContext:
        """:meth:`_begin` for a stream: a refusal ends it with a gRPC status (there is no response
        to carry a protocol status yet)."""
        try:
            return self._begin(context)
        except BrokerError as error:
            code = (
                grpc.StatusCode.UNAUTHENTICATED
                if error.code == "UNAUTHORIZED"
                else grpc.StatusCode.INVALID_ARGUMENT
            )
            await context.abort(code, error.message)
            raise  # pragma: no cover - abort raises

    async def _unary(
        self,
        name: str,
        request: _Request,
        handler: _Handler[_Request, _Response],
        response_type: _ResponseType[_Response],
        *,
        context: _Context | None = None,
        call: CallContext | None = None,
    ) -> _Response:
        """Run ``handler``; errors become the response's status. ``call``: already begun (a stream)."""
        try:
            if call is None:
                assert context is not None
                call = self._begin(context)
            response = await handler(self, request, call)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s from %s: %s", name, call.client_id, _describe(response))
            return response
        except BrokerError as error:
            if error.code in ("INTERNAL_SERVER_ERROR", "INTERNAL_ERROR"):
                log.error("%s failed: %s", name, error.message)
            else:
                log.debug("%s refused: %s %s", name, error.code, error.message)
            return response_type(status=error_status(error))
        except FilterExpressionError as error:
            return response_type(status=_filter_error_status(error))
        except Exception:
            log.exception("%s failed unexpectedly", name)
            return response_type(status=status("INTERNAL_SERVER_ERROR", INTERNAL_MESSAGE))

    def _queue(
        self,
        call: CallContext,
        topic: str,
        like: definition_pb2.Resource,
        queue_id: int,
        types: list[definition_pb2.MessageType.ValueType],
    ) -> definition_pb2.MessageQueue:
        permission = definition_pb2.READ if is_dlq_topic(topic) else definition_pb2.READ_WRITE
        return definition_pb2.MessageQueue(
            topic=call.resource(topic, like),
            id=queue_id,
            permission=permission,
            broker=definition_pb2.Broker(name=BROKER_NAME, id=BROKER_ID, endpoints=self._endpoints),
            accept_message_types=types,
        )

    # ------------------------------------------------------------------ routes, liveness

    @_unary_rpc(service_pb2.QueryRouteResponse)
    async def QueryRoute(
        self, request: service_pb2.QueryRouteRequest, call: CallContext
    ) -> service_pb2.QueryRouteResponse:
        topic = self._broker.metadata.topic(call.name(request.topic))
        types = message_types_to_wire(topic.message_types)
        queues = [
            self._queue(call, topic.name, request.topic, queue_id, types)
            for queue_id in range(topic.queue_count)
        ]
        return service_pb2.QueryRouteResponse(status=ok_status(), message_queues=queues)

    @_unary_rpc(service_pb2.HeartbeatResponse)
    async def Heartbeat(
        self, request: service_pb2.HeartbeatRequest, call: CallContext
    ) -> service_pb2.HeartbeatResponse:
        # _begin marked the client as seen: that is all a heartbeat is for.
        return service_pb2.HeartbeatResponse(status=ok_status())

    @_unary_rpc(service_pb2.NotifyClientTerminationResponse)
    async def NotifyClientTermination(
        self, request: service_pb2.NotifyClientTerminationRequest, call: CallContext
    ) -> service_pb2.NotifyClientTerminationResponse:
        self._broker.clients.terminated(call.client_id)
        log.debug("client %s said goodbye", call.client_id)
        return service_pb2.NotifyClientTerminationResponse(status=ok_status())

    @_unary_rpc(service_pb2.QueryAssignmentResponse)
    async def QueryAssignment(
        self, request: service_pb2.QueryAssignmentRequest, call: CallContext
    ) -> service_pb2.QueryAssignmentResponse:
        topic = self._broker.metadata.topic(call.name(request.topic))
        group = self._broker.metadata.group(call.name(request.group))
        types = message_types_to_wire(topic.message_types)
        queue_ids = list(range(topic.queue_count)) if group.fifo else [-1]
        assignments = [
            definition_pb2.Assignment(
                message_queue=self._queue(call, topic.name, request.topic, queue_id, types)
            )
            for queue_id in queue_ids
        ]
        return service_pb2.QueryAssignmentResponse(status=ok_status(), assignments=assignments)

    # ------------------------------------------------------------------ sending

    async def _send_message(
        self, request: service_pb2.SendMessageRequest, call: CallContext
    ) -> service_pb2.SendMessageResponse:
        if not request.messages:
            raise BrokerError("BAD_REQUEST", "a SendMessage request needs at least one message")
        if len(request.messages) > MAX_ENTRIES_PER_CALL:
            raise BrokerError("BAD_REQUEST", f"at most {MAX_ENTRIES_PER_CALL} messages per SendMessage")
        outcomes: list[BrokerError | None] = []
        decoded: list[Message] = []
        names: dict[tuple[str, str], str] = {}  # a batch is usually of one topic: name it once
        for wire in request.messages:
            resource = wire.topic
            key = (resource.resource_namespace, resource.name)
            try:
                name = names.get(key)
                if name is None:
                    name = names[key] = call.name(resource)
                decoded.append(decode_message(wire, name))
                outcomes.append(None)
            except BrokerError as error:
                outcomes.append(error)
        results = iter(await self._broker.send(decoded) if decoded else [])
        # Built in place (entries.add, the shared OK status merged from its bytes): several times
        # cheaper per entry than making each entry and its status as objects and copying them in.
        response = service_pb2.SendMessageResponse()
        add_entry = response.entries.add
        statuses: list[definition_pb2.Status] | None = None  # only once an entry fails
        for index, (wire, outcome) in enumerate(zip(request.messages, outcomes, strict=True)):
            result = outcome if outcome is not None else next(results)
            if isinstance(result, BrokerError):
                message_id = wire.system_properties.message_id
                if result.code in ("INTERNAL_SERVER_ERROR", "INTERNAL_ERROR"):
                    log.error("send of %s failed: %s", message_id, result.message)
                entry_status = error_status(result)
                add_entry(status=entry_status, message_id=message_id)
                if statuses is None:
                    statuses = [_OK] * index
                statuses.append(entry_status)
                continue
            entry = add_entry(message_id=result.message_id, offset=result.queue_offset)
            entry.status.MergeFromString(_OK_BYTES)
            if result.transaction_id:
                entry.transaction_id = result.transaction_id
            if result.recall_handle:
                entry.recall_handle = result.recall_handle
            if statuses is not None:
                statuses.append(_OK)
        if statuses is None:
            response.status.MergeFromString(_OK_BYTES)
        else:
            response.status.CopyFrom(combined_status(statuses))
        return response

    @_unary_rpc(service_pb2.SendMessageResponse)
    async def SendMessage(
        self, request: service_pb2.SendMessageRequest, call: CallContext
    ) -> service_pb2.SendMessageResponse:
        return await self._send_message(request, call)

    async def SendStream(
        self, request_iterator: AsyncIterator[extensions_pb2.StreamedSendRequest], context: _Context
    ) -> AsyncIterator[extensions_pb2.StreamedSendResponse]:
        """``homing.v1.Extensions/SendStream``: SendMessage calls as messages of one stream.

        The headers are checked once, when the stream opens (a refusal ends the stream with a gRPC
        status, as for Telemetry), and the response headers are sent at once. Each request is
        served as a SendMessage call of its own, all of them concurrently (their appends share
        group commits), and answered when done, in any order. When the client stops writing, or
        the broker shuts down, the stream ends once every request read has been answered.
        """
        call = await self._begin_stream(context)
        # Headers now: the client waits for them before writing (see homing.client._extensions).
        await context.send_initial_metadata(())
        answers: asyncio.Queue[extensions_pb2.StreamedSendResponse | None] = asyncio.Queue()
        unanswered = 0
        room = asyncio.Event()  # set while fewer than MAX_STREAM_IN_FLIGHT are unanswered
        room.set()
        tasks: set[asyncio.Task[None]] = set()

        async def answer(item: extensions_pb2.StreamedSendRequest) -> None:
            nonlocal unanswered
            try:
                response = await self._unary(
                    "SendMessage", item.request, MessagingServicer._send_message,
                    service_pb2.SendMessageResponse, call=call,
                )  # fmt: skip
            finally:
                unanswered -= 1
                room.set()
            answers.put_nowait(
                extensions_pb2.StreamedSendResponse(request_id=item.request_id, response=response)
            )

        async def read() -> None:
            nonlocal unanswered
            try:
                if self._closing:
                    return  # opened while the broker shuts down: answer nothing, end at once
                async for item in request_iterator:
                    self._broker.clients.seen(call.client_id)
                    unanswered += 1
                    if unanswered >= MAX_STREAM_IN_FLIGHT:
                        room.clear()
                    task = asyncio.create_task(answer(item))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    await room.wait()  # at the limit: read no more until one is answered
            except asyncio.CancelledError:
                if not self._closing:
                    raise
            except Exception as error:  # the client went away mid-read, or sent garbage
                log.debug("send stream of %s ended: %r", call.client_id, error)
            finally:
                answers.put_nowait(None)  # no more requests

        reader = asyncio.create_task(read())
        self._send_stream_readers.add(reader)
        reader.add_done_callback(self._send_stream_readers.discard)
        reading = True
        try:
            while reading or unanswered or not answers.empty():
                answer_or_end = await answers.get()
                if answer_or_end is None:
                    reading = False
                else:
                    yield answer_or_end
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()  # the client is gone: nobody reads these answers

    # ------------------------------------------------------------------ receiving

    def _long_poll_s(self, request: service_pb2.ReceiveMessageRequest, context: _Context) -> float:
        wait_s = self._long_polling_timeout_s
        if request.HasField("long_polling_timeout"):
            wait_s = min(duration_s(request.long_polling_timeout), wait_s)
        remaining = context.time_remaining()
        if remaining is not None:
            wait_s = min(wait_s, remaining - LONG_POLL_MARGIN_S)
        return max(wait_s, 0.0)

    async def ReceiveMessage(
        self, request: service_pb2.ReceiveMessageRequest, context: _Context
    ) -> AsyncIterator[service_pb2.ReceiveMessageResponse]:
        outcome, call, deliveries = await self._receive_outcome("ReceiveMessage", request, context)
        yield service_pb2.ReceiveMessageResponse(status=outcome)
        if call is None or not deliveries:
            return
        now_ms = self._clock.now_ms()
        for delivery, resource in zip(deliveries, self._topics_of(call, request, deliveries), strict=True):
            response = service_pb2.ReceiveMessageResponse()
            encode_delivery(
                delivery, topic=resource, store_host=self._store_host, now_ms=now_ms, into=response.message
            )
            yield response
        yield service_pb2.ReceiveMessageResponse(delivery_timestamp=to_timestamp(now_ms))

    async def ReceiveBatch(
        self, request: service_pb2.ReceiveMessageRequest, context: _Context
    ) -> extensions_pb2.ReceiveBatchResponse:
        """``homing.v1.Extensions/ReceiveBatch``: ReceiveMessage's answer in one response.

        At most ``MAX_BATCH_RESPONSE_BYTES`` of bodies (the first message goes whatever its size):
        the broker pops no more than that, so nothing popped is held back.
        """
        outcome, call, deliveries = await self._receive_outcome(
            "ReceiveBatch", request, context, max_bytes=MAX_BATCH_RESPONSE_BYTES
        )
        response = extensions_pb2.ReceiveBatchResponse(status=outcome)
        if call is None or not deliveries:
            return response
        now_ms = self._clock.now_ms()
        add = response.messages.add
        for delivery, resource in zip(deliveries, self._topics_of(call, request, deliveries), strict=True):
            encode_delivery(delivery, topic=resource, store_host=self._store_host, now_ms=now_ms, into=add())
        set_timestamp(response.delivery_timestamp, now_ms)
        return response

    async def _receive_outcome(
        self,
        name: str,
        request: service_pb2.ReceiveMessageRequest,
        context: _Context,
        max_bytes: int | None = None,
    ) -> tuple[definition_pb2.Status, CallContext | None, list[Delivery]]:
        """The status of a receive, the caller and the deliveries (None and [] after an error)."""
        try:
            call = self._begin(context)
            topic = call.name(request.message_queue.topic)
            deliveries = await self._receive(request, call, topic, context, max_bytes)
        except BrokerError as error:
            if error.code in ("INTERNAL_SERVER_ERROR", "INTERNAL_ERROR"):
                log.error("%s failed: %s", name, error.message)
            return error_status(error), None, []
        except FilterExpressionError as error:
            return _filter_error_status(error), None, []
        except Exception:
            log.exception("%s failed unexpectedly", name)
            return status("INTERNAL_SERVER_ERROR", INTERNAL_MESSAGE), None, []
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s from %s: %s",
                name,
                call.client_id,
                [(delivery.message.message_id, delivery.delivery_attempt) for delivery in deliveries],
            )
        if not deliveries:
            return status("MESSAGE_NOT_FOUND", "no new message, try again later"), call, []
        return ok_status(), call, deliveries

    @staticmethod
    def _topics_of(
        call: CallContext, request: service_pb2.ReceiveMessageRequest, deliveries: list[Delivery]
    ) -> list[definition_pb2.Resource]:
        """Each delivery's topic as the client names it (in the namespace of the topic it asked for)."""
        asked = request.message_queue.topic
        resources: dict[str, definition_pb2.Resource] = {}
        found: list[definition_pb2.Resource] = []
        for delivery in deliveries:
            message_topic = delivery.message.topic
            resource = resources.get(message_topic)
            if resource is None:
                resource = resources[message_topic] = call.resource(message_topic, asked)
            found.append(resource)
        return found

    async def _receive(
        self,
        request: service_pb2.ReceiveMessageRequest,
        call: CallContext,
        topic: str,
        context: _Context,
        max_bytes: int | None,
    ) -> list[Delivery]:
        group = call.name(request.group)
        message_filter = _filter_of(request.filter_expression)
        if request.batch_size < 1:
            raise BrokerError("BAD_REQUEST", f"batch size must be at least 1, got {request.batch_size}")
        batch_size = min(request.batch_size, MAX_RECEIVE_BATCH)
        invisible_s: float | None = None
        if not request.auto_renew:
            if not request.HasField("invisible_duration"):
                raise BrokerError(
                    "ILLEGAL_INVISIBLE_TIME", "a receive without auto_renew needs an invisible duration"
                )
            invisible_s = duration_s(request.invisible_duration)
        if self._closing:
            return []
        task = asyncio.create_task(
            self._broker.receive(
                group=group,
                topic=topic,
                message_filter=message_filter,
                max_messages=batch_size,
                invisible_s=invisible_s,
                client_id=call.client_id,
                long_poll_timeout_s=self._long_poll_s(request, context),
                attempt_id=request.attempt_id if request.HasField("attempt_id") else "",
                max_bytes=max_bytes,
            )
        )
        self._receives.add(task)
        task.add_done_callback(self._receives.discard)
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._closing and task.cancelled() and (current is None or not current.cancelling()):
                return []  # cut short by begin_shutdown
            raise

    @_unary_rpc(service_pb2.AckMessageResponse)
    async def AckMessage(
        self, request: service_pb2.AckMessageRequest, call: CallContext
    ) -> service_pb2.AckMessageResponse:
        if not request.entries:
            raise BrokerError("BAD_REQUEST", "an AckMessage request needs at least one entry")
        if len(request.entries) > MAX_ENTRIES_PER_CALL:
            raise BrokerError("BAD_REQUEST", f"at most {MAX_ENTRIES_PER_CALL} entries per AckMessage")
        group = call.name(request.group)
        topic = call.name(request.topic)

        # One journal record for the whole call: all its acks share one durable append.
        outcomes = await self._broker.ack_many(
            group, topic, [entry.receipt_handle for entry in request.entries]
        )
        response = service_pb2.AckMessageResponse()
        add_entry = response.entries.add
        statuses: list[definition_pb2.Status] | None = None  # only once an entry fails
        for index, (entry, outcome) in enumerate(zip(request.entries, outcomes, strict=True)):
            if outcome is None:
                added = add_entry(message_id=entry.message_id, receipt_handle=entry.receipt_handle)
                added.status.MergeFromString(_OK_BYTES)  # in place: see _send_message
                if statuses is not None:
                    statuses.append(_OK)
                continue
            entry_status = error_status(outcome)
            add_entry(message_id=entry.message_id, receipt_handle=entry.receipt_handle, status=entry_status)
            if statuses is None:
                statuses = [_OK] * index
            statuses.append(entry_status)
        if statuses is None:
            response.status.MergeFromString(_OK_BYTES)
        else:
            response.status.CopyFrom(combined_status(statuses))
        return response

    @_unary_rpc(service_pb2.ChangeInvisibleDurationResponse)
    async def ChangeInvisibleDuration(
        self, request: service_pb2.ChangeInvisibleDurationRequest, call: CallContext
    ) -> service_pb2.ChangeInvisibleDurationResponse:
        group = call.name(request.group)
        topic = call.name(request.topic)
        session = self._broker.clients.find(call.client_id)
        invisible_s: float | None
        if session is not None and session.kind == "push_consumer":
            invisible_s = None  # a push consumer's nack: the group's backoff decides
        else:
            if not request.HasField("invisible_duration"):
                raise BrokerError("ILLEGAL_INVISIBLE_TIME", "an invisible duration is required")
            invisible_s = duration_s(request.invisible_duration)
        handle = await self._broker.change_invisible_duration(
            group, topic, request.receipt_handle, invisible_s
        )
        return service_pb2.ChangeInvisibleDurationResponse(status=ok_status(), receipt_handle=handle)

    @_unary_rpc(service_pb2.ForwardMessageToDeadLetterQueueResponse)
    async def ForwardMessageToDeadLetterQueue(
        self, request: service_pb2.ForwardMessageToDeadLetterQueueRequest, call: CallContext
    ) -> service_pb2.ForwardMessageToDeadLetterQueueResponse:
        group = call.name(request.group)
        topic = call.name(request.topic)
        reason = (
            f"the consumer gave up after delivery attempt {request.delivery_attempt} "
            f"of {request.max_delivery_attempts}"
        )
        await self._broker.forward_to_dead_letter(group, topic, request.receipt_handle, reason)
        return service_pb2.ForwardMessageToDeadLetterQueueResponse(status=ok_status())

    # ------------------------------------------------------------------ transactions, recall

    @_unary_rpc(service_pb2.EndTransactionResponse)
    async def EndTransaction(
        self, request: service_pb2.EndTransactionRequest, call: CallContext
    ) -> service_pb2.EndTransactionResponse:
        end_transaction = getattr(self._broker, "end_transaction", None)
        if end_transaction is None:
            raise BrokerError(
                "NOT_IMPLEMENTED", "transactional messages are not supported by this broker yet"
            )
        if request.resolution not in (definition_pb2.COMMIT, definition_pb2.ROLLBACK):
            # "Unknown": nothing to do now; the broker checks back later.
            return service_pb2.EndTransactionResponse(status=ok_status())
        await end_transaction(
            topic=call.name(request.topic),
            message_id=request.message_id,
            transaction_id=request.transaction_id,
            commit=request.resolution == definition_pb2.COMMIT,
            source="check" if request.source == definition_pb2.SOURCE_SERVER_CHECK else "producer",
        )
        return service_pb2.EndTransactionResponse(status=ok_status())

    @_unary_rpc(service_pb2.RecallMessageResponse)
    async def RecallMessage(
        self, request: service_pb2.RecallMessageRequest, call: CallContext
    ) -> service_pb2.RecallMessageResponse:
        recall = getattr(self._broker, "recall", None)
        if recall is None:
            raise BrokerError(
                "NOT_IMPLEMENTED", "recalling delayed messages is not supported by this broker yet"
            )
        if not request.recall_handle:
            raise BrokerError("BAD_REQUEST", "a recall handle is required")
        message_id = await recall(topic=call.name(request.topic), recall_handle=request.recall_handle)
        return service_pb2.RecallMessageResponse(status=ok_status(), message_id=str(message_id))

    # ------------------------------------------------------------------ telemetry

    async def Telemetry(
        self, request_iterator: AsyncIterator[service_pb2.TelemetryCommand], context: _Context
    ) -> AsyncIterator[service_pb2.TelemetryCommand]:
        call = await self._begin_stream(context)
        stream = self.telemetry.open(call.client_id, call.namespace)
        if self._closing:
            stream.close()
        reader = asyncio.create_task(self._read_telemetry(request_iterator, call, stream))
        try:
            while True:
                command = await stream.outgoing.get()
                if command is None:
                    break
                yield command
        finally:
            reader.cancel()
            if self.telemetry.closed(stream):
                self._broker.clients.terminated(call.client_id)

    async def _read_telemetry(
        self,
        request_iterator: AsyncIterator[service_pb2.TelemetryCommand],
        call: CallContext,
        stream: TelemetryStream,
    ) -> None:
        try:
            async for command in request_iterator:
                if command.HasField("settings"):
                    stream.offer(self._on_settings(command.settings, call, stream))
                # Thread stack traces and message verification results are not asked for: ignored.
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the client went away mid-read, or sent garbage
            log.debug("telemetry stream of %s ended: %r", call.client_id, error)
        finally:
            stream.close()

    def _on_settings(
        self, settings: definition_pb2.Settings, call: CallContext, stream: TelemetryStream
    ) -> service_pb2.TelemetryCommand:
        try:
            reply = self._settings(settings, call, stream)
        except BrokerError as error:
            return service_pb2.TelemetryCommand(status=error_status(error))
        except FilterExpressionError as error:
            return service_pb2.TelemetryCommand(status=_filter_error_status(error))
        except Exception:
            log.exception("settings of client %s failed unexpectedly", call.client_id)
            return service_pb2.TelemetryCommand(status=status("INTERNAL_SERVER_ERROR", INTERNAL_MESSAGE))
        return service_pb2.TelemetryCommand(status=ok_status(), settings=reply)

    def _settings(
        self, settings: definition_pb2.Settings, call: CallContext, stream: TelemetryStream
    ) -> definition_pb2.Settings:
        kind = CLIENT_KINDS.get(settings.client_type)
        if kind is None:
            raise BrokerError(
                "UNRECOGNIZED_CLIENT_TYPE",
                f"client type {int(settings.client_type)} is not served by this broker",
            )
        group: GroupConfig | None = None
        topics: tuple[str, ...]
        group_name = ""
        if kind == "producer":
            topics = tuple(call.name(resource) for resource in settings.publishing.topics)
        else:
            subscription = settings.subscription
            group = self._broker.metadata.group(call.name(subscription.group))
            group_name = group.name
            for entry in subscription.subscriptions:
                _filter_of(entry.expression)  # refuse an invalid filter now, not at every receive
            topics = tuple(call.name(entry.topic) for entry in subscription.subscriptions)
        stream.kind, stream.group, stream.topics = kind, group_name, topics
        stream.language = settings.user_agent.language
        session = self._broker.clients.seen(call.client_id)
        session.kind, session.group, session.topics = kind, group_name, topics
        return settings_reply(settings, self._policy, access_point=self._endpoints, group=group)

    # ------------------------------------------------------------------ not served

    async def _unimplemented(self, context: _Context, name: str) -> Never:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{name} is not served by Homing: consume with ReceiveMessage (simple or push consumers)",
        )

    async def PullMessage(
        self, request: service_pb2.PullMessageRequest, context: _Context
    ) -> AsyncIterator[service_pb2.PullMessageResponse]:
        await self._unimplemented(context, "PullMessage")
        yield service_pb2.PullMessageResponse()  # pragma: no cover - abort raises

    async def UpdateOffset(
        self, request: service_pb2.UpdateOffsetRequest, context: _Context
    ) -> service_pb2.UpdateOffsetResponse:
        await self._unimplemented(context, "UpdateOffset")
        return service_pb2.UpdateOffsetResponse()  # pragma: no cover - abort raises

    async def GetOffset(
        self, request: service_pb2.GetOffsetRequest, context: _Context
    ) -> service_pb2.GetOffsetResponse:
        await self._unimplemented(context, "GetOffset")
        return service_pb2.GetOffsetResponse()  # pragma: no cover - abort raises

    async def QueryOffset(
        self, request: service_pb2.QueryOffsetRequest, context: _Context
    ) -> service_pb2.QueryOffsetResponse:
        await self._unimplemented(context, "QueryOffset")
        return service_pb2.QueryOffsetResponse()  # pragma: no cover - abort raises

    async def SyncLiteSubscription(
        self, request: service_pb2.SyncLiteSubscriptionRequest, context: _Context
    ) -> service_pb2.SyncLiteSubscriptionResponse:
        await self._unimplemented(context, "SyncLiteSubscription")
        return service_pb2.SyncLiteSubscriptionResponse()  # pragma: no cover - abort raises
