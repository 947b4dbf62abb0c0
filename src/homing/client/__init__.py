"""Homing's Python client for the RocketMQ 5 gRPC protocol: asyncio first, with synchronous twins.

It talks to a Homing broker or to an Apache RocketMQ 5 proxy alike (it uses nothing but the
protocol). Start with :class:`AsyncProducer` / :class:`Producer`, :class:`AsyncPushConsumer` /
:class:`PushConsumer` and :class:`AsyncSimpleConsumer` / :class:`SimpleConsumer`; every error is a
:class:`ClientError` (a :class:`homing.errors.HomingError`) with a ``retriable`` flag. See
docs/CLIENT.md.
"""

from homing.client._codec import CorruptedMessageError
from homing.client._config import ENVIRONMENT_VARIABLES, ClientConfig, Credentials, Endpoints
from homing.client._consumer import AsyncSimpleConsumer
from homing.client._errors import (
    STATUS_CODES,
    BadRequestError,
    ClientError,
    ClientStateError,
    ConsumeFailedError,
    DeadlineExceededError,
    ForbiddenError,
    HeaderFieldsTooLargeError,
    InternalServerError,
    InvalidArgumentError,
    NotFoundError,
    NotImplementedByServerError,
    PayloadTooLargeError,
    PaymentRequiredError,
    PersistenceTimeoutError,
    PreconditionFailedError,
    ProtocolError,
    RequestTimeoutError,
    SettingsTimeoutError,
    StatusCode,
    StatusError,
    TooManyRequestsError,
    TransportError,
    UnauthorizedError,
    UnsupportedError,
)
from homing.client._message import (
    RESERVED_PROPERTY_NAMES,
    FilterExpression,
    Message,
    MessageType,
    ReceivedMessage,
    SendReceipt,
    TransactionResolution,
)
from homing.client._producer import AsyncProducer, AsyncTransaction, TransactionChecker
from homing.client._push_consumer import AsyncPushConsumer, MessageHandler
from homing.client._retry import RetryPolicy
from homing.client._session import Timings
from homing.client._sync import Producer, PushConsumer, SimpleConsumer, Transaction
from homing.client._transport import GrpcTransport, Transport

__all__ = [
    "ENVIRONMENT_VARIABLES",
    "RESERVED_PROPERTY_NAMES",
    "STATUS_CODES",
    "AsyncProducer",
    "AsyncPushConsumer",
    "AsyncSimpleConsumer",
    "AsyncTransaction",
    "BadRequestError",
    "ClientConfig",
    "ClientError",
    "ClientStateError",
    "ConsumeFailedError",
    "CorruptedMessageError",
    "Credentials",
    "DeadlineExceededError",
    "Endpoints",
    "FilterExpression",
    "ForbiddenError",
    "GrpcTransport",
    "HeaderFieldsTooLargeError",
    "InternalServerError",
    "InvalidArgumentError",
    "Message",
    "MessageHandler",
    "MessageType",
    "NotFoundError",
    "NotImplementedByServerError",
    "PayloadTooLargeError",
    "PaymentRequiredError",
    "PersistenceTimeoutError",
    "PreconditionFailedError",
    "Producer",
    "ProtocolError",
    "PushConsumer",
    "ReceivedMessage",
    "RequestTimeoutError",
    "RetryPolicy",
    "SendReceipt",
    "SettingsTimeoutError",
    "SimpleConsumer",
    "StatusCode",
    "StatusError",
    "Timings",
    "TooManyRequestsError",
    "Transaction",
    "TransactionChecker",
    "TransactionResolution",
    "Transport",
    "TransportError",
    "UnauthorizedError",
    "UnsupportedError",
]
