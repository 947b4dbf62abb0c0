"""The Redis inbox on a real Redis: its guarantees, and each documented weakness shown happening."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import Counter
from dataclasses import dataclass

import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from homing.inbox import AsyncRedisInbox, InboxOutcome, MessageInProgress, RedisInbox


@dataclass(frozen=True)
class Delivery:
    message_id: str


@pytest.fixture
def inbox(redis_client: redis.Redis, redis_namespace: str) -> RedisInbox:
    return RedisInbox(redis_client, "payments", namespace=redis_namespace, lease_s=30, remember_s=3600)


def test_a_message_runs_once_and_its_redelivery_is_a_duplicate(inbox: RedisInbox) -> None:
    runs: list[str] = []

    @inbox.idempotent()
    def handle(message: Delivery) -> str:
        runs.append(message.message_id)
        return "ok"

    assert handle(Delivery("m-1")) == InboxOutcome("m-1", duplicate=False, result="ok")
    assert handle(Delivery("m-1")) == InboxOutcome("m-1", duplicate=True)
    assert runs == ["m-1"]


def test_keys_expire_after_the_lease_and_after_remember(inbox: RedisInbox, redis_client: redis.Redis) -> None:
    key = inbox.key("m-1")
    lease_ttls: list[int] = []
    inbox.process("m-1", lambda: lease_ttls.append(redis_client.pttl(key)))
    [lease_ttl] = lease_ttls
    assert 0 < lease_ttl <= 30_000  # while running: the lease
    assert redis_client.get(key) == b"done"
    assert 30_000 < redis_client.pttl(key) <= 3_600_000  # afterwards: remembered for remember_s


def test_a_failing_handler_releases_its_lease_so_the_redelivery_runs(
    inbox: RedisInbox, redis_client: redis.Redis
) -> None:
    def fail() -> None:
        raise RuntimeError("downstream said no")

    with pytest.raises(RuntimeError):
        inbox.process("m-1", fail)
    assert redis_client.get(inbox.key("m-1")) is None
    assert inbox.process("m-1", lambda: "second try") == InboxOutcome("m-1", False, "second try")


def test_a_delivery_during_another_workers_lease_is_refused_not_acknowledged(inbox: RedisInbox) -> None:
    def redeliver_meanwhile() -> None:
        with pytest.raises(MessageInProgress) as refused:
            inbox.process("m-1", lambda: pytest.fail("ran twice at once"))
        assert refused.value.retriable

    inbox.process("m-1", redeliver_meanwhile)
    assert inbox.process("m-1", lambda: pytest.fail("ran after done")).duplicate


def test_a_worker_whose_lease_expired_does_not_release_the_new_owners_lease(
    inbox: RedisInbox, redis_client: redis.Redis
) -> None:
    key = inbox.key("m-1")

    def slow_worker() -> None:
        # The lease runs out while the handler still runs, and another worker takes the message.
        redis_client.set(key, b"processing:the-new-owner", px=30_000)
        raise RuntimeError("the slow worker fails at last")

    with pytest.raises(RuntimeError):
        inbox.process("m-1", slow_worker)
    assert redis_client.get(key) == b"processing:the-new-owner"


def test_weakness_a_crash_between_effect_and_done_runs_the_handler_again(
    inbox: RedisInbox, redis_client: redis.Redis
) -> None:
    effects: list[str] = []

    class Killed(BaseException):
        """The worker dies after the effect, before the key says done."""

    def effect_then_die() -> None:
        effects.append("charged")
        raise Killed

    with pytest.raises(Killed):
        inbox.process("m-1", effect_then_die)
    # (A real kill -9 skips the release; the lease then simply runs out, which deleting shows.)
    redis_client.delete(inbox.key("m-1"))
    inbox.process("m-1", lambda: effects.append("charged"))
    assert effects == ["charged", "charged"]  # the documented duplicate effect


def test_weakness_a_forgotten_key_runs_the_handler_again(
    inbox: RedisInbox, redis_client: redis.Redis
) -> None:
    runs: list[int] = []
    inbox.process("m-1", lambda: runs.append(1))
    redis_client.delete(inbox.key("m-1"))  # evicted, expired, lost in a failover or a restart
    inbox.process("m-1", lambda: runs.append(2))
    assert runs == [1, 2]


def test_an_unreachable_redis_never_runs_the_handler() -> None:
    # Port 1 on loopback refuses at once; no retries, so the test does not wait out a backoff.
    client = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    inbox = RedisInbox(client, "payments")
    with pytest.raises(redis.ConnectionError):
        inbox.process("m-1", lambda: pytest.fail("ran without the check"))


def test_a_client_that_decodes_responses_works_the_same(redis_url: str, redis_namespace: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    inbox = RedisInbox(client, "payments", namespace=redis_namespace)
    assert not inbox.process("m-1", lambda: None).duplicate
    assert inbox.process("m-1", lambda: None).duplicate
    client.close()


def test_concurrent_deliveries_run_the_handler_at_most_once(inbox: RedisInbox) -> None:
    runs = Counter[str]()
    results: list[str] = []
    start = threading.Barrier(8)
    lock = threading.Lock()

    def deliver() -> None:
        start.wait()
        for index in range(50):
            message_id = f"m-{index}"
            try:
                outcome = inbox.process(message_id, functools.partial(runs.update, [message_id]))
                with lock:
                    results.append("duplicate" if outcome.duplicate else "ran")
            except MessageInProgress:
                with lock:
                    results.append("in progress")

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert set(runs.values()) == {1} and len(runs) == 50
    assert Counter(results)["ran"] == 50
    assert len(results) == 8 * 50


def test_the_async_variant(redis_url: str, redis_namespace: str) -> None:
    async def scenario() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        inbox = AsyncRedisInbox(client, "payments", namespace=redis_namespace, lease_s=30)
        runs: list[str] = []

        @inbox.idempotent()
        async def handle(message: Delivery) -> int:
            runs.append(message.message_id)
            await asyncio.sleep(0)
            return len(runs)

        assert await handle(Delivery("m-1")) == InboxOutcome("m-1", duplicate=False, result=1)
        assert (await handle(Delivery("m-1"))).duplicate

        async def fail() -> None:
            raise RuntimeError("no")

        with pytest.raises(RuntimeError):
            await inbox.process("m-2", fail)
        assert await client.get(inbox.key("m-2")) is None

        async def redeliver_meanwhile() -> None:
            with pytest.raises(MessageInProgress):
                await inbox.process("m-3", fail)

        await inbox.process("m-3", redeliver_meanwhile)
        assert runs == ["m-1"]
        await client.aclose()

    asyncio.run(scenario())
