"""Request signatures: who may talk to the broker when a credentials file is configured.

The credentials file (``--credentials-file FILE``) is TOML: one ``access_key = "secret_key"``
pair per line at the top level, for example::

    # homing credentials: access key = secret key
    orders-service = "b6c1f0e5d2a94c7e"
    "team.billing" = "0f3a9d7c1e2b4a58"   # quote keys holding other characters than A-Z a-z 0-9 _ -

Every value must be a non-empty string; anything else is refused when the broker starts. The
file holds secrets: the broker warns when it is readable by other users.

Every request must then carry the header the official clients send (RocketMQ's ``MQv2`` scheme)::

    authorization: MQv2-HMAC-SHA1 Credential=<AK>, SignedHeaders=x-mq-date-time, Signature=<hex>
    x-mq-date-time: 20250101T120000Z

where ``<hex>`` is HMAC-SHA1(secret key, the x-mq-date-time text) in hex (Python sends lowercase,
Node uppercase: compared without case, in constant time). The date-time must be within
``max_skew_s`` (15 min) of the broker's clock, which bounds how long a captured header can be
replayed. One exception, for compatibility: the official Python client signs its *local* time
labelled as UTC (``datetime.now()`` formatted with ``Z``), so for requests whose
``x-mq-language`` is ``PYTHON`` the accepted window is widened by the largest time zone offset
(14 h). The signature covers only the date-time, as in RocketMQ: TLS protects the rest.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import logging
import os
import stat
import time
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path

from homing.broker.errors import BrokerError
from homing.errors import HomingError

__all__ = [
    "ALGORITHM",
    "DEFAULT_MAX_SKEW_S",
    "Authenticator",
    "CredentialsError",
    "load_credentials",
    "sign",
]

log = logging.getLogger("homing.server.auth")

ALGORITHM = "MQv2-HMAC-SHA1"
DATE_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
DEFAULT_MAX_SKEW_S = 15 * 60.0
LOCAL_TIME_ALLOWANCE_S = 14 * 3600.0
MAX_AUTHORIZATION_CHARS = 1024
MAX_ACCESS_KEYS = 10_000


class CredentialsError(HomingError):
    """The credentials file cannot be used (unreadable, not TOML, wrong shape)."""


def load_credentials(path: str | os.PathLike[str]) -> dict[str, str]:
    """The access key -> secret key pairs of a credentials file; raises :class:`CredentialsError`."""
    location = Path(path)
    try:
        with location.open("rb") as file:
            document = tomllib.load(file)
        mode = location.stat().st_mode
    except OSError as error:
        raise CredentialsError(
            f"credentials file {location}: cannot read it: {error.strerror or error}"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise CredentialsError(f"credentials file {location}: not valid TOML: {error}") from None
    secrets: dict[str, str] = {}
    problems: list[str] = []
    for access_key, secret in document.items():
        if not isinstance(secret, str) or not secret:
            problems.append(f'{access_key!r} must be a non-empty string (access_key = "secret_key")')
        elif not access_key or any(character in access_key for character in ", =\t\r\n"):
            problems.append(f"access key {access_key!r} is empty or holds a space, comma or '='")
        else:
            secrets[access_key] = secret
    if problems:
        raise CredentialsError(f"credentials file {location}: " + "; ".join(problems))
    if not secrets:
        raise CredentialsError(f'credentials file {location}: no access keys (access_key = "secret_key")')
    if len(secrets) > MAX_ACCESS_KEYS:
        raise CredentialsError(f"credentials file {location}: more than {MAX_ACCESS_KEYS} access keys")
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("credentials file %s is readable by other users: chmod 600 it", location)
    return secrets


def sign(secret_key: str, date_time: str) -> str:
    """The signature the clients send: hex of HMAC-SHA1(secret key, date-time)."""
    return hmac.new(secret_key.encode(), date_time.encode(), hashlib.sha1).hexdigest()


def _parse_authorization(header: str) -> dict[str, str]:
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise BrokerError("UNAUTHORIZED", f"authorization must use {ALGORITHM}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, equals, value = part.strip().partition("=")
        if equals:
            fields[name.strip()] = value.strip()
    return fields


class Authenticator:
    """Checks the ``authorization`` header of each request against the configured secrets."""

    def __init__(
        self,
        secrets: Mapping[str, str],
        *,
        now_s: Callable[[], float] = time.time,
        max_skew_s: float = DEFAULT_MAX_SKEW_S,
    ) -> None:
        assert secrets, "an authenticator needs at least one access key"
        self._secrets = dict(secrets)
        self._now_s = now_s
        self.max_skew_s = max_skew_s

    def check(self, metadata: Mapping[str, str]) -> str:
        """The access key the request is signed with; raises ``BrokerError(UNAUTHORIZED)`` otherwise.

        ``metadata`` maps lowercase header names to values.
        """
        header = metadata.get("authorization", "")
        if not header:
            raise BrokerError("UNAUTHORIZED", "this broker requires credentials: no authorization header")
        if len(header) > MAX_AUTHORIZATION_CHARS:
            raise BrokerError("UNAUTHORIZED", "authorization header too long")
        fields = _parse_authorization(header)
        access_key = fields.get("Credential", "")
        signature = fields.get("Signature", "")
        signed = [name.strip().lower() for name in fields.get("SignedHeaders", "").split(";")]
        if "x-mq-date-time" not in signed:
            raise BrokerError("UNAUTHORIZED", "authorization must sign x-mq-date-time")
        secret = self._secrets.get(access_key)
        if secret is None:
            raise BrokerError("UNAUTHORIZED", f"unknown access key {access_key[:64]!r}")
        date_time = metadata.get("x-mq-date-time", "")
        expected = sign(secret, date_time)
        if not hmac.compare_digest(expected.encode(), signature.lower().encode()):
            raise BrokerError("UNAUTHORIZED", "signature does not match (wrong secret key?)")
        self._check_time(date_time, metadata.get("x-mq-language", ""))
        return access_key

    def _check_time(self, date_time: str, language: str) -> None:
        try:
            signed_at = calendar.timegm(time.strptime(date_time, DATE_TIME_FORMAT))
        except ValueError:
            raise BrokerError(
                "UNAUTHORIZED", f"x-mq-date-time {date_time[:32]!r} is not of the form 20250101T120000Z"
            ) from None
        allowed = self.max_skew_s
        if language.upper() == "PYTHON":
            allowed += LOCAL_TIME_ALLOWANCE_S  # it signs local time labelled as UTC
        skew = signed_at - self._now_s()
        if abs(skew) > allowed:
            raise BrokerError(
                "UNAUTHORIZED",
                f"x-mq-date-time is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} the broker's "
                f"clock; at most {allowed:.0f} s allowed (check the client's clock)",
            )
