"""Evaluator for SQL92 filter syntax trees.

Theory of operation
-------------------
:class:`Evaluator` turns a checked syntax tree into a tree of closures once; evaluating a message
is then one call per node, with no dispatch on node types and no allocation beyond Python's own.
Evaluation is total: whatever the property values, it returns and never raises.

Values are ``str``, ``int``, ``float``, ``bool`` or ``None``. Message properties are strings (the
wire carries nothing else); ``None`` stands both for an absent property and for SQL's UNKNOWN, and
conditions use SQL's three-valued logic: ``NOT UNKNOWN`` is UNKNOWN, ``FALSE AND UNKNOWN`` is FALSE,
``TRUE OR UNKNOWN`` is TRUE. A message matches only if the whole filter is TRUE; FALSE and UNKNOWN
both reject it. As in RocketMQ, the property ``TAGS`` is the message's tag.

Semantics, following RocketMQ's ``ComparisonExpression`` (with its string conversion enabled, as
``SelectorParser`` always enables it):

- an absent property makes a comparison, ``BETWEEN``, ``IN`` and a bare-property condition UNKNOWN
  (so ``a <> 'x'`` and ``a NOT IN ('x')`` do not match a message without ``a``);
- ``IS NULL`` is TRUE exactly for absent properties (and UNKNOWN conditions);
- ``< <= > >=`` and ``BETWEEN`` read their operands as numbers; ``=``/``<>`` read a property as a
  number beside a number, as a boolean beside a boolean, and compare strings as strings;
- ``CONTAINS``, ``STARTSWITH``, ``ENDSWITH`` and their ``NOT`` forms are FALSE (not UNKNOWN) when
  the property is absent, and FALSE whatever the subject when the pattern is empty.

Deliberate deviations from RocketMQ
-----------------------------------
- A property value that cannot be read as the type it is compared with (``price > 5`` with
  ``price = 'cheap'``) makes that comparison UNKNOWN, exactly like an absent property. RocketMQ
  throws, which aborts the evaluation and rejects the message even where the rest of the
  filter would have matched (``x = 1 OR price > 5``).
- Numbers are read from decimal text only: optional sign, digits, optional fraction, optional
  exponent (``-12``, ``2.5``, ``.5``, ``1e3``); no blanks, no ``NaN``/``Infinity``, no hex, no
  ``d``/``f`` suffixes. Whether a value is an integer or a decimal does not matter (``'2.5' > 2``
  is TRUE; RocketMQ would throw, since it reads the value as the literal's Java type). Integers
  compare exactly; no 32/64-bit overflow.
- Booleans are read from ``true``/``false`` in any case, anything else is UNKNOWN (Java's
  ``Boolean.valueOf`` reads anything but ``true`` as false). A bare property used as a condition
  (``WHERE flag``) is read the same way; RocketMQ makes it FALSE for every string value.
- ``-price`` reads the property as a number and negates it; RocketMQ evaluates it to NULL.
- ``=``/``<>`` with NULL on either side is UNKNOWN; RocketMQ's is asymmetric (``'x' = a`` is FALSE
  for an absent ``a``, so ``'x' <> a`` is TRUE).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from typing import assert_never

from homing.broker.filters.sql92_ast import (
    And,
    AsBoolean,
    Between,
    Comparison,
    ComparisonOperator,
    Expr,
    InList,
    IsNull,
    Literal,
    Negate,
    Not,
    Or,
    Property,
    StringOperator,
    StringTest,
    Value,
)

__all__ = ["TAGS_PROPERTY", "Evaluator", "parse_boolean", "parse_number"]

#: The property name under which a SQL92 filter sees the message's tag.
TAGS_PROPERTY = "TAGS"

Number = int | float

# The whole value must be a decimal number; ASCII digits only ([0-9], not \d, which is Unicode).
_NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
# Python refuses int() of more than ~4300 digits; a float reading is exact enough for such values.
_MAX_EXACT_INTEGER_DIGITS = 4000

# One compiled node: (properties, tag) -> value.
_Node = Callable[[Mapping[str, str], str | None], Value]

_ORDERINGS: dict[ComparisonOperator, Callable[[Number, Number], bool]] = {
    ComparisonOperator.LT: operator.lt,
    ComparisonOperator.LE: operator.le,
    ComparisonOperator.GT: operator.gt,
    ComparisonOperator.GE: operator.ge,
}
_STRING_TESTS: dict[StringOperator, Callable[[str, str], bool]] = {
    StringOperator.CONTAINS: operator.contains,
    StringOperator.STARTSWITH: str.startswith,
    StringOperator.ENDSWITH: str.endswith,
}


def parse_number(text: str) -> Number | None:
    """A property value read as a number, or ``None`` if it is not decimal number text."""
    if _NUMBER_TEXT.fullmatch(text) is None:
        return None
    if "." in text or "e" in text or "E" in text or len(text) > _MAX_EXACT_INTEGER_DIGITS:
        return float(text)  # may be ±inf for huge exponents, which still compares correctly
    return int(text)


def parse_boolean(text: str) -> bool | None:
    """A property value read as a boolean (``true``/``false``, any case), else ``None``."""
    if len(text) == 4 and text.isascii() and text.lower() == "true":
        return True
    if len(text) == 5 and text.isascii() and text.lower() == "false":
        return False
    return None


def _as_number(value: Value) -> Number | None:
    # bool is a subclass of int: test it first so that TRUE never reads as 1.
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return parse_number(value)
    return value


def _equals(left: Value, right: Value) -> bool | None:
    if left is None or right is None:
        return None
    if isinstance(left, str) != isinstance(right, str):
        # One side is text from the wire: read it as the other side's type.
        if isinstance(left, str):
            left = parse_boolean(left) if isinstance(right, bool) else parse_number(left)
        else:
            assert isinstance(right, str)
            right = parse_boolean(right) if isinstance(left, bool) else parse_number(right)
        if left is None or right is None:
            return None
    if isinstance(left, bool) != isinstance(right, bool):
        return False  # a boolean never equals a number (the parser keeps this from happening)
    return left == right


class Evaluator:
    """A compiled syntax tree; immutable and safe to share between threads."""

    __slots__ = ("_root",)

    def __init__(self, expression: Expr) -> None:
        self._root = _compile(expression)

    def evaluate(self, properties: Mapping[str, str], tag: str | None) -> bool | None:
        """The three-valued result: ``True``, ``False`` or ``None`` for UNKNOWN.

        ``tag`` is the message's tag, seen as the property ``TAGS`` (``""`` means no tag); a
        ``TAGS`` entry in ``properties`` is ignored.
        """
        result = self._root(properties, tag or None)
        return result if isinstance(result, bool) else None

    def matches(self, properties: Mapping[str, str]) -> bool:
        """Whether the filter is TRUE for these properties, the tag being ``properties['TAGS']``."""
        tag = properties.get(TAGS_PROPERTY)
        return self.evaluate(properties, tag if isinstance(tag, str) else None) is True

    def matches_message(self, tag: str | None, properties: Mapping[str, str]) -> bool:
        """Whether the filter is TRUE for a message with this tag and these properties."""
        return self.evaluate(properties, tag) is True


def _compile(node: Expr) -> _Node:
    if isinstance(node, Literal):
        return _compile_literal(node.value)
    if isinstance(node, Property):
        return _compile_property(node.name)
    if isinstance(node, Negate):
        return _compile_negate(_compile(node.operand))
    if isinstance(node, AsBoolean):
        return _compile_as_boolean(_compile(node.operand))
    if isinstance(node, Not):
        return _compile_not(_compile(node.operand))
    if isinstance(node, And):
        return _compile_and(tuple(_compile(operand) for operand in node.operands))
    if isinstance(node, Or):
        return _compile_or(tuple(_compile(operand) for operand in node.operands))
    if isinstance(node, Comparison):
        return _compile_comparison(node.operator, _compile(node.left), _compile(node.right))
    if isinstance(node, Between):
        return _compile_between(_compile(node.subject), _compile(node.low), _compile(node.high), node.negated)
    if isinstance(node, InList):
        return _compile_in_list(_compile(node.subject), frozenset(node.values), node.negated)
    if isinstance(node, StringTest):
        return _compile_string_test(node.operator, _compile(node.subject), node.pattern, node.negated)
    if isinstance(node, IsNull):
        return _compile_is_null(_compile(node.subject), node.negated)
    assert_never(node)


def _compile_literal(value: Value) -> _Node:
    def literal(properties: Mapping[str, str], tag: str | None) -> Value:
        return value

    return literal


def _compile_property(name: str) -> _Node:
    if name == TAGS_PROPERTY:

        def message_tag(properties: Mapping[str, str], tag: str | None) -> Value:
            return tag

        return message_tag

    def message_property(properties: Mapping[str, str], tag: str | None) -> Value:
        value = properties.get(name)
        # Properties are strings by contract; anything else is treated as absent, not trusted.
        return value if isinstance(value, str) else None

    return message_property


def _compile_negate(operand: _Node) -> _Node:
    def negate(properties: Mapping[str, str], tag: str | None) -> Value:
        number = _as_number(operand(properties, tag))
        return None if number is None else -number

    return negate


def _compile_as_boolean(operand: _Node) -> _Node:
    def as_boolean(properties: Mapping[str, str], tag: str | None) -> Value:
        value = operand(properties, tag)
        return parse_boolean(value) if isinstance(value, str) else None

    return as_boolean


def _compile_not(operand: _Node) -> _Node:
    def not_(properties: Mapping[str, str], tag: str | None) -> Value:
        value = operand(properties, tag)
        return not value if isinstance(value, bool) else None

    return not_


def _compile_and(operands: tuple[_Node, ...]) -> _Node:
    def and_(properties: Mapping[str, str], tag: str | None) -> Value:
        unknown = False
        for operand in operands:
            value = operand(properties, tag)
            if value is False:
                return False  # FALSE wins over UNKNOWN: no need to look further
            if value is not True:
                unknown = True
        return None if unknown else True

    return and_


def _compile_or(operands: tuple[_Node, ...]) -> _Node:
    def or_(properties: Mapping[str, str], tag: str | None) -> Value:
        unknown = False
        for operand in operands:
            value = operand(properties, tag)
            if value is True:
                return True  # TRUE wins over UNKNOWN
            if value is not False:
                unknown = True
        return None if unknown else False

    return or_


def _compile_comparison(op: ComparisonOperator, left: _Node, right: _Node) -> _Node:
    if op is ComparisonOperator.EQ:

        def equal(properties: Mapping[str, str], tag: str | None) -> Value:
            return _equals(left(properties, tag), right(properties, tag))

        return equal
    if op is ComparisonOperator.NE:

        def not_equal(properties: Mapping[str, str], tag: str | None) -> Value:
            result = _equals(left(properties, tag), right(properties, tag))
            return None if result is None else not result

        return not_equal
    ordering = _ORDERINGS[op]

    def compare(properties: Mapping[str, str], tag: str | None) -> Value:
        left_number = _as_number(left(properties, tag))
        if left_number is None:
            return None
        right_number = _as_number(right(properties, tag))
        if right_number is None:
            return None
        return ordering(left_number, right_number)

    return compare


def _compile_between(subject: _Node, low: _Node, high: _Node, negated: bool) -> _Node:
    # RocketMQ defines BETWEEN as (x >= low AND x <= high) and NOT BETWEEN as (x < low OR x > high),
    # each half UNKNOWN on its own; keep exactly that three-valued behavior.
    def between(properties: Mapping[str, str], tag: str | None) -> Value:
        value = _as_number(subject(properties, tag))
        if value is None:
            return None
        low_value = _as_number(low(properties, tag))
        high_value = _as_number(high(properties, tag))
        above_low = None if low_value is None else value >= low_value
        below_high = None if high_value is None else value <= high_value
        if negated:
            if above_low is False or below_high is False:
                return True
            return None if above_low is None or below_high is None else False
        if above_low is False or below_high is False:
            return False
        return None if above_low is None or below_high is None else True

    return between


def _compile_in_list(subject: _Node, values: frozenset[str], negated: bool) -> _Node:
    def in_list(properties: Mapping[str, str], tag: str | None) -> Value:
        value = subject(properties, tag)
        if not isinstance(value, str):
            return None
        return (value in values) != negated

    return in_list


def _compile_string_test(op: StringOperator, subject: _Node, pattern: str, negated: bool) -> _Node:
    test = _STRING_TESTS[op]
    if not pattern:
        # RocketMQ: an empty pattern makes the test and its negation FALSE alike.
        return _compile_literal(False)

    def string_test(properties: Mapping[str, str], tag: str | None) -> Value:
        value = subject(properties, tag)
        if not isinstance(value, str):
            return False  # RocketMQ: FALSE, not UNKNOWN, for an absent property (even with NOT)
        return test(value, pattern) != negated

    return string_test


def _compile_is_null(subject: _Node, negated: bool) -> _Node:
    def is_null(properties: Mapping[str, str], tag: str | None) -> Value:
        return (subject(properties, tag) is None) != negated

    return is_null
