"""SQL92 filters: what each operator means, and how they combine."""

from __future__ import annotations

import pickle

import pytest

from homing.broker.filters import (
    MAX_IN_LIST_SIZE,
    MAX_NESTING_DEPTH,
    FilterExpressionError,
    FilterKind,
    Sql92Filter,
    compile_filter,
)
from homing.broker.filters.sql92_ast import (
    And,
    AsBoolean,
    Comparison,
    ComparisonOperator,
    Literal,
    Negate,
    Not,
    Or,
    Property,
)
from homing.broker.filters.sql92_eval import Evaluator, parse_boolean, parse_number
from homing.broker.filters.sql92_parser import parse
from homing.errors import HomingError


def evaluate(expression: str, tag: str | None = None, **properties: str) -> bool | None:
    """The three-valued result of ``expression`` for one message."""
    return Sql92Filter.compile(expression).evaluate(tag, properties)


def matches(expression: str, tag: str | None = None, **properties: str) -> bool:
    return Sql92Filter.compile(expression).matches(tag, properties)


# -- the RocketMQ documentation's own example --------------------------------------------------


def test_documentation_example() -> None:
    expression = "a > 5 AND b = 'abc'"
    assert matches(expression, a="10", b="abc", c="true")
    assert not matches(expression, a="1", b="abc", c="true")


# -- numeric comparisons -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "value", "expected"),
    [
        ("a > 5", "6", True),
        ("a > 5", "5", False),
        ("a >= 5", "5", True),
        ("a >= 5", "4", False),
        ("a < 5", "4", True),
        ("a < 5", "5", False),
        ("a <= 5", "5", True),
        ("a <= 5", "6", False),
        ("a = 5", "5", True),
        ("a = 5", "05", True),
        ("a = 5", "5.0", True),
        ("a = 5", "6", False),
        ("a <> 5", "6", True),
        ("a <> 5", "5", False),
        ("a > 2", "2.5", True),
        ("a > 2.5", "3", True),
        ("a < -1", "-2", True),
        ("a > -1.5", "-1", True),
        ("a > 3.1E10", "31415000000.0", True),
        ("a > 1e3", "1001", True),
        ("a = .5", "0.5", True),
        ("a = 5.", "5", True),
        ("a > 9223372036854775806", "9223372036854775807", True),
        ("a < 9223372036854775807", "99999999999999999999999", False),
        ("a > 5L", "6", True),
        ("a > 0.0", "0.1", True),
        ("a > 5", "+6", True),
        ("a > 5", "1e1", True),
        ("a > 5", ".6e1", True),
    ],
)
def test_numeric_comparison(expression: str, value: str, expected: bool) -> None:
    assert evaluate(expression, a=value) is expected


def test_number_on_the_left() -> None:
    assert matches("5 < a", a="6")
    assert not matches("5 < a", a="5")


def test_integers_compare_exactly() -> None:
    # A float comparison would call these equal.
    assert matches("a > 9007199254740992", a="9007199254740993")


def test_property_against_property_compares_numbers() -> None:
    assert matches("a > b", a="10", b="9")  # as strings, "10" < "9"
    assert evaluate("a > b", a="10", b="x") is None


def test_arithmetic_negation_of_a_property() -> None:
    assert matches("-a < -5", a="6")
    assert matches("-a = 3", a="-3")
    assert matches("- -a = 3", a="3")
    assert evaluate("-a < 0", a="x") is None
    assert evaluate("-a < 0") is None


def test_unary_plus() -> None:
    assert matches("a > +5", a="6")
    assert matches("+a > 5", a="6")


@pytest.mark.parametrize(
    "value", ["abc", "", " 5", "5 ", "NaN", "Infinity", "0x10", "5d", "1_000", "٣", "5e"]
)
def test_non_numeric_value_makes_numeric_comparison_unknown(value: str) -> None:
    for expression in ("a > 1", "a < 1", "a = 1", "a <> 1", "a BETWEEN 1 AND 2", "a NOT BETWEEN 1 AND 2"):
        assert evaluate(expression, a=value) is None, expression
        assert evaluate(f"NOT ({expression})", a=value) is None, expression


def test_non_numeric_value_does_not_spoil_the_rest_of_the_filter() -> None:
    # RocketMQ throws here and drops the message; Homing only makes `price > 5` UNKNOWN.
    assert matches("x = 1 OR price > 5", x="1", price="cheap")
    assert not matches("x = 1 AND price > 5", x="1", price="cheap")


def test_huge_numbers_in_properties() -> None:
    assert matches("a > 5", a="1" * 5000)
    assert matches("a > 5", a="1e999")
    assert matches("a < -5", a="-1e999")
    assert matches("a > 5", a="1" * 5000 + ".5")


def test_parse_number() -> None:
    assert parse_number("12") == 12
    assert isinstance(parse_number("12"), int)
    assert parse_number("-2.5") == -2.5
    assert parse_number("1E2") == 100.0
    assert parse_number("") is None
    assert parse_number("1.2.3") is None
    assert parse_number("١٢") is None, "only ASCII digits"


# -- BETWEEN -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "inside"),
    [("1", False), ("2", True), ("5", True), ("10", True), ("10.5", False), ("-3", False)],
)
def test_between_includes_its_bounds(value: str, inside: bool) -> None:
    assert evaluate("a BETWEEN 2 AND 10", a=value) is inside
    assert evaluate("a NOT BETWEEN 2 AND 10", a=value) is (not inside)


def test_between_with_negative_and_decimal_bounds() -> None:
    assert matches("a between -1.5 and -0.5", a="-1")
    assert matches("a between 0 and 0", a="0")


def test_between_with_property_bounds() -> None:
    assert matches("a BETWEEN lo AND hi", a="5", lo="1", hi="9")
    assert evaluate("a BETWEEN lo AND hi", a="5", lo="1") is None
    assert evaluate("a BETWEEN lo AND hi", a="0", hi="9") is None
    # One known half that is FALSE decides, as in RocketMQ's (a >= lo AND a <= hi).
    assert evaluate("a BETWEEN lo AND hi", a="10", lo="x", hi="9") is False
    assert evaluate("a NOT BETWEEN lo AND hi", a="10", lo="x", hi="9") is True


def test_between_consumes_its_own_and() -> None:
    assert matches("a BETWEEN 1 AND 5 AND b = 'x'", a="3", b="x")
    assert not matches("a BETWEEN 1 AND 5 AND b = 'x'", a="3", b="y")


# -- strings -----------------------------------------------------------------------------------


def test_string_equality() -> None:
    assert matches("a = 'abc'", a="abc")
    assert not matches("a = 'abc'", a="ABC")
    assert matches("a <> 'abc'", a="abd")
    assert not matches("a <> 'abc'", a="abc")
    assert matches("a = ''", a="")


def test_string_equality_compares_text_not_numbers() -> None:
    assert not matches("a = '5'", a="5.0")
    assert matches("a = b", a="3.14", b="3.14")
    assert not matches("a <> b", a="3.14", b="3.14")
    assert matches("a <> b", a="3.14", b="3.141")


@pytest.mark.parametrize(
    ("literal", "decoded"),
    [("''", ""), ("'it''s'", "it's"), ("''''", "'"), ("'a''''b'", "a''b"), ("'line\nbreak'", "line\nbreak")],
)
def test_string_literal_quoting(literal: str, decoded: str) -> None:
    assert matches(f"a = {literal}", a=decoded)


def test_rocketmq_quoted_tags_example() -> None:
    assert matches("TAGS is not null and TAGS='''''tag'''''", tag="''tag''")


def test_strings_are_unicode() -> None:
    assert matches("city = 'Zürich' AND name CONTAINS '日本'", city="Zürich", name="ようこそ日本へ")


# -- IN ----------------------------------------------------------------------------------------


def test_in_list() -> None:
    assert matches("a IN ('3', '4', '5')", a="4")
    assert not matches("a IN ('3', '4', '5')", a="6")
    assert not matches("a IN ('3')", a="3.0"), "IN compares strings"
    assert matches("a in ('x')", a="x")
    assert matches("a IN ('a', 'b', 'c', 'd', 'e', 'f')", a="f")


def test_not_in_list() -> None:
    assert matches("a NOT IN ('3', '4', '5')", a="6")
    assert not matches("a NOT IN ('3', '4', '5')", a="4")
    assert matches("a not in ('4', '4', '5') and b between 3 and 10", a="3", b="3")


def test_in_list_of_maximum_size() -> None:
    values = ", ".join(f"'{index}'" for index in range(MAX_IN_LIST_SIZE))
    assert matches(f"a IN ({values})", a=str(MAX_IN_LIST_SIZE - 1))


# -- CONTAINS / STARTSWITH / ENDSWITH ----------------------------------------------------------


@pytest.mark.parametrize(
    ("operator", "pattern", "expected"),
    [
        ("CONTAINS", "x", True),
        ("STARTSWITH", "ax", True),
        ("ENDSWITH", "xb", True),
        ("CONTAINS", "u", False),
        ("STARTSWITH", "xb", False),
        ("ENDSWITH", "ax", False),
        ("CONTAINS", "axb", True),
        ("CONTAINS", ".", False),
    ],
)
def test_string_operators(operator: str, pattern: str, expected: bool) -> None:
    assert evaluate(f"value {operator} '{pattern}'", value="axb") is expected
    assert evaluate(f"value NOT {operator} '{pattern}'", value="axb") is (not expected)
    assert evaluate(f"'axb' {operator.lower()} '{pattern}'") is expected


@pytest.mark.parametrize("operator", ["CONTAINS", "STARTSWITH", "ENDSWITH"])
def test_string_operators_with_empty_pattern_or_absent_property_are_false(operator: str) -> None:
    # RocketMQ: FALSE, not UNKNOWN, and the same for the NOT form.
    assert evaluate(f"value {operator} ''", value="axb") is False
    assert evaluate(f"value NOT {operator} ''", value="axb") is False
    assert evaluate(f"value {operator} 'x'") is False
    assert evaluate(f"value NOT {operator} 'x'") is False
    # ... so a NOT in front does match a message without the property.
    assert evaluate(f"NOT (value {operator} 'x')") is True


def test_string_operators_on_blanks() -> None:
    assert matches("' ' contains ' '")
    assert not matches("' ' not startswith ' '")


# -- NULL semantics ----------------------------------------------------------------------------


def test_is_null_and_is_not_null() -> None:
    assert matches("a IS NULL")
    assert not matches("a IS NULL", a="")
    assert matches("a IS NOT NULL", a="")
    assert not matches("a IS NOT NULL")
    assert matches("a is null OR a='hello'")
    assert matches("a is null OR a='hello'", a="hello")
    assert not matches("a is null OR a='hello'", a="bye")


@pytest.mark.parametrize(
    "expression",
    [
        "a = 'x'",
        "a <> 'x'",
        "a > 1",
        "a <= 1",
        "a BETWEEN 1 AND 2",
        "a NOT BETWEEN 1 AND 2",
        "a IN ('x')",
        "a NOT IN ('x')",
        "a = TRUE",
        "a",
        "-a > 0",
        "'x' = a",
        "'x' <> a",
        "a = b",
    ],
)
def test_absent_property_makes_a_comparison_unknown(expression: str) -> None:
    assert evaluate(expression, b="x") is None
    assert evaluate(f"NOT ({expression})", b="x") is None
    assert not matches(expression, b="x")
    assert not matches(f"NOT ({expression})", b="x")
    assert matches(f"({expression}) IS NULL", b="x")


def test_three_valued_logic() -> None:
    unknown, true, false = "a > 1", "TRUE", "FALSE"
    assert evaluate(f"{unknown} AND {false}") is False
    assert evaluate(f"{false} AND {unknown}") is False
    assert evaluate(f"{unknown} AND {true}") is None
    assert evaluate(f"{unknown} OR {true}") is True
    assert evaluate(f"{true} OR {unknown}") is True
    assert evaluate(f"{unknown} OR {false}") is None
    assert evaluate(f"NOT {unknown}") is None
    assert evaluate("NULL") is None
    assert evaluate("NOT NULL") is None
    assert evaluate("NULL IS NULL") is True
    assert evaluate("TRUE") is True
    assert evaluate("FALSE") is False


def test_tags_property_is_the_message_tag() -> None:
    assert matches("TAGS = 'TagA'", tag="TagA")
    assert not matches("TAGS = 'TagA'", tag="TagB")
    assert matches("TAGS IN ('TagA', 'TagB') AND a > 1", tag="TagB", a="2")
    assert matches("TAGS IS NULL")
    assert matches("TAGS IS NULL", tag=""), "an empty tag is no tag"
    # The tag argument wins over a TAGS entry among the properties.
    assert not matches("TAGS = 'fake'", "real", TAGS="fake")
    assert matches("TAGS IS NULL", None, TAGS="fake")


def test_evaluator_alone_reads_the_tag_from_properties() -> None:
    evaluator = Evaluator(parse("TAGS = 'x' AND a = 1"))
    assert evaluator.matches({"TAGS": "x", "a": "1"})
    assert not evaluator.matches({"a": "1"})
    assert evaluator.matches_message("x", {"a": "1"})


# -- booleans ----------------------------------------------------------------------------------


def test_boolean_literals_and_properties() -> None:
    assert matches("a = TRUE OR b = FALSE", a="true")
    assert matches("a = TRUE OR b = FALSE", b="FALSE")
    assert not matches("a = TRUE", a="false")
    assert evaluate("a = FALSE", a="yes") is None, "not a boolean: UNKNOWN (Java would say FALSE)"
    assert matches("(a > 1) = TRUE", a="2")
    assert matches("(a > 1) <> (b > 1)", a="2", b="0")


def test_bare_property_as_a_condition() -> None:
    assert evaluate("flag", flag="true") is True
    assert evaluate("flag", flag="True") is True
    assert evaluate("flag", flag="false") is False
    assert evaluate("flag", flag="1") is None
    assert evaluate("flag") is None
    assert evaluate("NOT flag", flag="false") is True
    assert evaluate("flag AND b = 'x'", flag="TRUE", b="x") is True


def test_parse_boolean() -> None:
    assert parse_boolean("tRuE") is True
    assert parse_boolean("FALSE") is False
    assert parse_boolean("t") is None
    assert parse_boolean("true ") is None
    assert parse_boolean("\u0131rue") is None, "dotless i is not i"


# -- precedence and structure ------------------------------------------------------------------


def test_and_binds_tighter_than_or() -> None:
    assert parse("a = 1 OR b = 2 AND c = 3") == Or(
        (
            Comparison(ComparisonOperator.EQ, Property("a"), Literal(1)),
            And(
                (
                    Comparison(ComparisonOperator.EQ, Property("b"), Literal(2)),
                    Comparison(ComparisonOperator.EQ, Property("c"), Literal(3)),
                )
            ),
        )
    )
    assert matches("a = 1 OR b = 2 AND c = 3", a="1")
    assert not matches("(a = 1 OR b = 2) AND c = 3", a="1")


def test_not_binds_looser_than_comparisons_and_tighter_than_and() -> None:
    # SQL-92: NOT negates the whole comparison (RocketMQ reads `(NOT a) = 'x'`).
    assert parse("NOT a = 'x' AND b = 'y'") == And(
        (
            Not(Comparison(ComparisonOperator.EQ, Property("a"), Literal("x"))),
            Comparison(ComparisonOperator.EQ, Property("b"), Literal("y")),
        )
    )
    assert matches("NOT a = 'x'", a="y")
    assert not matches("NOT a = 'x'", a="x")
    assert matches("NOT a > 5", a="4")
    assert matches("NOT NOT a = 'x'", a="x")
    assert matches("NOT a IS NULL", a="x")


def test_long_or_and_chains_are_flat() -> None:
    # Flat n-ary nodes: a long chain does not make a deep tree (no recursion limit to hit).
    any_of = " OR ".join(f"a={index}" for index in range(350))
    tree = parse(any_of)
    assert isinstance(tree, Or)
    assert len(tree.operands) == 350
    assert matches(any_of, a="349")
    assert matches(" AND ".join("a>0" for _ in range(450)), a="1")


def test_negative_literals_are_folded() -> None:
    assert parse("a > -5") == Comparison(ComparisonOperator.GT, Property("a"), Literal(-5))
    assert parse("a > - - 5") == Comparison(ComparisonOperator.GT, Property("a"), Literal(5))
    assert parse("a > -b") == Comparison(ComparisonOperator.GT, Property("a"), Negate(Property("b")))


def test_bare_property_is_read_as_boolean() -> None:
    assert parse("a AND NOT b") == And((AsBoolean(Property("a")), Not(AsBoolean(Property("b")))))


@pytest.mark.parametrize(
    "expression",
    [
        "a>5 and b<>'x'",
        "A > 5 AND B <> 'x'",
        "a > 5 And b <> 'x'",
        "a >5 aNd b<>'x'",
        "  a\t>\n5\r\nAND\fb <> 'x'  ",
        "a > 5 /* comment */ AND b <> 'x'",
        "a > 5 -- comment\nAND b <> 'x'",
        "(a > 5) AND (b <> 'x')",
        "((a > 5) AND ((b <> 'x')))",
    ],
)
def test_keywords_are_case_insensitive_and_blanks_free(expression: str) -> None:
    compiled = Sql92Filter.compile(expression)
    properties = {"a": "6", "b": "y", "A": "6", "B": "y"}
    assert compiled.matches(None, properties)


def test_every_keyword_in_any_case() -> None:
    expression = (
        "a BeTwEeN 1 aNd 5 oR b iN ('x') Or nOt c Is NoT nUlL oR d CoNtAiNs 'q' "
        "OR d sTaRtSwItH 'q' OR d EnDsWiTh 'q' OR e = tRuE OR e = FaLsE OR f IS null"
    )
    compiled = Sql92Filter.compile(expression)
    assert compiled.matches(None, {"c": "1", "f": "1", "a": "3"})


def test_property_names_are_case_sensitive() -> None:
    assert matches("Price > 5", Price="6")
    assert evaluate("Price > 5", price="6") is None


def test_identifier_characters() -> None:
    compiled = Sql92Filter.compile("_a$1 = 'x' AND $b_ = 'y'")
    assert compiled.matches(None, {"_a$1": "x", "$b_": "y"})


def test_line_comment_at_the_end() -> None:
    assert matches("a = 1 -- trailing comment", a="1")


def test_maximum_nesting_depth_is_accepted() -> None:
    depth = MAX_NESTING_DEPTH
    assert matches("(" * depth + "a = 1" + ")" * depth, a="1")
    assert matches("NOT " * depth + "a = 1", a="2" if depth % 2 else "1")
    # "- " not "-": "--" starts a comment.
    assert matches("a = " + "- " * depth + "1", a="1" if depth % 2 == 0 else "-1")
    nested_or = "a = 0"
    for index in range(1, depth):
        nested_or = f"(a = {index} OR {nested_or})"
    assert matches(nested_or, a="0")


# -- the compiled object -----------------------------------------------------------------------


def test_compile_filter_sql92_kind() -> None:
    for kind in (FilterKind.SQL92, "SQL92"):
        compiled = compile_filter(kind, "a > 1")
        assert compiled.kind is FilterKind.SQL92
        assert compiled.expression == "a > 1"
        assert compiled.may_match_tag_hash(0)
        assert compiled.matches(None, {"a": "2"})


def test_sql92_filters_are_values() -> None:
    assert Sql92Filter.compile("a > 1") == Sql92Filter.compile("a > 1")
    assert hash(Sql92Filter.compile("a > 1")) == hash(Sql92Filter.compile("a > 1"))
    assert Sql92Filter.compile("a > 1") != Sql92Filter.compile("a>1")


def test_canonical_form() -> None:
    compiled = Sql92Filter.compile("a=3 and b<>4 or not c between -1 and 2.5 and d in ('x','y''z')")
    assert compiled.canonical == (
        "(((a = 3) AND (b <> 4)) OR ((NOT (c BETWEEN (-1) AND 2.5)) AND (d IN ('x', 'y''z'))))"
    )
    assert parse(compiled.canonical) == compiled.syntax_tree


def test_unknown_kind_is_an_error() -> None:
    with pytest.raises(FilterExpressionError) as caught:
        compile_filter("SQL", "a > 1")
    assert caught.value.position is None
    assert "unknown filter kind 'SQL'" in str(caught.value)


def test_sql92_needs_an_expression() -> None:
    for expression in (None, "", "   ", "/* nothing */", "-- nothing"):
        with pytest.raises(FilterExpressionError) as caught:
            compile_filter(FilterKind.SQL92, expression)
        assert caught.value.position == 0


def test_error_is_a_permanent_homing_error() -> None:
    with pytest.raises(HomingError) as caught:
        compile_filter("SQL92", "a >")
    error = caught.value
    assert isinstance(error, FilterExpressionError)
    assert error.retriable is False
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, FilterExpressionError)
    assert (copy.message, copy.position) == (error.message, error.position)
