"""Homing's storage engine: a durable commit log and the data derived from it.

The public surface is :class:`MessageStore` with :class:`StoreConfig`, the record types, the
``Disk`` interface with its two implementations, and the store's errors.
"""

from homing.store.disk import Disk, DiskFile, DiskUsage, OsDisk
from homing.store.errors import (
    CorruptRecordError,
    DiskFullError,
    InvalidRecordError,
    PersistenceTimeoutError,
    StoreClosedError,
    StoreError,
    StoreFencedError,
)
from homing.store.message_store import AppendResult, MessageStore, QueueRead, StoreConfig
from homing.store.record import NewRecord, StoredRecord
from homing.store.recovery import RecoveryReport
from homing.store.simulated_disk import SimulatedDisk

__all__ = [
    "AppendResult",
    "CorruptRecordError",
    "Disk",
    "DiskFile",
    "DiskFullError",
    "DiskUsage",
    "InvalidRecordError",
    "MessageStore",
    "NewRecord",
    "OsDisk",
    "PersistenceTimeoutError",
    "QueueRead",
    "RecoveryReport",
    "SimulatedDisk",
    "StoreClosedError",
    "StoreConfig",
    "StoreError",
    "StoreFencedError",
    "StoredRecord",
]
