"""Redis Streams cells: a raw RESP client over asyncio streams, and redis-py (``redis.asyncio``).

A message is ``XADD <stream> * b <1 KiB>``; with ``appendfsync always`` Redis writes and fsyncs the
AOF before it answers. Consuming is ``XREADGROUP`` plus one ``XACK`` per message (pipelined with
the next read); a message counts once its XACK is answered.

The raw client writes pre-encoded commands, many per ``write`` call, and parses replies with
hiredis (the C parser redis-py itself uses): no client library in the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque

import hiredis
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

RAW = "raw-resp"
LIBRARY = "redis-py"

# Pipelined shape of the raw client: connections x commands per write x commands in flight each.
PIPELINE_CONNECTIONS = 16
PIPELINE_BATCH = 32
PIPELINE_WINDOW = 128
CONSUMERS = 2
READ_COUNT = 512


def encode(*parts: bytes | str | int) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RedisReplyError(RuntimeError):
    pass


class RespConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = hiredis.Reader()

    @classmethod
    async def open(cls, host: str, port: int) -> RespConnection:
        reader, writer = await asyncio.open_connection(host, port, limit=4 * 1024 * 1024)
        return cls(reader, writer)

    async def reply(self) -> object:
        while True:
            reply = self.parser.gets()
            if reply is not False:
                if isinstance(reply, hiredis.ReplyError):
                    raise RedisReplyError(str(reply))
                return reply
            data = await self.reader.read(262144)
            if not data:
                raise ConnectionError("redis closed the connection")
            self.parser.feed(data)

    async def call(self, *parts: bytes | str | int) -> object:
        self.writer.write(encode(*parts))
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def raw_pipeline(
    connection: RespConnection, command: bytes, recorder: Recorder | None, deadline_ns: int, limit: int
) -> int:
    """Keep ``PIPELINE_WINDOW`` commands in flight until the deadline (or ``limit`` sent)."""
    chunk = command * PIPELINE_BATCH
    batches: deque[tuple[int, int]] = deque()  # (sent_ns, replies still due)
    outstanding = 0
    sent = 0
    while True:
        while (
            outstanding < PIPELINE_WINDOW
            and sent < limit
            and now_ns() < deadline_ns
            and not (recorder is not None and recorder.finished)
        ):
            connection.writer.write(chunk)
            batches.append((now_ns(), PIPELINE_BATCH))
            outstanding += PIPELINE_BATCH
            sent += PIPELINE_BATCH
        if not batches:
            return sent
        data = await connection.reader.read(262144)
        if not data:
            raise ConnectionError("redis closed the connection")
        connection.parser.feed(data)
        while True:
            reply = connection.parser.gets()
            if reply is False:
                break
            if isinstance(reply, hiredis.ReplyError):
                raise RedisReplyError(str(reply))
            sent_ns, due = batches[0]
            due -= 1
            outstanding -= 1
            if due:
                batches[0] = (sent_ns, due)
            else:
                batches.popleft()
                if recorder is not None:
                    recorder.done(sent_ns, PIPELINE_BATCH)


async def fill(spec: CellSpec, key: str) -> int:
    """Put up to ``fill_max`` messages in the stream, as fast as the raw client can."""
    connections = [await RespConnection.open(spec.host, spec.port) for _ in range(PIPELINE_CONNECTIONS)]
    deadline = fill_deadline(spec)
    share = spec.fill_max // len(connections)
    command = encode("XADD", key, "*", "b", BODY)
    sent = await asyncio.gather(*(raw_pipeline(c, command, None, deadline, share) for c in connections))
    for connection in connections:
        await connection.close()
    return sum(sent)


async def raw_cell(spec: CellSpec) -> Row:
    key = f"bench-{spec.tag}"
    admin = await RespConnection.open(spec.host, spec.port)
    command = encode("XADD", key, "*", "b", BODY)
    shape: Row = {}
    try:
        if spec.mode in ("single", "concurrent16"):
            count = 1 if spec.mode == "single" else CONCURRENT_PRODUCERS
            connections = [await RespConnection.open(spec.host, spec.port) for _ in range(count)]

            async def operation(connection: RespConnection) -> object:
                connection.writer.write(command)
                return await connection.reply()

            recorder = measurement_window(spec)
            await sync_producers(recorder, [functools.partial(operation, c) for c in connections])
            shape = {"connections": count}
            drained = False
        elif spec.mode == "pipelined":
            connections = [
                await RespConnection.open(spec.host, spec.port) for _ in range(PIPELINE_CONNECTIONS)
            ]
            recorder = measurement_window(spec)
            await asyncio.gather(
                *(raw_pipeline(c, command, recorder, recorder.end_ns, 1 << 62) for c in connections)
            )
            shape = {
                "connections": PIPELINE_CONNECTIONS,
                "batch": PIPELINE_BATCH,
                "window_per_connection": PIPELINE_WINDOW,
            }
            drained = False
        else:
            backlog = await fill(spec, key)
            await admin.call("XGROUP", "CREATE", key, "g", "0")
            connections = [await RespConnection.open(spec.host, spec.port) for _ in range(CONSUMERS)]
            recorder = drain_window(spec)
            progress_box = [0]
            await asyncio.gather(
                *(
                    raw_consumer(c, key, f"c{i}", recorder, backlog, progress_box)
                    for i, c in enumerate(connections)
                )
            )
            drained = progress_box[0] >= backlog
            recorder.finish()
            shape = {"consumers": CONSUMERS, "read_count": READ_COUNT, "backlog": backlog, "drained": drained}
        for connection in connections:
            await connection.close()
        return {**recorder.summary(drained=drained), **shape}
    finally:
        await admin.call("DEL", key)
        await admin.close()


async def raw_consumer(
    connection: RespConnection, key: str, name: str, recorder: Recorder, backlog: int, acked: list[int]
) -> None:
    read = encode("XREADGROUP", "GROUP", "g", name, "COUNT", READ_COUNT, "STREAMS", key, ">")
    connection.writer.write(read)
    acks_due = 0
    while True:
        for _ in range(acks_due):
            await connection.reply()
        if acks_due:
            acked[0] += acks_due
            recorder.done(None, acks_due)
        reply = await connection.reply()
        entries = _entries(reply)
        if not entries or recorder.over or acked[0] >= backlog:
            if acked[0] >= backlog:
                recorder.finish()
            if entries:  # ack what was read, so the stream is left clean
                connection.writer.write(b"".join(encode("XACK", key, "g", entry[0]) for entry in entries))
                for _ in entries:
                    await connection.reply()
            return
        # One XACK per message, written together with the next read.
        connection.writer.write(b"".join(encode("XACK", key, "g", entry[0]) for entry in entries) + read)
        acks_due = len(entries)


def _entries(reply: object) -> list[list[bytes]]:
    """The ``[id, fields]`` entries of an XREADGROUP reply (an empty list for a nil reply)."""
    if not isinstance(reply, list) or not reply:
        return []
    stream = reply[0]
    assert isinstance(stream, list)
    entries = stream[1]
    assert isinstance(entries, list)
    return entries


# ----------------------------------------------------------------------------- redis-py

LIBRARY_PIPELINE_TASKS = 8
LIBRARY_PIPELINE_BATCH = 64


async def library_cell(spec: CellSpec) -> Row:
    import redis.asyncio as aioredis
    from redis.typing import EncodableT, FieldT

    key = f"bench-{spec.tag}"
    fields: dict[FieldT, EncodableT] = {"b": BODY}
    shape: Row = {}
    drained = False
    clients: list[aioredis.Redis] = []
    try:
        if spec.mode in ("single", "concurrent16"):
            count = 1 if spec.mode == "single" else CONCURRENT_PRODUCERS
            clients = [aioredis.Redis(host=spec.host, port=spec.port) for _ in range(count)]
            for client in clients:
                await client.ping()
            recorder = measurement_window(spec)
            await sync_producers(recorder, [functools.partial(c.xadd, key, fields) for c in clients])
            shape = {"connections": count}
        elif spec.mode == "pipelined":
            client = aioredis.Redis(host=spec.host, port=spec.port, max_connections=LIBRARY_PIPELINE_TASKS)
            clients = [client]
            await client.ping()
            recorder = measurement_window(spec)

            async def pipeline_task() -> None:
                while not recorder.over:
                    pipe = client.pipeline(transaction=False)
                    for _ in range(LIBRARY_PIPELINE_BATCH):
                        pipe.xadd(key, fields)
                    sent = now_ns()
                    await pipe.execute()
                    recorder.done(sent, LIBRARY_PIPELINE_BATCH)

            await asyncio.gather(*(pipeline_task() for _ in range(LIBRARY_PIPELINE_TASKS)))
            shape = {"pipelines": LIBRARY_PIPELINE_TASKS, "batch": LIBRARY_PIPELINE_BATCH}
        else:
            backlog = await fill(spec, key)
            client = aioredis.Redis(host=spec.host, port=spec.port, max_connections=CONSUMERS)
            clients = [client]
            await client.xgroup_create(key, "g", id="0")
            recorder = drain_window(spec)
            acked = [0]

            async def consumer(name: str) -> None:
                while not recorder.over and acked[0] < backlog:
                    reply = await client.xreadgroup("g", name, {key: ">"}, count=READ_COUNT)
                    if not reply:
                        break
                    ids = [entry[0] for entry in _entries(reply)]
                    pipe = client.pipeline(transaction=False)
                    for entry_id in ids:
                        pipe.xack(key, "g", entry_id)
                    await pipe.execute()
                    acked[0] += len(ids)
                    recorder.done(None, len(ids))
                if acked[0] >= backlog:
                    recorder.finish()

            await asyncio.gather(*(consumer(f"c{i}") for i in range(CONSUMERS)))
            drained = acked[0] >= backlog
            recorder.finish()
            shape = {"consumers": CONSUMERS, "read_count": READ_COUNT, "backlog": backlog, "drained": drained}
        return {**recorder.summary(drained=drained), **shape}
    finally:
        for client in clients:
            await client.aclose()
        admin = await RespConnection.open(spec.host, spec.port)
        await admin.call("DEL", key)
        await admin.close()


async def run_cell(spec: CellSpec) -> Row:
    if spec.client == RAW:
        return await raw_cell(spec)
    if spec.client == LIBRARY:
        return await library_cell(spec)
    raise ValueError(f"unknown redis client {spec.client!r}")
