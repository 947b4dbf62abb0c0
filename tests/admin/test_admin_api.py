"""The admin HTTP API and the ``homing admin`` command against a live broker (real HTTP, loopback)."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from homing.broker.admin import Admin
from homing.broker.metadata import GroupConfig
from homing.cli import main
from homing.server.admin_http import AdminHttpServer
from homing.testing.in_process import EVERYTHING, BrokerHarness


class LiveBroker:
    """A broker and its admin server on their own event loop thread, so blocking clients can call."""

    def __init__(self, credentials: dict[str, str] | None = None) -> None:
        self.harness = BrokerHarness()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: AdminHttpServer | None = None
        self.credentials = credentials

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def start(self) -> None:
        async def start() -> None:
            broker = await self.harness.start()
            self.server = AdminHttpServer(Admin(broker), "127.0.0.1", 0, self.credentials)
            await self.server.start()

        self.run(start())

    def stop(self) -> None:
        async def stop() -> None:
            assert self.server is not None
            await self.server.stop()
            await self.harness.stop()

        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture
def live() -> Iterator[LiveBroker]:
    broker = LiveBroker()
    broker.start()
    yield broker
    broker.stop()


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _cli(live: LiveBroker, *args: str) -> Any:
    result = CliRunner().invoke(main, ["admin", "--server", live.url, "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_topics_groups_messages_and_dead_letters(live: LiveBroker) -> None:
    harness = live.harness
    assert harness.broker is not None
    broker = harness.broker
    created = _cli(live, "topic", "create", "payments", "--queues", "2", "--types", "normal,fifo")
    assert created["queue_count"] == 2 and created["message_types"] == ["NORMAL", "FIFO"]
    _cli(live, "group", "create", "billing", "--max-attempts", "1", "--backoff", "1 2")
    message = harness.message(topic="payments", keys=("invoice-7",))
    live.run(harness.send(message))
    assert harness.store is not None
    harness.store.dispatch_now()
    topics = {item["name"]: item for item in _cli(live, "topic", "list")}
    assert topics["payments"]["messages"] == 1
    found = _cli(live, "message", "get", message.message_id)
    assert [item["message_id"] for item in found] == [message.message_id]
    assert _cli(live, "message", "find", "invoice-7")[0]["keys"] == ["invoice-7"]
    # One delivery with max attempts 1, then expiry: the message goes to %DLQ%billing.
    deliveries = live.run(harness.receive(group="billing", topic="payments", invisible_s=1))
    assert len(deliveries) == 1
    described = _cli(live, "group", "describe", "billing")
    assert described["in_flight"] == 1 and described["max_delivery_attempts"] == 1
    harness.clock.advance(2)
    assert live.run(harness.receive(group="billing", topic="payments")) == []
    harness.store.dispatch_now()
    dead = _cli(live, "dlq", "list", "billing")
    assert [(item["message_id"], item["origin_topic"], item["attempts"]) for item in dead] == [
        (message.message_id, "payments", 1)
    ]
    described = _cli(live, "group", "describe", "billing")
    assert described["in_flight"] == 0 and described["lag"] == 0, described["queues"]
    resent = _cli(live, "dlq", "resend", "billing", message.message_id)
    assert resent["topic"] == "payments"
    broker.metadata.put_group(GroupConfig(name="auditor"))
    harness.store.dispatch_now()
    again = live.run(
        broker.receive(group="auditor", topic="payments", message_filter=EVERYTHING, max_messages=10,
                       invisible_s=30, client_id="c", long_poll_timeout_s=0)
    )  # fmt: skip
    assert [d.message.message_id for d in again] == [message.message_id] * 2  # original + resent copy


def test_errors_are_json_with_fitting_http_statuses(live: LiveBroker) -> None:
    status, body = _get(live.url + "/v1/topics/nope")
    assert status == 404 and body["error"]["code"] == "TOPIC_NOT_FOUND"
    status, body = _get(live.url + "/v1/nothing-here")
    assert status == 404
    status, body = _get(live.url + "/v1/messages?key=x&limit=abc")
    assert status == 400 and "limit" in body["error"]["message"]
    request = urllib.request.Request(live.url + "/v1/topics", data=b"{not json", method="POST")
    try:
        urllib.request.urlopen(request, timeout=10)
        raise AssertionError("expected an error")
    except urllib.error.HTTPError as error:
        assert error.code == 400
    result = CliRunner().invoke(main, ["admin", "--server", live.url, "topic", "create", "%bad"])
    assert result.exit_code == 1 and "ILLEGAL_TOPIC" in result.output


def test_unreachable_broker_is_a_clear_error() -> None:
    result = CliRunner().invoke(main, ["admin", "--server", "http://127.0.0.1:1", "topic", "list"])
    assert result.exit_code == 2 and "cannot reach" in result.output


def test_credentials_are_required_when_configured() -> None:
    live = LiveBroker(credentials={"ops": "s3cret"})
    live.start()
    try:
        status, body = _get(live.url + "/v1/topics")
        assert status == 401 and body["error"]["code"] == "UNAUTHORIZED"
        bad = CliRunner().invoke(
            main, ["admin", "--server", live.url, "--credentials", "ops:wrong", "topic", "list"]
        )
        assert bad.exit_code == 1 and "UNAUTHORIZED" in bad.output
        good = CliRunner().invoke(
            main, ["admin", "--server", live.url, "--credentials", "ops:s3cret", "topic", "list"]
        )
        assert good.exit_code == 0, good.output
    finally:
        live.stop()
