"""Tokenizer for SQL92 filter expressions.

Theory of operation
-------------------
One left-to-right pass over the text, one character class decision per token; no regular
expressions (their Unicode classes would let non-ASCII digits and letters in) and no backtracking.
The result is a list of :class:`Token` ending with an ``EOF`` token whose position is the length of
the expression, so the parser never has to check for running off the end.

The lexical rules are those of RocketMQ's ``SelectorParser.jj``:

- blanks are space, tab, CR, LF and form feed; ``-- ...`` comments run to the end of the line and
  ``/* ... */`` comments do not nest;
- keywords are case-insensitive: ``AND OR NOT BETWEEN IN IS NULL TRUE FALSE CONTAINS STARTSWITH
  ENDSWITH``; a keyword can never be a property name;
- identifiers (property names) are ``[A-Za-z_$][A-Za-z0-9_$]*``, case-sensitive;
- string literals are single-quoted, a quote inside is doubled (``'it''s'``), and may span lines;
- integer literals are ``0`` or start with 1-9, may end in ``L``/``l`` (ignored), and must fit a
  signed 64-bit integer; decimal literals are ``5.``, ``5.5``, ``.5``, ``5E3``, ``5.5e-3`` ... and
  must be finite doubles;
- operators are ``= <> < <= > >= ( ) , + -``.

Deviations, all of which turn something RocketMQ misparses later into an immediate, precise error
(or accept what it wrongly refuses):

- a number immediately followed by a letter, digit, ``_``, ``$`` or ``.`` (``5abc``, ``1e``,
  ``5.5.5``) is an invalid number, and ``007`` is refused outright (JavaCC splits both into
  several tokens, which the grammar then rejects less clearly);
- ``0.0`` and other decimal literals below ``Double.MIN_VALUE`` are accepted (RocketMQ's range
  check wrongly refuses them);
- a ``--`` comment may end the expression without a final newline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from homing.broker.filters.errors import FilterExpressionError
from homing.broker.filters.limits import MAX_EXPRESSION_LENGTH

__all__ = ["KEYWORDS", "Token", "TokenKind", "describe_token", "tokenize"]


class TokenKind(Enum):
    IDENTIFIER = "identifier"
    STRING = "string literal"
    INTEGER = "integer literal"
    DECIMAL = "decimal literal"
    # Keywords
    AND = "AND"
    OR = "OR"
    NOT = "NOT"
    BETWEEN = "BETWEEN"
    IN = "IN"
    IS = "IS"
    NULL = "NULL"
    TRUE = "TRUE"
    FALSE = "FALSE"
    CONTAINS = "CONTAINS"
    STARTSWITH = "STARTSWITH"
    ENDSWITH = "ENDSWITH"
    # Punctuation and operators
    LPAREN = "("
    RPAREN = ")"
    COMMA = ","
    PLUS = "+"
    MINUS = "-"
    EQ = "="
    NE = "<>"
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    EOF = "end of expression"


KEYWORDS: dict[str, TokenKind] = {
    kind.value: kind
    for kind in (
        TokenKind.AND,
        TokenKind.OR,
        TokenKind.NOT,
        TokenKind.BETWEEN,
        TokenKind.IN,
        TokenKind.IS,
        TokenKind.NULL,
        TokenKind.TRUE,
        TokenKind.FALSE,
        TokenKind.CONTAINS,
        TokenKind.STARTSWITH,
        TokenKind.ENDSWITH,
    )
}

_SINGLE_CHAR_OPERATORS = {
    "(": TokenKind.LPAREN,
    ")": TokenKind.RPAREN,
    ",": TokenKind.COMMA,
    "+": TokenKind.PLUS,
    "-": TokenKind.MINUS,
    "=": TokenKind.EQ,
}

_BLANKS = frozenset(" \t\n\r\f")
_DIGITS = frozenset("0123456789")
_IDENTIFIER_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_$")
_IDENTIFIER_PART = _IDENTIFIER_START | _DIGITS
_LONG_MAX = 2**63 - 1
# More digits than Long.MAX_VALUE has can never fit; checking the length first also keeps int()
# away from Python's limit on converting very long digit strings.
_LONG_MAX_DIGITS = len(str(_LONG_MAX))
_MAX_QUOTED_TEXT = 40


@dataclass(frozen=True, slots=True)
class Token:
    """One token: its kind, its text as written, where it starts, and its decoded value.

    ``value`` is the decoded string of a string literal, the name of an identifier, the number of a
    numeric literal, and ``None`` for everything else.
    """

    kind: TokenKind
    text: str
    position: int
    value: str | int | float | None = None


def describe_token(token: Token) -> str:
    """How an error message names a token: ``token 'AND'`` or ``end of expression``."""
    if token.kind is TokenKind.EOF:
        return "end of expression"
    return f"token {quote_source(token.text)}"


def quote_source(text: str) -> str:
    """Source text quoted for an error message, shortened if long."""
    if len(text) > _MAX_QUOTED_TEXT:
        text = text[: _MAX_QUOTED_TEXT - 3] + "..."
    return repr(text)


def tokenize(expression: str) -> list[Token]:
    """Split an expression into tokens, ending with an ``EOF`` token.

    Raises :class:`FilterExpressionError` for text that is too long or holds something that is no
    token (a stray character, an unterminated string or comment, an invalid number).
    """
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise FilterExpressionError(
            f"expression too long at position {MAX_EXPRESSION_LENGTH}: "
            f"at most {MAX_EXPRESSION_LENGTH} characters are allowed",
            MAX_EXPRESSION_LENGTH,
        )
    tokens: list[Token] = []
    length = len(expression)
    index = 0
    while index < length:
        char = expression[index]
        if char in _BLANKS:
            index += 1
        elif expression.startswith("--", index):
            index = _skip_line_comment(expression, index)
        elif expression.startswith("/*", index):
            index = _skip_block_comment(expression, index)
        elif char in _IDENTIFIER_START:
            end = index + 1
            while end < length and expression[end] in _IDENTIFIER_PART:
                end += 1
            text = expression[index:end]
            keyword = KEYWORDS.get(text.upper())
            if keyword is not None:
                tokens.append(Token(keyword, text, index))
            else:
                tokens.append(Token(TokenKind.IDENTIFIER, text, index, text))
            index = end
        elif char in _DIGITS or (char == "." and index + 1 < length and expression[index + 1] in _DIGITS):
            token = _read_number(expression, index)
            tokens.append(token)
            index += len(token.text)
        elif char == "'":
            token = _read_string(expression, index)
            tokens.append(token)
            index += len(token.text)
        else:
            token = _read_operator(expression, index)
            tokens.append(token)
            index += len(token.text)
    tokens.append(Token(TokenKind.EOF, "", length))
    return tokens


def _skip_line_comment(expression: str, start: int) -> int:
    ends = [found for found in (expression.find("\n", start), expression.find("\r", start)) if found >= 0]
    return min(ends) if ends else len(expression)


def _skip_block_comment(expression: str, start: int) -> int:
    end = expression.find("*/", start + 2)
    if end < 0:
        raise FilterExpressionError(
            f"unterminated comment at position {start}: '/*' has no matching '*/'", start
        )
    return end + 2


def _read_number(expression: str, start: int) -> Token:
    length = len(expression)
    end = start
    while end < length and expression[end] in _DIGITS:
        end += 1
    is_decimal = False
    if end < length and expression[end] == ".":
        is_decimal = True
        end += 1
        while end < length and expression[end] in _DIGITS:
            end += 1
    if end < length and expression[end] in "eE":
        exponent_end = end + 1
        if exponent_end < length and expression[exponent_end] in "+-":
            exponent_end += 1
        if exponent_end < length and expression[exponent_end] in _DIGITS:
            is_decimal = True
            end = exponent_end
            while end < length and expression[end] in _DIGITS:
                end += 1
        # else: leave the 'e' in place; the check below reports the malformed number.
    digits_end = end
    if not is_decimal and end < length and expression[end] in "lL":
        end += 1  # Java's long suffix; every integer literal is a 64-bit integer anyway.
    if end < length and (expression[end] in _IDENTIFIER_PART or expression[end] == "."):
        bad_end = end
        while bad_end < length and (expression[bad_end] in _IDENTIFIER_PART or expression[bad_end] in ".+-"):
            bad_end += 1
        raise FilterExpressionError(
            f"invalid number {quote_source(expression[start:bad_end])} at position {start}", start
        )
    text = expression[start:end]
    if is_decimal:
        value = float(text)
        if math.isinf(value):
            raise FilterExpressionError(
                f"number {quote_source(text)} at position {start} is out of range: "
                f"decimal literals must be finite 64-bit floating-point numbers",
                start,
            )
        return Token(TokenKind.DECIMAL, text, start, value)
    digits = expression[start:digits_end]
    if len(digits) > 1 and digits[0] == "0":
        # ActiveMQ, where this grammar comes from, read a leading 0 as octal; refuse to guess.
        raise FilterExpressionError(
            f"invalid number {quote_source(text)} at position {start}: "
            f"integer literals cannot have leading zeros",
            start,
        )
    if len(digits) > _LONG_MAX_DIGITS or int(digits) > _LONG_MAX:
        raise FilterExpressionError(
            f"number {quote_source(text)} at position {start} is out of range: "
            f"integer literals must fit a signed 64-bit integer",
            start,
        )
    return Token(TokenKind.INTEGER, text, start, int(digits))


def _read_string(expression: str, start: int) -> Token:
    parts: list[str] = []
    index = start + 1
    while True:
        quote = expression.find("'", index)
        if quote < 0:
            raise FilterExpressionError(
                f"unterminated string literal at position {start}: missing closing quote", start
            )
        parts.append(expression[index:quote])
        if expression.startswith("''", quote):
            parts.append("'")
            index = quote + 2
            continue
        end = quote + 1
        return Token(TokenKind.STRING, expression[start:end], start, "".join(parts))


def _read_operator(expression: str, start: int) -> Token:
    char = expression[start]
    following = expression[start + 1 : start + 2]
    if char == "<":
        if following == "=":
            return Token(TokenKind.LE, "<=", start)
        if following == ">":
            return Token(TokenKind.NE, "<>", start)
        return Token(TokenKind.LT, "<", start)
    if char == ">":
        if following == "=":
            return Token(TokenKind.GE, ">=", start)
        return Token(TokenKind.GT, ">", start)
    kind = _SINGLE_CHAR_OPERATORS.get(char)
    if kind is not None:
        return Token(kind, char, start)
    if char == "!" and following == "=":
        raise FilterExpressionError(
            f"unexpected characters '!=' at position {start}: use '<>' for 'not equal'", start
        )
    if char == '"':
        raise FilterExpressionError(
            f"unexpected character '\"' at position {start}: string literals take single quotes", start
        )
    raise FilterExpressionError(f"unexpected character {char!r} at position {start}", start)
