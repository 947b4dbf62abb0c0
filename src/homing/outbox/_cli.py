"""``homing outbox``: run a relay, inspect an outbox, print its DDL.

Why a command: a service that writes outbox rows need not run the relay itself; one or more
``homing outbox relay`` processes beside it deliver the rows (several may run at once; they never
claim the same row). This module imports only click at import time; SQLAlchemy and the drivers
load when a subcommand runs, so ``homing --help`` works without the ``db`` extra.

Exit codes: 0 success; 1 the database could not be reached or the relay failed to start;
2 usage errors (bad URL, impossible limits, missing table, no way to send).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import signal
import sys
from typing import TYPE_CHECKING, Any, Final

import click

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from homing.outbox._outbox import Outbox
    from homing.outbox._relay import RelaySettings
    from homing.outbox._senders import SenderFactory

__all__ = ["outbox_group"]

EXIT_UNAVAILABLE: Final = 1
_MAX_RELAY_ID_LENGTH: Final = 255  # the claimed_by column
_DIALECTS: Final = ("postgresql", "mysql", "mariadb", "sqlite")
_DEFAULTS: Final = {
    "batch_size": 100,
    "lease_s": 60.0,
    "send_timeout_s": 45.0,
    "backoff_min_s": 1.0,
    "backoff_max_s": 300.0,
    "alert_after_attempts": 10,
    "poll_interval_s": 1.0,
}
_POSITIVE: Final = click.FloatRange(min=0, min_open=True)


class _Unavailable(click.ClickException):
    exit_code = EXIT_UNAVAILABLE


def _check_relay_id(context: click.Context, parameter: click.Parameter, value: str | None) -> str | None:
    if value is not None and not 1 <= len(value) <= _MAX_RELAY_ID_LENGTH:
        raise click.BadParameter(f"must be 1-{_MAX_RELAY_ID_LENGTH} characters")
    return value


def _engine(database_url: str) -> Engine:
    from sqlalchemy import create_engine
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        return create_engine(database_url, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError, ImportError) as error:
        raise click.BadParameter(f"{database_url!r}: {error}", param_hint="--db") from None


def _outbox(table: str) -> Outbox:
    from homing.outbox._outbox import Outbox

    return Outbox(table_name=table)


def _prepare_table(engine: Engine, outbox: Outbox, create: bool) -> None:
    from sqlalchemy import inspect
    from sqlalchemy.exc import OperationalError

    try:
        if create:
            outbox.create_table(engine)
        elif not inspect(engine).has_table(outbox.table.name):
            raise click.UsageError(
                f"table {outbox.table.name!r} does not exist; create it with --create-table or a "
                "migration (`homing outbox ddl` prints its DDL)"
            )
    except OperationalError as error:
        raise _Unavailable(f"cannot reach the database: {error.orig}") from None


def _load_sender_factory(spec: str | None) -> SenderFactory:
    from homing.outbox._senders import producer_sender

    if spec is None:
        return producer_sender
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter("expected MODULE:FACTORY", param_hint="--sender")
    try:
        factory: Any = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise click.BadParameter(f"{spec!r}: {error}", param_hint="--sender") from None
    if not callable(factory):
        raise click.BadParameter(f"{spec!r} is not callable", param_hint="--sender")
    sender_factory: SenderFactory = factory
    return sender_factory


def _settings(options: dict[str, Any]) -> RelaySettings:
    from homing.outbox._relay import RelaySettings

    try:
        return RelaySettings(**options)
    except ValueError as error:
        raise click.UsageError(str(error)) from None


async def _relay(
    engine: Engine,
    outbox: Outbox,
    sender_factory: SenderFactory,
    endpoint: str | None,
    settings: RelaySettings,
    relay_id: str | None,
    once: bool,
) -> dict[str, int]:
    from homing.outbox._relay import OutboxRelay

    async with sender_factory(endpoint) as send:
        relay = OutboxRelay(outbox, engine, send, settings=settings, relay_id=relay_id)
        if once:
            result = await relay.drain()
            return {"claimed": result.claimed, "sent": result.sent, "failed": result.failed}
        task = asyncio.current_task()
        assert task is not None
        # SIGTERM (a service manager stopping us) ends the relay like Ctrl-C: leases expire.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        logging.getLogger("homing.outbox").info("outbox relay %s started", relay.relay_id)
        await relay.run()
    raise AssertionError("unreachable: OutboxRelay.run returns only by cancellation")


@click.group(name="outbox")
def outbox_group() -> None:
    """Transactional outbox: deliver rows committed with business transactions."""


@outbox_group.command()
@click.option(
    "--db",
    "database_url",
    required=True,
    metavar="URL",
    envvar="HOMING_OUTBOX_DB",
    help=(
        "SQLAlchemy URL of the database holding the outbox: postgresql+psycopg://USER@HOST/DB, "
        "mysql+pymysql://USER@HOST/DB or sqlite:///PATH. [env: HOMING_OUTBOX_DB]"
    ),
)
@click.option(
    "--endpoint",
    metavar="HOST:PORT",
    envvar="HOMING_OUTBOX_ENDPOINT",
    help="Broker to send to (through the Homing asyncio client). [env: HOMING_OUTBOX_ENDPOINT]",
)
@click.option(
    "--sender",
    "sender_spec",
    metavar="MODULE:FACTORY",
    help=(
        "Send through FACTORY(endpoint), an async context manager yielding a send coroutine "
        "function, instead of the Homing client (custom transports, tests)."
    ),
)
@click.option("--table", default="homing_outbox", show_default=True, help="Outbox table name.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=_DEFAULTS["batch_size"],
    show_default=True,
    help="Rows claimed and sent concurrently per pass.",
)
@click.option(
    "--lease-s",
    type=_POSITIVE,
    default=_DEFAULTS["lease_s"],
    show_default=True,
    help="Seconds a claim holds its rows before another relay may take them.",
)
@click.option(
    "--send-timeout-s",
    type=_POSITIVE,
    default=_DEFAULTS["send_timeout_s"],
    show_default=True,
    help="Seconds before an unanswered send counts as failed (less than --lease-s).",
)
@click.option(
    "--backoff-min-s",
    type=_POSITIVE,
    default=_DEFAULTS["backoff_min_s"],
    show_default=True,
    help="Delay after a row's first failure; doubles per failure.",
)
@click.option(
    "--backoff-max-s",
    type=_POSITIVE,
    default=_DEFAULTS["backoff_max_s"],
    show_default=True,
    help="Longest delay between attempts of one row (rows are retried forever).",
)
@click.option(
    "--alert-after-attempts",
    type=click.IntRange(min=1),
    default=_DEFAULTS["alert_after_attempts"],
    show_default=True,
    help="Log an ALERT each time a row's failures reach a multiple of this.",
)
@click.option(
    "--poll-interval-s",
    type=_POSITIVE,
    default=_DEFAULTS["poll_interval_s"],
    show_default=True,
    help="Wait between passes when nothing is due.",
)
@click.option(
    "--relay-id",
    metavar="ID",
    callback=_check_relay_id,
    help="Name in claimed_by, unique per relay (default: host:pid:random).",
)
@click.option("--create-table", is_flag=True, help="Create the outbox table if it is missing.")
@click.option("--once", is_flag=True, help="Send everything due, print counts as JSON, and exit.")
def relay(
    database_url: str,
    endpoint: str | None,
    sender_spec: str | None,
    table: str,
    relay_id: str | None,
    create_table: bool,
    once: bool,
    **limits: Any,
) -> None:
    """Deliver committed outbox rows to the broker, retrying failures forever.

    Several relays may run against one database; they never claim the same row. A row is marked
    sent only after the broker's OK; a relay that dies mid-send leaves a lease that expires, and
    the row is then resent under the same message id.
    """
    if endpoint is None and sender_spec is None:
        raise click.UsageError("give the broker with --endpoint (or a custom --sender)")
    settings = _settings(limits)
    sender_factory = _load_sender_factory(sender_spec)
    engine = _engine(database_url)
    outbox = _outbox(table)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from homing.outbox._senders import ClientUnavailable

    try:
        _prepare_table(engine, outbox, create_table)
        counts = asyncio.run(_relay(engine, outbox, sender_factory, endpoint, settings, relay_id, once))
    except ClientUnavailable as error:
        raise click.UsageError(str(error)) from None
    except (KeyboardInterrupt, asyncio.CancelledError):
        return  # stopped by Ctrl-C or SIGTERM: claimed rows go back when their leases expire
    finally:
        engine.dispose()
    click.echo(json.dumps(counts))


@outbox_group.command()
@click.option(
    "--db",
    "database_url",
    required=True,
    metavar="URL",
    envvar="HOMING_OUTBOX_DB",
    help="SQLAlchemy URL of the database holding the outbox. [env: HOMING_OUTBOX_DB]",
)
@click.option("--table", default="homing_outbox", show_default=True, help="Outbox table name.")
def status(database_url: str, table: str) -> None:
    """Print undelivered messages: count, oldest creation time, most attempts (JSON)."""
    from sqlalchemy.exc import OperationalError

    engine = _engine(database_url)
    outbox = _outbox(table)
    try:
        result = outbox.status(engine)
    except OperationalError as error:
        raise _Unavailable(f"cannot read the outbox: {error.orig}") from None
    finally:
        engine.dispose()
    click.echo(
        json.dumps(
            {
                "undelivered": result.undelivered,
                "oldest_undelivered_created_at_ms": result.oldest_undelivered_created_at_ms,
                "most_attempts": result.most_attempts,
            }
        )
    )


@outbox_group.command()
@click.option("--dialect", type=click.Choice(_DIALECTS), required=True, help="Database to write DDL for.")
@click.option("--table", default="homing_outbox", show_default=True, help="Outbox table name.")
def ddl(dialect: str, table: str) -> None:
    """Print the CREATE TABLE and CREATE INDEX statements of the outbox table."""
    from homing.outbox._ddl import table_ddl

    click.echo(table_ddl(_outbox(table).table, dialect))
