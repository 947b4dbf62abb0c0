"""Homing's protocol extensions (``homing.v1.Extensions``) over the wire: the same answers as the
standard RPCs they stand for, framed differently.

One broker process with a credentials file serves the module, so every request is signed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from homing.protocol import definition_pb2, extensions_pb2, extensions_pb2_grpc, service_pb2, service_pb2_grpc
from homing.server.auth import DATE_TIME_FORMAT, sign
from homing.testing import BrokerProcess

pytestmark = pytest.mark.timeout(300)

ACCESS_KEY = "extensions-key"
SECRET_KEY = "extensions-secret-0123456789"

Metadata = tuple[tuple[str, str], ...]


def headers(*, signed: bool = True, client_id: str = "extensions-test") -> Metadata:
    date_time = time.strftime(DATE_TIME_FORMAT, time.gmtime())
    metadata = [("x-mq-date-time", date_time), ("x-mq-client-id", client_id), ("x-mq-language", "PYTHON")]
    if signed:
        metadata.append(
            (
                "authorization",
                f"MQv2-HMAC-SHA1 Credential={ACCESS_KEY}, SignedHeaders=x-mq-date-time, "
                f"Signature={sign(SECRET_KEY, date_time)}",
            )
        )
    return tuple(metadata)


def start_broker(root: Path) -> BrokerProcess:
    credentials = root / "credentials.toml"
    credentials.write_text(f'{ACCESS_KEY} = "{SECRET_KEY}"\n')
    credentials.chmod(0o600)
    return BrokerProcess(
        root / "data",
        options={"credentials_file": str(credentials), "long_polling_timeout_s": 5.0},
    )


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    with start_broker(tmp_path_factory.mktemp("extensions")) as process:
        yield process
        assert process.stop() == 0, process.log_text()[-3000:]


@pytest.fixture(scope="module")
def channel(broker: BrokerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(broker.endpoint) as opened:
        yield opened


def message(topic: str, body: bytes, **system: object) -> definition_pb2.Message:
    properties = definition_pb2.SystemProperties(
        message_id="01" + uuid.uuid4().hex.upper(),
        message_type=definition_pb2.NORMAL,
        body_encoding=definition_pb2.IDENTITY,
        born_timestamp=timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=5_000_000),
        born_host="10.0.0.2",
        **system,  # type: ignore[arg-type]
    )
    return definition_pb2.Message(
        topic=definition_pb2.Resource(name=topic),
        system_properties=properties,
        body=body,
        user_properties={"k": "v"},
    )


def receive_request(
    topic: str, group: str, *, batch_size: int = 32, long_polling_s: int = 1, expression: str = "*"
) -> service_pb2.ReceiveMessageRequest:
    return service_pb2.ReceiveMessageRequest(
        group=definition_pb2.Resource(name=group),
        message_queue=definition_pb2.MessageQueue(topic=definition_pb2.Resource(name=topic), id=-1),
        filter_expression=definition_pb2.FilterExpression(type=definition_pb2.TAG, expression=expression),
        batch_size=batch_size,
        invisible_duration=duration_pb2.Duration(seconds=30),
        auto_renew=False,
        long_polling_timeout=duration_pb2.Duration(seconds=long_polling_s),
    )


def send(channel: grpc.Channel, *messages: definition_pb2.Message) -> service_pb2.SendMessageResponse:
    response: service_pb2.SendMessageResponse = service_pb2_grpc.MessagingServiceStub(channel).SendMessage(
        service_pb2.SendMessageRequest(messages=messages), metadata=headers()
    )
    assert response.status.code == definition_pb2.OK, response.status
    return response


def comparable(wire: definition_pb2.Message) -> definition_pb2.Message:
    """The fields of a delivered message that do not depend on the delivery or the message's place."""
    copy = definition_pb2.Message()
    copy.CopyFrom(wire)
    system = copy.system_properties
    for name in (
        "message_id",
        "receipt_handle",
        "invisible_duration",
        "queue_id",
        "queue_offset",
        "store_timestamp",
    ):
        system.ClearField(name)
    return copy


# ---------------------------------------------------------------------------------- ReceiveBatch


def test_receive_batch_delivers_exactly_what_receive_message_delivers(channel: grpc.Channel) -> None:
    topic, group = "ext-same", "ext-same-readers"
    send(channel, message(topic, b"one", tag="t", keys=["a"]), message(topic, b"one", tag="t", keys=["a"]))
    standard = list(
        service_pb2_grpc.MessagingServiceStub(channel).ReceiveMessage(
            receive_request(topic, group, batch_size=1), metadata=headers(), timeout=10
        )
    )
    assert [frame.WhichOneof("content") for frame in standard] == ["status", "message", "delivery_timestamp"]
    batch = extensions_pb2_grpc.ExtensionsStub(channel).ReceiveBatch(
        receive_request(topic, group, batch_size=1), metadata=headers(), timeout=10
    )
    assert batch.status.code == definition_pb2.OK and batch.status.message == "OK"
    assert len(batch.messages) == 1
    assert batch.HasField("delivery_timestamp")
    assert comparable(batch.messages[0]) == comparable(standard[1].message)
    system = batch.messages[0].system_properties
    assert system.receipt_handle and system.delivery_attempt == 1
    assert 25 <= system.invisible_duration.seconds <= 30
    ack = service_pb2_grpc.MessagingServiceStub(channel).AckMessage(
        service_pb2.AckMessageRequest(
            group=definition_pb2.Resource(name=group),
            topic=definition_pb2.Resource(name=topic),
            entries=[
                service_pb2.AckMessageEntry(
                    message_id=system.message_id, receipt_handle=system.receipt_handle
                )
            ],
        ),
        metadata=headers(),
    )
    assert ack.status.code == definition_pb2.OK


def test_receive_batch_returns_the_whole_batch_in_one_response(channel: grpc.Channel) -> None:
    topic, group = "ext-many", "ext-many-readers"
    sent = send(channel, *(message(topic, bytes([n]) * 100) for n in range(40)))
    time.sleep(0.5)  # durable already; let the dispatcher make them readable (it follows the flushes)
    stub = extensions_pb2_grpc.ExtensionsStub(channel)
    first = stub.ReceiveBatch(receive_request(topic, group, batch_size=32), metadata=headers(), timeout=10)
    second = stub.ReceiveBatch(receive_request(topic, group, batch_size=32), metadata=headers(), timeout=10)
    ids = [wire.system_properties.message_id for wire in [*first.messages, *second.messages]]
    assert len(first.messages) == 32
    assert sorted(ids) == sorted(entry.message_id for entry in sent.entries)


def test_an_empty_receive_batch_waits_then_says_message_not_found(channel: grpc.Channel) -> None:
    send(channel, message("ext-empty", b"other tag", tag="other"))
    started = time.monotonic()
    response = extensions_pb2_grpc.ExtensionsStub(channel).ReceiveBatch(
        receive_request("ext-empty", "ext-empty-readers", expression="never", long_polling_s=2),
        metadata=headers(),
        timeout=10,
    )
    assert response.status.code == definition_pb2.MESSAGE_NOT_FOUND
    assert not response.messages and not response.HasField("delivery_timestamp")
    assert 1.0 <= time.monotonic() - started < 4.0


def test_receive_batch_errors_are_the_status_of_the_response(channel: grpc.Channel) -> None:
    stub = extensions_pb2_grpc.ExtensionsStub(channel)
    bad_filter = stub.ReceiveBatch(
        receive_request("ext-errors", "ext-errors-readers", expression="||"), metadata=headers(), timeout=10
    )
    assert bad_filter.status.code == definition_pb2.ILLEGAL_FILTER_EXPRESSION
    unsigned = stub.ReceiveBatch(
        receive_request("ext-errors", "ext-errors-readers"), metadata=headers(signed=False), timeout=10
    )
    assert unsigned.status.code == definition_pb2.UNAUTHORIZED
    assert not bad_filter.messages and not unsigned.messages


# ---------------------------------------------------------------------------------- SendStream


def streamed(request_id: int, *messages: definition_pb2.Message) -> extensions_pb2.StreamedSendRequest:
    return extensions_pb2.StreamedSendRequest(
        request_id=request_id, request=service_pb2.SendMessageRequest(messages=messages)
    )


def test_send_stream_answers_every_request_by_its_id_as_send_message_would(channel: grpc.Channel) -> None:
    topic = "ext-stream"
    single, pair = message(topic, b"a"), [message(topic, b"b"), message(topic, b"c")]
    requests = [streamed(7, single), streamed(8), streamed(9, *pair)]  # 8 is empty: BAD_REQUEST
    answers = list(
        extensions_pb2_grpc.ExtensionsStub(channel).SendStream(iter(requests), metadata=headers(), timeout=10)
    )
    by_id = {answer.request_id: answer.response for answer in answers}
    assert sorted(by_id) == [7, 8, 9]
    assert by_id[7].status.code == definition_pb2.OK
    assert [entry.message_id for entry in by_id[7].entries] == [single.system_properties.message_id]
    assert by_id[8].status.code == definition_pb2.BAD_REQUEST
    assert [entry.status.code for entry in by_id[9].entries] == [definition_pb2.OK, definition_pb2.OK]
    # Stored and deliverable like anything sent with SendMessage (a receive answers as soon as some
    # are readable: the dispatcher makes them so a moment after they are durable).
    bodies: list[bytes] = []
    for _ in range(10):
        delivered = extensions_pb2_grpc.ExtensionsStub(channel).ReceiveBatch(
            receive_request(topic, "ext-stream-readers"), metadata=headers(), timeout=10
        )
        bodies += [wire.body for wire in delivered.messages]
        if len(bodies) >= 3:
            break
    assert sorted(bodies) == [b"a", b"b", b"c"]


def test_send_stream_serves_requests_in_flight_together(channel: grpc.Channel) -> None:
    count = 50
    requests = [streamed(n, message("ext-concurrent", str(n).encode())) for n in range(count)]
    answers = list(
        extensions_pb2_grpc.ExtensionsStub(channel).SendStream(iter(requests), metadata=headers(), timeout=20)
    )
    assert sorted(answer.request_id for answer in answers) == list(range(count))
    assert all(answer.response.status.code == definition_pb2.OK for answer in answers)


def test_an_unsigned_send_stream_is_refused_before_anything_is_sent(channel: grpc.Channel) -> None:
    call = extensions_pb2_grpc.ExtensionsStub(channel).SendStream(
        iter([streamed(1, message("ext-refused", b"x"))]), metadata=headers(signed=False), timeout=10
    )
    with pytest.raises(grpc.RpcError) as refused:
        list(call)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_send_stream_ends_cleanly_when_the_broker_shuts_down(tmp_path: Path) -> None:
    with start_broker(tmp_path) as process, grpc.insecure_channel(process.endpoint) as own:
        replies: list[extensions_pb2.StreamedSendResponse] = []

        def requests() -> Iterator[extensions_pb2.StreamedSendRequest]:
            yield streamed(1, message("ext-shutdown", b"x"))
            while not replies:
                time.sleep(0.01)
            assert process.stop() == 0, process.log_text()[-3000:]  # while the stream is open

        call = extensions_pb2_grpc.ExtensionsStub(own).SendStream(requests(), metadata=headers(), timeout=30)
        for reply in call:
            replies.append(reply)
        assert [reply.request_id for reply in replies] == [1]
        assert replies[0].response.status.code == definition_pb2.OK
        assert call.code() == grpc.StatusCode.OK
