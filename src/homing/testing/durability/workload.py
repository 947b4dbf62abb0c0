"""The workload process on Homing's own client: ``python -m homing.testing.durability.workload``.

Actions (each writes its events, see :mod:`~homing.testing.durability.history`, to ``--log``):

``produce``
    Synchronous sends of unique ids (the uid is the message id, and is in the body as
    ``uid=<uid>;``), one after another, until ``--count`` or SIGTERM. Each attempt is logged before
    the send and its outcome after: ok (the broker said OK), failed (a non-retriable refusal; with
    ``--attempts 1`` also a retriable one, since nothing was retried) or unknown.
``consume``
    A simple consumer (``--mode simple``) or a push consumer (``--mode push``) that logs each
    delivery, applies it to the SQLite inbox (``--inbox``: effect and processed-record in one
    transaction) and acks it. ``--die-after N --die-phase before-apply|after-apply`` kills the
    process with SIGKILL inside the handler of its N-th delivery; ``--poison-prefix P`` refuses
    (nacks) every uid starting with P; ``--handler-delay-ms A,B`` sleeps a seeded time in the handler
    before the inbox (a push consumer shut down then has messages in flight).
``transact``
    Transactional sends: ``--decisions FILE`` (JSON uid -> commit | rollback | unknown) says what
    each transaction should become. ``--end-first K`` ends the first K transactions itself; the
    rest stay open and the process kills itself (SIGKILL) before committing them, unless
    ``--no-die``. It answers check-backs from the same file (unknown: UNKNOWN, so the broker asks
    again until it parks the transaction).
``check-back``
    Only a checker: a producer that answers check-backs from ``--decisions`` until SIGTERM.
``outbox-app``
    A service on SQLite (``--db``) that writes a business row and an outbox row (``homing.outbox``)
    in one transaction per uid, rolling back a seeded share on purpose, with the outbox relay
    running in the same process: SIGKILL it to crash a producer between commit and send.

SIGTERM ends every action cleanly: the operation under way finishes, the client closes. Timing
that is not the broker's (gaps between sends, retry waits, handler delays) is drawn from ``--seed``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol, TypeVar

from homing.client import (
    AsyncProducer,
    AsyncPushConsumer,
    AsyncSimpleConsumer,
    ClientError,
    Message,
    ReceivedMessage,
    RetryPolicy,
    StatusError,
    TransactionResolution,
)
from homing.testing.durability.history import EventLog, Outcome
from homing.testing.durability.inbox import SqliteInbox

__all__ = ["body_for", "main", "uid_of"]


def body_for(uid: str, size: int = 64) -> bytes:
    head = f"uid={uid};".encode()
    return head + b"x" * max(size - len(head), 0)


def uid_of(body: bytes, fallback: str = "") -> str:
    if body.startswith(b"uid="):
        end = body.find(b";")
        if end > 4:
            return body[4:end].decode("utf-8", "replace")
    return fallback


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


def _outcome_of(error: BaseException, attempts: int) -> Outcome:
    if isinstance(error, StatusError) and (not error.retriable or attempts == 1):
        return Outcome.FAILED
    return Outcome.UNKNOWN


class Stopper:
    """SIGTERM (or SIGINT) sets ``event``: finish what is under way, then leave."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.event.set)

    @property
    def stopped(self) -> bool:
        return self.event.is_set()

    async def sleep(self, seconds: float) -> None:
        if seconds > 0 and not self.stopped:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), seconds)


class _Client(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


ClientT = TypeVar("ClientT", bound=_Client)


async def _started(
    make: Callable[[], ClientT], stopper: Stopper, rng: random.Random, log: EventLog
) -> ClientT | None:
    """A started client, made again after each failed start while the broker is down; None if told to stop."""
    while not stopper.stopped:
        client = make()
        try:
            await client.start()
            log.write("started")
            return client
        except ClientError as error:
            log.write("start_error", err=_error_text(error))
            await client.close()
            await stopper.sleep(rng.uniform(0.05, 0.3))
    return None


# ---------------------------------------------------------------------------------- produce


async def produce(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    stopper = Stopper()
    log = EventLog(args.log)
    policy = RetryPolicy(max_attempts=args.attempts) if args.attempts else None
    producer = await _started(
        lambda: AsyncProducer(
            args.endpoint, topics=[args.topic], retry_policy=policy, send_timeout_s=args.send_timeout_s
        ),
        stopper,
        rng,
        log,
    )
    if producer is None:
        return
    try:
        index = 0
        while not stopper.stopped and (args.count is None or index < args.count):
            uid = f"{args.prefix}-{index:07d}"
            index += 1
            log.write("attempt", uid=uid, p=args.name)
            try:
                receipt = await producer.send(
                    Message(args.topic, body_for(uid, args.body_size), message_id=uid, keys=uid)
                )
                log.write("outcome", uid=uid, outcome=Outcome.OK.value, mid=receipt.message_id)
            except ClientError as error:
                outcome = _outcome_of(error, args.attempts or 3)
                log.write(
                    "outcome",
                    uid=uid,
                    outcome=outcome.value,
                    err=_error_text(error),
                    code=getattr(error, "code_name", ""),
                )
                await stopper.sleep(rng.uniform(0.01, 0.1))
            if args.rate:
                await stopper.sleep(rng.expovariate(args.rate))
    finally:
        await producer.close()
        log.write("stopped")
        log.close()


# ---------------------------------------------------------------------------------- consume


class Handler:
    """What every consumer does with a message: log it, apply it to the inbox, maybe die or refuse."""

    def __init__(self, args: argparse.Namespace, log: EventLog, rng: random.Random) -> None:
        self.args = args
        self.log = log
        self.rng = rng
        self.inbox = SqliteInbox(args.inbox, consumer=args.name)
        self.handled = 0
        delays = [float(part) for part in (args.handler_delay_ms or "").split(",") if part.strip()]
        self.delay_ms = (delays[0], delays[-1]) if delays else None

    def _die(self, phase: str) -> None:
        if (
            self.args.die_after is not None
            and self.handled >= self.args.die_after
            and self.args.die_phase == phase
        ):
            self.log.write("dying", phase=phase)
            os.kill(os.getpid(), signal.SIGKILL)

    async def __call__(self, message: ReceivedMessage) -> bool:
        """True if the message should be acked, False to refuse it (nack)."""
        uid = uid_of(message.body, message.message_id)
        self.handled += 1
        self.log.write(
            "recv", uid=uid, mid=message.message_id, c=self.args.name, att=message.delivery_attempt,
            topic=message.topic, q=message.queue_id, off=message.queue_offset,
        )  # fmt: skip
        if self.args.poison_prefix and uid.startswith(self.args.poison_prefix):
            self.log.write("nack", uid=uid)
            return False
        if self.delay_ms is not None:
            await asyncio.sleep(self.rng.uniform(*self.delay_ms) / 1000)
        self._die("before-apply")
        first = self.inbox.apply(uid, message.message_id)
        self.log.write("apply", uid=uid, first=first)
        self._die("after-apply")
        return True


async def consume_simple(
    args: argparse.Namespace, handler: Handler, stopper: Stopper, rng: random.Random
) -> None:
    log = handler.log
    consumer = await _started(
        lambda: AsyncSimpleConsumer(
            args.endpoint, group=args.group, subscriptions={args.topic: "*"}, await_duration_s=args.await_s
        ),
        stopper,
        rng,
        log,
    )
    if consumer is None:
        return
    try:
        while not stopper.stopped:
            try:
                messages = await consumer.receive(
                    max_messages=args.batch, invisible_duration=args.invisible_s
                )
            except ClientError as error:
                log.write("receive_error", err=_error_text(error))
                await stopper.sleep(rng.uniform(0.05, 0.3))
                continue
            for message in messages:
                uid = uid_of(message.body, message.message_id)
                if await handler(message):
                    try:
                        await consumer.ack(message)
                        log.write("ack", uid=uid, ok=True)
                    except ClientError as error:
                        log.write("ack", uid=uid, ok=False, err=_error_text(error))
                else:
                    try:
                        await consumer.change_invisible_duration(message, args.nack_s)
                    except ClientError as error:
                        log.write("nack_error", uid=uid, err=_error_text(error))
    finally:
        await consumer.close()


async def consume_push(
    args: argparse.Namespace, handler: Handler, stopper: Stopper, rng: random.Random
) -> None:
    log = handler.log

    async def handle(message: ReceivedMessage) -> None:
        if not await handler(message):
            raise RuntimeError("poison message refused by the handler")
        log.write("handled", uid=uid_of(message.body, message.message_id))

    def make() -> AsyncPushConsumer:
        made = AsyncPushConsumer(
            args.endpoint,
            group=args.group,
            max_concurrency=args.batch,
            shutdown_timeout_s=args.shutdown_timeout_s,
            assignment_interval_s=1.0,
        )
        made.subscribe(args.topic, handle)
        return made

    consumer = await _started(make, stopper, rng, log)
    if consumer is None:
        return
    try:
        await stopper.event.wait()
    finally:
        await consumer.close()


async def consume(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    stopper = Stopper()
    log = EventLog(args.log)
    handler = Handler(args, log, rng)
    try:
        if args.mode == "push":
            await consume_push(args, handler, stopper, rng)
        else:
            await consume_simple(args, handler, stopper, rng)
    finally:
        handler.inbox.close()
        log.write("stopped", handled=handler.handled)
        log.close()


# ---------------------------------------------------------------------------------- transactions


def _decisions(path: str) -> dict[str, str]:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: a JSON object uid -> commit|rollback|unknown is expected")
    return {str(uid): str(decision) for uid, decision in data.items()}


def _checker(decisions: dict[str, str], log: EventLog) -> Callable[[ReceivedMessage], TransactionResolution]:
    def check(message: ReceivedMessage) -> TransactionResolution:
        uid = uid_of(message.body, message.message_id)
        answer = decisions.get(uid, "unknown")
        log.write("check", uid=uid, answer=answer, mid=message.message_id)
        if answer == "commit":
            return TransactionResolution.COMMIT
        if answer == "rollback":
            return TransactionResolution.ROLLBACK
        return TransactionResolution.UNKNOWN

    return check


async def transact(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    stopper = Stopper()
    log = EventLog(args.log)
    decisions = _decisions(args.decisions)
    producer = await _started(
        lambda: AsyncProducer(args.endpoint, topics=[args.topic], checker=_checker(decisions, log)),
        stopper,
        rng,
        log,
    )
    if producer is None:
        return
    try:
        for index, (uid, decision) in enumerate(sorted(decisions.items())):
            if stopper.stopped:
                break
            log.write("attempt", uid=uid, p=args.name, intent=decision)
            transaction = producer.transaction()
            try:
                receipt = await transaction.send(Message(args.topic, body_for(uid), message_id=uid, keys=uid))
                log.write("outcome", uid=uid, outcome=Outcome.OK.value, mid=receipt.message_id)
            except ClientError as error:
                log.write("outcome", uid=uid, outcome=_outcome_of(error, 1).value, err=_error_text(error))
                continue
            if index >= args.end_first or decision == "unknown":
                continue  # left open: the broker will ask
            try:
                if decision == "commit":
                    await transaction.commit()
                else:
                    await transaction.rollback()
                log.write("end", uid=uid, resolution=decision, ok=True)
            except ClientError as error:
                log.write("end", uid=uid, resolution=decision, ok=False, err=_error_text(error))
        if not args.no_die:
            log.write("dying", phase="before-commit")
            os.kill(os.getpid(), signal.SIGKILL)
        await stopper.event.wait()
    finally:
        await producer.close()
        log.write("stopped")
        log.close()


async def check_back(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    stopper = Stopper()
    log = EventLog(args.log)
    decisions = _decisions(args.decisions)
    producer = await _started(
        lambda: AsyncProducer(args.endpoint, topics=[args.topic], checker=_checker(decisions, log)),
        stopper,
        rng,
        log,
    )
    if producer is None:
        return
    try:
        await stopper.event.wait()
    finally:
        await producer.close()
        log.write("stopped")
        log.close()


# ---------------------------------------------------------------------------------- outbox


class _RolledBack(Exception):
    """Raised inside a business transaction to roll it back on purpose."""


async def outbox_app(args: argparse.Namespace) -> None:
    """A service writing business rows and outbox rows in one transaction, with a relay task.

    Each uid is attempted in its own transaction: ``outcome ok`` once it committed (the row must
    then be delivered), ``failed`` when it was rolled back on purpose (it must never be). The relay
    (``homing.outbox.OutboxRelay`` over ``producer_sender``) runs beside it in the same process, so
    a SIGKILL of this process is a producer crash between a commit and its send.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    from homing.outbox import Outbox, OutboxRelay, RelaySettings, producer_sender

    rng = random.Random(args.seed)
    stopper = Stopper()
    log = EventLog(args.log)
    engine = create_engine(f"sqlite:///{args.db}", connect_args={"timeout": 30})
    outbox = Outbox()
    outbox.create_table(engine)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE IF NOT EXISTS orders (uid TEXT PRIMARY KEY)"))
    settings = RelaySettings(
        lease_s=3.0, send_timeout_s=2.0, backoff_min_s=0.1, backoff_max_s=1.0, poll_interval_s=0.2
    )

    async def relay_forever() -> None:
        while not stopper.stopped:
            try:
                async with producer_sender(args.endpoint) as send:
                    log.write("started")
                    await OutboxRelay(outbox, engine, send, settings=settings).run()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the broker is down: start the relay again
                log.write("start_error", err=_error_text(error))
                await stopper.sleep(rng.uniform(0.1, 0.5))

    relay = asyncio.create_task(relay_forever())
    try:
        index = 0
        while not stopper.stopped and index < args.count:
            uid = f"{args.prefix}-{index:07d}"
            index += 1
            intent = "rollback" if rng.random() < args.rollback_ratio else "commit"
            log.write("attempt", uid=uid, p=args.name, intent=intent)
            try:
                with Session(engine) as session, session.begin():
                    session.execute(text("INSERT INTO orders (uid) VALUES (:uid)"), {"uid": uid})
                    outbox.add(session, args.topic, body_for(uid), message_id=uid, keys=[uid])
                    if intent == "rollback":
                        raise _RolledBack()
                log.write("outcome", uid=uid, outcome=Outcome.OK.value, mid=uid)
            except _RolledBack:
                log.write("outcome", uid=uid, outcome=Outcome.FAILED.value, err="rolled back on purpose")
            if args.rate:
                await stopper.sleep(rng.expovariate(args.rate))
        await stopper.event.wait()
    finally:
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        log.write("stopped")
        log.close()


# ---------------------------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m homing.testing.durability.workload", description=__doc__.split("\n")[0]
    )
    actions = top.add_subparsers(dest="action", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--endpoint", required=True)
        sub.add_argument("--topic", required=True)
        sub.add_argument("--log", required=True, help="JSONL event log to append to")
        sub.add_argument("--name", required=True, help="producer or consumer name in the events")
        sub.add_argument("--seed", type=int, default=0)

    produce_args = actions.add_parser("produce")
    common(produce_args)
    produce_args.add_argument("--prefix", required=True, help="uids are PREFIX-0000000, PREFIX-0000001...")
    produce_args.add_argument("--count", type=int, default=None)
    produce_args.add_argument("--rate", type=float, default=0.0, help="mean sends per second (0: flat out)")
    produce_args.add_argument(
        "--attempts", type=int, default=0, help="client attempts per send (0: the broker's)"
    )
    produce_args.add_argument("--send-timeout-s", type=float, default=10.0)
    produce_args.add_argument("--body-size", type=int, default=64)

    consume_args = actions.add_parser("consume")
    common(consume_args)
    consume_args.add_argument("--group", required=True)
    consume_args.add_argument(
        "--inbox", required=True, help="SQLite inbox file (shared by a group's consumers)"
    )
    consume_args.add_argument("--mode", choices=("simple", "push"), default="simple")
    consume_args.add_argument("--batch", type=int, default=16)
    consume_args.add_argument("--invisible-s", type=float, default=3.0)
    consume_args.add_argument("--await-s", type=float, default=1.0)
    consume_args.add_argument("--nack-s", type=float, default=1.0)
    consume_args.add_argument("--shutdown-timeout-s", type=float, default=30.0)
    consume_args.add_argument("--die-after", type=int, default=None)
    consume_args.add_argument("--die-phase", choices=("before-apply", "after-apply"), default="before-apply")
    consume_args.add_argument("--poison-prefix", default="")
    consume_args.add_argument("--handler-delay-ms", default="", help="A,B: a seeded delay in [A, B] ms")

    outbox_args = actions.add_parser("outbox-app")
    common(outbox_args)
    outbox_args.add_argument(
        "--db", required=True, help="SQLite file of the service (business and outbox tables)"
    )
    outbox_args.add_argument("--prefix", required=True)
    outbox_args.add_argument("--count", type=int, default=0, help="transactions to write (0: relay only)")
    outbox_args.add_argument("--rate", type=float, default=0.0)
    outbox_args.add_argument("--rollback-ratio", type=float, default=0.1)

    for name in ("transact", "check-back"):
        sub = actions.add_parser(name)
        common(sub)
        sub.add_argument("--decisions", required=True, help="JSON file: uid -> commit | rollback | unknown")
        if name == "transact":
            sub.add_argument("--end-first", type=int, default=0)
            sub.add_argument("--no-die", action="store_true")
    return top


ACTIONS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, None]]] = {
    "produce": produce,
    "consume": consume,
    "transact": transact,
    "check-back": check_back,
    "outbox-app": outbox_app,
}


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    asyncio.run(ACTIONS[args.action](args))


if __name__ == "__main__":
    main(sys.argv[1:])
