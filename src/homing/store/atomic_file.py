"""Small metadata files written so that a crash leaves either the old or the new version.

The sequence is the classic one: write a temporary file, fsync it, rename it over the target,
fsync the directory. Skipping the last step is a known way to lose a "committed" rename.

Each file is framed so a reader can tell a damaged file from a valid one::

    offset size  field
    0      4     magic         b"HMF1"
    4      4     length        bytes of payload
    8      4     crc32c        of the payload
    12     ...   payload
"""

from __future__ import annotations

import os
import struct

import crc32c

from homing.store.disk import Disk

__all__ = ["read_framed_file", "write_framed_file"]

_MAGIC = b"HMF1"
_FRAME = struct.Struct("<4sII")
MAX_METADATA_BYTES = 256 * 1024 * 1024


def write_framed_file(disk: Disk, path: str, payload: bytes) -> None:
    assert len(payload) <= MAX_METADATA_BYTES, "metadata payload over its limit"
    temporary = path + ".tmp"
    handle = disk.open(temporary, create=True)
    try:
        handle.truncate(0)
        handle.pwrite(_FRAME.pack(_MAGIC, len(payload), crc32c.crc32c(payload)) + payload, 0)
        handle.sync()
    finally:
        handle.close()
    disk.rename(temporary, path)
    disk.sync_dir(os.path.dirname(path) or ".")


def read_framed_file(disk: Disk, path: str) -> bytes | None:
    """The payload, or ``None`` if the file is missing or damaged (the caller rebuilds what it held)."""
    if not disk.exists(path):
        return None
    handle = disk.open(path)
    try:
        head = handle.pread(_FRAME.size, 0)
        if len(head) < _FRAME.size:
            return None
        magic, length, checksum = _FRAME.unpack(head)
        if magic != _MAGIC or length > MAX_METADATA_BYTES:
            return None
        payload = handle.pread(length, _FRAME.size)
    finally:
        handle.close()
    if len(payload) != length or crc32c.crc32c(payload) != checksum:
        return None
    return payload
