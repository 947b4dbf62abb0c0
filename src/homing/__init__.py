"""Homing: a message queue whose one promise is that an acknowledged message is never lost.

The client classes are importable from here (``from homing import AsyncProducer, Message``); they
are loaded on first use, so that the broker's own modules (``homing.config``, ``homing.errors``)
do not pay for the client's imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from homing.errors import HomingError

if TYPE_CHECKING:
    from homing.client import (
        AsyncProducer,
        AsyncPushConsumer,
        AsyncSimpleConsumer,
        ClientConfig,
        ClientError,
        Credentials,
        FilterExpression,
        Message,
        Producer,
        PushConsumer,
        ReceivedMessage,
        RetryPolicy,
        SendReceipt,
        SimpleConsumer,
        TransactionResolution,
    )

__version__ = "0.1.0"

_CLIENT_NAMES = frozenset(
    {
        "AsyncProducer",
        "AsyncPushConsumer",
        "AsyncSimpleConsumer",
        "ClientConfig",
        "ClientError",
        "Credentials",
        "FilterExpression",
        "Message",
        "Producer",
        "PushConsumer",
        "ReceivedMessage",
        "RetryPolicy",
        "SendReceipt",
        "SimpleConsumer",
        "TransactionResolution",
    }
)

__all__ = [
    "AsyncProducer",
    "AsyncPushConsumer",
    "AsyncSimpleConsumer",
    "ClientConfig",
    "ClientError",
    "Credentials",
    "FilterExpression",
    "HomingError",
    "Message",
    "Producer",
    "PushConsumer",
    "ReceivedMessage",
    "RetryPolicy",
    "SendReceipt",
    "SimpleConsumer",
    "TransactionResolution",
    "__version__",
]


def __getattr__(name: str) -> object:
    if name in _CLIENT_NAMES:
        value = getattr(importlib.import_module("homing.client"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'homing' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _CLIENT_NAMES)
