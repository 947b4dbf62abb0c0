"""The official RocketMQ 5 clients (Python and Node, unchanged) against a real ``homing broker``.

One broker process serves the whole module; each test uses its own topics and groups. The broker
runs with short long polls (3 s: the Node push consumer's shutdown waits for its open polls) and a
1 s retry backoff, so that redeliveries come quickly. Groups that need more than the defaults (FIFO,
few delivery attempts) are written into the data directory before the broker starts.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from official_drivers import CLIENTS, DriverProcess, Event, driver_commands, run_driver

from homing.broker.metadata import GroupConfig
from homing.testing import BrokerProcess, seed_metadata

pytestmark = pytest.mark.timeout(300)

RUN = uuid.uuid4().hex[:8]
FIFO_GROUP = {client: f"fifo-{client}-{RUN}" for client in CLIENTS}
POISON_GROUP = {client: f"poison-{client}-{RUN}" for client in CLIENTS}
FIFO_POISON_GROUP = {client: f"fifo-poison-{client}-{RUN}" for client in CLIENTS}
POISON_ATTEMPTS = 2


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    driver_commands()  # install the clients before the clock starts
    data_dir = tmp_path_factory.mktemp("official") / "data"
    seed_metadata(
        data_dir,
        groups=[GroupConfig(name=name, fifo=True, backoff_s=(1.0,)) for name in FIFO_GROUP.values()]
        + [
            GroupConfig(name=name, max_delivery_attempts=POISON_ATTEMPTS, backoff_s=(1.0,))
            for name in POISON_GROUP.values()
        ]
        + [
            GroupConfig(name=name, fifo=True, max_delivery_attempts=POISON_ATTEMPTS, backoff_s=(1.0,))
            for name in FIFO_POISON_GROUP.values()
        ],
    )
    process = BrokerProcess(
        data_dir,
        options={
            "long_polling_timeout_s": 3.0,
            "retry_backoff": (1.0,),
            "segment_size_bytes": 8 * 1024 * 1024,
        },
    )
    with process:
        yield process
        assert process.stop() == 0, process.log_text()[-3000:]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def sent_ids(events: list[Event]) -> list[str]:
    return [event["message_id"] for event in events if event.get("event") == "sent" and event["ok"]]


def produce(
    client: str, broker: BrokerProcess, home: Path, topic: str, messages: list[dict[str, object]]
) -> list[str]:
    run = run_driver(
        client, "produce", {"endpoint": broker.endpoint, "topic": topic, "messages": messages}, home
    )
    run.check()
    ids = sent_ids(run.events)
    assert len(ids) == len(messages), run.describe()
    return ids


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_normal_messages_are_received_with_their_properties_and_acked(
    client: str, broker: BrokerProcess, home: Path
) -> None:
    topic, group = unique("normal"), unique("simple")
    messages: list[dict[str, object]] = [
        {
            "body": f"message {index}",
            "tag": "created",
            "keys": [f"key-{index}", "shared"],
            "properties": {"n": str(index)},
        }
        for index in range(5)
    ]
    ids = produce(client, broker, home, topic, messages)

    consume = {"endpoint": broker.endpoint, "topic": topic, "group": group, "await_duration_s": 2}
    run = run_driver(
        client, "simple-consume", {**consume, "stop_after_acks": 5, "duration_s": 20}, home
    ).check()

    received = {event["message_id"]: event for event in run.of("received")}
    assert sorted(received) == sorted(ids), run.describe()
    for message_id, spec in zip(ids, messages, strict=True):
        event = received[message_id]
        assert event["body"] == spec["body"]
        assert event["tag"] == "created"
        assert event["keys"] == sorted(spec["keys"])  # type: ignore[call-overload]
        assert event["properties"] == spec["properties"]
        assert event["delivery_attempt"] == 1
        assert event["corrupted"] is False
        assert event["born_timestamp_ms"] is not None
    assert all(event["ok"] for event in run.of("acked")), run.describe()

    # Acknowledged means done: the group gets nothing more, from either client.
    again = run_driver(
        client, "simple-consume", {**consume, "await_duration_s": 1, "duration_s": 2}, home
    ).check()
    assert again.of("received") == [], again.describe()


def test_fifo_messages_arrive_in_order_per_message_group(
    client: str, broker: BrokerProcess, home: Path
) -> None:
    topic = unique("fifo")
    messages: list[dict[str, object]] = [
        {"body": f"{group}-{index}", "message_group": group}
        for index in range(8)
        for group in ("alpha", "beta")
    ]
    produce(client, broker, home, topic, messages)

    run = run_driver(
        client,
        "simple-consume",
        {
            "endpoint": broker.endpoint,
            "topic": topic,
            "group": FIFO_GROUP[client],
            "max_messages": 32,
            "await_duration_s": 2,
            "stop_after_acks": len(messages),
            "duration_s": 30,
        },
        home,
    ).check()
    bodies = [event["body"] for event in run.of("received")]
    assert sorted(bodies) == sorted(str(spec["body"]) for spec in messages), run.describe()
    for group in ("alpha", "beta"):
        assert [body for body in bodies if body.startswith(group)] == [
            f"{group}-{index}" for index in range(8)
        ]
    assert {event["message_group"] for event in run.of("received")} == {"alpha", "beta"}


def test_simple_consumer_change_invisible_duration_redelivers_as_attempt_2(
    client: str, broker: BrokerProcess, home: Path
) -> None:
    topic = unique("invisible")
    [message_id] = produce(client, broker, home, topic, [{"body": "later"}])

    run = run_driver(
        client,
        "simple-consume",
        {
            "endpoint": broker.endpoint,
            "topic": topic,
            "group": unique("simple"),
            "action": "change-invisible",
            "change_invisible_s": 1,
            "await_duration_s": 2,
            "stop_after_acks": 1,
            "duration_s": 20,
        },
        home,
    ).check()
    attempts = [(event["message_id"], event["delivery_attempt"]) for event in run.of("received")]
    assert attempts == [(message_id, 1), (message_id, 2)], run.describe()
    assert [event["ok"] for event in run.of("invisible_changed")] == [True]
    assert [(event["delivery_attempt"], event["ok"]) for event in run.of("acked")] == [(2, True)]


def test_push_consumer_consumes_everything(client: str, broker: BrokerProcess, home: Path) -> None:
    topic = unique("push")
    ids = produce(client, broker, home, topic, [{"body": f"push {index}"} for index in range(6)])

    run = run_driver(
        client,
        "push-consume",
        {
            "endpoint": broker.endpoint,
            "topic": topic,
            "group": unique("push"),
            "stop_after_successes": len(ids),
            "duration_s": 30,
        },
        home,
    ).check()
    consumed = [
        (event["message_id"], event["result"], event["delivery_attempt"]) for event in run.of("consumed")
    ]
    assert sorted(consumed) == sorted((message_id, "SUCCESS", 1) for message_id in ids), run.describe()


def test_push_consumer_failure_is_retried_as_attempt_2(
    client: str, broker: BrokerProcess, home: Path
) -> None:
    topic = unique("retry")
    ids = produce(client, broker, home, topic, [{"body": "flaky 1"}, {"body": "flaky 2"}])

    run = run_driver(
        client,
        "push-consume",
        {
            "endpoint": broker.endpoint,
            "topic": topic,
            "group": unique("push"),
            "behaviour": "fail-first-n",
            "fail_first_n": 1,
            "stop_after_successes": len(ids),
            "duration_s": 30,
        },
        home,
    ).check()
    for message_id in ids:
        history = [
            (event["delivery_attempt"], event["result"])
            for event in run.of("consumed")
            if event["message_id"] == message_id
        ]
        assert history == [(1, "FAILURE"), (2, "SUCCESS")], run.describe()


@pytest.mark.parametrize("fifo", [False, True], ids=["broker-moves-it", "fifo-client-forwards-it"])
def test_poison_message_ends_in_the_dead_letter_topic(
    client: str, broker: BrokerProcess, home: Path, fifo: bool
) -> None:
    """After the group's last attempt the message is in %DLQ%<group>: moved by the broker (the
    consumer nacked it), or forwarded by a FIFO push consumer (ForwardMessageToDeadLetterQueue)."""
    topic = unique("poison")
    group = (FIFO_POISON_GROUP if fifo else POISON_GROUP)[client]
    spec: dict[str, object] = {"body": "poison", "tag": "bad", "properties": {"p": "1"}}
    if fifo:
        spec["message_group"] = "poisoned"
    [message_id] = produce(client, broker, home, topic, [spec])

    pushing = DriverProcess.start(
        client,
        "push-consume",
        {
            "endpoint": broker.endpoint,
            "topic": topic,
            "group": group,
            "behaviour": "fail-always",
            "duration_s": 60,
        },
        home,
    )
    try:
        pushing.wait_for("consumed", count=POISON_ATTEMPTS, timeout_s=60)
        dead = run_driver(
            client,
            "simple-consume",
            {
                "endpoint": broker.endpoint,
                "topic": f"%DLQ%{group}",
                "group": unique("dlq-reader"),
                "await_duration_s": 3,
                "stop_after_acks": 1,
                "duration_s": 30,
            },
            home,
        ).check()
    finally:
        pushing.kill()
    push_run = pushing.finish()
    consumed = [event for event in push_run.of("consumed") if event["message_id"] == message_id]
    # FIFO retries are the client's own (the Python client does not count them in delivery_attempt).
    attempts = [event["invocation" if fifo else "delivery_attempt"] for event in consumed]
    assert attempts == list(range(1, POISON_ATTEMPTS + 1)), push_run.describe()
    [dead_letter] = dead.of("received")
    assert dead_letter["message_id"] == message_id, dead.describe()
    assert (dead_letter["body"], dead_letter["tag"], dead_letter["properties"]) == (
        "poison",
        "bad",
        {"p": "1"},
    )


@pytest.mark.parametrize(
    ("kind", "expression"),
    [("tag", "red || green"), ("sql", "region = 'eu' AND (TAGS IS NULL OR TAGS <> 'blue')")],
)
def test_filters_deliver_only_matching_messages(
    client: str, broker: BrokerProcess, home: Path, kind: str, expression: str
) -> None:
    topic = unique("filter")
    messages: list[dict[str, object]] = [
        {"body": "red-eu", "tag": "red", "properties": {"region": "eu"}},
        {"body": "blue-eu", "tag": "blue", "properties": {"region": "eu"}},
        {"body": "green-us", "tag": "green", "properties": {"region": "us"}},
        {"body": "green-eu", "tag": "green", "properties": {"region": "eu"}},
        {"body": "untagged-us", "properties": {"region": "us"}},
    ]
    produce(client, broker, home, topic, messages)
    wanted = {"tag": ["red-eu", "green-us", "green-eu"], "sql": ["red-eu", "green-eu"]}[kind]

    run = run_driver(
        client,
        "simple-consume",
        {
            "endpoint": broker.endpoint,
            "topic": topic,
            "group": unique("filtered"),
            "filter": {"type": kind, "expression": expression},
            "max_messages": 32,
            "await_duration_s": 2,
            # One receive returns every matching message (32 > 5): a wrong one would be among them.
            "stop_after_acks": len(wanted),
            "duration_s": 20,
        },
        home,
    ).check()
    assert sorted(event["body"] for event in run.of("received")) == sorted(wanted), run.describe()


def test_the_other_client_reads_what_one_client_wrote(broker: BrokerProcess, tmp_path: Path) -> None:
    topic = unique("cross")
    python_ids = produce("python", broker, tmp_path / "python", topic, [{"body": "from python", "tag": "py"}])
    node_ids = produce("node", broker, tmp_path / "node", topic, [{"body": "from node", "tag": "js"}])
    for client in CLIENTS:
        run = run_driver(
            client,
            "simple-consume",
            {
                "endpoint": broker.endpoint,
                "topic": topic,
                "group": unique(f"cross-{client}"),
                "await_duration_s": 2,
                "stop_after_acks": 2,
                "duration_s": 20,
            },
            tmp_path / client,
        ).check()
        assert sorted(event["message_id"] for event in run.of("received")) == sorted(python_ids + node_ids)


def test_fifo_push_consumer_consumes_in_order(client: str, broker: BrokerProcess, home: Path) -> None:
    topic = unique("fifo-push")
    messages: list[dict[str, object]] = [
        {"body": f"{group}-{index}", "message_group": group}
        for index in range(6)
        for group in ("alpha", "beta")
    ]
    produce(client, broker, home, topic, messages)

    run = run_driver(
        client,
        "push-consume",
        {
            "endpoint": broker.endpoint,
            "topic": topic,
            "group": FIFO_GROUP[client],
            "stop_after_successes": len(messages),
            "duration_s": 30,
        },
        home,
    ).check()
    bodies = [event["body"] for event in run.of("received")]
    assert sorted(bodies) == sorted(str(spec["body"]) for spec in messages), run.describe()
    for group in ("alpha", "beta"):
        assert [body for body in bodies if body.startswith(group)] == [
            f"{group}-{index}" for index in range(6)
        ]
