"""The RocketMQ 5 gRPC protocol (package ``apache.rocketmq.v2``) as Python modules.

The ``.proto`` sources live in ``proto/``; ``generated/`` holds the protoc output (with ``.pyi``
stubs), rebuilt by ``scripts/gen-protocol``. Import the modules from here::

    from homing.protocol import definition_pb2, service_pb2, service_pb2_grpc
"""

from homing.protocol.generated.apache.rocketmq.v2 import (
    admin_pb2,
    admin_pb2_grpc,
    definition_pb2,
    service_pb2,
    service_pb2_grpc,
)

__all__ = [
    "admin_pb2",
    "admin_pb2_grpc",
    "definition_pb2",
    "service_pb2",
    "service_pb2_grpc",
]
