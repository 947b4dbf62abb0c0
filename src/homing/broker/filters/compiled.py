"""What every compiled filter offers, whatever its kind.

A subscription names a filter *kind* (RocketMQ's ``ExpressionType``: ``TAG`` or ``SQL92``) and an
expression. Compiling turns the pair into an immutable object that answers, for each message,
"does this subscription want it?". Compile once per subscription, evaluate once per message.

Two questions are asked, cheapest first:

1. :meth:`CompiledFilter.may_match_tag_hash` sees only the tag hash stored in a consume-queue
   entry (see :func:`homing.broker.filters.tag.tag_hash`). ``False`` means "certainly not", so the
   message need not even be read; ``True`` means "maybe" (hashes can collide, and a SQL92 filter
   cannot decide from a hash at all).
2. :meth:`CompiledFilter.matches` sees the message's tag and properties and gives the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Protocol

__all__ = ["CompiledFilter", "FilterKind"]


class FilterKind(StrEnum):
    """The filter languages, named as RocketMQ names them on the wire."""

    TAG = "TAG"
    SQL92 = "SQL92"


class CompiledFilter(Protocol):
    """A compiled, immutable filter; safe to share between threads."""

    @property
    def kind(self) -> FilterKind: ...

    @property
    def expression(self) -> str: ...

    def may_match_tag_hash(self, tag_code: int) -> bool:
        """``False`` only if no message whose tag hashes to ``tag_code`` can match."""
        ...

    def matches(self, tag: str | None, properties: Mapping[str, str]) -> bool:
        """Whether a message with this tag and these user properties matches. Never raises."""
        ...
