"""Profile Homing's own asyncio client against a real broker (one process for the client).

Starts ``homing broker`` (``flush_mode = sync``, data on /var/tmp), then runs one mode and prints
messages per second, p50 latency and the client process's CPU time per message::

    .venv/bin/python bench/client_profile.py pipelined --seconds 5
    .venv/bin/python bench/client_profile.py single --seconds 3
    .venv/bin/python bench/client_profile.py concurrent --seconds 3    # 16 producers, a send each at a time
    .venv/bin/python bench/client_profile.py consume --count 20000
    .venv/bin/py-spy record -o out.svg -- .venv/bin/python bench/client_profile.py pipelined
    .venv/bin/python bench/client_profile.py pipelined --cprofile     # cProfile of the window

Modes: ``pipelined`` (``--callers`` concurrent ``send`` loops on one producer), ``single`` (one
sequential sender), ``concurrent`` (``--producers`` producers, each one sequential sender: the
"16 synchronous producers" of bench/peers.py), ``consume`` (fill ``--count`` messages, then 4
receivers of 128 messages with ``AsyncSimpleConsumer``; ``--ack one`` acks each message alone,
``--ack many`` batches).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

from homing import AsyncProducer, AsyncSimpleConsumer, Message
from homing.testing import BrokerProcess

BODY = b"x" * 1024


async def pipelined(endpoint: str, seconds: float, callers: int, profile: cProfile.Profile | None) -> None:
    topic = "profile-pipelined"
    async with AsyncProducer(endpoint, topics=[topic]) as producer:
        await producer.send(Message(topic, BODY))
        latencies: list[float] = []
        state = {"measuring": False, "stop": False}

        async def caller() -> None:
            while not state["stop"]:
                started = time.perf_counter()
                await producer.send(Message(topic, BODY))
                if state["measuring"]:
                    latencies.append(time.perf_counter() - started)

        tasks = [asyncio.create_task(caller()) for _ in range(callers)]
        await asyncio.sleep(1.0)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        state["measuring"] = True
        if profile is not None:
            profile.enable()
        await asyncio.sleep(seconds)
        if profile is not None:
            profile.disable()
        state["measuring"] = False
        cpu1, wall1 = time.process_time(), time.perf_counter()
        count = len(latencies)
        state["stop"] = True
        await asyncio.gather(*tasks)
        report("pipelined", count, wall1 - wall0, cpu1 - cpu0, latencies)


async def single(endpoint: str, seconds: float, profile: cProfile.Profile | None) -> None:
    topic = "profile-single"
    async with AsyncProducer(endpoint, topics=[topic]) as producer:
        for _ in range(50):
            await producer.send(Message(topic, BODY))
        latencies: list[float] = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if profile is not None:
            profile.enable()
        while time.perf_counter() - wall0 < seconds:
            started = time.perf_counter()
            await producer.send(Message(topic, BODY))
            latencies.append(time.perf_counter() - started)
        if profile is not None:
            profile.disable()
        cpu1, wall1 = time.process_time(), time.perf_counter()
        report("single", len(latencies), wall1 - wall0, cpu1 - cpu0, latencies)


async def concurrent(endpoint: str, seconds: float, producers: int, profile: cProfile.Profile | None) -> None:
    topic = "profile-concurrent"
    clients = [AsyncProducer(endpoint, topics=[topic]) for _ in range(producers)]
    try:
        for producer in clients:
            await producer.start()
            for _ in range(20):
                await producer.send(Message(topic, BODY))
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def sender(producer: AsyncProducer) -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await producer.send(Message(topic, BODY))
                latencies.append(time.perf_counter() - started)

        cpu0, wall0 = time.process_time(), time.perf_counter()
        if profile is not None:
            profile.enable()
        await asyncio.gather(*(sender(producer) for producer in clients))
        if profile is not None:
            profile.disable()
        cpu1, wall1 = time.process_time(), time.perf_counter()
        report(f"concurrent ({producers} producers)", len(latencies), wall1 - wall0, cpu1 - cpu0, latencies)
    finally:
        for producer in clients:
            await producer.close()


async def raw_single(endpoint: str, seconds: float) -> None:
    """The floor: SendMessage on the generated stub, one prebuilt message per call (fresh id)."""
    import grpc.aio

    from homing.protocol import definition_pb2, service_pb2, service_pb2_grpc

    topic = "profile-single"
    async with AsyncProducer(endpoint, topics=[topic]) as producer:  # creates the topic
        await producer.send(Message(topic, BODY))
        metadata = producer._session.metadata()
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub = service_pb2_grpc.MessagingServiceStub(channel)
        sequence = 0

        def request() -> service_pb2.SendMessageRequest:
            nonlocal sequence
            sequence += 1
            return service_pb2.SendMessageRequest(
                messages=[
                    definition_pb2.Message(
                        topic=definition_pb2.Resource(name=topic),
                        system_properties=definition_pb2.SystemProperties(
                            message_id=f"RAW{sequence:031d}", message_type=definition_pb2.NORMAL
                        ),
                        body=BODY,
                    )
                ]
            )

        for _ in range(50):
            await stub.SendMessage(request(), metadata=metadata, timeout=10)
        latencies: list[float] = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        while time.perf_counter() - wall0 < seconds:
            started = time.perf_counter()
            await stub.SendMessage(request(), metadata=metadata, timeout=10)
            latencies.append(time.perf_counter() - started)
        cpu1, wall1 = time.process_time(), time.perf_counter()
        report("raw single", len(latencies), wall1 - wall0, cpu1 - cpu0, latencies)


async def consume(endpoint: str, count: int, ack: str, profile: cProfile.Profile | None) -> None:
    topic = "profile-consume"
    group = "profile-group"
    consumer = AsyncSimpleConsumer(endpoint, group=group, subscriptions={topic: "*"}, await_duration_s=1)
    await consumer.start()  # the subscription exists before the backlog
    try:
        async with AsyncProducer(endpoint, topics=[topic]) as producer:
            sent = 0
            while sent < count:
                chunk = min(1024, count - sent)
                await asyncio.gather(*(producer.send(Message(topic, BODY)) for _ in range(chunk)))
                sent += chunk
        acked = [0]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if profile is not None:
            profile.enable()

        async def receiver() -> None:
            while acked[0] < count:
                messages = await consumer.receive(max_messages=128, invisible_duration=300)
                if not messages:
                    return
                if ack == "many":
                    await consumer.ack_many(messages)
                else:
                    await asyncio.gather(*(consumer.ack(message) for message in messages))
                acked[0] += len(messages)

        await asyncio.gather(*(receiver() for _ in range(4)))
        if profile is not None:
            profile.disable()
        cpu1, wall1 = time.process_time(), time.perf_counter()
        report(f"consume (ack {ack})", acked[0], wall1 - wall0, cpu1 - cpu0, [])
    finally:
        await consumer.close()


def report(mode: str, count: int, wall: float, cpu: float, latencies: list[float]) -> None:
    p50 = f"{statistics.median(latencies) * 1000:.2f} ms" if latencies else "-"
    print(
        f"{mode}: {count} msgs in {wall:.2f} s = {count / wall:,.0f} msgs/s, p50 {p50}, "
        f"client CPU {cpu / max(count, 1) * 1e6:.1f} us/msg ({cpu / wall * 100:.0f}% of a core)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("mode", choices=["pipelined", "single", "concurrent", "raw-single", "consume"])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--callers", type=int, default=1024)
    parser.add_argument("--producers", type=int, default=16)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--ack", choices=["one", "many"], default="one")
    parser.add_argument("--cprofile", action="store_true", help="print a cProfile of the window")
    parser.add_argument("--sort", default="tottime", help="cProfile order (tottime, ncalls, cumtime...)")
    parser.add_argument("--endpoint", help="use a running broker instead of starting one")
    args = parser.parse_args()
    # Timed by this thread's CPU time, not the wall clock: on a shared machine, time the thread
    # spends descheduled or waiting for the interpreter lock would otherwise land on whatever ran.
    profile = cProfile.Profile(time.thread_time) if args.cprofile else None
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="homing-client-profile-") as directory:
        broker = None
        endpoint = args.endpoint
        if endpoint is None:
            broker = BrokerProcess(Path(directory) / "data", options={"flush_mode": "sync"}).start()
            endpoint = broker.endpoint
        try:
            if args.mode == "pipelined":
                asyncio.run(pipelined(endpoint, args.seconds, args.callers, profile))
            elif args.mode == "raw-single":
                asyncio.run(raw_single(endpoint, args.seconds))
            elif args.mode == "single":
                asyncio.run(single(endpoint, args.seconds, profile))
            elif args.mode == "concurrent":
                asyncio.run(concurrent(endpoint, args.seconds, args.producers, profile))
            else:
                asyncio.run(consume(endpoint, args.count, args.ack, profile))
        finally:
            if broker is not None:
                broker.stop()
    if profile is not None:
        pstats.Stats(profile, stream=sys.stdout).sort_stats(args.sort).print_stats(30)


if __name__ == "__main__":
    main()
