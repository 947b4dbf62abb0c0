"""Fault 14: malformed input. Clean rejection; never a crash, never a partial write.

- Requests: arbitrary bytes parsed as each RPC's request, and structured SendMessage requests with
  arbitrary field values, through the servicer of an in-process broker. Every call must answer; an
  unexpected exception (logged "failed unexpectedly", answered INTERNAL_SERVER_ERROR) counts as a
  crash. A send stores exactly the entries it answers OK for (consume-queue entries are counted
  before and after), nothing of the others.
- Frames: arbitrary bytes as gRPC request payloads and as raw TCP streams to a served broker: it
  answers or closes, and keeps serving. (Malformed and mutated HTTP/2 frames on real connections:
  test_fuzz_frames.py.)
- Receipt handles and filter expressions: arbitrary text, and mutations of valid handles; refused
  with INVALID_RECEIPT_HANDLE / a filter error, never taking effect on another message.
- Record bytes on disk: arbitrary damage to a commit-log segment of a store whose contents are
  known; reopening either recovers or refuses with a store error, and every record it serves is
  exactly one that was written.

Inputs per target: ``fuzz_examples`` (1 500 in CI, 25 000 in the soak profile: over 100 000 a run).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import string
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import hypothesis
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtobufMessage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durability.conftest import FaultRun
from homing.broker.errors import BrokerError
from homing.broker.filters import compile_filter
from homing.broker.filters.errors import FilterExpressionError
from homing.client import AsyncProducer, Message
from homing.clock import SystemClock
from homing.config import Address
from homing.protocol import definition_pb2, service_pb2
from homing.server.servicer import MessagingServicer
from homing.store import MessageStore, NewRecord, SimulatedDisk, StoreConfig, StoreError
from homing.testing.durability.checker import CheckReport, check
from homing.testing.durability.history import Outcome
from homing.testing.durability.inprocess import InProcessBroker, InProcessWorkload, clone_disk
from homing.testing.durability.serving import serve_grpc

FAULT = "14 fuzzing"


class _Context:
    """The parts of a gRPC servicer context the servicer uses."""

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self._headers = headers

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self._headers

    def time_remaining(self) -> float:
        return 1.0

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise grpc.RpcError(f"{code}: {details}")


class _CrashLog(logging.Handler):
    """What a crash looks like in the logs, counted while a fuzz test runs.

    Homing's loggers: an unexpected exception ("failed unexpectedly", or a traceback). gRPC's
    server and asyncio: any error, except gRPC's own logs of malformed input it rejected, counted
    apart: a request payload that is not the method's protobuf (gRPC's deserializer raises before
    the servicer, and the call is answered UNKNOWN), an answer or error status that finds the call
    gone (its stream reset, its connection closed), and header values that are not UTF-8 (the call
    goes on with the bytes).
    """

    LOGGERS = ("homing", "grpc", "asyncio")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.crashes: list[str] = []
        self.rejections: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        error = record.exc_info[1] if record.exc_info else None
        if error is None and isinstance(record.msg, BaseException):
            error = record.msg  # grpc logs its serving task's crash as _LOGGER.exception(error)
        if isinstance(error, DecodeError) and text.startswith("Unexpected [DecodeError] raised by servicer"):
            self.rejections["request payloads not their protobuf (gRPC logs them)"] += 1
        elif type(error).__name__ == "ExecuteBatchError" and (
            text == "Failed sending error status from server"
            or text.startswith("ExecuteBatchError raised in core by servicer method")
        ):
            self.rejections["answers to calls their connection had dropped (gRPC logs them)"] += 1
        elif isinstance(error, UnicodeDecodeError) and text.startswith("Invalid encoding on"):
            self.rejections["header values not UTF-8 (gRPC logs them)"] += 1
        elif record.name.startswith("homing") and not ("unexpectedly" in text or record.exc_info):
            return  # an error Homing reports (a refused write, say), not an exception it did not expect
        else:
            self.crashes.append(f"{record.name}: {text}" + (f" ({error!r})" if error is not None else ""))

    def install(self) -> _CrashLog:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def remove(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)

    def notes(self) -> list[str]:
        return [f"{count} {what}" for what, count in sorted(self.rejections.items())]


@dataclass
class _Tally:
    inputs: int = 0
    accepted: int = 0
    refused: int = 0
    crashes: list[str] = field(default_factory=list)

    def report(self, *, partial_writes: int = 0, lost: int = 0, acked: int | None = None) -> CheckReport:
        accepted = self.accepted if acked is None else acked
        report = CheckReport(attempted=self.inputs, acked=accepted, failed=self.refused)
        report.unexpected = [f"partial write {index}" for index in range(partial_writes)]
        report.lost = [f"lost {index}" for index in range(lost)]
        report.effect_violations = {f"crash {index}": crash for index, crash in enumerate(self.crashes)}
        return report


def _settings(fault_run: FaultRun, examples: int | None = None) -> Callable[[Any], Any]:
    def decorate(test: Any) -> Any:
        test = settings(
            max_examples=examples or fault_run.profile.fuzz_examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )(test)
        return hypothesis.seed(fault_run.seed)(test)

    return decorate


def _entries(node: InProcessBroker) -> int:
    store = node.running.store
    store.dispatch_now()
    return sum(queue.next_offset for _, queue in store.queues)


class _Loop:
    """One event loop for a whole hypothesis run (each example is a coroutine run on it)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        self.loop.close()


async def _call(
    servicer: MessagingServicer, method: str, request: ProtobufMessage, context: _Context
) -> list[Any]:
    handler = getattr(servicer, method)
    if method == "ReceiveMessage":
        stream: AsyncIterator[Any] = handler(request, context)
        return [item async for item in stream]
    return [await handler(request, context)]


_UNARY: dict[str, type[ProtobufMessage]] = {
    "QueryRoute": service_pb2.QueryRouteRequest,
    "Heartbeat": service_pb2.HeartbeatRequest,
    "SendMessage": service_pb2.SendMessageRequest,
    "QueryAssignment": service_pb2.QueryAssignmentRequest,
    "ReceiveMessage": service_pb2.ReceiveMessageRequest,
    "AckMessage": service_pb2.AckMessageRequest,
    "ChangeInvisibleDuration": service_pb2.ChangeInvisibleDurationRequest,
    "ForwardMessageToDeadLetterQueue": service_pb2.ForwardMessageToDeadLetterQueueRequest,
    "EndTransaction": service_pb2.EndTransactionRequest,
    "RecallMessage": service_pb2.RecallMessageRequest,
    "NotifyClientTermination": service_pb2.NotifyClientTerminationRequest,
}

_names = st.text(alphabet=string.ascii_letters + string.digits + "%_-|.* \x00é", max_size=20)
_headers = st.lists(
    st.tuples(
        st.sampled_from(["x-mq-client-id", "x-mq-namespace", "x-mq-language", "authorization"]), _names
    ),
    max_size=4,
).map(lambda pairs: [("x-mq-client-id", "fuzz"), *pairs])


@st.composite
def _wire_messages(draw: st.DrawFn) -> definition_pb2.Message:
    message = definition_pb2.Message()
    message.topic.name = draw(st.one_of(st.just("orders"), _names))
    message.topic.resource_namespace = draw(st.one_of(st.just(""), _names))
    message.body = draw(st.binary(max_size=64))
    for key, value in draw(st.dictionaries(_names, _names, max_size=3)).items():
        message.user_properties[key] = value
    system = message.system_properties
    system.message_id = draw(st.one_of(st.just(""), _names, st.text(max_size=40)))
    system.message_type = cast(definition_pb2.MessageType.ValueType, draw(st.integers(-2, 8)))
    system.body_encoding = cast(definition_pb2.Encoding.ValueType, draw(st.integers(-1, 3)))
    if draw(st.booleans()):
        system.tag = draw(_names)
    system.keys.extend(draw(st.lists(_names, max_size=3)))
    if draw(st.booleans()):
        system.message_group = draw(_names)
    if draw(st.booleans()):
        system.delivery_timestamp.seconds = draw(st.integers(-(2**40), 2**40))
        system.delivery_timestamp.nanos = draw(st.integers(0, 999_999_999))
    system.born_timestamp.seconds = draw(st.integers(0, 2**34))
    system.queue_id = draw(st.integers(-(2**31), 2**31 - 1))
    if draw(st.booleans()):
        system.body_digest.type = cast(definition_pb2.DigestType.ValueType, draw(st.integers(0, 4)))
        system.body_digest.checksum = draw(_names)
    return message


def test_malformed_requests_are_refused_cleanly_and_never_partially_written(fault_run: FaultRun) -> None:
    tally = _Tally()
    crash_log = _CrashLog().install()
    runner = _Loop()
    node = InProcessBroker(fault_run.seed)
    partial: list[str] = []
    try:
        runner.run(node.start())
        servicer = MessagingServicer(
            node.running, advertise=Address("127.0.0.1", 8081), long_polling_timeout_s=0.0, clock=node.clock
        )

        @_settings(fault_run)
        @given(method=st.sampled_from(sorted(_UNARY)), data=st.binary(max_size=300), headers=_headers)
        def arbitrary_bytes(method: str, data: bytes, headers: list[tuple[str, str]]) -> None:
            try:
                request = _UNARY[method].FromString(data)
            except DecodeError:
                return  # gRPC refuses it before the servicer sees it (covered over the wire below)
            tally.inputs += 1
            before = _entries(node)
            runner.run(_call(servicer, method, request, _Context(headers)))
            if method != "SendMessage" and method != "EndTransaction" and _entries(node) != before:
                partial.append(f"{method} wrote without being a write")

        @_settings(fault_run)
        @given(messages=st.lists(_wire_messages(), min_size=0, max_size=4), headers=_headers)
        def structured_sends(messages: list[definition_pb2.Message], headers: list[tuple[str, str]]) -> None:
            tally.inputs += 1
            before = _entries(node)
            request = service_pb2.SendMessageRequest(messages=messages)
            [response] = runner.run(_call(servicer, "SendMessage", request, _Context(headers)))
            ok = sum(1 for entry in response.entries if entry.status.code == definition_pb2.OK)
            tally.accepted += ok
            tally.refused += len(messages) - ok
            if _entries(node) - before != ok:
                partial.append(f"{ok} entries OK but {_entries(node) - before} stored: {request}")

        arbitrary_bytes()
        structured_sends()
    finally:
        crash_log.remove()
        runner.run(node.stop())
        runner.close()
    tally.crashes = crash_log.crashes
    fault_run.record(
        tally.report(partial_writes=len(partial)), "\n".join(partial[:5] + crash_log.crashes[:5])
    )


def test_malformed_receipt_handles_and_filters_are_refused(fault_run: FaultRun) -> None:
    tally = _Tally()
    runner = _Loop()
    node = InProcessBroker(fault_run.seed)
    try:
        runner.run(node.start())
        workload = InProcessWorkload(node, fault_run.rng, invisible_s=60)
        for _ in range(20):
            runner.run(workload.send())
        held = runner.run(workload.receive(max_messages=20))
        handles = [delivery.receipt_handle for delivery in held]
        owners = {delivery.receipt_handle: delivery.message.message_id for delivery in held}
        # A delivery sent to the DLQ is done: a later ack of its handle is an idempotent OK (the soak
        # found this order), and a consumer that gave up on a message never applies it afterwards.
        given_up: set[str] = set()
        broker = node.running

        @_settings(fault_run)
        @given(
            text=st.one_of(
                st.text(max_size=200),
                st.sampled_from(handles).flatmap(
                    lambda handle: st.tuples(st.integers(0, len(handle) - 1), st.characters()).map(
                        lambda change: handle[: change[0]] + change[1] + handle[change[0] + 1 :]
                    )
                ),
            ),
            action=st.sampled_from(["ack", "change", "dlq"]),
        )
        def handles_fuzz(text: str, action: str) -> None:
            tally.inputs += 1
            try:
                if action == "ack":
                    runner.run(broker.ack("g", "orders", text))
                elif action == "change":
                    runner.run(broker.change_invisible_duration("g", "orders", text, 30))
                else:
                    runner.run(broker.forward_to_dead_letter("g", "orders", text, "fuzz"))
            except BrokerError as error:
                tally.refused += 1
                assert error.code in ("INVALID_RECEIPT_HANDLE", "ILLEGAL_INVISIBLE_TIME"), error
                return
            assert text in handles, f"an invented handle was accepted: {text!r}"
            tally.accepted += 1
            if action == "dlq":
                given_up.add(owners[text])
            elif action == "ack" and owners[text] not in given_up:
                # A real handle, acked: the consumer that held it had applied it.
                workload.inbox.apply(owners[text], owners[text])

        @_settings(fault_run)
        @given(kind=st.sampled_from(["TAG", "SQL92"]), text=st.text(max_size=120))
        def filters_fuzz(kind: str, text: str) -> None:
            tally.inputs += 1
            try:
                compiled = compile_filter(kind, text)
            except FilterExpressionError:
                tally.refused += 1
                return
            tally.accepted += 1
            runner.run(
                broker.receive(
                    group="fuzz-filters",
                    topic="orders",
                    message_filter=compiled,
                    max_messages=4,
                    invisible_s=1,
                    client_id="fuzz",
                    long_poll_timeout_s=0,
                )
            )

        handles_fuzz()
        filters_fuzz()
        # Nothing the fuzzing did may have touched the held deliveries' fate except with their own
        # handles: ack what is left and check the run.
        node.fake_clock.advance(120)
        report = runner.run(workload.check())
        report.attempted += tally.inputs
        fault_run.record(report)
    finally:
        runner.run(node.stop())
        runner.close()


def test_malformed_frames_over_the_wire_leave_the_broker_serving(fault_run: FaultRun) -> None:
    rng = random.Random(fault_run.seed)
    examples = fault_run.profile.raw_frame_examples
    tally = _Tally()
    crash_log = _CrashLog().install()

    async def scenario() -> None:
        node = InProcessBroker(fault_run.seed, clock=SystemClock())
        await node.start()
        front = await serve_grpc(node.running, node.clock, long_polling_timeout_s=0.1)
        try:
            async with grpc.aio.insecure_channel(front.endpoint) as channel:
                for index in range(examples):
                    method = rng.choice(sorted(_UNARY))
                    payload = rng.randbytes(rng.randint(0, 200))
                    tally.inputs += 1
                    metadata = (("x-mq-client-id", f"fuzz-{index % 7}"),)
                    path = f"/apache.rocketmq.v2.MessagingService/{method}"
                    try:
                        if method == "ReceiveMessage":
                            stream: Any = channel.unary_stream(path)
                            async for _ in stream(payload, metadata=metadata, timeout=5):
                                pass
                        else:
                            unary: Any = channel.unary_unary(path)
                            await unary(payload, metadata=metadata, timeout=5)
                        tally.accepted += 1
                    except grpc.aio.AioRpcError as error:
                        tally.refused += 1
                        assert error.code() != grpc.StatusCode.UNAVAILABLE, "the server went away"
            host, port = front.endpoint.split(":")
            for _ in range(max(1, examples // 10)):  # raw bytes where HTTP/2 frames belong
                tally.inputs += 1
                with socket.create_connection((host, int(port)), timeout=5) as connection:
                    connection.sendall(rng.randbytes(rng.randint(1, 512)))
                    connection.settimeout(2)
                    with contextlib.suppress(TimeoutError, ConnectionError):
                        connection.recv(1024)
            # Still serving, still writable.
            workload = InProcessWorkload(node, rng)
            async with AsyncProducer(front.endpoint, topics=["orders"]) as producer:
                for _ in range(5):
                    uid = workload.new_uid()
                    workload.history.attempt(uid)
                    receipt = await producer.send(Message("orders", b"after the fuzz", message_id=uid))
                    workload.history.outcome(uid, Outcome.OK, receipt.message_id)
            assert not node.running.store.fenced
            while got := await workload.receive(max_messages=16):
                for delivery in got:
                    await workload.handle(delivery)
            report = await _check_without_clock(workload)
            report.attempted += tally.inputs
            report.effect_violations.update(
                {f"crash {i}": crash for i, crash in enumerate(crash_log.crashes)}
            )
            report.notes += crash_log.notes()
            fault_run.record(report)
        finally:
            await front.stop()
            await node.stop()

    try:
        asyncio.run(scenario())
    finally:
        crash_log.remove()


async def _check_without_clock(workload: InProcessWorkload) -> CheckReport:
    in_flight, lag = workload.group_state()
    return check(
        workload.history, effects=workload.inbox.effect_counts(), dead_letters=workload.dead_letters(),
        in_flight=in_flight, lag=lag, stored_copies=workload.stored_copies(),
    )  # fmt: skip


def test_damaged_record_bytes_on_disk_are_never_served_as_data(fault_run: FaultRun) -> None:
    rng = random.Random(fault_run.seed)
    config = StoreConfig(data_dir="/data", segment_size_bytes=16 * 1024, checkpoint_interval_s=3600)
    original = SimulatedDisk(seed=fault_run.seed)
    store = MessageStore(config, original)
    store.open()
    written: dict[tuple[int, int], tuple[str, bytes]] = {}
    for index in range(60):
        body = rng.randbytes(rng.randint(1, 300))
        appended = store.append_durable(
            [NewRecord("orders", index % 2, body, message_id=f"id-{index}")]
        ).records[0]
        written[(index % 2, appended.queue_offset)] = (f"id-{index}", body)
    segments = [segment.path for segment in store.log.segments]
    store.halt()
    original.crash()
    tally = _Tally()
    bad: list[str] = []

    @_settings(fault_run, max(50, fault_run.profile.fuzz_examples // 10))
    @given(
        segment=st.sampled_from(segments),
        damage=st.lists(
            st.tuples(
                st.sampled_from(["bytes", "truncate", "zero"]),
                st.integers(0, 16 * 1024 - 1),
                st.binary(min_size=1, max_size=64),
            ),
            min_size=1,
            max_size=3,
        ),
    )
    def damaged(segment: str, damage: list[tuple[str, int, bytes]]) -> None:
        tally.inputs += 1
        disk = clone_disk(original)
        handle = disk.open(segment)
        for kind, offset, data in damage:
            if kind == "bytes":
                handle.pwrite(data, offset)
            elif kind == "zero":
                handle.pwrite(bytes(len(data)), offset)
            else:
                handle.truncate(offset)
        handle.sync()
        handle.close()
        reopened = MessageStore(config, disk)
        try:
            reopened.open()
        except StoreError:
            tally.refused += 1
            return
        try:
            for queue_id in (0, 1):
                offset, end = reopened.queue_bounds("orders", queue_id)
                while offset < end:
                    try:
                        read = reopened.read_queue("orders", queue_id, offset, 1)
                    except StoreError:
                        offset += 1
                        continue
                    for record in read.records:
                        expected = written.get((queue_id, record.queue_offset))
                        if expected != (record.message_id, record.body):
                            bad.append(f"served {record.message_id} at {queue_id}/{record.queue_offset}")
                        tally.accepted += 1
                    offset = max(read.next_queue_offset, offset + 1)
        finally:
            reopened.halt()

    damaged()
    report = tally.report(partial_writes=len(bad), acked=0)
    report.notes.append(f"{tally.accepted} records served after damage, each exactly as written")
    fault_run.record(report, "\n".join(bad[:10]))
