"""How the client reaches brokers: one gRPC channel per broker endpoint.

The clients never make channels themselves; they ask a :class:`Transport` for the stub of an
endpoint. The default, :class:`GrpcTransport`, dials with grpc.aio (TLS when configured). Passing
another transport lets an application route endpoints elsewhere (a local tunnel, an in-process
test server) without touching the clients. A transport that also has ``extensions_stub`` (as
:class:`GrpcTransport` does) lets the clients use Homing's protocol extensions where the broker
serves them; without it they use only the standard RPCs.
"""

from __future__ import annotations

from typing import Final, Protocol

import grpc
import grpc.aio

from homing.client._config import ClientConfig, Endpoints
from homing.protocol import extensions_pb2_grpc, service_pb2_grpc

__all__ = ["GrpcTransport", "Transport"]

# Large enough for a 4 MiB body batch plus framing, and for bodies a broker allows beyond that.
MAX_MESSAGE_BYTES: Final = 130 * 1024 * 1024


class Transport(Protocol):
    """Gives the stub to call a broker endpoint with, and releases its connections on close."""

    def stub(self, endpoints: Endpoints) -> service_pb2_grpc.MessagingServiceAsyncStub: ...

    async def close(self) -> None: ...


class GrpcTransport:
    """grpc.aio channels, made on first use per endpoint and closed together.

    Must be used from one event loop (grpc.aio channels belong to the loop they were made on).
    """

    def __init__(self, *, tls: bool = False, root_certificates: bytes | None = None) -> None:
        self._tls = tls
        self._root_certificates = root_certificates
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, service_pb2_grpc.MessagingServiceAsyncStub] = {}
        self._extension_stubs: dict[str, extensions_pb2_grpc.ExtensionsAsyncStub] = {}
        self._closed = False

    @classmethod
    def from_config(cls, config: ClientConfig) -> GrpcTransport:
        root = None
        if config.tls_ca_file is not None:
            with open(config.tls_ca_file, "rb") as file:
                root = file.read()
        return cls(tls=config.tls, root_certificates=root)

    def stub(self, endpoints: Endpoints) -> service_pb2_grpc.MessagingServiceAsyncStub:
        assert not self._closed, "transport used after close"
        target = endpoints.grpc_target
        stub = self._stubs.get(target)
        if stub is None:
            stub = self._stubs[target] = service_pb2_grpc.MessagingServiceStub(self._channel(target))
        return stub

    def extensions_stub(self, endpoints: Endpoints) -> extensions_pb2_grpc.ExtensionsAsyncStub:
        """The stub of Homing's extensions (``homing.v1.Extensions``), on the endpoint's channel."""
        assert not self._closed, "transport used after close"
        target = endpoints.grpc_target
        stub = self._extension_stubs.get(target)
        if stub is None:
            stub = self._extension_stubs[target] = extensions_pb2_grpc.ExtensionsStub(self._channel(target))
        return stub

    def _channel(self, target: str) -> grpc.aio.Channel:
        channel = self._channels.get(target)
        if channel is None:
            options = [
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ]
            if self._tls:
                credentials = grpc.ssl_channel_credentials(root_certificates=self._root_certificates)
                channel = grpc.aio.secure_channel(target, credentials, options=options)
            else:
                channel = grpc.aio.insecure_channel(target, options=options)
            self._channels[target] = channel
        return channel

    async def close(self) -> None:
        self._closed = True
        channels = list(self._channels.values())
        self._channels.clear()
        self._stubs.clear()
        self._extension_stubs.clear()
        for channel in channels:
            await channel.close()
