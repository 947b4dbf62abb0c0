"""The syntax tree of a SQL92 filter expression: immutable, hashable dataclasses.

The parser (:mod:`homing.broker.filters.sql92_parser`) builds it and has already checked it: every
node is well typed, so the evaluator (:mod:`homing.broker.filters.sql92_eval`) needs no checks of
its own. ``AND``/``OR`` chains are single n-ary nodes rather than left-leaning binary trees, so the
depth of the tree grows with the nesting of the text, not with its length. Negative numeric
literals are folded into :class:`Literal` at parse time.

:func:`render` prints a tree back as a canonical, fully parenthesized expression that parses to an
equal tree; it is meant for logs and error reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import assert_never

__all__ = [
    "And",
    "AsBoolean",
    "Between",
    "Comparison",
    "ComparisonOperator",
    "Expr",
    "InList",
    "IsNull",
    "Literal",
    "Negate",
    "Not",
    "Or",
    "Property",
    "StringOperator",
    "StringTest",
    "Value",
    "render",
]

#: What a literal, a property or any sub-expression evaluates to; ``None`` is SQL's NULL/UNKNOWN.
Value = str | int | float | bool | None


class ComparisonOperator(Enum):
    EQ = "="
    NE = "<>"
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="


class StringOperator(Enum):
    CONTAINS = "CONTAINS"
    STARTSWITH = "STARTSWITH"
    ENDSWITH = "ENDSWITH"


@dataclass(frozen=True, slots=True)
class Literal:
    """A constant: string, integer, float, ``TRUE``/``FALSE`` or ``NULL`` (``None``)."""

    value: Value


@dataclass(frozen=True, slots=True)
class Property:
    """A message property by name (``TAGS`` is the message's tag)."""

    name: str


@dataclass(frozen=True, slots=True)
class Negate:
    """Arithmetic negation of a non-literal (``-price``): the operand read as a number."""

    operand: Expr


@dataclass(frozen=True, slots=True)
class AsBoolean:
    """A bare property used as a condition (``WHERE flag``): its value read as a boolean."""

    operand: Expr


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr


@dataclass(frozen=True, slots=True)
class And:
    operands: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Or:
    operands: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Comparison:
    """``left op right`` for ``= <> < <= > >=``."""

    operator: ComparisonOperator
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Between:
    """``subject [NOT] BETWEEN low AND high`` (bounds included)."""

    subject: Expr
    low: Expr
    high: Expr
    negated: bool


@dataclass(frozen=True, slots=True)
class InList:
    """``subject [NOT] IN ('a', 'b', ...)``; ``values`` as written, duplicates included."""

    subject: Expr
    values: tuple[str, ...]
    negated: bool


@dataclass(frozen=True, slots=True)
class StringTest:
    """``subject [NOT] CONTAINS|STARTSWITH|ENDSWITH 'pattern'``."""

    operator: StringOperator
    subject: Expr
    pattern: str
    negated: bool


@dataclass(frozen=True, slots=True)
class IsNull:
    """``subject IS [NOT] NULL``."""

    subject: Expr
    negated: bool


Expr = (
    Literal
    | Property
    | Negate
    | AsBoolean
    | Not
    | And
    | Or
    | Comparison
    | Between
    | InList
    | StringTest
    | IsNull
)


def render(expr: Expr) -> str:
    """A canonical, fully parenthesized expression that parses back to an equal tree."""
    if isinstance(expr, Literal):
        return _render_literal(expr.value)
    if isinstance(expr, Property):
        return expr.name
    if isinstance(expr, Negate):
        return f"(-{render(expr.operand)})"
    if isinstance(expr, AsBoolean):
        return render(expr.operand)
    if isinstance(expr, Not):
        return f"(NOT {render(expr.operand)})"
    if isinstance(expr, And | Or):
        keyword = " AND " if isinstance(expr, And) else " OR "
        return "(" + keyword.join(render(operand) for operand in expr.operands) + ")"
    if isinstance(expr, Comparison):
        return f"({render(expr.left)} {expr.operator.value} {render(expr.right)})"
    not_ = "NOT " if expr.negated else ""
    if isinstance(expr, Between):
        return f"({render(expr.subject)} {not_}BETWEEN {render(expr.low)} AND {render(expr.high)})"
    if isinstance(expr, InList):
        values = ", ".join(_render_literal(value) for value in expr.values)
        return f"({render(expr.subject)} {not_}IN ({values}))"
    if isinstance(expr, StringTest):
        return f"({render(expr.subject)} {not_}{expr.operator.value} {_render_literal(expr.pattern)})"
    if isinstance(expr, IsNull):
        return f"({render(expr.subject)} IS {not_}NULL)"
    assert_never(expr)


def _render_literal(value: Value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, float):
        # repr() gives the shortest text that reads back as the same float ("1e+16", "0.1").
        text = repr(value)
        # A float that prints like an integer must keep a decimal marker to stay a float.
        if math.isfinite(value) and "." not in text and "e" not in text:
            text += ".0"
        return f"({text})" if value < 0 or text.startswith("-") else text
    return f"({value})" if value < 0 else str(value)
