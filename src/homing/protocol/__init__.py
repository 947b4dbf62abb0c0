"""The RocketMQ 5 gRPC protocol (package ``apache.rocketmq.v2``) as Python modules, and Homing's
own extensions to it (package ``homing.v1``, served only by Homing brokers).

The ``.proto`` sources live in ``proto/``; ``generated/`` holds the protoc output (with ``.pyi``
stubs), rebuilt by ``scripts/gen-protocol``. Import the modules from here::

    from homing.protocol import definition_pb2, service_pb2, service_pb2_grpc
    from homing.protocol import extensions_pb2, extensions_pb2_grpc
"""

from homing.protocol.generated.apache.rocketmq.v2 import (
    admin_pb2,
    admin_pb2_grpc,
    definition_pb2,
    service_pb2,
    service_pb2_grpc,
)
from homing.protocol.generated.homing.v1 import extensions_pb2, extensions_pb2_grpc

__all__ = [
    "admin_pb2",
    "admin_pb2_grpc",
    "definition_pb2",
    "extensions_pb2",
    "extensions_pb2_grpc",
    "service_pb2",
    "service_pb2_grpc",
]
