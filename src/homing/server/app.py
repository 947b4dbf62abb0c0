"""``homing broker``: one process serving one store through the RocketMQ 5 gRPC protocol.

:func:`run_broker` blocks until SIGTERM or SIGINT. Startup, in an order chosen so that a broker
that cannot run says why at once and touches nothing: check the data directory (a directory, or
creatable, and writable) and lock it (``homing.lock``: two brokers on one directory would corrupt
it), read the credentials file, bind the listen address (a port in use fails here, before the
store's recovery runs), open the store (recovery) and the broker, and only then accept requests
and log ``listening on ...``. A startup failure prints one line, ``homing: cannot start the
broker: <why>``, and exits with status 1.

Shutdown: stop taking requests, end telemetry streams and waiting receives
(:meth:`MessagingServicer.begin_shutdown`), give calls in flight (sends waiting for their fsync)
:data:`SHUTDOWN_GRACE_S` to finish, then close the broker (pop-state snapshot) and the store
(final flush and checkpoint), and return: the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import grpc

from homing.broker.admin import Admin
from homing.broker.broker import Broker, BrokerOptions
from homing.broker.errors import BrokerError
from homing.broker.transactions import CheckRequest
from homing.clock import SystemClock
from homing.config import Address, BrokerSettings
from homing.errors import HomingError
from homing.protocol import extensions_pb2_grpc, service_pb2_grpc
from homing.server.admin_http import AdminHttpServer
from homing.server.auth import Authenticator, CredentialsError, load_credentials
from homing.server.servicer import MessagingServicer
from homing.store import MessageStore, StoreConfig, StoreError

__all__ = [
    "EXIT_SERVER_CRASHED",
    "EXIT_STARTUP_FAILED",
    "LISTENING_MESSAGE",
    "SHUTDOWN_GRACE_S",
    "ServerCrashedError",
    "StartupError",
    "broker_options",
    "run_broker",
    "serve",
    "store_config",
]

log = logging.getLogger("homing.server.app")

EXIT_STARTUP_FAILED = 1
EXIT_SERVER_CRASHED = 3  # the gRPC server stopped on its own: restart the broker
_TERMINATION_POLL_S = 3600.0


class ServerCrashedError(HomingError):
    """The gRPC server ended without being asked to; the broker shut down cleanly after it."""


SHUTDOWN_GRACE_S = 5.0
LISTENING_MESSAGE = "listening on"
"""Logged (``listening on HOST:PORT (advertised as HOST:PORT)``) once requests are accepted."""
LOCK_FILE = "homing.lock"
_REQUEST_HEADROOM_BYTES = 2 * 1024 * 1024  # properties, headers and framing around the largest body


class StartupError(HomingError):
    """The broker cannot start; the message says why in one line."""


def store_config(settings: BrokerSettings) -> StoreConfig:
    return StoreConfig(
        data_dir=str(settings.data_dir),
        flush_mode=settings.flush_mode,
        flush_timeout_s=settings.flush_timeout_s,
        async_flush_interval_s=settings.async_flush_interval_s,
        segment_size_bytes=settings.segment_size_bytes,
        consume_queue_entries_per_file=settings.consume_queue_entries_per_file,
        index_buffer_entries=settings.index_buffer_entries,
        checkpoint_interval_s=settings.checkpoint_interval_s,
        max_disk_used_ratio=settings.max_disk_used_ratio,
        retention_s=settings.retention_hours * 3600.0,
        retention_override_under_pressure=settings.retention_override_under_pressure,
    )


def broker_options(settings: BrokerSettings) -> BrokerOptions:
    return BrokerOptions(
        auto_create=settings.auto_create,
        max_body_bytes=settings.max_body_bytes,
        push_invisible_s=settings.push_invisible_duration_s,
        push_max_renew_s=settings.push_max_renew_s,
        max_delivery_attempts=settings.max_delivery_attempts,
        retry_backoff_s=settings.retry_backoff,
        delay_levels_s=settings.delay_levels,
        transaction_timeout_s=settings.transaction_timeout_s,
        transaction_check_interval_s=settings.transaction_check_interval_s,
        transaction_max_checks=settings.transaction_max_checks,
    )


# ---------------------------------------------------------------------------------- data directory


def _prepare_data_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise StartupError(f"data_dir {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StartupError(f"data_dir {path}: cannot create it: {error.strerror or error}") from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise StartupError(f"data_dir {path} is not writable: {error.strerror or error}") from None


@dataclass
class _DataDirLock:
    file: IO[str]

    def release(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self.file.fileno(), fcntl.LOCK_UN)
        self.file.close()


def _lock_data_dir(path: Path) -> _DataDirLock:
    lock_path = path / LOCK_FILE
    try:
        file = lock_path.open("a+")
    except OSError as error:
        raise StartupError(f"data_dir {path}: cannot open {LOCK_FILE}: {error.strerror or error}") from None
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        file.seek(0)
        holder = file.read().strip() or "?"
        file.close()
        raise StartupError(f"data_dir {path} is in use by another broker (pid {holder})") from None
    file.seek(0)
    file.truncate()
    file.write(f"{os.getpid()}\n")
    file.flush()
    return _DataDirLock(file)


# ---------------------------------------------------------------------------------- server


def _authenticator(settings: BrokerSettings) -> Authenticator | None:
    if settings.credentials_file is None:
        return None
    try:
        return Authenticator(load_credentials(settings.credentials_file))
    except CredentialsError as error:
        raise StartupError(str(error)) from None


def _server_credentials(settings: BrokerSettings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    try:
        certificate = settings.tls_cert.read_bytes()
        key = settings.tls_key.read_bytes()
    except OSError as error:
        raise StartupError(f"cannot read the TLS certificate or key: {error}") from None
    return grpc.ssl_server_credentials([(key, certificate)])


def _bind(server: grpc.aio.Server, settings: BrokerSettings) -> int:
    target = str(settings.listen)
    credentials = _server_credentials(settings)
    try:
        if credentials is None:
            port = server.add_insecure_port(target)
        else:
            port = server.add_secure_port(target, credentials)
    except RuntimeError as error:
        raise StartupError(
            f"cannot listen on {target}: the port is in use or the address is not local"
        ) from error
    if port == 0:  # older gRPC reports a failed bind this way
        raise StartupError(f"cannot listen on {target}: the port is in use or the address is not local")
    return port


async def serve(
    settings: BrokerSettings,
    stop: asyncio.Event,
    *,
    on_listening: Callable[[Address, MessagingServicer], None] | None = None,
) -> None:
    """Run a broker until ``stop`` is set; raises :class:`StartupError` if it cannot start.

    ``on_listening`` is called with the bound address and the servicer once requests are accepted
    (the servicer's ``telemetry`` registry reaches the connected clients).
    """
    data_dir = Path(settings.data_dir)
    _prepare_data_dir(data_dir)
    lock = _lock_data_dir(data_dir)
    try:
        await _serve_locked(settings, stop, on_listening)
    finally:
        lock.release()


async def _serve_locked(
    settings: BrokerSettings,
    stop: asyncio.Event,
    on_listening: Callable[[Address, MessagingServicer], None] | None,
) -> None:
    authenticator = _authenticator(settings)
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),  # a second broker on the same port must fail, not share it
            ("grpc.max_receive_message_length", settings.max_body_bytes + _REQUEST_HEADROOM_BYTES),
            ("grpc.max_send_message_length", -1),
        ]
    )
    port = _bind(server, settings)
    listen = Address(settings.listen.host, port)
    advertise = settings.advertise if settings.advertise is not None else listen

    clock = SystemClock()
    store = MessageStore(store_config(settings), clock=clock)
    try:
        await asyncio.to_thread(store.open)
    except (OSError, StoreError) as error:
        await server.stop(None)
        raise StartupError(f"cannot open the store in {settings.data_dir}: {error}") from None
    broker = Broker(store, clock, broker_options(settings))
    try:
        await broker.open()
    except (OSError, HomingError) as error:
        await server.stop(None)
        await asyncio.to_thread(store.close)
        raise StartupError(f"cannot open the broker: {error}") from None

    servicer = MessagingServicer(
        broker,
        advertise=advertise,
        long_polling_timeout_s=settings.long_polling_timeout_s,
        clock=clock,
        authenticator=authenticator,
    )
    service_pb2_grpc.add_MessagingServiceServicer_to_server(servicer, server)
    extensions_pb2_grpc.add_ExtensionsServicer_to_server(servicer, server)  # for Homing's own client

    async def check_back(request: CheckRequest) -> bool:
        asked = await servicer.telemetry.recover_orphaned_transaction(
            request.message, request.transaction_id, topic=request.topic
        )
        return asked is not None

    broker.transaction_checker = check_back
    admin_server = AdminHttpServer(
        Admin(broker),
        settings.admin_listen.host,
        settings.admin_listen.port,
        load_credentials(settings.credentials_file) if settings.credentials_file is not None else None,
    )
    try:
        await admin_server.start()
    except OSError as error:
        await server.stop(None)
        await broker.close()
        await asyncio.to_thread(store.close)
        raise StartupError(f"cannot listen on {settings.admin_listen} for the admin API: {error}") from None
    await server.start()
    log.info("admin API on http://%s:%d", settings.admin_listen.host, admin_server.port)
    log.info(
        "%s %s (advertised as %s)%s%s",
        LISTENING_MESSAGE,
        listen,
        advertise,
        ", TLS" if settings.tls_cert is not None else "",
        ", credentials required" if authenticator is not None else "",
    )
    if on_listening is not None:
        on_listening(listen, servicer)
    try:
        await _until_stopped_or_deaf(server, stop)
    finally:
        log.info("shutting down")
        servicer.begin_shutdown()
        await admin_server.stop()
        await server.stop(SHUTDOWN_GRACE_S)
        try:
            await broker.close()
        except (OSError, BrokerError, StoreError) as error:
            log.error("closing the broker failed: %s", error)
        await asyncio.to_thread(store.close)
        log.info("stopped")


async def _until_stopped_or_deaf(server: grpc.aio.Server, stop: asyncio.Event) -> None:
    """Wait for ``stop``; raise :class:`ServerCrashedError` if the gRPC server ends first.

    grpcio's asyncio server can end its serving task on one bad request (a ``:path`` that is not
    UTF-8 raises inside grpcio and stops it accepting calls), leaving a process that is up, answers
    its admin API and refuses every RPC. Restarting the server in the same process is not safe
    (grpcio has freed state under it), so the broker fails stop instead: a clean shutdown of the
    store, then a distinct exit status for the supervisor to restart it.
    """
    stopped = asyncio.ensure_future(stop.wait())
    # With a timeout, grpcio waits on a shielded future: cancelling this waiter below must not
    # cancel the server's own shutdown (without one, it would, and the clean stop would fail).
    terminated = asyncio.ensure_future(server.wait_for_termination(timeout=_TERMINATION_POLL_S))
    try:
        while True:
            await asyncio.wait((stopped, terminated), return_when=asyncio.FIRST_COMPLETED)
            if stopped.done():
                break
            # True: only the poll timed out. False, or grpcio's own error: the server has ended.
            if terminated.exception() is not None or not terminated.result():
                break
            terminated = asyncio.ensure_future(server.wait_for_termination(timeout=_TERMINATION_POLL_S))
    finally:
        for waiter in (stopped, terminated):
            waiter.cancel()
    if not stop.is_set():
        log.critical(
            "the gRPC server stopped serving on its own (a grpcio failure, logged above); shutting "
            "down cleanly and exiting with status %d so that a supervisor restarts the broker",
            EXIT_SERVER_CRASHED,
        )
        raise ServerCrashedError("the gRPC server stopped serving")


def _configure_logging(settings: BrokerSettings) -> None:
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


async def _main(settings: BrokerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    await serve(settings, stop)


def run_broker(settings: BrokerSettings) -> None:
    """Run a broker in the foreground until SIGTERM/SIGINT; exit 1 with one line if it cannot start."""
    _configure_logging(settings)
    try:
        asyncio.run(_main(settings))
    except StartupError as error:
        print(f"homing: cannot start the broker: {error}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_STARTUP_FAILED) from None
    except ServerCrashedError as error:
        print(f"homing: {error}; the broker shut down, restart it", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_SERVER_CRASHED) from None
