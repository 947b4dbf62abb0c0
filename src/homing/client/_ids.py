"""Message ids and client ids, made on the client as RocketMQ 5 clients make them.

A message id is made once per message, before its first send attempt, and every retry carries
the same one: that is what lets a consumer (or Homing's inbox) recognise a retried send that was
stored twice. The layout is RocketMQ's "V1" id, 17 bytes written as 34 upper-case hex digits::

    01 | MAC address (6 bytes) | process id, low 2 bytes | seconds since 2021-01-01T00:00:00Z,
       low 4 bytes, big-endian | sequence number, 4 bytes, big-endian

The sequence is per process and wraps at 2**32; with the time field beside it an id repeats only
if one process makes four billion messages within one second.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

__all__ = ["MessageIdFactory", "make_client_id", "next_message_id"]

_EPOCH_2021_S: Final = int(datetime(2021, 1, 1, tzinfo=UTC).timestamp())
MESSAGE_ID_LENGTH: Final = 34


class MessageIdFactory:
    """Makes V1 message ids. ``mac``, ``pid`` and ``clock_s`` are inputs so tests can pin them."""

    def __init__(
        self, mac: int | None = None, pid: int | None = None, clock_s: Callable[[], float] | None = None
    ) -> None:
        mac_value = uuid.getnode() if mac is None else mac
        pid_value = os.getpid() if pid is None else pid
        self._prefix = "01" + (mac_value & 0xFFFF_FFFF_FFFF).to_bytes(6, "big").hex().upper()
        self._prefix += (pid_value & 0xFFFF).to_bytes(2, "big").hex().upper()
        self._clock_s = time.time if clock_s is None else clock_s
        self._lock = threading.Lock()
        self._sequence = 0
        self._second = -1
        self._second_prefix = ""

    def next(self) -> str:
        seconds = (int(self._clock_s()) - _EPOCH_2021_S) & 0xFFFF_FFFF
        with self._lock:
            sequence = self._sequence
            self._sequence = (sequence + 1) & 0xFFFF_FFFF
            if seconds != self._second:  # the prefix with the time field changes once a second
                self._second = seconds
                self._second_prefix = f"{self._prefix}{seconds:08X}"
            prefix = self._second_prefix
        return f"{prefix}{sequence:08X}"


_FACTORY: MessageIdFactory | None = None
_FACTORY_LOCK = threading.Lock()


def next_message_id() -> str:
    """A new message id from the process-wide factory (made lazily: after a fork the pid is new)."""
    global _FACTORY
    factory = _FACTORY
    if factory is None:
        with _FACTORY_LOCK:
            if _FACTORY is None:
                _FACTORY = MessageIdFactory()
            factory = _FACTORY
    return factory.next()


def _reset_after_fork() -> None:
    global _FACTORY
    _FACTORY = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)

_CLIENT_INDEX = itertools.count()
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(number: int) -> str:
    digits = []
    while True:
        number, digit = divmod(number, 36)
        digits.append(_BASE36[digit])
        if number == 0:
            return "".join(reversed(digits))


def make_client_id() -> str:
    """``host@pid@index@time``: unique per client instance, readable in the broker's logs."""
    return f"{socket.gethostname()}@{os.getpid()}@{next(_CLIENT_INDEX)}@{_base36(time.time_ns())}"
