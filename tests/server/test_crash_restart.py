"""kill -9 of the broker while the official clients are sending: nothing acknowledged is lost.

Both producers (Python and Node) send at full speed; once each has been acknowledged a while, the
broker is killed with SIGKILL and started again on the same port and data directory. Sends that
fail during the outage are the clients' to retry; every send that was acknowledged (before or after
the crash) must then be delivered to a consumer, and a consumer's unacknowledged deliveries
must come back.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from official_drivers import CLIENTS, DriverProcess, driver_commands, run_driver

from homing.testing import BrokerProcess

pytestmark = pytest.mark.timeout(300)

MESSAGES_PER_PRODUCER = 400
ACKED_BEFORE_CRASH = 60


def test_every_acknowledged_send_survives_kill_9(tmp_path: Path) -> None:
    driver_commands()
    broker = BrokerProcess(
        tmp_path / "data",
        options={"long_polling_timeout_s": 2.0, "segment_size_bytes": 8 * 1024 * 1024},
    ).start()
    try:
        topic = "crash-topic"
        producers = {
            client: DriverProcess.start(
                client,
                "produce",
                {
                    "endpoint": broker.endpoint,
                    "topic": topic,
                    "messages": [{"body": f"{client} {index}"} for index in range(MESSAGES_PER_PRODUCER)],
                    "allow_failures": True,
                    "graceful_shutdown": False,
                },
                tmp_path / f"producer-{client}",
            )
            for client in CLIENTS
        }
        for producer in producers.values():
            producer.wait_for("sent", count=ACKED_BEFORE_CRASH, timeout_s=60)
        broker.kill()
        broker.start()
        acknowledged: set[str] = set()
        for producer in producers.values():
            run = producer.finish()
            assert run.returncode == 0, run.describe()
            ok = {event["message_id"] for event in run.of("sent") if event["ok"]}
            assert len(ok) >= ACKED_BEFORE_CRASH, run.describe()
            acknowledged |= ok
        # The clients keep working against the restarted broker.
        for client in CLIENTS:
            after = run_driver(
                client,
                "produce",
                {"endpoint": broker.endpoint, "topic": topic, "messages": [{"body": f"after {client}"}]},
                tmp_path / f"after-{client}",
            ).check()
            acknowledged |= {event["message_id"] for event in after.of("sent") if event["ok"]}

        # A consumer takes everything without acking, and is killed; the broker crashes again.
        first = run_driver(
            "node",
            "simple-consume",
            {
                "endpoint": broker.endpoint,
                "topic": topic,
                "group": "crash-readers",
                "action": "none",
                "invisible_duration_s": 4,
                "max_messages": 32,
                "await_duration_s": 1,
                "stop_after_received": len(acknowledged),
                "graceful_shutdown": False,
                "emit_body": False,
                "duration_s": 60,
            },
            tmp_path / "consumer-1",
        ).check()
        assert {event["message_id"] for event in first.of("received")} >= acknowledged, first.describe()
        broker.restart(crash=True)

        # After the invisible time, every acknowledged message comes back, and is acked.
        second = run_driver(
            "python",
            "simple-consume",
            {
                "endpoint": broker.endpoint,
                "topic": topic,
                "group": "crash-readers",
                "max_messages": 32,
                "await_duration_s": 2,
                "stop_after_received": len(acknowledged),
                "emit_body": False,
                "duration_s": 60,
            },
            tmp_path / "consumer-2",
        ).check()
        received = {event["message_id"] for event in second.of("received")}
        missing = acknowledged - received
        assert not missing, f"{len(missing)} acknowledged message(s) lost: {sorted(missing)[:5]}"
        assert all(event["delivery_attempt"] >= 2 for event in second.of("received")), second.describe()
        assert broker.stop() == 0, broker.log_text()[-3000:]
    finally:
        broker.kill()
