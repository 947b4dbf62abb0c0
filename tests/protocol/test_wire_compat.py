"""Homing's protocol definitions against those of the official RocketMQ 5 Python client.

Every message field, enum value and RPC the official client knows must exist in Homing's schema
with the same number, type, label and streaming kind; Homing may know more (newer upstream
additions). The official client runs in its own venv (scripts/setup-official-clients), because
its generated modules register the same protobuf names as ours and cannot share a descriptor pool
with them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from protocol_descriptors import Dump, dump_modules

from homing.protocol import admin_pb2, definition_pb2, service_pb2

REPO = Path(__file__).resolve().parents[2]
DUMPER = Path(__file__).with_name("protocol_descriptors.py")
OFFICIAL_MODULES = [
    "rocketmq.grpc_protocol.definition_pb2",
    "rocketmq.grpc_protocol.service_pb2",
    "rocketmq.grpc_protocol.admin_pb2",
]


def _run_official(python: Path, *args: str, stdin: str | None = None) -> str:
    # -I: isolated mode, so nothing from this checkout or the caller's environment leaks in.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    result = subprocess.run(
        [str(python), "-I", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if result.returncode != 0:
        pytest.fail(f"official client interpreter failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


@pytest.fixture(scope="session")
def official_python() -> Path:
    """The official client's interpreter; fails (never skips) if it cannot be set up."""
    result = subprocess.run(
        [str(REPO / "scripts" / "setup-official-clients")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        pytest.fail("scripts/setup-official-clients failed:\n" + result.stdout + result.stderr, pytrace=False)
    return REPO / ".venv-rocketmq" / "bin" / "python"


@pytest.fixture(scope="session")
def official(official_python: Path) -> Dump:
    dump: Dump = json.loads(_run_official(official_python, str(DUMPER), *OFFICIAL_MODULES))
    return dump


@pytest.fixture(scope="session")
def ours() -> Dump:
    return dump_modules([definition_pb2, service_pb2, admin_pb2])


def _message_differences(official: Dump, ours: Dump) -> list[str]:
    problems = []
    for name, message in sorted(official["messages"].items()):
        mine = ours["messages"].get(name)
        if mine is None:
            problems.append(f"missing message {name}")
            continue
        if mine["map_entry"] != message["map_entry"]:
            problems.append(f"{name}: map_entry {mine['map_entry']}, official {message['map_entry']}")
        for field_name, field in sorted(message["fields"].items()):
            my_field = mine["fields"].get(field_name)
            if my_field is None:
                problems.append(f"missing field {name}.{field_name}")
            elif my_field != field:
                problems.append(f"{name}.{field_name}: ours {my_field}, official {field}")
    return problems


def _enum_differences(official: Dump, ours: Dump) -> list[str]:
    problems = []
    for name, values in sorted(official["enums"].items()):
        mine = ours["enums"].get(name)
        if mine is None:
            problems.append(f"missing enum {name}")
            continue
        for value_name, number in sorted(values.items()):
            if value_name not in mine:
                problems.append(f"missing enum value {name}.{value_name}")
            elif mine[value_name] != number:
                problems.append(f"{name}.{value_name}: ours {mine[value_name]}, official {number}")
    return problems


def _service_differences(official: Dump, ours: Dump) -> list[str]:
    problems = []
    for name, methods in sorted(official["services"].items()):
        mine = ours["services"].get(name)
        if mine is None:
            problems.append(f"missing service {name}")
            continue
        for method_name, method in sorted(methods.items()):
            my_method = mine.get(method_name)
            if my_method is None:
                problems.append(f"missing rpc {name}.{method_name}")
            elif my_method != method:
                problems.append(f"{name}.{method_name}: ours {my_method}, official {method}")
    return problems


def test_official_schema_was_read(official: Dump) -> None:
    # Guards against comparing with an empty dump (which would make every check pass vacuously).
    assert ".apache.rocketmq.v2.MessagingService" in official["services"]
    assert len(official["services"][".apache.rocketmq.v2.MessagingService"]) >= 17
    assert len(official["messages"]) > 50
    assert ".apache.rocketmq.v2.Code" in official["enums"]


def test_every_official_message_field_matches(official: Dump, ours: Dump) -> None:
    assert _message_differences(official, ours) == []


def test_every_official_enum_value_matches(official: Dump, ours: Dump) -> None:
    assert _enum_differences(official, ours) == []


def test_every_official_rpc_matches(official: Dump, ours: Dump) -> None:
    assert _service_differences(official, ours) == []


def test_comparison_notices_a_difference(ours: Dump) -> None:
    # The checks above must be able to fail: tamper with a copy of our dump and compare.
    tampered: Dump = json.loads(json.dumps(ours))
    fields: dict[str, dict[str, Any]] = tampered["messages"][".apache.rocketmq.v2.SystemProperties"]["fields"]
    fields["message_id"]["number"] = 99
    del fields["tag"]
    tampered["enums"][".apache.rocketmq.v2.Code"]["OK"] = 200
    tampered["services"][".apache.rocketmq.v2.MessagingService"]["Telemetry"]["client_streaming"] = False
    assert len(_message_differences(ours, tampered)) == 2
    assert len(_enum_differences(ours, tampered)) == 1
    assert len(_service_differences(ours, tampered)) == 1


def _sample_send_request() -> service_pb2.SendMessageRequest:
    born = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=123_000_000)
    message = definition_pb2.Message(
        topic=definition_pb2.Resource(resource_namespace="ns", name="orders"),
        user_properties={"k1": "v1", "k2": ""},
        system_properties=definition_pb2.SystemProperties(
            tag="created",
            keys=["order-1", "order-2"],
            message_id="01ABCDEF",
            body_digest=definition_pb2.Digest(type=definition_pb2.CRC32, checksum="1a2b3c4d"),
            body_encoding=definition_pb2.IDENTITY,
            message_type=definition_pb2.FIFO,
            born_timestamp=born,
            born_host="10.0.0.7",
            queue_id=0,
            message_group="customer-42",
            priority=0,
            orphaned_transaction_recovery_duration=duration_pb2.Duration(seconds=30),
        ),
        body=b"\x00\x01payload\xff",
    )
    return service_pb2.SendMessageRequest(messages=[message])


def test_official_client_decodes_our_bytes_identically(official_python: Path) -> None:
    """Bytes we encode parse in the official client and re-encode to exactly the same bytes."""
    ours = _sample_send_request().SerializeToString(deterministic=True)
    script = (
        "import sys\n"
        "from rocketmq.grpc_protocol import service_pb2\n"
        "request = service_pb2.SendMessageRequest.FromString(bytes.fromhex(sys.stdin.read()))\n"
        "assert request.messages[0].system_properties.HasField('priority')\n"
        "assert request.messages[0].system_properties.message_group == 'customer-42'\n"
        "print(request.SerializeToString(deterministic=True).hex())\n"
    )
    echoed = _run_official(official_python, "-c", script, stdin=ours.hex()).strip()
    assert bytes.fromhex(echoed) == ours
