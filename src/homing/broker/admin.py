"""Admin operations over a running broker, as plain JSON-ready data.

One API for every front end (the ``homing admin`` command, the HTTP admin endpoint, later a
console and metrics). Reads never change state; writes go through the same durable paths as the
protocol (metadata file, publisher), so an admin action is as safe as a client's.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

from homing.broker.broker import Broker
from homing.broker.consumption import DLQ_ATTEMPTS, DLQ_ORIGIN_TOPIC, DLQ_REASON
from homing.broker.errors import BrokerError
from homing.broker.message_codec import from_record
from homing.broker.metadata import GroupConfig, TopicConfig
from homing.broker.model import Message, MessageType
from homing.broker.system_topics import dlq_topic, is_internal_topic
from homing.store import StoredRecord

__all__ = ["Admin"]

MAX_LIST = 1000
BODY_PREVIEW_BYTES = 256

JSON = dict[str, Any]


def _topic_json(broker: Broker, topic: TopicConfig) -> JSON:
    queues = []
    for queue_id in range(topic.queue_count):
        low, high = broker.store.queue_bounds(topic.name, queue_id)
        queues.append({"queue_id": queue_id, "min_offset": low, "max_offset": high, "messages": high - low})
    return {
        "name": topic.name,
        "queue_count": topic.queue_count,
        "message_types": [kind.name for kind in topic.message_types],
        "created_ms": topic.created_ms,
        "messages": sum(queue["messages"] for queue in queues),
        "queues": queues,
    }


def _group_json(group: GroupConfig) -> JSON:
    return {
        "name": group.name,
        "fifo": group.fifo,
        "max_delivery_attempts": group.max_delivery_attempts,
        "backoff_s": list(group.backoff_s),
        "consume_from": group.consume_from,
        "consume_from_ms": group.consume_from_ms,
        "created_ms": group.created_ms,
    }


def message_json(record: StoredRecord, *, full_body: bool = False) -> JSON:
    message = from_record(record)
    body = message.body if full_body else message.body[:BODY_PREVIEW_BYTES]
    return {
        "message_id": message.message_id,
        "topic": message.topic,
        "stored_topic": record.topic,
        "queue_id": record.queue_id,
        "queue_offset": record.queue_offset,
        "log_offset": record.physical_offset,
        "type": message.message_type.name,
        "tag": message.tag,
        "keys": list(message.keys),
        "properties": message.properties,
        "system_properties": {k: v for k, v in record.properties.items() if k not in message.properties},
        "message_group": message.message_group,
        "born_timestamp_ms": message.born_timestamp_ms,
        "store_timestamp_ms": record.store_timestamp_ms,
        "delivery_timestamp_ms": message.delivery_timestamp_ms,
        "body_size": len(message.body),
        "body_base64": base64.b64encode(body).decode(),
        "body_truncated": len(body) < len(message.body),
    }


class Admin:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    # -- topics

    def topics(self) -> list[JSON]:
        return [_topic_json(self.broker, topic) for topic in self.broker.metadata.topics()]

    def topic(self, name: str) -> JSON:
        topic = self.broker.metadata.find_topic(name)
        if topic is None:
            raise BrokerError("TOPIC_NOT_FOUND", f"topic {name!r} does not exist")
        return _topic_json(self.broker, topic)

    def create_topic(self, name: str, queue_count: int = 8, message_types: list[str] | None = None) -> JSON:
        if is_internal_topic(name):
            raise BrokerError("ILLEGAL_TOPIC", f"{name!r} is reserved for the broker")
        types = tuple(MessageType[kind.upper()] for kind in message_types) if message_types else None
        existing = self.broker.metadata.find_topic(name)
        config = existing or TopicConfig(name=name)
        config = replace(config, queue_count=queue_count)
        if types is not None:
            config = replace(config, message_types=types)
        return _topic_json(self.broker, self.broker.metadata.put_topic(config))

    # -- groups

    def groups(self) -> list[JSON]:
        return [self._describe_group(group) for group in self.broker.metadata.groups()]

    def group(self, name: str) -> JSON:
        group = self.broker.metadata.find_group(name)
        if group is None:
            raise BrokerError("CONSUMER_GROUP_NOT_FOUND", f"consumer group {name!r} does not exist")
        return self._describe_group(group)

    def _describe_group(self, group: GroupConfig) -> JSON:
        rows = self.broker.consumption.group_progress(group.name)
        return {
            **_group_json(group),
            "lag": sum(row.lag for row in rows),
            "in_flight": sum(row.in_flight for row in rows),
            "queues": [
                {
                    "topic": row.topic,
                    "queue_id": row.queue_id,
                    "committed_offset": row.committed,
                    "next_offset": row.next_pop,
                    "max_offset": row.queue_end,
                    "lag": row.lag,
                    "in_flight": row.in_flight,
                }
                for row in rows
            ],
        }

    def create_group(
        self,
        name: str,
        *,
        fifo: bool | None = None,
        max_delivery_attempts: int | None = None,
        backoff_s: list[float] | None = None,
        consume_from: str | None = None,
        consume_from_ms: int | None = None,
    ) -> JSON:
        group = self.broker.metadata.find_group(name) or GroupConfig(
            name=name,
            max_delivery_attempts=self.broker.options.max_delivery_attempts,
            backoff_s=self.broker.options.retry_backoff_s,
        )
        if fifo is not None:
            group = replace(group, fifo=fifo)
        if max_delivery_attempts is not None:
            group = replace(group, max_delivery_attempts=max_delivery_attempts)
        if backoff_s is not None:
            group = replace(group, backoff_s=tuple(float(value) for value in backoff_s))
        if consume_from is not None:
            group = replace(group, consume_from=consume_from)
        if consume_from_ms is not None:
            group = replace(group, consume_from_ms=consume_from_ms)
        return self._describe_group(self.broker.metadata.put_group(group))

    # -- messages

    def message(self, message_id: str) -> list[JSON]:
        return [
            message_json(record, full_body=True)
            for record in self.broker.store.find_by_message_id(message_id)
        ]

    def find_by_key(self, key: str, begin_ms: int, end_ms: int, limit: int = 64) -> list[JSON]:
        limit = max(1, min(limit, MAX_LIST))
        return [
            message_json(record) for record in self.broker.store.find_by_key(key, begin_ms, end_ms, limit)
        ]

    # -- dead-letter queues

    def dead_letters(self, group: str, limit: int = 100) -> list[JSON]:
        topic = dlq_topic(group)
        found: list[JSON] = []
        config = self.broker.metadata.find_topic(topic)
        if config is None:
            return found
        for queue_id in range(config.queue_count):
            low, high = self.broker.store.queue_bounds(topic, queue_id)
            offset = low
            while offset < high and len(found) < limit:
                read = self.broker.store.read_queue(topic, queue_id, offset, min(256, limit - len(found)))
                for record in read.records:
                    item = message_json(record)
                    item["origin_topic"] = record.properties.get(DLQ_ORIGIN_TOPIC)
                    item["attempts"] = int(record.properties.get(DLQ_ATTEMPTS, "0"))
                    item["reason"] = record.properties.get(DLQ_REASON)
                    found.append(item)
                if not read.records:
                    break
                offset = read.next_queue_offset
        return found

    async def resend_dead_letter(self, group: str, message_id: str) -> JSON:
        """Publish a dead-lettered message again to its original topic, with the same message id.

        Every group subscribed to that topic receives it again (an idempotent inbox recognises the
        id); the copy in the dead-letter topic stays, as the record of what happened.
        """
        for record in self.broker.store.find_by_message_id(message_id):
            if record.topic != dlq_topic(group):
                continue
            origin = record.properties.get(DLQ_ORIGIN_TOPIC)
            if not origin:
                continue
            original = from_record(record)
            message = Message(
                topic=origin,
                body=original.body,
                message_id=original.message_id,
                message_type=MessageType.FIFO if original.message_group else MessageType.NORMAL,
                tag=original.tag,
                keys=original.keys,
                properties=original.properties,
                message_group=original.message_group,
                born_timestamp_ms=original.born_timestamp_ms,
                born_host=original.born_host,
                trace_context=original.trace_context,
            )
            receipt = (await self.broker.publish([message]))[0]
            return {"message_id": receipt.message_id, "topic": origin, "queue_id": receipt.queue_id,
                    "queue_offset": receipt.queue_offset}  # fmt: skip
        raise BrokerError("MESSAGE_NOT_FOUND", f"no message {message_id!r} in {dlq_topic(group)!r}")

    # -- transactions

    def transactions(self) -> JSON:
        counts = self.broker.transactions.counts()
        return {
            "pending": counts.pending,
            "parked": counts.parked,
            "transactions": [
                {
                    "transaction_id": item.transaction_id,
                    "topic": item.topic,
                    "message_id": item.message_id,
                    "born_timestamp_ms": item.born_timestamp_ms,
                    "prepared_timestamp_ms": item.prepared_timestamp_ms,
                    "checks": item.checks,
                    "last_check_ms": item.last_check_ms,
                    "parked": item.parked,
                }
                for item in self.broker.transactions.list_unresolved(include_parked=True, max_count=MAX_LIST)
            ],
        }

    async def resolve_transaction(self, transaction_id: str, commit: bool) -> JSON:
        for item in self.broker.transactions.list_unresolved(include_parked=True, max_count=10**9):
            if item.transaction_id == transaction_id:
                await self.broker.end_transaction(
                    topic=item.topic,
                    message_id=item.message_id,
                    transaction_id=transaction_id,
                    commit=commit,
                    source="admin",
                )
                return {"transaction_id": transaction_id, "committed": commit, "message_id": item.message_id}
        raise BrokerError("INVALID_TRANSACTION_ID", f"no unresolved transaction {transaction_id!r}")
