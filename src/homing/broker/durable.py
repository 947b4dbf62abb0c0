"""Append to the store from an event loop and wait, without blocking the loop, until it is durable.

The store releases durability waiters from its flusher thread; this bridges that to an asyncio
future. A flush that takes longer than the store's flush timeout is reported as the protocol's
``MASTER_PERSISTENCE_TIMEOUT`` and never as success; a fenced store or a full disk map to their
own statuses. Once the store is fenced nothing more is confirmed, not even a write whose sync
succeeded just before: after the first error a client sees, no OK follows. Every durable write of
the broker (sends, acks, timer and transaction events) goes through :func:`append_durably`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Sequence

from homing.broker.errors import BrokerError
from homing.store import (
    AppendResult,
    DiskFullError,
    InvalidRecordError,
    MessageStore,
    NewRecord,
    StoreClosedError,
    StoreFencedError,
)

__all__ = ["append_durably", "wait_durable"]


class _LoopBridge:
    """Settles futures of one event loop from the flusher thread, waking the loop once per batch.

    A group commit releases many waiters at once; each used to cost its own
    ``call_soon_threadsafe`` (a self-pipe write and a loop wake-up). Here the first settle of a
    batch schedules one drain and the others only join the queue.
    """

    __slots__ = ("_lock", "_loop", "_pending", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # weak: the bridge is the value of a weak-keyed map of loops
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Future[None], BaseException | None]] = []
        self._scheduled = False

    def settle(self, future: asyncio.Future[None], error: BaseException | None) -> None:
        """Any thread: resolve ``future`` (None: success) on its loop, unless already done there."""
        with self._lock:
            self._pending.append((future, error))
            if self._scheduled:
                return
            self._scheduled = True
        loop = self._loop()
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            self._scheduled = False
        for future, error in pending:
            if future.done():  # timed out or cancelled meanwhile
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)


_bridges: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopBridge] = weakref.WeakKeyDictionary()
_bridges_lock = threading.Lock()


def _bridge(loop: asyncio.AbstractEventLoop) -> _LoopBridge:
    bridge = _bridges.get(loop)
    if bridge is None:
        with _bridges_lock:
            bridge = _bridges.get(loop)
            if bridge is None:
                bridge = _bridges[loop] = _LoopBridge(loop)
    return bridge


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


async def wait_durable(store: MessageStore, end_offset: int) -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    bridge = _bridge(loop)
    store.add_durability_callback(end_offset, lambda error: bridge.settle(future, error))
    timer = loop.call_later(store.config.flush_timeout_s, _expire, future)
    try:
        await future  # cancelling the caller cancels the future; a late settle then finds it done
        if store.fenced:
            # A write failed elsewhere while this one waited (the flusher fails only the waiters
            # of a failed sync): once the store is fenced, nothing more is confirmed.
            raise StoreFencedError("the store was fenced before this write could be confirmed")
    except TimeoutError as error:
        raise BrokerError(
            "MASTER_PERSISTENCE_TIMEOUT",
            f"not durable within the flush timeout of {store.config.flush_timeout_s:g} s; not acknowledged",
        ) from error
    except StoreFencedError as error:
        message = f"storage failure, write not acknowledged: {error}"
        raise BrokerError("INTERNAL_SERVER_ERROR", message) from error
    finally:
        timer.cancel()


async def append_durably(store: MessageStore, records: Sequence[NewRecord]) -> AppendResult:
    """Append ``records`` (all or nothing) and return once they are durable."""
    try:
        result = store.append(records)
    except DiskFullError as error:
        raise BrokerError("TOO_MANY_REQUESTS", f"disk full, write refused: {error}") from error
    except InvalidRecordError as error:
        raise BrokerError("BAD_REQUEST", str(error)) from error
    except StoreFencedError as error:
        raise BrokerError("INTERNAL_SERVER_ERROR", f"storage failure, write refused: {error}") from error
    except StoreClosedError as error:
        raise BrokerError("INTERNAL_SERVER_ERROR", "the broker is shutting down") from error
    await wait_durable(store, result.end_offset)
    return result
