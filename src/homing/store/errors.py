"""Errors raised by the store.

Operating errors are exceptions (callers handle them by kind); programmer errors are ``assert``.
"""

from __future__ import annotations

from homing.errors import HomingError

__all__ = [
    "CorruptRecordError",
    "DiskFullError",
    "InvalidRecordError",
    "PersistenceTimeoutError",
    "StoreClosedError",
    "StoreError",
    "StoreFencedError",
]


class StoreError(HomingError):
    """Root of the store's errors."""


class StoreFencedError(StoreError):
    """A write or fsync failed earlier; the store accepts no more writes until restarted.

    After a failed fsync, Linux may have marked the unwritten pages clean, so a retried fsync can
    "succeed" without the data being on disk. The only safe move is to stop, restart and recover
    from what is really durable.
    """


class DiskFullError(StoreError):
    """The write was refused before any byte was written: the disk is full or above the guard ratio."""

    retriable = True


class PersistenceTimeoutError(StoreError):
    """The write did not become durable within the flush timeout: it is NOT acknowledged.

    It may still become durable later; a sender retries with the same message id.
    """

    retriable = True


class CorruptRecordError(StoreError):
    """A record failed its checksum or framing: it is never served."""

    def __init__(self, file: str, file_offset: int, physical_offset: int, reason: str) -> None:
        super().__init__(
            f"corrupt record in {file} at byte {file_offset} (log offset {physical_offset}): {reason}"
        )
        self.file = file
        self.file_offset = file_offset
        self.physical_offset = physical_offset
        self.reason = reason


class InvalidRecordError(StoreError, ValueError):
    """The caller asked to store something the format cannot hold (too large, reserved bytes)."""


class StoreClosedError(StoreError):
    """The store was closed."""
