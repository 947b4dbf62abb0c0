"""What every client (producer or consumer) does the same way: the lifecycle of a RocketMQ 5 client.

Theory of operation
-------------------

A client knows one *access point* (the configured endpoints). It asks there for the *route* of
each topic (QueryRoute): the topic's queues and the *broker endpoints* that serve them. Every
other call goes to a broker endpoint, never to the access point (on Homing the two are usually
the same address; behind an Apache proxy they may not be).

To each broker endpoint it talks to, the client opens one *Telemetry* stream and writes its
settings (client type, access point, request timeout, the topics it publishes or the group and
subscriptions it consumes). The broker answers with the settings it wants the client to use
(retry policy, body limit, long-polling timeout, FIFO...), and later pushes commands on the same
stream (transaction check-backs). A client does not call an endpoint before that endpoint has
answered its settings: the broker refuses heartbeats from clients whose settings it has not seen,
and the reply decides limits the client checks before sending. A stream that ends is reopened
after a short wait and the settings are written again.

Around that: a Heartbeat to every endpoint every ``heartbeat_interval_s`` (10 s), the routes
refreshed every ``route_refresh_interval_s`` (30 s), and NotifyClientTermination to every endpoint
on close, so the broker stops renewing what this client held.

Every call carries the RocketMQ headers (client id, language, protocol, version, request id, date,
namespace, and an HMAC-SHA1 signature of the date when credentials are configured) and a deadline.
gRPC failures are translated into :mod:`homing.client` errors here, at the boundary.

Receives and sends go through Homing's protocol extensions where the broker serves them
(:mod:`homing.client._extensions`): ``ReceiveBatch`` for :meth:`ClientSession.receive` and one
``SendStream`` per endpoint for :meth:`ClientSession.send_message`; elsewhere through
ReceiveMessage and SendMessage.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import logging
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message as ProtoMessage

from homing.client._codec import ServerSettings, parse_settings, resource
from homing.client._config import ClientConfig, Endpoints
from homing.client._errors import (
    ClientError,
    ClientStateError,
    ProtocolError,
    SettingsTimeoutError,
    status_error,
    transport_error,
)
from homing.client._extensions import ExtensionSupport, SendStream, StreamUnsupportedError, is_unimplemented
from homing.client._ids import make_client_id
from homing.client._transport import GrpcTransport, Transport
from homing.protocol import definition_pb2, extensions_pb2_grpc, service_pb2, service_pb2_grpc

__all__ = ["ClientSession", "Route", "Timings"]

log = logging.getLogger("homing.client")

_Request = TypeVar("_Request", bound=ProtoMessage)
_Response = TypeVar("_Response", bound=ProtoMessage)
_T = TypeVar("_T")

TELEMETRY_REOPEN_DELAY_S: Final = 1.0
TERMINATION_TIMEOUT_S: Final = 2.0
MAX_RECEIVE_FRAMES: Final = 4096
MAX_STREAMED_SEND_BYTES: Final = 64 * 1024  # HTTP/2's initial window: such a write never waits for it


@dataclass(frozen=True, slots=True)
class Timings:
    """How often the background chores run; shorter only in tests."""

    heartbeat_interval_s: float = 10.0
    route_refresh_interval_s: float = 30.0
    settings_timeout_s: float = 10.0


def client_version() -> str:
    from homing import __version__

    return __version__


def sign(secret_key: str, date_time: str) -> str:
    """Hex HMAC-SHA1 of the ``x-mq-date-time`` header with the secret key (the RocketMQ v2 signature)."""
    return hmac.new(secret_key.encode(), date_time.encode(), "sha1").hexdigest()


def request_metadata(config: ClientConfig, client_id: str, now: datetime) -> list[tuple[str, str]]:
    """The headers of one call. ``now`` (UTC) is signed, so it is an input rather than read here."""
    date_time = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    metadata = [
        ("x-mq-client-id", client_id),
        ("x-mq-language", "PYTHON"),
        ("x-mq-protocol", "v2"),
        ("x-mq-client-version", client_version()),
        ("x-mq-request-id", str(uuid.uuid4())),
        ("x-mq-date-time", date_time),
    ]
    if config.namespace:
        metadata.append(("x-mq-namespace", config.namespace))
    if config.credentials is not None:
        signature = sign(config.credentials.secret_key, date_time)
        metadata.append(
            (
                "authorization",
                f"MQv2-HMAC-SHA1 Credential={config.credentials.access_key}, "
                f"SignedHeaders=x-mq-date-time, Signature={signature}",
            )
        )
    return metadata


@dataclass(frozen=True, slots=True)
class Route:
    """The queues of a topic, as QueryRoute answered. Only leaders (broker id 0) are ever used."""

    topic: str
    queues: tuple[definition_pb2.MessageQueue, ...]
    # Worked out once per route (a send asks for the writable endpoints every time).
    _writable: tuple[Endpoints, ...] = field(init=False, repr=False, compare=False)
    _readable: tuple[definition_pb2.MessageQueue, ...] = field(init=False, repr=False, compare=False)
    _all: tuple[Endpoints, ...] = field(init=False, repr=False, compare=False)
    _accepts: dict[int, bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        writable = (definition_pb2.WRITE, definition_pb2.READ_WRITE)
        readable = (definition_pb2.READ, definition_pb2.READ_WRITE)
        object.__setattr__(self, "_accepts", {})
        object.__setattr__(self, "_writable", self._endpoints(writable))
        object.__setattr__(self, "_all", self._endpoints((definition_pb2.READ, *writable)))
        object.__setattr__(
            self,
            "_readable",
            tuple(
                queue
                for queue in self.queues
                if queue.broker.id == 0 and queue.permission in readable and queue.broker.endpoints.addresses
            ),
        )

    def _endpoints(self, permissions: Iterable[int]) -> tuple[Endpoints, ...]:
        found: dict[str, Endpoints] = {}
        allowed = set(permissions)
        for queue in self.queues:
            if queue.broker.id == 0 and queue.permission in allowed and queue.broker.endpoints.addresses:
                endpoints = Endpoints.from_proto(queue.broker.endpoints)
                found.setdefault(str(endpoints), endpoints)
        return tuple(found.values())

    def writable_endpoints(self) -> list[Endpoints]:
        return list(self._writable)

    def readable_queues(self) -> list[definition_pb2.MessageQueue]:
        return list(self._readable)

    def all_endpoints(self) -> list[Endpoints]:
        return list(self._all)

    def accepts(self, message_type: definition_pb2.MessageType.ValueType) -> bool:
        """Whether some writable queue takes this type (queues that list no types take any)."""
        known = self._accepts.get(message_type)
        if known is None:
            known = self._accepts[message_type] = self._find_acceptor(message_type)
        return known

    def _find_acceptor(self, message_type: definition_pb2.MessageType.ValueType) -> bool:
        for queue in self.queues:
            writable = queue.permission in (definition_pb2.WRITE, definition_pb2.READ_WRITE)
            if writable and (not queue.accept_message_types or message_type in queue.accept_message_types):
                return True
        return False


CommandHandler = Callable[[Endpoints, service_pb2.TelemetryCommand], Awaitable[None]]


class _TelemetrySession:
    """One Telemetry stream to one broker endpoint, reopened until closed."""

    def __init__(self, owner: ClientSession, endpoints: Endpoints) -> None:
        self.owner = owner
        self.endpoints = endpoints
        self.settings_seen = asyncio.Event()
        self._call: (
            grpc.aio.StreamStreamCall[service_pb2.TelemetryCommand, service_pb2.TelemetryCommand] | None
        )
        self._call = None
        self._write_lock = asyncio.Lock()
        self._closing = False
        self._reopen = asyncio.Event()
        self.task = owner.spawn(self._run(), f"telemetry {endpoints}")

    async def _run(self) -> None:
        while not self._closing:
            self._reopen.clear()
            stub = self.owner.stub(self.endpoints)
            call = stub.Telemetry(metadata=self.owner.metadata())
            self._call = call
            try:
                await self.write(service_pb2.TelemetryCommand(settings=self.owner.settings_request()))
                reader = asyncio.ensure_future(self._read_all(call))
                reopen = asyncio.ensure_future(self._reopen.wait())
                try:
                    await asyncio.wait({reader, reopen}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    reopen.cancel()
                    if not reader.done():
                        reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
            except grpc.aio.AioRpcError as error:
                if not self._closing:
                    log.warning(
                        "telemetry stream to %s failed: %s %s", self.endpoints, error.code(), error.details()
                    )
            finally:
                self._call = None
                call.cancel()
            if not self._closing:
                await asyncio.sleep(TELEMETRY_REOPEN_DELAY_S)

    async def _read_all(
        self, call: grpc.aio.StreamStreamCall[service_pb2.TelemetryCommand, service_pb2.TelemetryCommand]
    ) -> None:
        while True:
            command = await call.read()
            if command is grpc.aio.EOF:
                return
            assert isinstance(command, service_pb2.TelemetryCommand)
            await self.owner.on_telemetry_command(self, command)

    async def write(self, command: service_pb2.TelemetryCommand) -> None:
        """Write one command; writes are serialised (a gRPC stream takes one write at a time)."""
        call = self._call
        if call is None:
            return
        async with self._write_lock:
            await call.write(command)

    def reopen(self) -> None:
        """End the current stream and open a new one (writes the settings again)."""
        self._reopen.set()

    async def close(self) -> None:
        self._closing = True
        call = self._call
        if call is not None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError):
                async with asyncio.timeout(TERMINATION_TIMEOUT_S):
                    await call.done_writing()
            call.cancel()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


class ClientSession:
    """Routes, Telemetry streams, settings, headers, heartbeats and shutdown, shared by every client.

    ``settings_request`` builds the client's current settings (it changes when a producer starts
    publishing to a new topic); ``on_command`` receives the commands only the owner understands
    (transaction check-backs). The session lives on one event loop.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        client_type: definition_pb2.ClientType.ValueType,
        settings_request: Callable[[], definition_pb2.Settings],
        initial_settings: ServerSettings,
        group: str | None = None,
        on_command: CommandHandler | None = None,
        transport: Transport | None = None,
        timings: Timings | None = None,
    ) -> None:
        self.config = config
        self.client_id = make_client_id()
        self.client_type = client_type
        self.settings_request = settings_request
        self.settings: ServerSettings = initial_settings
        self.group = group
        self._on_command = on_command
        self._transport = transport
        self._owns_transport = transport is None
        self.timings = timings or Timings()
        self._routes: dict[str, Route] = {}
        self._route_fetches: dict[str, asyncio.Future[Route]] = {}
        self._sessions: dict[str, _TelemetrySession] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._state = "new"
        self._metadata_second = -1
        self._metadata_index = 0
        self._metadata: list[tuple[str, str]] = []
        self._extensions = ExtensionSupport()
        self._send_streams: dict[str, SendStream] = {}

    # ------------------------------------------------------------------ plumbing

    @property
    def is_open(self) -> bool:
        return self._state == "started"

    def require_open(self) -> None:
        if self._state == "new":
            raise ClientStateError("the client is not started: use 'async with' or call start() first")
        if self._state != "started":
            raise ClientStateError("the client is closed")

    def spawn(self, coroutine: Coroutine[Any, Any, _T], name: str) -> asyncio.Task[_T]:
        """A background task that is cancelled on close and whose failure is logged, never lost."""
        task = asyncio.get_running_loop().create_task(coroutine, name=f"homing {name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def metadata(self) -> list[tuple[str, str]]:
        """The headers of one call: made once per second (the signed date), a new request id each call."""
        now_s = int(time.time())
        if now_s != self._metadata_second:
            headers = request_metadata(self.config, self.client_id, datetime.fromtimestamp(now_s, UTC))
            self._metadata_second = now_s
            self._metadata_index = next(i for i, (name, _) in enumerate(headers) if name == "x-mq-request-id")
            self._metadata = headers
        headers = self._metadata.copy()
        headers[self._metadata_index] = ("x-mq-request-id", str(uuid.uuid4()))
        return headers

    def stub(self, endpoints: Endpoints) -> service_pb2_grpc.MessagingServiceAsyncStub:
        if self._transport is None:
            self._transport = GrpcTransport.from_config(self.config)
        return self._transport.stub(endpoints)

    def _extensions_stub(self, endpoints: Endpoints) -> extensions_pb2_grpc.ExtensionsAsyncStub | None:
        """The stub of Homing's extensions at ``endpoints``; None where they are known not to be served."""
        if not self._extensions.usable(endpoints.grpc_target):
            return None
        if self._transport is None:
            self._transport = GrpcTransport.from_config(self.config)
        make = getattr(self._transport, "extensions_stub", None)
        if make is None:  # a transport of the application's that knows only the standard service
            return None
        stub: extensions_pb2_grpc.ExtensionsAsyncStub = make(endpoints)
        return stub

    async def invoke(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        *,
        timeout_s: float | None = None,
        what: str,
    ) -> _Response:
        """Call a unary RPC with headers and a deadline; gRPC failures become client errors."""
        try:
            return await method(
                request, timeout=timeout_s or self.config.request_timeout_s, metadata=self.metadata()
            )
        except grpc.aio.AioRpcError as error:
            raise transport_error(error.code(), error.details(), what) from None

    async def send_message(
        self, endpoints: Endpoints, request: service_pb2.SendMessageRequest, *, timeout_s: float, what: str
    ) -> service_pb2.SendMessageResponse:
        """SendMessage's answer: over the endpoint's SendStream where served, else a SendMessage call.

        Only requests up to ``MAX_STREAMED_SEND_BYTES`` take the stream: it saves a call's fixed
        cost, which a big batch hardly notices, and a big write would hold up the small ones behind
        it on the one stream (measured: batches of 256 messages went 20 % faster as calls).
        """
        extensions = (
            self._extensions_stub(endpoints) if request.ByteSize() <= MAX_STREAMED_SEND_BYTES else None
        )
        if extensions is not None:
            target = endpoints.grpc_target
            stream = self._send_streams.get(target)
            if stream is None:
                stream = self._send_streams[target] = SendStream(
                    lambda: extensions.SendStream(metadata=self.metadata()), target
                )
            try:
                return await stream.send(request, timeout_s=timeout_s, what=what)
            except StreamUnsupportedError as refusal:  # nothing was sent: the standard call instead
                if refusal.permanent:
                    self._extensions.refused(target)
                    self._send_streams.pop(target, None)
        return await self.invoke(self.stub(endpoints).SendMessage, request, timeout_s=timeout_s, what=what)

    async def receive(
        self, endpoints: Endpoints, request: service_pb2.ReceiveMessageRequest, *, timeout_s: float
    ) -> list[definition_pb2.Message]:
        """One long poll: the messages, or [] when there were none (MESSAGE_NOT_FOUND).

        ReceiveBatch where the broker serves it (one response), else ReceiveMessage (a stream).
        """
        extensions = self._extensions_stub(endpoints)
        if extensions is not None:
            what = f"ReceiveBatch from {endpoints}"
            try:
                response = await extensions.ReceiveBatch(request, timeout=timeout_s, metadata=self.metadata())
            except grpc.aio.AioRpcError as error:
                if not is_unimplemented(error):
                    raise transport_error(error.code(), error.details(), what) from None
                self._extensions.refused(endpoints.grpc_target)  # nothing was received: ask again
            else:
                status = response.status if response.HasField("status") else None
                return self._received(status, response.messages, what)
        return await self._receive_stream(endpoints, request, timeout_s=timeout_s)

    @staticmethod
    def _received(
        status: definition_pb2.Status | None, messages: Iterable[definition_pb2.Message], what: str
    ) -> list[definition_pb2.Message]:
        if status is None:
            raise ProtocolError(f"{what}: the answer carries no status")
        if status.code == definition_pb2.MESSAGE_NOT_FOUND:
            return []
        if status.code != definition_pb2.OK:
            raise status_error(status)
        return list(messages)

    async def _receive_stream(
        self, endpoints: Endpoints, request: service_pb2.ReceiveMessageRequest, *, timeout_s: float
    ) -> list[definition_pb2.Message]:
        what = f"ReceiveMessage from {endpoints}"
        status: definition_pb2.Status | None = None
        messages: list[definition_pb2.Message] = []
        call = self.stub(endpoints).ReceiveMessage(request, timeout=timeout_s, metadata=self.metadata())
        try:
            frames = 0
            async for response in call:
                frames += 1
                if frames > MAX_RECEIVE_FRAMES:
                    raise ProtocolError(f"{what}: more than {MAX_RECEIVE_FRAMES} frames in one answer")
                content = response.WhichOneof("content")
                if content == "status":
                    status = response.status
                elif content == "message":
                    messages.append(response.message)
        except grpc.aio.AioRpcError as error:
            raise transport_error(error.code(), error.details(), what) from None
        finally:
            call.cancel()
        return self._received(status, messages, what)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, topics: Iterable[str]) -> None:
        """Fetch the routes of ``topics``, open Telemetry to their brokers and wait for the settings."""
        if self._state != "new":
            raise ClientStateError(f"the client cannot start: it is {self._state}")
        self._state = "started"
        try:
            endpoints: dict[str, Endpoints] = {}
            for topic in topics:
                route = await self.route(topic)
                for found in route.all_endpoints():
                    endpoints.setdefault(str(found), found)
            await asyncio.gather(*(self.ensure_ready(found) for found in endpoints.values()))
        except BaseException:
            await self.close()
            raise
        self.spawn(self._heartbeat_loop(), "heartbeats")
        self.spawn(self._route_refresh_loop(), "route refresh")

    async def close(self) -> None:
        """Tell every broker this client is going, close the streams and the channels. Idempotent."""
        if self._state == "closed":
            return
        was_started = self._state == "started"
        self._state = "closing"
        if was_started:
            await asyncio.gather(
                *(self._notify_termination(session.endpoints) for session in self._sessions.values()),
                return_exceptions=True,
            )
        for session in list(self._sessions.values()):
            await session.close()
        self._sessions.clear()
        streams = list(self._send_streams.values())
        self._send_streams.clear()
        await asyncio.gather(*(stream.close() for stream in streams), return_exceptions=True)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for fetch in self._route_fetches.values():
            fetch.cancel()
        if self._transport is not None and self._owns_transport:
            await self._transport.close()
        self._state = "closed"

    async def _notify_termination(self, endpoints: Endpoints) -> None:
        request = service_pb2.NotifyClientTerminationRequest()
        if self.group is not None:
            request.group.CopyFrom(resource(self.group, self.config.namespace))
        try:
            response = await self.invoke(
                self.stub(endpoints).NotifyClientTermination,
                request,
                timeout_s=min(self.config.request_timeout_s, TERMINATION_TIMEOUT_S),
                what=f"NotifyClientTermination to {endpoints}",
            )
            if response.status.code != definition_pb2.OK:
                log.info("NotifyClientTermination to %s: %s", endpoints, status_error(response.status))
        except ClientError as error:
            log.info("NotifyClientTermination to %s failed: %s", endpoints, error)

    # ------------------------------------------------------------------ routes

    async def route(self, topic: str) -> Route:
        """The topic's route, from the cache or fetched (one fetch at a time per topic)."""
        self.require_open()
        route = self._routes.get(topic)
        if route is not None:
            return route
        fetch = self._route_fetches.get(topic)
        if fetch is None:
            fetch = asyncio.ensure_future(self._fetch_route(topic))
            self._route_fetches[topic] = fetch
            fetch.add_done_callback(lambda _: self._route_fetches.pop(topic, None))
        return await asyncio.shield(fetch)

    async def _fetch_route(self, topic: str) -> Route:
        access_point = self.config.access_point
        response = await self.invoke(
            self.stub(access_point).QueryRoute,
            service_pb2.QueryRouteRequest(
                topic=resource(topic, self.config.namespace), endpoints=access_point.to_proto()
            ),
            what=f"QueryRoute of {topic!r} at {access_point}",
        )
        if response.status.code != definition_pb2.OK:
            raise status_error(response.status)
        route = Route(topic, tuple(response.message_queues))
        if not route.all_endpoints():
            raise ProtocolError(f"the route of {topic!r} names no leader broker with an endpoint")
        self._routes[topic] = route
        return route

    def known_topics(self) -> list[str]:
        return list(self._routes)

    async def _route_refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.timings.route_refresh_interval_s)
            for topic in list(self._routes):
                try:
                    route = await self._fetch_route(topic)
                except ClientError as error:
                    log.warning("refreshing the route of %r failed (keeping the old one): %s", topic, error)
                    continue
                for endpoints in route.all_endpoints():
                    self.open_telemetry(endpoints)

    # ------------------------------------------------------------------ telemetry and settings

    def open_telemetry(self, endpoints: Endpoints) -> _TelemetrySession:
        session = self._sessions.get(str(endpoints))
        if session is None:
            session = _TelemetrySession(self, endpoints)
            self._sessions[str(endpoints)] = session
        return session

    async def ensure_ready(self, endpoints: Endpoints) -> None:
        """Open Telemetry to ``endpoints`` if needed and wait until it has answered our settings."""
        self.require_open()
        session = self.open_telemetry(endpoints)
        if session.settings_seen.is_set():
            return
        try:
            async with asyncio.timeout(self.timings.settings_timeout_s):
                await session.settings_seen.wait()
        except TimeoutError:
            raise SettingsTimeoutError(
                f"{endpoints} did not answer the client's settings within "
                f"{self.timings.settings_timeout_s:g} s "
                "(is it a RocketMQ 5 gRPC endpoint, and reachable?)"
            ) from None

    async def resend_settings(self) -> None:
        """Write the current settings on every stream (after the client's topics changed)."""
        request = service_pb2.TelemetryCommand(settings=self.settings_request())
        for session in list(self._sessions.values()):
            try:
                await session.write(request)
            except grpc.aio.AioRpcError as error:
                log.info("writing settings to %s failed (the stream reopens): %s", session.endpoints, error)

    async def on_telemetry_command(
        self, session: _TelemetrySession, command: service_pb2.TelemetryCommand
    ) -> None:
        kind = command.WhichOneof("command")
        if kind == "settings":
            if command.HasField("status") and command.status.code != definition_pb2.OK:
                log.warning(
                    "%s refused the client's settings: %s", session.endpoints, status_error(command.status)
                )
                return
            self.settings = parse_settings(command.settings, self.settings)
            session.settings_seen.set()
        elif kind == "print_thread_stack_trace_command":
            await session.write(
                service_pb2.TelemetryCommand(
                    status=definition_pb2.Status(code=definition_pb2.OK, message="OK"),
                    thread_stack_trace=service_pb2.ThreadStackTrace(
                        nonce=command.print_thread_stack_trace_command.nonce,
                        thread_stack_trace=_stack_traces(),
                    ),
                )
            )
        elif kind == "verify_message_command":
            # Verification would run the application's handler on a message it did not ask for.
            await session.write(
                service_pb2.TelemetryCommand(
                    status=definition_pb2.Status(
                        code=definition_pb2.UNSUPPORTED, message="message verification is not supported"
                    ),
                    verify_message_result=service_pb2.VerifyMessageResult(
                        nonce=command.verify_message_command.nonce
                    ),
                )
            )
        elif kind == "reconnect_endpoints_command":
            session.reopen()
        elif kind is not None and self._on_command is not None:
            await self._on_command(session.endpoints, command)

    # ------------------------------------------------------------------ heartbeats

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.timings.heartbeat_interval_s)
            ready = [
                session.endpoints for session in self._sessions.values() if session.settings_seen.is_set()
            ]
            await asyncio.gather(*(self._heartbeat(endpoints) for endpoints in ready))

    async def _heartbeat(self, endpoints: Endpoints) -> None:
        request = service_pb2.HeartbeatRequest(client_type=self.client_type)
        if self.group is not None:
            request.group.CopyFrom(resource(self.group, self.config.namespace))
        try:
            response = await self.invoke(
                self.stub(endpoints).Heartbeat, request, what=f"Heartbeat to {endpoints}"
            )
            if response.status.code != definition_pb2.OK:
                log.warning("Heartbeat to %s: %s", endpoints, status_error(response.status))
        except ClientError as error:
            log.warning("Heartbeat to %s failed: %s", endpoints, error)


def _stack_traces() -> str:
    """Every thread's stack and every task of this loop, for the broker's PrintThreadStackTrace."""
    parts = []
    for thread_id, frame in sys._current_frames().items():
        parts.append(f"Thread {thread_id}:\n{''.join(traceback.format_stack(frame))}")
    for task in asyncio.all_tasks():
        text = io.StringIO()
        task.print_stack(limit=20, file=text)
        parts.append(text.getvalue())
    return "\n".join(parts)[:1_000_000]
