"""Broker settings: each one defined once, read from four sources.

Why this module exists: an operator must be able to tell, for every setting, what it means, what
it defaults to and where the value in force came from, and a typo must fail loudly instead of
silently leaving a default in force (a misspelt ``flush_mode`` would quietly change durability).

Each setting is one field of :class:`BrokerSettings`, with its default, one-line help and allowed
range next to it. The TOML keys, ``HOMING_*`` environment variables, command-line flags, help text
and ``homing config show`` output are all derived from those fields, so adding a setting is a
one-place change. Precedence, lowest first::

    default < TOML config file < HOMING_<NAME> environment variable < --flag (``overrides``)

Values are converted and checked as they are read; every problem is reported together in one
:class:`ConfigError`, each naming where the bad value came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeGuard

from homing.errors import HomingError

__all__ = [
    "CLIENT_ENVIRONMENT_PREFIX",
    "CONFIG_FILE_ENVIRONMENT_VARIABLE",
    "ENVIRONMENT_PREFIX",
    "SETTINGS",
    "Address",
    "BrokerSettings",
    "ConfigError",
    "FlushMode",
    "LogLevel",
    "ResolvedSettings",
    "Setting",
    "format_durations",
    "load_settings",
    "parse_durations",
    "resolve_settings",
    "settings_to_plain",
    "settings_to_toml",
]

ENVIRONMENT_PREFIX: Final = "HOMING_"
CONFIG_FILE_ENVIRONMENT_VARIABLE: Final = "HOMING_CONFIG"
"""Names the TOML file when ``--config`` is not given; the one ``HOMING_*`` variable that is not a setting."""
CLIENT_ENVIRONMENT_PREFIX: Final = "HOMING_CLIENT_"
"""Variables of Homing's client (:mod:`homing.client`), which the broker leaves alone: a broker and a
client often share one environment (tests, a single host). No setting may be named ``client_*``."""
TOML_TABLE: Final = "broker"
"""Settings may sit at the top of the TOML file or under this table."""

_MEBIBYTE: Final = 1024 * 1024

FlushMode = Literal["sync", "async"]
LogLevel = Literal["debug", "info", "warning", "error"]


class ConfigError(HomingError):
    """The settings cannot be used. ``problems`` lists each one; the message joins them, one a line."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems: tuple[str, ...] = problems


# --------------------------------------------------------------------------------------------------
# Value types


_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?")


@dataclass(frozen=True)
class Address:
    """A TCP endpoint. ``host`` is a name or an IP literal (an IPv6 literal without brackets)."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not in 0-65535")
        if ":" in self.host:
            try:
                ipaddress.IPv6Address(self.host)
            except ValueError:
                raise ValueError(f"{self.host!r} is not an IPv6 address") from None
        elif not _HOST_NAME.fullmatch(self.host):
            raise ValueError(f"{self.host!r} is not a host name or IP address")

    @classmethod
    def parse(cls, text: str) -> Address:
        """Read ``host:port`` or ``[ipv6]:port``; raises ValueError saying what is wrong."""
        text = text.strip()
        if text.startswith("["):
            host, bracket, rest = text[1:].partition("]")
            if not bracket or not rest.startswith(":"):
                raise ValueError("not a host:port address (IPv6 form: [::1]:8081)")
            port_text = rest[1:]
        else:
            host, colon, port_text = text.rpartition(":")
            if not colon or not host:
                raise ValueError("not a host:port address (e.g. 127.0.0.1:8081)")
            if ":" in host:
                raise ValueError("an IPv6 address needs brackets, e.g. [::1]:8081")
        if not re.fullmatch(r"[0-9]+", port_text):
            raise ValueError(f"port {port_text!r} is not a number")
        return cls(host, int(port_text))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    @property
    def is_loopback(self) -> bool:
        """Reachable only from this machine. Host names other than ``localhost`` count as not loopback."""
        ip = self._ip()
        return ip.is_loopback if ip is not None else self.host.lower() == "localhost"

    @property
    def is_wildcard(self) -> bool:
        """``0.0.0.0`` or ``::``: every interface (listenable, but not an address to give clients)."""
        ip = self._ip()
        return ip is not None and ip.is_unspecified


_DURATION = re.compile(r"((?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)(ms|s|m|h|d)?")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_durations(text: str) -> tuple[float, ...]:
    """Read a list like ``"10s 1m 2h"`` (spaces or commas between) into seconds.

    Units: ms, s, m, h, d; a bare number is seconds. Every duration must be positive.
    Raises ValueError saying what is wrong.
    """
    tokens = [token for token in re.split(r"[\s,]+", text.strip()) if token]
    if not tokens:
        raise ValueError("needs at least one duration (e.g. '10s 1m 2h')")
    seconds: list[float] = []
    for token in tokens:
        match = _DURATION.fullmatch(token)
        if match is None:
            raise ValueError(f"{token!r} is not a duration (use e.g. 500ms, 10s, 1m, 2h, 1d)")
        number, unit = float(match[1]), match[2] or "s"
        value = number / 1000 if unit == "ms" else number * _UNIT_SECONDS[unit]
        if not 0 < value < math.inf:
            raise ValueError(f"duration {token!r} must be positive and finite")
        seconds.append(value)
    return tuple(seconds)


def _format_duration(seconds: float) -> str:
    seconds = float(seconds)
    for unit in ("d", "h", "m"):
        count = seconds / _UNIT_SECONDS[unit]
        if count.is_integer() and count * _UNIT_SECONDS[unit] == seconds:
            return f"{int(count)}{unit}"
    if seconds.is_integer():
        return f"{int(seconds)}s"
    milliseconds = round(seconds * 1000)
    if milliseconds / 1000 == seconds:
        return f"{milliseconds}ms"
    return f"{seconds!r}s"


def format_durations(seconds: tuple[float, ...]) -> str:
    """The shortest text :func:`parse_durations` reads back to exactly ``seconds``."""
    return " ".join(_format_duration(value) for value in seconds)


# --------------------------------------------------------------------------------------------------
# How each Python type is read and written


@dataclass(frozen=True)
class _Kind:
    """Reads and writes one type of setting value. Readers raise ValueError with the problem."""

    metavar: str
    from_text: Callable[[str], object]
    from_value: Callable[[object], object]  # typed values: TOML, JSON, Python callers
    to_text: Callable[[Any], str]  # for help and TOML
    to_plain: Callable[[Any], object]  # JSON-compatible


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


_TRUE_WORDS: Final = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS: Final = frozenset({"false", "no", "off", "0"})


def _bool_from_text(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError("not a boolean (use true/false, yes/no, on/off or 1/0)")


def _bool_from_value(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError("not a boolean (true or false)")


def _int_from_text(text: str) -> int:
    text = text.strip()
    if not re.fullmatch(r"[+-]?[0-9](_?[0-9])*", text):
        raise ValueError("not an integer")
    return int(text)


def _int_from_value(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError("not an integer")


def _finite(number: float) -> float:
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


def _float_from_text(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise ValueError("not a number") from None
    return _finite(number)


def _float_from_value(value: object) -> float:
    if not _is_number(value):
        raise ValueError("not a number")
    return _finite(float(value))


def _str_from_value(value: object) -> str:
    if isinstance(value, str):
        return value
    raise ValueError("not a string")


def _path_from_text(text: str) -> Path:
    if not text.strip():
        raise ValueError("must not be empty")
    return Path(text)


def _path_from_value(value: object) -> Path:
    if isinstance(value, str | os.PathLike):
        return _path_from_text(os.fspath(value))
    raise ValueError("not a path")


def _address_from_value(value: object) -> Address:
    if isinstance(value, Address):
        return value
    raise ValueError("not a host:port address")


def _durations_from_value(value: object) -> tuple[float, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError("not a list of durations (e.g. '10s 1m 2h' or [10, 60, 7200])")
    seconds: list[float] = []
    for item in value:
        if isinstance(item, str):
            seconds.extend(parse_durations(item))
        elif _is_number(item) and math.isfinite(item) and item > 0:
            seconds.append(float(item))
        else:
            raise ValueError(f"{item!r} is not a positive duration")
    if not seconds:
        raise ValueError("needs at least one duration (e.g. '10s 1m 2h')")
    return tuple(seconds)


def _choice_kind(choices: tuple[str, ...]) -> _Kind:
    def from_text(text: str) -> str:
        word = text.strip().lower()
        if word not in choices:
            raise ValueError(f"not one of: {', '.join(choices)}")
        return word

    return _Kind(
        metavar=f"[{'|'.join(choices)}]",
        from_text=from_text,
        from_value=lambda value: from_text(_str_from_value(value)),
        to_text=str,
        to_plain=lambda value: value,
    )


def _identity(value: object) -> object:
    return value


_BOOL = _Kind(
    "BOOLEAN", _bool_from_text, _bool_from_value, lambda value: "true" if value else "false", _identity
)
_INT = _Kind("INTEGER", _int_from_text, _int_from_value, str, _identity)
_FLOAT = _Kind("NUMBER", _float_from_text, _float_from_value, repr, _identity)
_STR = _Kind("TEXT", str, _str_from_value, str, _identity)
_PATH = _Kind("PATH", _path_from_text, _path_from_value, str, str)
_ADDRESS = _Kind("HOST:PORT", Address.parse, _address_from_value, str, str)
_DURATIONS = _Kind("DURATIONS", parse_durations, _durations_from_value, format_durations, list)

_KINDS_BY_TYPE: Final[Mapping[object, _Kind]] = {
    bool: _BOOL,
    int: _INT,
    float: _FLOAT,
    str: _STR,
    Path: _PATH,
    Address: _ADDRESS,
    tuple[float, ...]: _DURATIONS,  # always a list of durations, in seconds
}


def _kind_for(annotation: object) -> tuple[_Kind, bool]:
    """The kind of a field's type, and whether ``None`` is allowed (``X | None``)."""
    optional = False
    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        if len(members) != 1:
            raise TypeError(f"unsupported setting type {annotation}")
        annotation, optional = members[0], True
    if typing.get_origin(annotation) is Literal:
        return _choice_kind(tuple(str(choice) for choice in typing.get_args(annotation))), optional
    kind = _KINDS_BY_TYPE.get(annotation)
    if kind is None:
        raise TypeError(f"unsupported setting type {annotation}")
    return kind, optional


# --------------------------------------------------------------------------------------------------
# The settings


def _about(
    description: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    greater_than: float | None = None,
    default_text: str | None = None,
) -> dict[str, object]:
    """Field metadata of a setting: one-line help, bounds (inclusive but ``greater_than``), default shown."""
    return {
        "help": description,
        "minimum": minimum,
        "maximum": maximum,
        "greater_than": greater_than,
        "default_text": default_text,
    }


@dataclass(frozen=True)
class BrokerSettings:
    """Every broker setting, validated on construction (also through ``dataclasses.replace``).

    Construction converts plain values (``"0.0.0.0:8081"`` for an address, a list for durations,
    a string for a path) and raises :class:`ConfigError` for values out of range or settings that
    contradict each other. Durations are seconds; sizes are bytes.
    """

    # Network and security
    listen: Address = field(
        default=Address("127.0.0.1", 8081), metadata=_about("Address the RocketMQ gRPC endpoint listens on.")
    )
    advertise: Address | None = field(
        default=None,
        metadata=_about(
            "Address clients are told to connect to (in route answers).", default_text="the listen address"
        ),
    )
    admin_listen: Address = field(
        default=Address("127.0.0.1", 8082),
        metadata=_about("Address of the admin endpoint (health, metrics, management)."),
    )
    credentials_file: Path | None = field(
        default=None,
        metadata=_about(
            "File of access keys and secrets clients must sign with; unset means no authentication."
        ),
    )
    allow_insecure_non_loopback: bool = field(
        default=False,
        metadata=_about("Allow a non-loopback listen address without credentials_file (anyone can connect)."),
    )
    tls_cert: Path | None = field(
        default=None, metadata=_about("PEM certificate chain for TLS on both endpoints (needs tls_key).")
    )
    tls_key: Path | None = field(default=None, metadata=_about("PEM private key of tls_cert."))

    # Storage and durability
    data_dir: Path = field(
        default=Path("./homing-data"),
        metadata=_about("Directory of the commit log, consume queues, indexes and checkpoints."),
    )
    flush_mode: FlushMode = field(
        default="sync",
        metadata=_about(
            "sync: acknowledge a send only once it is fsynced; async: acknowledge before "
            "(a crash can lose acknowledged messages)."
        ),
    )
    flush_timeout_s: float = field(
        default=5.0,
        metadata=_about("How long a send waits for its fsync before failing (retriable).", greater_than=0),
    )
    async_flush_interval_s: float = field(
        default=0.2,
        metadata=_about("With flush_mode async, how often the commit log is fsynced.", greater_than=0),
    )
    segment_size_bytes: int = field(
        default=256 * _MEBIBYTE, metadata=_about("Size of each commit log segment file.", minimum=4096)
    )
    consume_queue_entries_per_file: int = field(
        default=300_000, metadata=_about("Entries in each consume queue file.", minimum=1)
    )
    index_buffer_entries: int = field(
        default=100_000,
        metadata=_about("Message key index entries buffered in memory before being written.", minimum=1),
    )
    checkpoint_interval_s: float = field(
        default=1.0, metadata=_about("How often the recovery checkpoint is written.", greater_than=0)
    )
    max_disk_used_ratio: float = field(
        default=0.75,
        metadata=_about(
            "Refuse sends while the data disk is fuller than this fraction.", greater_than=0, maximum=1
        ),
    )
    retention_hours: float = field(
        default=72.0,
        metadata=_about("How long messages are kept before their segments may be deleted.", greater_than=0),
    )
    retention_override_under_pressure: bool = field(
        default=False,
        metadata=_about("Above max_disk_used_ratio, delete the oldest segments even within retention_hours."),
    )

    # Messaging
    auto_create: bool = field(
        default=True, metadata=_about("Create topics and consumer groups on first use.")
    )
    max_body_bytes: int = field(
        default=4 * _MEBIBYTE, metadata=_about("Largest message body accepted.", minimum=1)
    )
    max_delivery_attempts: int = field(
        default=17,
        metadata=_about(
            "Deliveries of a message, first included, before it goes to the dead-letter queue.", minimum=1
        ),
    )
    retry_backoff: tuple[float, ...] = field(
        default=parse_durations("10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h"),
        metadata=_about("Wait before each redelivery, in order; the last one repeats."),
    )
    delay_levels: tuple[float, ...] = field(
        default=parse_durations("1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h"),
        metadata=_about("Delays of RocketMQ delay levels 1, 2, 3..."),
    )
    transaction_timeout_s: float = field(
        default=6.0,
        metadata=_about(
            "How long a transaction may stay undecided before the producer is asked.", greater_than=0
        ),
    )
    transaction_check_interval_s: float = field(
        default=60.0,
        metadata=_about("How often producers are asked about undecided transactions.", greater_than=0),
    )
    transaction_max_checks: int = field(
        default=15,
        metadata=_about(
            "Check-backs of an undecided transaction before it is parked for an operator.", minimum=1
        ),
    )
    push_invisible_duration_s: float = field(
        default=60.0,
        metadata=_about(
            "How long a message pushed to a consumer stays invisible unless renewed.", greater_than=0
        ),
    )
    push_max_renew_s: float = field(
        default=10800.0,
        metadata=_about(
            "Longest a push consumer may keep renewing a message's invisibility.", greater_than=0
        ),
    )
    long_polling_timeout_s: float = field(
        default=20.0,
        metadata=_about("Longest a receive request waits for messages.", greater_than=0, maximum=30),
    )

    # Operations
    log_level: LogLevel = field(default="info", metadata=_about("Least severe log messages written."))

    def __post_init__(self) -> None:
        problems: list[str] = []
        for setting in SETTINGS:
            value = getattr(self, setting.name)
            try:
                object.__setattr__(self, setting.name, setting.convert(value))
            except ValueError as error:
                problems.append(f"{setting.name}={value!r}: {error}")
        if not problems:
            problems = _consistency_problems(self.__dict__, lambda name: "")
        if problems:
            raise ConfigError(*problems)

    @property
    def advertised_address(self) -> Address:
        """What clients are told to connect to: ``advertise``, or else ``listen``."""
        return self.advertise if self.advertise is not None else self.listen


@dataclass(frozen=True)
class Setting:
    """One field of :class:`BrokerSettings` and how it is read, named and described."""

    name: str
    default: object
    description: str
    optional: bool
    minimum: float | None
    maximum: float | None
    greater_than: float | None
    default_text: str | None
    _kind: _Kind

    @property
    def environment_variable(self) -> str:
        return ENVIRONMENT_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        """The command-line option name, e.g. ``flush-timeout-s`` (used as ``--flush-timeout-s``)."""
        return self.name.replace("_", "-")

    @property
    def is_boolean(self) -> bool:
        return self._kind is _BOOL

    @property
    def metavar(self) -> str:
        return self._kind.metavar

    def describe_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        return "unset" if self.default is None else self.format(self.default)

    def describe_range(self) -> str | None:
        """E.g. ``> 0 and <= 1``, or None if any value of the type is allowed."""
        bounds = []
        if self.greater_than is not None:
            bounds.append(f"> {_format_bound(self.greater_than)}")
        if self.minimum is not None:
            bounds.append(f">= {_format_bound(self.minimum)}")
        if self.maximum is not None:
            bounds.append(f"<= {_format_bound(self.maximum)}")
        return " and ".join(bounds) or None

    def format(self, value: object) -> str:
        """Text that :meth:`convert` reads back to ``value`` (empty for None)."""
        return "" if value is None else self._kind.to_text(value)

    def to_plain(self, value: object) -> object:
        """A JSON-compatible value that :meth:`convert` reads back to ``value``."""
        return None if value is None else self._kind.to_plain(value)

    def convert(self, raw: object) -> object:
        """Read ``raw`` (text, or an already typed value) and check its range; raises ValueError.

        For optional settings, None or an empty string means unset.
        """
        if raw is None or (self.optional and isinstance(raw, str) and not raw.strip()):
            if self.optional:
                return None
            raise ValueError("must be set")
        value = self._kind.from_text(raw) if isinstance(raw, str) else self._kind.from_value(raw)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if self.greater_than is not None and not value > self.greater_than:
                raise ValueError(f"must be greater than {_format_bound(self.greater_than)}")
            if self.minimum is not None and value < self.minimum:
                raise ValueError(f"must be at least {_format_bound(self.minimum)}")
            if self.maximum is not None and value > self.maximum:
                raise ValueError(f"must be at most {_format_bound(self.maximum)}")
        return value


def _format_bound(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def _settings_from_fields() -> tuple[Setting, ...]:
    annotations = typing.get_type_hints(BrokerSettings)
    settings = []
    for dataclass_field in dataclasses.fields(BrokerSettings):
        kind, optional = _kind_for(annotations[dataclass_field.name])
        metadata = dataclass_field.metadata
        settings.append(
            Setting(
                name=dataclass_field.name,
                default=dataclass_field.default,
                description=metadata["help"],
                optional=optional,
                minimum=metadata["minimum"],
                maximum=metadata["maximum"],
                greater_than=metadata["greater_than"],
                default_text=metadata["default_text"],
                _kind=kind,
            )
        )
    return tuple(settings)


SETTINGS: Final[tuple[Setting, ...]] = _settings_from_fields()
"""Every setting, in :class:`BrokerSettings` field order."""
_SETTINGS_BY_NAME: Final = {setting.name: setting for setting in SETTINGS}


def _consistency_problems(values: Mapping[str, Any], origin: Callable[[str], str]) -> list[str]:
    """Problems between converted setting values (by name).

    ``origin(name)`` says where a value came from, e.g. " (from --listen)", or "" if not known.
    """
    problems = []
    if (values["tls_cert"] is None) != (values["tls_key"] is None):
        given = "tls_cert" if values["tls_cert"] is not None else "tls_key"
        missing = "tls_key" if given == "tls_cert" else "tls_cert"
        problems.append(
            f"tls_cert and tls_key go together: {given} is set{origin(given)} but {missing} is not"
        )
    if values["credentials_file"] is None and not values["allow_insecure_non_loopback"]:
        for name in ("listen", "admin_listen"):
            address: Address = values[name]
            if not address.is_loopback:
                problems.append(
                    f"{name} {address}{origin(name)} is not a loopback address: a non-loopback listen "
                    "address requires credentials_file unless allow_insecure_non_loopback is set"
                )
    advertise: Address | None = values["advertise"]
    listen: Address = values["listen"]
    if advertise is not None:
        if advertise.is_wildcard or advertise.port == 0:
            problems.append(
                f"advertise {advertise}{origin('advertise')} is not an address clients can "
                "connect to (no wildcard host, no port 0)"
            )
    elif listen.is_wildcard:
        problems.append(
            f"listen {listen}{origin('listen')} is a wildcard address, which clients cannot "
            "connect to: set advertise to the address they should use"
        )
    return problems


# --------------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class ResolvedSettings:
    """Settings, and where each value came from.

    ``sources`` maps every setting name to ``"default"``, the config file path, the ``HOMING_*``
    variable or the flag (``--name`` / ``--no-name``) that set it.
    """

    settings: BrokerSettings
    sources: Mapping[str, str]


def _suggestion(name: str, spell: Callable[[Setting], str] = lambda setting: setting.name) -> str:
    """`` (did you mean X?)`` naming the setting closest to ``name`` (spelt by ``spell``), or ""."""
    matches = difflib.get_close_matches(name.lower(), list(_SETTINGS_BY_NAME), n=1)
    return f" (did you mean {spell(_SETTINGS_BY_NAME[matches[0]])}?)" if matches else ""


def _read_config_file(path: str, problems: list[str]) -> dict[str, object]:
    """The settings table of a TOML file; problems are appended to ``problems``."""
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as error:
        problems.append(f"config file {path}: cannot read it: {error.strerror or error}")
        return {}
    except tomllib.TOMLDecodeError as error:
        problems.append(f"config file {path}: not valid TOML: {error}")
        return {}
    table: dict[str, object] = document
    prefix = ""
    if TOML_TABLE in document:
        broker_table = document[TOML_TABLE]
        if not isinstance(broker_table, dict):
            problems.append(f"{path}: [{TOML_TABLE}] must be a table of settings")
            return {}
        for key in document:
            if key != TOML_TABLE:
                problems.append(f"{path}: {key!r} is outside [{TOML_TABLE}]: put every setting in that table")
        table, prefix = broker_table, f"[{TOML_TABLE}] "
    settings = {}
    for key, value in table.items():
        if key in _SETTINGS_BY_NAME:
            settings[key] = value
        else:
            problems.append(f"{path}: unknown setting {prefix}{key!r}{_suggestion(key)}")
    return settings


def resolve_settings(
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> ResolvedSettings:
    """Build settings from defaults, a TOML file, ``HOMING_*`` variables and overrides, in that precedence.

    ``config_file`` defaults to ``$HOMING_CONFIG`` when that is set and not empty. ``env`` defaults to
    ``os.environ`` (pass ``{}`` to ignore the environment). ``overrides`` maps setting names to text
    (read like a variable) or typed values, and ranks as command-line flags: the CLI passes the flags
    given. Raises :class:`ConfigError` listing every problem found.
    """
    environment = os.environ if env is None else env
    problems: list[str] = []
    values: dict[str, Any] = {setting.name: setting.default for setting in SETTINGS}
    sources: dict[str, str] = dict.fromkeys(values, "default")

    def apply(name: str, raw: object, source: str, label: str) -> None:
        try:
            values[name] = _SETTINGS_BY_NAME[name].convert(raw)
        except ValueError as error:
            problems.append(f"{label}={raw!r}: {error}")
        else:
            sources[name] = source

    path = (
        config_file if config_file is not None else environment.get(CONFIG_FILE_ENVIRONMENT_VARIABLE) or None
    )
    if path is not None:
        path_text = os.fspath(path)
        for name, raw in _read_config_file(path_text, problems).items():
            apply(name, raw, path_text, f"{path_text}: {name}")

    for variable, text in sorted(environment.items()):
        if (
            not variable.startswith(ENVIRONMENT_PREFIX)
            or variable == CONFIG_FILE_ENVIRONMENT_VARIABLE
            or variable.startswith(CLIENT_ENVIRONMENT_PREFIX)
        ):
            continue
        name = variable.removeprefix(ENVIRONMENT_PREFIX).lower()
        if name in _SETTINGS_BY_NAME and variable == _SETTINGS_BY_NAME[name].environment_variable:
            apply(name, text, variable, variable)
        else:
            problems.append(
                f"unknown environment variable {variable}"
                f"{_suggestion(name, lambda setting: setting.environment_variable)}: "
                f"{ENVIRONMENT_PREFIX}* variables are reserved for settings"
            )

    for name, raw in (overrides or {}).items():
        if name in _SETTINGS_BY_NAME:
            setting = _SETTINGS_BY_NAME[name]
            flag = f"--{setting.flag}"
            apply(name, raw, flag, flag)
            if setting.is_boolean and sources[name] == flag and values[name] is False:
                sources[name] = f"--no-{setting.flag}"
        else:
            problems.append(f"unknown setting {name!r}{_suggestion(name)}")

    if problems:
        raise ConfigError(*problems)

    def origin(name: str) -> str:
        return "" if sources[name] == "default" else f" (from {sources[name]})"

    problems = _consistency_problems(values, origin)
    if problems:
        raise ConfigError(*problems)
    return ResolvedSettings(BrokerSettings(**values), sources)


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> BrokerSettings:
    """:func:`resolve_settings` without the sources."""
    return resolve_settings(config_file, env, overrides).settings


# --------------------------------------------------------------------------------------------------
# Output


def settings_to_plain(settings: BrokerSettings) -> dict[str, object]:
    """JSON-compatible values (addresses and paths as text, durations as lists of seconds, unset as None).

    ``load_settings(env={}, overrides=settings_to_plain(settings)) == settings``.
    """
    return {setting.name: setting.to_plain(getattr(settings, setting.name)) for setting in SETTINGS}


def _toml_string(text: str) -> str:
    escaped = []
    for character in text:
        if character in '"\\':
            escaped.append("\\" + character)
        elif ord(character) < 0x20 or ord(character) == 0x7F:
            escaped.append(f"\\u{ord(character):04x}")
        else:
            escaped.append(character)
    return '"' + "".join(escaped) + '"'


def _toml_value(setting: Setting, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return _toml_string(setting.format(value))


def settings_to_toml(settings: BrokerSettings, sources: Mapping[str, str] | None = None) -> str:
    """A ``[broker]`` TOML document that loads back to ``settings``; unset settings are comments.

    With ``sources`` (from :class:`ResolvedSettings`), each line ends with where its value came from.
    """
    lines = [f"[{TOML_TABLE}]"]
    for setting in SETTINGS:
        value = getattr(settings, setting.name)
        if value is None:
            meaning = f" (means {setting.default_text})" if setting.default_text is not None else ""
            line = f"# {setting.name} is unset{meaning}"
        else:
            line = f"{setting.name} = {_toml_value(setting, value)}"
        if sources is not None:
            line += f"  # {sources.get(setting.name, 'default')}"
        lines.append(line)
    return "\n".join(lines) + "\n"
