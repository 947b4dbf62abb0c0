"""The client's errors: one hierarchy under :class:`homing.errors.HomingError`, and every status code.

Callers handle errors by kind, not by string. Three kinds of failure reach a caller:

* a mistake found before anything was sent (:class:`InvalidArgumentError`, :class:`ClientStateError`);
* the network or gRPC failed (:class:`TransportError`; :class:`DeadlineExceededError` when no answer
  came in time, which means the outcome is *unknown*: the broker may have done the work);
* the broker answered with a status other than OK (:class:`StatusError` and its subclasses, one per
  class of RocketMQ status code).

``retriable`` says whether the same call, unchanged, may succeed later. The producer retries
retriable sends itself (keeping the message id, so a retry is recognisable downstream); anything
else is raised at once.

:data:`STATUS_CODES` is the one registry of the RocketMQ v2 ``Code`` values: name, error class
and whether it is retriable. A test checks it against the protocol's enum, so a new code cannot
slip through unmapped. Codes a newer server may send that we do not know are classified by their
HTTP-like class (the first three digits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import grpc

from homing.errors import HomingError
from homing.protocol import definition_pb2

__all__ = [
    "STATUS_CODES",
    "BadRequestError",
    "ClientError",
    "ClientStateError",
    "ConsumeFailedError",
    "DeadlineExceededError",
    "ForbiddenError",
    "HeaderFieldsTooLargeError",
    "InternalServerError",
    "InvalidArgumentError",
    "NotFoundError",
    "NotImplementedByServerError",
    "PayloadTooLargeError",
    "PaymentRequiredError",
    "PersistenceTimeoutError",
    "PreconditionFailedError",
    "ProtocolError",
    "RequestTimeoutError",
    "SettingsTimeoutError",
    "StatusCode",
    "StatusError",
    "TooManyRequestsError",
    "TransportError",
    "UnauthorizedError",
    "UnsupportedError",
    "status_error",
    "transport_error",
]


class ClientError(HomingError):
    """Root of every error the client raises. ``retriable``: the same call may succeed if tried again."""

    retriable: bool = False


class InvalidArgumentError(ClientError, ValueError):
    """Bad input, found before anything was sent (a bad topic name, a body over the limit...)."""


class ClientStateError(ClientError, RuntimeError):
    """The client is not in a state for this call (not started, closed, transaction already ended)."""


class SettingsTimeoutError(ClientError):
    """The broker did not answer the client's settings in time, so the client could not start."""

    retriable = True


class ProtocolError(ClientError):
    """The broker's answer does not make sense (e.g. fewer send results than messages sent).

    The outcome of the call is unknown: a send may or may not have been stored.
    """


class TransportError(ClientError):
    """The call failed in gRPC or the network; ``grpc_code`` says how.

    Retriable when the failure is of the passing kind (unavailable, reset, server-side crash).
    """

    def __init__(
        self, message: str, grpc_code: grpc.StatusCode | None = None, retriable: bool = True
    ) -> None:
        super().__init__(message)
        self.grpc_code = grpc_code
        self.retriable = retriable


class DeadlineExceededError(TransportError):
    """No answer within the call's deadline. The outcome is unknown: the broker may have done the work.

    Retrying a send is still safe for consumers that deduplicate: the retry keeps the message id.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, grpc.StatusCode.DEADLINE_EXCEEDED, retriable=True)


class StatusError(ClientError):
    """The broker answered with a status other than OK.

    ``code`` is the numeric RocketMQ status (e.g. 50401), ``code_name`` its name
    (``MASTER_PERSISTENCE_TIMEOUT``), ``status_message`` the broker's text.
    """

    def __init__(self, code: int, code_name: str, status_message: str, retriable: bool) -> None:
        text = f"{code_name} ({code})"
        super().__init__(f"{text}: {status_message}" if status_message else text)
        self.code = code
        self.code_name = code_name
        self.status_message = status_message
        self.retriable = retriable


class BadRequestError(StatusError):
    """400xx: the request was invalid (illegal topic, tag, key, receipt handle, filter...)."""


class UnauthorizedError(StatusError):
    """40100: missing or wrong credentials."""


class PaymentRequiredError(StatusError):
    """40200: the account is suspended."""


class ForbiddenError(StatusError):
    """40300: authenticated, but not allowed to do this."""


class NotFoundError(StatusError):
    """404xx: the topic, group, message or offset does not exist."""


class RequestTimeoutError(StatusError):
    """40800: the broker gave up on the request in time; it may succeed if tried again."""


class PayloadTooLargeError(StatusError):
    """413xx: the body is too large (or empty: ``MESSAGE_BODY_EMPTY`` belongs to this class)."""


class PreconditionFailedError(StatusError):
    """42800: the client is not in a state for this request (e.g. its settings were never seen)."""


class TooManyRequestsError(StatusError):
    """429xx: throttled or over quota. Plain throttling (42900) is retriable after a backoff."""


class HeaderFieldsTooLargeError(StatusError):
    """431xx: headers or message properties are too large."""


class InternalServerError(StatusError):
    """500xx: the broker failed unexpectedly; retriable (a retry keeps the message id)."""


class NotImplementedByServerError(StatusError):
    """50100: the broker does not implement this (yet)."""


class PersistenceTimeoutError(StatusError):
    """504xx: the broker (or the store behind a proxy) did not make the message durable in time.

    Retriable: the retry carries the same message id, so a copy that was stored after all is
    recognisable downstream.
    """


class UnsupportedError(StatusError):
    """505xx: the operation or protocol version is not supported."""


class ConsumeFailedError(StatusError):
    """60000: a consumer failed to process a message (reported in message verification)."""


@dataclass(frozen=True, slots=True)
class StatusCode:
    """One RocketMQ status code: what it is called, which error it raises, whether it is retriable.

    ``error_class`` is None for the codes that are not failures (OK, MULTIPLE_RESULTS).
    """

    number: int
    name: str
    error_class: type[StatusError] | None
    retriable: bool


def _table(*rows: tuple[int, str, type[StatusError] | None, bool]) -> dict[int, StatusCode]:
    return {number: StatusCode(number, name, error, retriable) for number, name, error, retriable in rows}


STATUS_CODES: Final[dict[int, StatusCode]] = _table(
    (20000, "OK", None, False),
    (30000, "MULTIPLE_RESULTS", None, False),
    (40000, "BAD_REQUEST", BadRequestError, False),
    (40001, "ILLEGAL_ACCESS_POINT", BadRequestError, False),
    (40002, "ILLEGAL_TOPIC", BadRequestError, False),
    (40003, "ILLEGAL_CONSUMER_GROUP", BadRequestError, False),
    (40004, "ILLEGAL_MESSAGE_TAG", BadRequestError, False),
    (40005, "ILLEGAL_MESSAGE_KEY", BadRequestError, False),
    (40006, "ILLEGAL_MESSAGE_GROUP", BadRequestError, False),
    (40007, "ILLEGAL_MESSAGE_PROPERTY_KEY", BadRequestError, False),
    (40008, "INVALID_TRANSACTION_ID", BadRequestError, False),
    (40009, "ILLEGAL_MESSAGE_ID", BadRequestError, False),
    (40010, "ILLEGAL_FILTER_EXPRESSION", BadRequestError, False),
    (40011, "ILLEGAL_INVISIBLE_TIME", BadRequestError, False),
    (40012, "ILLEGAL_DELIVERY_TIME", BadRequestError, False),
    (40013, "INVALID_RECEIPT_HANDLE", BadRequestError, False),
    (40014, "MESSAGE_PROPERTY_CONFLICT_WITH_TYPE", BadRequestError, False),
    (40015, "UNRECOGNIZED_CLIENT_TYPE", BadRequestError, False),
    (40016, "MESSAGE_CORRUPTED", BadRequestError, False),
    (40017, "CLIENT_ID_REQUIRED", BadRequestError, False),
    (40018, "ILLEGAL_POLLING_TIME", BadRequestError, False),
    (40019, "ILLEGAL_OFFSET", BadRequestError, False),
    (40020, "ILLEGAL_LITE_TOPIC", BadRequestError, False),
    (40021, "INVALID_CLIENT_PROPERTIES", BadRequestError, False),
    (40100, "UNAUTHORIZED", UnauthorizedError, False),
    (40200, "PAYMENT_REQUIRED", PaymentRequiredError, False),
    (40300, "FORBIDDEN", ForbiddenError, False),
    (40400, "NOT_FOUND", NotFoundError, False),
    (40401, "MESSAGE_NOT_FOUND", NotFoundError, False),
    (40402, "TOPIC_NOT_FOUND", NotFoundError, False),
    (40403, "CONSUMER_GROUP_NOT_FOUND", NotFoundError, False),
    (40404, "OFFSET_NOT_FOUND", NotFoundError, False),
    (40800, "REQUEST_TIMEOUT", RequestTimeoutError, True),
    (41300, "PAYLOAD_TOO_LARGE", PayloadTooLargeError, False),
    (41301, "MESSAGE_BODY_TOO_LARGE", PayloadTooLargeError, False),
    (41302, "MESSAGE_BODY_EMPTY", PayloadTooLargeError, False),
    (42800, "PRECONDITION_FAILED", PreconditionFailedError, False),
    (42900, "TOO_MANY_REQUESTS", TooManyRequestsError, True),
    (42901, "LITE_TOPIC_QUOTA_EXCEEDED", TooManyRequestsError, False),
    (42902, "LITE_SUBSCRIPTION_QUOTA_EXCEEDED", TooManyRequestsError, False),
    (43100, "REQUEST_HEADER_FIELDS_TOO_LARGE", HeaderFieldsTooLargeError, False),
    (43101, "MESSAGE_PROPERTIES_TOO_LARGE", HeaderFieldsTooLargeError, False),
    (50000, "INTERNAL_ERROR", InternalServerError, True),
    (50001, "INTERNAL_SERVER_ERROR", InternalServerError, True),
    (50002, "HA_NOT_AVAILABLE", InternalServerError, True),
    (50100, "NOT_IMPLEMENTED", NotImplementedByServerError, False),
    (50400, "PROXY_TIMEOUT", PersistenceTimeoutError, True),
    (50401, "MASTER_PERSISTENCE_TIMEOUT", PersistenceTimeoutError, True),
    (50402, "SLAVE_PERSISTENCE_TIMEOUT", PersistenceTimeoutError, True),
    (50500, "UNSUPPORTED", UnsupportedError, False),
    (50501, "VERSION_UNSUPPORTED", UnsupportedError, False),
    (50502, "VERIFY_FIFO_MESSAGE_UNSUPPORTED", UnsupportedError, False),
    (60000, "FAILED_TO_CONSUME_MESSAGE", ConsumeFailedError, False),
)

# For codes a newer server may send: the class of an unknown code is its first three digits.
_CLASS_OF_UNKNOWN: Final[dict[int, tuple[type[StatusError], bool]]] = {
    400: (BadRequestError, False),
    401: (UnauthorizedError, False),
    402: (PaymentRequiredError, False),
    403: (ForbiddenError, False),
    404: (NotFoundError, False),
    408: (RequestTimeoutError, True),
    413: (PayloadTooLargeError, False),
    428: (PreconditionFailedError, False),
    429: (TooManyRequestsError, False),
    431: (HeaderFieldsTooLargeError, False),
    500: (InternalServerError, True),
    501: (NotImplementedByServerError, False),
    504: (PersistenceTimeoutError, True),
    505: (UnsupportedError, False),
    600: (ConsumeFailedError, False),
}


def status_error(status: definition_pb2.Status) -> ClientError:
    """The error for a status that is not OK (a missing status is a :class:`ProtocolError`)."""
    number = int(status.code)
    if number == 0:
        return ProtocolError(f"the broker's answer carries no status code ({status.message!r})")
    known = STATUS_CODES.get(number)
    if known is not None:
        if known.error_class is None:
            raise AssertionError(f"{known.name} is not a failure")
        return known.error_class(number, known.name, status.message, known.retriable)
    error_class, retriable = _CLASS_OF_UNKNOWN.get(number // 100, (StatusError, False))
    return error_class(number, f"UNKNOWN_CODE_{number}", status.message, retriable)


# gRPC failures after which the same call may succeed: the server was away, reset the stream, or
# crashed inside the handler. A deadline is handled on its own (DeadlineExceededError).
_RETRIABLE_GRPC_CODES: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)


def transport_error(code: grpc.StatusCode | None, details: str | None, what: str) -> TransportError:
    """Translate a gRPC failure of the call ``what`` (e.g. ``"SendMessage to 127.0.0.1:8081"``)."""
    text = f"{what} failed: {code.name if code is not None else 'no status'}: {details or ''}".rstrip(": ")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceededError(text)
    return TransportError(text, code, retriable=code in _RETRIABLE_GRPC_CODES)
