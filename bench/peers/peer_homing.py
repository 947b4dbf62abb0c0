"""Homing cells: its own client (``homing.AsyncProducer`` / ``AsyncSimpleConsumer``), and a raw
gRPC client built on the generated stubs (``homing.protocol``).

The broker runs with ``flush_mode = sync``: a SendMessage is answered only once its messages are
fsynced. Consuming is ReceiveMessage plus an AckMessage for each message: the Homing client sends
one AckMessage call per message; the raw client acks a received batch in one AckMessage call with
one entry per message (each message is still acked on its own, by its receipt handle).

The raw client fills the backlog of every consume cell (the fill is preparation, not measured).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import time
import uuid

import grpc
import grpc.aio
from google.protobuf import duration_pb2, timestamp_pb2
from peer_common import (
    BODY,
    CONCURRENT_PRODUCERS,
    CellSpec,
    Recorder,
    Row,
    drain_window,
    fill_deadline,
    measurement_window,
    now_ns,
    sync_producers,
)

from homing.protocol import definition_pb2, service_pb2, service_pb2_grpc

CLIENT = "homing.client"
RAW = "raw-grpc"

# Pipelined shape of the Homing client: callers each awaiting send() in a loop (the client
# coalesces their messages into SendMessage batches: 256 messages, 64 calls in flight, by default).
CLIENT_PIPELINE_CALLERS = 1024
# Consuming with the Homing client: receivers, each receive()-ing a batch and acking each message.
CLIENT_RECEIVERS = 4
CLIENT_RECEIVE_BATCH = 128

# Pipelined shape of the raw gRPC client: channels x calls in flight each x messages per call.
RAW_CHANNELS = 1
RAW_IN_FLIGHT = 8
RAW_BATCH = 256
RAW_RECEIVERS = 4
RAW_RECEIVE_BATCH = 256
# Entries per AckMessage call; the calls for one received batch go out concurrently.
RAW_ACK_ENTRIES = 16

GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class HomingStatusError(RuntimeError):
    pass


# ----------------------------------------------------------------------------- raw gRPC


class RawClient:
    """One gRPC channel, the RocketMQ headers, and message building; no batching logic of its own."""

    _ids = itertools.count()

    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.aio.insecure_channel(endpoint, options=GRPC_OPTIONS)
        self.stub = service_pb2_grpc.MessagingServiceStub(self.channel)
        self.metadata = (
            ("x-mq-client-id", f"bench-raw-{os.getpid()}-{next(self._ids)}"),
            ("x-mq-language", "PYTHON"),
            ("x-mq-protocol", "v2"),
        )
        self._prefix = uuid.uuid4().hex[:16].upper()
        self._sequence = itertools.count()

    def message(self, topic: definition_pb2.Resource) -> definition_pb2.Message:
        born = timestamp_pb2.Timestamp()
        born.FromMilliseconds(int(time.time() * 1000))
        return definition_pb2.Message(
            topic=topic,
            body=BODY,
            system_properties=definition_pb2.SystemProperties(
                message_id=f"{self._prefix}{next(self._sequence):016X}",
                body_encoding=definition_pb2.IDENTITY,
                message_type=definition_pb2.NORMAL,
                born_timestamp=born,
                born_host="bench",
            ),
        )

    async def send(self, topic: definition_pb2.Resource, count: int) -> None:
        request = service_pb2.SendMessageRequest(messages=[self.message(topic) for _ in range(count)])
        response = await self.stub.SendMessage(request, metadata=self.metadata, timeout=30)
        if response.status.code != definition_pb2.OK:
            raise HomingStatusError(f"SendMessage: {response.status.code} {response.status.message}")

    async def close(self) -> None:
        await self.channel.close()


async def raw_pipeline(
    clients: list[RawClient],
    topic: definition_pb2.Resource,
    recorder: Recorder | None,
    deadline_ns: int,
    limit: int,
) -> int:
    """``RAW_IN_FLIGHT`` SendMessage calls of ``RAW_BATCH`` messages per channel until the deadline."""
    sent = [0]

    async def caller(client: RawClient) -> None:
        while now_ns() < deadline_ns and sent[0] < limit and not (recorder is not None and recorder.finished):
            sent[0] += RAW_BATCH
            started = now_ns()
            await client.send(topic, RAW_BATCH)
            if recorder is not None:
                recorder.done(started, RAW_BATCH)

    await asyncio.gather(*(caller(client) for client in clients for _ in range(RAW_IN_FLIGHT)))
    return sent[0]


async def fill(spec: CellSpec, topic_name: str) -> int:
    clients = [RawClient(spec.endpoint) for _ in range(RAW_CHANNELS)]
    try:
        return await raw_pipeline(clients, _resource(topic_name), None, fill_deadline(spec), spec.fill_max)
    finally:
        for client in clients:
            await client.close()


def _resource(name: str) -> definition_pb2.Resource:
    return definition_pb2.Resource(name=name)


async def raw_cell(spec: CellSpec) -> Row:
    topic_name = f"bench-{spec.tag}"
    topic = _resource(topic_name)
    shape: Row = {}
    drained = False
    clients: list[RawClient] = []
    try:
        if spec.mode in ("single", "concurrent16"):
            count = 1 if spec.mode == "single" else CONCURRENT_PRODUCERS
            clients = [RawClient(spec.endpoint) for _ in range(count)]
            for client in clients:
                await client.send(topic, 1)  # creates the topic, warms the channel
            recorder = measurement_window(spec)
            await sync_producers(recorder, [functools.partial(c.send, topic, 1) for c in clients])
            shape = {"channels": count}
        elif spec.mode == "pipelined":
            clients = [RawClient(spec.endpoint) for _ in range(RAW_CHANNELS)]
            await clients[0].send(topic, 1)
            recorder = measurement_window(spec)
            await raw_pipeline(clients, topic, recorder, recorder.end_ns, 1 << 62)
            shape = {"channels": RAW_CHANNELS, "in_flight_per_channel": RAW_IN_FLIGHT, "batch": RAW_BATCH}
        else:
            backlog = await fill(spec, topic_name)
            clients = [RawClient(spec.endpoint)]
            client = clients[0]
            group = _resource(f"g-{spec.tag}")
            queue = definition_pb2.MessageQueue(topic=topic, id=-1)
            recorder = drain_window(spec)
            acked = [0]

            async def receiver() -> None:
                while not recorder.over and acked[0] < backlog:
                    handles = await _raw_receive(client, group, queue)
                    if not handles:
                        break
                    await asyncio.gather(
                        *(
                            _raw_ack(client, group, topic, handles[start : start + RAW_ACK_ENTRIES])
                            for start in range(0, len(handles), RAW_ACK_ENTRIES)
                        )
                    )
                    acked[0] += len(handles)
                    recorder.done(None, len(handles))
                if acked[0] >= backlog:
                    recorder.finish()

            await asyncio.gather(*(receiver() for _ in range(RAW_RECEIVERS)))
            drained = acked[0] >= backlog
            recorder.finish()
            shape = {
                "receivers": RAW_RECEIVERS,
                "receive_batch": RAW_RECEIVE_BATCH,
                "ack_entries_per_call": RAW_ACK_ENTRIES,
                "backlog": backlog,
                "drained": drained,
            }
        return {**recorder.summary(drained=drained), **shape}
    finally:
        for client in clients:
            await client.close()


async def _raw_receive(
    client: RawClient, group: definition_pb2.Resource, queue: definition_pb2.MessageQueue
) -> list[tuple[str, str]]:
    request = service_pb2.ReceiveMessageRequest(
        group=group,
        message_queue=queue,
        filter_expression=definition_pb2.FilterExpression(type=definition_pb2.TAG, expression="*"),
        batch_size=RAW_RECEIVE_BATCH,
        invisible_duration=duration_pb2.Duration(seconds=300),
        auto_renew=False,
        long_polling_timeout=duration_pb2.Duration(seconds=1),
    )
    handles: list[tuple[str, str]] = []
    call = client.stub.ReceiveMessage(request, metadata=client.metadata, timeout=30)
    async for response in call:
        which = response.WhichOneof("content")
        if which == "status" and response.status.code not in (
            definition_pb2.OK,
            definition_pb2.MESSAGE_NOT_FOUND,
        ):
            raise HomingStatusError(f"ReceiveMessage: {response.status.code} {response.status.message}")
        if which == "message":
            properties = response.message.system_properties
            handles.append((properties.message_id, properties.receipt_handle))
    return handles


async def _raw_ack(
    client: RawClient,
    group: definition_pb2.Resource,
    topic: definition_pb2.Resource,
    handles: list[tuple[str, str]],
) -> None:
    request = service_pb2.AckMessageRequest(
        group=group,
        topic=topic,
        entries=[
            service_pb2.AckMessageEntry(message_id=message_id, receipt_handle=handle)
            for message_id, handle in handles
        ],
    )
    response = await client.stub.AckMessage(request, metadata=client.metadata, timeout=30)
    if response.status.code != definition_pb2.OK:
        raise HomingStatusError(f"AckMessage: {response.status.code} {response.status.message}")


# ----------------------------------------------------------------------------- Homing's client


async def client_cell(spec: CellSpec) -> Row:
    from homing import AsyncProducer, AsyncSimpleConsumer, Message

    topic = f"bench-{spec.tag}"
    shape: Row = {}
    drained = False
    if spec.mode in ("single", "concurrent16", "pipelined"):
        count = CONCURRENT_PRODUCERS if spec.mode == "concurrent16" else 1
        producers = [AsyncProducer(spec.endpoint, topics=[topic]) for _ in range(count)]
        try:
            for producer in producers:
                await producer.start()
                await producer.send(Message(topic, BODY))  # warms the channel and the route

            async def send(producer: AsyncProducer) -> None:
                await producer.send(Message(topic, BODY))

            recorder = measurement_window(spec)
            if spec.mode == "pipelined":
                await sync_producers(
                    recorder, [functools.partial(send, producers[0])] * CLIENT_PIPELINE_CALLERS
                )
                shape = {"producers": 1, "concurrent_callers": CLIENT_PIPELINE_CALLERS}
            else:
                await sync_producers(recorder, [functools.partial(send, p) for p in producers])
                shape = {"producers": count}
        finally:
            for producer in producers:
                await producer.close()
    else:
        backlog = await fill(spec, topic)
        consumer = AsyncSimpleConsumer(
            spec.endpoint, group=f"g-{spec.tag}", subscriptions={topic: "*"}, await_duration_s=1
        )
        await consumer.start()
        try:
            recorder = drain_window(spec)
            acked = [0]

            async def receiver() -> None:
                while not recorder.over and acked[0] < backlog:
                    messages = await consumer.receive(
                        max_messages=CLIENT_RECEIVE_BATCH, invisible_duration=300
                    )
                    if not messages:
                        break
                    await asyncio.gather(*(consumer.ack(message) for message in messages))
                    acked[0] += len(messages)
                    recorder.done(None, len(messages))
                if acked[0] >= backlog:
                    recorder.finish()

            await asyncio.gather(*(receiver() for _ in range(CLIENT_RECEIVERS)))
            drained = acked[0] >= backlog
            recorder.finish()
            shape = {
                "receivers": CLIENT_RECEIVERS,
                "receive_batch": CLIENT_RECEIVE_BATCH,
                "backlog": backlog,
                "drained": drained,
            }
        finally:
            await consumer.close()
    return {**recorder.summary(drained=drained), **shape}


async def run_cell(spec: CellSpec) -> Row:
    if spec.client == RAW:
        return await raw_cell(spec)
    if spec.client == CLIENT:
        return await client_cell(spec)
    raise ValueError(f"unknown homing client {spec.client!r}")
