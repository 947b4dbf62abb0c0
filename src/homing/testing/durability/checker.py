"""The checker: after the faults stop and the consumers have drained, count, and judge.

A total-queue checker in the manner of Jepsen's, extended with the effects of an idempotent inbox
and the broker's own accounting (see /work/shared/RELIABILITY.md):

- **lost**: sends acknowledged OK that neither took effect nor reached the dead-letter queue. Must be 0.
- **unexpected**: delivered, taking effect or dead-lettered, but never attempted. Must be 0.
- **forbidden**: delivered although it must never be (a rolled-back transaction, a refused send in
  a test where refusals are definite). Must be 0.
- **duplicated**: reached a handler more than once after its effect was made (allowed: at least
  once), or stored twice. Reported.
- **recovered**: a send whose outcome was unknown (or a refusal) that came out anyway. Reported.
- **effects**: every message that must arrive ends with exactly one effect or exactly one
  dead-letter copy, never both, never more; nothing else has an effect.
- **offsets**: two different messages at one queue offset. Must be 0.
- **drain**: nothing in flight and no lag once drained (the broker's group description), within
  60 s of healing.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from homing.testing.durability.history import History, Outcome

__all__ = ["MAX_DRAIN_S", "CheckReport", "CheckViolation", "check"]

MAX_DRAIN_S = 60.0


class CheckViolation(AssertionError):
    """The run broke a durability promise; the message holds the report."""


@dataclass(slots=True)
class CheckReport:
    attempted: int = 0
    acked: int = 0
    failed: int = 0
    unknown: int = 0
    received: int = 0
    deliveries: int = 0
    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    dead_lettered: list[str] = field(default_factory=list)
    effect_violations: dict[str, str] = field(default_factory=dict)
    offset_conflicts: list[str] = field(default_factory=list)
    effect_counts: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    lag: int = 0
    drain_s: float = 0.0
    max_drain_s: float = MAX_DRAIN_S
    notes: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        problems: list[str] = []

        def some(items: Collection[str]) -> str:
            return ", ".join(sorted(items)[:8]) + (" ..." if len(items) > 8 else "")

        if self.lost:
            problems.append(f"lost {len(self.lost)} acknowledged message(s): {some(self.lost)}")
        if self.unexpected:
            problems.append(
                f"{len(self.unexpected)} unexpected message(s), never sent: {some(self.unexpected)}"
            )
        if self.forbidden:
            problems.append(
                f"{len(self.forbidden)} message(s) delivered that never may be: {some(self.forbidden)}"
            )
        if self.effect_violations:
            shown = ", ".join(f"{uid}: {why}" for uid, why in sorted(self.effect_violations.items())[:8])
            problems.append(f"{len(self.effect_violations)} effect count(s) not exactly once: {shown}")
        if self.offset_conflicts:
            problems.append(f"two messages at one queue offset: {some(self.offset_conflicts)}")
        if self.in_flight:
            problems.append(f"{self.in_flight} deliveries still in flight after the drain")
        if self.lag:
            problems.append(f"lag {self.lag} after the drain")
        if self.drain_s > self.max_drain_s:
            problems.append(f"the drain took {self.drain_s:.1f} s (limit {self.max_drain_s:g} s)")
        return problems

    @property
    def passed(self) -> bool:
        return not self.failures()

    def counts(self) -> dict[str, Any]:
        return {
            "attempted": self.attempted,
            "acked": self.acked,
            "failed": self.failed,
            "unknown": self.unknown,
            "received": self.received,
            "deliveries": self.deliveries,
            "lost": len(self.lost),
            "unexpected": len(self.unexpected),
            "forbidden": len(self.forbidden),
            "duplicated": len(self.duplicated),
            "recovered": len(self.recovered),
            "dead_lettered": len(self.dead_lettered),
            "effect_violations": len(self.effect_violations),
            "in_flight": self.in_flight,
            "lag": self.lag,
            "drain_s": round(self.drain_s, 3),
        }

    def summary(self) -> str:
        counts = self.counts()
        text = " ".join(f"{name}={value}" for name, value in counts.items())
        problems = self.failures()
        notes = "".join(f"\n  note: {note}" for note in self.notes)
        if problems:
            return text + notes + "\nFAILED:\n  " + "\n  ".join(problems)
        return text + notes

    def assert_passed(self, context: str = "") -> None:
        if not self.passed:
            raise CheckViolation((context + "\n" if context else "") + self.summary())


def check(
    history: History,
    *,
    effects: Mapping[str, int],
    dead_letters: Mapping[str, int] | None = None,
    forbidden: Collection[str] = (),
    in_flight: int = 0,
    lag: int = 0,
    drain_s: float = 0.0,
    max_drain_s: float = MAX_DRAIN_S,
    stored_copies: Mapping[str, int] | None = None,
) -> CheckReport:
    """Judge one run.

    ``effects``: the inbox's effect count per uid. ``dead_letters``: copies per uid in the group's
    dead-letter queue. ``forbidden``: uids that must never be delivered. ``in_flight`` and ``lag``:
    the broker's group description after the drain. ``stored_copies``: copies per uid in the
    topic, when the test can count them (two copies of one uid are a duplicate, not an error).
    """
    dead = Counter({uid: count for uid, count in (dead_letters or {}).items() if count > 0})
    report = CheckReport(in_flight=in_flight, lag=lag, drain_s=drain_s, max_drain_s=max_drain_s)
    attempts = history.attempts
    acked = history.uids(Outcome.OK)
    not_acked = set(attempts) - acked
    report.attempted = len(attempts)
    report.acked = len(acked)
    report.failed = len(history.uids(Outcome.FAILED))
    report.unknown = len(history.uids(Outcome.UNKNOWN))
    report.deliveries = len(history.deliveries)
    report.effect_counts = {uid: count for uid, count in effects.items() if count}

    effected = set(report.effect_counts)
    delivered = history.delivered_uids()
    arrived = effected | delivered | set(dead)
    report.received = len(effected | delivered)
    report.dead_lettered = sorted(dead)

    report.lost = sorted(acked - effected - set(dead))
    report.unexpected = sorted(arrived - set(attempts))
    report.forbidden = sorted(set(forbidden) & arrived)
    report.recovered = sorted(not_acked & (effected | set(dead)))
    duplicated = {uid for uid, count in history.applied.items() if count > 1}
    if stored_copies is not None:
        duplicated |= {uid for uid, count in stored_copies.items() if count > 1}
    report.duplicated = sorted(duplicated)

    for uid in sorted(set(attempts) | arrived):
        effect = report.effect_counts.get(uid, 0)
        copies = dead.get(uid, 0)
        must_arrive = uid in acked or effect > 0 or copies > 0
        if effect > 1:
            report.effect_violations[uid] = f"{effect} effects"
        elif copies > 1:
            report.effect_violations[uid] = f"{copies} dead-letter copies"
        elif effect and copies:
            report.effect_violations[uid] = "took effect and was dead-lettered"
        elif must_arrive and effect + copies != 1:
            report.effect_violations[uid] = "no effect and not dead-lettered"

    by_offset: dict[tuple[str, int, int], set[str]] = defaultdict(set)
    for delivery in history.deliveries:
        if delivery.queue_offset >= 0 and delivery.topic:
            by_offset[(delivery.topic, delivery.queue_id, delivery.queue_offset)].add(delivery.uid)
    report.offset_conflicts = sorted(
        f"{topic}/{queue_id}@{offset}: {sorted(uids)}"
        for (topic, queue_id, offset), uids in by_offset.items()
        if len(uids) > 1
    )
    if history.unparsed:
        report.notes.append(f"{history.unparsed} unknown event(s) in the logs")
    return report
