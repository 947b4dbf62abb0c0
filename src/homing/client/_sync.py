"""The synchronous twins: the asyncio clients, driven from an event loop in a thread of their own.

Written once (asyncio), used twice: each twin owns a daemon thread running an event loop, builds
its asyncio client on that loop, and turns every method into "run this coroutine there and wait
for its result". Behaviour is therefore identical by construction (batching, retries, ack after
the handler, shutdown), and a test checks that every twin has exactly the methods and parameters
of its asyncio original.

Threads: any number of threads may call one twin at once (concurrent sends are batched together
on its loop). Plain-function handlers and checkers run in a thread pool, never on the loop; a
handler must not call a twin's methods of the *same* client (that would wait for its own loop).
"""

from __future__ import annotations

import asyncio
import threading
import types
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Self, TypeVar, overload

from homing.client._config import ClientConfig
from homing.client._consumer import AsyncSimpleConsumer
from homing.client._errors import ClientError, ClientStateError
from homing.client._message import FilterExpression, Message, ReceivedMessage, SendReceipt
from homing.client._producer import (
    DEFAULT_MAX_DELAY_S,
    DEFAULT_SEND_TIMEOUT_S,
    AsyncProducer,
    AsyncTransaction,
    TransactionChecker,
)
from homing.client._push_consumer import AsyncPushConsumer, MessageHandler
from homing.client._retry import RetryPolicy
from homing.client._session import Timings
from homing.client._transport import Transport

__all__ = ["Producer", "PushConsumer", "SimpleConsumer", "Transaction"]

_T = TypeVar("_T")
_Handler = TypeVar("_Handler", bound=MessageHandler)


class _LoopThread:
    """An event loop running in a daemon thread until stopped."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            leftovers = asyncio.all_tasks(self._loop)
            for task in leftovers:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coroutine`` on the loop and wait for it; Ctrl-C cancels it."""
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise ClientStateError(
                "a synchronous client was called from its own event loop: use the async client"
            )
        if not self._thread.is_alive() or self._loop.is_closed():
            coroutine.close()
            raise ClientStateError("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()


async def _build(factory: Callable[[], _T]) -> _T:
    """Make an asyncio client inside its loop (grpc.aio objects belong to the loop they are made on)."""
    return factory()


class Producer:
    """The synchronous twin of :class:`AsyncProducer`: same arguments, same behaviour.

    ``with Producer(config) as producer: receipt = producer.send(Message("orders", b"..."))``
    """

    def __init__(
        self,
        config: ClientConfig | str | None = None,
        *,
        topics: Iterable[str] = (),
        checker: TransactionChecker | None = None,
        retry_policy: RetryPolicy | None = None,
        send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
        linger_s: float = 0.001,
        max_batch_messages: int = 256,
        max_batch_bytes: int = 4 * 1024 * 1024,
        max_in_flight_requests: int = 64,
        max_delay_s: float = DEFAULT_MAX_DELAY_S,
        transport: Transport | None = None,
        timings: Timings | None = None,
    ) -> None:
        self._thread = _LoopThread("homing-producer")
        try:
            self._async = self._thread.run(
                _build(
                    lambda: AsyncProducer(
                        config,
                        topics=topics,
                        checker=checker,
                        retry_policy=retry_policy,
                        send_timeout_s=send_timeout_s,
                        linger_s=linger_s,
                        max_batch_messages=max_batch_messages,
                        max_batch_bytes=max_batch_bytes,
                        max_in_flight_requests=max_in_flight_requests,
                        max_delay_s=max_delay_s,
                        transport=transport,
                        timings=timings,
                    )
                )
            )
        except BaseException:
            self._thread.stop()
            raise

    @property
    def client_id(self) -> str:
        return self._async.client_id

    def start(self) -> None:
        self._thread.run(self._async.start())

    def close(self) -> None:
        try:
            self._thread.run(self._async.close())
        except ClientStateError:
            pass  # already closed
        finally:
            self._thread.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> None:
        self.close()

    def send(self, message: Message) -> SendReceipt:
        return self._thread.run(self._async.send(message))

    def send_oneway(self, message: Message) -> str:
        return self._thread.run(self._async.send_oneway(message))

    def recall(self, receipt: SendReceipt) -> None:
        self._thread.run(self._async.recall(receipt))

    def transaction(self) -> Transaction:
        return Transaction(self._thread, self._async.transaction())

    send.__doc__ = AsyncProducer.send.__doc__
    send_oneway.__doc__ = AsyncProducer.send_oneway.__doc__
    recall.__doc__ = AsyncProducer.recall.__doc__
    transaction.__doc__ = AsyncProducer.transaction.__doc__
    start.__doc__ = AsyncProducer.start.__doc__
    close.__doc__ = AsyncProducer.close.__doc__


class Transaction:
    """The synchronous twin of :class:`AsyncTransaction` (``with producer.transaction() as tx:``)."""

    def __init__(self, thread: _LoopThread, transaction: AsyncTransaction) -> None:
        self._thread = thread
        self._async = transaction

    @property
    def state(self) -> str:
        return self._async.state

    def send(self, message: Message) -> SendReceipt:
        return self._thread.run(self._async.send(message))

    def commit(self) -> None:
        self._thread.run(self._async.commit())

    def rollback(self) -> None:
        self._thread.run(self._async.rollback())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> None:
        self._thread.run(self._async.__aexit__(exc_type, exc, tb))


class SimpleConsumer:
    """The synchronous twin of :class:`AsyncSimpleConsumer`: same arguments, same behaviour."""

    def __init__(
        self,
        config: ClientConfig | str | None = None,
        *,
        group: str,
        subscriptions: Mapping[str, str | FilterExpression],
        await_duration_s: float = 20.0,
        transport: Transport | None = None,
        timings: Timings | None = None,
    ) -> None:
        self._thread = _LoopThread("homing-simple-consumer")
        try:
            self._async = self._thread.run(
                _build(
                    lambda: AsyncSimpleConsumer(
                        config,
                        group=group,
                        subscriptions=subscriptions,
                        await_duration_s=await_duration_s,
                        transport=transport,
                        timings=timings,
                    )
                )
            )
        except BaseException:
            self._thread.stop()
            raise

    @property
    def group(self) -> str:
        return self._async.group

    @property
    def client_id(self) -> str:
        return self._async.client_id

    def start(self) -> None:
        self._thread.run(self._async.start())

    def close(self) -> None:
        try:
            self._thread.run(self._async.close())
        except ClientStateError:
            pass
        finally:
            self._thread.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> None:
        self.close()

    def receive(
        self, max_messages: int = 16, invisible_duration: timedelta | float = 60.0
    ) -> list[ReceivedMessage]:
        return self._thread.run(self._async.receive(max_messages, invisible_duration))

    def ack(self, message: ReceivedMessage) -> None:
        self._thread.run(self._async.ack(message))

    def ack_many(self, messages: Sequence[ReceivedMessage]) -> list[ClientError | None]:
        return self._thread.run(self._async.ack_many(messages))

    def change_invisible_duration(
        self, message: ReceivedMessage, invisible_duration: timedelta | float
    ) -> None:
        self._thread.run(self._async.change_invisible_duration(message, invisible_duration))

    receive.__doc__ = AsyncSimpleConsumer.receive.__doc__
    ack.__doc__ = AsyncSimpleConsumer.ack.__doc__
    ack_many.__doc__ = AsyncSimpleConsumer.ack_many.__doc__
    change_invisible_duration.__doc__ = AsyncSimpleConsumer.change_invisible_duration.__doc__


class PushConsumer:
    """The synchronous twin of :class:`AsyncPushConsumer`: same arguments, same behaviour.

    Plain-function handlers run in a pool of ``max_concurrency`` threads (coroutine functions on
    the consumer's own event loop).
    """

    def __init__(
        self,
        config: ClientConfig | str | None = None,
        *,
        group: str,
        max_concurrency: int = 20,
        retry_policy: RetryPolicy | None = None,
        shutdown_timeout_s: float = 30.0,
        assignment_interval_s: float = 5.0,
        transport: Transport | None = None,
        timings: Timings | None = None,
    ) -> None:
        self._thread = _LoopThread("homing-push-consumer")
        try:
            self._async = self._thread.run(
                _build(
                    lambda: AsyncPushConsumer(
                        config,
                        group=group,
                        max_concurrency=max_concurrency,
                        retry_policy=retry_policy,
                        shutdown_timeout_s=shutdown_timeout_s,
                        assignment_interval_s=assignment_interval_s,
                        transport=transport,
                        timings=timings,
                    )
                )
            )
        except BaseException:
            self._thread.stop()
            raise

    @property
    def group(self) -> str:
        return self._async.group

    @property
    def client_id(self) -> str:
        return self._async.client_id

    @overload
    def subscribe(
        self, topic: str, handler: _Handler, *, tag: str | None = None, sql: str | None = None
    ) -> _Handler: ...

    @overload
    def subscribe(
        self, topic: str, handler: None = None, *, tag: str | None = None, sql: str | None = None
    ) -> Callable[[_Handler], _Handler]: ...

    def subscribe(
        self, topic: str, handler: _Handler | None = None, *, tag: str | None = None, sql: str | None = None
    ) -> _Handler | Callable[[_Handler], _Handler]:
        return self._async.subscribe(topic, handler, tag=tag, sql=sql)

    def start(self) -> None:
        self._thread.run(self._async.start())

    def close(self) -> None:
        try:
            self._thread.run(self._async.close())
        except ClientStateError:
            pass
        finally:
            self._thread.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> None:
        self.close()

    subscribe.__doc__ = AsyncPushConsumer.subscribe.__doc__
    start.__doc__ = AsyncPushConsumer.start.__doc__
    close.__doc__ = AsyncPushConsumer.close.__doc__
