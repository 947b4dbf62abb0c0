"""The one exception root of Homing.

Every error Homing raises derives from :class:`HomingError`. ``retriable`` says whether the same
operation may succeed if tried again unchanged (a full disk that frees up, a flush that was slow),
as opposed to a fault that needs an operator (a fenced store, corruption) or a caller's mistake.
"""

from __future__ import annotations

__all__ = ["HomingError"]


class HomingError(Exception):
    """Root of every error Homing raises."""

    retriable: bool = False
