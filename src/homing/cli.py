"""The ``homing`` command.

Why: operators need one entry point that starts a broker (``homing broker``) and one that shows the
settings a broker would run with and where each value came from (``homing config show``), so that
a surprising value can be traced to its file, variable or flag.

Every setting option is generated from :data:`homing.config.SETTINGS`; this module defines none by
hand, so a new field of :class:`~homing.config.BrokerSettings` appears here with no edit. Options
are read as text and converted by :mod:`homing.config`, so a flag, a variable and a TOML key are
checked the same way. Exit codes: 0 success, 2 usage or settings error (message on stderr, no
traceback).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import click
from click.core import ParameterSource

from homing import __version__
from homing.config import (
    CONFIG_FILE_ENVIRONMENT_VARIABLE,
    SETTINGS,
    BrokerSettings,
    ConfigError,
    ResolvedSettings,
    Setting,
    resolve_settings,
    settings_to_plain,
    settings_to_toml,
)

__all__ = ["SERVER_MODULE", "main"]

EXIT_USAGE: Final = 2
SERVER_MODULE: Final = "homing.server.app"
"""Holds ``run_broker(settings: BrokerSettings)``; imported only when a broker is started."""

_CONTEXT_SETTINGS: Final = {"help_option_names": ["-h", "--help"], "max_content_width": 120}

_Command = TypeVar("_Command", bound=Callable[..., Any])


class _SettingsFailure(click.ClickException):
    """Printed as ``Error: <message>`` on stderr, exit code 2."""

    exit_code = EXIT_USAGE


def _option_help(setting: Setting) -> str:
    bounds = setting.describe_range()
    range_text = f" Range: {bounds}." if bounds else ""
    return (
        f"{setting.description}{range_text} "
        f"[env: {setting.environment_variable}; default: {setting.describe_default()}]"
    )


def _settings_options(command: _Command) -> _Command:
    """Add ``--config`` and one option per setting, in :class:`BrokerSettings` field order."""
    for setting in reversed(SETTINGS):
        if setting.is_boolean:
            declaration = f"--{setting.flag}/--no-{setting.flag}"
            option = click.option(declaration, setting.name, default=None, help=_option_help(setting))
        else:
            option = click.option(
                f"--{setting.flag}",
                setting.name,
                type=str,
                default=None,
                metavar=setting.metavar,
                help=_option_help(setting),
            )
        command = option(command)
    config_option = click.option(
        "--config",
        "config_file",
        metavar="FILE",
        default=None,
        help=(
            "TOML file of settings (keys are the setting names, at the top or under [broker]). "
            f"[env: {CONFIG_FILE_ENVIRONMENT_VARIABLE}]"
        ),
    )
    return config_option(command)


def _resolve(
    context: click.Context, config_file: str | None, options: Mapping[str, object]
) -> ResolvedSettings:
    """Settings from defaults, the config file, ``HOMING_*`` variables and the flags actually given."""
    flags = {
        name: value
        for name, value in options.items()
        if context.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }
    try:
        return resolve_settings(config_file, os.environ, flags)
    except ConfigError as error:
        raise _SettingsFailure(str(error)) from None


@click.group(context_settings=_CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="homing")
def main() -> None:
    """Homing: a durable message queue speaking the Apache RocketMQ 5 gRPC protocol.

    Every setting can come from a TOML file (--config), a HOMING_<NAME> environment variable or a
    flag; later ones win. `homing config show` prints the result.
    """


def _find_run_broker() -> Callable[[BrokerSettings], object] | None:
    """``run_broker`` from :data:`SERVER_MODULE`, or None if that module does not exist yet."""
    try:
        server = importlib.import_module(SERVER_MODULE)
    except ModuleNotFoundError as error:
        if error.name in (SERVER_MODULE, SERVER_MODULE.rpartition(".")[0]):
            return None
        raise  # something the server imports is missing: show it
    run_broker: Callable[[BrokerSettings], object] = server.run_broker
    return run_broker


@main.command()
@_settings_options
@click.pass_context
def broker(context: click.Context, /, config_file: str | None, **options: object) -> None:
    """Run a broker in the foreground."""
    settings = _resolve(context, config_file, options).settings
    run_broker = _find_run_broker()
    if run_broker is None:
        click.echo(f"homing: the broker server is not built yet ({SERVER_MODULE} is missing)", err=True)
        context.exit(EXIT_USAGE)
    run_broker(settings)


@main.group(name="config")
def config_group() -> None:
    """Inspect settings."""


@config_group.command()
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (durations as lists of seconds) instead of TOML."
)
@_settings_options
@click.pass_context
def show(context: click.Context, /, as_json: bool, config_file: str | None, **options: object) -> None:
    """Print the effective settings, as TOML or JSON.

    These are the settings `homing broker` would use with the same options and environment. The
    TOML form notes where each value came from and can be used as a --config file.
    """
    resolved = _resolve(context, config_file, options)
    if as_json:
        click.echo(json.dumps(settings_to_plain(resolved.settings), indent=2))
    else:
        click.echo(settings_to_toml(resolved.settings, resolved.sources), nl=False)


def _add_admin_commands() -> None:
    # Kept in its own module: the admin verbs are an HTTP client, unrelated to broker settings.
    from homing.cli_admin import admin

    main.add_command(admin)


_add_admin_commands()


def _add_outbox_commands() -> None:
    # Kept in its own module, which loads SQLAlchemy only when an outbox command runs.
    from homing.outbox._cli import outbox_group

    main.add_command(outbox_group)


_add_outbox_commands()
