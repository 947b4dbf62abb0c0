"""Group commit: one flusher thread turns many writers' appends into few fsyncs.

Theory of operation. Writers append to the page cache and then ask for durability up to their end
offset. A single flusher thread loops: it takes everything written so far, syncs it (the sync
function releases the GIL while the kernel works), publishes the new flushed offset and releases
every waiter at or below it. While one sync runs, new requests queue up and the next sync covers
them all, so the sync rate stays near the disk's while throughput grows with concurrency. A lone
writer is served at once: the flusher wakes on the first request, it never waits for company.

In ``async`` mode the flusher also runs every ``async_interval_s`` without being asked; the broker
then acknowledges after the write, accepting that a power loss drops up to one interval.

A sync that raises is final: the flusher records the failure, fails every waiter and stops. The
store treats that as a fence (see :class:`homing.store.errors.StoreFencedError`). A failed *write*
fences the store too (:meth:`GroupCommit.fence`): every waiter not yet released fails, the flushed
offset stays where it was and the flusher stops, so no waiter is told "durable" by a sync that
completes after the fence, even one whose bytes were written before the failed write (their
outcome is unknown, and reported as an error). A waiter that is not released within its timeout
gets :class:`PersistenceTimeoutError`, never success.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from typing import Literal

from homing.store.errors import PersistenceTimeoutError, StoreFencedError

__all__ = ["DurabilityCallback", "FlushMode", "GroupCommit"]

FlushMode = Literal["sync", "async"]
DurabilityCallback = Callable[[BaseException | None], None]


class GroupCommit:
    def __init__(
        self,
        sync_everything_written: Callable[[], int],
        *,
        mode: FlushMode,
        async_interval_s: float,
        on_flushed: Callable[[int], None],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self._sync = sync_everything_written
        self._mode = mode
        self._async_interval_s = async_interval_s
        self._on_flushed = on_flushed
        self._on_failure = on_failure
        self._condition = threading.Condition()
        self._requested = 0
        self.flushed_offset = 0
        self.failure: BaseException | None = None
        self._failed_operation = ""  # "sync" or "write", for the error message
        self.sync_count = 0
        self._callbacks: list[tuple[int, int, DurabilityCallback]] = []
        self._sequence = itertools.count()
        self._stopping = False
        self._abandoned = False
        self._thread: threading.Thread | None = None

    def start(self, flushed_offset: int) -> None:
        self.flushed_offset = self._requested = flushed_offset
        self._thread = threading.Thread(target=self._run, name="homing-flusher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Flush what was written, then stop the thread."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def abandon(self) -> None:
        """Stop the thread without a final sync (a simulated kill); pending waiters time out."""
        with self._condition:
            self._stopping = True
            self._abandoned = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def request(self, offset: int) -> None:
        with self._condition:
            if offset > self._requested:
                self._requested = offset
                self._condition.notify_all()

    def _fenced_error(self) -> StoreFencedError:
        operation = self._failed_operation
        return StoreFencedError(f"the store is fenced after a failed {operation}: {self.failure}")

    def fence(self, error: BaseException) -> None:
        """A write failed: fail every waiter not released yet, and release none from now on.

        The flushed offset stays where it is, so only what a published sync covered before the fence
        counts as durable. A sync running now may well succeed, and cover bytes written before the
        failed write: they are still not reported durable (the conservative choice; see
        docs/DURABILITY.md). The flusher stops after that sync.
        """
        self._fail(error, "write")

    def wait(self, offset: int, timeout_s: float) -> None:
        """Block until ``offset`` is durable; raise on timeout or failure.

        Each waiter blocks on a lock of its own, released by the flusher like a callback: waking
        many writers after a sync then costs one wake-up each, not a stampede on the shared
        condition (which, measured with 16 writer threads on 2 cores, halved throughput).
        """
        with self._condition:
            if self.flushed_offset >= offset:
                return
            if self.failure is not None:
                raise self._fenced_error()
            released = threading.Lock()
            released.acquire()
            outcome: list[BaseException | None] = []

            def release(error: BaseException | None) -> None:
                outcome.append(error)
                released.release()

            heapq.heappush(self._callbacks, (offset, next(self._sequence), release))
            if offset > self._requested:
                self._requested = offset
                self._condition.notify_all()
        if released.acquire(timeout=max(timeout_s, 0.0)):
            if outcome[0] is None:
                return  # released by a flush that covered ``offset``
            raise self._fenced_error()
        with self._condition:
            if self.flushed_offset >= offset:
                return
            if self.failure is not None:
                raise self._fenced_error()
        raise PersistenceTimeoutError(f"not durable within the flush timeout of {timeout_s:g} s")

    def add_callback(self, offset: int, callback: DurabilityCallback) -> None:
        """Call ``callback(None)`` once ``offset`` is durable, or ``callback(error)`` on failure.

        The callback runs on the flusher thread: it must be quick and must not block.
        """
        with self._condition:
            if self.failure is None and self.flushed_offset < offset:
                heapq.heappush(self._callbacks, (offset, next(self._sequence), callback))
                if offset > self._requested:
                    self._requested = offset
                    self._condition.notify_all()
                return
            error = None if self.flushed_offset >= offset else self._fenced_error()
        callback(error)

    def _run(self) -> None:
        def wanted() -> bool:
            return self._stopping or self.failure is not None or self._requested > self.flushed_offset

        while True:
            with self._condition:
                if self._mode == "sync":
                    self._condition.wait_for(wanted)
                else:
                    self._condition.wait_for(wanted, self._async_interval_s)
                stopping = self._stopping
                if self._abandoned or self.failure is not None:
                    return
            try:
                flushed = self._sync()
            except OSError as error:
                self._fail(error, "sync")
                return
            if not self._release(flushed) or stopping:
                return

    def _release(self, flushed: int) -> bool:
        """Publish a completed sync and release its waiters; False (nothing done) once fenced."""
        ready: list[DurabilityCallback] = []
        with self._condition:
            if self.failure is not None:
                return False  # fenced while this sync ran: it counts for nothing
            self.sync_count += 1
            if flushed > self.flushed_offset:
                self.flushed_offset = flushed
            while self._callbacks and self._callbacks[0][0] <= self.flushed_offset:
                ready.append(heapq.heappop(self._callbacks)[2])
            self._condition.notify_all()
        for callback in ready:
            callback(None)
        self._on_flushed(flushed)
        return True

    def _fail(self, error: BaseException, operation: str) -> None:
        with self._condition:
            if self.failure is not None:
                return  # already fenced: the first failure stands
            self.failure = error
            self._failed_operation = operation
            pending = [entry[2] for entry in self._callbacks]
            self._callbacks.clear()
            self._condition.notify_all()
        if operation == "sync":
            self._on_failure(error)
        fenced = self._fenced_error()
        for callback in pending:
            callback(fenced)
