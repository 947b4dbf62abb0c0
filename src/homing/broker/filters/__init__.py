"""Message filters: which messages a subscription wants, as RocketMQ defines them.

Two languages exist, named by :class:`FilterKind`:

- ``TAG``: ``*`` (everything) or ``TagA || TagB``: the message's tag must be one of those
  (:mod:`homing.broker.filters.tag`, which also defines the consume-queue :func:`tag_hash`);
- ``SQL92``: a condition over the message's properties and its tag (the property ``TAGS``), such
  as ``region = 'eu' AND price BETWEEN 10 AND 20`` (:mod:`homing.broker.filters.sql92`).

:func:`compile_filter` turns a subscription's (kind, expression) into an immutable
:class:`CompiledFilter`, once; its :meth:`~CompiledFilter.matches` then answers for each message
and never raises. Every invalid expression raises :class:`FilterExpressionError`, whose
``position`` points into the text. Pure Python: no IO, no ``eval``.
"""

from __future__ import annotations

from homing.broker.filters.compiled import CompiledFilter, FilterKind
from homing.broker.filters.errors import FilterExpressionError
from homing.broker.filters.factory import compile_filter
from homing.broker.filters.limits import MAX_EXPRESSION_LENGTH, MAX_IN_LIST_SIZE, MAX_NESTING_DEPTH
from homing.broker.filters.sql92 import Sql92Filter
from homing.broker.filters.sql92_eval import TAGS_PROPERTY
from homing.broker.filters.tag import NO_TAG_HASH, TagFilter, tag_hash

__all__ = [
    "MAX_EXPRESSION_LENGTH",
    "MAX_IN_LIST_SIZE",
    "MAX_NESTING_DEPTH",
    "NO_TAG_HASH",
    "TAGS_PROPERTY",
    "CompiledFilter",
    "FilterExpressionError",
    "FilterKind",
    "Sql92Filter",
    "TagFilter",
    "compile_filter",
    "tag_hash",
]
