"""Recursive-descent parser for SQL92 filter expressions, with static type checks.

Grammar
-------
Keywords are case-insensitive; ``[x]`` is optional, ``{x}`` repeats zero or more times::

    filter      := or_expr EOF
    or_expr     := and_expr { OR and_expr }
    and_expr    := not_expr { AND not_expr }
    not_expr    := NOT not_expr | equality
    equality    := relational [ ("=" | "<>") relational | IS [NOT] NULL ]
    relational  := unary [ ("<" | "<=" | ">" | ">=") unary
                         | [NOT] BETWEEN unary AND unary
                         | [NOT] IN "(" STRING { "," STRING } ")"
                         | [NOT] (CONTAINS | STARTSWITH | ENDSWITH) STRING ]
    unary       := ("+" | "-") unary | primary
    primary     := STRING | INTEGER | DECIMAL | TRUE | FALSE | NULL | IDENTIFIER | "(" or_expr ")"

So ``NOT`` binds looser than every comparison, ``AND`` looser than ``NOT``, ``OR`` loosest:
``NOT a = 1 AND b = 2 OR c = 3`` is ``((NOT (a = 1)) AND (b = 2)) OR (c = 3)``.

Static types
------------
Every sub-expression has a static kind: condition (boolean), number, string, property (a string
known only at evaluation time) or the ``NULL`` literal. The parser refuses, with the position of
the offending operand, what RocketMQ's parser also refuses:

- a number or string where a condition is expected (``a = 1 AND 5``);
- anything but numbers and properties around ``< <= > >=`` and in ``BETWEEN``;
- ``BETWEEN`` with literal bounds in the wrong order (``a BETWEEN 10 AND 1``);
- the ``NULL`` literal beside ``=`` / ``<>`` (write ``IS NULL``);
- ``IN`` on anything but a property, with anything but string literals in the list.

Deliberate deviations from RocketMQ's grammar
---------------------------------------------
- ``NOT`` is a prefix of whole conditions, as in SQL-92, not a high-precedence unary operator:
  RocketMQ reads ``NOT a = 'x'`` as ``(NOT a) = 'x'`` (which then fails at evaluation) and refuses
  ``NOT a > 5``; Homing reads both as the negation of the comparison. Consequently ``NOT`` cannot
  stand directly on the right of a comparison (``a = NOT b``): parenthesize it.
- Comparisons do not chain: ``a = 'x' = TRUE`` and ``a > 1 IS NULL`` need parentheses.
- Comparing two literals of different types (``'5' = 5``, ``5 = TRUE``) is refused instead of
  being evaluated by Java's coercion rules; ``CONTAINS``/``STARTSWITH``/``ENDSWITH`` apply to a
  property or a string literal only; unary ``+``/``-`` to a number or a property only. RocketMQ
  accepts these and evaluates them to constants or runtime errors.
- :data:`~homing.broker.filters.limits.MAX_NESTING_DEPTH` and
  :data:`~homing.broker.filters.limits.MAX_IN_LIST_SIZE` bound the expression.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from homing.broker.filters.errors import FilterExpressionError
from homing.broker.filters.limits import MAX_IN_LIST_SIZE, MAX_NESTING_DEPTH
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
)
from homing.broker.filters.sql92_lexer import Token, TokenKind, describe_token, quote_source, tokenize

__all__ = ["parse"]


class _Kind(Enum):
    """The static type of a sub-expression; the value is how error messages name it."""

    CONDITION = "a condition"
    NUMBER = "a number"
    STRING = "a string"
    PROPERTY = "a property"
    NULL = "NULL"


@dataclass(frozen=True, slots=True)
class _Typed:
    """A parsed sub-expression with its static kind and where its text starts and ends."""

    node: Expr
    kind: _Kind
    start: int
    end: int


_RELATIONAL_OPERATORS = {
    TokenKind.LT: ComparisonOperator.LT,
    TokenKind.LE: ComparisonOperator.LE,
    TokenKind.GT: ComparisonOperator.GT,
    TokenKind.GE: ComparisonOperator.GE,
}
_EQUALITY_OPERATORS = {TokenKind.EQ: ComparisonOperator.EQ, TokenKind.NE: ComparisonOperator.NE}
_STRING_OPERATORS = {
    TokenKind.CONTAINS: StringOperator.CONTAINS,
    TokenKind.STARTSWITH: StringOperator.STARTSWITH,
    TokenKind.ENDSWITH: StringOperator.ENDSWITH,
}
_NEGATABLE_OPERATORS = frozenset({TokenKind.BETWEEN, TokenKind.IN, *_STRING_OPERATORS})
_NUMERIC_KINDS = frozenset({_Kind.NUMBER, _Kind.PROPERTY})
_CONDITION_KINDS = frozenset({_Kind.CONDITION, _Kind.PROPERTY, _Kind.NULL})


def parse(expression: str) -> Expr:
    """Parse and type-check a SQL92 filter expression into its syntax tree.

    Raises :class:`FilterExpressionError` for every invalid expression, including an empty one.
    """
    tokens = tokenize(expression)
    if tokens[0].kind is TokenKind.EOF:
        raise FilterExpressionError(
            "empty expression at position 0: a SQL92 filter needs a condition, such as a > 5", 0
        )
    parser = _Parser(expression, tokens)
    try:
        return parser.parse_filter()
    except RecursionError:
        # MAX_NESTING_DEPTH keeps the parser hundreds of frames below the interpreter's limit;
        # this only fires when the caller's own stack was already nearly exhausted. Still an
        # answer about this expression, never a crash.
        position = parser.position
        raise FilterExpressionError(
            f"expression nested too deeply at position {position}: out of stack", position
        ) from None


class _Parser:
    def __init__(self, expression: str, tokens: list[Token]) -> None:
        self._expression = expression
        self._tokens = tokens
        self._index = 0
        self._depth = 0

    # -- token stream -------------------------------------------------------------------------

    def _peek(self, ahead: int = 0) -> Token:
        # The EOF token is last; never look past it.
        return self._tokens[min(self._index + ahead, len(self._tokens) - 1)]

    def _advance(self) -> Token:
        token = self._tokens[self._index]
        if token.kind is not TokenKind.EOF:
            self._index += 1
        return token

    def _expect(self, kind: TokenKind, expected: str) -> Token:
        if self._peek().kind is not kind:
            raise self._unexpected(self._peek(), expected)
        return self._advance()

    @property
    def position(self) -> int:
        """Where the next token starts."""
        return self._peek().position

    def _unexpected_after_operand(self, token: Token, expected: str) -> FilterExpressionError:
        if (
            token.kind in _EQUALITY_OPERATORS
            or token.kind in _RELATIONAL_OPERATORS
            or token.kind is TokenKind.IS
        ):
            expected += " (comparisons do not chain: add parentheses)"
        return self._unexpected(token, expected)

    def _unexpected(self, token: Token, expected: str) -> FilterExpressionError:
        return FilterExpressionError(
            f"unexpected {describe_token(token)} at position {token.position}: expected {expected}",
            token.position,
        )

    def _enter(self, token: Token) -> None:
        self._depth += 1
        if self._depth > MAX_NESTING_DEPTH:
            raise FilterExpressionError(
                f"expression nested too deeply at position {token.position}: "
                f"at most {MAX_NESTING_DEPTH} levels of parentheses, NOT and signs are allowed",
                token.position,
            )

    def _leave(self) -> None:
        self._depth -= 1

    # -- type checks --------------------------------------------------------------------------

    def _text(self, typed: _Typed) -> str:
        return quote_source(self._expression[typed.start : typed.end])

    def _condition(self, typed: _Typed, context: str) -> Expr:
        """The node of ``typed`` where a condition is required (a bare property is read as one)."""
        if typed.kind not in _CONDITION_KINDS:
            raise FilterExpressionError(
                f"invalid operand {self._text(typed)} at position {typed.start}: "
                f"{context} needs a condition, not {typed.kind.value}",
                typed.start,
            )
        if typed.kind is _Kind.PROPERTY:
            return AsBoolean(typed.node)
        return typed.node

    def _numeric(self, typed: _Typed, context: str) -> Expr:
        if typed.kind not in _NUMERIC_KINDS:
            raise FilterExpressionError(
                f"invalid operand {self._text(typed)} at position {typed.start}: "
                f"{context} needs a number or a property, not {typed.kind.value}",
                typed.start,
            )
        return typed.node

    def _check_equality_operands(self, left: _Typed, right: _Typed, operator: Token) -> None:
        for operand in (left, right):
            if operand.kind is _Kind.NULL:
                raise FilterExpressionError(
                    f"invalid operand {self._text(operand)} at position {operand.start}: "
                    f"{operator.text!r} cannot compare with NULL; use IS NULL or IS NOT NULL",
                    operand.start,
                )
        if left.kind is not right.kind and _Kind.PROPERTY not in (left.kind, right.kind):
            raise FilterExpressionError(
                f"invalid operand {self._text(right)} at position {right.start}: "
                f"{operator.text!r} cannot compare {left.kind.value} with {right.kind.value}",
                right.start,
            )

    # -- grammar ------------------------------------------------------------------------------

    def parse_filter(self) -> Expr:
        result = self._or_expr()
        if self._peek().kind is not TokenKind.EOF:
            raise self._unexpected_after_operand(self._peek(), "AND, OR or the end of the expression")
        return self._condition(result, "a filter")

    def _or_expr(self) -> _Typed:
        first = self._and_expr()
        if self._peek().kind is not TokenKind.OR:
            return first
        operands = [self._condition(first, "OR")]
        last = first
        while self._peek().kind is TokenKind.OR:
            self._advance()
            last = self._and_expr()
            operands.append(self._condition(last, "OR"))
        return _Typed(Or(tuple(operands)), _Kind.CONDITION, first.start, last.end)

    def _and_expr(self) -> _Typed:
        first = self._not_expr()
        if self._peek().kind is not TokenKind.AND:
            return first
        operands = [self._condition(first, "AND")]
        last = first
        while self._peek().kind is TokenKind.AND:
            self._advance()
            last = self._not_expr()
            operands.append(self._condition(last, "AND"))
        return _Typed(And(tuple(operands)), _Kind.CONDITION, first.start, last.end)

    def _not_expr(self) -> _Typed:
        if self._peek().kind is not TokenKind.NOT:
            return self._equality()
        not_token = self._advance()
        self._enter(not_token)
        operand = self._not_expr()
        self._leave()
        return _Typed(Not(self._condition(operand, "NOT")), _Kind.CONDITION, not_token.position, operand.end)

    def _equality(self) -> _Typed:
        left = self._relational()
        token = self._peek()
        operator = _EQUALITY_OPERATORS.get(token.kind)
        if operator is not None:
            self._advance()
            right = self._relational()
            self._check_equality_operands(left, right, token)
            return _Typed(Comparison(operator, left.node, right.node), _Kind.CONDITION, left.start, right.end)
        if token.kind is TokenKind.IS:
            self._advance()
            negated = self._peek().kind is TokenKind.NOT
            if negated:
                self._advance()
            null = self._expect(TokenKind.NULL, "NULL" if negated else "NULL or NOT NULL")
            return _Typed(
                IsNull(left.node, negated), _Kind.CONDITION, left.start, null.position + len(null.text)
            )
        return left

    def _relational(self) -> _Typed:
        left = self._unary()
        token = self._peek()
        operator = _RELATIONAL_OPERATORS.get(token.kind)
        if operator is not None:
            self._advance()
            right = self._unary()
            context = repr(token.text)
            node = Comparison(operator, self._numeric(left, context), self._numeric(right, context))
            return _Typed(node, _Kind.CONDITION, left.start, right.end)
        negated = False
        if token.kind is TokenKind.NOT:
            # After a complete operand, NOT can only introduce a negated operator.
            if self._peek(1).kind not in _NEGATABLE_OPERATORS:
                expected = "BETWEEN, IN, CONTAINS, STARTSWITH or ENDSWITH after NOT"
                raise self._unexpected(self._peek(1), expected)
            self._advance()
            negated = True
            token = self._peek()
        if token.kind is TokenKind.BETWEEN:
            return self._between(left, negated)
        if token.kind is TokenKind.IN:
            return self._in_list(left, negated)
        string_operator = _STRING_OPERATORS.get(token.kind)
        if string_operator is not None:
            return self._string_test(left, string_operator, negated)
        return left

    def _between(self, subject: _Typed, negated: bool) -> _Typed:
        self._advance()  # BETWEEN
        low = self._unary()
        self._expect(TokenKind.AND, "AND between the bounds of BETWEEN")
        high = self._unary()
        node = Between(
            self._numeric(subject, "BETWEEN"),
            self._numeric(low, "BETWEEN"),
            self._numeric(high, "BETWEEN"),
            negated,
        )
        if isinstance(node.low, Literal) and isinstance(node.high, Literal):
            # Both are numbers here (the kind checks above passed); reversed bounds are a mistake.
            low_value, high_value = node.low.value, node.high.value
            assert isinstance(low_value, int | float) and isinstance(high_value, int | float)
            if low_value > high_value:
                raise FilterExpressionError(
                    f"invalid bounds at position {low.start}: BETWEEN needs its low bound first, "
                    f"but {self._text(low)} > {self._text(high)}",
                    low.start,
                )
        return _Typed(node, _Kind.CONDITION, subject.start, high.end)

    def _in_list(self, subject: _Typed, negated: bool) -> _Typed:
        in_token = self._advance()  # IN
        if subject.kind is not _Kind.PROPERTY:
            raise FilterExpressionError(
                f"invalid operand {self._text(subject)} at position {subject.start}: "
                f"IN needs a property on its left, not {subject.kind.value}",
                subject.start,
            )
        self._expect(TokenKind.LPAREN, f"'(' after {in_token.text}")
        values: list[str] = []
        while True:
            literal = self._expect(TokenKind.STRING, "a string literal in the IN list")
            if len(values) == MAX_IN_LIST_SIZE:
                raise FilterExpressionError(
                    f"IN list too long at position {literal.position}: "
                    f"at most {MAX_IN_LIST_SIZE} values are allowed",
                    literal.position,
                )
            assert isinstance(literal.value, str)
            values.append(literal.value)
            if self._peek().kind is not TokenKind.COMMA:
                break
            self._advance()
        close = self._expect(TokenKind.RPAREN, "',' or ')' in the IN list")
        return _Typed(
            InList(subject.node, tuple(values), negated), _Kind.CONDITION, subject.start, close.position + 1
        )

    def _string_test(self, subject: _Typed, operator: StringOperator, negated: bool) -> _Typed:
        self._advance()  # CONTAINS / STARTSWITH / ENDSWITH
        if subject.kind not in (_Kind.PROPERTY, _Kind.STRING):
            raise FilterExpressionError(
                f"invalid operand {self._text(subject)} at position {subject.start}: "
                f"{operator.value} needs a property or a string, not {subject.kind.value}",
                subject.start,
            )
        pattern = self._expect(TokenKind.STRING, f"a string literal after {operator.value}")
        assert isinstance(pattern.value, str)
        node = StringTest(operator, subject.node, pattern.value, negated)
        return _Typed(node, _Kind.CONDITION, subject.start, pattern.position + len(pattern.text))

    def _unary(self) -> _Typed:
        sign = self._peek()
        if sign.kind not in (TokenKind.PLUS, TokenKind.MINUS):
            return self._primary()
        self._advance()
        self._enter(sign)
        operand = self._unary()
        self._leave()
        node = self._numeric(operand, f"unary {sign.text!r}")
        if sign.kind is TokenKind.PLUS:
            return _Typed(node, operand.kind, sign.position, operand.end)
        if isinstance(node, Literal):
            value = node.value
            assert isinstance(value, int | float) and not isinstance(value, bool)
            return _Typed(Literal(-value), _Kind.NUMBER, sign.position, operand.end)
        return _Typed(Negate(node), _Kind.NUMBER, sign.position, operand.end)

    def _primary(self) -> _Typed:
        token = self._peek()
        end = token.position + len(token.text)
        kind = token.kind
        if kind is TokenKind.STRING:
            self._advance()
            return _Typed(Literal(token.value), _Kind.STRING, token.position, end)
        if kind in (TokenKind.INTEGER, TokenKind.DECIMAL):
            self._advance()
            return _Typed(Literal(token.value), _Kind.NUMBER, token.position, end)
        if kind in (TokenKind.TRUE, TokenKind.FALSE):
            self._advance()
            return _Typed(Literal(kind is TokenKind.TRUE), _Kind.CONDITION, token.position, end)
        if kind is TokenKind.NULL:
            self._advance()
            return _Typed(Literal(None), _Kind.NULL, token.position, end)
        if kind is TokenKind.IDENTIFIER:
            self._advance()
            return _Typed(Property(token.text), _Kind.PROPERTY, token.position, end)
        if kind is TokenKind.LPAREN:
            self._advance()
            self._enter(token)
            inner = self._or_expr()
            if self._peek().kind is not TokenKind.RPAREN:
                raise self._unexpected_after_operand(self._peek(), "AND, OR or ')'")
            close = self._advance()
            self._leave()
            return _Typed(inner.node, inner.kind, token.position, close.position + 1)
        raise self._unexpected(token, "an expression")
