"""Where the broker is and how to talk to it: endpoints, credentials, namespace, TLS, timeouts.

Everything can be given in code (:class:`ClientConfig`) or read from ``HOMING_CLIENT_*`` environment
variables (:meth:`ClientConfig.from_env`), code winning over the environment. The prefix is not the
broker's ``HOMING_*``: the broker's settings loader rejects unknown ``HOMING_*`` variables and
exempts exactly ``HOMING_CLIENT_*``, so a broker and a client can share one environment. Like the
broker, the client rejects an unknown ``HOMING_CLIENT_*`` variable: a misspelt variable must fail
loudly rather than silently leave a default in force.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from homing.client._errors import InvalidArgumentError
from homing.protocol import definition_pb2

__all__ = ["ENVIRONMENT_VARIABLES", "ClientConfig", "Credentials", "Endpoints"]

ENVIRONMENT_PREFIX: Final = "HOMING_CLIENT_"
ENVIRONMENT_VARIABLES: Final[Mapping[str, str]] = {
    "HOMING_CLIENT_ENDPOINTS": "Access point, host:port (several: separated by ';').",
    "HOMING_CLIENT_ACCESS_KEY": "Access key to sign requests with (needs HOMING_CLIENT_SECRET_KEY).",
    "HOMING_CLIENT_SECRET_KEY": "Secret key of the access key.",
    "HOMING_CLIENT_NAMESPACE": "Namespace of every topic and group the client names.",
    "HOMING_CLIENT_TLS": "true to connect with TLS (default false).",
    "HOMING_CLIENT_TLS_CA_FILE": "PEM file of the certificate authorities to trust (default: the system's).",
    "HOMING_CLIENT_REQUEST_TIMEOUT_S": "Deadline of ordinary calls, in seconds (default 3).",
}
"""Every variable :meth:`ClientConfig.from_env` reads, with its meaning."""

_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
_NAMESPACE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_REQUEST_TIMEOUT_S: Final = 300.0


@dataclass(frozen=True, slots=True)
class Endpoints:
    """One or more equivalent ``(host, port)`` addresses of a broker or proxy."""

    addresses: tuple[tuple[str, int], ...]
    # Worked out once: both are read on every send (batch keys, channel lookup).
    _text: str = field(init=False, repr=False, compare=False)
    _target: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.addresses:
            raise InvalidArgumentError("endpoints need at least one host:port address")
        text = ";".join(
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.addresses
        )
        object.__setattr__(self, "_text", text)
        object.__setattr__(self, "_target", self._grpc_target())

    @classmethod
    def parse(cls, text: str) -> Endpoints:
        """Read ``host:port``, ``[ipv6]:port`` or several of them separated by ``;`` or ``,``."""
        addresses = []
        for part in re.split(r"[;,]", text.strip()):
            part = part.strip()
            if part:
                addresses.append(_parse_address(part))
        if not addresses:
            raise InvalidArgumentError(f"endpoints {text!r}: expected host:port (e.g. 127.0.0.1:8081)")
        return cls(tuple(addresses))

    @classmethod
    def from_proto(cls, endpoints: definition_pb2.Endpoints) -> Endpoints:
        return cls(tuple((address.host, address.port) for address in endpoints.addresses))

    def to_proto(self) -> definition_pb2.Endpoints:
        return definition_pb2.Endpoints(
            scheme=self._scheme(),
            addresses=[definition_pb2.Address(host=host, port=port) for host, port in self.addresses],
        )

    def _scheme(self) -> definition_pb2.AddressScheme.ValueType:
        kinds = {_ip_version(host) for host, _ in self.addresses}
        if kinds == {4}:
            return definition_pb2.IPv4
        if kinds == {6}:
            return definition_pb2.IPv6
        return definition_pb2.DOMAIN_NAME

    @property
    def grpc_target(self) -> str:
        """The target gRPC dials: all addresses for IP literals (gRPC balances), else the first name."""
        return self._target

    def _grpc_target(self) -> str:
        scheme = self._scheme()
        if scheme == definition_pb2.IPv4 and len(self.addresses) > 1:
            return "ipv4:" + ",".join(f"{host}:{port}" for host, port in self.addresses)
        if scheme == definition_pb2.IPv6 and len(self.addresses) > 1:
            return "ipv6:" + ",".join(f"[{host}]:{port}" for host, port in self.addresses)
        host, port = self.addresses[0]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def __str__(self) -> str:
        return self._text


def _ip_version(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def _parse_address(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise InvalidArgumentError(f"address {text!r}: an IPv6 address is written [::1]:8081")
        port_text = rest[1:]
        if _ip_version(host) != 6:
            raise InvalidArgumentError(f"address {text!r}: {host!r} is not an IPv6 address")
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not host:
            raise InvalidArgumentError(f"address {text!r}: expected host:port (e.g. 127.0.0.1:8081)")
        if ":" in host:
            raise InvalidArgumentError(f"address {text!r}: an IPv6 address needs brackets, e.g. [::1]:8081")
        if not _HOST_NAME.fullmatch(host):
            raise InvalidArgumentError(f"address {text!r}: {host!r} is not a host name or IP address")
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise InvalidArgumentError(f"address {text!r}: port must be a number in 1-65535")
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class Credentials:
    """An access key and its secret; requests are signed with HMAC-SHA1 of the secret.

    The secret never appears in ``repr``: configs end up in logs.
    """

    access_key: str
    secret_key: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.access_key or not self.secret_key:
            raise InvalidArgumentError("credentials need both an access key and a secret key")


def _bool_from_text(variable: str, text: str) -> bool:
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off", ""):
        return False
    raise InvalidArgumentError(f"{variable}={text!r}: expected true or false")


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """How to reach the broker (or an Apache RocketMQ 5 proxy).

    ``endpoints`` is the access point: routes are asked there, and every other call goes to the
    broker endpoints the routes name. ``request_timeout_s`` is the deadline of ordinary calls;
    sends have their own, longer one (see :class:`~homing.client.AsyncProducer`).
    ``tls`` with ``tls_ca_file`` None trusts the system's certificate authorities.
    """

    endpoints: Endpoints | str
    credentials: Credentials | None = None
    namespace: str = ""
    tls: bool = False
    tls_ca_file: Path | str | None = None
    request_timeout_s: float = 3.0

    def __post_init__(self) -> None:
        if isinstance(self.endpoints, str):
            object.__setattr__(self, "endpoints", Endpoints.parse(self.endpoints))
        if self.namespace and not _NAMESPACE.fullmatch(self.namespace):
            raise InvalidArgumentError(f"namespace {self.namespace!r}: use 1-64 letters, digits, '_' or '-'")
        if not 0 < self.request_timeout_s <= MAX_REQUEST_TIMEOUT_S:
            raise InvalidArgumentError(
                f"request_timeout_s={self.request_timeout_s}: must be > 0 and <= {MAX_REQUEST_TIMEOUT_S:g}"
            )
        if self.tls_ca_file is not None:
            object.__setattr__(self, "tls_ca_file", Path(self.tls_ca_file))
            if not self.tls:
                raise InvalidArgumentError("tls_ca_file is set but tls is off")

    @property
    def access_point(self) -> Endpoints:
        """``endpoints``, parsed (construction turns text into :class:`Endpoints`)."""
        assert isinstance(self.endpoints, Endpoints)
        return self.endpoints

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> ClientConfig:
        """A config from ``HOMING_CLIENT_*`` variables (``env`` defaults to ``os.environ``).

        Keyword arguments (the field names of this class) win over the environment. Raises
        :class:`~homing.client.InvalidArgumentError` naming every unknown variable or bad value.
        """
        environment = os.environ if env is None else env
        unknown = sorted(
            name
            for name in environment
            if name.startswith(ENVIRONMENT_PREFIX) and name not in ENVIRONMENT_VARIABLES
        )
        if unknown:
            raise InvalidArgumentError(
                f"unknown environment variable(s) {', '.join(unknown)}: "
                f"{ENVIRONMENT_PREFIX}* variables are reserved for the client "
                f"(known: {', '.join(ENVIRONMENT_VARIABLES)})"
            )
        values: dict[str, object] = {}
        endpoints = environment.get("HOMING_CLIENT_ENDPOINTS", "").strip()
        if endpoints:
            values["endpoints"] = endpoints
        access_key = environment.get("HOMING_CLIENT_ACCESS_KEY", "")
        secret_key = environment.get("HOMING_CLIENT_SECRET_KEY", "")
        if access_key or secret_key:
            if not (access_key and secret_key):
                raise InvalidArgumentError(
                    "HOMING_CLIENT_ACCESS_KEY and HOMING_CLIENT_SECRET_KEY go together"
                )
            values["credentials"] = Credentials(access_key, secret_key)
        if "HOMING_CLIENT_NAMESPACE" in environment:
            values["namespace"] = environment["HOMING_CLIENT_NAMESPACE"].strip()
        if "HOMING_CLIENT_TLS" in environment:
            values["tls"] = _bool_from_text("HOMING_CLIENT_TLS", environment["HOMING_CLIENT_TLS"])
        if environment.get("HOMING_CLIENT_TLS_CA_FILE", "").strip():
            values["tls_ca_file"] = environment["HOMING_CLIENT_TLS_CA_FILE"].strip()
        if "HOMING_CLIENT_REQUEST_TIMEOUT_S" in environment:
            text = environment["HOMING_CLIENT_REQUEST_TIMEOUT_S"]
            try:
                values["request_timeout_s"] = float(text)
            except ValueError:
                raise InvalidArgumentError(
                    f"HOMING_CLIENT_REQUEST_TIMEOUT_S={text!r}: not a number"
                ) from None
        values.update(overrides)
        if "endpoints" not in values:
            raise InvalidArgumentError(
                "no endpoints: pass endpoints=... or set HOMING_CLIENT_ENDPOINTS (e.g. 127.0.0.1:8081)"
            )
        try:
            return cls(**values)  # type: ignore[arg-type]
        except TypeError as error:
            raise InvalidArgumentError(f"ClientConfig: {error}") from None

    def replace(self, **changes: object) -> ClientConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def resolve_config(config: ClientConfig | str | None) -> ClientConfig:
    """What the clients accept: a config, an endpoints string (all else default), or None (from env)."""
    if config is None:
        return ClientConfig.from_env()
    if isinstance(config, str):
        return ClientConfig(endpoints=config)
    if not isinstance(config, ClientConfig):
        raise InvalidArgumentError(
            f"expected a ClientConfig or an endpoints string, not {type(config).__name__}"
        )
    return config
