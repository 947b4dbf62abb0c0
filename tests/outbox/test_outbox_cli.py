"""``homing outbox``: help, argument checks, and a real relay run against a SQLite file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, ClassVar

import click.testing
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from homing import cli
from homing.outbox import Outbox

HOMING_SCRIPT = Path(sys.executable).parent / "homing"
SENDER = "outbox.outbox_cli_sender:factory"  # tests/outbox/outbox_cli_sender.py


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stray HOMING_* variables of the machine running the tests must not change the results."""
    for variable in list(os.environ):
        if variable.startswith("HOMING_"):
            monkeypatch.delenv(variable)


def homing(*arguments: str) -> click.testing.Result:
    return click.testing.CliRunner().invoke(cli.main, list(arguments), prog_name="homing")


@pytest.fixture
def sqlite_outbox(tmp_path: Path) -> tuple[str, Outbox, list[str]]:
    """A SQLite outbox holding three committed messages: (URL, outbox, message ids)."""
    url = f"sqlite:///{tmp_path / 'app.sqlite'}"
    engine = create_engine(url)
    outbox = Outbox()
    outbox.create_table(engine)
    with Session(engine) as session, session.begin():
        ids = [outbox.add(session, "orders", f"order {index}".encode()) for index in range(3)]
    engine.dispose()
    return url, outbox, ids


def sent_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_relay_help_works_in_a_real_process() -> None:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("HOMING_")}
    environment["COLUMNS"] = "200"
    completed = subprocess.run(
        [str(HOMING_SCRIPT), "outbox", "relay", "--db", "sqlite://", "--help"],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    for option in (
        "--db URL",
        "--endpoint HOST:PORT",
        "--batch-size",
        "--lease-s",
        "--backoff-max-s",
        "--once",
    ):
        assert option in completed.stdout
    assert "outbox" in homing("--help").output


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        ((), "Missing option '--db'"),
        (("--db", "sqlite://"), "--endpoint"),
        (("--db", "sqlite://", "--sender", SENDER, "--batch-size", "0"), "--batch-size"),
        (("--db", "sqlite://", "--sender", SENDER, "--lease-s", "-1"), "--lease-s"),
        (("--db", "sqlite://", "--sender", SENDER, "--lease-s", "5", "--send-timeout-s", "5"), "shorter"),
        (
            ("--db", "sqlite://", "--sender", SENDER, "--backoff-min-s", "9", "--backoff-max-s", "1"),
            "backoff",
        ),
        (("--db", "sqlite://", "--sender", SENDER, "--relay-id", "r" * 256), "--relay-id"),
        (("--db", "sqlite://", "--sender", "no_colon"), "MODULE:FACTORY"),
        (("--db", "sqlite://", "--sender", "no_such_module_xyz:factory"), "no_such_module_xyz"),
        (("--db", "nonsense://x", "--sender", SENDER), "--db"),
        (("--db", "sqlite://", "--sender", SENDER), "does not exist"),
    ],
)
def test_relay_refuses_bad_arguments_with_exit_code_2(arguments: tuple[str, ...], complaint: str) -> None:
    result = homing("outbox", "relay", *arguments)
    assert result.exit_code == 2, result.output
    assert complaint in result.output


def test_relay_reports_an_unreachable_database_with_exit_code_1() -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/test"
    result = homing("outbox", "relay", "--db", url, "--sender", SENDER, "--create-table", "--once")
    assert result.exit_code == 1, result.output
    assert "cannot reach the database" in result.output


def test_relay_once_delivers_every_committed_row(
    sqlite_outbox: tuple[str, Outbox, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, outbox, ids = sqlite_outbox
    log_path = tmp_path / "sent.jsonl"
    monkeypatch.setenv("HOMING_TEST_SENT_LOG", str(log_path))
    result = homing(
        "outbox", "relay", "--db", url, "--sender", SENDER, "--endpoint", "127.0.0.1:8081", "--once"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1]) == {"claimed": 3, "sent": 3, "failed": 0}
    assert sorted(record["message_id"] for record in sent_log(log_path)) == sorted(ids)
    assert {record["endpoint"] for record in sent_log(log_path)} == {"127.0.0.1:8081"}
    engine = create_engine(url)
    with engine.connect() as connection:
        sent_at = connection.execute(select(outbox.table.c.sent_at_ms)).scalars().all()
    engine.dispose()
    assert len(sent_at) == 3 and None not in sent_at
    again = homing("outbox", "relay", "--db", url, "--sender", SENDER, "--once")
    assert json.loads(again.stdout.splitlines()[-1]) == {"claimed": 0, "sent": 0, "failed": 0}
    assert len(sent_log(log_path)) == 3


def test_relay_once_keeps_failed_rows_for_later(
    sqlite_outbox: tuple[str, Outbox, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, _ = sqlite_outbox
    monkeypatch.setenv("HOMING_TEST_SENT_LOG", str(tmp_path / "sent.jsonl"))
    monkeypatch.setenv("HOMING_TEST_FAIL_SENDS", "1")
    result = homing("outbox", "relay", "--db", url, "--sender", SENDER, "--once")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1]) == {"claimed": 3, "sent": 0, "failed": 3}
    status = homing("outbox", "status", "--db", url)
    assert json.loads(status.stdout)["undelivered"] == 3
    assert json.loads(status.stdout)["most_attempts"] == 1


def test_relay_creates_the_table_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMING_TEST_SENT_LOG", str(tmp_path / "sent.jsonl"))
    url = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    result = homing("outbox", "relay", "--db", url, "--sender", SENDER, "--create-table", "--once")
    assert result.exit_code == 0, result.output
    assert json.loads(homing("outbox", "status", "--db", url).stdout)["undelivered"] == 0


class FakeMessage:
    """Stands in for homing.client.Message: keeps what it was made with."""

    def __init__(self, topic: str, body: bytes, **fields: Any) -> None:
        self.topic = topic
        self.body = body
        self.fields = fields


class FakeProducer:
    """Stands in for homing.client.AsyncProducer, with its documented interface (docs/CLIENT.md)."""

    instances: ClassVar[list[FakeProducer]] = []

    def __init__(self, endpoints: str) -> None:
        self.endpoints = endpoints
        self.sent: list[FakeMessage] = []
        self.open = False
        FakeProducer.instances.append(self)

    async def __aenter__(self) -> FakeProducer:
        self.open = True
        return self

    async def __aexit__(self, *exception: object) -> None:
        self.open = False

    async def send(self, message: FakeMessage) -> str:
        assert self.open
        self.sent.append(message)
        return str(message.fields["message_id"])


def test_endpoint_sends_through_the_homing_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'app.sqlite'}"
    engine = create_engine(url)
    outbox = Outbox()
    outbox.create_table(engine)
    future_ms = time.time_ns() // 1_000_000 + 3_600_000
    with Session(engine) as session, session.begin():
        fifo_id = outbox.add(
            session, "orders", b"body", tag="t", keys=["k"], properties={"p": "v"}, message_group="g"
        )
        delayed_id = outbox.add(session, "orders", b"later", deliver_at_ms=future_ms)
        overdue_id = outbox.add(session, "orders", b"overdue", deliver_at_ms=1_000)
    engine.dispose()
    client = types.ModuleType("homing.client")
    client.AsyncProducer = FakeProducer  # type: ignore[attr-defined]
    client.Message = FakeMessage  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "homing.client", client)
    FakeProducer.instances.clear()
    result = homing("outbox", "relay", "--db", url, "--endpoint", "127.0.0.1:8081", "--once")
    assert result.exit_code == 0, result.output
    [producer] = FakeProducer.instances
    assert producer.endpoints == "127.0.0.1:8081" and not producer.open
    sent = {message.fields["message_id"]: message for message in producer.sent}
    assert sent[fifo_id].topic == "orders" and sent[fifo_id].body == b"body"
    assert sent[fifo_id].fields == {
        "tag": "t",
        "keys": ["k"],
        "properties": {"p": "v"},
        "message_group": "g",
        "deliver_at": None,
        "message_id": fifo_id,
    }
    assert sent[delayed_id].fields["deliver_at"] == future_ms / 1000  # epoch seconds
    assert sent[overdue_id].fields["deliver_at"] is None  # past its time: due now


def test_endpoint_without_the_client_is_a_usage_error(
    sqlite_outbox: tuple[str, Outbox, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, _ = sqlite_outbox
    monkeypatch.setitem(sys.modules, "homing.client", None)  # import fails as if it were absent
    result = homing("outbox", "relay", "--db", url, "--endpoint", "127.0.0.1:8081", "--once")
    assert result.exit_code == 2, result.output
    assert "asyncio client is not built yet" in result.output


@pytest.mark.parametrize(
    ("dialect", "body_type"),
    [("postgresql", "BYTEA"), ("mysql", "LONGBLOB"), ("mariadb", "LONGBLOB"), ("sqlite", "BLOB")],
)
def test_ddl_prints_the_table_for_each_database(dialect: str, body_type: str) -> None:
    result = homing("outbox", "ddl", "--dialect", dialect, "--table", "my_outbox")
    assert result.exit_code == 0, result.output
    assert "CREATE TABLE my_outbox" in result.output
    assert body_type in result.output
    assert "CREATE INDEX ix_my_outbox_due" in result.output


def test_relay_runs_until_sigterm_in_a_real_process(
    sqlite_outbox: tuple[str, Outbox, list[str]], tmp_path: Path
) -> None:
    url, _, ids = sqlite_outbox
    log_path = tmp_path / "sent.jsonl"
    environment = {name: value for name, value in os.environ.items() if not name.startswith("HOMING_")}
    environment["HOMING_TEST_SENT_LOG"] = str(log_path)
    environment["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])  # tests/, for the sender
    arguments = ["outbox", "relay", "--db", url, "--sender", SENDER, "--poll-interval-s", "0.05"]
    with subprocess.Popen(
        [str(HOMING_SCRIPT), *arguments], env=environment, stderr=subprocess.PIPE, text=True
    ) as relay:
        deadline = time.monotonic() + 60
        while len(sent_log(log_path)) < len(ids):
            assert relay.poll() is None, relay.stderr.read() if relay.stderr else ""
            assert time.monotonic() < deadline, "the relay did not deliver the rows"
            time.sleep(0.05)
        relay.send_signal(signal.SIGTERM)
        _, errors = relay.communicate(timeout=30)
    assert relay.returncode == 0, errors
    assert "outbox relay" in errors and "started" in errors
    assert sorted(record["message_id"] for record in sent_log(log_path)) == sorted(ids)
