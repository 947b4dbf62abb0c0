"""SQL92 filters: every invalid expression raises FilterExpressionError, pointing at the fault."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from homing.broker.filters import (
    MAX_EXPRESSION_LENGTH,
    MAX_IN_LIST_SIZE,
    MAX_NESTING_DEPTH,
    FilterExpressionError,
    Sql92Filter,
)
from homing.broker.filters.sql92_lexer import TokenKind, tokenize


def compile_error(expression: str) -> FilterExpressionError:
    with pytest.raises(FilterExpressionError) as caught:
        Sql92Filter.compile(expression)
    return caught.value


@pytest.mark.parametrize(
    ("expression", "position", "message"),
    [
        # Syntax: the RocketMQ test suite's own invalid expression first.
        ("a and between 2 and 10", 6, "unexpected token 'between' at position 6: expected an expression"),
        ("a = 1 AND", 9, "unexpected end of expression at position 9: expected an expression"),
        ("a = 1 AND AND b = 2", 10, "unexpected token 'AND' at position 10: expected an expression"),
        (
            "a = 1 b = 2",
            6,
            "unexpected token 'b' at position 6: expected AND, OR or the end of the expression",
        ),
        ("(a = 1", 6, "unexpected end of expression at position 6: expected AND, OR or ')'"),
        ("a = 1)", 5, "unexpected token ')' at position 5: expected AND, OR or the end"),
        ("((a = 1) OR b = 2", 17, "expected AND, OR or ')'"),
        ("()", 1, "unexpected token ')' at position 1: expected an expression"),
        ("a = 'x' = TRUE", 8, "comparisons do not chain"),
        ("a > 1 > 0", 6, "comparisons do not chain"),
        ("a IS NULL IS NULL", 10, "comparisons do not chain"),
        ("(a = 1 = b)", 7, "comparisons do not chain"),
        ("(a = 1 IN ('x'))", 5, "IN needs a property on its left, not a number"),
        ("a IS 5", 5, "expected NULL or NOT NULL"),
        ("a IS NOT 5", 9, "expected NULL"),
        ("a NOT = 5", 6, "expected BETWEEN, IN, CONTAINS, STARTSWITH or ENDSWITH after NOT"),
        ("a NOT", 5, "unexpected end of expression"),
        ("a BETWEEN 1 OR 2", 12, "expected AND between the bounds of BETWEEN"),
        ("a BETWEEN 1", 11, "expected AND between the bounds"),
        ("a IN 'x'", 5, "expected '(' after IN"),
        ("a IN ()", 6, "expected a string literal in the IN list"),
        ("a IN ('x',)", 10, "expected a string literal in the IN list"),
        ("a IN ('x' 'y')", 10, "expected ',' or ')' in the IN list"),
        ("a IN ('x'", 9, "expected ',' or ')' in the IN list"),
        ("a IN (b)", 6, "expected a string literal in the IN list"),
        ("a IN (1, 2)", 6, "expected a string literal in the IN list"),
        ("a CONTAINS x", 11, "expected a string literal after CONTAINS"),
        ("a NOT CONTAINS 123", 15, "expected a string literal after CONTAINS"),
        ("'axb' contains ", 15, "unexpected end of expression"),
        ("a = NOT b", 4, "unexpected token 'NOT' at position 4: expected an expression"),
        ("a =", 3, "unexpected end of expression at position 3"),
        ("NOT", 3, "unexpected end of expression at position 3"),
        ("a = 1 OR", 8, "unexpected end of expression"),
        # Types.
        ("5", 0, "a filter needs a condition, not a number"),
        ("'abc'", 0, "a filter needs a condition, not a string"),
        ("-a", 0, "a filter needs a condition, not a number"),
        ("a = 1 AND 5", 10, "AND needs a condition, not a number"),
        ("'x' OR a = 1", 0, "OR needs a condition, not a string"),
        ("NOT 5", 4, "NOT needs a condition, not a number"),
        ("a > 'x'", 4, "'>' needs a number or a property, not a string"),
        ("'x' < a", 0, "'<' needs a number or a property, not a string"),
        ("a >= TRUE", 5, "'>=' needs a number or a property, not a condition"),
        ("a <= NULL", 5, "'<=' needs a number or a property, not NULL"),
        ("(a = 1) > 0", 0, "'>' needs a number or a property, not a condition"),
        ("a BETWEEN 'a' AND 'z'", 10, "BETWEEN needs a number or a property, not a string"),
        ("'a' BETWEEN 1 AND 2", 0, "BETWEEN needs a number or a property, not a string"),
        ("a BETWEEN 10 AND 1", 10, "BETWEEN needs its low bound first, but '10' > '1'"),
        (" a between 10 and 0", 11, "low bound first"),
        ("a BETWEEN -1 AND -2", 10, "low bound first"),
        ("a = NULL", 4, "use IS NULL or IS NOT NULL"),
        ("NULL <> a", 0, "use IS NULL or IS NOT NULL"),
        ("'5' = 5", 6, "'=' cannot compare a string with a number"),
        ("TRUE = 5", 7, "'=' cannot compare a condition with a number"),
        ("5 <> TRUE", 5, "'<>' cannot compare a number with a condition"),
        ("(a > 1) = 'x'", 10, "cannot compare a condition with a string"),
        ("-a = 'x'", 5, "cannot compare a number with a string"),
        ("'x' IN ('x')", 0, "IN needs a property on its left, not a string"),
        ("(a = 1) IN ('x')", 0, "IN needs a property on its left, not a condition"),
        ("5 CONTAINS 'x'", 0, "CONTAINS needs a property or a string, not a number"),
        ("-'x' = 1", 1, "unary '-' needs a number or a property, not a string"),
        ("+TRUE", 1, "unary '+' needs a number or a property, not a condition"),
        # Lexical.
        ("a = 'abc", 4, "unterminated string literal at position 4"),
        ("a = 'it''s", 4, "unterminated string literal"),
        ("a = 1 /* comment", 6, "unterminated comment at position 6"),
        ('a = "x"', 4, "string literals take single quotes"),
        ("a != 1", 2, "use '<>'"),
        ("a == 1", 3, "unexpected token '=' at position 3: expected an expression"),
        ("a = 1 && b = 2", 6, "unexpected character '&' at position 6"),
        ("a = 1 ; DROP TABLE x", 6, "unexpected character ';' at position 6"),
        ("a.b = 1", 1, "unexpected character '.' at position 1"),
        ("a = 1\x00", 5, "unexpected character '\\x00' at position 5"),
        ("prix_€ = 1", 5, "unexpected character '€' at position 5"),
        ("é = 1", 0, "unexpected character 'é' at position 0"),
        ("a\u00a0= 1", 1, "unexpected character '\\xa0' at position 1"),
        ("a = ٣", 4, "unexpected character"),
        ("a = 007", 4, "integer literals cannot have leading zeros"),
        ("a = 00", 4, "leading zeros"),
        ("a = 5abc", 4, "invalid number '5abc' at position 4"),
        ("a = 1e", 4, "invalid number '1e'"),
        ("a = 1e+", 4, "invalid number '1e+'"),
        ("a = 5.5.5", 4, "invalid number '5.5.5'"),
        ("a = 5.0L", 4, "invalid number '5.0L'"),
        ("a = 5LL", 4, "invalid number"),
        ("a > 9223372036854775808", 4, "out of range: integer literals must fit a signed 64-bit integer"),
        ("a > 100000000000000000000000", 4, "out of range"),
        ("a > 1e309", 4, "out of range: decimal literals must be finite"),
        ("a > 1" + "1" * 400 + ".5", 4, "out of range"),
    ],
)
def test_invalid_expression(expression: str, position: int, message: str) -> None:
    error = compile_error(expression)
    assert error.position == position, str(error)
    assert message in str(error)
    assert f"at position {position}" in str(error)


def test_error_messages_shorten_long_text() -> None:
    error = compile_error("a = 1 AND 'x" + "y" * 200 + "'")
    assert "..." in str(error)
    assert len(str(error)) < 200


def test_too_long_expression() -> None:
    padding = "a = 1" + " " * (MAX_EXPRESSION_LENGTH - 5)
    assert Sql92Filter.compile(padding).matches(None, {"a": "1"})
    error = compile_error(padding + " ")
    assert error.position == MAX_EXPRESSION_LENGTH
    assert "too long" in str(error)


def test_too_deeply_nested_parentheses() -> None:
    depth = MAX_NESTING_DEPTH + 1
    error = compile_error("(" * depth + "a = 1" + ")" * depth)
    assert error.position == MAX_NESTING_DEPTH
    assert "nested too deeply" in str(error)


@pytest.mark.parametrize(
    "build",
    [
        lambda depth: "NOT " * depth + "a = 1",
        lambda depth: "a = " + "- " * depth + "1",
        lambda depth: "a = " + "+" * depth + "1",
        lambda depth: "(NOT " * (depth // 2 + 1) + "a = 1" + ")" * (depth // 2 + 1),
    ],
)
def test_too_deeply_nested_prefixes(build: Callable[[int], str]) -> None:
    assert "nested too deeply" in str(compile_error(build(MAX_NESTING_DEPTH + 1)))


def test_deep_nesting_up_to_the_length_limit_never_overflows_the_stack() -> None:
    half = MAX_EXPRESSION_LENGTH // 2
    for expression in ("(" * half + ")" * half, "NOT " * (MAX_EXPRESSION_LENGTH // 4), "-" * 4000):
        with pytest.raises(FilterExpressionError):
            Sql92Filter.compile(expression)


def test_parsing_on_an_almost_exhausted_stack_is_still_an_expression_error() -> None:
    expression = "(" * MAX_NESTING_DEPTH + "a = 1" + ")" * MAX_NESTING_DEPTH
    limit = sys.getrecursionlimit()

    def recurse(depth: int) -> FilterExpressionError | None:
        if depth > 0:
            return recurse(depth - 1)
        try:
            Sql92Filter.compile(expression)
        except FilterExpressionError as error:
            return error
        return None

    # Burn most of the stack first, then parse a maximal (valid) expression.
    error = recurse(limit - 150)
    assert error is not None
    assert "nested too deeply" in str(error)


def test_in_list_too_long() -> None:
    values = ", ".join(f"'{index}'" for index in range(MAX_IN_LIST_SIZE + 1))
    expression = f"a IN ({values})"
    error = compile_error(expression)
    assert error.position == expression.index(f"'{MAX_IN_LIST_SIZE}'")
    assert "IN list too long" in str(error)


def test_lexer_tokens() -> None:
    tokens = tokenize("a<>'x''y' AND b>=-1.5e3 OR c IN ('q') -- done")
    assert [token.kind for token in tokens] == [
        TokenKind.IDENTIFIER,
        TokenKind.NE,
        TokenKind.STRING,
        TokenKind.AND,
        TokenKind.IDENTIFIER,
        TokenKind.GE,
        TokenKind.MINUS,
        TokenKind.DECIMAL,
        TokenKind.OR,
        TokenKind.IDENTIFIER,
        TokenKind.IN,
        TokenKind.LPAREN,
        TokenKind.STRING,
        TokenKind.RPAREN,
        TokenKind.EOF,
    ]
    assert tokens[2].value == "x'y"
    assert tokens[7].value == 1500.0
    assert tokens[-1].position == len("a<>'x''y' AND b>=-1.5e3 OR c IN ('q') -- done")
    assert [token.position for token in tokens[:4]] == [0, 1, 3, 10]
