"""Append to the store from an event loop and wait, without blocking the loop, until it is durable.

Theory of operation. Every durable write of the broker (sends, acks, pops, timer and transaction
events) goes through :func:`append_durably`. The appends asked for during one pass of the event
loop are written together, at the end of that pass, as *one* store append, and wait for
durability together (one callback from the store's flusher, one timeout timer): 16 concurrent
SendMessage calls cost one ``pwrite``, one wake-up of the flusher and usually one fsync, not 16 of
each. Each caller still gets its own records' outcome, and its records are written all or nothing
(they are a contiguous part of an all-or-nothing append). Appends keep the order of the calls: a
caller's records take their offsets in the order the calls started.

If the combined append is refused as invalid (a record too big for a segment), each call is
appended alone, so only the offending call fails. A full disk, a fenced or closed store fails every
call of the pass, as it would have failed each alone.

The store releases durability waiters from its flusher thread; :class:`_LoopBridge` hands that to
the event loop with one wake-up per release, however many batches it covers. A flush that takes
longer than the store's flush timeout is reported as the protocol's ``MASTER_PERSISTENCE_TIMEOUT``
and never as success; a fenced store or a full disk map to their own statuses. Once the store is
fenced nothing more is confirmed, not even a write whose sync succeeded just before: after the
first error a client sees, no OK follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from homing.broker.errors import BrokerError
from homing.store import (
    DiskFullError,
    InvalidRecordError,
    MessageStore,
    NewRecord,
    StoreClosedError,
    StoreFencedError,
)
from homing.store.message_store import AppendedRecord

__all__ = ["DurableAppend", "append_durably", "wait_durable"]


@dataclass(frozen=True, slots=True)
class DurableAppend:
    """Where the records of one :func:`append_durably` call went, in the order they were given."""

    records: Sequence[AppendedRecord]
    end_offset: int  # durable (the flushed offset reached it)


_Settle = Callable[[BaseException | None], None]


class _LoopBridge:
    """Runs durability outcomes on one event loop from the flusher thread, one wake-up per batch.

    A group commit releases many waiters at once; each used to cost its own
    ``call_soon_threadsafe`` (a self-pipe write and a loop wake-up). Here the first release of a
    batch schedules one drain and the others only join the queue.
    """

    __slots__ = ("_lock", "_loop", "_pending", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # weak: the bridge is the value of a weak-keyed map of loops
        self._lock = threading.Lock()
        self._pending: list[tuple[_Settle, BaseException | None]] = []
        self._scheduled = False

    def settle(self, settle: _Settle, error: BaseException | None) -> None:
        """Any thread: call ``settle(error)`` (None: durable) on the loop."""
        with self._lock:
            self._pending.append((settle, error))
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
        for settle, error in pending:
            settle(error)


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


# ---------------------------------------------------------------------------------- errors


def _timeout_error(store: MessageStore) -> BrokerError:
    error = BrokerError(
        "MASTER_PERSISTENCE_TIMEOUT",
        f"not durable within the flush timeout of {store.config.flush_timeout_s:g} s; not acknowledged",
    )
    error.__cause__ = TimeoutError()
    return error


def _durability_error(error: BaseException) -> BaseException:
    """What a waiter raises when the flusher reports ``error`` instead of durability."""
    if isinstance(error, StoreFencedError):
        mapped = BrokerError("INTERNAL_SERVER_ERROR", f"storage failure, write not acknowledged: {error}")
        mapped.__cause__ = error
        return mapped
    return error


def _append_error(error: Exception) -> BaseException:
    """What a caller raises when the store refuses its append."""
    mapped: BrokerError
    if isinstance(error, DiskFullError):
        mapped = BrokerError("TOO_MANY_REQUESTS", f"disk full, write refused: {error}")
    elif isinstance(error, InvalidRecordError):
        mapped = BrokerError("BAD_REQUEST", str(error))
    elif isinstance(error, StoreFencedError):
        mapped = BrokerError("INTERNAL_SERVER_ERROR", f"storage failure, write refused: {error}")
    elif isinstance(error, StoreClosedError):
        mapped = BrokerError("INTERNAL_SERVER_ERROR", "the broker is shutting down")
    else:
        return error
    mapped.__cause__ = error
    return mapped


# ---------------------------------------------------------------------------------- waiting


async def wait_durable(store: MessageStore, end_offset: int) -> None:
    """Return once everything up to ``end_offset`` is durable (see the module docstring for errors)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if not future.done():  # timed out or cancelled meanwhile
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    def expire() -> None:
        if not future.done():
            future.set_exception(TimeoutError())

    bridge = _bridge(loop)
    store.add_durability_callback(end_offset, lambda error: bridge.settle(settle, error))
    timer = loop.call_later(store.config.flush_timeout_s, expire)
    try:
        await future  # cancelling the caller cancels the future; a late settle then finds it done
    except TimeoutError as error:
        raise _timeout_error(store) from error
    except StoreFencedError as error:
        raise _durability_error(error) from error
    finally:
        timer.cancel()
    if store.fenced:
        # The store already fails every waiter its fence catches; a write covered by a sync published
        # just before the fence may still be released after it. The protocol promise is stricter:
        # after the first error a client sees, no OK follows.
        raise _durability_error(StoreFencedError("the store was fenced before this write could be confirmed"))


_Part = tuple[Sequence[NewRecord], "asyncio.Future[DurableAppend]"]


class _Batch:
    """The calls of one combined append, waiting for its durability together (on the loop)."""

    __slots__ = ("_parts", "_results", "_store", "_timer")

    def __init__(
        self, store: MessageStore, parts: list[_Part], records: Sequence[AppendedRecord], end_offset: int
    ) -> None:
        self._store = store
        self._parts = parts
        if len(parts) == 1:
            self._results = [DurableAppend(records, end_offset)]
        else:
            self._results = []
            start = 0
            for part, _ in parts:
                end = start + len(part)
                self._results.append(DurableAppend(records[start:end], end_offset))
                start = end
        loop = asyncio.get_running_loop()
        bridge = _bridge(loop)
        self._timer = loop.call_later(store.config.flush_timeout_s, self.settle, TimeoutError())
        store.add_durability_callback(end_offset, lambda error: bridge.settle(self.settle, error))

    def settle(self, error: BaseException | None) -> None:
        self._timer.cancel()
        if error is None and self._store.fenced:
            # As in wait_durable: a release that reaches the loop after the fence is not an OK.
            error = StoreFencedError("the store was fenced before this write could be confirmed")
        for (_, future), result in zip(self._parts, self._results, strict=True):
            if future.done():  # settled already (a timeout), or the caller was cancelled
                continue
            if error is None:
                future.set_result(result)
            elif isinstance(error, TimeoutError):
                future.set_exception(_timeout_error(self._store))
            else:
                future.set_exception(_durability_error(error))


class _Appender:
    """The appends of one store asked for during one pass of one event loop, written together."""

    __slots__ = ("_loop", "_pending", "_scheduled", "_store")

    def __init__(self, store: MessageStore, loop: asyncio.AbstractEventLoop) -> None:
        # Weak: the appender is the value of a map keyed (weakly) by the store.
        self._store = weakref.ref(store)
        self._loop = loop
        self._pending: list[_Part] = []
        self._scheduled = False

    def submit(self, records: Sequence[NewRecord]) -> asyncio.Future[DurableAppend]:
        future: asyncio.Future[DurableAppend] = self._loop.create_future()
        self._pending.append((records, future))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._write)
        return future

    def _write(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        store = self._store()
        if store is None:  # pragma: no cover - callers hold the store while they wait
            return
        limit = store.config.max_batch_records
        batch: list[_Part] = []
        count = 0
        for part in pending:
            if batch and count + len(part[0]) > limit:
                self._write_batch(store, batch)
                batch, count = [], 0
            batch.append(part)
            count += len(part[0])
        if batch:
            self._write_batch(store, batch)

    def _write_batch(self, store: MessageStore, parts: list[_Part]) -> None:
        records = parts[0][0] if len(parts) == 1 else [record for part, _ in parts for record in part]
        try:
            result = store.append(records)
        except InvalidRecordError as error:
            if len(parts) == 1:
                _fail(parts, error)
            else:
                for part in parts:  # alone, so that only the offending call fails
                    self._write_batch(store, [part])
            return
        except Exception as error:  # every caller learns what happened to its append
            _fail(parts, error)
            return
        _Batch(store, parts, result.records, result.end_offset)


def _fail(parts: list[_Part], error: Exception) -> None:
    for _, future in parts:
        if not future.done():
            future.set_exception(_append_error(error))


_appenders: weakref.WeakKeyDictionary[MessageStore, _Appender] = weakref.WeakKeyDictionary()


async def append_durably(store: MessageStore, records: Sequence[NewRecord]) -> DurableAppend:
    """Append ``records`` (all or nothing) and return once they are durable.

    The append itself happens at the end of the current pass of the event loop, together with the
    other appends asked for in that pass (see the module docstring), in the order of the calls.
    """
    loop = asyncio.get_running_loop()
    appender = _appenders.get(store)
    if appender is None or appender._loop is not loop:
        appender = _appenders[store] = _Appender(store, loop)
    return await appender.submit(records)
