"""The ``homing`` command: generated options, help, exit codes, and the settings it hands the broker."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import click.testing
import pytest

from homing import __version__, cli
from homing.config import SETTINGS, Address, BrokerSettings, load_settings

HOMING_SCRIPT = Path(sys.executable).parent / "homing"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stray HOMING_* variables of the machine running the tests must not change the results."""
    for variable in list(os.environ):
        if variable.startswith("HOMING_"):
            monkeypatch.delenv(variable)


def run(*arguments: str, env: dict[str, str] | None = None) -> click.testing.Result:
    runner = click.testing.CliRunner(env=env)
    return runner.invoke(cli.main, list(arguments), prog_name="homing", catch_exceptions=False)


def words(text: str) -> str:
    """Help text with its line wrapping undone."""
    return " ".join(text.split())


def subprocess_environment() -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("HOMING_")}
    environment["COLUMNS"] = "200"
    return environment


@pytest.fixture
def broker_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[BrokerSettings]]:
    """A stand-in for homing.server.app that records the settings it is started with."""
    started: list[BrokerSettings] = []
    module = types.ModuleType(cli.SERVER_MODULE)
    module.run_broker = started.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, cli.SERVER_MODULE, module)
    yield started


# ------------------------------------------------------------------------------------------------
# Help and version


def test_broker_help_lists_every_setting_with_env_and_default() -> None:
    result = run("broker", "--help")

    assert result.exit_code == 0, result.output
    help_text = words(result.output)
    assert "[env: HOMING_FLUSH_MODE; default: sync]" in help_text
    assert "--flush-mode [sync|async]" in help_text
    assert "--auto-create / --no-auto-create" in help_text
    assert "[env: HOMING_ADVERTISE; default: the listen address]" in help_text
    assert "[env: HOMING_SEGMENT_SIZE_BYTES; default: 268435456]" in help_text
    assert "Range: > 0 and <= 1." in help_text
    assert "[env: HOMING_CONFIG]" in help_text
    for setting in SETTINGS:
        assert f"--{setting.flag}" in help_text
        assert f"[env: {setting.environment_variable}; default: {setting.describe_default()}]" in help_text


def test_broker_help_through_the_installed_script() -> None:
    completed = subprocess.run(
        [str(HOMING_SCRIPT), "broker", "--help"],
        capture_output=True,
        text=True,
        env=subprocess_environment(),
        timeout=60,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    assert completed.stdout.startswith("Usage: homing broker [OPTIONS]")
    help_text = words(completed.stdout)
    assert "[env: HOMING_FLUSH_MODE; default: sync]" in help_text
    retry_default = "10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h"
    assert f"[env: HOMING_RETRY_BACKOFF; default: {retry_default}]" in help_text
    for setting in SETTINGS:
        assert f"[env: {setting.environment_variable}; default:" in help_text


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.output == f"homing, version {__version__}\n"


def test_python_dash_m_runs_the_same_command() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "homing", "--version"],
        capture_output=True,
        text=True,
        env=subprocess_environment(),
        timeout=60,
        check=False,
    )
    assert (completed.returncode, completed.stdout) == (0, f"homing, version {__version__}\n")


# ------------------------------------------------------------------------------------------------
# homing broker


def test_broker_runs_the_server_with_the_resolved_settings(
    tmp_path: Path, broker_server: list[BrokerSettings]
) -> None:
    config_file = tmp_path / "homing.toml"
    config_file.write_text('[broker]\nflush_mode = "async"\nretention_hours = 1.0\n', encoding="utf-8")

    result = run(
        "broker",
        "--config",
        str(config_file),
        "--retention-hours",
        "2",
        "--no-auto-create",
        "--retry-backoff",
        "1s 2s",
        env={"HOMING_RETENTION_HOURS": "1.5", "HOMING_AUTO_CREATE": "true", "HOMING_LISTEN": "127.0.0.1:0"},
    )

    assert result.exit_code == 0, result.output
    assert len(broker_server) == 1
    settings = broker_server[0]
    assert settings.flush_mode == "async"  # from the file
    assert settings.listen == Address("127.0.0.1", 0)  # from the environment
    assert settings.retention_hours == 2.0  # flag beats environment beats file
    assert settings.auto_create is False  # --no-auto-create beats HOMING_AUTO_CREATE=true
    assert settings.retry_backoff == (1.0, 2.0)
    assert settings.max_body_bytes == BrokerSettings().max_body_bytes


def test_broker_without_a_server_module(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import fail as if the module did not exist, now or later.
    monkeypatch.setitem(sys.modules, cli.SERVER_MODULE, None)

    result = run("broker")

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == "homing: the broker server is not built yet (homing.server.app is missing)\n"


def test_broker_does_not_hide_a_missing_module_inside_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import_module = importlib.import_module

    def import_module(name: str, package: str | None = None) -> types.ModuleType:
        if name == cli.SERVER_MODULE:
            raise ModuleNotFoundError("No module named 'some_dependency'", name="some_dependency")
        return real_import_module(name, package)

    monkeypatch.setattr(importlib, "import_module", import_module)

    with pytest.raises(ModuleNotFoundError) as raised:
        run("broker")
    assert raised.value.name == "some_dependency"


def test_settings_errors_exit_2_with_the_message_on_stderr(broker_server: list[BrokerSettings]) -> None:
    result = run("broker", "--flush-timeout-s", "soon", env={"HOMING_FLUSH_TIMEOUT_S": "abc"})

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        "Error: HOMING_FLUSH_TIMEOUT_S='abc': not a number\n--flush-timeout-s='soon': not a number\n"
    )
    assert "Traceback" not in result.output
    assert broker_server == []


def test_non_loopback_without_credentials_exits_2(broker_server: list[BrokerSettings]) -> None:
    result = run("broker", "--listen", "10.0.0.5:8081")

    assert result.exit_code == 2
    assert result.stderr == (
        "Error: listen 10.0.0.5:8081 (from --listen) is not a loopback address: a non-loopback listen "
        "address requires credentials_file unless allow_insecure_non_loopback is set\n"
    )
    assert broker_server == []


def test_unknown_environment_variable_exits_2(broker_server: list[BrokerSettings]) -> None:
    result = run("broker", env={"HOMING_FLUSHMODE": "async"})

    assert result.exit_code == 2
    assert "unknown environment variable HOMING_FLUSHMODE (did you mean HOMING_FLUSH_MODE?)" in result.stderr
    assert broker_server == []


def test_unknown_flag_is_a_usage_error() -> None:
    result = run("broker", "--flush-mod", "async")

    assert result.exit_code == 2
    assert result.stderr.startswith("Usage: homing broker [OPTIONS]\n")
    assert "No such option" in result.stderr
    assert "--flush-mode" in result.stderr  # click suggests the right name


def test_settings_errors_through_the_installed_script(tmp_path: Path) -> None:
    config_file = tmp_path / "homing.toml"
    config_file.write_text("flush_timout_s = 1\n", encoding="utf-8")

    completed = subprocess.run(
        [str(HOMING_SCRIPT), "broker", "--config", str(config_file)],
        capture_output=True,
        text=True,
        env=subprocess_environment(),
        timeout=60,
        check=False,
    )

    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr == (
        f"Error: {config_file}: unknown setting 'flush_timout_s' (did you mean flush_timeout_s?)\n"
    )


# ------------------------------------------------------------------------------------------------
# homing config show


def test_config_show_json_round_trips(tmp_path: Path) -> None:
    config_file = tmp_path / "homing.toml"
    config_file.write_text('delay_levels = "1s 2s 3s"\nadvertise = "broker.example:8081"\n', encoding="utf-8")

    result = run(
        "config",
        "show",
        "--json",
        "--config",
        str(config_file),
        "--max-body-bytes",
        "1024",
        env={"HOMING_FLUSH_MODE": "async", "HOMING_DATA_DIR": "/srv/homing"},
    )

    assert result.exit_code == 0, result.output
    plain = json.loads(result.stdout)
    assert set(plain) == {setting.name for setting in SETTINGS}
    assert plain["delay_levels"] == [1.0, 2.0, 3.0]
    assert plain["advertise"] == "broker.example:8081"
    assert plain["flush_mode"] == "async"
    assert plain["data_dir"] == "/srv/homing"
    assert plain["max_body_bytes"] == 1024
    assert plain["credentials_file"] is None
    expected = load_settings(
        config_file,
        env={"HOMING_FLUSH_MODE": "async", "HOMING_DATA_DIR": "/srv/homing"},
        overrides={"max_body_bytes": "1024"},
    )
    assert load_settings(env={}, overrides=plain) == expected


def test_config_show_toml_names_sources_and_loads_back(tmp_path: Path) -> None:
    result = run(
        "config", "show", "--flush-mode", "async", "--auto-create", env={"HOMING_TRANSACTION_MAX_CHECKS": "3"}
    )

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "[broker]"
    assert 'flush_mode = "async"  # --flush-mode' in lines
    assert "auto_create = true  # --auto-create" in lines
    assert "transaction_max_checks = 3  # HOMING_TRANSACTION_MAX_CHECKS" in lines
    assert "flush_timeout_s = 5.0  # default" in lines

    shown = tmp_path / "shown.toml"
    shown.write_text(result.stdout, encoding="utf-8")
    again = run("config", "show", "--json", "--config", str(shown))
    assert again.exit_code == 0, again.output
    assert load_settings(env={}, overrides=json.loads(again.stdout)) == load_settings(
        env={"HOMING_TRANSACTION_MAX_CHECKS": "3"}, overrides={"flush_mode": "async"}
    )


def test_config_show_reports_errors_like_broker() -> None:
    result = run("config", "show", "--max-disk-used-ratio", "1.5")

    assert result.exit_code == 2
    assert result.stderr == "Error: --max-disk-used-ratio='1.5': must be at most 1\n"
