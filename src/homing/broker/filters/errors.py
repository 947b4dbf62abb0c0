"""The one error a filter expression can raise: :class:`FilterExpressionError`.

Compiling a filter either succeeds or raises this error; nothing else escapes, whatever the input.
Evaluating a compiled filter never raises at all.
"""

from __future__ import annotations

from homing.errors import HomingError

__all__ = ["FilterExpressionError"]


class FilterExpressionError(HomingError):
    """An invalid filter expression (a client's mistake: retrying it unchanged cannot help).

    ``position`` is the 0-based index in the expression of the character where the problem was
    found (``len(expression)`` for "unexpected end"), or ``None`` when the problem is not tied to
    a place in the text (an unknown filter kind). The message repeats it in words, for example
    ``unexpected token 'AND' at position 14: expected an expression``.
    """

    retriable = False

    def __init__(self, message: str, position: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.position = position

    def __reduce__(self) -> tuple[type[FilterExpressionError], tuple[str, int | None]]:
        # The default pickling replays ``self.args`` (the message only) into __init__, which
        # would fail; errors may cross process boundaries, so keep them picklable.
        return (type(self), (self.message, self.position))
