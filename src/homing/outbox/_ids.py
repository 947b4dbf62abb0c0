"""Outbox message ids: 32 upper-case hex digits, time first.

Layout::

    chars  field
    0-11   creation time, milliseconds since the Unix epoch (48 bits: good until the year 10889)
    12-31  80 random bits

Why time first: ids sort (and index) in creation order, and the transaction checker can tell how
old a half message is from its id alone, so a check-back that carries no timestamp can still be
answered. The 80 random bits make a collision between two writers in the same millisecond
vanishingly unlikely (the ``message_id`` column is unique anyway, so a collision is an error, never
a silent merge).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

__all__ = ["MESSAGE_ID_LENGTH", "format_message_id", "message_id_time_ms", "new_message_id"]

MESSAGE_ID_LENGTH = 32
_TIME_DIGITS = 12
_RANDOM_BITS = 80
_MESSAGE_ID = re.compile(r"[0-9A-F]{32}")


def format_message_id(now_ms: int, random_bits: int) -> str:
    """The id for a message created at ``now_ms`` with the given 80 random bits."""
    assert 0 <= now_ms < 1 << (4 * _TIME_DIGITS), now_ms
    assert 0 <= random_bits < 1 << _RANDOM_BITS, random_bits
    return f"{now_ms:012X}{random_bits:020X}"


def new_message_id(now_ms: int, random_bits: Callable[[int], int] = secrets.randbits) -> str:
    """A fresh id; ``random_bits`` is injectable so that tests can replay ids from a seed."""
    return format_message_id(now_ms, random_bits(_RANDOM_BITS))


def message_id_time_ms(message_id: str) -> int | None:
    """The creation time written in an id of this format, or None for any other id."""
    if _MESSAGE_ID.fullmatch(message_id) is None:
        return None
    return int(message_id[:_TIME_DIGITS], 16)
