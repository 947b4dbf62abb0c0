"""The broker's errors, each carrying the RocketMQ status it maps to.

The broker does not import the protocol: ``code`` is the *name* of a status in the RocketMQ v2
``Code`` enum (``"INVALID_RECEIPT_HANDLE"``...), which the server adapter turns into its number.
"""

from __future__ import annotations

from homing.errors import HomingError

__all__ = ["BrokerError"]

# Status names whose failures may succeed when retried unchanged.
_RETRIABLE = frozenset(
    {
        "TOO_MANY_REQUESTS",
        "MASTER_PERSISTENCE_TIMEOUT",
        "INTERNAL_SERVER_ERROR",
        "REQUEST_TIMEOUT",
        "PROXY_TIMEOUT",
        "HA_NOT_AVAILABLE",
    }
)


class BrokerError(HomingError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def retriable(self) -> bool:  # type: ignore[override]
        return self.code in _RETRIABLE

    def __repr__(self) -> str:
        return f"BrokerError({self.code}, {self.message!r})"
