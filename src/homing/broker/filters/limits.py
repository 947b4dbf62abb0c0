"""Hard limits on filter expressions.

Filter expressions arrive from clients, so every one of them is untrusted input. These limits keep
compiling one cheap and bounded: a longer, deeper or wider expression is refused with a
:class:`~homing.broker.filters.errors.FilterExpressionError`, never a ``RecursionError`` or an
unbounded amount of work. RocketMQ itself has none of these limits; real subscriptions stay far
below them.
"""

from __future__ import annotations

__all__ = ["MAX_EXPRESSION_LENGTH", "MAX_IN_LIST_SIZE", "MAX_NESTING_DEPTH"]

#: Longest expression accepted, in characters (TAG and SQL92 alike).
MAX_EXPRESSION_LENGTH = 4096

#: Deepest nesting accepted in a SQL92 expression. Each parenthesis, each prefix ``NOT`` and each
#: unary sign opens one level. The parser and the evaluator recurse once (a few Python frames) per
#: level, so this bound also keeps both far from the interpreter's recursion limit.
MAX_NESTING_DEPTH = 64

#: Most string literals accepted in one ``IN (...)`` / ``NOT IN (...)`` list.
MAX_IN_LIST_SIZE = 256
