"""``homing broker`` as an operator runs it: clear one-line failures, a clean stop on SIGTERM."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from homing.protocol import definition_pb2, service_pb2, service_pb2_grpc
from homing.testing import BrokerProcess, BrokerStartError, free_port

pytestmark = pytest.mark.timeout(120)


def homing_broker(*arguments: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "homing", "broker", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def failure_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line that says why the broker did not start."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("homing: ")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_port_in_use_fails_at_once_with_status_1(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = homing_broker("--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in failure_line(result)


def test_a_data_dir_that_is_a_file_fails_with_status_1(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "data"
    not_a_directory.write_text("I am a file")
    result = homing_broker("--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(not_a_directory))
    assert result.returncode == 1, result.stderr
    assert "is not a directory" in failure_line(result)
    assert not_a_directory.read_text() == "I am a file"


def test_an_unreadable_credentials_file_fails_with_status_1(tmp_path: Path) -> None:
    result = homing_broker(
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--data-dir",
        str(tmp_path / "data"),
        "--credentials-file",
        str(tmp_path / "missing.toml"),
    )
    assert result.returncode == 1, result.stderr
    assert "credentials file" in failure_line(result)


def test_two_brokers_cannot_share_a_data_dir_and_sigterm_stops_cleanly(tmp_path: Path) -> None:
    first = BrokerProcess(tmp_path / "data").start()
    try:
        second = BrokerProcess(tmp_path / "data", log_path=tmp_path / "second.log")
        with pytest.raises(BrokerStartError) as refused:
            second.start()
        assert "in use by another broker" in str(refused.value)

        # A receive waiting in a long poll must not hold the shutdown up.
        channel = grpc.insecure_channel(first.endpoint)
        stub = service_pb2_grpc.MessagingServiceStub(channel)
        request = service_pb2.ReceiveMessageRequest(
            group=definition_pb2.Resource(name="g"),
            message_queue=definition_pb2.MessageQueue(topic=definition_pb2.Resource(name="t")),
            batch_size=1,
            auto_renew=True,
        )
        waiting = stub.ReceiveMessage(request, metadata=(("x-mq-client-id", "c"),), timeout=30)
        time.sleep(0.5)
        started = time.monotonic()
        assert first.stop() == 0, first.log_text()  # SIGTERM
        assert time.monotonic() - started < 5
        responses = list(waiting)
        assert [definition_pb2.Code.Name(item.status.code) for item in responses] == ["MESSAGE_NOT_FOUND"]
        channel.close()
        assert "stopped" in first.log_text()
        # The directory is free again.
        BrokerProcess(tmp_path / "data", log_path=tmp_path / "third.log").start().stop()
    finally:
        first.kill()


def test_tls(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make a test certificate")
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
    names = ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    files = ["-keyout", str(key), "-out", str(certificate)]
    subprocess.run([openssl, *request, *names, *files], capture_output=True, check=True, timeout=60)
    with BrokerProcess(tmp_path / "data", options={"tls_cert": certificate, "tls_key": key}) as broker:
        assert "TLS" in broker.log_text()
        credentials = grpc.ssl_channel_credentials(root_certificates=certificate.read_bytes())
        with grpc.secure_channel(broker.endpoint, credentials) as channel:
            stub = service_pb2_grpc.MessagingServiceStub(channel)
            response = stub.Heartbeat(
                service_pb2.HeartbeatRequest(), metadata=(("x-mq-client-id", "c"),), timeout=10
            )
            assert response.status.code == definition_pb2.OK
        with grpc.insecure_channel(broker.endpoint) as plain, pytest.raises(grpc.RpcError):
            service_pb2_grpc.MessagingServiceStub(plain).Heartbeat(
                service_pb2.HeartbeatRequest(), metadata=(("x-mq-client-id", "c"),), timeout=5
            )
