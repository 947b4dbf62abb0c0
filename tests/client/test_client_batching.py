"""The batcher on its own (no gRPC): lone sends from the caller's task, shared batches otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from client_helpers import run

from homing.client import Endpoints
from homing.client._batching import Batcher, Outcome
from homing.protocol import definition_pb2, service_pb2

ENDPOINTS = Endpoints.parse("127.0.0.1:8081")


def _message(body: bytes) -> definition_pb2.Message:
    return definition_pb2.Message(
        topic=definition_pb2.Resource(name="orders"),
        system_properties=definition_pb2.SystemProperties(message_id=body.hex()),
        body=body,
    )


class _Recorder:
    """A send function that records each call, the task it ran in, and answers OK per message."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[bytes], asyncio.Task[object] | None]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(
        self, endpoints: Endpoints, messages: Sequence[definition_pb2.Message]
    ) -> list[Outcome]:
        self.calls.append(([message.body for message in messages], asyncio.current_task()))
        await self.release.wait()
        return [
            service_pb2.SendResultEntry(message_id=message.system_properties.message_id, offset=index)
            for index, message in enumerate(messages)
        ]


def _batcher(send: _Recorder) -> Batcher:
    return Batcher(send, linger_s=0.5, max_messages=256, max_bytes=lambda: 1 << 20, max_in_flight=4)


def test_a_lone_send_is_made_from_the_callers_own_task() -> None:
    async def scenario() -> None:
        send = _Recorder()
        batcher = _batcher(send)
        for index in range(3):
            entry = await batcher.send("orders", ENDPOINTS, _message(bytes([index])))
            assert entry.message_id == bytes([index]).hex()
        assert [(bodies, task is asyncio.current_task()) for bodies, task in send.calls] == [
            ([b"\x00"], True),
            ([b"\x01"], True),
            ([b"\x02"], True),
        ]
        await batcher.close()

    run(scenario())


def test_sends_started_together_share_one_call_and_each_gets_its_own_entry() -> None:
    async def scenario() -> None:
        send = _Recorder()
        batcher = _batcher(send)
        entries = await asyncio.gather(
            *(batcher.send("orders", ENDPOINTS, _message(bytes([index]))) for index in range(10))
        )
        assert [bodies for bodies, _ in send.calls] == [[bytes([index]) for index in range(10)]]
        assert [entry.message_id for entry in entries] == [bytes([index]).hex() for index in range(10)]
        await batcher.close()

    run(scenario())


def test_a_lone_sender_cancelled_before_sending_does_not_strand_those_that_joined_it() -> None:
    async def scenario() -> None:
        send = _Recorder()
        batcher = _batcher(send)
        leader = asyncio.create_task(batcher.send("orders", ENDPOINTS, _message(b"leader")))
        await asyncio.sleep(0)  # the leader opened the batch and yields once
        joined = asyncio.create_task(batcher.send("orders", ENDPOINTS, _message(b"joined")))
        leader.cancel()
        entry = await asyncio.wait_for(joined, 5)
        assert entry.message_id == b"joined".hex()
        with pytest.raises(asyncio.CancelledError):
            await leader
        await batcher.close()

    run(scenario())


def test_while_a_call_is_outstanding_new_sends_linger_and_go_together() -> None:
    async def scenario() -> None:
        send = _Recorder()
        batcher = _batcher(send)
        send.release.clear()
        first = asyncio.create_task(batcher.send("orders", ENDPOINTS, _message(b"first")))
        while not send.calls:
            await asyncio.sleep(0)
        later = [
            asyncio.create_task(batcher.send("orders", ENDPOINTS, _message(bytes([n])))) for n in range(3)
        ]
        await asyncio.sleep(0.05)
        send.release.set()
        await asyncio.gather(first, *later)
        assert [bodies for bodies, _ in send.calls] == [[b"first"], [b"\x00", b"\x01", b"\x02"]]
        await batcher.close()

    run(scenario())
