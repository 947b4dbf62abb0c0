"""A broker in this process, over a :class:`SimulatedDisk` and a :class:`FakeClock`, with a workload.

For the faults a real process cannot show: power loss (unsynced writes dropped or torn), EIO on a
write or an fsync, damaged files, clock jumps. :class:`InProcessBroker` starts, crashes (as
``kill -9``: the page cache survives) or loses power (``SimulatedDisk.crash``), and restarts the
broker on what survived. :class:`InProcessWorkload` sends unique ids through :meth:`Broker.send`,
consumes through :meth:`Broker.receive` / :meth:`Broker.ack` into a :class:`SqliteInbox`, records
everything in a :class:`History`, and :meth:`InProcessWorkload.drain` / :meth:`InProcessWorkload.check`
end a run the way the process-level runs end: drain, ask the group description, judge.

The clock moves only when told: redeliveries, retries, delays and check-backs come due when a test
advances it (``clock.advance``) or jumps it (``clock.jump_wall_ms``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from homing.broker.admin import Admin
from homing.broker.broker import Broker, BrokerOptions
from homing.broker.errors import BrokerError
from homing.broker.filters import compile_filter
from homing.broker.metadata import GroupConfig
from homing.broker.model import Delivery, Message, MessageType, SendReceipt
from homing.broker.system_topics import dlq_topic
from homing.clock import Clock, FakeClock
from homing.store import CorruptRecordError, MessageStore, SimulatedDisk, StoreConfig
from homing.store.disk import Disk
from homing.testing.durability.checker import CheckReport, check
from homing.testing.durability.history import History, Outcome
from homing.testing.durability.inbox import SqliteInbox

__all__ = [
    "EVERYTHING",
    "BrokerDown",
    "InProcessBroker",
    "InProcessWorkload",
    "Load",
    "classify_error",
    "clone_disk",
    "disk_files",
    "halt_tasks",
    "stored_ids",
]

EVERYTHING = compile_filter("TAG", "*")
DATA_DIR = "/data"

# Statuses after which the broker has stored nothing: a definite refusal. Anything else (a
# persistence timeout, a storage failure after the write) leaves the outcome unknown.
_MAYBE_STORED = frozenset({"MASTER_PERSISTENCE_TIMEOUT", "INTERNAL_SERVER_ERROR", "INTERNAL_ERROR"})


def classify_error(error: BrokerError) -> Outcome:
    if error.code in _MAYBE_STORED and "write refused" not in error.message:
        return Outcome.UNKNOWN
    return Outcome.FAILED


def disk_files(disk: Disk, root: str = "/") -> list[str]:
    """Every file under ``root``, sorted."""
    found: list[str] = []
    for name in disk.list_dir(root):
        path = root.rstrip("/") + "/" + name
        try:
            disk.list_dir(path)
        except NotADirectoryError:
            found.append(path)
            continue
        found.extend(disk_files(disk, path))
    return sorted(found)


def clone_disk(disk: SimulatedDisk, seed: int = 0, root: str = "/") -> SimulatedDisk:
    """A new disk holding, durably, what ``disk`` holds now (call it after a crash or a close)."""
    copy = SimulatedDisk(seed=seed)

    def walk(path: str) -> None:
        copy.make_dirs(path)
        for name in disk.list_dir(path):
            child = path.rstrip("/") + "/" + name
            try:
                disk.list_dir(child)
            except NotADirectoryError:
                source = disk.open(child)
                try:
                    data = source.pread(source.size(), 0)
                finally:
                    source.close()
                target = copy.open(child, create=True)
                try:
                    target.pwrite(data, 0)
                    target.sync()
                finally:
                    target.close()
                continue
            walk(child)
        copy.sync_dir(path)

    walk(root)
    return copy


def stored_ids(store: MessageStore, topic: str, queue_count: int) -> Counter[str]:
    """Message ids of every record in ``topic``, with their number of copies."""
    found: Counter[str] = Counter()
    for queue_id in range(queue_count):
        offset, end = store.queue_bounds(topic, queue_id)
        while offset < end:
            try:
                read = store.read_queue(topic, queue_id, offset, 256)
            except CorruptRecordError:
                try:  # a damaged record: step over it (it counts as nothing stored)
                    read = store.read_queue(topic, queue_id, offset, 1)
                except CorruptRecordError:
                    offset += 1
                    continue
            found.update(record.message_id for record in read.records)
            if read.next_queue_offset <= offset:
                break
            offset = read.next_queue_offset
    return found


async def halt_tasks(tasks: Iterable[asyncio.Task[Any]], stop: asyncio.Event | None = None) -> None:
    """Stop workload tasks for a crash: set ``stop``, then cancel until every task has ended.

    Python 3.11's ``wait_for`` can swallow a cancellation that races with its result, so a task may
    go on after one ``cancel()``; the loops also watch ``stop``, and cancellation is repeated.
    """
    if stop is not None:
        stop.set()
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.05)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise RuntimeError(f"workload task {task.get_name()} failed") from task.exception()


class BrokerDown(Exception):
    """The in-process broker is not running (crashed or stopped): what a client sees as no answer."""


class InProcessBroker:
    """A restartable broker over one simulated disk and one fake clock."""

    def __init__(
        self,
        seed: int,
        *,
        options: BrokerOptions | None = None,
        disk: SimulatedDisk | None = None,
        clock: Clock | None = None,
        segment_size_bytes: int = 64 * 1024,
        flush_timeout_s: float = 5.0,
        checkpoint_interval_s: float = 0.05,
        **store_settings: Any,
    ) -> None:
        self.seed = seed
        self.disk = disk if disk is not None else SimulatedDisk(seed=seed)
        self.clock: Clock = clock if clock is not None else FakeClock()
        self.options = options or BrokerOptions(chore_interval_s=3600)
        self.config = StoreConfig(
            data_dir=DATA_DIR,
            segment_size_bytes=segment_size_bytes,
            flush_timeout_s=flush_timeout_s,
            checkpoint_interval_s=checkpoint_interval_s,
            consume_queue_entries_per_file=256,
            index_buffer_entries=64,
            **store_settings,
        )
        self._random = random.Random(seed)
        self.store: MessageStore | None = None
        self.broker: Broker | None = None
        self.restarts = 0

    async def start(self) -> Broker:
        assert self.broker is None, "the broker is running"
        store = MessageStore(self.config, self.disk, self.clock)
        await asyncio.to_thread(store.open)
        broker = Broker(store, self.clock, self.options, random_bytes=self._random.randbytes)
        try:
            await broker.open()
        except BaseException:
            store.halt()
            raise
        self.store, self.broker = store, broker
        return broker

    async def stop(self, *, crash: bool = False, power_loss: bool = False, torn: bool = False) -> None:
        """Close cleanly, or crash: ``crash`` as kill -9, ``power_loss`` (maybe ``torn``) as a power cut."""
        broker, store = self.broker, self.store
        if broker is None or store is None:
            return
        self.broker = self.store = None
        if crash or power_loss:
            broker._stopping.set()
            for task in (broker._chores, broker._timer_task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
            broker.timers.halt()
            await asyncio.to_thread(store.halt)
            if power_loss:
                self.disk.crash(torn=torn)
        else:
            await broker.close()
            await asyncio.to_thread(store.close)

    async def restart(self, *, crash: bool = False, power_loss: bool = False, torn: bool = False) -> Broker:
        await self.stop(crash=crash, power_loss=power_loss, torn=torn)
        self.restarts += 1
        return await self.start()

    async def crash_under_load(
        self,
        tasks: Iterable[asyncio.Task[Any]],
        stop: asyncio.Event,
        *,
        power_loss: bool = True,
        torn: bool = False,
    ) -> None:
        """Crash while the workload's tasks are mid-flight (writes unsynced), then end the tasks.

        No new send starts once ``stop`` is set; those under way see the crash as a real client
        would (an error, or no answer at all: their outcome stays unknown).
        """
        stop.set()
        await self.stop(crash=not power_loss, power_loss=power_loss, torn=torn)
        await halt_tasks(tasks, stop)

    @property
    def running(self) -> Broker:
        if self.broker is None:
            raise BrokerDown("the broker is not running")
        return self.broker

    @property
    def fake_clock(self) -> FakeClock:
        assert isinstance(self.clock, FakeClock), "this broker runs on the system clock"
        return self.clock

    @property
    def admin(self) -> Admin:
        return Admin(self.running)

    def put_group(self, group: GroupConfig) -> None:
        self.running.metadata.put_group(group)


@dataclass(slots=True)
class DrainResult:
    rounds: int
    fake_seconds: float
    real_seconds: float
    in_flight: int
    lag: int

    @property
    def seconds(self) -> float:
        """The drain's length as a consumer would see it: clock time advanced plus real time spent."""
        return self.fake_seconds + self.real_seconds


PoisonTest = Callable[[Delivery], bool]


class InProcessWorkload:
    """Unique-id sends and idempotent consumption through one :class:`InProcessBroker`."""

    def __init__(
        self,
        node: InProcessBroker,
        rng: random.Random,
        *,
        topic: str = "orders",
        group: str = "g",
        prefix: str = "m",
        inbox: SqliteInbox | None = None,
        poison: PoisonTest | None = None,
        invisible_s: float = 30.0,
    ) -> None:
        self.node = node
        self.rng = rng
        self.topic = topic
        self.group = group
        self.prefix = prefix
        self.history = History()
        self.inbox = inbox if inbox is not None else SqliteInbox(":memory:", consumer="inprocess")
        self.poison = poison
        self.invisible_s = invisible_s
        self._next = 0
        self.outcome_order: list[tuple[str, Outcome]] = []  # sends, in completion order
        self.completions: list[tuple[str, str, bool]] = []  # (send | ack, uid, ok) in completion order

    # ------------------------------------------------------------------ producing

    def new_uid(self) -> str:
        self._next += 1
        return f"{self.prefix}-{self._next:06d}"

    def message(self, uid: str, **fields: Any) -> Message:
        return Message(topic=self.topic, body=f"body of {uid}".encode(), message_id=uid, **fields)

    async def send(self, producer: str = "p", **fields: Any) -> tuple[str, Outcome]:
        """One synchronous send of a new uid; its attempt is recorded before, its outcome after."""
        uid = self.new_uid()
        self.history.attempt(uid, producer)
        broker = self.node.running
        try:
            result = (await broker.send([self.message(uid, **fields)]))[0]
        except BrokerError as error:
            result = error
        except asyncio.CancelledError:
            raise  # a crash cut it short: the outcome stays unknown
        except Exception as error:
            self.history.outcome(uid, Outcome.UNKNOWN, error=f"{type(error).__name__}: {error}")
            self.outcome_order.append((uid, Outcome.UNKNOWN))
            self.completions.append(("send", uid, False))
            return uid, Outcome.UNKNOWN
        if isinstance(result, SendReceipt):
            outcome = Outcome.OK
            self.history.outcome(uid, outcome, result.message_id)
        else:
            outcome = classify_error(result)
            self.history.outcome(uid, outcome, error=f"{result.code}: {result.message}")
        self.outcome_order.append((uid, outcome))
        self.completions.append(("send", uid, outcome is Outcome.OK))
        return uid, outcome

    async def produce(
        self, producer: str, count: int, stop: asyncio.Event | None = None, **fields: Any
    ) -> None:
        """Send ``count`` new uids one after another, or fewer if ``stop`` is set first."""
        for _ in range(count):
            if stop is not None and stop.is_set():
                return
            _, outcome = await self.send(producer, **fields)
            if outcome is not Outcome.OK:
                await asyncio.sleep(0.001)  # a client's backoff; and refusals never block the loop

    # ------------------------------------------------------------------ consuming

    async def receive(self, consumer: str = "c", max_messages: int = 16) -> list[Delivery]:
        broker = self.node.running
        store = broker.store
        store.dispatch_now()  # the dispatcher thread would do this just after the flush
        return await broker.receive(
            group=self.group,
            topic=self.topic,
            message_filter=EVERYTHING,
            max_messages=max_messages,
            invisible_s=self.invisible_s,
            client_id=consumer,
            long_poll_timeout_s=0,
        )

    async def handle(self, delivery: Delivery, consumer: str = "c", *, ack: bool = True) -> None:
        """What a consumer does with a delivery: log, apply to the inbox (or refuse), ack."""
        message = delivery.message
        uid = message.message_id
        self.history.apply_event(
            {"ev": "recv", "uid": uid, "mid": uid, "c": consumer, "att": delivery.delivery_attempt,
             "topic": message.topic, "q": message.queue_id, "off": message.queue_offset}
        )  # fmt: skip
        if self.poison is not None and self.poison(delivery):
            self.history.apply_event({"ev": "nack", "uid": uid})
            with contextlib.suppress(BrokerError, BrokerDown):
                await self.node.running.change_invisible_duration(
                    self.group, self.topic, delivery.receipt_handle, None
                )
            return
        first = self.inbox.apply(uid, uid)
        self.history.apply_event({"ev": "apply", "uid": uid, "first": first})
        if not ack:
            return
        try:
            await self.node.running.ack(self.group, self.topic, delivery.receipt_handle)
            self.history.apply_event({"ev": "ack", "uid": uid, "ok": True})
            self.completions.append(("ack", uid, True))
        except BrokerError as error:
            self.history.apply_event({"ev": "ack", "uid": uid, "ok": False, "err": error.code})
            self.completions.append(("ack", uid, False))
        except BrokerDown:
            self.history.apply_event({"ev": "ack", "uid": uid, "ok": False, "err": "broker down"})
            self.completions.append(("ack", uid, False))

    async def consume_once(self, consumer: str = "c", max_messages: int = 16, *, ack: bool = True) -> int:
        deliveries = await self.receive(consumer, max_messages)
        for delivery in deliveries:
            await self.handle(delivery, consumer, ack=ack)
        return len(deliveries)

    async def consume_loop(self, consumer: str, stop: asyncio.Event, max_messages: int = 16) -> None:
        """Consume until ``stop`` is set; errors (a broker going down) are tolerated, as a client would."""
        while not stop.is_set():
            try:
                got = await self.consume_once(consumer, max_messages)
            except (BrokerError, BrokerDown):
                got = 0
            if not got:
                await asyncio.sleep(0.001)

    # ------------------------------------------------------------------ ending a run

    def group_state(self) -> tuple[int, int]:
        """(in flight, lag) from the broker's group description (the admin API's)."""
        if self.node.running.metadata.find_group(self.group) is None:
            return 0, 0
        described = self.node.admin.group(self.group)
        return int(described["in_flight"]), int(described["lag"])

    async def drain(self, *, step_s: float | None = None, max_rounds: int = 2000) -> DrainResult:
        """Consume until the group has nothing in flight and no lag, moving the clock when idle."""
        started = time.monotonic()
        fake = 0.0
        rounds = 0
        step = step_s if step_s is not None else self.invisible_s + 1
        while rounds < max_rounds:
            rounds += 1
            got = await self.consume_once("drainer", 64)
            if got:
                continue
            in_flight, lag = self.group_state()
            if in_flight == 0 and lag == 0:
                break
            self.node.fake_clock.advance(step)
            fake += step
            await self.node.running.timers.deliver_due()
        in_flight, lag = self.group_state()
        return DrainResult(rounds, fake, time.monotonic() - started, in_flight, lag)

    def dead_letters(self) -> Counter[str]:
        broker = self.node.running
        config = broker.metadata.find_topic(dlq_topic(self.group))
        if config is None:
            return Counter()
        return stored_ids(broker.store, config.name, config.queue_count)

    def stored_copies(self) -> Counter[str]:
        broker = self.node.running
        config = broker.metadata.find_topic(self.topic)
        if config is None:
            return Counter()
        return stored_ids(broker.store, config.name, config.queue_count)

    async def check(self, *, forbidden: Iterable[str] = (), drain: DrainResult | None = None) -> CheckReport:
        result = drain if drain is not None else await self.drain()
        return check(
            self.history,
            effects=self.inbox.effect_counts(),
            dead_letters=self.dead_letters(),
            forbidden=set(forbidden),
            in_flight=result.in_flight,
            lag=result.lag,
            drain_s=result.seconds,
            stored_copies=self.stored_copies(),
        )


class Load:
    """Producer and consumer tasks over one workload, run until some sends complete, then crashed."""

    def __init__(self, workload: InProcessWorkload, *, producers: int = 4, consumers: int = 2) -> None:
        self.workload = workload
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = [
            asyncio.create_task(workload.produce(f"p{index}", 1 << 30, self.stop), name=f"producer-{index}")
            for index in range(producers)
        ]
        self.tasks += [
            asyncio.create_task(workload.consume_loop(f"c{index}", self.stop), name=f"consumer-{index}")
            for index in range(consumers)
        ]

    async def until_sent(self, more: int, timeout_s: float = 60.0) -> None:
        """Return once ``more`` further sends have completed (whatever their outcome)."""
        target = len(self.workload.outcome_order) + more
        deadline = time.monotonic() + timeout_s
        while len(self.workload.outcome_order) < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {more} sends completed within {timeout_s:g} s")
            if all(task.done() for task in self.tasks):
                await halt_tasks(self.tasks)  # raises what ended them
                raise RuntimeError("every workload task ended")
            await asyncio.sleep(0.001)

    async def until(self, condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the condition did not hold within {timeout_s:g} s")
            await asyncio.sleep(0.001)

    async def crash(self, *, power_loss: bool = True, torn: bool = False) -> None:
        await self.workload.node.crash_under_load(self.tasks, self.stop, power_loss=power_loss, torn=torn)

    async def halt(self) -> None:
        await halt_tasks(self.tasks, self.stop)


def new_message(
    topic: str, uid: str, message_type: MessageType = MessageType.NORMAL, **fields: Any
) -> Message:
    return Message(
        topic=topic, body=f"body of {uid}".encode(), message_id=uid, message_type=message_type, **fields
    )
