"""Names of the topics the broker keeps for itself, all starting with ``%``.

User topics may not start with ``%`` except the dead-letter topics ``%DLQ%<group>``, which users
read (and resend from) like any topic.
"""

from __future__ import annotations

__all__ = [
    "DLQ_PREFIX",
    "HALF_OPS_TOPIC",
    "HALF_TOPIC",
    "POP_JOURNAL_TOPIC",
    "TIMER_EVENTS_TOPIC",
    "TIMER_TOPIC",
    "dlq_topic",
    "is_dlq_topic",
    "is_internal_topic",
]

POP_JOURNAL_TOPIC = "%HOMING_POP%"  # receive / ack / change-invisibility events
TIMER_TOPIC = "%HOMING_TIMER%"  # delayed messages until they are due
TIMER_EVENTS_TOPIC = "%HOMING_TIMER_EVENTS%"  # recalls and delivery progress
HALF_TOPIC = "%HOMING_HALF%"  # transactional half messages
HALF_OPS_TOPIC = "%HOMING_HALF_OPS%"  # commit / rollback / check / park decisions
DLQ_PREFIX = "%DLQ%"


def dlq_topic(group: str) -> str:
    return DLQ_PREFIX + group


def is_dlq_topic(topic: str) -> bool:
    return topic.startswith(DLQ_PREFIX)


def is_internal_topic(topic: str) -> bool:
    """A topic users never send to or subscribe to directly."""
    return topic.startswith("%") and not is_dlq_topic(topic)
