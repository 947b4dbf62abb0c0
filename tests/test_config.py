"""Broker settings: precedence of the four sources, conversion, ranges and every error message."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from homing.config import (
    CLIENT_ENVIRONMENT_PREFIX,
    SETTINGS,
    Address,
    BrokerSettings,
    ConfigError,
    format_durations,
    load_settings,
    parse_durations,
    resolve_settings,
    settings_to_plain,
    settings_to_toml,
)
from homing.errors import HomingError

ROCKETMQ_RETRY_LEVELS_S = (10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600, 7200)


def write_config(directory: Path, text: str) -> Path:
    path = directory / "homing.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(
    config_file: Path | None = None, env: Mapping[str, str] = {}, overrides: Mapping[str, object] = {}
) -> ConfigError:
    """The ConfigError that load_settings raises (the real environment is ignored)."""
    with pytest.raises(ConfigError) as raised:
        load_settings(config_file, env, overrides)
    return raised.value


# ------------------------------------------------------------------------------------------------
# Defaults and metadata


def test_defaults() -> None:
    settings = load_settings(env={})

    assert settings == BrokerSettings()
    assert settings.listen == Address("127.0.0.1", 8081)
    assert settings.advertise is None
    assert settings.advertised_address == Address("127.0.0.1", 8081)
    assert settings.data_dir == Path("homing-data")
    assert settings.flush_mode == "sync"
    assert settings.segment_size_bytes == 256 * 1024 * 1024
    assert settings.max_body_bytes == 4 * 1024 * 1024
    assert settings.max_delivery_attempts == 17
    assert settings.retry_backoff == ROCKETMQ_RETRY_LEVELS_S
    assert len(settings.delay_levels) == 18
    assert settings.delay_levels[:4] == (1, 5, 10, 30)
    assert settings.delay_levels[-1] == 7200
    assert settings.auto_create is True
    assert settings.retention_override_under_pressure is False


def test_every_setting_has_help_env_name_and_flag() -> None:
    names = [field.name for field in dataclasses.fields(BrokerSettings)]
    assert [setting.name for setting in SETTINGS] == names
    for setting in SETTINGS:
        assert setting.description.endswith("."), setting.name
        assert setting.environment_variable == "HOMING_" + setting.name.upper()
        assert setting.flag == setting.name.replace("_", "-")
        assert setting.describe_default()


def test_config_error_is_a_homing_error() -> None:
    assert issubclass(ConfigError, HomingError)
    error = ConfigError("first", "second")
    assert error.problems == ("first", "second")
    assert str(error) == "first\nsecond"


# ------------------------------------------------------------------------------------------------
# Precedence: default < TOML < environment < flag


@pytest.mark.parametrize(
    ("name", "toml_text", "env_text", "flag_value", "expected_toml", "expected_env", "expected_flag"),
    [
        ("flush_timeout_s", "2.5", "3", "4.25", 2.5, 3.0, 4.25),
        ("segment_size_bytes", "8192", "16_384", "32768", 8192, 16384, 32768),
        ("flush_mode", '"async"', "SYNC", "async", "async", "sync", "async"),
        ("auto_create", "false", "yes", False, False, True, False),
        (
            "listen",
            '"[::1]:9000"',
            "localhost:9001",
            "127.0.0.2:9002",
            Address("::1", 9000),
            Address("localhost", 9001),
            Address("127.0.0.2", 9002),
        ),
        (
            "data_dir",
            '"/var/lib/a"',
            "/var/lib/b",
            "/var/lib/c",
            Path("/var/lib/a"),
            Path("/var/lib/b"),
            Path("/var/lib/c"),
        ),
        ("retry_backoff", '["1s", 2, "1m 2h"]', "5s,10s", "1h", (1, 2, 60, 7200), (5, 10), (3600,)),
    ],
)
def test_precedence(
    tmp_path: Path,
    name: str,
    toml_text: str,
    env_text: str,
    flag_value: object,
    expected_toml: object,
    expected_env: object,
    expected_flag: object,
) -> None:
    config_file = write_config(tmp_path, f"{name} = {toml_text}\n")
    variable = "HOMING_" + name.upper()

    def value(
        config_file: Path | None = None, env: Mapping[str, str] = {}, overrides: Mapping[str, object] = {}
    ) -> tuple[object, str]:
        resolved = resolve_settings(config_file, env, overrides)
        return getattr(resolved.settings, name), resolved.sources[name]

    default = getattr(BrokerSettings(), name)
    assert value(env={}) == (default, "default")
    assert value(config_file=config_file, env={}) == (expected_toml, str(config_file))
    assert value(config_file=config_file, env={variable: env_text}) == (expected_env, variable)
    assert value(env={variable: env_text}) == (expected_env, variable)
    flag_source = "--no-auto-create" if flag_value is False else "--" + name.replace("_", "-")
    assert value(config_file=config_file, env={variable: env_text}, overrides={name: flag_value}) == (
        expected_flag,
        flag_source,
    )


def test_settings_under_a_broker_table(tmp_path: Path) -> None:
    config_file = write_config(tmp_path, '[broker]\nflush_mode = "async"\nmax_body_bytes = 1024\n')

    settings = load_settings(config_file, env={})

    assert settings.flush_mode == "async"
    assert settings.max_body_bytes == 1024


def test_config_file_named_by_environment(tmp_path: Path) -> None:
    from_env = write_config(tmp_path, "transaction_max_checks = 3\n")
    from_argument = tmp_path / "other.toml"
    from_argument.write_text("transaction_max_checks = 4\n", encoding="utf-8")

    assert load_settings(env={"HOMING_CONFIG": str(from_env)}).transaction_max_checks == 3
    assert load_settings(from_argument, env={"HOMING_CONFIG": str(from_env)}).transaction_max_checks == 4
    assert load_settings(env={"HOMING_CONFIG": ""}) == BrokerSettings()


def test_empty_text_unsets_an_optional_setting(tmp_path: Path) -> None:
    config_file = write_config(tmp_path, 'advertise = "broker.example:8081"\n')

    assert load_settings(config_file, env={}).advertise == Address("broker.example", 8081)
    assert load_settings(config_file, env={"HOMING_ADVERTISE": ""}).advertise is None
    assert load_settings(config_file, env={}, overrides={"advertise": None}).advertise is None


def test_overrides_accept_typed_values() -> None:
    settings = load_settings(
        env={},
        overrides={
            "listen": Address("127.0.0.1", 0),
            "data_dir": Path("/srv/homing"),
            "delay_levels": (1, 2.5),
            "max_disk_used_ratio": 1,
            "log_level": "DEBUG",
        },
    )

    assert settings.listen == Address("127.0.0.1", 0)
    assert settings.data_dir == Path("/srv/homing")
    assert settings.delay_levels == (1.0, 2.5)
    assert settings.max_disk_used_ratio == 1.0
    assert isinstance(settings.max_disk_used_ratio, float)
    assert settings.log_level == "debug"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("ON", True),
        ("1", True),
        ("yes", True),
        ("false", False),
        ("Off", False),
        ("0", False),
    ],
)
def test_boolean_words(text: str, expected: bool) -> None:
    assert load_settings(env={"HOMING_AUTO_CREATE": text}).auto_create is expected


# ------------------------------------------------------------------------------------------------
# Conversion and range errors name their source


@pytest.mark.parametrize(
    ("variable", "text", "message"),
    [
        ("HOMING_FLUSH_TIMEOUT_S", "abc", "HOMING_FLUSH_TIMEOUT_S='abc': not a number"),
        ("HOMING_FLUSH_TIMEOUT_S", "nan", "HOMING_FLUSH_TIMEOUT_S='nan': not a finite number"),
        ("HOMING_FLUSH_TIMEOUT_S", "0", "HOMING_FLUSH_TIMEOUT_S='0': must be greater than 0"),
        ("HOMING_SEGMENT_SIZE_BYTES", "4095", "HOMING_SEGMENT_SIZE_BYTES='4095': must be at least 4096"),
        ("HOMING_SEGMENT_SIZE_BYTES", "1.5", "HOMING_SEGMENT_SIZE_BYTES='1.5': not an integer"),
        ("HOMING_MAX_DISK_USED_RATIO", "0", "HOMING_MAX_DISK_USED_RATIO='0': must be greater than 0"),
        ("HOMING_MAX_DISK_USED_RATIO", "1.5", "HOMING_MAX_DISK_USED_RATIO='1.5': must be at most 1"),
        ("HOMING_LONG_POLLING_TIMEOUT_S", "31", "HOMING_LONG_POLLING_TIMEOUT_S='31': must be at most 30"),
        ("HOMING_MAX_DELIVERY_ATTEMPTS", "0", "HOMING_MAX_DELIVERY_ATTEMPTS='0': must be at least 1"),
        (
            "HOMING_AUTO_CREATE",
            "maybe",
            "HOMING_AUTO_CREATE='maybe': not a boolean (use true/false, yes/no, on/off or 1/0)",
        ),
        ("HOMING_FLUSH_MODE", "fast", "HOMING_FLUSH_MODE='fast': not one of: sync, async"),
        ("HOMING_LOG_LEVEL", "trace", "HOMING_LOG_LEVEL='trace': not one of: debug, info, warning, error"),
        (
            "HOMING_LISTEN",
            "8081",
            "HOMING_LISTEN='8081': not a host:port address (e.g. 127.0.0.1:8081)",
        ),
        ("HOMING_LISTEN", "localhost:http", "HOMING_LISTEN='localhost:http': port 'http' is not a number"),
        ("HOMING_LISTEN", "localhost:70000", "HOMING_LISTEN='localhost:70000': port 70000 is not in 0-65535"),
        (
            "HOMING_LISTEN",
            "::1:8081",
            "HOMING_LISTEN='::1:8081': an IPv6 address needs brackets, e.g. [::1]:8081",
        ),
        (
            "HOMING_LISTEN",
            "bad host:1",
            "HOMING_LISTEN='bad host:1': 'bad host' is not a host name or IP address",
        ),
        ("HOMING_DATA_DIR", " ", "HOMING_DATA_DIR=' ': must not be empty"),
        (
            "HOMING_RETRY_BACKOFF",
            "10s 5x",
            "HOMING_RETRY_BACKOFF='10s 5x': '5x' is not a duration (use e.g. 500ms, 10s, 1m, 2h, 1d)",
        ),
        (
            "HOMING_DELAY_LEVELS",
            "",
            "HOMING_DELAY_LEVELS='': needs at least one duration (e.g. '10s 1m 2h')",
        ),
        (
            "HOMING_DELAY_LEVELS",
            "1s 0s",
            "HOMING_DELAY_LEVELS='1s 0s': duration '0s' must be positive and finite",
        ),
    ],
)
def test_environment_value_errors(variable: str, text: str, message: str) -> None:
    error = config_error(env={variable: text})
    assert error.problems == (message,)


def test_flag_value_error_names_the_flag() -> None:
    error = config_error(overrides={"flush_timeout_s": "abc"})
    assert error.problems == ("--flush-timeout-s='abc': not a number",)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("segment_size_bytes = 4.5", "segment_size_bytes=4.5: not an integer"),
        ("auto_create = 1", "auto_create=1: not a boolean (true or false)"),
        ("flush_timeout_s = true", "flush_timeout_s=True: not a number"),
        ("flush_mode = 1", "flush_mode=1: not a string"),
        ("listen = 8081", "listen=8081: not a host:port address"),
        ("data_dir = 5", "data_dir=5: not a path"),
        (
            "retry_backoff = 10",
            "retry_backoff=10: not a list of durations (e.g. '10s 1m 2h' or [10, 60, 7200])",
        ),
        ("retry_backoff = [10, -1]", "retry_backoff=[10, -1]: -1 is not a positive duration"),
        ("retry_backoff = []", "retry_backoff=[]: needs at least one duration (e.g. '10s 1m 2h')"),
    ],
)
def test_config_file_value_errors(tmp_path: Path, line: str, message: str) -> None:
    config_file = write_config(tmp_path, line + "\n")
    error = config_error(config_file=config_file)
    assert error.problems == (f"{config_file}: {message}",)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    config_file = write_config(tmp_path, 'flush_mode = "never"\n')

    error = config_error(
        config_file=config_file,
        env={"HOMING_FLUSH_TIMEOUT_S": "abc", "HOMING_RETENTION_HOUR": "1"},
        overrides={"max_body_bytes": "-1"},
    )

    assert error.problems == (
        f"{config_file}: flush_mode='never': not one of: sync, async",
        "HOMING_FLUSH_TIMEOUT_S='abc': not a number",
        "unknown environment variable HOMING_RETENTION_HOUR (did you mean HOMING_RETENTION_HOURS?): "
        "HOMING_* variables are reserved for settings",
        "--max-body-bytes='-1': must be at least 1",
    )


def test_an_invalid_value_is_an_error_even_when_overridden() -> None:
    error = config_error(env={"HOMING_FLUSH_MODE": "fast"}, overrides={"flush_mode": "sync"})
    assert error.problems == ("HOMING_FLUSH_MODE='fast': not one of: sync, async",)


# ------------------------------------------------------------------------------------------------
# Unknown names: typos must not silently do nothing


def test_unknown_config_file_key(tmp_path: Path) -> None:
    config_file = write_config(tmp_path, 'flush_mod = "async"\nzzz = 1\n')

    error = config_error(config_file=config_file)

    assert error.problems == (
        f"{config_file}: unknown setting 'flush_mod' (did you mean flush_mode?)",
        f"{config_file}: unknown setting 'zzz'",
    )


def test_unknown_key_in_broker_table(tmp_path: Path) -> None:
    config_file = write_config(tmp_path, "[broker]\nflush_timeout = 1.0\n")

    error = config_error(config_file=config_file)

    assert error.problems == (
        f"{config_file}: unknown setting [broker] 'flush_timeout' (did you mean flush_timeout_s?)",
    )


def test_setting_outside_broker_table(tmp_path: Path) -> None:
    config_file = write_config(tmp_path, 'log_level = "debug"\n[broker]\nauto_create = false\n')

    error = config_error(config_file=config_file)

    assert error.problems == (
        f"{config_file}: 'log_level' is outside [broker]: put every setting in that table",
    )


def test_broker_must_be_a_table(tmp_path: Path) -> None:
    config_file = write_config(tmp_path, 'broker = "yes"\n')
    error = config_error(config_file=config_file)
    assert error.problems == (f"{config_file}: [broker] must be a table of settings",)


def test_unknown_environment_variable() -> None:
    error = config_error(env={"HOMING_FLUSH_TIMEOUT": "5", "HOMING_NOTHING_LIKE_IT": "1", "PATH": "/bin"})

    assert error.problems == (
        "unknown environment variable HOMING_FLUSH_TIMEOUT (did you mean HOMING_FLUSH_TIMEOUT_S?): "
        "HOMING_* variables are reserved for settings",
        "unknown environment variable HOMING_NOTHING_LIKE_IT: HOMING_* variables are reserved for settings",
    )


def test_environment_variable_names_are_upper_case() -> None:
    error = config_error(env={"HOMING_flush_mode": "async"})
    assert error.problems == (
        "unknown environment variable HOMING_flush_mode (did you mean HOMING_FLUSH_MODE?): "
        "HOMING_* variables are reserved for settings",
    )
    # Variables without the prefix are none of Homing's business.
    assert load_settings(env={"homing_flush_mode": "async", "FLUSH_MODE": "x"}) == BrokerSettings()


def test_client_variables_are_left_to_the_client() -> None:
    # The client (homing.client) reads HOMING_CLIENT_*; a broker started in the same environment must
    # neither reject them nor take them for settings.
    env = {"HOMING_CLIENT_ENDPOINTS": "127.0.0.1:8081", "HOMING_CLIENT_NOT_A_SETTING": "x"}
    assert load_settings(env=env) == BrokerSettings()
    # Only that prefix is exempt: a near miss is still reported.
    error = config_error(env={"HOMING_CLIENTENDPOINTS": "x"})
    assert error.problems == (
        "unknown environment variable HOMING_CLIENTENDPOINTS: HOMING_* variables are reserved for settings",
    )


def test_no_setting_hides_behind_the_client_prefix() -> None:
    # A setting named client_* would have a variable the loader skips: it could never be set by env.
    assert CLIENT_ENVIRONMENT_PREFIX == "HOMING_CLIENT_"
    assert [s.name for s in SETTINGS if s.environment_variable.startswith(CLIENT_ENVIRONMENT_PREFIX)] == []


def test_unknown_override() -> None:
    error = config_error(overrides={"auto_creat": True})
    assert error.problems == ("unknown setting 'auto_creat' (did you mean auto_create?)",)


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    error = config_error(config_file=missing)
    assert error.problems == (f"config file {missing}: cannot read it: No such file or directory",)


def test_invalid_toml(tmp_path: Path) -> None:
    config_file = write_config(tmp_path, "flush_mode = \n")
    error = config_error(config_file=config_file)
    assert len(error.problems) == 1
    assert error.problems[0].startswith(f"config file {config_file}: not valid TOML: ")


# ------------------------------------------------------------------------------------------------
# Settings that depend on each other

NON_LOOPBACK_RULE = (
    "a non-loopback listen address requires credentials_file unless allow_insecure_non_loopback is set"
)


def test_non_loopback_listen_requires_credentials() -> None:
    error = config_error(env={"HOMING_LISTEN": "10.1.2.3:8081"})
    assert error.problems == (
        f"listen 10.1.2.3:8081 (from HOMING_LISTEN) is not a loopback address: {NON_LOOPBACK_RULE}",
    )


def test_non_loopback_admin_listen_requires_credentials() -> None:
    error = config_error(overrides={"admin_listen": "broker.example:8082"})
    assert error.problems == (
        "admin_listen broker.example:8082 (from --admin-listen) is not a loopback address: "
        + NON_LOOPBACK_RULE,
    )


def test_non_loopback_listen_with_credentials_or_explicit_insecure() -> None:
    with_credentials = load_settings(
        env={"HOMING_LISTEN": "10.1.2.3:8081", "HOMING_CREDENTIALS_FILE": "/etc/homing/credentials"}
    )
    assert with_credentials.credentials_file == Path("/etc/homing/credentials")

    insecure = load_settings(
        env={"HOMING_LISTEN": "10.1.2.3:8081"}, overrides={"allow_insecure_non_loopback": True}
    )
    assert insecure.listen == Address("10.1.2.3", 8081)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.9.9", "localhost", "LocalHost", "[::1]"])
def test_loopback_listen_needs_no_credentials(host: str) -> None:
    assert load_settings(env={"HOMING_LISTEN": f"{host}:8081"}).listen.is_loopback


def test_wildcard_listen_needs_advertise() -> None:
    env = {"HOMING_LISTEN": "0.0.0.0:8081", "HOMING_ALLOW_INSECURE_NON_LOOPBACK": "true"}

    error = config_error(env=env)
    assert error.problems == (
        "listen 0.0.0.0:8081 (from HOMING_LISTEN) is a wildcard address, which clients cannot connect to: "
        "set advertise to the address they should use",
    )

    settings = load_settings(env={**env, "HOMING_ADVERTISE": "broker.example:8081"})
    assert settings.advertised_address == Address("broker.example", 8081)


@pytest.mark.parametrize("advertise", ["0.0.0.0:8081", "[::]:8081", "broker.example:0"])
def test_advertise_must_be_connectable(advertise: str) -> None:
    error = config_error(overrides={"advertise": advertise})
    assert error.problems == (
        f"advertise {Address.parse(advertise)} (from --advertise) is not an address clients can connect to "
        "(no wildcard host, no port 0)",
    )


def test_tls_certificate_and_key_go_together() -> None:
    assert config_error(overrides={"tls_cert": "cert.pem"}).problems == (
        "tls_cert and tls_key go together: tls_cert is set (from --tls-cert) but tls_key is not",
    )
    assert config_error(env={"HOMING_TLS_KEY": "key.pem"}).problems == (
        "tls_cert and tls_key go together: tls_key is set (from HOMING_TLS_KEY) but tls_cert is not",
    )
    settings = load_settings(env={"HOMING_TLS_KEY": "key.pem"}, overrides={"tls_cert": "cert.pem"})
    assert (settings.tls_cert, settings.tls_key) == (Path("cert.pem"), Path("key.pem"))


# ------------------------------------------------------------------------------------------------
# Direct construction validates too


def test_construction_converts_and_validates() -> None:
    settings = BrokerSettings(retry_backoff=[1, "1m"], data_dir="/tmp/x")  # type: ignore[arg-type]
    assert settings.retry_backoff == (1.0, 60.0)
    assert settings.data_dir == Path("/tmp/x")

    with pytest.raises(ConfigError) as raised:
        BrokerSettings(max_disk_used_ratio=2.0)
    assert raised.value.problems == ("max_disk_used_ratio=2.0: must be at most 1",)

    with pytest.raises(ConfigError) as raised:
        dataclasses.replace(BrokerSettings(), listen=Address("192.168.0.1", 8081))
    assert raised.value.problems == (
        f"listen 192.168.0.1:8081 is not a loopback address: {NON_LOOPBACK_RULE}",
    )


# ------------------------------------------------------------------------------------------------
# Durations and addresses


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s 1m 2h", (10.0, 60.0, 7200.0)),
        ("10s,1m, 2h", (10.0, 60.0, 7200.0)),
        ("  250ms 1.5m .5s 1d 3  ", (0.25, 90.0, 0.5, 86400.0, 3.0)),
        ("1e-3", (0.001,)),
    ],
)
def test_parse_durations(text: str, seconds: tuple[float, ...]) -> None:
    assert parse_durations(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "needs at least one duration (e.g. '10s 1m 2h')"),
        (" , ", "needs at least one duration (e.g. '10s 1m 2h')"),
        ("10 sec", "'sec' is not a duration (use e.g. 500ms, 10s, 1m, 2h, 1d)"),
        ("-1s", "'-1s' is not a duration (use e.g. 500ms, 10s, 1m, 2h, 1d)"),
        ("0ms", "duration '0ms' must be positive and finite"),
        ("1e400s", "duration '1e400s' must be positive and finite"),
    ],
)
def test_parse_durations_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_durations(text)
    assert str(raised.value) == message


def test_format_durations_reads_back_exactly() -> None:
    seconds = (10.0, 60.0, 90.0, 3600.0, 86400.0, 0.25, 1.5, 1 / 3, 1e-9, 123456.789)
    text = format_durations(seconds)
    assert text == "10s 1m 90s 1h 1d 250ms 1500ms 0.3333333333333333s 1e-09s 123456789ms"
    assert parse_durations(text) == seconds
    assert (
        format_durations(BrokerSettings().retry_backoff)
        == "10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h"
    )


@pytest.mark.parametrize(
    ("text", "host", "port", "shown"),
    [
        ("127.0.0.1:8081", "127.0.0.1", 8081, "127.0.0.1:8081"),
        (" broker-1.example.com:1 ", "broker-1.example.com", 1, "broker-1.example.com:1"),
        ("[::1]:8081", "::1", 8081, "[::1]:8081"),
        ("[fe80::1]:0", "fe80::1", 0, "[fe80::1]:0"),
    ],
)
def test_address_parse(text: str, host: str, port: int, shown: str) -> None:
    address = Address.parse(text)
    assert (address.host, address.port, str(address)) == (host, port, shown)
    assert Address.parse(str(address)) == address


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (":8081", "not a host:port address (e.g. 127.0.0.1:8081)"),
        ("[::1]8081", "not a host:port address (IPv6 form: [::1]:8081)"),
        ("[::1", "not a host:port address (IPv6 form: [::1]:8081)"),
        ("[zz::1]:1", "'zz::1' is not an IPv6 address"),
        ("host:-1", "port '-1' is not a number"),
    ],
)
def test_address_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        Address.parse(text)
    assert str(raised.value) == message


def test_address_kinds() -> None:
    assert Address("::1", 1).is_loopback
    assert not Address("10.0.0.1", 1).is_loopback
    assert not Address("broker.example", 1).is_loopback
    assert Address("0.0.0.0", 1).is_wildcard
    assert Address("::", 1).is_wildcard
    assert not Address("127.0.0.1", 1).is_wildcard


# ------------------------------------------------------------------------------------------------
# Output round trips


def varied_settings() -> BrokerSettings:
    return load_settings(
        env={},
        overrides={
            "listen": "0.0.0.0:9876",
            "advertise": "[2001:db8::7]:9876",
            "credentials_file": '/etc/homing/"quoted"\tcredentials',
            "tls_cert": "cert.pem",
            "tls_key": "key.pem",
            "flush_mode": "async",
            "async_flush_interval_s": "0.05",
            "retry_backoff": "250ms 1s 1.5m",
            "auto_create": False,
            "segment_size_bytes": "65536",
        },
    )


def test_plain_values_round_trip_through_json() -> None:
    settings = varied_settings()

    plain = json.loads(json.dumps(settings_to_plain(settings)))

    assert plain["listen"] == "0.0.0.0:9876"
    assert plain["advertise"] == "[2001:db8::7]:9876"
    assert plain["retry_backoff"] == [0.25, 1.0, 90.0]
    assert plain["auto_create"] is False
    assert load_settings(env={}, overrides=plain) == settings
    assert load_settings(env={}, overrides=settings_to_plain(BrokerSettings())) == BrokerSettings()


def test_toml_round_trips_through_a_config_file(tmp_path: Path) -> None:
    settings = varied_settings()

    config_file = write_config(tmp_path, settings_to_toml(settings))

    assert load_settings(config_file, env={}) == settings
    defaults_file = tmp_path / "defaults.toml"
    defaults_file.write_text(settings_to_toml(BrokerSettings()), encoding="utf-8")
    assert load_settings(defaults_file, env={}) == BrokerSettings()


def test_toml_notes_sources(tmp_path: Path) -> None:
    config_file = write_config(tmp_path, "retention_hours = 1.5\n")
    resolved = resolve_settings(
        config_file, env={"HOMING_FLUSH_MODE": "async"}, overrides={"auto_create": False}
    )

    lines = settings_to_toml(resolved.settings, resolved.sources).splitlines()

    assert lines[0] == "[broker]"
    assert f"retention_hours = 1.5  # {config_file}" in lines
    assert 'flush_mode = "async"  # HOMING_FLUSH_MODE' in lines
    assert "auto_create = false  # --no-auto-create" in lines
    assert 'listen = "127.0.0.1:8081"  # default' in lines
    assert "# advertise is unset (means the listen address)  # default" in lines
    assert 'retry_backoff = "10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h"  # default' in lines
