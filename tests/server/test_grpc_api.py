"""The gRPC service with our own stubs: exact wire fields, bad input, authentication, namespaces.

One broker process serves the module, with auto-create off and a credentials file, so that every
request here is signed the way the official clients sign, and unknown topics are refused.
"""

from __future__ import annotations

import hashlib
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from official_drivers import run_driver

from homing.broker.metadata import GroupConfig, TopicConfig
from homing.protocol import definition_pb2, service_pb2, service_pb2_grpc
from homing.server.auth import DATE_TIME_FORMAT, sign
from homing.testing import BrokerProcess, seed_metadata

pytestmark = pytest.mark.timeout(300)

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key-0123456789"
MAX_BODY = 4 * 1024 * 1024
TOPIC = "orders"
GROUP = "readers"
NAMESPACE = "tenant1"

Metadata = tuple[tuple[str, str | bytes], ...]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    root = tmp_path_factory.mktemp("grpc")
    credentials = root / "credentials.toml"
    credentials.write_text(f'# access key = "secret key"\n{ACCESS_KEY} = "{SECRET_KEY}"\n')
    credentials.chmod(0o600)
    seed_metadata(
        root / "data",
        topics=[
            TopicConfig(TOPIC),
            TopicConfig(f"{NAMESPACE}%{TOPIC}", queue_count=2),
            TopicConfig("fifo-orders"),
        ],
        groups=[
            GroupConfig(GROUP),
            GroupConfig(f"{NAMESPACE}%{GROUP}"),
            GroupConfig("fifo-readers", fifo=True),
        ],
    )
    process = BrokerProcess(
        root / "data",
        options={
            "auto_create": False,
            "credentials_file": str(credentials),
            "long_polling_timeout_s": 5.0,
            "segment_size_bytes": 16 * 1024 * 1024,
        },
    )
    with process:
        yield process
        assert process.stop() == 0, process.log_text()[-3000:]


@pytest.fixture(scope="module")
def stub(broker: BrokerProcess) -> Iterator[service_pb2_grpc.MessagingServiceStub]:
    channel = grpc.insecure_channel(
        broker.endpoint,
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
    )
    yield service_pb2_grpc.MessagingServiceStub(channel)
    channel.close()


def headers(
    *,
    client_id: str | None = "grpc-test-client",
    namespace: str = "",
    secret: str = SECRET_KEY,
    access_key: str = ACCESS_KEY,
    when: float | None = None,
    uppercase: bool = False,
    signed: bool = True,
    language: str = "PYTHON",
) -> Metadata:
    date_time = time.strftime(DATE_TIME_FORMAT, time.gmtime(time.time() if when is None else when))
    metadata: list[tuple[str, str | bytes]] = [("x-mq-date-time", date_time), ("x-mq-language", language)]
    if client_id is not None:
        metadata.append(("x-mq-client-id", client_id))
    if namespace:
        metadata.append(("x-mq-namespace", namespace))
    if signed:
        signature = sign(secret, date_time)
        signature = signature.upper() if uppercase else signature
        metadata.append(
            (
                "authorization",
                f"MQv2-HMAC-SHA1 Credential={access_key}, SignedHeaders=x-mq-date-time, "
                f"Signature={signature}",
            )
        )
    return tuple(metadata)


def message(
    body: bytes = b"hello",
    *,
    topic: str = TOPIC,
    namespace: str = "",
    digest: definition_pb2.Digest | None = None,
    **system: object,
) -> definition_pb2.Message:
    fields: dict[str, object] = {
        "message_id": "01" + uuid.uuid4().hex.upper(),
        "message_type": definition_pb2.NORMAL,
        "body_encoding": definition_pb2.IDENTITY,
        "born_timestamp": timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=123_456_789),
        "born_host": "10.0.0.1",
    }
    properties = definition_pb2.SystemProperties(**{**fields, **system})  # type: ignore[arg-type]
    if digest is not None:
        properties.body_digest.CopyFrom(digest)
    return definition_pb2.Message(
        topic=definition_pb2.Resource(name=topic, resource_namespace=namespace),
        system_properties=properties,
        body=body,
        user_properties={"color": "blue"},
    )


def code_name(status: definition_pb2.Status) -> str:
    return definition_pb2.Code.Name(status.code)


def send(
    stub: service_pb2_grpc.MessagingServiceStub, *messages: definition_pb2.Message, **header_options: object
) -> service_pb2.SendMessageResponse:
    response: service_pb2.SendMessageResponse = stub.SendMessage(
        service_pb2.SendMessageRequest(messages=messages),
        metadata=headers(**header_options),  # type: ignore[arg-type]
    )
    return response


def receive(
    stub: service_pb2_grpc.MessagingServiceStub,
    *,
    topic: str = TOPIC,
    group: str = GROUP,
    filter_type: definition_pb2.FilterType.ValueType = definition_pb2.TAG,
    expression: str = "*",
    long_polling_s: int = 1,
    batch_size: int = 32,
    metadata: Metadata | None = None,
) -> list[service_pb2.ReceiveMessageResponse]:
    request = service_pb2.ReceiveMessageRequest(
        group=definition_pb2.Resource(name=group),
        message_queue=definition_pb2.MessageQueue(topic=definition_pb2.Resource(name=topic), id=0),
        filter_expression=definition_pb2.FilterExpression(type=filter_type, expression=expression),
        batch_size=batch_size,
        invisible_duration=duration_pb2.Duration(seconds=30),
        auto_renew=False,
        long_polling_timeout=duration_pb2.Duration(seconds=long_polling_s),
    )
    return list(stub.ReceiveMessage(request, metadata=metadata or headers(), timeout=long_polling_s + 5))


# ---------------------------------------------------------------------------------- routes


def test_query_route_names_one_broker_at_the_advertised_address(
    stub: service_pb2_grpc.MessagingServiceStub, broker: BrokerProcess
) -> None:
    response = stub.QueryRoute(
        service_pb2.QueryRouteRequest(topic=definition_pb2.Resource(name=TOPIC)), metadata=headers()
    )
    assert code_name(response.status) == "OK"
    assert [queue.id for queue in response.message_queues] == list(range(8))
    for queue in response.message_queues:
        assert queue.topic.name == TOPIC
        assert (queue.broker.name, queue.broker.id) == ("homing", 0)
        assert queue.broker.endpoints.scheme == definition_pb2.IPv4
        assert [(address.host, address.port) for address in queue.broker.endpoints.addresses] == [
            ("127.0.0.1", broker.port)
        ]
        assert queue.permission == definition_pb2.READ_WRITE
        assert sorted(queue.accept_message_types) == [
            definition_pb2.NORMAL,
            definition_pb2.FIFO,
            definition_pb2.DELAY,
            definition_pb2.TRANSACTION,
        ]


def test_unknown_topic_is_not_found_when_auto_create_is_off(
    stub: service_pb2_grpc.MessagingServiceStub,
) -> None:
    route = stub.QueryRoute(
        service_pb2.QueryRouteRequest(topic=definition_pb2.Resource(name="no-such-topic")), metadata=headers()
    )
    assert code_name(route.status) == "TOPIC_NOT_FOUND"
    assert not route.message_queues
    sent = send(stub, message(topic="no-such-topic"))
    assert code_name(sent.status) == "TOPIC_NOT_FOUND"
    assert [code_name(entry.status) for entry in sent.entries] == ["TOPIC_NOT_FOUND"]


@pytest.mark.parametrize("name", ["bad topic", "", "x" * 128, "%HOMING_POP%", "a/b"])
def test_invalid_topic_names_are_refused(stub: service_pb2_grpc.MessagingServiceStub, name: str) -> None:
    route = stub.QueryRoute(
        service_pb2.QueryRouteRequest(topic=definition_pb2.Resource(name=name)), metadata=headers()
    )
    assert code_name(route.status) == "ILLEGAL_TOPIC", route.status.message
    sent = send(stub, message(topic=name))
    assert [code_name(entry.status) for entry in sent.entries] == ["ILLEGAL_TOPIC"]


def test_query_assignment_gives_any_queue_or_every_queue_to_fifo_groups(
    stub: service_pb2_grpc.MessagingServiceStub,
) -> None:
    def assignment(topic: str, group: str) -> list[int]:
        response = stub.QueryAssignment(
            service_pb2.QueryAssignmentRequest(
                topic=definition_pb2.Resource(name=topic), group=definition_pb2.Resource(name=group)
            ),
            metadata=headers(),
        )
        assert code_name(response.status) == "OK", response.status.message
        return [item.message_queue.id for item in response.assignments]

    assert assignment(TOPIC, GROUP) == [-1]
    assert assignment("fifo-orders", "fifo-readers") == list(range(8))


# ---------------------------------------------------------------------------------- sending


def test_body_size_limit_is_exact(stub: service_pb2_grpc.MessagingServiceStub) -> None:
    largest = send(stub, message(b"x" * MAX_BODY))
    assert code_name(largest.status) == "OK", largest.status.message
    too_large = send(stub, message(b"x" * (MAX_BODY + 1)))
    assert code_name(too_large.status) == "MESSAGE_BODY_TOO_LARGE"
    assert "4194305" in too_large.status.message


def test_body_digests_are_checked(stub: service_pb2_grpc.MessagingServiceStub) -> None:
    body = b"checked body"
    crc = zlib.crc32(body)
    good = [
        definition_pb2.Digest(type=definition_pb2.MD5, checksum=hashlib.md5(body).hexdigest().upper()),
        definition_pb2.Digest(type=definition_pb2.SHA1, checksum=hashlib.sha1(body).hexdigest()),
        definition_pb2.Digest(type=definition_pb2.CRC32, checksum=str(crc)),
        definition_pb2.Digest(type=definition_pb2.CRC32, checksum=f"{crc:08X}"),
    ]
    for digest in good:
        response = send(stub, message(body, digest=digest))
        assert code_name(response.status) == "OK", (digest, response.status.message)
    bad = definition_pb2.Digest(type=definition_pb2.MD5, checksum=hashlib.md5(b"other").hexdigest())
    response = send(stub, message(body, digest=bad))
    assert code_name(response.status) == "MESSAGE_CORRUPTED"


def test_a_mixed_batch_reports_each_entry(stub: service_pb2_grpc.MessagingServiceStub) -> None:
    response = send(stub, message(b"fine"), message(b""), message(b"also fine"))
    assert code_name(response.status) == "MULTIPLE_RESULTS"
    assert [code_name(entry.status) for entry in response.entries] == ["OK", "MESSAGE_BODY_EMPTY", "OK"]
    assert all(entry.message_id for entry in response.entries)


def test_empty_send_and_wrong_types_are_bad_requests(stub: service_pb2_grpc.MessagingServiceStub) -> None:
    assert code_name(send(stub).status) == "BAD_REQUEST"
    fifo_without_group = send(stub, message(message_type=definition_pb2.FIFO))
    assert code_name(fifo_without_group.status) == "ILLEGAL_MESSAGE_GROUP"
    lite = send(stub, message(message_type=definition_pb2.LITE))
    assert code_name(lite.status) == "UNSUPPORTED"


# ---------------------------------------------------------------------------------- receiving


def test_send_receive_ack_round_trip_with_every_system_property(
    stub: service_pb2_grpc.MessagingServiceStub,
) -> None:
    topic, group = "fifo-orders", "fifo-readers"  # a topic of its own: nothing else is in it
    sent_message = message(
        b"round trip",
        topic=topic,
        tag="created",
        keys=["k1", "k2"],
        message_group="mg",
        message_type=definition_pb2.FIFO,
    )
    before_ms = int(time.time() * 1000)
    sent = send(stub, sent_message)
    assert code_name(sent.status) == "OK", sent.status.message
    [entry] = sent.entries
    assert entry.message_id == sent_message.system_properties.message_id

    responses = receive(stub, topic=topic, group=group)
    kinds = [response.WhichOneof("content") for response in responses]
    assert kinds == ["status", "message", "delivery_timestamp"]
    assert code_name(responses[0].status) == "OK"
    wire = responses[1].message
    system = wire.system_properties
    assert wire.body == b"round trip"
    assert dict(wire.user_properties) == {"color": "blue"}
    assert wire.topic.name == topic
    assert system.message_id == entry.message_id
    assert (system.tag, list(system.keys), system.message_group) == ("created", ["k1", "k2"], "mg")
    assert system.body_digest.type == definition_pb2.MD5
    assert system.body_digest.checksum == hashlib.md5(b"round trip").hexdigest().upper()
    assert system.body_encoding == definition_pb2.IDENTITY
    assert system.message_type == definition_pb2.FIFO
    assert (system.born_timestamp.seconds, system.born_timestamp.nanos) == (1_700_000_000, 123_000_000)
    assert system.born_host == "10.0.0.1"
    assert before_ms - 1000 <= system.store_timestamp.seconds * 1000 + system.store_timestamp.nanos // 10**6
    assert system.delivery_attempt == 1
    assert system.queue_offset == entry.offset
    assert system.receipt_handle
    assert 25 <= system.invisible_duration.seconds <= 30
    assert not system.HasField("delivery_timestamp")

    ack = stub.AckMessage(
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
    assert code_name(ack.status) == "OK"
    assert [code_name(item.status) for item in ack.entries] == ["OK"]


def test_an_empty_long_poll_waits_then_says_message_not_found(
    stub: service_pb2_grpc.MessagingServiceStub,
) -> None:
    started = time.monotonic()
    responses = receive(
        stub, group="fifo-readers", topic="fifo-orders", expression="never-used-tag", long_polling_s=2
    )
    elapsed = time.monotonic() - started
    assert [response.WhichOneof("content") for response in responses] == ["status"]
    assert code_name(responses[0].status) == "MESSAGE_NOT_FOUND"
    assert 1.0 <= elapsed < 4.0


@pytest.mark.parametrize(
    ("filter_type", "expression"),
    [
        (definition_pb2.SQL, "a = = 1"),
        (definition_pb2.SQL, ""),
        (definition_pb2.TAG, "||"),
        (definition_pb2.TAG, "x" * 70_000),
    ],
)
def test_invalid_filters_are_refused(
    stub: service_pb2_grpc.MessagingServiceStub,
    filter_type: definition_pb2.FilterType.ValueType,
    expression: str,
) -> None:
    responses = receive(stub, filter_type=filter_type, expression=expression)
    assert [response.WhichOneof("content") for response in responses] == ["status"]
    assert code_name(responses[0].status) == "ILLEGAL_FILTER_EXPRESSION", responses[0].status.message


def test_unknown_group_is_not_found_when_auto_create_is_off(
    stub: service_pb2_grpc.MessagingServiceStub,
) -> None:
    [response] = receive(stub, group="no-such-group")
    assert code_name(response.status) == "CONSUMER_GROUP_NOT_FOUND"


def test_forged_receipt_handles_are_refused(stub: service_pb2_grpc.MessagingServiceStub) -> None:
    real = receive(stub, long_polling_s=1)  # make sure the group has a cursor: the handle is the only problem
    assert real
    for handle in ["", "forged", "v1." + "A" * 60]:
        ack = stub.AckMessage(
            service_pb2.AckMessageRequest(
                group=definition_pb2.Resource(name=GROUP),
                topic=definition_pb2.Resource(name=TOPIC),
                entries=[service_pb2.AckMessageEntry(message_id="01AB", receipt_handle=handle)],
            ),
            metadata=headers(),
        )
        assert [code_name(entry.status) for entry in ack.entries] == ["INVALID_RECEIPT_HANDLE"]
        assert code_name(ack.status) == "INVALID_RECEIPT_HANDLE"
        change = stub.ChangeInvisibleDuration(
            service_pb2.ChangeInvisibleDurationRequest(
                group=definition_pb2.Resource(name=GROUP),
                topic=definition_pb2.Resource(name=TOPIC),
                receipt_handle=handle,
                invisible_duration=duration_pb2.Duration(seconds=5),
                message_id="01AB",
            ),
            metadata=headers(),
        )
        assert code_name(change.status) == "INVALID_RECEIPT_HANDLE"
        assert not change.receipt_handle


def test_offset_based_rpcs_are_unimplemented(stub: service_pb2_grpc.MessagingServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetOffset(service_pb2.GetOffsetRequest(), metadata=headers())
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as raised:
        list(stub.PullMessage(service_pb2.PullMessageRequest(), metadata=headers()))
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


# ---------------------------------------------------------------------------------- headers, auth


def test_the_client_id_header_is_required(stub: service_pb2_grpc.MessagingServiceStub) -> None:
    response = stub.Heartbeat(service_pb2.HeartbeatRequest(), metadata=headers(client_id=None))
    assert code_name(response.status) == "CLIENT_ID_REQUIRED"
    [streamed] = receive(stub, metadata=headers(client_id=None))
    assert code_name(streamed.status) == "CLIENT_ID_REQUIRED"


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"signed": False}, "no authorization header"),
        ({"secret": "wrong"}, "signature does not match"),
        ({"access_key": "stranger"}, "unknown access key"),
        ({"when": time.time() - 3600, "language": "HTTP"}, "behind the broker's clock"),
        ({"when": time.time() + 16 * 3600}, "ahead of the broker's clock"),
    ],
)
def test_requests_must_be_signed(
    stub: service_pb2_grpc.MessagingServiceStub, options: dict[str, object], why: str
) -> None:
    response = stub.Heartbeat(service_pb2.HeartbeatRequest(), metadata=headers(**options))  # type: ignore[arg-type]
    assert code_name(response.status) == "UNAUTHORIZED"
    assert why in response.status.message


def test_signature_case_and_python_local_time_are_accepted(
    stub: service_pb2_grpc.MessagingServiceStub,
) -> None:
    for options in [
        {"uppercase": True, "language": "HTTP"},
        {"when": time.time() + 8 * 3600, "language": "PYTHON"},
    ]:
        response = stub.Heartbeat(service_pb2.HeartbeatRequest(), metadata=headers(**options))  # type: ignore[arg-type]
        assert code_name(response.status) == "OK", (options, response.status.message)


def test_an_unsigned_telemetry_stream_is_refused(stub: service_pb2_grpc.MessagingServiceStub) -> None:
    command = service_pb2.TelemetryCommand(
        settings=definition_pb2.Settings(client_type=definition_pb2.PRODUCER)
    )
    with pytest.raises(grpc.RpcError) as raised:
        list(stub.Telemetry(iter([command]), metadata=headers(signed=False), timeout=5))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


# ---------------------------------------------------------------------------------- telemetry


def telemetry_reply(
    stub: service_pb2_grpc.MessagingServiceStub, settings: definition_pb2.Settings
) -> service_pb2.TelemetryCommand:
    """The broker's answer to one settings command (the stream is then closed by us)."""
    call = stub.Telemetry(
        iter([service_pb2.TelemetryCommand(settings=settings)]), metadata=headers(), timeout=5
    )
    reply: service_pb2.TelemetryCommand = next(call)
    call.cancel()
    return reply


def test_producer_settings_reply(stub: service_pb2_grpc.MessagingServiceStub) -> None:
    reply = telemetry_reply(
        stub,
        definition_pb2.Settings(
            client_type=definition_pb2.PRODUCER,
            request_timeout=duration_pb2.Duration(seconds=3),
            publishing=definition_pb2.Publishing(topics=[definition_pb2.Resource(name=TOPIC)]),
            user_agent=definition_pb2.UA(language=definition_pb2.NODE_JS, version="1.0.8"),
        ),
    )
    assert code_name(reply.status) == "OK"
    settings = reply.settings
    assert settings.client_type == definition_pb2.PRODUCER
    assert settings.publishing.max_body_size == MAX_BODY
    assert settings.publishing.validate_message_type
    assert [topic.name for topic in settings.publishing.topics] == [TOPIC]
    policy = settings.backoff_policy
    assert policy.max_attempts == 3
    assert policy.WhichOneof("strategy") == "exponential_backoff"
    assert (policy.exponential_backoff.initial.nanos, policy.exponential_backoff.max.seconds) == (
        10_000_000,
        1,
    )
    assert settings.request_timeout.seconds == 3


@pytest.mark.parametrize(
    ("language", "strategy"),
    [(definition_pb2.PYTHON, "customized_backoff"), (definition_pb2.NODE_JS, "exponential_backoff")],
)
def test_consumer_settings_reply(
    stub: service_pb2_grpc.MessagingServiceStub, language: definition_pb2.Language.ValueType, strategy: str
) -> None:
    reply = telemetry_reply(
        stub,
        definition_pb2.Settings(
            client_type=definition_pb2.PUSH_CONSUMER,
            subscription=definition_pb2.Subscription(
                group=definition_pb2.Resource(name="fifo-readers"),
                subscriptions=[
                    definition_pb2.SubscriptionEntry(
                        topic=definition_pb2.Resource(name="fifo-orders"),
                        expression=definition_pb2.FilterExpression(type=definition_pb2.TAG, expression="*"),
                    )
                ],
            ),
            user_agent=definition_pb2.UA(language=language),
        ),
    )
    assert code_name(reply.status) == "OK"
    subscription = reply.settings.subscription
    assert subscription.fifo
    assert subscription.receive_batch_size == 32
    assert subscription.long_polling_timeout.seconds == 5
    assert reply.settings.backoff_policy.WhichOneof("strategy") == strategy
    assert reply.settings.backoff_policy.max_attempts == 17


def test_bad_settings_get_an_error_status(stub: service_pb2_grpc.MessagingServiceStub) -> None:
    unknown_type = telemetry_reply(stub, definition_pb2.Settings(client_type=definition_pb2.PULL_CONSUMER))
    assert code_name(unknown_type.status) == "UNRECOGNIZED_CLIENT_TYPE"
    bad_filter = telemetry_reply(
        stub,
        definition_pb2.Settings(
            client_type=definition_pb2.SIMPLE_CONSUMER,
            subscription=definition_pb2.Subscription(
                group=definition_pb2.Resource(name=GROUP),
                subscriptions=[
                    definition_pb2.SubscriptionEntry(
                        topic=definition_pb2.Resource(name=TOPIC),
                        expression=definition_pb2.FilterExpression(type=definition_pb2.SQL, expression="a >"),
                    )
                ],
            ),
        ),
    )
    assert code_name(bad_filter.status) == "ILLEGAL_FILTER_EXPRESSION"


# ---------------------------------------------------------------------------------- namespaces


def test_namespaces_prefix_topic_and_group_names(stub: service_pb2_grpc.MessagingServiceStub) -> None:
    route = stub.QueryRoute(
        service_pb2.QueryRouteRequest(topic=definition_pb2.Resource(name=TOPIC)),
        metadata=headers(namespace=NAMESPACE),
    )
    assert code_name(route.status) == "OK"
    assert len(route.message_queues) == 2  # the namespace's own topic
    assert {(queue.topic.resource_namespace, queue.topic.name) for queue in route.message_queues} == {
        (NAMESPACE, TOPIC)
    }
    # The header is authoritative (Node puts the namespace only there); the resource alone works too.
    sent = send(stub, message(b"namespaced"), namespace=NAMESPACE)
    assert code_name(sent.status) == "OK", sent.status.message
    [response_status, delivered, _] = receive(stub, metadata=headers(namespace=NAMESPACE), long_polling_s=2)
    assert code_name(response_status.status) == "OK"
    assert (delivered.message.topic.resource_namespace, delivered.message.topic.name) == (NAMESPACE, TOPIC)
    assert delivered.message.body == b"namespaced"
    # Without a namespace, the same topic is reachable by its full name (namespaces are not tenants).
    full = stub.QueryRoute(
        service_pb2.QueryRouteRequest(topic=definition_pb2.Resource(name=f"{NAMESPACE}%{TOPIC}")),
        metadata=headers(),
    )
    assert len(full.message_queues) == 2
    bad = stub.QueryRoute(
        service_pb2.QueryRouteRequest(topic=definition_pb2.Resource(name=TOPIC)),
        metadata=headers(namespace="a%b"),
    )
    assert code_name(bad.status) == "BAD_REQUEST"


# ---------------------------------------------------------------------------------- official clients


@pytest.mark.parametrize("client", ["python", "node"])
def test_official_clients_sign_their_requests(client: str, broker: BrokerProcess, tmp_path: Path) -> None:
    arguments = {"endpoint": broker.endpoint, "topic": TOPIC, "messages": [{"body": "signed"}]}
    # The Python client signs its local time labelled as UTC: run it far from UTC.
    env = {"TZ": "Asia/Shanghai"} if client == "python" else None
    good = run_driver(
        client,
        "produce",
        {**arguments, "access_key": ACCESS_KEY, "secret_key": SECRET_KEY},
        tmp_path,
        env=env,
    )
    assert [event["ok"] for event in good.check().of("sent")] == [True], good.describe()

    bad = run_driver(
        client,
        "produce",
        {
            **arguments,
            "access_key": ACCESS_KEY,
            "secret_key": "wrong",
            "allow_failures": True,
            "timeout_s": 40,
        },
        tmp_path,
        env=env,
    )
    failures = [event for event in bad.events if event["event"] in ("sent", "error")]
    assert failures and not any(event.get("ok") for event in failures), bad.describe()
    # Node reports the status; Python fails its route query and logs why.
    assert "signature does not match" in str(failures) + bad.client_log(), bad.describe()
