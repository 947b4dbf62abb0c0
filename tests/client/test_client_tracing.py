"""OpenTelemetry: the producer's span context travels in the message to the consumer's span.

Without the package, tracing is a no-op.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_fake_broker import FakeBroker
from client_helpers import FAST, run, wait_until
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from homing.client import AsyncProducer, AsyncPushConsumer, Message, ReceivedMessage

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    assert trace.get_tracer_provider() is provider, "another test installed a tracer provider"
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def test_trace_context_flows_from_send_to_handler(spans: InMemorySpanExporter) -> None:
    handled: list[str] = []

    async def scenario() -> None:
        async with FakeBroker() as broker:
            tracer = trace.get_tracer("test")
            async with AsyncProducer(broker.endpoint, timings=FAST) as producer:
                with tracer.start_as_current_span("checkout"):
                    receipt = await producer.send(Message("orders", b"x", tag="paid"))
            wire = broker.send_requests[0].messages[0].system_properties.trace_context
            consumer = AsyncPushConsumer(broker.endpoint, group="billing", timings=FAST)

            @consumer.subscribe("orders")
            async def handle(message: ReceivedMessage) -> None:
                current = trace.get_current_span().get_span_context()
                handled.append(f"{current.trace_id:032x}")

            async with consumer:
                await wait_until(lambda: len(broker.acks) == 1, what="the ack")

            by_name = {span.name: span for span in spans.get_finished_spans()}
            checkout, send, process = by_name["checkout"], by_name["send orders"], by_name["process orders"]
            assert send.kind == trace.SpanKind.PRODUCER and process.kind == trace.SpanKind.CONSUMER
            assert send.parent is not None and send.parent.span_id == checkout.context.span_id
            context = send.context
            assert wire == f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
            assert process.parent is not None and process.parent.span_id == send.context.span_id
            assert process.context.trace_id == checkout.context.trace_id
            assert handled == [f"{checkout.context.trace_id:032x}"]
            assert send.attributes is not None and process.attributes is not None
            assert send.attributes["messaging.system"] == "rocketmq"
            assert send.attributes["messaging.destination.name"] == "orders"
            assert send.attributes["messaging.message.id"] == receipt.message_id
            assert send.attributes["messaging.rocketmq.message.tag"] == "paid"
            assert process.attributes["messaging.consumer.group.name"] == "billing"
            assert process.attributes["messaging.operation.type"] == "process"

    run(scenario())


def test_a_failed_handler_marks_its_span(spans: InMemorySpanExporter) -> None:
    async def scenario() -> None:
        async with FakeBroker() as broker:
            async with AsyncProducer(broker.endpoint, timings=FAST) as producer:
                await producer.send(Message("orders", b"x"))
            consumer = AsyncPushConsumer(broker.endpoint, group="billing", timings=FAST)

            @consumer.subscribe("orders")
            async def handle(message: ReceivedMessage) -> None:
                raise ValueError("bad order")

            async with consumer:
                await wait_until(lambda: len(broker.nacks) == 1, what="the nack")
            process = next(span for span in spans.get_finished_spans() if span.name == "process orders")
            assert process.status.status_code == trace.StatusCode.ERROR
            assert any(event.name == "exception" for event in process.events)

    run(scenario())


def test_without_opentelemetry_tracing_is_a_no_op(tmp_path: Path) -> None:
    # A fresh interpreter in which `import opentelemetry` fails, as when the extra is not installed.
    script = tmp_path / "no_otel.py"
    script.write_text(
        f"""
import asyncio, json, sys
sys.modules["opentelemetry"] = None  # makes every `import opentelemetry...` raise ImportError
sys.path.insert(0, {str(Path(__file__).parent)!r})
from client_fake_broker import FakeBroker
from client_helpers import FAST
from homing.client import AsyncProducer, Message
from homing.client import _tracing

async def main():
    async with FakeBroker() as broker:
        async with AsyncProducer(broker.endpoint, timings=FAST) as producer:
            await producer.send(Message("orders", b"x"))
        system = broker.send_requests[0].messages[0].system_properties
        print(json.dumps({{"available": _tracing.AVAILABLE, "has_trace": system.HasField("trace_context")}}))

asyncio.run(main())
"""
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"available": False, "has_trace": False}
