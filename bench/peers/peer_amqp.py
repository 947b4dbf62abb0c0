"""RabbitMQ cells: a minimal raw AMQP 0-9-1 client over asyncio streams, and aio-pika.

Two systems share the node: ``rabbitmq-quorum`` (a quorum queue, ``x-queue-type: quorum``) and
``rabbitmq-classic`` (a classic durable queue). Messages are published to the default exchange,
persistent (delivery mode 2), on a channel in confirm mode: a message counts once the broker's
``basic.ack`` (the publisher confirm) covers it, which RabbitMQ sends only after the message is
written to disk (fsync) for a durable queue. Consuming is ``basic.consume`` with a prefetch window,
and one ``basic.ack`` per delivery (``multiple`` off).

The raw client speaks the protocol directly: the three frames of a publish (method, content
header, body) are encoded once and written many times per ``write`` call, and incoming frames are
cut out of a buffer with ``struct``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import struct
from collections import deque

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

RAW = "raw-amqp"
LIBRARY = "aio-pika"
USER = "guest"
PASSWORD = "guest"

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = b"\xce"

# Pipelined shape of the raw client: connections x messages per write x messages in flight each.
PIPELINE_CONNECTIONS = 2
PIPELINE_BATCH = 64
PIPELINE_WINDOW = 2048
PREFETCH = 2000

LIBRARY_PIPELINE_CALLERS = 512


class AmqpError(RuntimeError):
    pass


def shortstr(text: str) -> bytes:
    data = text.encode()
    return bytes([len(data)]) + data


def longstr(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def table(values: dict[str, str]) -> bytes:
    body = b"".join(shortstr(key) + b"S" + longstr(value.encode()) for key, value in values.items())
    return longstr(body)


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + FRAME_END


def method(channel: int, class_id: int, method_id: int, arguments: bytes = b"") -> bytes:
    return frame(FRAME_METHOD, channel, struct.pack(">HH", class_id, method_id) + arguments)


def queue_arguments(system: str) -> dict[str, str]:
    return {"x-queue-type": "quorum"} if system == "rabbitmq-quorum" else {}


class AmqpConnection:
    """One connection with one channel (number 1), opened and ready for publishing or consuming."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()
        self.position = 0
        self.frame_max = 131072
        self.published = 0  # delivery tag of the last message published in confirm mode
        self.confirmed = 0  # every tag up to this one is confirmed
        self._out_of_order: set[int] = set()

    @classmethod
    async def open(cls, host: str, port: int, *, confirm: bool) -> AmqpConnection:
        reader, writer = await asyncio.open_connection(host, port, limit=4 * 1024 * 1024)
        connection = cls(reader, writer)
        writer.write(b"AMQP\x00\x00\x09\x01")
        await connection.expect(10, 10)  # connection.start
        writer.write(
            method(
                0,
                10,
                11,
                table({"product": "homing-bench"})
                + shortstr("PLAIN")
                + longstr(f"\0{USER}\0{PASSWORD}".encode())
                + shortstr("en_US"),
            )
        )
        tune = await connection.expect(10, 30)
        channel_max, frame_max, _heartbeat = struct.unpack_from(">HIH", tune)
        connection.frame_max = frame_max or 131072
        writer.write(method(0, 10, 31, struct.pack(">HIH", channel_max, connection.frame_max, 0)))
        writer.write(method(0, 10, 40, shortstr("/") + shortstr("") + b"\x00"))
        await connection.expect(10, 41)
        writer.write(method(1, 20, 10, shortstr("")))
        await connection.expect(20, 11)
        if confirm:
            writer.write(method(1, 85, 10, b"\x00"))
            await connection.expect(85, 11)
        return connection

    # -- frames

    async def _fill(self) -> None:
        if self.position > 1 << 20:
            del self.buffer[: self.position]
            self.position = 0
        data = await self.reader.read(262144)
        if not data:
            raise ConnectionError("RabbitMQ closed the connection")
        self.buffer += data

    def next_frame(self) -> tuple[int, int, bytes] | None:
        """The next complete frame in the buffer (type, channel, payload), or None."""
        buffer = self.buffer
        start = self.position
        if len(buffer) - start < 7:
            return None
        kind, channel, size = struct.unpack_from(">BHI", buffer, start)
        end = start + 7 + size
        if len(buffer) < end + 1:
            return None
        self.position = end + 1
        return kind, channel, bytes(buffer[start + 7 : end])

    async def frame(self) -> tuple[int, int, bytes]:
        while True:
            item = self.next_frame()
            if item is not None:
                return item
            await self._fill()

    def _raise_close(self, class_id: int, method_id: int, arguments: bytes) -> None:
        if (class_id, method_id) in ((10, 50), (20, 40)):
            code = struct.unpack_from(">H", arguments)[0]
            length = arguments[2]
            text = bytes(arguments[3 : 3 + length]).decode(errors="replace")
            raise AmqpError(
                f"RabbitMQ closed the {'connection' if class_id == 10 else 'channel'}: {code} {text}"
            )

    async def expect(self, class_id: int, method_id: int) -> bytes:
        """Read frames until the method ``class_id.method_id``; returns its arguments."""
        while True:
            kind, _channel, payload = await self.frame()
            if kind != FRAME_METHOD:
                continue
            got_class, got_method = struct.unpack_from(">HH", payload)
            arguments = payload[4:]
            self._raise_close(got_class, got_method, arguments)
            if (got_class, got_method) == (class_id, method_id):
                return bytes(arguments)

    # -- publishing with confirms

    def handle_confirm(self, payload: bytes) -> None:
        class_id, method_id = struct.unpack_from(">HH", payload)
        if class_id == 60 and method_id == 80:
            tag, multiple = struct.unpack_from(">QB", payload, 4)
            if multiple:
                self.confirmed = max(self.confirmed, tag)
                if self._out_of_order:
                    self._out_of_order = {t for t in self._out_of_order if t > self.confirmed}
            elif tag == self.confirmed + 1:
                self.confirmed = tag
            else:
                self._out_of_order.add(tag)
            while self.confirmed + 1 in self._out_of_order:
                self.confirmed += 1
                self._out_of_order.discard(self.confirmed)
            return
        if class_id == 60 and method_id == 120:
            raise AmqpError("RabbitMQ nacked a publish")
        self._raise_close(class_id, method_id, payload[4:])

    async def wait_confirmed(self, tag: int) -> None:
        while self.confirmed < tag:
            kind, _channel, payload = await self.frame()
            if kind == FRAME_METHOD:
                self.handle_confirm(payload)

    async def declare(self, queue: str, system: str) -> None:
        self.writer.write(
            method(
                1, 50, 10, struct.pack(">H", 0) + shortstr(queue) + b"\x02" + table(queue_arguments(system))
            )
        )
        await self.expect(50, 11)

    async def delete(self, queue: str) -> None:
        self.writer.write(method(1, 50, 40, struct.pack(">H", 0) + shortstr(queue) + b"\x00"))
        await self.expect(50, 41)

    async def close(self) -> None:
        try:
            self.writer.write(
                method(0, 10, 50, struct.pack(">H", 200) + shortstr("bye") + struct.pack(">HH", 0, 0))
            )
            await asyncio.wait_for(self.expect(10, 51), 5)
        except (AmqpError, ConnectionError, TimeoutError):
            pass
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def publish_frames(queue: str) -> bytes:
    """One persistent message to ``queue`` through the default exchange: method, header, body."""
    publish = method(1, 60, 40, struct.pack(">H", 0) + shortstr("") + shortstr(queue) + b"\x00")
    header = frame(FRAME_HEADER, 1, struct.pack(">HHQH", 60, 0, len(BODY), 0x1000) + b"\x02")
    return publish + header + frame(FRAME_BODY, 1, BODY)


async def raw_pipeline(
    connection: AmqpConnection, queue: str, recorder: Recorder | None, deadline_ns: int, limit: int
) -> int:
    chunk = publish_frames(queue) * PIPELINE_BATCH
    batches: deque[tuple[int, int]] = deque()  # (last tag of the batch, sent_ns)
    sent = 0
    while True:
        while (
            connection.published - connection.confirmed < PIPELINE_WINDOW
            and sent < limit
            and now_ns() < deadline_ns
            and not (recorder is not None and recorder.finished)
        ):
            connection.writer.write(chunk)
            connection.published += PIPELINE_BATCH
            sent += PIPELINE_BATCH
            batches.append((connection.published, now_ns()))
        if not batches:
            return sent
        await connection._fill()
        while True:
            item = connection.next_frame()
            if item is None:
                break
            if item[0] == FRAME_METHOD:
                connection.handle_confirm(item[2])
        while batches and batches[0][0] <= connection.confirmed:
            _, sent_ns = batches.popleft()
            if recorder is not None:
                recorder.done(sent_ns, PIPELINE_BATCH)


async def fill(spec: CellSpec, queue: str) -> int:
    connections = [
        await AmqpConnection.open(spec.host, spec.port, confirm=True) for _ in range(PIPELINE_CONNECTIONS)
    ]
    deadline = fill_deadline(spec)
    share = spec.fill_max // len(connections)
    sent = await asyncio.gather(*(raw_pipeline(c, queue, None, deadline, share) for c in connections))
    for connection in connections:
        await connection.close()
    return sum(sent)


async def raw_consume(connection: AmqpConnection, queue: str, recorder: Recorder, backlog: int) -> int:
    connection.writer.write(method(1, 60, 10, struct.pack(">IHB", 0, PREFETCH, 0)))
    await connection.expect(60, 11)
    connection.writer.write(
        method(1, 60, 20, struct.pack(">H", 0) + shortstr(queue) + shortstr("bench") + b"\x00" + table({}))
    )
    await connection.expect(60, 21)
    acked = 0
    tag = 0
    remaining = -1  # body bytes still due for the current delivery (-1: none under way)
    while acked < backlog and not recorder.over:
        await connection._fill()
        acks: list[bytes] = []
        while True:
            item = connection.next_frame()
            if item is None:
                break
            kind, _channel, payload = item
            if kind == FRAME_METHOD:
                class_id, method_id = struct.unpack_from(">HH", payload)
                if class_id == 60 and method_id == 60:  # basic.deliver
                    length = payload[4]
                    tag = struct.unpack_from(">Q", payload, 5 + length)[0]
                else:
                    connection._raise_close(class_id, method_id, payload[4:])
            elif kind == FRAME_HEADER:
                remaining = struct.unpack_from(">Q", payload, 4)[0]
                if remaining == 0:
                    acks.append(method(1, 60, 80, struct.pack(">QB", tag, 0)))
            elif kind == FRAME_BODY:
                remaining -= len(payload)
                if remaining == 0:
                    acks.append(method(1, 60, 80, struct.pack(">QB", tag, 0)))
        if acks:
            connection.writer.write(b"".join(acks))
            acked += len(acks)
            recorder.done(None, len(acks))
    if acked >= backlog:
        recorder.finish()
    return acked


async def raw_cell(spec: CellSpec) -> Row:
    queue = f"bench-{spec.tag}"
    admin = await AmqpConnection.open(spec.host, spec.port, confirm=False)
    await admin.declare(queue, spec.system)
    connections: list[AmqpConnection] = []
    drained = False
    shape: Row = {}
    try:
        if spec.mode in ("single", "concurrent16"):
            count = 1 if spec.mode == "single" else CONCURRENT_PRODUCERS
            connections = [
                await AmqpConnection.open(spec.host, spec.port, confirm=True) for _ in range(count)
            ]
            frames = publish_frames(queue)

            async def operation(connection: AmqpConnection) -> None:
                connection.writer.write(frames)
                connection.published += 1
                await connection.wait_confirmed(connection.published)

            recorder = measurement_window(spec)
            await sync_producers(recorder, [functools.partial(operation, c) for c in connections])
            shape = {"connections": count}
        elif spec.mode == "pipelined":
            connections = [
                await AmqpConnection.open(spec.host, spec.port, confirm=True)
                for _ in range(PIPELINE_CONNECTIONS)
            ]
            recorder = measurement_window(spec)
            await asyncio.gather(
                *(raw_pipeline(c, queue, recorder, recorder.end_ns, 1 << 62) for c in connections)
            )
            shape = {
                "connections": PIPELINE_CONNECTIONS,
                "batch": PIPELINE_BATCH,
                "window_per_connection": PIPELINE_WINDOW,
            }
        else:
            backlog = await fill(spec, queue)
            connections = [await AmqpConnection.open(spec.host, spec.port, confirm=False)]
            recorder = drain_window(spec)
            acked = await raw_consume(connections[0], queue, recorder, backlog)
            drained = acked >= backlog
            recorder.finish()
            shape = {"prefetch": PREFETCH, "backlog": backlog, "drained": drained}
        for connection in connections:
            await connection.close()
        return {**recorder.summary(drained=drained), **shape}
    finally:
        await admin.delete(queue)
        await admin.close()


# ----------------------------------------------------------------------------- aio-pika


async def library_cell(spec: CellSpec) -> Row:
    import aio_pika

    url = f"amqp://{USER}:{PASSWORD}@{spec.endpoint}/"
    queue_name = f"bench-{spec.tag}"
    connections: list[aio_pika.abc.AbstractConnection] = []
    drained = False
    shape: Row = {}

    async def open_channel() -> aio_pika.abc.AbstractChannel:
        connection = await aio_pika.connect(url)
        connections.append(connection)
        return await connection.channel(publisher_confirms=True)

    admin = await open_channel()
    await admin.declare_queue(queue_name, durable=True, arguments=dict(queue_arguments(spec.system)))
    message = aio_pika.Message(BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)

    async def publish(channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.default_exchange.publish(message, routing_key=queue_name)

    try:
        if spec.mode in ("single", "concurrent16"):
            count = 1 if spec.mode == "single" else CONCURRENT_PRODUCERS
            channels = [await open_channel() for _ in range(count)]
            recorder = measurement_window(spec)
            await sync_producers(recorder, [functools.partial(publish, channel) for channel in channels])
            shape = {"connections": count}
        elif spec.mode == "pipelined":
            channel = await open_channel()
            recorder = measurement_window(spec)
            await sync_producers(recorder, [functools.partial(publish, channel)] * LIBRARY_PIPELINE_CALLERS)
            shape = {"connections": 1, "concurrent_callers": LIBRARY_PIPELINE_CALLERS}
        else:
            backlog = await fill(spec, queue_name)
            consumer_connection = await aio_pika.connect(url)
            connections.append(consumer_connection)
            channel = await consumer_connection.channel()
            await channel.set_qos(prefetch_count=PREFETCH)
            queue = await channel.get_queue(queue_name)
            recorder = drain_window(spec)
            acked = 0
            async with queue.iterator() as iterator:
                async for incoming in iterator:
                    await incoming.ack()
                    acked += 1
                    recorder.done(None)
                    if acked >= backlog or recorder.over:
                        break
            drained = acked >= backlog
            recorder.finish()
            shape = {"prefetch": PREFETCH, "backlog": backlog, "drained": drained}
        return {**recorder.summary(drained=drained), **shape}
    finally:
        await admin.queue_delete(queue_name)
        for connection in connections:
            await connection.close()


async def run_cell(spec: CellSpec) -> Row:
    if spec.client == RAW:
        return await raw_cell(spec)
    if spec.client == LIBRARY:
        return await library_cell(spec)
    raise ValueError(f"unknown RabbitMQ client {spec.client!r}")
