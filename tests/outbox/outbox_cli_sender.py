"""A sender factory for ``homing outbox relay --sender outbox.outbox_cli_sender:factory`` in tests.

Appends every message it is asked to send to the JSON-lines file named by the variable
``HOMING_TEST_SENT_LOG``; if ``HOMING_TEST_FAIL_SENDS`` is set, every send fails instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from homing.outbox import OutboxMessage, Send


@asynccontextmanager
async def factory(endpoint: str | None) -> AsyncIterator[Send]:
    log_path = os.environ["HOMING_TEST_SENT_LOG"]
    fail = bool(os.environ.get("HOMING_TEST_FAIL_SENDS"))

    async def send(message: OutboxMessage) -> None:
        if fail:
            raise ConnectionError("test broker refuses")
        with open(log_path, "a", encoding="utf-8") as log:
            record = {"endpoint": endpoint, "message_id": message.message_id, "body": message.body.decode()}
            log.write(json.dumps(record) + "\n")

    yield send
