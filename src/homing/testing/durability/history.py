"""What a workload did: every send attempt and its outcome, every delivery and what became of it.

Workloads (in-process tasks or separate processes, Homing's client or the official one) write
events, one JSON object per line, to their own log; :func:`load_history` merges the logs into a
:class:`History` for the checker. Lines are written and flushed one at a time, so a process killed
with SIGKILL leaves whole lines behind (a last partial line, if any, is ignored).

Events (``ev``; ``uid`` is the workload's unique id of a message, its message id when the client
lets us choose one):

- ``attempt``  a send is about to be made: ``p`` producer, ``intent`` (transactions: commit,
  rollback or unknown, the answer the producer will give)
- ``outcome``  how it ended: ``outcome`` ok | failed | unknown, ``mid`` the broker's message id,
  ``err`` and ``code`` for errors. An attempt without an outcome (its process died) is unknown.
- ``recv``     a delivery reached a consumer: ``c`` consumer, ``mid``, ``att`` delivery attempt,
  ``topic``, ``q`` queue id, ``off`` queue offset (when the client says)
- ``apply``    the handler reached the inbox: ``first`` whether this delivery made the effect
- ``nack``     the handler refused the message (poison): it goes back to the broker
- ``ack``      ``ok`` whether the broker confirmed the ack
- ``check``    a transaction check-back reached a producer: ``answer``
- ``end``      a producer ended a transaction: ``resolution``, ``ok``
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

__all__ = ["Attempt", "Delivery", "EventLog", "History", "Outcome", "load_history", "read_events"]

Event = dict[str, Any]


# Events that say how a process fared, not what happened to a message.
_INFORMATIONAL = frozenset(
    {"started", "stopped", "start_error", "receive_error", "reconnect", "dying", "nack_error", "handled"}
)


class Outcome(StrEnum):
    OK = "ok"  # the broker acknowledged the send: it must never be lost
    FAILED = "failed"  # a definite refusal: the broker said it stored nothing
    UNKNOWN = "unknown"  # timeout, connection lost, crash: it may or may not have been stored


@dataclass(slots=True)
class Attempt:
    uid: str
    producer: str = ""
    outcome: Outcome = Outcome.UNKNOWN
    message_id: str = ""
    error: str = ""
    intent: str = ""  # transactions: commit, rollback or unknown


@dataclass(frozen=True, slots=True)
class Delivery:
    uid: str
    message_id: str
    consumer: str
    attempt: int
    topic: str = ""
    queue_id: int = -1
    queue_offset: int = -1


@dataclass(slots=True)
class History:
    attempts: dict[str, Attempt] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    applied: Counter[str] = field(default_factory=Counter)  # handler reached the inbox, per uid
    first_applied: Counter[str] = field(default_factory=Counter)  # ... and made the effect
    nacked: Counter[str] = field(default_factory=Counter)
    acks: Counter[str] = field(default_factory=Counter)  # confirmed acks
    checks: Counter[str] = field(default_factory=Counter)  # transaction check-backs answered
    ends: dict[str, str] = field(default_factory=dict)  # uid -> resolution confirmed by the broker
    unparsed: int = 0

    # -- recording (in-process workloads call these directly)

    def attempt(self, uid: str, producer: str = "", intent: str = "") -> Attempt:
        if uid in self.attempts:
            raise ValueError(f"uid {uid!r} attempted twice: every attempt needs its own id")
        entry = self.attempts[uid] = Attempt(uid, producer, intent=intent)
        return entry

    def outcome(self, uid: str, outcome: Outcome, message_id: str = "", error: str = "") -> None:
        entry = self.attempts.setdefault(uid, Attempt(uid))
        entry.outcome = outcome
        entry.message_id = message_id or entry.message_id
        entry.error = error

    def apply_event(self, event: Mapping[str, Any]) -> None:
        kind = event.get("ev")
        uid = str(event.get("uid", ""))
        if kind == "attempt":
            self.attempts.setdefault(
                uid, Attempt(uid, str(event.get("p", "")), intent=str(event.get("intent", "")))
            )
        elif kind == "outcome":
            self.outcome(
                uid, Outcome(str(event["outcome"])), str(event.get("mid", "")), str(event.get("err", ""))
            )
        elif kind == "recv":
            self.deliveries.append(
                Delivery(
                    uid,
                    str(event.get("mid", "")),
                    str(event.get("c", "")),
                    int(event.get("att", 0)),
                    str(event.get("topic", "")),
                    int(event.get("q", -1)),
                    int(event.get("off", -1)),
                )
            )
        elif kind == "apply":
            self.applied[uid] += 1
            if event.get("first"):
                self.first_applied[uid] += 1
        elif kind == "nack":
            self.nacked[uid] += 1
        elif kind == "ack":
            if event.get("ok"):
                self.acks[uid] += 1
        elif kind == "check":
            self.checks[uid] += 1
        elif kind == "end":
            if event.get("ok"):
                self.ends[uid] = str(event.get("resolution", ""))
        elif kind not in _INFORMATIONAL:
            self.unparsed += 1

    # -- views

    def uids(self, outcome: Outcome) -> set[str]:
        return {uid for uid, entry in self.attempts.items() if entry.outcome is outcome}

    def delivered_uids(self) -> set[str]:
        return {delivery.uid for delivery in self.deliveries}

    def deliveries_by_uid(self) -> dict[str, list[Delivery]]:
        grouped: dict[str, list[Delivery]] = defaultdict(list)
        for delivery in self.deliveries:
            grouped[delivery.uid].append(delivery)
        return grouped

    def merge(self, other: History) -> None:
        for uid, entry in other.attempts.items():
            mine = self.attempts.get(uid)
            if mine is None or (mine.outcome is Outcome.UNKNOWN and entry.outcome is not Outcome.UNKNOWN):
                self.attempts[uid] = entry
        self.deliveries.extend(other.deliveries)
        self.applied.update(other.applied)
        self.first_applied.update(other.first_applied)
        self.nacked.update(other.nacked)
        self.acks.update(other.acks)
        self.checks.update(other.checks)
        self.ends.update(other.ends)
        self.unparsed += other.unparsed


class EventLog:
    """Append-only JSONL events of one process; each line is written and flushed at once."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, ev: str, **fields: Any) -> None:
        line = json.dumps({"ev": ev, **fields}, separators=(",", ":"), default=str)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_events(path: str | os.PathLike[str]) -> list[Event]:
    """The events of one log; a torn last line (its writer was killed mid-line) is dropped."""
    events: list[Event] = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return events
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            if index == len(lines) - 1:
                continue  # the writer died mid-line: that event never completed
            raise ValueError(f"{path}: line {index + 1} is not JSON: {line[:200]!r}") from None
        if isinstance(event, dict):
            events.append(event)
    return events


def load_history(paths: Iterable[str | os.PathLike[str]]) -> History:
    history = History()
    for path in paths:
        for event in read_events(path):
            history.apply_event(event)
    return history
