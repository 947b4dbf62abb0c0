"""SQL92 filters under random input.

1. Any text either compiles or raises FilterExpressionError (with a position inside the text),
   never anything else; the same for "token soups" built from the grammar's own tokens, which get
   much deeper into the parser than random characters do.
2. A compiled filter never raises, whatever the properties.
3. For random well-formed expressions, the evaluator agrees with a tiny reference evaluator
   written independently here (its own Kleene logic, its own table of what each property value
   means as a number or a boolean), and the canonical rendering parses back to the same tree.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from homing.broker.filters import MAX_EXPRESSION_LENGTH, FilterExpressionError, Sql92Filter
from homing.broker.filters.sql92_parser import parse

Properties = dict[str, str]
Truth = bool | None
Reference = Callable[[Properties, str | None], Truth]
Condition = tuple[str, Reference]

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_compiles_or_fails_cleanly(text: str) -> Sql92Filter | None:
    try:
        return Sql92Filter.compile(text)
    except FilterExpressionError as error:
        assert error.position is not None
        assert 0 <= error.position <= max(len(text), MAX_EXPRESSION_LENGTH)
        assert f"at position {error.position}" in str(error)
        assert error.retriable is False
        return None


# -- 1. arbitrary text and token soups ---------------------------------------------------------

KEYWORDS = [
    "AND",
    "OR",
    "NOT",
    "BETWEEN",
    "IN",
    "IS",
    "NULL",
    "TRUE",
    "FALSE",
    "CONTAINS",
    "STARTSWITH",
    "ENDSWITH",
]
SOUP_TOKENS = [
    *KEYWORDS,
    *(keyword.lower() for keyword in KEYWORDS),
    "a",
    "b",
    "TAGS",
    "_x$",
    "'x'",
    "''",
    "'it''s'",
    "'",
    "0",
    "5",
    "1.5",
    "1e3",
    ".5",
    "5L",
    "007",
    "9223372036854775808",
    "1e999",
    "=",
    "<>",
    "<",
    "<=",
    ">",
    ">=",
    "(",
    ")",
    ",",
    "+",
    "-",
    "/*",
    "*/",
    "--",
    "!",
    "\n",
    "\x00",
    "é",
]
SEPARATORS = [" ", "", "\t", "\n"]


@st.composite
def token_soups(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(st.sampled_from(SOUP_TOKENS), max_size=40))
    separators = draw(st.lists(st.sampled_from(SEPARATORS), min_size=len(tokens), max_size=len(tokens)))
    return "".join(token + separator for token, separator in zip(tokens, separators, strict=True))


@FUZZ
@given(st.text())
@example("(" * 5000)
@example("NOT " * 1000 + "a")
@example("a" * (MAX_EXPRESSION_LENGTH + 1))
@example("a = '" + "'" * 3000)
def test_arbitrary_text_compiles_or_raises_filter_expression_error(text: str) -> None:
    check_compiles_or_fails_cleanly(text)


@FUZZ
@given(st.text(alphabet="ab()'=<>-+.,0159eEL NOTANDORIS\n*/", max_size=60))
def test_grammar_flavoured_text_compiles_or_raises_filter_expression_error(text: str) -> None:
    check_compiles_or_fails_cleanly(text)


ARBITRARY_PROPERTIES = st.dictionaries(
    st.one_of(st.sampled_from(["a", "b", "TAGS", "_x$"]), st.text(max_size=5)),
    st.one_of(st.text(), st.sampled_from(["1", "-2.5", "1e999", "true", "FALSE", "x", "'", ""])),
    max_size=6,
)


@FUZZ
@given(token_soups(), ARBITRARY_PROPERTIES, st.one_of(st.none(), st.text(max_size=5)))
def test_token_soups_compile_or_raise_and_compiled_ones_never_raise(
    text: str, properties: Properties, tag: str | None
) -> None:
    compiled = check_compiles_or_fails_cleanly(text)
    if compiled is None:
        return
    result = compiled.evaluate(tag, properties)
    assert result in (True, False, None)
    assert compiled.matches(tag, properties) is (result is True)
    try:
        reparsed = parse(compiled.canonical)
    except FilterExpressionError as error:
        # The canonical form adds parentheses, which may push it over a limit; nothing else.
        assert "nested too deeply" in str(error) or "too long" in str(error)
    else:
        assert reparsed == compiled.syntax_tree


# -- 3. a reference evaluator for well-formed expressions --------------------------------------

NAMES = ["a", "b", "TAGS"]
# Every property value the generator uses, and what it means as a number / as a boolean.
AS_NUMBER: dict[str, float | None] = {
    "0": 0,
    "1": 1,
    "5": 5,
    "-3": -3,
    "2.5": 2.5,
    "1e2": 100,
    "007": 7,
    "+4": 4,
    "abc": None,
    "": None,
    " 5": None,
    "true": None,
    "FALSE": None,
    "x": None,
    "it's": None,
}
AS_BOOLEAN: dict[str, bool] = {"true": True, "FALSE": False}
VALUES = list(AS_NUMBER)
# Numeric literals as written, and their values (negative ones exercise folding of unary minus).
NUMBERS: list[tuple[str, float]] = [
    ("0", 0),
    ("1", 1),
    ("-3", -3),
    ("2.5", 2.5),
    ("5", 5),
    ("1e2", 100),
    ("-0.5", -0.5),
]


def lookup(properties: Properties, tag: str | None, name: str) -> str | None:
    if name == "TAGS":
        return tag or None
    return properties.get(name)


def kleene_not(value: Truth) -> Truth:
    return None if value is None else not value


def kleene_and(values: list[Truth]) -> Truth:
    if False in values:
        return False
    return None if None in values else True


def kleene_or(values: list[Truth]) -> Truth:
    if True in values:
        return True
    return None if None in values else False


def quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@st.composite
def keyword(draw: st.DrawFn, word: str) -> str:
    return draw(st.sampled_from([word, word.lower(), word.capitalize()]))


@st.composite
def numeric_comparisons(draw: st.DrawFn) -> Condition:
    name = draw(st.sampled_from(NAMES))
    literal, number = draw(st.sampled_from(NUMBERS))
    operator = draw(st.sampled_from(["<", "<=", ">", ">=", "=", "<>"]))
    flipped = draw(st.booleans())
    mirrored = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "=": "=", "<>": "<>"}
    text = f"{literal} {mirrored[operator]} {name}" if flipped else f"{name} {operator} {literal}"
    tests: dict[str, Callable[[float, float], bool]] = {
        "<": lambda x, y: x < y,
        "<=": lambda x, y: x <= y,
        ">": lambda x, y: x > y,
        ">=": lambda x, y: x >= y,
        "=": lambda x, y: x == y,
        "<>": lambda x, y: x != y,
    }

    def reference(properties: Properties, tag: str | None) -> Truth:
        value = lookup(properties, tag, name)
        meaning = None if value is None else AS_NUMBER[value]
        return None if meaning is None else tests[operator](meaning, number)

    return text, reference


@st.composite
def string_equalities(draw: st.DrawFn) -> Condition:
    name = draw(st.sampled_from(NAMES))
    literal = draw(st.sampled_from(VALUES))
    negated = draw(st.booleans())
    text = f"{name} {'<>' if negated else '='} {quote(literal)}"

    def reference(properties: Properties, tag: str | None) -> Truth:
        value = lookup(properties, tag, name)
        return None if value is None else (value == literal) != negated

    return text, reference


@st.composite
def boolean_equalities(draw: st.DrawFn) -> Condition:
    name = draw(st.sampled_from(NAMES))
    literal = draw(st.booleans())
    text = f"{name} = {draw(keyword('TRUE' if literal else 'FALSE'))}"

    def reference(properties: Properties, tag: str | None) -> Truth:
        value = lookup(properties, tag, name)
        meaning = None if value is None else AS_BOOLEAN.get(value)
        return None if meaning is None else meaning == literal

    return text, reference


@st.composite
def betweens(draw: st.DrawFn) -> Condition:
    name = draw(st.sampled_from(NAMES))
    (low_text, low), (high_text, high) = sorted(
        draw(st.lists(st.sampled_from(NUMBERS), min_size=2, max_size=2)), key=lambda n: n[1]
    )
    negated = draw(st.booleans())
    not_ = draw(keyword("NOT")) + " " if negated else ""
    text = f"{name} {not_}{draw(keyword('BETWEEN'))} {low_text} {draw(keyword('AND'))} {high_text}"

    def reference(properties: Properties, tag: str | None) -> Truth:
        value = lookup(properties, tag, name)
        meaning = None if value is None else AS_NUMBER[value]
        return None if meaning is None else (low <= meaning <= high) != negated

    return text, reference


@st.composite
def in_lists(draw: st.DrawFn) -> Condition:
    name = draw(st.sampled_from(NAMES))
    members = draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=4))
    negated = draw(st.booleans())
    not_ = draw(keyword("NOT")) + " " if negated else ""
    text = f"{name} {not_}{draw(keyword('IN'))} ({', '.join(quote(member) for member in members)})"

    def reference(properties: Properties, tag: str | None) -> Truth:
        value = lookup(properties, tag, name)
        return None if value is None else (value in members) != negated

    return text, reference


@st.composite
def string_tests(draw: st.DrawFn) -> Condition:
    name = draw(st.sampled_from(NAMES))
    operator = draw(st.sampled_from(["CONTAINS", "STARTSWITH", "ENDSWITH"]))
    pattern = draw(st.sampled_from(["", "a", "b", "5", "'", "e", "ru"]))
    negated = draw(st.booleans())
    not_ = draw(keyword("NOT")) + " " if negated else ""
    text = f"{name} {not_}{draw(keyword(operator))} {quote(pattern)}"
    tests: dict[str, Callable[[str, str], bool]] = {
        "CONTAINS": lambda value, part: part in value,
        "STARTSWITH": lambda value, part: value[: len(part)] == part,
        "ENDSWITH": lambda value, part: value[len(value) - len(part) :] == part,
    }

    def reference(properties: Properties, tag: str | None) -> Truth:
        value = lookup(properties, tag, name)
        if value is None or pattern == "":
            return False
        return tests[operator](value, pattern) != negated

    return text, reference


@st.composite
def null_tests(draw: st.DrawFn) -> Condition:
    name = draw(st.sampled_from(NAMES))
    negated = draw(st.booleans())
    text = (
        f"{name} {draw(keyword('IS'))} {draw(keyword('NOT')) + ' ' if negated else ''}{draw(keyword('NULL'))}"
    )
    return text, lambda properties, tag: (lookup(properties, tag, name) is None) != negated


@st.composite
def bare_properties(draw: st.DrawFn) -> Condition:
    name = draw(st.sampled_from(NAMES))

    def reference(properties: Properties, tag: str | None) -> Truth:
        value = lookup(properties, tag, name)
        return None if value is None else AS_BOOLEAN.get(value)

    return name, reference


@st.composite
def constants(draw: st.DrawFn) -> Condition:
    value: Truth = draw(st.sampled_from([True, False, None]))
    word = {True: "TRUE", False: "FALSE", None: "NULL"}[value]
    return draw(keyword(word)), lambda properties, tag: value


ATOMS: st.SearchStrategy[Condition] = st.one_of(
    numeric_comparisons(),
    string_equalities(),
    boolean_equalities(),
    betweens(),
    in_lists(),
    string_tests(),
    null_tests(),
    bare_properties(),
    constants(),
)


@st.composite
def conditions(draw: st.DrawFn, depth: int = 0) -> Condition:
    if depth >= 4 or draw(st.integers(0, 2)) == 0:
        return draw(ATOMS)
    shape = draw(st.sampled_from(["not", "and", "or", "or-of-ands"]))
    if shape == "not":
        text, inner = draw(conditions(depth + 1))
        return f"{draw(keyword('NOT'))} ({text})", lambda properties, tag: kleene_not(inner(properties, tag))
    if shape in ("and", "or"):
        parts = draw(st.lists(conditions(depth + 1), min_size=2, max_size=3))
        joiner = f" {draw(keyword(shape.upper()))} "
        combine = kleene_and if shape == "and" else kleene_or
        text = "(" + joiner.join(f"({part_text})" for part_text, _ in parts) + ")"
        return text, lambda properties, tag: combine([reference(properties, tag) for _, reference in parts])
    # Precedence without parentheses: NOT x AND y OR z is ((NOT x) AND y) OR z.
    products: list[list[tuple[bool, Condition]]] = draw(
        st.lists(st.lists(st.tuples(st.booleans(), ATOMS), min_size=1, max_size=3), min_size=1, max_size=3)
    )
    text = " OR ".join(
        " AND ".join(f"NOT {atom_text}" if negate else atom_text for negate, (atom_text, _) in product)
        for product in products
    )

    def reference(properties: Properties, tag: str | None) -> Truth:
        return kleene_or(
            [
                kleene_and(
                    [
                        kleene_not(atom(properties, tag)) if negate else atom(properties, tag)
                        for negate, (_, atom) in product
                    ]
                )
                for product in products
            ]
        )

    return f"({text})", reference


REFERENCE_PROPERTIES = st.dictionaries(
    st.sampled_from(["a", "b", "TAGS"]), st.sampled_from(VALUES), max_size=3
)
REFERENCE_TAGS = st.one_of(st.none(), st.sampled_from(VALUES))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conditions(), st.lists(st.tuples(REFERENCE_PROPERTIES, REFERENCE_TAGS), min_size=1, max_size=8))
def test_evaluator_agrees_with_reference(
    condition: Condition, messages: list[tuple[Properties, str | None]]
) -> None:
    text, reference = condition
    compiled = Sql92Filter.compile(text)
    assert parse(compiled.canonical) == compiled.syntax_tree
    for properties, tag in messages:
        expected = reference(properties, tag)
        assert compiled.evaluate(tag, properties) is expected, (text, properties, tag)
        assert compiled.matches(tag, properties) is (expected is True)


@FUZZ
@given(conditions(), ARBITRARY_PROPERTIES, st.one_of(st.none(), st.text()))
def test_well_formed_filters_never_raise_on_arbitrary_properties(
    condition: Condition, properties: Properties, tag: str | None
) -> None:
    compiled = Sql92Filter.compile(condition[0])
    assert compiled.evaluate(tag, properties) in (True, False, None)
