"""Serve an in-process broker over gRPC on 127.0.0.1, so real clients can talk to a broker whose
disk is simulated (a slow or failing fsync) and whose servicer is reachable from the test."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from homing.broker.broker import Broker
from homing.broker.transactions import CheckRequest
from homing.clock import Clock
from homing.config import Address
from homing.protocol import extensions_pb2_grpc, service_pb2_grpc
from homing.server.servicer import MessagingServicer

__all__ = ["GrpcFront", "serve_grpc"]


@dataclass
class GrpcFront:
    server: grpc.aio.Server
    servicer: MessagingServicer
    endpoint: str

    async def stop(self) -> None:
        self.servicer.begin_shutdown()
        await self.server.stop(0.5)


async def serve_grpc(broker: Broker, clock: Clock, *, long_polling_timeout_s: float = 1.0) -> GrpcFront:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 8 << 20)])
    port = server.add_insecure_port("127.0.0.1:0")
    servicer = MessagingServicer(
        broker,
        advertise=Address("127.0.0.1", port),
        long_polling_timeout_s=long_polling_timeout_s,
        clock=clock,
    )
    service_pb2_grpc.add_MessagingServiceServicer_to_server(servicer, server)
    # Homing's client uses the extension RPCs when the broker offers them: serve them here too, so
    # in-process fault runs cover the same paths as a real broker.
    extensions_pb2_grpc.add_ExtensionsServicer_to_server(servicer, server)

    async def check_back(request: CheckRequest) -> bool:
        asked = await servicer.telemetry.recover_orphaned_transaction(
            request.message, request.transaction_id, topic=request.topic
        )
        return asked is not None

    broker.transaction_checker = check_back
    await server.start()
    return GrpcFront(server, servicer, f"127.0.0.1:{port}")
