"""OpenTelemetry: a trace that follows a message from the producer to the consumer's handler.

Optional: with the ``opentelemetry-api`` package installed (``pip install homing[otel]``) and an SDK
configured by the application, a send opens a PRODUCER span ``send <topic>`` and writes its W3C
``traceparent`` into the message's ``SystemProperties.trace_context`` (the field both Homing and the
Apache proxy store and deliver). A push consumer runs each handler inside a CONSUMER span
``process <topic>`` whose parent is that context, so the consumer's work joins the producer's trace.
Without the package every function here is a no-op; without an SDK the API's own no-op tracer makes
spans that record nothing and inject no context.

Attribute names follow the OpenTelemetry semantic conventions for messaging (``messaging.*``,
``messaging.rocketmq.*``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Final

try:
    from opentelemetry import propagate, trace

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised in a subprocess test
    AVAILABLE = False

from homing.client._message import Message, MessageType, ReceivedMessage

__all__ = ["AVAILABLE", "process_span", "send_span"]

_INSTRUMENTATION: Final = "homing.client"
_SYSTEM: Final = "rocketmq"


def _tracer() -> trace.Tracer:
    from homing import __version__

    return trace.get_tracer(_INSTRUMENTATION, __version__)


def _message_attributes(
    topic: str, message_type: MessageType, tag: str | None, keys: tuple[str, ...], group: str | None
) -> dict[str, str | int | list[str]]:
    attributes: dict[str, str | int | list[str]] = {
        "messaging.system": _SYSTEM,
        "messaging.destination.name": topic,
        "messaging.rocketmq.message.type": message_type.value,
    }
    if tag is not None:
        attributes["messaging.rocketmq.message.tag"] = tag
    if keys:
        attributes["messaging.rocketmq.message.keys"] = list(keys)
    if group is not None:
        attributes["messaging.rocketmq.message.group"] = group
    return attributes


def _nothing_to_carry() -> bool:
    """No SDK and no current span: the span would record nothing and inject no context.

    The API's no-op tracer hands out the current span (or the invalid one), so without an SDK a
    send carries a traceparent only when the application made a span current (e.g. one extracted
    from an incoming request); only then is the span opened, as with an SDK. Saves the per-send
    work of building attributes and entering the no-op span.
    """
    global _sdk_seen
    if _sdk_seen:
        return False
    provider = trace.get_tracer_provider()
    if not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        _sdk_seen = True  # a global tracer provider is set once and for all
        return False
    return not trace.get_current_span().get_span_context().is_valid


_sdk_seen = False


@contextlib.contextmanager
def send_span(
    message: Message, message_type: MessageType, message_id: str, namespace: str
) -> Iterator[str | None]:
    """A PRODUCER span around one send (all its attempts); yields the traceparent to carry, if any."""
    if not AVAILABLE or _nothing_to_carry():
        yield None
        return
    attributes = _message_attributes(
        message.topic, message_type, message.tag, message.keys, message.message_group
    )
    attributes.update(
        {
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.message.id": message_id,
            "messaging.message.body.size": len(message.body),
        }
    )
    if namespace:
        attributes["messaging.rocketmq.namespace"] = namespace
    with _tracer().start_as_current_span(
        f"send {message.topic}", kind=trace.SpanKind.PRODUCER, attributes=attributes
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield carrier.get("traceparent")


@contextlib.contextmanager
def process_span(message: ReceivedMessage, consumer_group: str, namespace: str) -> Iterator[None]:
    """A CONSUMER span around a handler, child of the producer's span when the message carries one."""
    if not AVAILABLE:
        yield
        return
    carrier: Mapping[str, str] = {"traceparent": message.trace_context} if message.trace_context else {}
    parent = propagate.extract(carrier)
    attributes = _message_attributes(
        message.topic, message.message_type, message.tag, message.keys, message.message_group
    )
    attributes.update(
        {
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.message.id": message.message_id,
            "messaging.consumer.group.name": consumer_group,
            "messaging.rocketmq.message.delivery_attempt": message.delivery_attempt,
            "messaging.message.body.size": len(message.body),
        }
    )
    if namespace:
        attributes["messaging.rocketmq.namespace"] = namespace
    with _tracer().start_as_current_span(
        f"process {message.topic}", context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
    ):
        yield
