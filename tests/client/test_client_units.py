"""The client's pure parts: status registry, messages and their checks, ids, config, signing, codecs."""

from __future__ import annotations

import hashlib
import hmac
import re
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from homing.client import (
    STATUS_CODES,
    BadRequestError,
    ClientConfig,
    ClientError,
    CorruptedMessageError,
    Credentials,
    DeadlineExceededError,
    Endpoints,
    FilterExpression,
    InternalServerError,
    InvalidArgumentError,
    Message,
    MessageType,
    NotFoundError,
    PersistenceTimeoutError,
    ProtocolError,
    ReceivedMessage,
    RetryPolicy,
    StatusError,
    TooManyRequestsError,
    TransportError,
)
from homing.client._codec import ServerSettings, decode_message, match_send_results, parse_settings
from homing.client._consumer import match_ack_results
from homing.client._errors import status_error, transport_error
from homing.client._ids import MessageIdFactory, next_message_id
from homing.client._retry import DEFAULT_PRODUCER_RETRY
from homing.client._session import ClientSession, Route, request_metadata, sign
from homing.errors import HomingError
from homing.protocol import definition_pb2, service_pb2

# ------------------------------------------------------------------------------------------------
# Status codes


def test_every_protocol_code_is_in_the_registry_with_its_name() -> None:
    protocol = {number: name for name, number in definition_pb2.Code.items() if number != 0}
    assert {number: code.name for number, code in STATUS_CODES.items()} == protocol


def test_only_ok_and_multiple_results_are_not_failures() -> None:
    successes = {code.name for code in STATUS_CODES.values() if code.error_class is None}
    assert successes == {"OK", "MULTIPLE_RESULTS"}


@pytest.mark.parametrize(
    ("code", "error_class", "retriable"),
    [
        (definition_pb2.MASTER_PERSISTENCE_TIMEOUT, PersistenceTimeoutError, True),
        (definition_pb2.SLAVE_PERSISTENCE_TIMEOUT, PersistenceTimeoutError, True),
        (definition_pb2.PROXY_TIMEOUT, PersistenceTimeoutError, True),
        (definition_pb2.TOO_MANY_REQUESTS, TooManyRequestsError, True),
        (definition_pb2.LITE_TOPIC_QUOTA_EXCEEDED, TooManyRequestsError, False),
        (definition_pb2.INTERNAL_SERVER_ERROR, InternalServerError, True),
        (definition_pb2.HA_NOT_AVAILABLE, InternalServerError, True),
        (definition_pb2.ILLEGAL_TOPIC, BadRequestError, False),
        (definition_pb2.INVALID_RECEIPT_HANDLE, BadRequestError, False),
        (definition_pb2.TOPIC_NOT_FOUND, NotFoundError, False),
    ],
)
def test_status_errors_carry_class_code_and_retriability(
    code: int, error_class: type, retriable: bool
) -> None:
    error = status_error(definition_pb2.Status(code=code, message="why"))  # type: ignore[arg-type]
    assert type(error) is error_class
    assert (
        isinstance(error, StatusError) and isinstance(error, ClientError) and isinstance(error, HomingError)
    )
    assert error.retriable is retriable
    assert error.code == code
    assert error.code_name == definition_pb2.Code.Name(code)  # type: ignore[arg-type]
    assert error.status_message == "why"
    assert str(error) == f"{error.code_name} ({code}): why"


def test_unknown_codes_are_classified_by_their_class() -> None:
    error = status_error(definition_pb2.Status(code=50499, message="new"))  # type: ignore[arg-type]
    assert type(error) is PersistenceTimeoutError and error.retriable
    assert error.code_name == "UNKNOWN_CODE_50499"
    error = status_error(definition_pb2.Status(code=40099))  # type: ignore[arg-type]
    assert type(error) is BadRequestError and not error.retriable
    assert type(status_error(definition_pb2.Status(code=99999))) is StatusError  # type: ignore[arg-type]
    assert type(status_error(definition_pb2.Status())) is ProtocolError


def test_grpc_failures_translate_at_the_boundary() -> None:
    deadline = transport_error(grpc.StatusCode.DEADLINE_EXCEEDED, "slow", "SendMessage to x")
    assert isinstance(deadline, DeadlineExceededError) and deadline.retriable
    assert str(deadline) == "SendMessage to x failed: DEADLINE_EXCEEDED: slow"
    unavailable = transport_error(grpc.StatusCode.UNAVAILABLE, "refused", "QueryRoute")
    assert type(unavailable) is TransportError and unavailable.retriable
    assert unavailable.grpc_code == grpc.StatusCode.UNAVAILABLE
    assert not transport_error(grpc.StatusCode.UNAUTHENTICATED, "no", "x").retriable
    assert not transport_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "too big", "x").retriable


# ------------------------------------------------------------------------------------------------
# Messages


def test_message_fields_and_type() -> None:
    message = Message("orders", "héllo", tag="paid", keys="order-1", properties={"region": "eu"})
    assert message.body == "héllo".encode()
    assert message.keys == ("order-1",)
    assert dict(message.properties) == {"region": "eu"}
    assert message.message_type is MessageType.NORMAL
    assert Message("orders", b"x", message_group="customer-7").message_type is MessageType.FIFO
    assert Message("orders", b"x", delay=5).message_type is MessageType.DELAY
    later = datetime.now(UTC) + timedelta(minutes=1)
    delayed = Message("orders", b"x", deliver_at=later)
    assert delayed.deliver_at_ms == round(later.timestamp() * 1000)
    assert delayed.message_type is MessageType.DELAY
    assert Message("orders", b"x", delay=timedelta(seconds=2)).delay_s == 2.0


def test_message_properties_cannot_be_changed_afterwards() -> None:
    properties = {"a": "1"}
    message = Message("orders", b"x", properties=properties)
    properties["b"] = "2"
    assert dict(message.properties) == {"a": "1"}
    with pytest.raises(TypeError):
        message.properties["c"] = "3"  # type: ignore[index]


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({"topic": "bad topic"}, "invalid topic 'bad topic'"),
        ({"topic": ""}, "invalid topic ''"),
        ({"topic": "x" * 128}, "invalid topic"),
        ({"topic": "%DLQ%group"}, "names starting with '%' are the broker's"),
        ({"body": b""}, "body must not be empty"),
        ({"body": 12}, "body must be bytes or str"),
        ({"tag": " "}, "tag must not be blank"),
        ({"tag": "a|b"}, "must not contain '|'"),
        ({"keys": ["ok", ""]}, "key must not be blank"),
        ({"keys": [str(i) for i in range(65)]}, "at most 64"),
        ({"properties": {"KEYS": "x"}}, "'KEYS' is reserved"),
        ({"properties": {"UNIQ_KEY": "x"}}, "'UNIQ_KEY' is reserved"),
        ({"properties": {"__homing.trace": "x"}}, "is reserved"),
        ({"properties": {"a": ""}}, "must not be blank"),
        ({"properties": {"a": "x\x01y"}}, "control character"),
        ({"properties": {"big": "x" * 17000}}, "at most 16384"),
        ({"message_group": "g", "delay": 5}, "both a message_group (FIFO) and a delivery time"),
        ({"delay": 5, "deliver_at": 1e10}, "deliver_at or delay, not both"),
        ({"delay": 0}, "delay must be positive"),
        ({"deliver_at": datetime(2030, 1, 1)}, "needs a time zone"),
        ({"message_id": "has space"}, "message_id 'has space'"),
        ({"message_id": "a,b"}, "message_id 'a,b'"),
    ],
)
def test_bad_messages_fail_when_made(arguments: dict[str, object], fragment: str) -> None:
    values: dict[str, object] = {"topic": "orders", "body": b"x", **arguments}
    with pytest.raises(InvalidArgumentError) as raised:
        Message(**values)  # type: ignore[arg-type]
    assert fragment in str(raised.value)
    assert isinstance(raised.value, ValueError) and not raised.value.retriable


def test_filter_expressions() -> None:
    assert FilterExpression() == FilterExpression.tag("*")
    assert FilterExpression.sql92("a > 1").sql
    with pytest.raises(InvalidArgumentError):
        FilterExpression.tag(" ")


# ------------------------------------------------------------------------------------------------
# Ids


def test_message_ids_follow_rocketmq_v1_layout() -> None:
    start = datetime(2021, 1, 1, tzinfo=UTC).timestamp()
    factory = MessageIdFactory(mac=0x0123456789AB, pid=0x10FFEE, clock_s=lambda: start + 0x01020304)
    first, second = factory.next(), factory.next()
    assert first == "01" + "0123456789AB" + "FFEE" + "01020304" + "00000000"
    assert second.endswith("00000001") and second[:-8] == first[:-8]
    assert len(first) == 34


def test_process_wide_ids_are_unique_and_well_formed() -> None:
    ids = [next_message_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(re.fullmatch(r"01[0-9A-F]{32}", message_id) for message_id in ids)


# ------------------------------------------------------------------------------------------------
# Config, environment, headers


def test_config_from_environment() -> None:
    config = ClientConfig.from_env(
        {
            "HOMING_CLIENT_ENDPOINTS": "10.0.0.1:8081;10.0.0.2:8081",
            "HOMING_CLIENT_ACCESS_KEY": "ak",
            "HOMING_CLIENT_SECRET_KEY": "sk",
            "HOMING_CLIENT_NAMESPACE": "shop",
            "HOMING_CLIENT_REQUEST_TIMEOUT_S": "5",
            "HOMING_FLUSH_MODE": "sync",  # the broker's: none of the client's business
            "PATH": "/bin",
        }
    )
    assert config.access_point == Endpoints((("10.0.0.1", 8081), ("10.0.0.2", 8081)))
    assert config.access_point.grpc_target == "ipv4:10.0.0.1:8081,10.0.0.2:8081"
    assert config.credentials == Credentials("ak", "sk")
    assert config.namespace == "shop" and config.request_timeout_s == 5.0 and not config.tls
    # Code wins over the environment.
    assert ClientConfig.from_env(
        {"HOMING_CLIENT_ENDPOINTS": "a:1"}, endpoints="b:2"
    ).access_point == Endpoints((("b", 2),))


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({}, "no endpoints"),
        ({"HOMING_CLIENT_ENDPOINTS": "x:1", "HOMING_CLIENT_ENDPOINT": "y:2"}, "unknown environment variable"),
        ({"HOMING_CLIENT_ENDPOINTS": "x:1", "HOMING_CLIENT_ACCESS_KEY": "ak"}, "go together"),
        ({"HOMING_CLIENT_ENDPOINTS": "x:1", "HOMING_CLIENT_TLS": "maybe"}, "expected true or false"),
        ({"HOMING_CLIENT_ENDPOINTS": "x:1", "HOMING_CLIENT_REQUEST_TIMEOUT_S": "soon"}, "not a number"),
        ({"HOMING_CLIENT_ENDPOINTS": "x:1", "HOMING_CLIENT_REQUEST_TIMEOUT_S": "0"}, "must be > 0"),
        ({"HOMING_CLIENT_ENDPOINTS": "x"}, "expected host:port"),
        ({"HOMING_CLIENT_ENDPOINTS": "::1:80"}, "needs brackets"),
        ({"HOMING_CLIENT_ENDPOINTS": "x:1", "HOMING_CLIENT_NAMESPACE": "a%b"}, "namespace"),
        ({"HOMING_CLIENT_ENDPOINTS": "x:1", "HOMING_CLIENT_TLS_CA_FILE": "/ca.pem"}, "tls is off"),
    ],
)
def test_config_errors(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        ClientConfig.from_env(env)
    assert fragment in str(raised.value)


def test_tls_config(tmp_path: Path) -> None:
    config = ClientConfig.from_env(
        {
            "HOMING_CLIENT_ENDPOINTS": "[::1]:8443",
            "HOMING_CLIENT_TLS": "true",
            "HOMING_CLIENT_TLS_CA_FILE": "ca.pem",
        }
    )
    assert config.tls and config.tls_ca_file == Path("ca.pem")
    assert config.access_point.grpc_target == "[::1]:8443"
    assert config.access_point.to_proto().scheme == definition_pb2.IPv6


def test_secret_is_not_in_repr() -> None:
    assert "s3cret" not in repr(ClientConfig("h:1", credentials=Credentials("ak", "s3cret")))


def test_headers_and_signature() -> None:
    now = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    config = ClientConfig("h:1", credentials=Credentials("AK1", "SK1"), namespace="shop")
    headers = dict(request_metadata(config, "client-1", now))
    expected = hmac.new(b"SK1", b"20260304T050607Z", hashlib.sha1).hexdigest()
    assert headers["x-mq-date-time"] == "20260304T050607Z"
    assert headers["authorization"] == (
        f"MQv2-HMAC-SHA1 Credential=AK1, SignedHeaders=x-mq-date-time, Signature={expected}"
    )
    assert sign("SK1", "20260304T050607Z") == expected
    assert headers["x-mq-namespace"] == "shop"
    assert headers["x-mq-client-id"] == "client-1"
    assert headers["x-mq-language"] == "PYTHON" and headers["x-mq-protocol"] == "v2"
    assert re.fullmatch(r"[0-9a-f-]{36}", headers["x-mq-request-id"])
    plain = dict(request_metadata(ClientConfig("h:1"), "c", now))
    assert "authorization" not in plain and "x-mq-namespace" not in plain


def test_session_headers_are_made_once_a_second_with_a_new_request_id_per_call() -> None:
    config = ClientConfig("h:1", credentials=Credentials("AK1", "SK1"), namespace="shop")
    session = ClientSession(
        config,
        client_type=definition_pb2.PRODUCER,
        settings_request=definition_pb2.Settings,
        initial_settings=ServerSettings(retry=DEFAULT_PRODUCER_RETRY),
    )
    first, second = dict(session.metadata()), dict(session.metadata())
    assert first["x-mq-request-id"] != second["x-mq-request-id"]
    date_time = first["x-mq-date-time"]
    signed = dict(
        request_metadata(config, session.client_id, datetime.strptime(date_time, "%Y%m%dT%H%M%S%z"))
    )
    for headers in (first, second):
        if headers["x-mq-date-time"] == date_time:
            assert {k: v for k, v in headers.items() if k != "x-mq-request-id"} == {
                k: v for k, v in signed.items() if k != "x-mq-request-id"
            }
    assert list(first) == list(signed)  # same headers, same order


def test_endpoints_text_and_target_are_kept() -> None:
    endpoints = Endpoints.parse("10.0.0.1:8081;10.0.0.2:8081")
    assert str(endpoints) == "10.0.0.1:8081;10.0.0.2:8081"
    assert endpoints.grpc_target == "ipv4:10.0.0.1:8081,10.0.0.2:8081"
    assert (
        Endpoints.parse("[::1]:1").grpc_target == "[::1]:1" and str(Endpoints.parse("[::1]:1")) == "[::1]:1"
    )
    assert endpoints == Endpoints((("10.0.0.1", 8081), ("10.0.0.2", 8081)))
    assert hash(endpoints) == hash(Endpoints((("10.0.0.1", 8081), ("10.0.0.2", 8081))))
    assert "_text" not in repr(endpoints)


# ------------------------------------------------------------------------------------------------
# Retry policies and settings


def test_exponential_backoff() -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.01, max_backoff_s=0.05, multiplier=2)
    assert [policy.backoff_s(n) for n in range(1, 6)] == [0.01, 0.02, 0.04, 0.05, 0.05]
    assert RetryPolicy(delays_s=(1, 5)).backoff_s(1) == 1 and RetryPolicy(delays_s=(1, 5)).backoff_s(9) == 5
    assert (
        RetryPolicy(max_attempts=3, initial_backoff_s=1, max_backoff_s=10, multiplier=2).backoff_s(1000) == 10
    )
    with pytest.raises(InvalidArgumentError):
        RetryPolicy(max_attempts=0)


def test_settings_reply_is_merged() -> None:
    reply = definition_pb2.Settings(
        backoff_policy=definition_pb2.RetryPolicy(
            max_attempts=5,
            exponential_backoff=definition_pb2.ExponentialBackoff(
                initial=Duration(nanos=20_000_000), max=Duration(seconds=2), multiplier=3
            ),
        ),
        publishing=definition_pb2.Publishing(max_body_size=1024, validate_message_type=True),
    )
    merged = parse_settings(reply, ServerSettings(retry=DEFAULT_PRODUCER_RETRY))
    assert merged.retry == RetryPolicy(5, 0.02, 2.0, 3.0)
    assert merged.max_body_bytes == 1024 and merged.validate_message_type
    consumer = parse_settings(
        definition_pb2.Settings(
            backoff_policy=definition_pb2.RetryPolicy(
                max_attempts=17,
                customized_backoff=definition_pb2.CustomizedBackoff(next=[Duration(seconds=10)]),
            ),
            subscription=definition_pb2.Subscription(
                fifo=True, receive_batch_size=8, long_polling_timeout=Duration(seconds=15)
            ),
        ),
        merged,
    )
    assert consumer.fifo and consumer.receive_batch_size == 8 and consumer.long_polling_timeout_s == 15
    assert consumer.retry.delays_s == (10.0,) and consumer.retry.max_attempts == 17
    # A zero body size (a misconfigured server) keeps the current limit instead of refusing every send.
    assert (
        parse_settings(
            definition_pb2.Settings(publishing=definition_pb2.Publishing(max_body_size=0)), merged
        ).max_body_bytes
        == 1024
    )


def test_route_uses_leaders_with_fitting_permission() -> None:
    def queue(broker_id: int, permission: int, port: int) -> definition_pb2.MessageQueue:
        return definition_pb2.MessageQueue(
            id=0,
            permission=permission,  # type: ignore[arg-type]
            broker=definition_pb2.Broker(
                id=broker_id,
                endpoints=definition_pb2.Endpoints(
                    addresses=[definition_pb2.Address(host="127.0.0.1", port=port)]
                ),
            ),
            accept_message_types=[definition_pb2.NORMAL],
        )

    route = Route(
        "t",
        (
            queue(0, definition_pb2.READ_WRITE, 1),
            queue(1, definition_pb2.READ_WRITE, 2),
            queue(0, definition_pb2.READ, 3),
        ),
    )
    assert [str(e) for e in route.writable_endpoints()] == ["127.0.0.1:1"]
    assert len(route.readable_queues()) == 2
    assert route.accepts(definition_pb2.NORMAL) and not route.accepts(definition_pb2.FIFO)


def _acked(handle: str) -> ReceivedMessage:
    return decode_message(
        definition_pb2.Message(
            topic=definition_pb2.Resource(name="t"),
            system_properties=definition_pb2.SystemProperties(
                message_id=f"id-{handle}", receipt_handle=handle
            ),
            body=b"x",
        ),
        Endpoints.parse("h:1"),
    )


def test_ack_results_are_matched_per_message() -> None:
    messages = [_acked("a"), _acked("b"), _acked("c")]

    def entry(handle: str, code: int = 0) -> service_pb2.AckMessageResultEntry:
        result = service_pb2.AckMessageResultEntry(message_id=f"id-{handle}", receipt_handle=handle)
        if code:
            result.status.code = code  # type: ignore[assignment]
        return result

    ok = definition_pb2.Status(code=definition_pb2.OK)
    mixed = service_pb2.AckMessageResponse(
        status=definition_pb2.Status(code=definition_pb2.MULTIPLE_RESULTS),
        entries=[
            entry("c", definition_pb2.OK),
            entry("a", definition_pb2.INVALID_RECEIPT_HANDLE),
            entry("b", definition_pb2.OK),
        ],
    )
    outcomes = match_ack_results(messages, mixed)
    assert isinstance(outcomes[0], BadRequestError) and outcomes[0].code_name == "INVALID_RECEIPT_HANDLE"
    assert outcomes[1:] == [None, None]
    # Entries without a status take the call's; a message the answer skips is unknown.
    partial = match_ack_results(messages, service_pb2.AckMessageResponse(status=ok, entries=[entry("a")]))
    assert partial[0] is None and all(isinstance(o, ProtocolError) for o in partial[1:])
    # An answer without any entry speaks for every message through its status.
    assert match_ack_results(messages, service_pb2.AckMessageResponse(status=ok)) == [None] * 3
    refused = service_pb2.AckMessageResponse(status=definition_pb2.Status(code=definition_pb2.FORBIDDEN))
    assert all(
        isinstance(o, ClientError) and not isinstance(o, ProtocolError)
        for o in match_ack_results(messages, refused)
    )


# ------------------------------------------------------------------------------------------------
# Matching send results to messages


def _entry(code: int, message_id: str, offset: int = 0) -> service_pb2.SendResultEntry:
    return service_pb2.SendResultEntry(
        status=definition_pb2.Status(code=code),  # type: ignore[arg-type]
        message_id=message_id,
        offset=offset,
    )


def test_per_entry_results_in_order_or_by_id() -> None:
    response = service_pb2.SendMessageResponse(
        status=definition_pb2.Status(code=definition_pb2.MULTIPLE_RESULTS),
        entries=[_entry(definition_pb2.OK, "b", 7), _entry(definition_pb2.MASTER_PERSISTENCE_TIMEOUT, "a")],
    )
    outcomes = match_send_results(["a", "b"], response)
    assert isinstance(outcomes[0], PersistenceTimeoutError) and outcomes[0].retriable
    assert isinstance(outcomes[1], service_pb2.SendResultEntry) and outcomes[1].offset == 7


def test_apache_batch_result_is_shared_out() -> None:
    response = service_pb2.SendMessageResponse(
        status=definition_pb2.Status(code=definition_pb2.OK), entries=[_entry(definition_pb2.OK, "a,b,c", 40)]
    )
    outcomes = match_send_results(["a", "b", "c"], response)
    assert [(o.message_id, o.offset) for o in outcomes if isinstance(o, service_pb2.SendResultEntry)] == [
        ("a", 40),
        ("b", 41),
        ("c", 42),
    ]


def test_unmatchable_results_are_protocol_errors() -> None:
    three = service_pb2.SendMessageResponse(
        status=definition_pb2.Status(code=definition_pb2.OK),
        entries=[_entry(definition_pb2.OK, "a"), _entry(definition_pb2.OK, "b")],
    )
    assert all(isinstance(o, ProtocolError) for o in match_send_results(["a", "b", "c"], three))
    none = service_pb2.SendMessageResponse(status=definition_pb2.Status(code=definition_pb2.OK))
    assert all(isinstance(o, ProtocolError) for o in match_send_results(["a"], none))
    refused = service_pb2.SendMessageResponse(
        status=definition_pb2.Status(code=definition_pb2.TOO_MANY_REQUESTS)
    )
    (error,) = match_send_results(["a"], refused)
    assert isinstance(error, TooManyRequestsError) and error.retriable
    wrong_ids = service_pb2.SendMessageResponse(
        status=definition_pb2.Status(code=definition_pb2.OK), entries=[_entry(definition_pb2.OK, "x,y")]
    )
    assert all(isinstance(o, ProtocolError) for o in match_send_results(["a", "b"], wrong_ids))


# ------------------------------------------------------------------------------------------------
# Decoding received messages


def _received(
    body: bytes, digest: definition_pb2.Digest, encoding: int = definition_pb2.IDENTITY
) -> definition_pb2.Message:
    return definition_pb2.Message(
        topic=definition_pb2.Resource(name="orders"),
        body=body,
        system_properties=definition_pb2.SystemProperties(
            message_id="m1",
            body_digest=digest,
            body_encoding=encoding,  # type: ignore[arg-type]
            receipt_handle="rh",
            delivery_attempt=2,
            tag="paid",
            born_timestamp=Timestamp(seconds=1_700_000_000, nanos=5_000_000),
        ),
        user_properties={"a": "1"},
    )


@pytest.mark.parametrize(
    "digest",
    [
        definition_pb2.Digest(type=definition_pb2.MD5, checksum=hashlib.md5(b"hello").hexdigest().upper()),
        definition_pb2.Digest(type=definition_pb2.MD5, checksum=hashlib.md5(b"hello").hexdigest()),
        definition_pb2.Digest(type=definition_pb2.SHA1, checksum=hashlib.sha1(b"hello").hexdigest()),
        definition_pb2.Digest(type=definition_pb2.CRC32, checksum=f"{zlib.crc32(b'hello'):X}"),
        definition_pb2.Digest(type=definition_pb2.CRC32, checksum=str(zlib.crc32(b"hello"))),
    ],
)
def test_received_digests_are_checked(digest: definition_pb2.Digest) -> None:
    endpoints = Endpoints.parse("127.0.0.1:1")
    message = decode_message(_received(b"hello", digest), endpoints)
    assert message.body == b"hello" and message.tag == "paid" and message.delivery_attempt == 2
    assert message.born_timestamp_ms == 1_700_000_000_005
    assert message.born_at == datetime.fromtimestamp(1_700_000_000.005, UTC)
    with pytest.raises(CorruptedMessageError):
        decode_message(_received(b"hellO", digest), endpoints)


def test_gzip_bodies_are_unpacked() -> None:
    import gzip

    packed = gzip.compress(b"x" * 1000)
    digest = definition_pb2.Digest(type=definition_pb2.MD5, checksum=hashlib.md5(packed).hexdigest())
    message = decode_message(_received(packed, digest, definition_pb2.GZIP), Endpoints.parse("h:1"))
    assert message.body == b"x" * 1000
    with pytest.raises(CorruptedMessageError):
        decode_message(
            _received(b"not gzip", definition_pb2.Digest(), definition_pb2.GZIP), Endpoints.parse("h:1")
        )
