"""Delayed and transactional messages through the official RocketMQ 5 clients (Python and Node).

Everything runs against a real ``homing broker`` process; the clients run unchanged in their own
processes (``official_drivers``), with HOME in a temporary folder. One broker serves every test but
the crash test, with quick transaction check-backs: a transaction is checked 1 s after it was
prepared and again every second, and parked after 2 checks without an answer.

Receive times are taken in this process as each event line arrives from a consumer (``seen_ms``):
a line is read a few milliseconds after the client got the message, never before, so
"``seen_ms`` >= the delivery time" would only miss an early delivery by that pipe's latency.
The Python client sends delivery timestamps in whole seconds (its driver rounds them up), so its
messages are due at the next whole second.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from official_drivers import CLIENTS, DriverProcess, DriverRun, Event, driver_commands, run_driver

from homing.testing import BrokerProcess

pytestmark = pytest.mark.timeout(300)

T = TypeVar("T")

COMMON_OPTIONS: dict[str, object] = {
    "long_polling_timeout_s": 3.0,
    "retry_backoff": (1.0,),
    "segment_size_bytes": 8 * 1024 * 1024,
    "transaction_timeout_s": 1.0,  # TRANSACTION_TIMEOUT_S
    "transaction_check_interval_s": 1.0,
}
TRANSACTION_TIMEOUT_S = 1.0
MAX_CHECKS = 2
DELAY_MS = 4000  # ahead of "now" when a test starts: room for a consumer, a producer and a recall
QUIET_S = 4  # how long a consumer keeps polling to show that something does not (or no longer) arrive


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    driver_commands()  # install the clients before the clock starts
    data_dir = tmp_path_factory.mktemp("delay-transactions") / "data"
    process = BrokerProcess(data_dir, options={**COMMON_OPTIONS, "transaction_max_checks": MAX_CHECKS})
    with process:
        yield process
        assert process.stop() == 0, process.log_text()[-3000:]


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


# ------------------------------------------------------------------------------------------ helpers


class StampedDriver(DriverProcess):
    """A background driver whose events carry ``seen_ms``: the wall time this process read them."""

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            seen_ms = time.time() * 1000
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "unparsed", "line": line.strip()}
            if isinstance(event, dict):
                event["seen_ms"] = seen_ms
                self._lines.put(event)
        self._lines.put(None)


def now_ms() -> int:
    return int(time.time() * 1000)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def due_at(client: str, delivery_timestamp_ms: int) -> int:
    """When a message sent with this delivery timestamp is due: Python sends whole seconds, rounded up."""
    if client == "python":
        return math.ceil(delivery_timestamp_ms / 1000) * 1000
    return delivery_timestamp_ms


def poll(condition: Callable[[], T | None], what: str, timeout_s: float = 30.0) -> T:
    """Ask ``condition`` every 0.2 s until it returns something; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s:g} s: {what}")
        time.sleep(0.2)


def unresolved(broker: BrokerProcess) -> dict[str, dict[str, Any]]:
    """The broker's unresolved transactions, by id (admin API)."""
    with urllib.request.urlopen(f"{broker.admin_url}/v1/transactions", timeout=10) as response:
        listed = json.loads(response.read())
    return {item["transaction_id"]: item for item in listed["transactions"]}


def homing_admin(broker: BrokerProcess, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "homing", "admin", "--server", broker.admin_url, *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def sent(run: DriverRun) -> list[Event]:
    events = run.of("sent")
    assert events and all(event["ok"] for event in events), run.describe()
    return events


def received_ids(run: DriverRun) -> list[str]:
    return [event["message_id"] for event in run.of("received")]


def consume(client: str, broker: BrokerProcess, home: Path, topic: str, **arguments: object) -> DriverRun:
    """A simple consumer of a new group that acks everything; ``duration_s`` bounds it."""
    return run_driver(
        client,
        "simple-consume",
        {
            "endpoint": broker.endpoint,
            "topic": topic,
            "group": unique("reader"),
            "await_duration_s": 1,
            "max_messages": 32,
            **arguments,
        },
        home,
    ).check()


def start_transaction_producer(
    client: str,
    broker: BrokerProcess,
    home: Path,
    topic: str,
    messages: list[dict[str, object]],
    check_answer: str,
) -> StampedDriver:
    """A producer that leaves its transactions open and stays up (60 s at most) to answer checks."""
    producer = StampedDriver.start(
        client,
        "produce-transaction",
        {
            "endpoint": broker.endpoint,
            "topic": topic,
            "messages": messages,
            "decision": "none",
            "check_answer": check_answer,
            "duration_s": 60,
        },
        home,
    )
    assert isinstance(producer, StampedDriver)
    return producer


def events_of(driver: DriverProcess, kind: str) -> list[Event]:
    return [event for event in driver.events if event.get("event") == kind]


# ------------------------------------------------------------------------------------------ delays


def test_delayed_message_arrives_at_its_time_exactly_once_and_a_recalled_one_never(
    client: str, broker: BrokerProcess, home: Path
) -> None:
    topic = unique("delay")
    delivery_ms = now_ms() + DELAY_MS
    due_ms = due_at(client, delivery_ms)
    # The consumer polls from before the messages are sent until QUIET_S after they are due.
    consumer = StampedDriver.start(
        client,
        "simple-consume",
        {
            "endpoint": broker.endpoint,
            "topic": topic,
            "group": unique("delay-reader"),
            "await_duration_s": 1,
            "duration_s": (due_ms - now_ms()) / 1000 + QUIET_S,
        },
        home,
    )
    try:
        consumer.wait_for("started", timeout_s=30)
        produced = run_driver(
            client,
            "produce",
            {
                "endpoint": broker.endpoint,
                "topic": topic,
                "messages": [
                    {"body": "kept", "delivery_timestamp_ms": delivery_ms},
                    {"body": "recalled", "delivery_timestamp_ms": delivery_ms},
                ],
            },
            home,
        ).check()
        kept, to_recall = sent(produced)
        assert kept["recall_handle"] and to_recall["recall_handle"], produced.describe()
        recalled = run_driver(
            client,
            "recall",
            {"endpoint": broker.endpoint, "topic": topic, "recall_handle": to_recall["recall_handle"]},
            home,
        ).check()
        assert [(event["ok"], event["message_id"]) for event in recalled.of("recalled")] == [
            (True, to_recall["message_id"])
        ], recalled.describe()
        run = consumer.finish(timeout_s=60).check()
    finally:
        consumer.kill()

    received = run.of("received")
    assert [event["message_id"] for event in received] == [kept["message_id"]], run.describe()
    [message] = received
    assert message["body"] == "kept"
    assert message["delivery_timestamp_ms"] == due_ms
    assert message["delivery_attempt"] == 1
    assert message["seen_ms"] >= due_ms, f"received {due_ms - message['seen_ms']:.0f} ms before it was due"
    assert [event["ok"] for event in run.of("acked")] == [True], run.describe()
    # The consumer kept polling for QUIET_S after the due time: no second copy, no recalled message.
    assert run.done()["receive_calls"] >= 2


# ------------------------------------------------------------------------------------------ transactions


def test_committed_transaction_is_delivered_once_and_a_rolled_back_one_never(
    client: str, broker: BrokerProcess, home: Path
) -> None:
    topic = unique("transaction")
    produced = run_driver(
        client,
        "produce-transaction",
        {
            "endpoint": broker.endpoint,
            "topic": topic,
            "messages": [
                {"body": "committed", "decision": "commit"},
                {"body": "rolled back", "decision": "rollback"},
            ],
            # A check-back racing a slow EndTransaction must not decide in the producer's place.
            "check_answer": "unknown",
        },
        home,
    ).check()
    committed, rolled_back = sent(produced)
    assert committed["transaction_id"] and rolled_back["transaction_id"], produced.describe()
    ends = [
        (event["message_id"], event["resolution"], event["ok"]) for event in produced.of("end_transaction")
    ]
    assert ends == [
        (committed["message_id"], "commit", True),
        (rolled_back["message_id"], "rollback", True),
    ], produced.describe()
    assert committed["transaction_id"] not in unresolved(broker)
    assert rolled_back["transaction_id"] not in unresolved(broker)

    run = consume(client, broker, home, topic, duration_s=QUIET_S)
    assert received_ids(run) == [committed["message_id"]], run.describe()
    assert run.of("received")[0]["body"] == "committed"


@pytest.mark.parametrize("answer", ["commit", "rollback"])
def test_unended_transaction_is_resolved_by_the_producers_checker(
    client: str, broker: BrokerProcess, home: Path, answer: str
) -> None:
    topic = unique(f"checked-{answer}")
    producer = start_transaction_producer(client, broker, home, topic, [{"body": answer}], answer)
    try:
        [message] = [event for event in producer.wait_for("sent", timeout_s=30) if event["event"] == "sent"]
        assert message["ok"] and message["transaction_id"], producer.finish().describe()
        transaction_id = message["transaction_id"]
        producer.wait_for("checked", timeout_s=30)
        # The checker's answer goes back in an EndTransaction: the broker forgets the transaction.
        poll(
            lambda: True if transaction_id not in unresolved(broker) else None,
            f"transaction {transaction_id} resolved by the checker's {answer}",
        )
    finally:
        producer.kill()
    run = producer.finish()
    [check] = run.of("checked")
    assert (check["message_id"], check["answer"], check["body"]) == (message["message_id"], answer, answer)
    # Not checked before transaction_timeout_s (born before it was prepared; Python: whole seconds).
    assert check["seen_ms"] - check["born_timestamp_ms"] >= 1000 * TRANSACTION_TIMEOUT_S

    delivered = consume(client, broker, home, topic, duration_s=QUIET_S)
    expected = [message["message_id"]] if answer == "commit" else []
    assert received_ids(delivered) == expected, delivered.describe()


def test_transaction_out_of_checks_is_parked_and_an_operator_commits_it(
    client: str, broker: BrokerProcess, home: Path
) -> None:
    topic = unique("parked")
    producer = start_transaction_producer(client, broker, home, topic, [{"body": "parked"}], "unknown")
    try:
        [message] = [event for event in producer.wait_for("sent", timeout_s=30) if event["event"] == "sent"]
        assert message["ok"] and message["transaction_id"], producer.finish().describe()
        transaction_id: str = message["transaction_id"]
        parked = poll(
            lambda: (
                entry
                if (entry := unresolved(broker).get(transaction_id)) is not None and entry["parked"]
                else None
            ),
            f"transaction {transaction_id} parked",
        )
        # Both checks reached the producer (a check counts only when a producer got it).
        producer.wait_for("checked", count=MAX_CHECKS, timeout_s=10)
    finally:
        producer.kill()
    run = producer.finish()
    assert [event["message_id"] for event in run.of("checked")] == [message["message_id"]] * MAX_CHECKS
    assert (parked["topic"], parked["message_id"], parked["checks"]) == (
        topic,
        message["message_id"],
        MAX_CHECKS,
    )

    # Parked is not dropped: nothing was delivered, and the CLI lists it.
    assert received_ids(consume(client, broker, home, topic, duration_s=2)) == []
    listing = homing_admin(broker, "--json", "transaction", "list")
    assert listing.returncode == 0, listing.stderr
    [listed] = [
        item
        for item in json.loads(listing.stdout)["transactions"]
        if item["transaction_id"] == transaction_id
    ]
    assert (listed["parked"], listed["checks"]) == (True, MAX_CHECKS)

    committed = homing_admin(broker, "transaction", "commit", transaction_id)
    assert committed.returncode == 0, committed.stdout + committed.stderr
    assert committed.stdout.strip() == f"committed {transaction_id}"
    assert transaction_id not in unresolved(broker)

    delivered = consume(client, broker, home, topic, duration_s=QUIET_S)
    assert received_ids(delivered) == [message["message_id"]], delivered.describe()
    assert delivered.of("received")[0]["body"] == "parked"


# ------------------------------------------------------------------------------------------ crash


def test_kill_9_loses_no_pending_delayed_message_and_no_transaction(tmp_path: Path) -> None:
    """SIGKILL while delayed messages wait and while transactions are being checked back.

    Before the kill: a delayed message from each client (due ~10 s later), a transaction committed
    by its producer (Node), a transaction whose check reached a Python producer that answers
    "unknown", and one whose check reached a Node producer answering "commit" (the kill races that
    producer's EndTransaction). After the restart a Python producer answers every check with commit.
    """
    driver_commands()
    home = tmp_path / "home"
    broker = BrokerProcess(tmp_path / "data", options=COMMON_OPTIONS)  # the default 15 checks
    delay_topic, transaction_topic = unique("crash-delay"), unique("crash-transaction")
    with broker:
        delivery_ms = now_ms() + 10_000
        delayed: dict[str, int] = {}  # message id -> when it is due
        for client in CLIENTS:
            produced = run_driver(
                client,
                "produce",
                {
                    "endpoint": broker.endpoint,
                    "topic": delay_topic,
                    "messages": [{"body": f"delayed by {client}", "delivery_timestamp_ms": delivery_ms}],
                },
                home,
            ).check()
            [message] = sent(produced)
            delayed[message["message_id"]] = due_at(client, delivery_ms)

        committed_run = run_driver(
            "node",
            "produce-transaction",
            {
                "endpoint": broker.endpoint,
                "topic": transaction_topic,
                "messages": [{"body": "committed before the crash"}],
                "check_answer": "unknown",
            },
            home,
        ).check()
        [committed] = sent(committed_run)
        assert [event["ok"] for event in committed_run.of("end_transaction")] == [True]

        unanswered = start_transaction_producer(
            "python", broker, home, transaction_topic, [{"body": "checked, no answer"}], "unknown"
        )
        answering = None
        try:
            unanswered.wait_for("checked", timeout_s=30)
            answering = start_transaction_producer(
                "node", broker, home, transaction_topic, [{"body": "checked, commit racing"}], "commit"
            )
            answering.wait_for("checked", timeout_s=30)
            broker.kill()  # the moment the Node checker answers
            killed_at_ms = now_ms()
        finally:
            unanswered.kill()
            if answering is not None:
                answering.kill()
        transaction_ids = {
            event["message_id"]: event["transaction_id"]
            for driver in (unanswered, answering)
            if driver is not None
            for event in driver.finish().of("sent")
        }
        assert len(transaction_ids) == 2 and all(transaction_ids.values())
        assert killed_at_ms < min(delayed.values()), "the machine was too slow: delayed messages were due"

        broker.start()
        # A fresh producer of the topic answers the checks of whatever is still unresolved.
        checker = start_transaction_producer("python", broker, home, transaction_topic, [], "commit")
        delay_reader = StampedDriver.start(
            "node",
            "simple-consume",
            {
                "endpoint": broker.endpoint,
                "topic": delay_topic,
                "group": unique("delay-reader"),
                "await_duration_s": 1,
                "duration_s": (max(delayed.values()) - now_ms()) / 1000 + QUIET_S,
            },
            home,
        )
        try:
            poll(
                lambda: True if not set(transaction_ids.values()) & set(unresolved(broker)) else None,
                "the transactions open at the crash resolved by check-backs after the restart",
            )
            delay_run = delay_reader.finish(timeout_s=60).check()
        finally:
            checker.kill()
            delay_reader.kill()
        checker.finish()

        received = delay_run.of("received")
        assert sorted(event["message_id"] for event in received) == sorted(delayed), delay_run.describe()
        for event in received:
            assert event["seen_ms"] >= delayed[event["message_id"]], event

        transaction_run = consume("python", broker, home, transaction_topic, duration_s=QUIET_S + 2)
        copies = Counter(received_ids(transaction_run))
        assert set(copies) == {committed["message_id"], *transaction_ids}, transaction_run.describe()
        # Only the transaction whose commit raced the kill may be published twice (same message id).
        racing = next(iter(events_of(answering, "sent")))["message_id"] if answering is not None else None
        assert all(count == 1 for message_id, count in copies.items() if message_id != racing), copies
        assert broker.stop() == 0, broker.log_text()[-3000:]
