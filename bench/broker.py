"""Broker benchmark: durable sends and consume + ack through the real gRPC server.

Run ``python bench/broker.py [--quick] [--data-dir DIR] [--only ROWS] [--profile DIR]``. Each
result is one JSON object per line on stdout; progress goes to stderr.

What runs. A ``homing broker`` subprocess (:class:`homing.testing.BrokerProcess`) with ``sync``
flush (a send is answered only once it is fsynced) over a data directory on the real disk (a tmpfs
is refused), every other setting at its default. This process is the client: one grpc.aio channel
and Homing's generated protocol modules, no client library. Requests are prebuilt before timing
starts: SendMessage requests are serialized once (every message has its own id; the pool is sent
round and round) and handed to gRPC as bytes, so the client's per-call cost is gRPC's own plus
parsing the response. ReceiveMessage requests are prebuilt too; AckMessage requests are built per
batch from the receipt handles just received (that is the client's work in any consumer). The two
share 2 cores with the broker, so ``client_cpu_s`` is reported beside the broker's ``cpu_s``.

Rows (``name``):

- ``fsync_ceiling``: 4 KiB ``write`` + ``os.fdatasync`` in a loop on a fresh file in the data
  directory's file system for 2 s; one "message" per sync. The disk's durable-write rate.
- ``send_single_1`` / ``send_single_16``: 1 or 16 concurrent senders, each sending one message per
  SendMessage call and waiting for the answer; latency per call.
- ``send_batched_64`` / ``send_batched_256``: SendMessage calls of 64 (8 in flight) or 256
  (4 in flight) messages; latency per call.
- ``send_stream_16``: as ``send_single_16``, but over Homing's extension
  ``homing.v1.Extensions/SendStream`` (what Homing's client uses against a Homing broker): each
  sender has a stream of its own on the one channel and one request in flight on it.
- ``consume_ack``: a backlog of ``messages`` is stored first (batched sends, not timed; its rate is
  ``fill_msgs_per_s``), then ``consumers`` concurrent loops of ReceiveMessage (batch 32, 60 s
  invisible, 1 s long poll) + one AckMessage with the batch's entries drain it; latency per
  receive + ack cycle (``receive_p50_ms``... for the receive and building the ack request,
  ``ack_p50_ms``... for the AckMessage call).
- ``consume_ack_batch``: as ``consume_ack``, receiving with the extension
  ``homing.v1.Extensions/ReceiveBatch`` (the whole answer in one response; what Homing's client
  uses against a Homing broker).

Fields: ``msgs_per_s``, ``p50_ms``, ``p99_ms``, ``messages``, ``seconds``, the row's parameters
(``senders``, ``batch``, ``consumers``, ``body_bytes``), the broker's ``cpu_s`` (user + system
during the row, from ``/proc``), ``broker_cpu_pct`` (of one core), ``rss_mb`` and ``rss_anon_mb``
(at the row's end), this process's ``client_cpu_s``, ``fsync_ceiling_per_s`` and
``x_fsync_ceiling``. With ``--profile DIR``, ``py-spy record`` samples the broker during
``send_single_16``, ``send_batched_256`` and ``consume_ack`` (raw stacks in DIR), and a
``profile_<row>`` row lists the functions with the most samples (self and inclusive, percent of
the broker's non-idle samples); sampling slows the broker, so compare figures from runs without it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from homing.protocol import definition_pb2, extensions_pb2, service_pb2
from homing.testing import BrokerProcess

BODY_BYTES = 1024
CEILING_WRITE_BYTES = 4096
SEND_POOL_MESSAGES = 16_384  # distinct message ids per send row, sent round and round
RECEIVE_BATCH = 32
INVISIBLE_S = 60
LONG_POLL_S = 1
CALL_TIMEOUT_S = 30.0
SERVICE = "/apache.rocketmq.v2.MessagingService/"
EXTENSIONS = "/homing.v1.Extensions/"
OK = definition_pb2.OK
PROFILED_ROWS = ("send_single_16", "send_stream_16", "send_batched_256", "consume_ack", "consume_ack_batch")
ROWS = (
    "send_single_1",
    "send_single_16",
    "send_stream_16",
    "send_batched_64",
    "send_batched_256",
    "consume_ack",
    "consume_ack_batch",
)

Row = dict[str, object]


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def emit(row: Row) -> None:
    print(json.dumps(row), flush=True)


def percentile_ms(sorted_ns: Sequence[int], fraction: float) -> float | None:
    if not sorted_ns:
        return None
    return round(sorted_ns[min(len(sorted_ns) - 1, int(fraction * len(sorted_ns)))] / 1e6, 3)


# ----------------------------------------------------------------------------- the disk


def mount_of(path: Path) -> tuple[str, str]:
    """(mount point, file-system type) of ``path``: the longest matching entry of /proc/mounts."""
    best = ("/", "?")
    resolved = str(path.resolve())
    with open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            point, kind = fields[1], fields[2]
            inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best[0]):
                best = (point, kind)
    return best


def fsync_ceiling(directory: Path, seconds: float) -> tuple[Row, float]:
    """The ``fsync_ceiling`` row, and its rate."""
    path = directory / f"fsync-ceiling-{uuid.uuid4().hex[:8]}"
    block = os.urandom(CEILING_WRITE_BYTES)
    latencies: list[int] = []
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        started = time.perf_counter_ns()
        deadline = started + int(seconds * 1e9)
        now = started
        while now < deadline:
            os.write(descriptor, block)
            os.fdatasync(descriptor)
            after = time.perf_counter_ns()
            latencies.append(after - now)
            now = after
        elapsed = (now - started) / 1e9
    finally:
        os.close(descriptor)
        path.unlink()
    latencies.sort()
    point, kind = mount_of(directory)
    rate = len(latencies) / elapsed
    row = {
        "name": "fsync_ceiling",
        "msgs_per_s": round(rate),
        "p50_ms": percentile_ms(latencies, 0.5),
        "p99_ms": percentile_ms(latencies, 0.99),
        "messages": len(latencies),
        "seconds": round(elapsed, 3),
        "write_bytes": CEILING_WRITE_BYTES,
        "mount_point": point,
        "fs_type": kind,
    }
    return row, rate


# ----------------------------------------------------------------------------- the broker process


@dataclass
class Resources:
    """CPU and memory of the broker process (from /proc) and CPU of this process."""

    pid: int
    ticks_per_s: int = field(default_factory=lambda: os.sysconf("SC_CLK_TCK"))

    def broker_cpu_s(self) -> float:
        with open(f"/proc/{self.pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        # After "pid (comm)": field 3 is fields[0]; utime and stime are fields 14 and 15.
        return (int(fields[11]) + int(fields[12])) / self.ticks_per_s

    def broker_memory_mb(self) -> tuple[float, float]:
        values: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon"):
                    values[key] = int(rest.split()[0])
        return round(values.get("VmRSS", 0) / 1024, 1), round(values.get("RssAnon", 0) / 1024, 1)


@dataclass
class Measure:
    """Broker and client CPU over one row, and the broker's memory at its end."""

    resources: Resources
    broker_cpu_start: float = 0.0
    client_cpu_start: float = 0.0

    def __enter__(self) -> Measure:
        self.broker_cpu_start = self.resources.broker_cpu_s()
        self.client_cpu_start = time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def fields(self, seconds: float) -> Row:
        cpu_s = self.resources.broker_cpu_s() - self.broker_cpu_start
        rss_mb, rss_anon_mb = self.resources.broker_memory_mb()
        return {
            "cpu_s": round(cpu_s, 2),
            "broker_cpu_pct": round(100 * cpu_s / seconds, 1) if seconds > 0 else None,
            "rss_mb": rss_mb,
            "rss_anon_mb": rss_anon_mb,
            "client_cpu_s": round(time.process_time() - self.client_cpu_start, 2),
        }


class Profiler:
    """``py-spy record`` on the broker for the duration of one row (``--profile``)."""

    def __init__(self, directory: Path | None, pid: int, row: str) -> None:
        self.output = directory / f"{row}.txt" if directory is not None else None
        self.pid = pid
        self.row = row
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        if self.output is not None:
            py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            self.process = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "-p",
                    str(self.pid),
                    "-o",
                    str(self.output),
                    "-f",
                    "raw",
                    "-r",
                    "250",
                    "--gil",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)  # py-spy attaches before the row starts
        return self

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(60)

    def summary(self, top: int = 15) -> Row | None:
        """Self samples per function, and inclusive samples per Homing function (entry frames aside)."""
        if self.output is None or not self.output.exists():
            return None
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        total = 0
        for line in self.output.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [_function(frame) for frame in stack.split(";")]
            frames = [(name, path) for name, path in frames if not name.startswith(("process ", "thread "))]
            if not frames:
                continue
            total += count
            own[_label(*frames[-1])] += count
            for label in {_label(name, path) for name, path in frames if _is_homing(path)}:
                inclusive[label] += count
        if total == 0:
            return None

        def ranked(counter: Counter[str]) -> list[list[object]]:
            return [[name, round(100 * count / total, 1)] for name, count in counter.most_common(top)]

        return {
            "name": f"profile_{self.row}",
            "samples": total,
            "raw_stacks": str(self.output),
            "note": "py-spy --gil: samples of the thread holding the interpreter lock; self time of "
            "Handle._run is C code run by event-loop callbacks (gRPC's core, protobuf)",
            "top_self_pct": ranked(own),
            "top_homing_inclusive_pct": ranked(inclusive),
        }


ENTRY_FILES = ("homing/__main__.py", "homing/cli.py", "homing/server/app.py")


def _function(frame: str) -> tuple[str, str]:
    """``name (path/file.py:line)`` -> (name, path): samples of a function add up over its lines."""
    name, _, where = frame.partition(" (")
    return name, where.rstrip(")").rsplit(":", 1)[0]


def _label(name: str, path: str) -> str:
    return f"{name} ({'/'.join(path.split('/')[-2:])})" if path else name


def _is_homing(path: str) -> bool:
    return "homing/" in path and not path.endswith(ENTRY_FILES)


# ----------------------------------------------------------------------------- the client


class RawClient:
    """The MessagingService calls the benchmark makes, over one grpc.aio channel."""

    def __init__(self, endpoint: str) -> None:
        self.client_id = f"bench@{os.getpid()}@{uuid.uuid4().hex[:8]}"
        self.metadata = (("x-mq-client-id", self.client_id), ("x-mq-language", "PYTHON"))
        self.channel = grpc.aio.insecure_channel(
            endpoint,
            options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
        )
        # Requests go out as prebuilt bytes (no serializer); responses are parsed.
        self.send_call: grpc.aio.UnaryUnaryMultiCallable[bytes, service_pb2.SendMessageResponse]
        self.send_call = self.channel.unary_unary(
            SERVICE + "SendMessage",
            request_serializer=None,
            response_deserializer=service_pb2.SendMessageResponse.FromString,
        )
        self.receive_call: grpc.aio.UnaryStreamMultiCallable[bytes, service_pb2.ReceiveMessageResponse]
        self.receive_call = self.channel.unary_stream(
            SERVICE + "ReceiveMessage",
            request_serializer=None,
            response_deserializer=service_pb2.ReceiveMessageResponse.FromString,
        )
        self.receive_batch_call: grpc.aio.UnaryUnaryMultiCallable[bytes, extensions_pb2.ReceiveBatchResponse]
        self.receive_batch_call = self.channel.unary_unary(
            EXTENSIONS + "ReceiveBatch",
            request_serializer=None,
            response_deserializer=extensions_pb2.ReceiveBatchResponse.FromString,
        )
        # Requests go out as bytes: a StreamedSendRequest wrapped around a prebuilt SendMessageRequest.
        self.send_stream_call: grpc.aio.StreamStreamMultiCallable[bytes, extensions_pb2.StreamedSendResponse]
        self.send_stream_call = self.channel.stream_stream(
            EXTENSIONS + "SendStream",
            request_serializer=None,
            response_deserializer=extensions_pb2.StreamedSendResponse.FromString,
        )
        self.ack_call = self.channel.unary_unary(
            SERVICE + "AckMessage",
            request_serializer=service_pb2.AckMessageRequest.SerializeToString,
            response_deserializer=service_pb2.AckMessageResponse.FromString,
        )

    async def send(self, request: bytes) -> service_pb2.SendMessageResponse:
        response: service_pb2.SendMessageResponse = await self.send_call(
            request, timeout=CALL_TIMEOUT_S, metadata=self.metadata
        )
        return response

    async def receive(self, request: bytes) -> list[definition_pb2.Message]:
        """The messages of one ReceiveMessage call (empty when the long poll ended with none)."""
        messages: list[definition_pb2.Message] = []
        call = self.receive_call(request, timeout=CALL_TIMEOUT_S, metadata=self.metadata)
        async for response in call:
            kind = response.WhichOneof("content")
            if kind == "message":
                messages.append(response.message)
            elif kind == "status" and response.status.code not in (OK, definition_pb2.MESSAGE_NOT_FOUND):
                raise RuntimeError(f"ReceiveMessage failed: {response.status}")
        return messages

    async def receive_batch(self, request: bytes) -> list[definition_pb2.Message]:
        """The messages of one ReceiveBatch call (empty when the long poll ended with none)."""
        response = await self.receive_batch_call(request, timeout=CALL_TIMEOUT_S, metadata=self.metadata)
        if response.status.code not in (OK, definition_pb2.MESSAGE_NOT_FOUND):
            raise RuntimeError(f"ReceiveBatch failed: {response.status}")
        return list(response.messages)

    async def ack(self, request: service_pb2.AckMessageRequest) -> service_pb2.AckMessageResponse:
        response: service_pb2.AckMessageResponse = await self.ack_call(
            request, timeout=CALL_TIMEOUT_S, metadata=self.metadata
        )
        return response

    async def close(self) -> None:
        await self.channel.close()


def send_requests(topic: str, batch: int, total_messages: int, body: bytes) -> list[bytes]:
    """Serialized SendMessage requests of ``batch`` messages each, every message with its own id."""
    prefix = uuid.uuid4().hex[:10].upper()
    resource = definition_pb2.Resource(name=topic)
    born = Timestamp()
    born.GetCurrentTime()
    requests: list[bytes] = []
    sequence = 0
    for _ in range(max(1, total_messages // batch)):
        request = service_pb2.SendMessageRequest()
        for _ in range(batch):
            message = request.messages.add(topic=resource, body=body)
            properties = message.system_properties
            properties.message_id = f"01{prefix}{sequence:022X}"
            properties.message_type = definition_pb2.NORMAL
            properties.body_encoding = definition_pb2.IDENTITY
            properties.born_timestamp.CopyFrom(born)
            properties.born_host = "bench"
            sequence += 1
        requests.append(request.SerializeToString())
    return requests


def streamed(request_id: int, request: bytes) -> bytes:
    """A serialized StreamedSendRequest holding the serialized SendMessageRequest ``request``."""
    return b"\x08" + _varint(request_id) + b"\x12" + _varint(len(request)) + request


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def receive_request(topic: str, group: str) -> bytes:
    return service_pb2.ReceiveMessageRequest(
        group=definition_pb2.Resource(name=group),
        message_queue=definition_pb2.MessageQueue(topic=definition_pb2.Resource(name=topic), id=-1),
        filter_expression=definition_pb2.FilterExpression(type=definition_pb2.TAG, expression="*"),
        batch_size=RECEIVE_BATCH,
        invisible_duration=Duration(seconds=INVISIBLE_S),
        auto_renew=False,
        long_polling_timeout=Duration(seconds=LONG_POLL_S),
    ).SerializeToString()


def check_sent(response: service_pb2.SendMessageResponse, expected: int) -> None:
    if response.status.code != OK or len(response.entries) != expected:
        raise RuntimeError(f"SendMessage failed: {response.status} ({len(response.entries)} entries)")


# ----------------------------------------------------------------------------- rows


@dataclass
class Outcome:
    messages: int
    seconds: float
    latencies_ns: list[int]
    extra: Row = field(default_factory=dict)


async def send_load(
    client: RawClient, requests: Sequence[bytes], batch: int, senders: int, seconds: float
) -> Outcome:
    """``senders`` loops, each sending the next prebuilt request and waiting for its answer."""
    latencies: list[int] = []
    sent = 0
    turn = 0
    started = time.perf_counter_ns()
    deadline = started + int(seconds * 1e9)
    last_done = started

    async def sender() -> None:
        nonlocal sent, turn, last_done
        while time.perf_counter_ns() < deadline:
            request = requests[turn % len(requests)]
            turn += 1
            before = time.perf_counter_ns()
            check_sent(await client.send(request), batch)
            last_done = time.perf_counter_ns()
            latencies.append(last_done - before)
            sent += batch

    await asyncio.gather(*(sender() for _ in range(senders)))
    latencies.sort()
    return Outcome(sent, (last_done - started) / 1e9, latencies)


async def send_stream_load(
    client: RawClient, requests: Sequence[bytes], batch: int, senders: int, seconds: float
) -> Outcome:
    """``senders`` loops, each on a SendStream of its own, one request in flight at a time."""
    latencies: list[int] = []
    sent = 0
    turn = 0
    started = time.perf_counter_ns()
    deadline = started + int(seconds * 1e9)
    last_done = started

    async def sender() -> None:
        nonlocal sent, turn, last_done
        stream = client.send_stream_call(metadata=client.metadata)
        request_id = 0
        while time.perf_counter_ns() < deadline:
            request = requests[turn % len(requests)]
            turn += 1
            request_id += 1
            before = time.perf_counter_ns()
            await stream.write(streamed(request_id, request))
            answer = await stream.read()
            assert isinstance(answer, extensions_pb2.StreamedSendResponse)
            if answer.request_id != request_id:
                raise RuntimeError(f"answer to request {answer.request_id}, expected {request_id}")
            check_sent(answer.response, batch)
            last_done = time.perf_counter_ns()
            latencies.append(last_done - before)
            sent += batch
        await stream.done_writing()
        if await stream.read() is not grpc.aio.EOF:
            raise RuntimeError("SendStream answered more than was asked")

    await asyncio.gather(*(sender() for _ in range(senders)))
    latencies.sort()
    return Outcome(sent, (last_done - started) / 1e9, latencies)


async def fill(client: RawClient, topic: str, messages: int, body: bytes) -> tuple[int, float]:
    """Store ``messages`` (rounded down to whole batches of 256, 4 in flight) in ``topic``.

    Returns how many were stored, and the rate.
    """
    batch, in_flight = 256, 4
    requests = send_requests(topic, batch, messages, body)
    queue = list(requests)
    started = time.perf_counter()

    async def sender() -> None:
        while queue:
            check_sent(await client.send(queue.pop()), batch)

    await asyncio.gather(*(sender() for _ in range(in_flight)))
    stored = len(requests) * batch
    return stored, stored / (time.perf_counter() - started)


async def consume_load(
    client: RawClient, topic: str, group: str, messages: int, consumers: int, batch_receive: bool = False
) -> Outcome:
    """Drain ``messages`` with ``consumers`` loops of ReceiveMessage (or ReceiveBatch) + AckMessage."""
    request = receive_request(topic, group)
    group_resource = definition_pb2.Resource(name=group)
    topic_resource = definition_pb2.Resource(name=topic)
    cycles: list[int] = []
    receives: list[int] = []
    acks: list[int] = []
    acked = 0
    empty_polls = 0
    started = time.perf_counter_ns()
    last_done = started

    async def consumer() -> None:
        nonlocal acked, empty_polls, last_done
        while acked < messages:
            before = time.perf_counter_ns()
            received = await (client.receive_batch(request) if batch_receive else client.receive(request))
            if not received:
                empty_polls += 1
                if empty_polls > 10 * consumers:
                    raise RuntimeError(f"the backlog ran dry at {acked} of {messages} messages")
                continue
            ack_request = service_pb2.AckMessageRequest(
                group=group_resource,
                topic=topic_resource,
                entries=[
                    service_pb2.AckMessageEntry(
                        message_id=message.system_properties.message_id,
                        receipt_handle=message.system_properties.receipt_handle,
                    )
                    for message in received
                ],
            )
            ack_started = time.perf_counter_ns()
            receives.append(ack_started - before)
            response = await client.ack(ack_request)
            last_done = time.perf_counter_ns()
            if response.status.code != OK:
                raise RuntimeError(f"AckMessage failed: {response.status}")
            acks.append(last_done - ack_started)
            cycles.append(last_done - before)
            acked += len(received)

    await asyncio.gather(*(consumer() for _ in range(consumers)))
    cycles.sort()
    receives.sort()
    acks.sort()
    return Outcome(
        acked,
        (last_done - started) / 1e9,
        cycles,
        {
            "receive_p50_ms": percentile_ms(receives, 0.5),
            "receive_p99_ms": percentile_ms(receives, 0.99),
            "ack_p50_ms": percentile_ms(acks, 0.5),
            "ack_p99_ms": percentile_ms(acks, 0.99),
            "receive_calls": len(cycles) + empty_polls,
            "empty_receives": empty_polls,
        },
    )


def row(name: str, outcome: Outcome, measure: Measure, ceiling_per_s: float, parameters: Row) -> Row:
    rate = outcome.messages / outcome.seconds if outcome.seconds > 0 else 0.0
    return {
        "name": name,
        "msgs_per_s": round(rate),
        "p50_ms": percentile_ms(outcome.latencies_ns, 0.5),
        "p99_ms": percentile_ms(outcome.latencies_ns, 0.99),
        "messages": outcome.messages,
        "seconds": round(outcome.seconds, 3),
        **parameters,
        "body_bytes": BODY_BYTES,
        **outcome.extra,
        **measure.fields(outcome.seconds),
        "fsync_ceiling_per_s": round(ceiling_per_s),
        "x_fsync_ceiling": round(rate / ceiling_per_s, 2) if ceiling_per_s else None,
    }


# ----------------------------------------------------------------------------- driver


@dataclass(frozen=True)
class Plan:
    send_seconds: float
    backlog: int
    consumers: int
    ceiling_seconds: float = 2.0


SEND_ROWS: dict[str, tuple[int, int]] = {  # name -> (messages per call, calls in flight)
    "send_single_1": (1, 1),
    "send_single_16": (1, 16),
    "send_stream_16": (1, 16),
    "send_batched_64": (64, 8),
    "send_batched_256": (256, 4),
}


async def run_rows(
    broker: BrokerProcess, plan: Plan, only: set[str], ceiling_per_s: float, profile_dir: Path | None
) -> None:
    assert broker.pid is not None
    resources = Resources(broker.pid)
    client = RawClient(broker.endpoint)
    body = os.urandom(BODY_BYTES)
    run = uuid.uuid4().hex[:6]
    try:
        for name, (batch, senders) in SEND_ROWS.items():
            if name not in only:
                continue
            topic = f"bench-{name}-{run}"
            requests = send_requests(topic, batch, max(SEND_POOL_MESSAGES, batch * senders), body)
            await client.send(requests[0])  # creates the topic: not part of the row
            progress(f"{name}: {senders} x {batch} per call for {plan.send_seconds:g} s")
            profiler = Profiler(profile_dir if name in PROFILED_ROWS else None, broker.pid, name)
            load = send_stream_load if name.startswith("send_stream") else send_load
            with profiler, Measure(resources) as measure:
                outcome = await load(client, requests, batch, senders, plan.send_seconds)
            emit(row(name, outcome, measure, ceiling_per_s, {"senders": senders, "batch": batch}))
            emit_profile(profiler)
        for name in ("consume_ack", "consume_ack_batch"):
            if name not in only:
                continue
            topic, group = f"bench-{name}-{run}", f"bench-group-{name}-{run}"
            progress(f"{name}: storing a backlog of {plan.backlog} messages")
            backlog, fill_rate = await fill(client, topic, plan.backlog, body)
            progress(f"{name}: draining it with {plan.consumers} consumers")
            profiler = Profiler(profile_dir if name in PROFILED_ROWS else None, broker.pid, name)
            with profiler, Measure(resources) as measure:
                outcome = await consume_load(
                    client, topic, group, backlog, plan.consumers, batch_receive=name == "consume_ack_batch"
                )
            outcome.extra["fill_msgs_per_s"] = round(fill_rate)
            emit(
                row(
                    name,
                    outcome,
                    measure,
                    ceiling_per_s,
                    {"consumers": plan.consumers, "batch": RECEIVE_BATCH},
                )
            )
            emit_profile(profiler)
    finally:
        await client.close()


def emit_profile(profiler: Profiler) -> None:
    summary = profiler.summary()
    if summary is not None:
        emit(summary)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter rows and backlog (under 3 minutes)")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a new directory in /var/tmp")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--only", default=",".join(ROWS), help=f"rows to run (of {','.join(ROWS)})")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR", help="py-spy the broker")
    options = parser.parse_args(argv)
    only = {name.strip() for name in options.only.split(",") if name.strip()}
    unknown = only - set(ROWS)
    if unknown:
        parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
    plan = Plan(send_seconds=3.0, backlog=40_000, consumers=4) if options.quick else Plan(6.0, 200_000, 4)

    base = Path(tempfile.mkdtemp(prefix="homing-bench-broker-", dir=options.data_dir or "/var/tmp"))
    point, kind = mount_of(base)
    if kind in ("tmpfs", "ramfs"):
        shutil.rmtree(base)
        print(f"{base} is on {kind} ({point}): the benchmark needs a real disk", file=sys.stderr)
        return 2
    if options.profile is not None:
        options.profile.mkdir(parents=True, exist_ok=True)
    try:
        progress(f"data in {base} ({kind} at {point})")
        ceiling, ceiling_per_s = fsync_ceiling(base, plan.ceiling_seconds)
        emit(ceiling)
        broker = BrokerProcess(base / "data", options={"flush_mode": "sync"})
        with broker:
            asyncio.run(run_rows(broker, plan, only, ceiling_per_s, options.profile))
            status = broker.stop()
            if status != 0:
                progress(f"the broker exited with status {status}:\n{broker.log_text()[-3000:]}")
                return 1
    finally:
        if not options.keep:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
