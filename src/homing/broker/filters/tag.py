"""TAG filters: the ``TagA || TagB`` subscriptions, and the tag hash kept in consume queues.

Theory of operation
-------------------
A message carries at most one tag. A TAG expression is either "everything" (``*``, empty or
absent) or a list of tags separated by ``||``; a message matches when its tag is one of them. A
message without a tag (``None`` or the empty string) matches only "everything".

Consume-queue entries store a fixed-size hash of the tag (:func:`tag_hash`) so that the broker can
skip most non-matching messages without reading them from the commit log. A compiled
:class:`TagFilter` therefore keeps both the set of tags and the set of their hashes: the hash test
(:meth:`TagFilter.may_match_tag_hash`) rules messages out, the string test
(:meth:`TagFilter.matches`) decides, because distinct tags may share a hash.

RocketMQ uses Java's 32-bit ``String.hashCode`` for this; it collides easily and is only
meaningful inside a JVM. Homing uses BLAKE2b with an 8-byte digest instead: deterministic across
processes, machines and Python versions (unlike :func:`hash`), with 0 reserved for "no tag".

Deliberate deviations from RocketMQ (``FilterAPI.buildSubscriptionData``)
-------------------------------------------------------------------------
- The whole expression is trimmed before it is compared with ``*``: `` * `` means everything
  (RocketMQ would look for a tag literally named ``*``), and a blank expression means everything
  (RocketMQ would match nothing).
- An expression that names no tag at all (``||``, ``" || "``) is an error; RocketMQ throws for the
  first and silently matches nothing for the second.
- Expressions longer than :data:`~homing.broker.filters.limits.MAX_EXPRESSION_LENGTH` are refused.

As in RocketMQ, each tag is trimmed of the characters Java's ``String.trim`` removes (code points
up to U+0020), empty items between separators are skipped, and a single ``|`` is part of a tag.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from homing.broker.filters.compiled import FilterKind
from homing.broker.filters.errors import FilterExpressionError
from homing.broker.filters.limits import MAX_EXPRESSION_LENGTH
from homing.store.tag_hash import NO_TAG_HASH, tag_hash

__all__ = ["NO_TAG_HASH", "SUBSCRIBE_ALL", "TAG_SEPARATOR", "TagFilter", "tag_hash"]

#: The expression that matches every message.
SUBSCRIBE_ALL = "*"

#: What separates alternative tags in an expression.
TAG_SEPARATOR = "||"

# Java's String.trim() removes every code point <= U+0020 from both ends; str.strip() would also
# remove non-ASCII spaces, which RocketMQ keeps as part of the tag.
_JAVA_TRIM_CHARS = "".join(chr(code) for code in range(0x21))


@dataclass(frozen=True, slots=True)
class TagFilter:
    """A compiled TAG expression. Build it with :meth:`compile`.

    ``tags`` is ``None`` for "everything", otherwise the non-empty set of accepted tags;
    ``tag_hashes`` holds their :func:`tag_hash` values.
    """

    kind: ClassVar[FilterKind] = FilterKind.TAG

    expression: str
    tags: frozenset[str] | None
    tag_hashes: frozenset[int]

    @classmethod
    def compile(cls, expression: str | None) -> TagFilter:
        """Compile a TAG expression; raises :class:`FilterExpressionError` if it names no tag."""
        if expression is None:
            return cls(SUBSCRIBE_ALL, None, frozenset())
        if len(expression) > MAX_EXPRESSION_LENGTH:
            raise FilterExpressionError(
                f"expression too long at position {MAX_EXPRESSION_LENGTH}: "
                f"at most {MAX_EXPRESSION_LENGTH} characters are allowed",
                MAX_EXPRESSION_LENGTH,
            )
        trimmed = expression.strip(_JAVA_TRIM_CHARS)
        if trimmed in ("", SUBSCRIBE_ALL):
            return cls(expression, None, frozenset())
        tags = frozenset(
            tag for tag in (item.strip(_JAVA_TRIM_CHARS) for item in trimmed.split(TAG_SEPARATOR)) if tag
        )
        if not tags:
            raise FilterExpressionError(
                f"no tag at position 0: a tag expression must name at least one tag "
                f"(tags separated by {TAG_SEPARATOR!r}) or be {SUBSCRIBE_ALL!r}",
                0,
            )
        return cls(expression, tags, frozenset(tag_hash(tag) for tag in tags))

    @property
    def matches_everything(self) -> bool:
        return self.tags is None

    def may_match_tag_hash(self, tag_code: int) -> bool:
        """``False`` only if no message whose tag hashes to ``tag_code`` can match."""
        return self.tags is None or tag_code in self.tag_hashes

    def matches_tag(self, tag: str | None) -> bool:
        """Whether a message with this tag (``None``/``""``: no tag) matches."""
        if self.tags is None:
            return True
        return bool(tag) and tag in self.tags

    def matches(self, tag: str | None, properties: Mapping[str, str]) -> bool:
        """Whether a message matches; a TAG filter ignores the properties."""
        return self.matches_tag(tag)
