"""TAG filters and the consume-queue tag hash."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from homing.broker.filters import (
    MAX_EXPRESSION_LENGTH,
    NO_TAG_HASH,
    FilterExpressionError,
    FilterKind,
    TagFilter,
    compile_filter,
    tag_hash,
)

NO_PROPERTIES: dict[str, str] = {}


@pytest.mark.parametrize("expression", [None, "", "*", " * ", "   ", "\t*\n"])
def test_everything_expressions_match_every_message(expression: str | None) -> None:
    tag_filter = TagFilter.compile(expression)
    assert tag_filter.matches_everything
    for tag in (None, "", "TagA", "*", "anything at all"):
        assert tag_filter.matches(tag, NO_PROPERTIES)
    assert tag_filter.may_match_tag_hash(NO_TAG_HASH)
    assert tag_filter.may_match_tag_hash(tag_hash("whatever"))


def test_single_tag_matches_only_that_tag() -> None:
    tag_filter = TagFilter.compile("TagA")
    assert tag_filter.tags == frozenset({"TagA"})
    assert tag_filter.matches("TagA", NO_PROPERTIES)
    assert not tag_filter.matches("TagB", NO_PROPERTIES)
    assert not tag_filter.matches("taga", NO_PROPERTIES), "tags are case-sensitive"
    assert not tag_filter.matches("TagA ", NO_PROPERTIES), "message tags are not trimmed"


def test_alternatives_with_spaces_are_trimmed() -> None:
    tag_filter = TagFilter.compile("  TagA ||TagB||   TagC  ")
    assert tag_filter.tags == frozenset({"TagA", "TagB", "TagC"})
    for tag in ("TagA", "TagB", "TagC"):
        assert tag_filter.matches(tag, NO_PROPERTIES)
    assert not tag_filter.matches("TagD", NO_PROPERTIES)


def test_message_without_tag_matches_only_everything() -> None:
    tag_filter = TagFilter.compile("TagA || TagB")
    assert not tag_filter.matches(None, NO_PROPERTIES)
    assert not tag_filter.matches("", NO_PROPERTIES)
    assert not tag_filter.may_match_tag_hash(NO_TAG_HASH)


def test_empty_items_between_separators_are_skipped() -> None:
    assert TagFilter.compile("a || || b ||").tags == frozenset({"a", "b"})


def test_single_bar_and_inner_spaces_belong_to_the_tag() -> None:
    tag_filter = TagFilter.compile("a | b || c d")
    assert tag_filter.tags == frozenset({"a | b", "c d"})


def test_star_among_tags_is_a_literal_tag() -> None:
    tag_filter = TagFilter.compile("a || *")
    assert not tag_filter.matches_everything
    assert tag_filter.matches("*", NO_PROPERTIES)
    assert not tag_filter.matches("b", NO_PROPERTIES)


def test_trim_follows_java_not_unicode() -> None:
    # Java's trim() keeps U+00A0 (no-break space); so does Homing.
    assert TagFilter.compile("\u00a0a\u00a0").tags == frozenset({"\u00a0a\u00a0"})
    assert TagFilter.compile("\x01a\x1f").tags == frozenset({"a"})


@pytest.mark.parametrize("expression", ["||", " || ", "|| ||", "\t||\t"])
def test_expression_without_any_tag_is_an_error(expression: str) -> None:
    with pytest.raises(FilterExpressionError) as caught:
        TagFilter.compile(expression)
    assert caught.value.position == 0
    assert "at least one tag" in str(caught.value)


def test_too_long_expression_is_an_error() -> None:
    TagFilter.compile("a" * MAX_EXPRESSION_LENGTH)
    with pytest.raises(FilterExpressionError) as caught:
        TagFilter.compile("a" * (MAX_EXPRESSION_LENGTH + 1))
    assert caught.value.position == MAX_EXPRESSION_LENGTH


def test_hash_precheck_agrees_with_tags() -> None:
    tag_filter = TagFilter.compile("TagA || TagB")
    assert tag_filter.tag_hashes == frozenset({tag_hash("TagA"), tag_hash("TagB")})
    assert tag_filter.may_match_tag_hash(tag_hash("TagA"))
    assert not tag_filter.may_match_tag_hash(tag_hash("TagC"))


def test_compile_filter_tag_kind() -> None:
    for kind in (FilterKind.TAG, "TAG", None, ""):
        compiled = compile_filter(kind, "a || b")
        assert compiled.kind is FilterKind.TAG
        assert compiled.expression == "a || b"
        assert compiled.matches("a", NO_PROPERTIES)
        assert not compiled.matches("c", {"TAGS": "a"}), "a TAG filter ignores properties"


def test_tag_filters_are_values() -> None:
    assert TagFilter.compile("a || b") == TagFilter.compile("a || b")
    assert hash(TagFilter.compile("a || b")) == hash(TagFilter.compile("a || b"))


def test_tag_hash_reserves_zero_for_no_tag() -> None:
    assert tag_hash(None) == NO_TAG_HASH == 0
    assert tag_hash("") == NO_TAG_HASH


def test_tag_hash_known_values() -> None:
    # Pinned: these values are stored on disk in consume queues and must never change.
    assert tag_hash("TagA") == 0x45FBF595B0C4A261
    assert tag_hash("日本") == 0xE83335CFE1549B3A


def test_tag_hash_is_stable_across_processes() -> None:
    code = "from homing.broker.filters import tag_hash; print(tag_hash('TagA'), tag_hash('x' * 100))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert outputs == {f"{tag_hash('TagA')} {tag_hash('x' * 100)}\n"}


@given(st.text(min_size=1))
def test_tag_hash_is_a_nonzero_unsigned_64_bit_integer(tag: str) -> None:
    code = tag_hash(tag)
    assert 1 <= code < 2**64
    assert tag_hash(tag) == code


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="|"), min_size=1), min_size=1), st.text())
def test_tag_filter_matches_exactly_its_tags(tags: list[str], message_tag: str) -> None:
    java_trim = "".join(chr(code) for code in range(0x21))
    expected = {tag.strip(java_trim) for tag in tags} - {""}
    expression = " || ".join(tags)
    if not expression.strip(java_trim):
        # A blank expression is "subscribe to everything", as documented in filters/tag.py.
        assert TagFilter.compile(expression).matches_everything
        return
    if not expected:
        with pytest.raises(FilterExpressionError):
            TagFilter.compile(expression)
        return
    tag_filter = TagFilter.compile(expression)
    if tag_filter.matches_everything:
        assert expected == {"*"}
        return
    assert tag_filter.tags == frozenset(expected)
    assert tag_filter.matches(message_tag, NO_PROPERTIES) == (message_tag in expected)
    if tag_filter.matches(message_tag, NO_PROPERTIES):
        assert tag_filter.may_match_tag_hash(tag_hash(message_tag))
