"""``compile_filter``: from a subscription's (kind, expression) to a compiled filter."""

from __future__ import annotations

from homing.broker.filters.compiled import CompiledFilter, FilterKind
from homing.broker.filters.errors import FilterExpressionError
from homing.broker.filters.sql92 import Sql92Filter
from homing.broker.filters.tag import TagFilter

__all__ = ["compile_filter"]


def compile_filter(kind: FilterKind | str | None, expression: str | None) -> CompiledFilter:
    """Compile a filter expression of the given kind.

    ``kind`` is a :class:`FilterKind` or its wire name (``"TAG"``, ``"SQL92"``); ``None`` and ``""``
    mean TAG, as in RocketMQ's ``ExpressionType.isTagType``. For TAG, a missing expression means
    everything; for SQL92 it is an error. Raises :class:`FilterExpressionError` for an unknown kind
    or an invalid expression.
    """
    if not kind:
        kind = FilterKind.TAG
    try:
        filter_kind = FilterKind(kind)
    except ValueError:
        known = ", ".join(repr(member.value) for member in FilterKind)
        raise FilterExpressionError(f"unknown filter kind {kind!r}: expected one of {known}", None) from None
    if filter_kind is FilterKind.TAG:
        return TagFilter.compile(expression)
    return Sql92Filter.compile(expression)
