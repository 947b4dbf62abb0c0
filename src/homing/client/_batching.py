"""Coalescing concurrent sends into batched SendMessage calls: the producer's throughput lever.

Each send attempt of a batchable message is *submitted* with its topic and the broker endpoint
chosen for it, and gets a future of its own outcome. Submissions with the same (topic, endpoint)
gather in one open batch, which is sent when it is full (``max_messages`` or ``max_bytes``) or
when ``linger_s`` has passed since its first message, whichever comes first. While no call of
the producer is outstanding there is nothing to wait for: the batch is sent as soon as the event
loop has run what is ready (so sends started together, e.g. by one ``gather``, still share a
call), and a lone sender does not pay the linger on every message. One SendMessage call carries
the batch; the broker answers per entry and each future gets its own entry (or error).

Limits: a batch never exceeds ``max_messages`` nor ``max_bytes()`` (a single message larger than
that travels alone; the producer passes the smaller of its own limit and the broker's body limit,
so that a batch fits wherever the largest single message fits), and at most ``max_in_flight``
calls are outstanding per producer; while they are, new submissions keep filling the open batches,
so batches grow under load and stay small (one message after ``linger_s``) when it is light.

A caller that waits for its outcome (:meth:`Batcher.send`, what ``producer.send`` does) and finds
nothing outstanding and no open batch for its key opens the batch itself and, once the event loop
has run what is ready, sends it from its own task if nothing joined it: a lone sender (one message
at a time, as a synchronous producer) then costs no task and no hand-over between tasks, about a
third of the loop's passes per message. If others joined meanwhile, the batch goes as any other.

The batcher knows nothing of retries: the producer resubmits a failed attempt (same message id),
and the retry may travel with different companions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from homing.client._config import Endpoints
from homing.client._errors import ClientError, ClientStateError
from homing.protocol import definition_pb2, service_pb2

__all__ = ["Batcher"]

log = logging.getLogger("homing.client")

Outcome = service_pb2.SendResultEntry | ClientError
SendFunction = Callable[[Endpoints, Sequence[definition_pb2.Message]], Awaitable[list[Outcome]]]


@dataclass(slots=True)
class _Batch:
    endpoints: Endpoints
    messages: list[definition_pb2.Message] = field(default_factory=list)
    futures: list[asyncio.Future[service_pb2.SendResultEntry]] = field(default_factory=list)
    size_bytes: int = 0
    timer: asyncio.Handle | None = None


class Batcher:
    def __init__(
        self,
        send: SendFunction,
        *,
        linger_s: float,
        max_messages: int,
        max_bytes: Callable[[], int],
        max_in_flight: int,
    ) -> None:
        assert linger_s >= 0 and max_messages >= 1 and max_in_flight >= 1
        self._send = send
        self._linger_s = linger_s
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._open: dict[tuple[str, str], _Batch] = {}
        self._dispatches: set[asyncio.Task[None]] = set()
        self._outstanding = 0  # batches flushed whose outcomes are not yet delivered
        self._closed = False

    async def send(
        self, topic: str, endpoints: Endpoints, message: definition_pb2.Message
    ) -> service_pb2.SendResultEntry:
        """:meth:`submit` one attempt and wait for its entry (a lone send goes from this task)."""
        key = (topic, str(endpoints))
        if self._outstanding or key in self._open or self._closed:
            return await self.submit(topic, endpoints, message)
        future, batch = self._add(key, endpoints, message, lone=True)
        try:
            await asyncio.sleep(0)  # sends started together join the batch meanwhile
        except asyncio.CancelledError:
            if self._open.get(key) is batch:
                self._flush(key)  # the others that joined must not wait for a sender that left
            raise
        if self._open.get(key) is not batch:  # sent already (full, or the producer closes)
            return await future
        if len(batch.messages) > 1:
            self._flush(key)
            return await future
        del self._open[key]
        self._outstanding += 1
        try:
            async with self._in_flight:
                (outcome,) = await self._send(endpoints, batch.messages)
        finally:
            self._outstanding -= 1
        future.cancel()  # nobody else waits for it
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def submit(
        self, topic: str, endpoints: Endpoints, message: definition_pb2.Message
    ) -> asyncio.Future[service_pb2.SendResultEntry]:
        """Add one attempt to the open batch of (topic, endpoint); the future resolves to its entry."""
        return self._add((topic, str(endpoints)), endpoints, message, lone=False)[0]

    def _add(
        self, key: tuple[str, str], endpoints: Endpoints, message: definition_pb2.Message, *, lone: bool
    ) -> tuple[asyncio.Future[service_pb2.SendResultEntry], _Batch]:
        """The attempt's future, and the batch it joined (already flushed if that filled it)."""
        if self._closed:
            raise ClientStateError("the producer is closed")
        loop = asyncio.get_running_loop()
        size = message.ByteSize()
        max_bytes = self._max_bytes()
        batch = self._open.get(key)
        if batch is not None and (
            len(batch.messages) + 1 > self._max_messages or batch.size_bytes + size > max_bytes
        ):
            self._flush(key)
            batch = None
        if batch is None:
            batch = _Batch(endpoints)
            self._open[key] = batch
            if self._outstanding:
                batch.timer = loop.call_later(self._linger_s, self._flush, key)
            elif not lone:  # nothing outstanding: lingering would only add latency
                batch.timer = loop.call_soon(self._flush, key)
            # lone: the caller sends it (Batcher.send)
        future: asyncio.Future[service_pb2.SendResultEntry] = loop.create_future()
        batch.messages.append(message)
        batch.futures.append(future)
        batch.size_bytes += size
        if len(batch.messages) >= self._max_messages or batch.size_bytes >= max_bytes:
            self._flush(key)
        return future, batch

    def _flush(self, key: tuple[str, str]) -> None:
        batch = self._open.pop(key, None)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        self._outstanding += 1
        task = asyncio.get_running_loop().create_task(self._dispatch(batch), name="homing send batch")
        self._dispatches.add(task)
        task.add_done_callback(self._dispatches.discard)

    async def _dispatch(self, batch: _Batch) -> None:
        outcomes: Sequence[Outcome | BaseException]
        try:
            async with self._in_flight:
                outcomes = await self._send(batch.endpoints, batch.messages)
            assert len(outcomes) == len(batch.messages), "one outcome per message"
        except BaseException as error:  # deliver whatever happened to every waiting caller
            outcomes = [error] * len(batch.messages)
            if not isinstance(error, Exception):
                self._outstanding -= 1
                _resolve(batch.futures, outcomes)
                raise
        # Before the callers wake up: a caller that sends again at once must not find this batch
        # still counted (its message would linger for nothing).
        self._outstanding -= 1
        _resolve(batch.futures, outcomes)

    async def close(self) -> None:
        """Send what is open and wait for every outstanding call."""
        self._closed = True
        for key in list(self._open):
            self._flush(key)
        await self.wait_idle()

    async def wait_idle(self) -> None:
        while self._dispatches:
            await asyncio.gather(*list(self._dispatches), return_exceptions=True)


def _resolve(futures: Sequence[asyncio.Future[service_pb2.SendResultEntry]], outcomes: Sequence[Any]) -> None:
    for future, outcome in zip(futures, outcomes, strict=True):
        if future.done():  # the caller gave up (cancelled); the outcome is nobody's business now
            continue
        if isinstance(outcome, BaseException):
            if isinstance(outcome, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(outcome)
        else:
            future.set_result(outcome)
