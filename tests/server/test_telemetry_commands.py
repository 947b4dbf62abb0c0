"""Commands the broker pushes on a client's Telemetry stream reach the official clients.

The broker runs in this process (:func:`homing.server.app.serve` on its own event loop thread) so
that the test can reach its telemetry registry: it asks each official transactional producer to
check a transaction back, the way the broker's transaction service will, and watches the client's
checker being called with the message.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from official_drivers import CLIENTS, DriverProcess, driver_commands

from homing.broker.model import Message, MessageType
from homing.config import Address, BrokerSettings
from homing.server.app import serve
from homing.server.servicer import MessagingServicer
from homing.testing import free_port

pytestmark = pytest.mark.timeout(180)

T = TypeVar("T")


@dataclass
class InProcessBroker:
    endpoint: str
    servicer: MessagingServicer
    loop: asyncio.AbstractEventLoop

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the broker's event loop; its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessBroker]:
    driver_commands()
    settings = BrokerSettings(
        listen=Address("127.0.0.1", free_port()),
        data_dir=tmp_path_factory.mktemp("telemetry") / "data",
        segment_size_bytes=4 * 1024 * 1024,
        long_polling_timeout_s=3.0,
    )
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready: list[InProcessBroker] = []
    failure: list[BaseException] = []

    def listening(address: Address, servicer: MessagingServicer) -> None:
        ready.append(InProcessBroker(str(address), servicer, loop))

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve(settings, stop, on_listening=listening))
        except BaseException as error:  # reported by the fixture
            failure.append(error)

    thread = threading.Thread(target=run, name="in-process-broker", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not ready and not failure and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready, f"the broker did not start: {failure}"
    yield ready[0]
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)
    assert not thread.is_alive()
    assert not failure, failure


@pytest.mark.parametrize("client", CLIENTS)
def test_a_transaction_check_back_reaches_the_producer(
    client: str, broker: InProcessBroker, tmp_path: Path
) -> None:
    namespace = f"ns-{client}"
    producer = DriverProcess.start(
        client,
        "produce-transaction",
        {
            "endpoint": broker.endpoint,
            "namespace": namespace,
            "topic": "payments",
            "messages": [],
            "check_answer": "commit",
            "duration_s": 30,
        },
        tmp_path,
    )
    try:
        [started] = producer.wait_for("started", timeout_s=60)
        client_id = started["client_id"]
        topic = f"{namespace}%payments"
        registry = broker.servicer.telemetry

        async def producers() -> list[str]:  # read on the broker's loop, which owns the registry
            return registry.producers_for_topic(topic)

        deadline = time.monotonic() + 20
        while client_id not in broker.call(producers()):
            assert time.monotonic() < deadline, f"{client_id} never announced itself as a producer of {topic}"
            time.sleep(0.1)
        message = Message(
            topic=topic,
            body=b"half message",
            message_id="0102FC000000016D770B13F92400000099",
            message_type=MessageType.TRANSACTION,
            tag="pay",
            properties={"order": "42"},
            born_timestamp_ms=1_767_225_600_123,
            queue_id=1,
            queue_offset=7,
            store_timestamp_ms=1_767_225_601_000,
        )
        asked = broker.call(registry.recover_orphaned_transaction(message, "transaction-1"))
        assert asked == client_id
        checked = [
            event for event in producer.wait_for("checked", timeout_s=30) if event["event"] == "checked"
        ]
        assert checked[0]["message_id"] == message.message_id
        assert checked[0]["body"] == "half message"
        assert checked[0]["topic"] == "payments"  # the client's own name for it
        assert (checked[0]["tag"], checked[0]["properties"]) == ("pay", {"order": "42"})
        assert checked[0]["corrupted"] is False
        # A client that is not there cannot be asked.
        assert broker.call(registry.recover_orphaned_transaction(message, "t", candidates=["nobody"])) is None
    finally:
        producer.kill()
        producer.finish()
