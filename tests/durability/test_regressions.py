"""Regression cases: each a known way real queues have lost or duplicated messages, pinned down.

All run an in-process broker on a simulated disk (a :class:`GatedDisk` where the window between
written and durable matters) and end with the checker, except where said.
"""

from __future__ import annotations

import asyncio
import errno
import json
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from durability.conftest import FaultRun
from homing.broker.broker import BrokerOptions
from homing.broker.metadata import TopicConfig
from homing.broker.model import Delivery, MessageType, SendReceipt
from homing.broker.transactions import CheckRequest
from homing.client import AsyncProducer, ClientError, Message
from homing.clock import SystemClock
from homing.store.atomic_file import read_framed_file, write_framed_file
from homing.testing.durability.faults import GatedDisk
from homing.testing.durability.history import Outcome
from homing.testing.durability.inprocess import InProcessBroker, InProcessWorkload, new_message
from homing.testing.durability.processes import OFFICIAL_PYTHON, OFFICIAL_WORKLOAD, ensure_official_client
from homing.testing.durability.serving import serve_grpc
from homing.testing.durability.workload import uid_of

FAULT = "R regressions"


async def _one_queue(node: InProcessBroker, topic: str = "orders") -> None:
    node.running.metadata.put_topic(TopicConfig(topic, queue_count=1))


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.002)):
        if condition():
            return
        await asyncio.sleep(0.002)
    raise TimeoutError("condition not reached")


def test_a_consumer_never_reads_beyond_the_durable_offset_nor_skips_after_a_crash(
    fault_run: FaultRun,
) -> None:
    async def scenario() -> None:
        disk = GatedDisk(fault_run.seed)
        node = InProcessBroker(fault_run.seed, disk=disk)
        await node.start()
        await _one_queue(node)
        workload = InProcessWorkload(node, fault_run.rng, invisible_s=5)
        for _ in range(5):
            assert (await workload.send())[1] is Outcome.OK
        assert await workload.consume_once(max_messages=64) == 5
        store = node.store
        assert store is not None
        disk.hold()  # the device stops: the next writes are written but not durable
        pending = [asyncio.create_task(workload.send()) for _ in range(3)]
        await _until(lambda: store.write_offset > store.flushed_offset)
        store.dispatch_now()
        early = await workload.receive(max_messages=64)
        assert early == [], f"delivered before durable: {[d.message.message_id for d in early]}"
        _, queue_end = store.queue_bounds("orders", 0)
        for row in node.admin.group("g")["queues"]:
            assert row["next_offset"] <= queue_end, f"the cursor passed the durable end: {row}"
        disk.crash()  # the power goes while the device holds the writes: they never land
        disk.release()
        await node.stop(crash=True)  # and the process is gone with it
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await node.start()
        after = [await workload.send() for _ in range(4)]
        assert all(outcome is Outcome.OK for _, outcome in after)
        fresh = await workload.receive(max_messages=64)
        got = sorted(delivery.message.message_id for delivery in fresh)
        assert got == sorted(uid for uid, _ in after), f"messages written after the crash were skipped: {got}"
        for delivery in fresh:
            await workload.handle(delivery)
        fault_run.record(await workload.check())

    asyncio.run(scenario())


def test_a_flush_error_is_never_followed_by_an_ok_for_the_same_write(fault_run: FaultRun) -> None:
    async def scenario() -> None:
        disk = GatedDisk(fault_run.seed)
        node = InProcessBroker(fault_run.seed, disk=disk)
        await node.start()
        workload = InProcessWorkload(node, fault_run.rng, invisible_s=5)
        for _ in range(3):
            assert (await workload.send())[1] is Outcome.OK
        store = node.store
        assert store is not None
        disk.hold()
        waiting = asyncio.create_task(workload.send())
        await _until(lambda: store.write_offset > store.flushed_offset and disk.syncs_started > 0)
        disk.fail_next_sync(errno.EIO, "commitlog")
        disk.release()
        uid, outcome = await waiting
        assert outcome is not Outcome.OK, "a write whose fsync failed was confirmed"
        assert store.fenced
        # Nothing retries the sync and then trusts it: the write stays unconfirmed, later writes
        # are refused, and what is durable does not move past the failed write.
        flushed = store.flushed_offset
        later_uid, later = await workload.send()
        assert later is not Outcome.OK
        assert store.flushed_offset == flushed
        await node.stop(power_loss=True)
        await node.start()
        assert (await workload.send())[1] is Outcome.OK
        report = await workload.check()
        assert uid not in report.recovered and later_uid not in report.recovered, "a failed write resurfaced"
        fault_run.record(report)

    asyncio.run(scenario())


def test_a_write_error_fences_even_the_writes_already_waiting_for_their_fsync(fault_run: FaultRun) -> None:
    # Broker fix (homing.broker.durable): a failed write fenced the store, but writes waiting for
    # an fsync at that moment were still confirmed afterwards; DURABILITY.md promises an error.
    async def scenario() -> None:
        disk = GatedDisk(fault_run.seed)
        node = InProcessBroker(fault_run.seed, disk=disk)
        await node.start()
        workload = InProcessWorkload(node, fault_run.rng, invisible_s=5)
        assert (await workload.send())[1] is Outcome.OK
        store = node.store
        assert store is not None
        disk.hold()
        waiting = asyncio.create_task(workload.send())
        await _until(lambda: disk.syncs_started > 0 and store.write_offset > store.flushed_offset)
        disk.fail_next_write(errno.EIO, "commitlog")
        _, failed = await workload.send()
        assert failed is not Outcome.OK and store.fenced
        disk.release()  # the waiting write's fsync now succeeds...
        _, outcome = await waiting
        assert outcome is not Outcome.OK, "confirmed after another write had failed and fenced the store"
        await node.stop(power_loss=True)
        await node.start()
        fault_run.record(await workload.check())

    asyncio.run(scenario())


def test_a_consumer_offset_beyond_the_end_of_its_queue_neither_restarts_nor_skips(
    fault_run: FaultRun,
) -> None:
    async def scenario() -> None:
        node = InProcessBroker(fault_run.seed)
        await node.start()
        await _one_queue(node)
        workload = InProcessWorkload(node, fault_run.rng, invisible_s=5)
        for _ in range(10):
            assert (await workload.send())[1] is Outcome.OK
        while await workload.consume_once(max_messages=64):
            pass
        await node.stop()
        # The saved progress says more than the queue holds (a restored or foreign pop-state file,
        # a log cut back by an operator): offsets 10-14 do not exist yet.
        payload = read_framed_file(node.disk, "/data/popstate")
        assert payload is not None
        state = json.loads(payload)
        for cursor in state["cursors"]:
            if cursor["t"] == "orders":
                cursor["c"] = cursor["n"] = 15
        write_framed_file(node.disk, "/data/popstate", json.dumps(state).encode())
        await node.start()
        after = [(await workload.send())[0] for _ in range(10)]
        delivered: list[str] = []
        while got := await workload.receive(max_messages=64):
            delivered += [delivery.message.message_id for delivery in got]
            for delivery in got:
                await workload.handle(delivery)
        assert sorted(delivered) == sorted(after), (
            f"expected exactly the 10 new messages, got {sorted(delivered)}: "
            "a cursor past the end must neither restart from 0 nor skip what comes next"
        )
        fault_run.record(await workload.check())

    asyncio.run(scenario())


def test_a_producer_timeout_shorter_than_the_flush_timeout_makes_no_duplicate_with_a_new_id(
    fault_run: FaultRun, tmp_path: Path
) -> None:
    # Each send's fsync takes longer than the producer's timeout but less than the broker's flush
    # timeout: the producer gives up and retries while the first attempt becomes durable. Copies
    # are allowed (at least once), but every copy of a message must carry its one message id.
    async def scenario() -> None:
        disk = GatedDisk(fault_run.seed)
        node = InProcessBroker(fault_run.seed, disk=disk, clock=SystemClock(), flush_timeout_s=5.0)
        await node.start()
        front = await serve_grpc(node.running, node.clock)
        workload = InProcessWorkload(node, fault_run.rng)
        try:
            await _one_queue(node)
            disk.sync_delay_s = 0.6
            sent: dict[str, str] = {}
            async with AsyncProducer(front.endpoint, topics=["orders"], send_timeout_s=0.25) as producer:
                for index in range(4):
                    uid = f"homing-{index}"
                    workload.history.attempt(uid, "homing")
                    try:
                        receipt = await producer.send(Message("orders", f"uid={uid};".encode()))
                        sent[uid] = receipt.message_id
                        workload.history.outcome(uid, Outcome.OK, receipt.message_id)
                    except ClientError as error:
                        workload.history.outcome(uid, Outcome.UNKNOWN, error=str(error))
            disk.sync_delay_s = 1.4  # the official client's timeout is whole seconds: 1 s here
            await _official_sends(front.endpoint, tmp_path, fault_run.seed, workload)
            disk.sync_delay_s = 0.0
            store = node.running.store
            store.dispatch_now()
            ids_by_uid: dict[str, set[str]] = {}
            copies: Counter[str] = Counter()
            offset, end = store.queue_bounds("orders", 0)
            records = store.read_queue("orders", 0, offset, 1000).records
            assert len(records) == end - offset
            for record in records:
                uid = uid_of(record.body)
                ids_by_uid.setdefault(uid, set()).add(record.message_id)
                copies[uid] += 1
            new_ids = {uid: ids for uid, ids in ids_by_uid.items() if len(ids) > 1}
            assert not new_ids, f"a retry stored a copy under a new message id: {new_ids}"
            assert sum(copies.values()) > len(copies), "the slow fsync should have made the clients retry"
            for uid, message_id in sent.items():
                assert ids_by_uid[uid] == {message_id}
            # Consume by uid (the official client's ids are its own): one effect per uid.
            while got := await workload.receive(max_messages=64):
                for delivery in got:
                    await _handle_by_body_uid(workload, delivery)
            report = await workload.check()
            report.notes.append(
                f"{sum(copies.values()) - len(copies)} retried copies, all under their first id"
            )
            fault_run.record(report)
        finally:
            await front.stop()
            await node.stop()

    asyncio.run(scenario())


async def _official_sends(endpoint: str, home: Path, seed: int, workload: InProcessWorkload) -> None:
    """Three sends with the official Python client (it makes its own ids and retries by itself)."""
    ensure_official_client()
    log = home / "official.jsonl"
    arguments = {"endpoint": endpoint, "topic": "orders", "log": str(log), "name": "official",
                 "prefix": "official", "count": 3, "seed": seed}  # fmt: skip
    command = [str(OFFICIAL_PYTHON), "-I", str(OFFICIAL_WORKLOAD), "produce", json.dumps(arguments)]
    environment = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, timeout=120, env=environment, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    for line in log.read_text().splitlines():
        event = json.loads(line)
        if event.get("ev") == "attempt":
            workload.history.attempt(event["uid"], "official")
        elif event.get("ev") == "outcome":
            workload.history.outcome(event["uid"], Outcome(event["outcome"]), event.get("mid", ""))


async def _handle_by_body_uid(workload: InProcessWorkload, delivery: Delivery) -> None:
    uid = uid_of(delivery.message.body, delivery.message.message_id)
    message = delivery.message
    workload.history.apply_event(
        {"ev": "recv", "uid": uid, "mid": message.message_id, "c": "c", "att": delivery.delivery_attempt}
    )
    first = workload.inbox.apply(uid, message.message_id)
    workload.history.apply_event({"ev": "apply", "uid": uid, "first": first})
    await workload.node.running.ack(workload.group, workload.topic, delivery.receipt_handle)


def test_a_half_message_stored_in_the_same_millisecond_as_a_check_is_still_checked(
    fault_run: FaultRun,
) -> None:
    async def scenario() -> None:
        options = BrokerOptions(
            chore_interval_s=3600, transaction_timeout_s=6, transaction_check_interval_s=60
        )
        node = InProcessBroker(fault_run.seed, options=options)
        broker = await node.start()
        clock = node.fake_clock
        workload = InProcessWorkload(node, fault_run.rng, invisible_s=5)
        checked: list[str] = []

        async def checker(request: CheckRequest) -> bool:
            checked.append(request.message.message_id)
            await broker.end_transaction(
                topic=request.topic, message_id=request.message.message_id,
                transaction_id=request.transaction_id, commit=True, source="check",
            )  # fmt: skip
            return True

        broker.transaction_checker = checker

        async def prepare() -> str:
            uid = workload.new_uid()
            workload.history.attempt(uid, "tx")
            [receipt] = await broker.send([new_message("orders", uid, MessageType.TRANSACTION)])
            assert isinstance(receipt, SendReceipt), receipt
            workload.history.outcome(uid, Outcome.OK, uid)
            return uid

        first = await prepare()
        clock.advance(6)
        scan_ms = clock.now_ms()
        await broker._check_transactions()
        assert checked == [first]
        second = await prepare()  # stored in the very millisecond of that check
        third = await prepare()
        assert clock.now_ms() == scan_ms
        await broker._check_transactions()
        assert checked == [first], "checked before its timeout"
        clock.advance(5.999)
        await broker._check_transactions()
        assert checked == [first], "checked before its timeout"
        clock.advance(0.001)
        await broker._check_transactions()
        assert sorted(checked) == sorted([first, second, third]), "a half stored during a check was skipped"
        fault_run.record(await workload.check())

    asyncio.run(scenario())
