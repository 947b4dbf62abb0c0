"""The network adapters: the RocketMQ 5 gRPC service in front of one :class:`~homing.broker.broker.Broker`.

Adapters only, no domain logic: requests are decoded into the broker's own types
(:mod:`homing.server.codec`, :mod:`homing.server.names`), errors become protocol statuses
(:mod:`homing.server.status`), signatures are checked (:mod:`homing.server.auth`), and
:mod:`homing.server.app` wires a store, a broker and a gRPC server into a process.
"""

from homing.server.auth import Authenticator, CredentialsError, load_credentials
from homing.server.servicer import MessagingServicer
from homing.server.telemetry import TelemetryRegistry

__all__ = [
    "Authenticator",
    "CredentialsError",
    "MessagingServicer",
    "TelemetryRegistry",
    "load_credentials",
]
