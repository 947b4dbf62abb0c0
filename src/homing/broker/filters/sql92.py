"""SQL92 filters: compile an expression once, match it against many messages.

:meth:`Sql92Filter.compile` runs the three stages (:mod:`~homing.broker.filters.sql92_lexer`,
:mod:`~homing.broker.filters.sql92_parser`, :mod:`~homing.broker.filters.sql92_eval`); their
docstrings give the grammar, the semantics and every deliberate deviation from RocketMQ. Compiling
raises :class:`~homing.broker.filters.errors.FilterExpressionError` for any invalid expression;
matching never raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from homing.broker.filters.compiled import FilterKind
from homing.broker.filters.sql92_ast import Expr, render
from homing.broker.filters.sql92_eval import Evaluator
from homing.broker.filters.sql92_parser import parse

__all__ = ["Sql92Filter"]


@dataclass(frozen=True, slots=True)
class Sql92Filter:
    """A compiled SQL92 expression. Build it with :meth:`compile`.

    Two filters are equal when their expressions are equal as written.
    """

    kind: ClassVar[FilterKind] = FilterKind.SQL92

    expression: str
    syntax_tree: Expr = field(compare=False)
    _evaluator: Evaluator = field(compare=False, repr=False)

    @classmethod
    def compile(cls, expression: str | None) -> Sql92Filter:
        """Compile a SQL92 expression; raises ``FilterExpressionError`` if it is invalid."""
        text = expression or ""
        tree = parse(text)
        return cls(text, tree, Evaluator(tree))

    @property
    def canonical(self) -> str:
        """The expression fully parenthesized, as the parser understood it (for logs)."""
        return render(self.syntax_tree)

    def may_match_tag_hash(self, tag_code: int) -> bool:
        """Always ``True``: a SQL92 filter cannot rule a message out from its tag hash."""
        return True

    def matches(self, tag: str | None, properties: Mapping[str, str]) -> bool:
        """Whether the filter is TRUE for a message with this tag (property ``TAGS``) and properties."""
        return self._evaluator.matches_message(tag, properties)

    def evaluate(self, tag: str | None, properties: Mapping[str, str]) -> bool | None:
        """The three-valued result (``None`` is UNKNOWN); only ``True`` is a match."""
        return self._evaluator.evaluate(properties, tag)
