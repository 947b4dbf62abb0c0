"""The relay: copies committed outbox rows to the broker, forever, without losing one.

Theory of operation. One pass (:meth:`OutboxRelay.run_once`) claims a batch of due rows (a lease
in the row, see :mod:`homing.outbox._claims`), sends every message of the batch concurrently
through the injected ``send`` coroutine, and marks each row as soon as its own send finishes:

- ``send`` returned (any value): the broker acknowledged, so the row is marked sent;
- ``send`` raised, or did not finish within ``send_timeout_s``: the attempt failed. The row goes
  back with ``attempts + 1`` and ``next_attempt_at_ms`` pushed back exponentially, from
  ``backoff_min_s`` doubling up to ``backoff_max_s``. There is no last attempt: a row is retried
  until it is delivered, and every ``alert_after_attempts`` failures the ``on_alert`` hook is
  called so that a human hears about a message that cannot get out.

Nothing here deletes a row; delivery is the only way out of the queue (see :meth:`Outbox.purge`
for removing delivered rows later). The outcome of a timed-out send is unknown, so it counts as a
failure and is retried: the message may then arrive twice, under one message id, which is what
the idempotent inbox is for. The same holds for a relay that dies after the broker's OK but
before the row is marked: its lease expires and another relay resends.

The database calls are synchronous SQLAlchemy run in worker threads (``asyncio.to_thread``), so
the relay works with the ordinary sync drivers of every supported database and never blocks the
event loop. Time comes from the injected :class:`~homing.clock.Clock`: leases, backoff and due
times are all computed from it, so tests drive retries by moving a fake clock, without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from homing.clock import Clock
from homing.outbox._claims import Claim, ClaimStore
from homing.outbox._outbox import Outbox, OutboxMessage
from homing.outbox._schema import MAX_RELAY_ID_LENGTH

__all__ = ["OutboxAlert", "OutboxRelay", "RelayPass", "RelaySettings", "Send", "backoff_ms"]

log = logging.getLogger("homing.outbox")

Send = Callable[[OutboxMessage], Awaitable[object]]
"""Sends one message; returns (anything) only after the broker's OK, raises otherwise."""

MAX_BATCH_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """The relay's limits. Every one is explicit; the defaults suit a relay per service."""

    batch_size: int = 100
    """Rows claimed (and sent concurrently) per pass."""
    lease_s: float = 60.0
    """How long a claim holds its rows; after it, another relay may claim and resend them."""
    send_timeout_s: float = 45.0
    """A send that has not finished by then counts as failed; must be shorter than the lease.

    The default outlasts the Homing client's own retries (3 attempts of 10 s plus backoff)."""
    backoff_min_s: float = 1.0
    """Delay after the first failure; it doubles per failure."""
    backoff_max_s: float = 300.0
    """Longest delay between two attempts of one row."""
    alert_after_attempts: int = 10
    """``on_alert`` fires when a row's failures reach a multiple of this."""
    poll_interval_s: float = 1.0
    """How long :meth:`OutboxRelay.run` waits when nothing is due (or until :meth:`wake`)."""
    max_error_chars: int = 2000
    """``last_error`` is cut to this length."""

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be 1-{MAX_BATCH_SIZE}")
        if not self.lease_s > 0 or not self.send_timeout_s > 0:
            raise ValueError("lease_s and send_timeout_s must be positive")
        if self.send_timeout_s >= self.lease_s:
            # Otherwise a slow send outlives its lease and a second relay sends the same row.
            raise ValueError("send_timeout_s must be shorter than lease_s")
        if not 0 < self.backoff_min_s <= self.backoff_max_s:
            raise ValueError("backoff needs 0 < backoff_min_s <= backoff_max_s")
        if self.alert_after_attempts < 1:
            raise ValueError("alert_after_attempts must be at least 1")
        if not self.poll_interval_s > 0:
            raise ValueError("poll_interval_s must be positive")
        if self.max_error_chars < 1:
            raise ValueError("max_error_chars must be at least 1")


@dataclass(frozen=True, slots=True)
class OutboxAlert:
    """A message that keeps failing: handed to ``on_alert``."""

    message: OutboxMessage
    attempts: int
    """Failed attempts so far, this one included."""
    error: str
    next_attempt_at_ms: int
    relay_id: str


@dataclass(frozen=True, slots=True)
class RelayPass:
    """What one pass (or a :meth:`OutboxRelay.drain`) did."""

    claimed: int = 0
    sent: int = 0
    failed: int = 0

    def __add__(self, other: RelayPass) -> RelayPass:
        return RelayPass(self.claimed + other.claimed, self.sent + other.sent, self.failed + other.failed)


def backoff_ms(failures: int, settings: RelaySettings) -> int:
    """Delay before the next attempt after ``failures`` failed ones (1, 2, ...)."""
    assert failures >= 1
    minimum_ms = max(1, round(settings.backoff_min_s * 1000))
    maximum_ms = max(minimum_ms, round(settings.backoff_max_s * 1000))
    # Cap the exponent: 2**62 ms is beyond any maximum, and the shift stays cheap.
    return min(maximum_ms, minimum_ms << min(failures - 1, 62))


def default_relay_id() -> str:
    """Host, process and a random suffix: unique per relay, and says where it runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"[:MAX_RELAY_ID_LENGTH]


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "TimeoutError: the send did not finish within send_timeout_s (outcome unknown)"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class OutboxRelay:
    """Sends the outbox's committed rows through ``send``; run several at once if you like.

    Use :meth:`run` as a background task in a service (``asyncio.create_task(relay.run())``,
    cancel it to stop), :meth:`drain` to send everything due and return, or :meth:`run_once` for
    one pass. Cancelling never loses a row: rows of an interrupted pass stay leased until their
    lease expires, then any relay sends them.
    """

    def __init__(
        self,
        outbox: Outbox,
        engine: Engine,
        send: Send,
        *,
        settings: RelaySettings | None = None,
        clock: Clock | None = None,
        relay_id: str | None = None,
        on_alert: Callable[[OutboxAlert], object] | None = None,
    ) -> None:
        self.outbox = outbox
        self.settings = settings if settings is not None else RelaySettings()
        self.clock = clock if clock is not None else outbox.clock
        self.relay_id = relay_id if relay_id is not None else default_relay_id()
        if not self.relay_id or len(self.relay_id) > MAX_RELAY_ID_LENGTH:
            raise ValueError(f"relay_id must be 1-{MAX_RELAY_ID_LENGTH} characters")
        if engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:"):
            # The relay's database calls run in worker threads, and SQLAlchemy gives every thread
            # its own in-memory database: the relay would never see the application's rows.
            raise ValueError("the relay needs a SQLite file database, not an in-memory one")
        self._send = send
        self._on_alert = on_alert
        self._store = ClaimStore(engine, outbox.table)
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------------------ passes

    async def run_once(self) -> RelayPass:
        """Claim one batch, send it, mark every row; return the counts.

        Raises only if the claim itself fails (database unreachable); failures of single sends or
        marks are recorded or logged and the rest of the batch goes on.
        """
        settings = self.settings
        claim = await asyncio.to_thread(
            self._store.claim,
            self.relay_id,
            self.clock.now_ms(),
            settings.batch_size,
            max(1, round(settings.lease_s * 1000)),
        )
        if not claim.messages:
            return RelayPass()
        outcomes = await asyncio.gather(*(self._deliver(message, claim) for message in claim.messages))
        sent = sum(outcomes)
        return RelayPass(claimed=len(outcomes), sent=sent, failed=len(outcomes) - sent)

    async def drain(self, max_passes: int = 1_000_000) -> RelayPass:
        """Run passes until one finds nothing due (rows backing off are not due); sum them."""
        assert max_passes >= 1
        total = RelayPass()
        for _ in range(max_passes):
            result = await self.run_once()
            total += result
            if result.claimed == 0:
                break
        return total

    async def run(self) -> None:
        """Relay until cancelled. Database outages are logged and retried every poll interval."""
        while True:
            try:
                result = await self.run_once()
            except Exception:
                # The relay must outlive a database restart; the rows wait safely in the table.
                log.exception("outbox relay %s: claiming failed; retrying", self.relay_id)
                result = RelayPass()
            if result.claimed < self.settings.batch_size:
                await self._wait_for_work()

    def wake(self) -> None:
        """Start the next pass now instead of after the poll interval (call on the relay's loop)."""
        self._wake.set()

    async def _wait_for_work(self) -> None:
        with contextlib.suppress(TimeoutError):  # the poll interval passed: look again
            await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval_s)
        self._wake.clear()

    # ------------------------------------------------------------------------------ one message

    async def _deliver(self, message: OutboxMessage, claim: Claim) -> bool:
        """Send one message and mark its row; True if the broker acknowledged it."""
        try:
            await asyncio.wait_for(self._send(message), self.settings.send_timeout_s)
        except Exception as error:
            await self._record_failure(message, claim, error)
            return False
        try:
            await asyncio.to_thread(self._store.mark_sent, message, self.clock.now_ms())
        except Exception:
            # Delivered but not marked: the lease expires and the row is sent again, under the
            # same message id. A duplicate, never a loss.
            log.exception(
                "outbox relay %s: message %s was sent but could not be marked sent; it will be "
                "sent again after its lease expires",
                self.relay_id,
                message.message_id,
            )
        return True

    async def _record_failure(self, message: OutboxMessage, claim: Claim, error: Exception) -> None:
        settings = self.settings
        failures = message.attempts + 1
        next_attempt_at_ms = self.clock.now_ms() + backoff_ms(failures, settings)
        text = _describe(error)[: settings.max_error_chars]
        log.warning(
            "outbox relay %s: sending message %s failed (attempt %d): %s",
            self.relay_id,
            message.message_id,
            failures,
            text,
        )
        try:
            marked = await asyncio.to_thread(
                self._store.mark_failed, message, claim, next_attempt_at_ms, text
            )
        except Exception:
            # Unmarked: the lease expires and the row is retried then. Nothing is lost.
            log.exception("outbox relay %s: could not record the failure", self.relay_id)
            return
        if marked and failures % settings.alert_after_attempts == 0:
            self._alert(OutboxAlert(message, failures, text, next_attempt_at_ms, self.relay_id))

    def _alert(self, alert: OutboxAlert) -> None:
        log.error(
            "ALERT outbox relay %s: message %s (topic %s) has failed %d times; last error: %s",
            alert.relay_id,
            alert.message.message_id,
            alert.message.topic,
            alert.attempts,
            alert.error,
        )
        if self._on_alert is None:
            return
        try:
            self._on_alert(alert)
        except Exception:
            # A broken alert hook must not stop delivery; it is reported, not swallowed.
            log.exception("outbox relay %s: the on_alert hook raised", self.relay_id)
