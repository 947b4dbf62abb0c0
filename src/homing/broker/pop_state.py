"""Consumer progress and in-flight deliveries: every state change is an event, applied in one place.

Theory of operation. For each (group, topic, queue) a :class:`QueueCursor` says which queue
offsets are *done* (acked, filtered out, or moved to the dead-letter queue) and which are *in
flight* (delivered, not yet done: each with its delivery attempt and the time it becomes visible
again). ``committed`` is the first offset not done: everything below it is done, and that is the
only number retention needs. ``next_pop`` is the first offset never delivered.

Every change is an :data:`Event` (a small JSON object) that is applied by :meth:`PopState.apply`
*and* appended to the pop journal in the commit log (a system topic), group-committed like any
send: an ack is acknowledged only once its event is durable. At startup the state is a snapshot
(written now and then, framed and atomic) plus the journal events after it. Losing the snapshot
only means replaying more of the journal; a cursor is never moved past an offset that is not
done, so consumer progress can go back (redelivery) but never forward past unconsumed messages.

Events (``k`` is the kind; ``g`` group, ``t`` topic, ``q`` queue id):

- ``start``: ``o`` first offset of a new cursor (where a new group begins)
- ``pop``:   ``d`` [[offset, attempt], ...] delivered, ``s`` [offset, ...] skipped by the filter,
             ``v`` visible-again time ms, ``at`` delivery time ms, ``c`` client id, ``p`` push?
- ``done``:  ``o`` [offset, ...] acked or moved to the dead-letter queue
- ``inv``:   ``o`` offset, ``a`` attempt, ``v`` new visible-again time ms (nack, extend, renew),
             ``p`` (optional) push renewal still wanted? (False after a nack: the broker renews
             push deliveries only until the consumer answers)
- ``skipto``: ``o`` every offset below is done (its messages expired by retention before any
             delivery: they no longer exist, so there is nothing to wait for)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "InFlight", "PopState", "QueueCursor", "decode_event", "encode_event"]

Event = dict[str, Any]
CursorKey = tuple[str, str, int]  # group, topic, queue id


@dataclass(slots=True)
class InFlight:
    attempt: int
    visible_at_ms: int
    popped_at_ms: int
    client_id: str
    push: bool


@dataclass(slots=True)
class QueueCursor:
    committed: int
    next_pop: int
    inflight: dict[int, InFlight] = field(default_factory=dict)
    done_above: set[int] = field(default_factory=set)

    def is_done(self, offset: int) -> bool:
        return offset < self.committed or offset in self.done_above

    def mark_done(self, offset: int) -> None:
        self.inflight.pop(offset, None)
        if offset < self.committed:
            return
        self.done_above.add(offset)
        # Everything in [committed, next_pop) is either in flight or done; advance over done.
        while self.committed in self.done_above:
            self.done_above.discard(self.committed)
            self.committed += 1

    def mark_delivered(self, offset: int, delivery: InFlight) -> None:
        if self.is_done(offset):
            return
        self.inflight[offset] = delivery
        if offset >= self.next_pop:
            self.next_pop = offset + 1

    def skip_to(self, offset: int) -> None:
        for stale in [item for item in self.inflight if item < offset]:
            del self.inflight[stale]
        self.done_above = {item for item in self.done_above if item >= offset}
        self.committed = max(self.committed, offset)
        self.next_pop = max(self.next_pop, offset)
        while self.committed in self.done_above:
            self.done_above.discard(self.committed)
            self.committed += 1

    def clamp_to(self, offset: int) -> None:
        """Nothing exists at or past ``offset`` (the queue's end): forget progress beyond it."""
        for stale in [item for item in self.inflight if item >= offset]:
            del self.inflight[stale]
        self.done_above = {item for item in self.done_above if item < offset}
        self.committed = min(self.committed, offset)
        self.next_pop = min(self.next_pop, offset)

    def orphans(self) -> list[int]:
        """Offsets delivered once but now neither in flight nor done (a journal record was lost)."""
        return [
            offset
            for offset in range(self.committed, self.next_pop)
            if offset not in self.inflight and offset not in self.done_above
        ]

    def skip(self, offset: int) -> None:
        if offset >= self.next_pop:
            self.next_pop = offset + 1
        self.mark_done(offset)


# json.dumps with non-default arguments builds a new encoder per call; this one is built once.
_EVENT_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode_event(event: Event) -> bytes:
    return _EVENT_ENCODER.encode(event).encode()


def decode_event(body: bytes) -> Event:
    event = json.loads(body)
    if not isinstance(event, dict) or "k" not in event:
        raise ValueError("not a pop journal event")
    return event


class PopState:
    def __init__(self) -> None:
        self.cursors: dict[CursorKey, QueueCursor] = {}
        self.journal_next = 0  # journal queue offset after the last applied event

    def cursor(self, group: str, topic: str, queue_id: int) -> QueueCursor | None:
        return self.cursors.get((group, topic, queue_id))

    def apply(self, event: Event) -> None:
        """The one place where consumer progress changes."""
        key = (str(event["g"]), str(event["t"]), int(event["q"]))
        kind = event["k"]
        if kind == "start":
            if key not in self.cursors:
                self.cursors[key] = QueueCursor(committed=int(event["o"]), next_pop=int(event["o"]))
            return
        cursor = self.cursors.get(key)
        if cursor is None:  # events of a cursor whose start predates the journal we still have
            cursor = self.cursors[key] = QueueCursor(committed=0, next_pop=0)
        if kind == "pop":
            for offset in event.get("s", ()):
                cursor.skip(int(offset))
            delivered = event.get("d", ())
            if delivered:
                # Per delivered offset, only its own InFlight: the event's fields are read once.
                visible_at_ms, popped_at_ms = int(event["v"]), int(event["at"])
                client_id, push = str(event.get("c", "")), bool(event.get("p", False))
                for offset, attempt in delivered:
                    cursor.mark_delivered(
                        int(offset), InFlight(int(attempt), visible_at_ms, popped_at_ms, client_id, push)
                    )
        elif kind == "done":
            for offset in event["o"]:
                cursor.mark_done(int(offset))
        elif kind == "skipto":
            cursor.skip_to(int(event["o"]))
        elif kind == "inv":
            delivery = cursor.inflight.get(int(event["o"]))
            if delivery is not None and delivery.attempt == int(event["a"]):
                delivery.visible_at_ms = int(event["v"])
                if "p" in event:
                    delivery.push = bool(event["p"])
        else:
            raise ValueError(f"unknown pop journal event kind {kind!r}")

    # -- snapshots

    def snapshot(self) -> bytes:
        cursors = [
            {
                "g": group,
                "t": topic,
                "q": queue_id,
                "c": cursor.committed,
                "n": cursor.next_pop,
                "done": sorted(cursor.done_above),
                "f": [
                    [offset, item.attempt, item.visible_at_ms, item.popped_at_ms, item.client_id, item.push]
                    for offset, item in sorted(cursor.inflight.items())
                ],
            }
            for (group, topic, queue_id), cursor in sorted(self.cursors.items())
        ]
        return json.dumps({"version": 1, "journal_next": self.journal_next, "cursors": cursors}).encode()

    @classmethod
    def from_snapshot(cls, payload: bytes) -> PopState:
        raw = json.loads(payload)
        if raw.get("version") != 1:
            raise ValueError("unknown pop state snapshot version")
        state = cls()
        state.journal_next = int(raw["journal_next"])
        for item in raw["cursors"]:
            cursor = QueueCursor(committed=int(item["c"]), next_pop=int(item["n"]))
            cursor.done_above = {int(offset) for offset in item["done"]}
            for offset, attempt, visible, popped, client, push in item["f"]:
                cursor.inflight[int(offset)] = InFlight(
                    int(attempt), int(visible), int(popped), str(client), bool(push)
                )
            state.cursors[(str(item["g"]), str(item["t"]), int(item["q"]))] = cursor
        return state
