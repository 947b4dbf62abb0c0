"""The public surface: exactly these names, from ``homing`` and ``homing.client``; nothing private leaks."""

from __future__ import annotations

import subprocess
import sys

import homing
import homing.client

HOMING_NAMES = {
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
}

CLIENT_NAMES = {
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
}


def test_homing_exports() -> None:
    assert set(homing.__all__) == HOMING_NAMES
    for name in HOMING_NAMES:
        assert getattr(homing, name) is not None, name
    assert set(dir(homing)) >= HOMING_NAMES
    assert homing.__version__ == "0.1.0"
    # The top-level names are the client's own objects, not copies.
    for name in HOMING_NAMES - {"HomingError", "__version__"}:
        assert getattr(homing, name) is getattr(homing.client, name), name


def test_client_exports() -> None:
    assert set(homing.client.__all__) == CLIENT_NAMES
    for name in CLIENT_NAMES:
        value = getattr(homing.client, name)
        module = getattr(value, "__module__", "homing.client")
        # Everything public is defined in the client's private modules (or is a plain value).
        assert module.startswith(("homing.client", "typing", "collections")) or not callable(value), name


def test_every_client_error_is_a_homing_error() -> None:
    for name in CLIENT_NAMES:
        value = getattr(homing.client, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, homing.client.ClientError), name
            assert issubclass(value, homing.HomingError), name


def test_homing_imports_without_loading_the_client() -> None:
    # The broker's modules (config, errors) must not pay for gRPC clients they do not use.
    code = "import sys, homing, homing.config; print('homing.client' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_unknown_attribute() -> None:
    try:
        homing.NoSuchThing  # noqa: B018
    except AttributeError as error:
        assert "NoSuchThing" in str(error)
    else:
        raise AssertionError("expected AttributeError")


def test_the_client_never_imports_the_broker_or_the_store() -> None:
    # It must run against an Apache RocketMQ 5 proxy, with nothing of Homing's server side.
    code = (
        "import sys, homing.client; "
        "server_side = ('homing.broker', 'homing.store', 'homing.server'); "
        "print(sorted(m for m in sys.modules if m.startswith(server_side)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
