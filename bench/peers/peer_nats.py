"""NATS JetStream cells: a raw NATS protocol client over asyncio streams, and nats-py.

The server runs JetStream with file storage and ``sync_interval: always`` (every write fsynced
before the publish is acknowledged). Each cell has a stream of its own (file storage, one
replica). A message is a ``PUB`` to the stream's subject with a reply inbox; it counts once the
JetStream ack (``{"stream":...,"seq":...}``) arrives on that inbox. Consuming uses a durable pull
consumer with explicit acks: ``CONSUMER.MSG.NEXT`` requests for batches (two kept outstanding)
and one ``+ACK`` per message, published to the message's ``$JS.ACK...`` reply subject (JetStream
does not answer a plain ``+ACK``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os

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

RAW = "raw-nats"
LIBRARY = "nats-py"

PIPELINE_CONNECTIONS = 1
PIPELINE_BATCH = 32
PIPELINE_WINDOW = 256
PULL_BATCH = 1000
LIBRARY_PIPELINE_CALLERS = 512
LIBRARY_FETCH = 256


class NatsError(RuntimeError):
    pass


# A delivered message: (subject, reply subject, payload, headers or None)
Delivery = tuple[bytes, bytes, bytes, bytes | None]


class NatsConnection:
    """A NATS connection that hands every MSG/HMSG to ``on_message`` (one inbox subscription)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()
        self.position = 0
        self.inbox = f"_INBOX.{os.urandom(8).hex()}"
        self._pong: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> NatsConnection:
        reader, writer = await asyncio.open_connection(host, port, limit=4 * 1024 * 1024)
        connection = cls(reader, writer)
        info = await reader.readline()
        if not info.startswith(b"INFO"):
            raise NatsError(f"unexpected greeting {info[:80]!r}")
        options = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True, "protocol": 1}
        writer.write(b"CONNECT " + json.dumps(options).encode() + b"\r\nPING\r\n")
        line = await reader.readline()
        if not line.startswith(b"PONG"):
            raise NatsError(f"CONNECT refused: {line[:200]!r}")
        writer.write(f"SUB {connection.inbox}.* 1\r\n".encode())
        return connection

    async def read_messages(self) -> list[Delivery]:
        """Read once from the socket; the complete messages received (control lines handled)."""
        if self.position > 1 << 20:
            del self.buffer[: self.position]
            self.position = 0
        data = await self.reader.read(262144)
        if not data:
            raise ConnectionError("nats-server closed the connection")
        self.buffer += data
        return self._parse()

    def _parse(self) -> list[Delivery]:
        out: list[Delivery] = []
        buffer = self.buffer
        while True:
            start = self.position
            end = buffer.find(b"\r\n", start)
            if end < 0:
                return out
            line = bytes(buffer[start:end])
            if line.startswith(b"MSG "):
                parts = line.split()
                size = int(parts[-1])
                if len(buffer) < end + 2 + size + 2:
                    return out
                payload = bytes(buffer[end + 2 : end + 2 + size])
                reply = parts[3] if len(parts) == 5 else b""
                out.append((parts[1], reply, payload, None))
                self.position = end + 2 + size + 2
            elif line.startswith(b"HMSG "):
                parts = line.split()
                header_size, total = int(parts[-2]), int(parts[-1])
                if len(buffer) < end + 2 + total + 2:
                    return out
                headers = bytes(buffer[end + 2 : end + 2 + header_size])
                payload = bytes(buffer[end + 2 + header_size : end + 2 + total])
                reply = parts[3] if len(parts) == 6 else b""
                out.append((parts[1], reply, payload, headers))
                self.position = end + 2 + total + 2
            else:
                self.position = end + 2
                if line == b"PING":
                    self.writer.write(b"PONG\r\n")
                elif line.startswith(b"-ERR"):
                    raise NatsError(line.decode(errors="replace"))

    async def request(self, subject: str, payload: bytes) -> bytes:
        """Publish with a reply inbox and wait for the one answer (JetStream API calls)."""
        reply = f"{self.inbox}.api{os.urandom(4).hex()}".encode()
        self.writer.write(b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply, len(payload), payload))
        while True:
            for subject_got, _reply, answer, headers in await self.read_messages():
                if subject_got == reply:
                    if headers is not None and b" 503" in headers.split(b"\r\n", 1)[0]:
                        raise NatsError(f"no responders for {subject} (is JetStream enabled?)")
                    return answer

    async def api(self, subject: str, body: dict[str, object]) -> dict[str, object]:
        answer = json.loads(await self.request(subject, json.dumps(body).encode()))
        if not isinstance(answer, dict):
            raise NatsError(f"{subject}: unexpected answer {answer!r}")
        if "error" in answer:
            raise NatsError(f"{subject}: {answer['error']}")
        return answer

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def names(spec: CellSpec) -> tuple[str, str]:
    """(stream, subject) of a cell."""
    stream = "B" + "".join(ch if ch.isalnum() else "_" for ch in spec.tag)
    return stream, f"bench.{stream}"


async def raw_pipeline(
    connection: NatsConnection,
    subject: str,
    window: int,
    batch: int,
    recorder: Recorder | None,
    deadline_ns: int,
    limit: int,
) -> int:
    """Keep ``window`` JetStream publishes in flight on ``connection`` until the deadline."""
    prefix = f"PUB {subject} {connection.inbox}.".encode()
    suffix = b" %d\r\n%s\r\n" % (len(BODY), BODY)
    sent_at: dict[bytes, int] = {}
    sequence = 0
    sent = 0
    inbox = connection.inbox.encode() + b"."
    while True:
        while (
            len(sent_at) < window
            and sent < limit
            and now_ns() < deadline_ns
            and not (recorder is not None and recorder.finished)
        ):
            parts = []
            stamp = now_ns()
            for _ in range(batch):
                sequence += 1
                token = b"%d" % sequence
                sent_at[inbox + token] = stamp
                parts.append(prefix + token + suffix)
            connection.writer.write(b"".join(parts))
            sent += batch
        if not sent_at:
            return sent
        for reply_subject, _reply, payload, _headers in await connection.read_messages():
            stamp_sent = sent_at.pop(reply_subject, None)
            if stamp_sent is None:
                continue
            if payload.startswith(b'{"error"') or b'"error":' in payload[:40]:
                raise NatsError(f"publish refused: {payload[:200]!r}")
            if recorder is not None:
                recorder.done(stamp_sent)


async def prepare_stream(connection: NatsConnection, spec: CellSpec) -> tuple[str, str]:
    stream, subject = names(spec)
    await connection.api(
        f"$JS.API.STREAM.CREATE.{stream}",
        {"name": stream, "subjects": [subject], "storage": "file", "retention": "limits", "num_replicas": 1},
    )
    return stream, subject


async def fill(spec: CellSpec, subject: str) -> int:
    connections = [await NatsConnection.open(spec.host, spec.port) for _ in range(PIPELINE_CONNECTIONS)]
    deadline = fill_deadline(spec)
    share = spec.fill_max // len(connections)
    sent = await asyncio.gather(
        *(
            raw_pipeline(c, subject, PIPELINE_WINDOW, PIPELINE_BATCH, None, deadline, share)
            for c in connections
        )
    )
    for connection in connections:
        await connection.close()
    return sum(sent)


async def create_consumer(connection: NatsConnection, stream: str, durable: str) -> None:
    await connection.api(
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        {
            "stream_name": stream,
            "config": {
                "durable_name": durable,
                "ack_policy": "explicit",
                "deliver_policy": "all",
                "max_ack_pending": 4 * PULL_BATCH,
                "ack_wait": 120 * 10**9,
            },
        },
    )


async def raw_consume(
    connection: NatsConnection, stream: str, durable: str, recorder: Recorder, backlog: int
) -> int:
    inbox = f"{connection.inbox}.pull".encode()
    pull = json.dumps({"batch": PULL_BATCH, "expires": 5 * 10**9}).encode()
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}".encode()
    request = b"PUB %s %s %d\r\n%s\r\n" % (next_subject, inbox, len(pull), pull)
    connection.writer.write(request * 2)
    requested = 2 * PULL_BATCH
    received = 0
    acked = 0
    while acked < backlog and not recorder.over:
        acks: list[bytes] = []
        for _subject, reply, _payload, headers in await connection.read_messages():
            if headers is not None and not reply:  # a status: 404/408 (pull over) or 409
                status = headers.split(b"\r\n", 1)[0]
                if b" 408" in status or b" 404" in status or b" 409" in status:
                    requested = received  # that pull is over: ask again below
                continue
            received += 1
            acks.append(b"PUB %s 4\r\n+ACK\r\n" % reply)
        done = len(acks)
        while requested - received < PULL_BATCH:
            acks.append(request)
            requested += PULL_BATCH
        if acks:
            connection.writer.write(b"".join(acks))
        acked += done
        if done:
            recorder.done(None, done)
    if acked >= backlog:
        recorder.finish()
    return acked


async def raw_cell(spec: CellSpec) -> Row:
    admin = await NatsConnection.open(spec.host, spec.port)
    stream, subject = await prepare_stream(admin, spec)
    connections: list[NatsConnection] = []
    drained = False
    shape: Row = {}
    try:
        if spec.mode in ("single", "concurrent16"):
            count = 1 if spec.mode == "single" else CONCURRENT_PRODUCERS
            connections = [await NatsConnection.open(spec.host, spec.port) for _ in range(count)]
            recorder = measurement_window(spec)
            await asyncio.gather(
                *(raw_pipeline(c, subject, 1, 1, recorder, recorder.end_ns, 1 << 62) for c in connections)
            )
            shape = {"connections": count}
        elif spec.mode == "pipelined":
            connections = [
                await NatsConnection.open(spec.host, spec.port) for _ in range(PIPELINE_CONNECTIONS)
            ]
            recorder = measurement_window(spec)
            await asyncio.gather(
                *(
                    raw_pipeline(
                        c, subject, PIPELINE_WINDOW, PIPELINE_BATCH, recorder, recorder.end_ns, 1 << 62
                    )
                    for c in connections
                )
            )
            shape = {
                "connections": PIPELINE_CONNECTIONS,
                "batch": PIPELINE_BATCH,
                "window_per_connection": PIPELINE_WINDOW,
            }
        else:
            backlog = await fill(spec, subject)
            await create_consumer(admin, stream, "c")
            connections = [await NatsConnection.open(spec.host, spec.port)]
            recorder = drain_window(spec)
            acked = await raw_consume(connections[0], stream, "c", recorder, backlog)
            drained = acked >= backlog
            recorder.finish()
            shape = {"pull_batch": PULL_BATCH, "backlog": backlog, "drained": drained}
        for connection in connections:
            await connection.close()
        return {**recorder.summary(drained=drained), **shape}
    finally:
        await admin.api(f"$JS.API.STREAM.DELETE.{stream}", {})
        await admin.close()


# ----------------------------------------------------------------------------- nats-py


async def library_cell(spec: CellSpec) -> Row:
    import nats
    from nats.aio.client import Client as NATS

    admin = await NatsConnection.open(spec.host, spec.port)
    stream, subject = await prepare_stream(admin, spec)
    clients: list[NATS] = []
    drained = False
    shape: Row = {}

    async def connect() -> NATS:
        client = await nats.connect(f"nats://{spec.endpoint}")
        clients.append(client)
        return client

    try:
        if spec.mode in ("single", "concurrent16"):
            count = 1 if spec.mode == "single" else CONCURRENT_PRODUCERS
            connected = [await connect() for _ in range(count)]
            recorder = measurement_window(spec)
            await sync_producers(
                recorder, [functools.partial(c.jetstream().publish, subject, BODY) for c in connected]
            )
            shape = {"connections": count}
        elif spec.mode == "pipelined":
            client = await connect()
            publish = functools.partial(client.jetstream().publish, subject, BODY)
            recorder = measurement_window(spec)
            await sync_producers(recorder, [publish] * LIBRARY_PIPELINE_CALLERS)
            shape = {"connections": 1, "concurrent_callers": LIBRARY_PIPELINE_CALLERS}
        else:
            backlog = await fill(spec, subject)
            await create_consumer(admin, stream, "c")
            client = await connect()
            subscription = await client.jetstream().pull_subscribe(subject, durable="c", stream=stream)
            recorder = drain_window(spec)
            acked = 0
            while acked < backlog and not recorder.over:
                try:
                    messages = await subscription.fetch(LIBRARY_FETCH, timeout=2)
                except nats.errors.TimeoutError:
                    break
                for message in messages:
                    await message.ack()
                acked += len(messages)
                recorder.done(None, len(messages))
            if acked >= backlog:
                recorder.finish()
            drained = acked >= backlog
            recorder.finish()
            shape = {"fetch": LIBRARY_FETCH, "backlog": backlog, "drained": drained}
        return {**recorder.summary(drained=drained), **shape}
    finally:
        for client in clients:
            await client.close()
        await admin.api(f"$JS.API.STREAM.DELETE.{stream}", {})
        await admin.close()


async def run_cell(spec: CellSpec) -> Row:
    if spec.client == RAW:
        return await raw_cell(spec)
    if spec.client == LIBRARY:
        return await library_cell(spec)
    raise ValueError(f"unknown NATS client {spec.client!r}")
