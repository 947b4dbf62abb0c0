"""The server's pure pieces, without a network: codec, names, statuses, signatures, settings."""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from homing.broker.errors import BrokerError
from homing.broker.metadata import GroupConfig
from homing.broker.model import Delivery, Message, MessageType
from homing.config import Address
from homing.protocol import definition_pb2
from homing.server.auth import Authenticator, CredentialsError, load_credentials, sign
from homing.server.codec import (
    decode_message,
    duration_s,
    encode_delivery,
    endpoints_of,
    timestamp_ms,
    to_duration,
    to_timestamp,
    verify_body_digest,
)
from homing.server.names import qualify, unqualify
from homing.server.status import code_number, combined_status, error_status, ok_status, status
from homing.server.telemetry import SettingsPolicy, settings_reply

# ---------------------------------------------------------------------------------- time


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_milliseconds_survive_a_timestamp_round_trip(milliseconds: int) -> None:
    assert timestamp_ms(to_timestamp(milliseconds)) == milliseconds


def test_timestamps_round_down_to_the_millisecond() -> None:
    assert (
        timestamp_ms(timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=999_999_999)) == 1_700_000_000_999
    )
    assert (
        timestamp_ms(timestamp_pb2.Timestamp(seconds=1_700_000_000)) == 1_700_000_000_000
    )  # Python's whole seconds


def test_durations() -> None:
    assert duration_s(duration_pb2.Duration(seconds=2, nanos=500_000_000)) == 2.5
    assert to_duration(0.01) == duration_pb2.Duration(nanos=10_000_000)
    assert to_duration(1.5) == duration_pb2.Duration(seconds=1, nanos=500_000_000)
    with pytest.raises(BrokerError):
        duration_s(duration_pb2.Duration(seconds=-1))


# ---------------------------------------------------------------------------------- messages


def wire_message(**system: object) -> definition_pb2.Message:
    return definition_pb2.Message(
        topic=definition_pb2.Resource(name="t"),
        body=b"payload",
        user_properties={"a": "b"},
        system_properties=definition_pb2.SystemProperties(message_id="01AB", **system),  # type: ignore[arg-type]
    )


def test_decode_keeps_every_field() -> None:
    decoded = decode_message(
        wire_message(
            tag="tag",
            keys=["k1", "k2"],
            message_type=definition_pb2.DELAY,
            delivery_timestamp=timestamp_pb2.Timestamp(seconds=1_800_000_000, nanos=5_000_000),
            born_timestamp=timestamp_pb2.Timestamp(seconds=1_700_000_000),
            born_host="h",
            trace_context="00-abc-def-01",
            body_encoding=definition_pb2.GZIP,
        ),
        "ns%t",
    )
    assert decoded == Message(
        topic="ns%t",
        body=b"payload",
        message_id="01AB",
        message_type=MessageType.DELAY,
        tag="tag",
        keys=("k1", "k2"),
        properties={"a": "b"},
        delivery_timestamp_ms=1_800_000_000_005,
        born_timestamp_ms=1_700_000_000_000,
        born_host="h",
        trace_context="00-abc-def-01",
        body_is_gzip=True,
    )


def test_decode_infers_an_unspecified_type_and_refuses_unsupported_ones() -> None:
    assert decode_message(wire_message(message_group="g"), "t").message_type is MessageType.FIFO
    assert decode_message(wire_message(), "t").message_type is MessageType.NORMAL
    with pytest.raises(BrokerError) as raised:
        decode_message(wire_message(message_type=definition_pb2.PRIORITY), "t")
    assert raised.value.code == "UNSUPPORTED"


def test_digests() -> None:
    body = b"some body"
    crc = zlib.crc32(body)
    for digest in [
        definition_pb2.Digest(type=definition_pb2.CRC32, checksum=str(crc)),
        definition_pb2.Digest(type=definition_pb2.CRC32, checksum=f"{crc:08X}"),
        definition_pb2.Digest(type=definition_pb2.MD5, checksum=hashlib.md5(body).hexdigest().upper()),
        definition_pb2.Digest(type=definition_pb2.SHA1, checksum=hashlib.sha1(body).hexdigest()),
        definition_pb2.Digest(),
    ]:
        verify_body_digest(body, digest)
    with pytest.raises(BrokerError) as raised:
        verify_body_digest(body, definition_pb2.Digest(type=definition_pb2.SHA1, checksum="00"))
    assert raised.value.code == "MESSAGE_CORRUPTED"


def test_encode_delivery_fills_what_the_clients_require() -> None:
    message = Message(
        topic="ns%t",
        body=b"body",
        message_id="01AB",
        tag="x",
        born_timestamp_ms=1_700_000_000_123,
        queue_id=3,
        queue_offset=42,
        store_timestamp_ms=1_700_000_001_000,
    )
    delivery = Delivery(message, "v1.handle", 2, invisible_until_ms=1_700_000_031_000)
    wire = encode_delivery(
        delivery,
        topic=definition_pb2.Resource(name="t", resource_namespace="ns"),
        store_host="127.0.0.1:8081",
        now_ms=1_700_000_001_000,
    )
    system = wire.system_properties
    assert system.body_digest.type == definition_pb2.MD5
    assert system.body_digest.checksum == hashlib.md5(b"body").hexdigest().upper()
    assert system.body_encoding == definition_pb2.IDENTITY
    assert system.message_type == definition_pb2.NORMAL
    assert (system.delivery_attempt, system.receipt_handle) == (2, "v1.handle")
    assert (system.queue_id, system.queue_offset) == (3, 42)
    assert system.invisible_duration == duration_pb2.Duration(seconds=30)
    assert timestamp_ms(system.born_timestamp) == 1_700_000_000_123
    assert not system.HasField("message_group")
    assert not system.HasField("delivery_timestamp")


def test_endpoints_scheme_follows_the_host() -> None:
    assert endpoints_of(Address("127.0.0.1", 1)).scheme == definition_pb2.IPv4
    assert endpoints_of(Address("::1", 1)).scheme == definition_pb2.IPv6
    assert endpoints_of(Address("broker.example", 1)).scheme == definition_pb2.DOMAIN_NAME


# ---------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("namespace", "name", "qualified"),
    [
        ("", "orders", "orders"),
        ("ns", "orders", "ns%orders"),
        ("ns", "%DLQ%group", "%DLQ%ns%group"),
        ("", "%DLQ%group", "%DLQ%group"),
    ],
)
def test_namespaces(namespace: str, name: str, qualified: str) -> None:
    assert qualify(namespace, name) == qualified
    assert unqualify(namespace, qualified) == name


def test_invalid_namespaces_are_bad_requests() -> None:
    for namespace in ["a%b", "x" * 65, "a b"]:
        with pytest.raises(BrokerError) as raised:
            qualify(namespace, "t")
        assert raised.value.code == "BAD_REQUEST"


# ---------------------------------------------------------------------------------- statuses


def test_status_names_map_to_their_numbers_and_unknown_ones_to_internal_error() -> None:
    assert code_number("MESSAGE_NOT_FOUND") == 40401
    assert status("TOO_MANY_REQUESTS", "slow down").code == 42900
    unknown = error_status(BrokerError("NO_SUCH_STATUS", "line one\nline two"))
    assert unknown.code == definition_pb2.INTERNAL_SERVER_ERROR
    assert unknown.message == "line one line two (unknown status 'NO_SUCH_STATUS')"


def test_combined_status() -> None:
    bad = status("ILLEGAL_TOPIC", "no")
    assert combined_status([ok_status(), ok_status()]).code == definition_pb2.OK
    assert combined_status([bad]) == bad
    assert combined_status([bad, status("ILLEGAL_TOPIC", "also no")]).code == definition_pb2.ILLEGAL_TOPIC
    assert combined_status([ok_status(), bad]).code == definition_pb2.MULTIPLE_RESULTS


# ---------------------------------------------------------------------------------- auth


NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def authorization(
    secret: str = "s3cret", date_time: str = "20260101T000000Z", key: str = "ak"
) -> dict[str, str]:
    return {
        "authorization": f"MQv2-HMAC-SHA1 Credential={key}, SignedHeaders=x-mq-date-time, "
        f"Signature={sign(secret, date_time)}",
        "x-mq-date-time": date_time,
    }


def test_signatures() -> None:
    authenticator = Authenticator({"ak": "s3cret"}, now_s=lambda: NOW)
    assert authenticator.check(authorization()) == "ak"
    upper = authorization()
    signature = sign("s3cret", "20260101T000000Z")
    upper["authorization"] = upper["authorization"].replace(signature, signature.upper())  # as Node sends it
    assert authenticator.check(upper) == "ak"
    for headers in [
        {},
        authorization(secret="wrong"),
        authorization(key="other"),
        authorization(date_time="20251231T234400Z"),  # 16 min behind
        authorization(date_time="yesterday"),
        {"authorization": "Basic abc"},
    ]:
        with pytest.raises(BrokerError) as raised:
            authenticator.check(headers)
        assert raised.value.code == "UNAUTHORIZED"
    assert authenticator.check(authorization(date_time="20251231T234600Z")) == "ak"  # 14 min behind
    python_local_time = {**authorization(date_time="20260101T080000Z"), "x-mq-language": "PYTHON"}
    assert authenticator.check(python_local_time) == "ak"


def test_credentials_file(tmp_path: Path) -> None:
    path = tmp_path / "credentials.toml"
    path.write_text('# comment\nalice = "a-secret"\n"team.billing" = "b-secret"\n')
    os.chmod(path, 0o600)
    assert load_credentials(path) == {"alice": "a-secret", "team.billing": "b-secret"}
    for text in ['alice = ""', "alice = 3", "not toml", "", '[section]\nkey = "v"']:
        path.write_text(text)
        with pytest.raises(CredentialsError):
            load_credentials(path)
    with pytest.raises(CredentialsError):
        load_credentials(tmp_path / "missing.toml")


# ---------------------------------------------------------------------------------- settings


def test_python_consumers_get_whole_second_customized_backoff() -> None:
    client = definition_pb2.Settings(
        client_type=definition_pb2.SIMPLE_CONSUMER,
        subscription=definition_pb2.Subscription(
            group=definition_pb2.Resource(name="g"), long_polling_timeout=duration_pb2.Duration(seconds=60)
        ),
        user_agent=definition_pb2.UA(language=definition_pb2.PYTHON),
    )
    reply = settings_reply(
        client,
        SettingsPolicy(max_body_bytes=100, long_polling_timeout_s=20),
        access_point=definition_pb2.Endpoints(),
        group=GroupConfig("g", max_delivery_attempts=4, backoff_s=(0.5, 2.0)),
    )
    policy = reply.backoff_policy
    assert policy.max_attempts == 4
    assert [item.seconds for item in policy.customized_backoff.next] == [1, 2]
    assert reply.subscription.long_polling_timeout.seconds == 20  # clamped to the broker's
    assert not reply.subscription.fifo
