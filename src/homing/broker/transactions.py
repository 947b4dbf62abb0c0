"""Transactional messages: half messages, commit or rollback, check-back, parking.

Theory of operation
-------------------

A producer *prepares* a message: it is stored durably as a *half message* in the system topic
``%HOMING_HALF%`` (queue 0), where no consumer reads, and the producer gets a transaction id. It
then *ends* the transaction. A commit publishes the original message (same message id) to its real
topic through the broker's :class:`~homing.broker.publisher.Publisher`, then appends a COMMIT op to
``%HOMING_HALF_OPS%``; a rollback appends a ROLLBACK op and the message is never published. Each
step is durable before the next starts and before the caller hears OK. A crash between the commit's
publish and its op leaves the transaction unresolved: it is checked again and may be published a
second time, with the same message id (a duplicate, which at-least-once allows), but a committed
message is never lost and a rolled-back one never published. Ends are idempotent; a conflicting
end (commit after rollback or the reverse) is refused. Layouts: :mod:`homing.broker.transaction_records`.

A transaction nobody ends is *checked back*. :meth:`TransactionService.due_checks` lists those whose
half is at least ``transaction_timeout_s`` old and whose last check is at least ``check_interval_s``
old, oldest first. The server sends each to a live producer of the topic; only if one got it does
it call :meth:`~TransactionService.record_check` (a durable CHECKED op with the check's number), so
a producer outage does not use up checks. The ``max_checks``-th check also *parks* the transaction
(a durable PARKED op): no more checks, but it stays listed (:meth:`~TransactionService.list_unresolved`,
:meth:`~TransactionService.counts`) until a producer or an operator (``source="admin"``) ends it.
Other brokers drop such messages silently after their last check; Homing never does.

Time. Ages count both wall time (stored in records, so they survive restarts) and monotonic time
(in memory): a thing is due when *either* says enough time has passed. A wall clock stepped back
therefore does not delay checks, one stepped forward brings them on, and neither clock alone can
make a check early by its own measure. Due-ness is evaluated per unresolved transaction in memory,
never by a cursor over store times, so a half stored in the same millisecond as a scan is not
skipped. A check offered to the server but not recorded (no producer reached) is offered again
after ``unreached_retry_s``, so unreachable producers of one topic do not starve the others.

State and recovery. Memory holds only unresolved transactions (at most ``max_unresolved``; past it
:meth:`~TransactionService.prepare` answers ``TOO_MANY_REQUESTS``) and the outcomes of the most
recently resolved ones (for idempotent ends; older outcomes are found through the key index, which
indexes each op under its transaction id). Everything in memory is derived: :meth:`~TransactionService.open`
rebuilds it by replaying the half and op queues together in log order from a *progress point*: every
half below ``half_offset`` is resolved (or superseded by a renewed copy), and every op about a half at
or past it sits at or past ``ops_offset``. The point is kept in a small framed file written now and
then (:meth:`~TransactionService.save_progress`); losing or damaging it only means replaying from the
start of both queues. :meth:`~TransactionService.retention_progress` gives the same point to the
store's retention, which must keep what is unresolved.

Renewal. A transaction left unresolved for long (parked ones above all) would pin the progress point,
and with it the log's retention and the replay's length. :meth:`~TransactionService.renew_old_halves`
therefore copies a half older than ``renew_after_s`` to the end of the half queue, carrying its id,
first-prepared time, checks and parked flag, after which the old half and the ops before the copy
are no longer needed. During replay, a later copy replaces what is known about its transaction.

Concurrency. The service lives on one event loop. Every write about one transaction (end, check,
renewal) holds that transaction's lock, so its ops are never interleaved; different transactions
proceed concurrently, group-committed by the store.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import random
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from homing.broker.durable import append_durably
from homing.broker.errors import BrokerError
from homing.broker.message_codec import from_record, to_record
from homing.broker.model import Message, SendReceipt
from homing.broker.publisher import Publisher
from homing.broker.system_topics import HALF_OPS_TOPIC, HALF_TOPIC, is_internal_topic
from homing.broker.transaction_records import (
    HalfState,
    Op,
    OpKind,
    OpSource,
    decode_half,
    decode_op,
    decode_progress,
    encode_progress,
    format_transaction_id,
    op_record,
    original_half_properties,
    parse_transaction_id,
    renewed_half_properties,
)
from homing.clock import Clock
from homing.store import CorruptRecordError, MessageStore, StoredRecord
from homing.store.atomic_file import read_framed_file, write_framed_file

__all__ = [
    "PROGRESS_FILE",
    "CheckRequest",
    "TransactionCounts",
    "TransactionRecovery",
    "TransactionService",
    "TransactionSource",
    "UnresolvedTransaction",
]

log = logging.getLogger("homing.broker.transactions")

TransactionSource = Literal["producer", "check", "admin"]
_SOURCES: dict[str, OpSource] = {
    "producer": OpSource.PRODUCER,
    "check": OpSource.CHECK,
    "admin": OpSource.ADMIN,
}

PROGRESS_FILE = "transactions"
_READ_BATCH = 256
_ANY_TIME = (0, 2**63 - 1)


@dataclass(frozen=True, slots=True)
class CheckRequest:
    """Ask a producer of ``topic`` whether it committed ``transaction_id`` (RecoverOrphanedTransaction)."""

    topic: str
    message: Message  # the original message, real topic and message id
    transaction_id: str
    check_number: int  # 1 for the first check; pass it back to record_check


@dataclass(frozen=True, slots=True)
class UnresolvedTransaction:
    topic: str
    message_id: str
    transaction_id: str
    born_timestamp_ms: int
    prepared_timestamp_ms: int
    checks: int
    last_check_ms: int | None
    parked: bool


@dataclass(frozen=True, slots=True)
class TransactionCounts:
    pending: int  # unresolved and still checked
    parked: int  # unresolved, out of checks, waiting for a producer or an operator


@dataclass(frozen=True, slots=True)
class TransactionRecovery:
    half_from: int
    ops_from: int
    progress_file_used: bool
    halves_replayed: int
    ops_replayed: int
    records_skipped: int  # unreadable or not understood (each logged as an error)
    pending: int
    parked: int


@dataclass(slots=True)
class _Half:
    """Where an unresolved transaction's (latest) half record is, and when it was stored."""

    queue_offset: int
    physical_offset: int
    size: int
    stored_ms: int
    stored_mono_ms: int


@dataclass(slots=True, eq=False)
class _Pending:
    transaction_id: str
    origin_offset: int  # the first half's queue offset: the order of "oldest first"
    topic: str
    message_id: str
    born_timestamp_ms: int
    prepared_ms: int
    prepared_mono_ms: int
    half: _Half
    ops_floor: int  # every op about this transaction is at or past this ops queue offset
    checks: int = 0
    last_check_ms: int | None = None
    last_check_mono_ms: int | None = None
    parked: bool = False
    offered_mono_ms: int | None = None  # handed out by due_checks, not yet recorded
    published: bool = False  # committed message durable, but its COMMIT op not (yet) written
    message: Message | None = None  # cached while the cache budget allows
    cached_bytes: int = 0
    outcome: bool | None = None  # set once resolved: True committed, False rolled back
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True, slots=True)
class _Outcome:
    committed: bool
    topic: str
    message_id: str


def _describe(committed: bool) -> str:
    return "committed" if committed else "rolled back"


def _publishable(message: Message) -> Message:
    """The message as the producer sent it: no queue, offset or store time of the half."""
    return replace(message, queue_id=-1, queue_offset=-1, store_timestamp_ms=0)


class TransactionService:
    def __init__(
        self,
        store: MessageStore,
        clock: Clock,
        publisher: Publisher,
        *,
        transaction_timeout_s: float = 6.0,
        check_interval_s: float = 60.0,
        max_checks: int = 15,
        max_unresolved: int = 100_000,
        max_remembered_outcomes: int = 100_000,
        max_checks_per_scan: int = 100,
        unreached_retry_s: float = 5.0,
        renew_after_s: float = 900.0,
        message_cache_bytes: int = 64 * 1024 * 1024,
        rng: random.Random | None = None,
    ) -> None:
        assert transaction_timeout_s >= 0 and check_interval_s > 0 and unreached_retry_s >= 0
        assert max_checks >= 1 and max_unresolved >= 1 and max_remembered_outcomes >= 1
        assert max_checks_per_scan >= 1 and renew_after_s > 0 and message_cache_bytes >= 0
        self._store = store
        self._clock = clock
        self._publisher = publisher
        self._timeout_ms = round(transaction_timeout_s * 1000)
        self._interval_ms = round(check_interval_s * 1000)
        self._retry_ms = round(unreached_retry_s * 1000)
        self._renew_ms = round(renew_after_s * 1000)
        self.max_checks = max_checks
        self.max_unresolved = max_unresolved
        self._max_outcomes = max_remembered_outcomes
        self._max_per_scan = max_checks_per_scan
        self._cache_left = message_cache_bytes
        self._rng = rng if rng is not None else random.SystemRandom()
        self._progress_path = os.path.join(store.config.data_dir, PROGRESS_FILE)
        self._pending: dict[str, _Pending] = {}
        self._outcomes: OrderedDict[str, _Outcome] = OrderedDict()
        # Prepares between their append and their entry: (half floor, ops floor) each.
        self._in_flight: dict[int, tuple[int, int]] = {}
        self._tokens = itertools.count()
        # Queue offsets past everything this service knows to be durable (lower bounds of the truth).
        self._next_half_offset = 0
        self._next_op_offset = 0
        self._saved_progress: tuple[int, int] | None = None
        self._open = False
        self.recovery: TransactionRecovery | None = None

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> TransactionRecovery:
        """Rebuild the unresolved transactions from the store (which must be open)."""
        assert not self._open, "already open"
        half_min, half_end = self._store.queue_bounds(HALF_TOPIC, 0)
        ops_min, ops_end = self._store.queue_bounds(HALF_OPS_TOPIC, 0)
        saved = self._read_progress(half_end, ops_end)
        half_from, ops_from = saved if saved is not None else (half_min, ops_min)
        if half_from < half_min:
            log.error(
                "half messages [%d, %d) were deleted before this service replayed them; "
                "unresolved transactions among them are lost (was retention given retention_progress()?)",
                half_from,
                half_min,
            )
        self._pending.clear()
        self._outcomes.clear()
        counters = {"halves": 0, "ops": 0, "skipped": 0}
        now_ms, now_mono_ms = self._clock.now_ms(), self._mono_ms()
        next_op = ops_from
        records = heapq.merge(
            self._scan(HALF_TOPIC, half_from, half_end, counters),
            self._scan(HALF_OPS_TOPIC, ops_from, ops_end, counters),
            key=lambda record: record.physical_offset,
        )
        for record in records:
            if record.topic == HALF_TOPIC:
                counters["halves"] += 1
                if not self._replay_half(record, next_op, now_ms, now_mono_ms):
                    counters["skipped"] += 1
            else:
                counters["ops"] += 1
                next_op = record.queue_offset + 1
                if not self._replay_op(record, now_ms, now_mono_ms):
                    counters["skipped"] += 1
        self._next_half_offset = half_end
        self._next_op_offset = ops_end
        self._saved_progress = saved
        self._open = True
        counts = self.counts()
        if len(self._pending) > self.max_unresolved:
            log.error(
                "%d unresolved transactions exceed the limit of %d: all kept, new ones refused until "
                "enough are resolved",
                len(self._pending),
                self.max_unresolved,
            )
        self.recovery = TransactionRecovery(
            half_from=half_from,
            ops_from=ops_from,
            progress_file_used=saved is not None,
            halves_replayed=counters["halves"],
            ops_replayed=counters["ops"],
            records_skipped=counters["skipped"],
            pending=counts.pending,
            parked=counts.parked,
        )
        log.info(
            "transactions: %d pending, %d parked; replayed %d half messages from %d and %d ops from %d",
            counts.pending,
            counts.parked,
            counters["halves"],
            half_from,
            counters["ops"],
            ops_from,
        )
        return self.recovery

    def close(self) -> None:
        """Save the progress point (a shorter replay next time); nothing else needs saving."""
        if not self._open:
            return
        try:
            self.save_progress()
        except OSError as error:
            log.error("could not save the transaction progress point (next start replays more): %s", error)
        self._open = False

    def _read_progress(self, half_end: int, ops_end: int) -> tuple[int, int] | None:
        payload = read_framed_file(self._store.disk, self._progress_path)
        if payload is None:
            if self._store.disk.exists(self._progress_path):
                log.warning("%s is damaged: replaying every transaction record", self._progress_path)
            return None
        progress = decode_progress(payload)
        if progress is None or progress[0] > half_end or progress[1] > ops_end:
            log.warning(
                "%s holds %r, beyond the queues' ends (%d, %d): replaying every transaction record",
                self._progress_path,
                progress,
                half_end,
                ops_end,
            )
            return None
        return progress

    def _scan(self, topic: str, start: int, end: int, counters: dict[str, int]) -> Iterator[StoredRecord]:
        """Every readable record of ``topic``/0 in [start, end); unreadable ones are logged and skipped."""
        offset = start
        one_by_one_until = start  # after a batch failed: find its bad record, one read at a time
        while offset < end:
            count = 1 if offset < one_by_one_until else min(_READ_BATCH, end - offset)
            try:
                read = self._store.read_queue(topic, 0, offset, count)
            except CorruptRecordError as error:
                if count > 1:
                    one_by_one_until = offset + count
                    continue
                log.error("%s/0 record at queue offset %d unreadable, skipped: %s", topic, offset, error)
                counters["skipped"] += 1
                offset += 1
                continue
            yield from read.records
            if read.next_queue_offset <= offset:
                return
            offset = read.next_queue_offset

    def _replay_half(self, record: StoredRecord, ops_floor: int, now_ms: int, now_mono_ms: int) -> bool:
        try:
            state = decode_half(record)
        except (ValueError, KeyError) as error:
            log.error(
                "half record at queue offset %d not understood, skipped: %s", record.queue_offset, error
            )
            return False
        origin = parse_transaction_id(state.transaction_id)
        assert origin is not None
        message = from_record(record)
        entry = _Pending(
            transaction_id=state.transaction_id,
            origin_offset=origin,
            topic=message.topic,
            message_id=message.message_id,
            born_timestamp_ms=message.born_timestamp_ms,
            prepared_ms=state.prepared_ms,
            prepared_mono_ms=_mono_for(state.prepared_ms, now_ms, now_mono_ms),
            half=_Half(
                record.queue_offset,
                record.physical_offset,
                record.size,
                record.store_timestamp_ms,
                _mono_for(record.store_timestamp_ms, now_ms, now_mono_ms),
            ),
            ops_floor=ops_floor,
            checks=state.checks,
            last_check_ms=state.last_check_ms,
            last_check_mono_ms=(
                _mono_for(state.last_check_ms, now_ms, now_mono_ms)
                if state.last_check_ms is not None
                else None
            ),
            parked=state.parked,
        )
        # A renewed copy replaces what the earlier half and the ops before it said.
        self._pending[state.transaction_id] = entry
        return True

    def _replay_op(self, record: StoredRecord, now_ms: int, now_mono_ms: int) -> bool:
        try:
            op = decode_op(record)
        except ValueError as error:
            log.error("op record at queue offset %d not understood, skipped: %s", record.queue_offset, error)
            return False
        entry = self._pending.get(op.transaction_id)
        if op.kind.final:
            if entry is not None:
                del self._pending[op.transaction_id]
            self._remember(op.transaction_id, _Outcome(op.kind == OpKind.COMMIT, op.topic, op.message_id))
        elif entry is None:
            pass  # about a transaction resolved (or renewed) below the replay's start
        elif op.kind == OpKind.CHECKED:
            if op.checks >= entry.checks:
                entry.checks = op.checks
                entry.last_check_ms = op.at_ms
                entry.last_check_mono_ms = _mono_for(op.at_ms, now_ms, now_mono_ms)
        elif op.kind == OpKind.PARKED:
            entry.parked = True
        return True

    # ------------------------------------------------------------------ prepare

    async def prepare(self, message: Message) -> SendReceipt:
        """Store ``message`` as a half message, durably; the receipt carries the transaction id."""
        self._require_open()
        if not message.message_id:
            raise BrokerError("ILLEGAL_MESSAGE_ID", "a transactional message needs a message id")
        if is_internal_topic(message.topic):
            raise BrokerError("ILLEGAL_TOPIC", f"{message.topic!r} is a system topic")
        unresolved = len(self._pending) + len(self._in_flight)
        if unresolved >= self.max_unresolved:
            counts = self.counts()
            raise BrokerError(
                "TOO_MANY_REQUESTS",
                f"{unresolved} transactions are unresolved ({counts.parked} of them parked), the limit is "
                f"{self.max_unresolved}: commit or roll back some before preparing more",
            )
        nonce = self._rng.getrandbits(64)
        record = to_record(
            message,
            topic=HALF_TOPIC,
            queue_id=0,
            extra_system_properties=original_half_properties(message.topic, nonce),
        )
        token = next(self._tokens)
        # The append happens before append_durably's first await, so prepares take their offsets
        # in the order they start: these floors are lower bounds of this prepare's offsets.
        self._in_flight[token] = (self._next_half_offset, self._next_op_offset)
        try:
            result = await append_durably(self._store, [record])
            _, ops_floor = self._in_flight[token]
        finally:
            # A failed prepare was never acknowledged: nobody learned its id, so nobody can end it,
            # and if it did become durable, a replay checks it like any other.
            del self._in_flight[token]
        appended = result.records[0]
        transaction_id = format_transaction_id(appended.queue_offset, nonce)
        self._next_half_offset = max(self._next_half_offset, appended.queue_offset + 1)
        mono_ms = self._mono_ms()
        entry = _Pending(
            transaction_id=transaction_id,
            origin_offset=appended.queue_offset,
            topic=message.topic,
            message_id=message.message_id,
            born_timestamp_ms=message.born_timestamp_ms,
            prepared_ms=appended.store_timestamp_ms,
            prepared_mono_ms=mono_ms,
            half=_Half(
                appended.queue_offset,
                appended.physical_offset,
                appended.size,
                appended.store_timestamp_ms,
                mono_ms,
            ),
            ops_floor=ops_floor,
        )
        if len(message.body) <= self._cache_left:
            entry.message = _publishable(message)
            entry.cached_bytes = len(message.body)
            self._cache_left -= entry.cached_bytes
        self._pending[transaction_id] = entry
        return SendReceipt(message.message_id, 0, appended.queue_offset, transaction_id)

    # ------------------------------------------------------------------ end

    async def end(
        self,
        topic: str,
        message_id: str,
        transaction_id: str,
        commit: bool,
        source: TransactionSource,
    ) -> None:
        """Commit (publish the message) or roll back (discard it); durable before returning.

        Ending again the same way is OK; the other way, or with an id this broker never issued for
        this topic and message, raises ``INVALID_TRANSACTION_ID``.
        """
        self._require_open()
        assert source in _SOURCES, source
        if parse_transaction_id(transaction_id) is None:
            raise BrokerError(
                "INVALID_TRANSACTION_ID", f"{transaction_id!r} is not a transaction id issued by this broker"
            )
        entry = self._pending.get(transaction_id)
        if entry is None:
            outcome = self._known_outcome(transaction_id)
            if outcome is None:
                raise BrokerError(
                    "INVALID_TRANSACTION_ID",
                    f"unknown transaction {transaction_id}: never issued by this broker, or resolved so long "
                    "ago that its record has expired",
                )
            self._confirm_repeat(transaction_id, outcome, topic, message_id, commit)
            return
        self._check_identity(transaction_id, entry.topic, entry.message_id, topic, message_id)
        async with entry.lock:
            if entry.outcome is not None:  # resolved while this call waited for the lock
                self._confirm_repeat(
                    transaction_id,
                    _Outcome(entry.outcome, entry.topic, entry.message_id),
                    topic,
                    message_id,
                    commit,
                )
                return
            if commit and not entry.published:
                await self._publisher.publish([self._message_of(entry)])
                entry.published = True
            elif not commit and entry.published:
                raise BrokerError(
                    "INVALID_TRANSACTION_ID",
                    f"transaction {transaction_id} was committed and its message published (only recording "
                    "the commit failed: commit again to complete it); it cannot be rolled back",
                )
            kind = OpKind.COMMIT if commit else OpKind.ROLLBACK
            await self._append_ops([self._op(entry, kind, _SOURCES[source], entry.checks)])
            self._resolve(entry, commit)

    def _check_identity(
        self, transaction_id: str, real_topic: str, real_message_id: str, topic: str, message_id: str
    ) -> None:
        if message_id != real_message_id:
            raise BrokerError(
                "INVALID_TRANSACTION_ID",
                f"transaction {transaction_id} is for message {real_message_id!r}, not {message_id!r}",
            )
        if topic != real_topic:
            raise BrokerError(
                "INVALID_TRANSACTION_ID",
                f"transaction {transaction_id} is for topic {real_topic!r}, not {topic!r}",
            )

    def _confirm_repeat(
        self, transaction_id: str, outcome: _Outcome, topic: str, message_id: str, commit: bool
    ) -> None:
        self._check_identity(transaction_id, outcome.topic, outcome.message_id, topic, message_id)
        if outcome.committed != commit:
            raise BrokerError(
                "INVALID_TRANSACTION_ID",
                f"transaction {transaction_id} was already {_describe(outcome.committed)}; "
                f"it cannot be {_describe(commit)} now",
            )

    def _known_outcome(self, transaction_id: str) -> _Outcome | None:
        outcome = self._outcomes.get(transaction_id)
        if outcome is not None:
            return outcome
        # Resolved before the outcomes remembered in memory: its final op is in the key index
        # (once dispatched: make sure everything durable is, rather than answer "unknown" early).
        self._store.dispatch_now()
        for record in self._store.find_by_key(transaction_id, *_ANY_TIME):
            if record.topic != HALF_OPS_TOPIC:
                continue
            try:
                op = decode_op(record)
            except ValueError:
                continue
            if op.transaction_id == transaction_id and op.kind.final:
                outcome = _Outcome(op.kind == OpKind.COMMIT, op.topic, op.message_id)
                self._remember(transaction_id, outcome)
                return outcome
        return None

    def _resolve(self, entry: _Pending, committed: bool) -> None:
        entry.outcome = committed
        del self._pending[entry.transaction_id]
        self._cache_left += entry.cached_bytes
        entry.message, entry.cached_bytes = None, 0
        self._remember(entry.transaction_id, _Outcome(committed, entry.topic, entry.message_id))

    def _remember(self, transaction_id: str, outcome: _Outcome) -> None:
        self._outcomes[transaction_id] = outcome
        self._outcomes.move_to_end(transaction_id)
        while len(self._outcomes) > self._max_outcomes:
            self._outcomes.popitem(last=False)

    # ------------------------------------------------------------------ check-back

    def due_checks(self, now_ms: int, max_count: int | None = None) -> list[CheckRequest]:
        """Unresolved transactions to check now, oldest first (at most ``max_count``).

        Each is offered again after ``unreached_retry_s`` unless :meth:`record_check` says it
        reached a producer.
        """
        self._require_open()
        limit = self._max_per_scan if max_count is None else max_count
        now_mono_ms = self._mono_ms()
        due = [entry for entry in self._pending.values() if self._is_due(entry, now_ms, now_mono_ms)]
        due.sort(key=lambda entry: entry.origin_offset)
        requests: list[CheckRequest] = []
        for entry in due:
            if len(requests) >= limit:
                break
            entry.offered_mono_ms = now_mono_ms
            try:
                message = self._message_of(entry)
            except BrokerError as error:
                log.error("cannot check transaction %s: %s", entry.transaction_id, error.message)
                continue
            requests.append(CheckRequest(entry.topic, message, entry.transaction_id, entry.checks + 1))
        return requests

    def _is_due(self, entry: _Pending, now_ms: int, now_mono_ms: int) -> bool:
        if entry.parked or entry.checks >= self.max_checks or entry.lock.locked():
            return False
        if entry.offered_mono_ms is not None and now_mono_ms - entry.offered_mono_ms < self._retry_ms:
            return False
        if entry.last_check_ms is None or entry.last_check_mono_ms is None:
            return _elapsed(entry.prepared_ms, entry.prepared_mono_ms, now_ms, now_mono_ms, self._timeout_ms)
        return _elapsed(entry.last_check_ms, entry.last_check_mono_ms, now_ms, now_mono_ms, self._interval_ms)

    async def record_check(self, transaction_id: str, check_number: int | None = None) -> bool:
        """Record, durably, that a check reached a producer; the last allowed check parks it.

        Returns False (and records nothing) if the transaction is no longer unresolved, or if
        ``check_number`` is given and is not the next check (a stale or repeated report).
        """
        self._require_open()
        entry = self._pending.get(transaction_id)
        if entry is None:
            return False
        async with entry.lock:
            if entry.outcome is not None:
                return False
            count = entry.checks + 1
            if check_number is not None and check_number != count:
                return False
            ops = [self._op(entry, OpKind.CHECKED, OpSource.BROKER, count)]
            park = count >= self.max_checks and not entry.parked
            if park:
                ops.append(self._op(entry, OpKind.PARKED, OpSource.BROKER, count))
            at_ms = ops[0].at_ms
            await self._append_ops(ops)
            entry.checks = count
            entry.last_check_ms = at_ms
            entry.last_check_mono_ms = self._mono_ms()
            entry.offered_mono_ms = None
            if park:
                entry.parked = True
                log.warning(
                    "transaction %s (topic %s, message %s) parked after %d checks without an answer: "
                    "a producer or an operator must commit or roll it back",
                    transaction_id,
                    entry.topic,
                    entry.message_id,
                    count,
                )
            return True

    # ------------------------------------------------------------------ renewal and progress

    async def renew_old_halves(self, now_ms: int, max_count: int = 100) -> int:
        """Copy half messages older than ``renew_after_s`` to the queue's end; returns how many.

        Lets the progress point, the log's retention and the next replay move past transactions
        that stay unresolved for long.
        """
        self._require_open()
        now_mono_ms = self._mono_ms()
        old = [
            entry
            for entry in self._pending.values()
            if not entry.lock.locked()
            and _elapsed(entry.half.stored_ms, entry.half.stored_mono_ms, now_ms, now_mono_ms, self._renew_ms)
        ]
        old.sort(key=lambda entry: entry.half.queue_offset)
        renewed = 0
        for entry in old[:max_count]:
            async with entry.lock:
                if entry.outcome is not None:
                    continue
                state = HalfState(
                    transaction_id=entry.transaction_id,
                    prepared_ms=entry.prepared_ms,
                    checks=entry.checks,
                    last_check_ms=entry.last_check_ms,
                    parked=entry.parked,
                    renewed=True,
                )
                try:
                    message = self._message_of(entry)
                except BrokerError as error:
                    log.error("cannot renew transaction %s: %s", entry.transaction_id, error.message)
                    continue
                record = to_record(
                    message,
                    topic=HALF_TOPIC,
                    queue_id=0,
                    extra_system_properties=renewed_half_properties(entry.topic, state),
                )
                # Nothing else is written about this transaction while its lock is held, so every
                # later op lands past this floor.
                ops_floor = self._next_op_offset
                result = await append_durably(self._store, [record])
                appended = result.records[0]
                self._next_half_offset = max(self._next_half_offset, appended.queue_offset + 1)
                entry.half = _Half(
                    appended.queue_offset,
                    appended.physical_offset,
                    appended.size,
                    appended.store_timestamp_ms,
                    self._mono_ms(),
                )
                entry.ops_floor = ops_floor
                renewed += 1
        return renewed

    def progress(self) -> tuple[int, int]:
        """(half offset, ops offset) from which a replay rebuilds everything unresolved."""
        halves = [self._next_half_offset]
        ops = [self._next_op_offset]
        for half_floor, ops_floor in self._in_flight.values():
            halves.append(half_floor)
            ops.append(ops_floor)
        for entry in self._pending.values():
            halves.append(entry.half.queue_offset)
            ops.append(entry.ops_floor)
        return min(halves), min(ops)

    def retention_progress(self) -> dict[tuple[str, int], int]:
        """For :meth:`MessageStore.enforce_retention`: what the transaction queues still need."""
        half_offset, ops_offset = self.progress()
        return {(HALF_TOPIC, 0): half_offset, (HALF_OPS_TOPIC, 0): ops_offset}

    def save_progress(self) -> bool:
        """Write the progress point if it moved (a framed, atomic file); returns whether it wrote."""
        if self._store.fenced:
            return False
        progress = self.progress()
        if progress == self._saved_progress:
            return False
        write_framed_file(self._store.disk, self._progress_path, encode_progress(*progress))
        self._saved_progress = progress
        return True

    # ------------------------------------------------------------------ listing

    def list_unresolved(
        self, include_parked: bool = True, max_count: int = 1000
    ) -> list[UnresolvedTransaction]:
        """Unresolved transactions, oldest first."""
        entries = sorted(self._pending.values(), key=lambda entry: entry.origin_offset)
        listed: list[UnresolvedTransaction] = []
        for entry in entries:
            if len(listed) >= max_count:
                break
            parked = self._is_parked(entry)
            if parked and not include_parked:
                continue
            listed.append(
                UnresolvedTransaction(
                    topic=entry.topic,
                    message_id=entry.message_id,
                    transaction_id=entry.transaction_id,
                    born_timestamp_ms=entry.born_timestamp_ms,
                    prepared_timestamp_ms=entry.prepared_ms,
                    checks=entry.checks,
                    last_check_ms=entry.last_check_ms,
                    parked=parked,
                )
            )
        return listed

    def counts(self) -> TransactionCounts:
        parked = sum(1 for entry in self._pending.values() if self._is_parked(entry))
        return TransactionCounts(pending=len(self._pending) - parked, parked=parked)

    def _is_parked(self, entry: _Pending) -> bool:
        # Also counts those out of checks under a lowered max_checks, though never marked parked.
        return entry.parked or entry.checks >= self.max_checks

    # ------------------------------------------------------------------ helpers

    def _require_open(self) -> None:
        assert self._open, "TransactionService.open() first"

    def _mono_ms(self) -> int:
        return round(self._clock.monotonic_s() * 1000)

    def _op(self, entry: _Pending, kind: OpKind, source: OpSource, checks: int) -> Op:
        return Op(
            kind=kind,
            source=source,
            checks=checks,
            at_ms=self._clock.now_ms(),
            transaction_id=entry.transaction_id,
            topic=entry.topic,
            message_id=entry.message_id,
        )

    async def _append_ops(self, ops: Sequence[Op]) -> None:
        result = await append_durably(self._store, [op_record(op) for op in ops])
        self._next_op_offset = max(self._next_op_offset, result.records[-1].queue_offset + 1)

    def _message_of(self, entry: _Pending) -> Message:
        """The original message of an unresolved transaction, from memory or from its half record."""
        if entry.message is not None:
            return entry.message
        half = entry.half
        try:
            try:
                record = self._store.read_at(half.physical_offset, half.size)
            except KeyError:
                # Durable, but the store's dispatcher may not have caught up yet.
                self._store.dispatch_now()
                record = self._store.read_at(half.physical_offset, half.size)
            state = decode_half(record)
        except KeyError as error:
            raise BrokerError(
                "INTERNAL_SERVER_ERROR",
                f"the half message of transaction {entry.transaction_id} is no longer in the log: {error}",
            ) from error
        except CorruptRecordError as error:
            raise BrokerError(
                "INTERNAL_SERVER_ERROR",
                f"the half message of transaction {entry.transaction_id} is unreadable: {error}",
            ) from error
        except ValueError as error:
            raise BrokerError(
                "INTERNAL_SERVER_ERROR",
                f"the half message of transaction {entry.transaction_id} is not understood: {error}",
            ) from error
        if state.transaction_id != entry.transaction_id:
            raise BrokerError(
                "INTERNAL_SERVER_ERROR",
                f"log offset {half.physical_offset} holds transaction {state.transaction_id}, "
                f"expected {entry.transaction_id}",
            )
        return _publishable(from_record(record))


def _elapsed(since_ms: int, since_mono_ms: int, now_ms: int, now_mono_ms: int, duration_ms: int) -> bool:
    """Has ``duration_ms`` passed since then, by the wall clock or by the monotonic one?"""
    return now_ms - since_ms >= duration_ms or now_mono_ms - since_mono_ms >= duration_ms


def _mono_for(wall_ms: int, now_ms: int, now_mono_ms: int) -> int:
    """The monotonic time of a past wall time (one from the future counts as now)."""
    return now_mono_ms - max(0, now_ms - wall_ms)
