"""The workload on the official Apache RocketMQ 5 Python client (PyPI ``rocketmq-python-client``).

Run with the official client's interpreter, never Homing's (the two register the same protobuf
names), so this file imports nothing from ``homing``::

    .venv-rocketmq/bin/python -I src/homing/testing/durability/official_workload.py produce '{...}'

Same events as :mod:`homing.testing.durability.workload` (see
:mod:`homing.testing.durability.history`), same SQLite inbox layout as
:class:`homing.testing.durability.inbox.SqliteInbox` (kept identical by a test). The official
client makes its own message ids, so the uid travels in the body (``uid=<uid>;``) and as a key.

Actions and their JSON arguments: ``produce`` {endpoint, topic, log, name, prefix, count?, seed?,
rate?} and ``consume`` {endpoint, topic, group, log, name, inbox, seed?, invisible_s?, batch?,
await_s?}. Both run until their count is reached or SIGTERM; failed sends are logged ``unknown``
(the client retries internally, so a refusal may follow an attempt that was stored).
"""

from __future__ import annotations

import importlib
import json
import os
import random
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

_STOP = threading.Event()
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS processed (uid TEXT PRIMARY KEY, message_id TEXT NOT NULL,"
    " consumer TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS effects (seq INTEGER PRIMARY KEY AUTOINCREMENT, uid TEXT NOT NULL,"
    " consumer TEXT NOT NULL)",
)


class Log:
    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in finish()
        self._lock = threading.Lock()

    def write(self, ev: str, **fields: Any) -> None:
        line = json.dumps({"ev": ev, **fields}, separators=(",", ":"), default=str)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()


def body_for(uid: str, size: int = 64) -> bytes:
    head = f"uid={uid};".encode()
    return head + b"x" * max(size - len(head), 0)


def uid_of(body: bytes, fallback: str) -> str:
    if body.startswith(b"uid="):
        end = body.find(b";")
        if end > 4:
            return body[4:end].decode("utf-8", "replace")
    return fallback


def error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


def configuration(rmq: Any, args: dict[str, Any]) -> Any:
    return rmq.ClientConfiguration(args["endpoint"], rmq.Credentials("", ""), "", request_timeout=3)


def wait(seconds: float) -> None:
    _STOP.wait(seconds)


def start(client: Any, rng: random.Random, log: Log) -> bool:
    while not _STOP.is_set():
        try:
            client.startup()
            log.write("started")
            return True
        except Exception as error:
            log.write("start_error", err=error_text(error))
            wait(rng.uniform(0.2, 0.6))
    return False


def abandon(client: Any) -> None:
    """Shut a client down in the background (its shutdown can wait on a dead broker)."""
    threading.Thread(target=client.shutdown, daemon=True).start()


def produce(rmq: Any, args: dict[str, Any]) -> None:
    rng = random.Random(int(args.get("seed", 0)))
    log = Log(args["log"])
    topic = str(args["topic"])
    count = args.get("count")
    rate = float(args.get("rate", 0))
    producer = rmq.Producer(configuration(rmq, args), (topic,))
    if not start(producer, rng, log):
        return
    index = failures = 0
    while not _STOP.is_set() and (count is None or index < int(count)):
        if failures >= 10:
            # The client's gRPC channel backs off for up to minutes after the broker went away
            # (it fails every call meanwhile): a new client reconnects at once, as an operator would.
            failures = 0
            log.write("reconnect")
            abandon(producer)
            producer = rmq.Producer(configuration(rmq, args), (topic,))
            if not start(producer, rng, log):
                break
        uid = f"{args['prefix']}-{index:07d}"
        index += 1
        log.write("attempt", uid=uid, p=args["name"])
        message = rmq.Message()
        message.topic = topic
        message.body = body_for(uid)
        message.keys = uid
        try:
            receipt = producer.send(message)
            log.write("outcome", uid=uid, outcome="ok", mid=receipt.message_id)
            failures = 0
        except Exception as error:
            failures += 1
            log.write("outcome", uid=uid, outcome="unknown", err=error_text(error))
            wait(rng.uniform(0.01, 0.1))
        if rate:
            wait(rng.expovariate(rate))
    log.write("stopped")


class Inbox:
    def __init__(self, path: str, consumer: str) -> None:
        self.consumer = consumer
        self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            self.db.execute(statement)
        self.db.execute("COMMIT")

    def apply(self, uid: str, message_id: str) -> bool:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            cursor = self.db.execute(
                "INSERT OR IGNORE INTO processed (uid, message_id, consumer) VALUES (?, ?, ?)",
                (uid, message_id, self.consumer),
            )
            first = cursor.rowcount == 1
            if first:
                self.db.execute("INSERT INTO effects (uid, consumer) VALUES (?, ?)", (uid, self.consumer))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return first


def consume(rmq: Any, args: dict[str, Any]) -> None:
    rng = random.Random(int(args.get("seed", 0)))
    log = Log(args["log"])
    name = str(args["name"])
    topic = str(args["topic"])
    inbox = Inbox(str(args["inbox"]), name)

    def make() -> Any:
        return rmq.SimpleConsumer(
            configuration(rmq, args),
            str(args["group"]),
            {topic: rmq.FilterExpression("*")},
            await_duration=int(args.get("await_s", 1)),
        )

    consumer = make()
    if not start(consumer, rng, log):
        return
    invisible_s = int(args.get("invisible_s", 3))
    batch = int(args.get("batch", 16))
    failures = 0
    while not _STOP.is_set():
        if failures >= 10:  # see produce(): a new client instead of a channel backing off
            failures = 0
            log.write("reconnect")
            abandon(consumer)
            consumer = make()
            if not start(consumer, rng, log):
                break
        try:
            messages = consumer.receive(batch, invisible_s)
            failures = 0
        except Exception as error:
            failures += 1
            log.write("receive_error", err=error_text(error))
            wait(rng.uniform(0.1, 0.4))
            continue
        for message in messages or ():
            uid = uid_of(bytes(message.body or b""), str(message.message_id))
            log.write(
                "recv", uid=uid, mid=message.message_id, c=name, att=message.delivery_attempt, topic=topic
            )
            first = inbox.apply(uid, str(message.message_id))
            log.write("apply", uid=uid, first=first)
            try:
                consumer.ack(message)
                log.write("ack", uid=uid, ok=True)
            except Exception as error:
                log.write("ack", uid=uid, ok=False, err=error_text(error))
    log.write("stopped")


def finish(code: int) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    # The client leaves non-daemon threads and channels behind: leave without waiting for them.
    os._exit(code)


def main(argv: list[str]) -> NoReturn:
    if len(argv) != 3 or argv[1] not in ("produce", "consume"):
        print("usage: official_workload.py produce|consume JSON", file=sys.stderr)
        finish(2)
    signal.signal(signal.SIGTERM, lambda signum, frame: _STOP.set())
    args = json.loads(argv[2])
    rmq = importlib.import_module("rocketmq")
    started = time.monotonic()
    try:
        (produce if argv[1] == "produce" else consume)(rmq, args)
    except Exception as error:
        print(
            f"official workload failed after {time.monotonic() - started:.1f} s: {error_text(error)}",
            file=sys.stderr,
        )
        finish(1)
    finish(0)


if __name__ == "__main__":
    main(sys.argv)
