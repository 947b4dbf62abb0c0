"""A broker in this process over a simulated disk and a fake clock: no sockets, no sleeps.

Public test double: :class:`BrokerHarness` starts, stops, crashes (``halt``, a kill -9) and
power-fails (the simulated disk drops unsynced writes) a real :class:`homing.broker.broker.Broker`,
so tests of code built on Homing can drive every failure deterministically.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from homing.broker.broker import Broker, BrokerOptions
from homing.broker.filters import CompiledFilter, compile_filter
from homing.broker.model import Delivery, Message, MessageType, SendReceipt
from homing.clock import FakeClock
from homing.store import MessageStore, SimulatedDisk, StoreConfig

__all__ = ["EVERYTHING", "FIFO", "BrokerHarness", "run"]

T = TypeVar("T")

EVERYTHING = compile_filter("TAG", "*")


class BrokerHarness:
    def __init__(self, options: BrokerOptions | None = None, seed: int = 1) -> None:
        self.disk = SimulatedDisk(seed=seed)
        self.clock = FakeClock()
        self.options = options or BrokerOptions(chore_interval_s=3600)
        self.random = random.Random(seed)
        self.store: MessageStore | None = None
        self.broker: Broker | None = None
        self._ids = 0

    async def start(self) -> Broker:
        config = StoreConfig(data_dir="/data", segment_size_bytes=256 * 1024, flush_timeout_s=5.0)
        self.store = MessageStore(config, self.disk, self.clock)
        self.store.open()
        self.broker = Broker(self.store, self.clock, self.options, random_bytes=self.random.randbytes)
        await self.broker.open()
        return self.broker

    async def stop(self, *, crash: bool = False, power_loss: bool = False) -> None:
        assert self.broker is not None and self.store is not None
        if crash or power_loss:
            self.broker._stopping.set()
            for task in (self.broker._chores, self.broker._timer_task):
                if task is not None:
                    task.cancel()
            self.broker.timers.halt()
            self.store.halt()
            if power_loss:
                self.disk.crash()
        else:
            await self.broker.close()
            self.store.close()
        self.broker = None
        self.store = None

    async def restart(self, *, crash: bool = False, power_loss: bool = False) -> Broker:
        await self.stop(crash=crash, power_loss=power_loss)
        return await self.start()

    def message(self, topic: str = "orders", body: bytes | None = None, **fields: object) -> Message:
        self._ids += 1
        message_id = f"01{self._ids:032X}"
        content = body if body is not None else f"body {self._ids}".encode()
        return Message(topic=topic, body=content, message_id=message_id, **fields)  # type: ignore[arg-type]

    async def send(self, *messages: Message) -> list[SendReceipt]:
        assert self.broker is not None
        outcomes = await self.broker.send(list(messages))
        receipts = []
        for outcome in outcomes:
            assert isinstance(outcome, SendReceipt), outcome
            receipts.append(outcome)
        return receipts

    async def receive(
        self,
        group: str = "g",
        topic: str = "orders",
        *,
        max_messages: int = 32,
        invisible_s: float | None = 30.0,
        message_filter: CompiledFilter = EVERYTHING,
        client_id: str = "client-1",
    ) -> list[Delivery]:
        assert self.broker is not None and self.store is not None
        # Dispatch runs on the store's thread right after a flush; a real consumer long-polls
        # until it has. Here, make everything durable readable first instead of waiting.
        self.store.dispatch_now()
        return await self.broker.receive(
            group=group,
            topic=topic,
            message_filter=message_filter,
            max_messages=max_messages,
            invisible_s=invisible_s,
            client_id=client_id,
            long_poll_timeout_s=0,
        )


def run(factory: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(factory())  # type: ignore[arg-type]


FIFO = MessageType.FIFO
