"""Dump protobuf schemas (messages, enums, services) as plain JSON-able data.

Used by test_wire_compat.py to compare Homing's protocol definitions with those shipped in the
official RocketMQ client. The two sets of generated modules register the same full names, so they
cannot share an interpreter's descriptor pool: this file imports nothing from Homing and also
runs as a script inside the official client's venv::

    python protocol_descriptors.py rocketmq.grpc_protocol.definition_pb2 ...

which prints the dump of the named modules as JSON on stdout.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from google.protobuf import descriptor_pb2

FieldDump = dict[str, Any]
MessageDump = dict[str, Any]
Dump = dict[str, dict[str, Any]]


def _field(message: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto) -> FieldDump:
    oneof = message.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None
    return {
        "number": field.number,
        "label": descriptor_pb2.FieldDescriptorProto.Label.Name(field.label),
        "type": descriptor_pb2.FieldDescriptorProto.Type.Name(field.type),
        "type_name": field.type_name,
        "oneof": oneof,
        "proto3_optional": field.proto3_optional,
    }


def _enum(scope: str, enum: descriptor_pb2.EnumDescriptorProto, out: Dump) -> None:
    out["enums"][f"{scope}.{enum.name}"] = {value.name: value.number for value in enum.value}


def _message(scope: str, message: descriptor_pb2.DescriptorProto, out: Dump) -> None:
    name = f"{scope}.{message.name}"
    out["messages"][name] = {
        "map_entry": message.options.map_entry,
        "fields": {field.name: _field(message, field) for field in message.field},
    }
    for nested in message.nested_type:
        _message(name, nested, out)
    for enum in message.enum_type:
        _enum(name, enum, out)


def dump_modules(modules: Iterable[ModuleType]) -> Dump:
    """Return {"messages": ..., "enums": ..., "services": ...} keyed by fully qualified name."""
    out: Dump = {"messages": {}, "enums": {}, "services": {}}
    for module in modules:
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        scope = f".{proto.package}" if proto.package else ""
        for message in proto.message_type:
            _message(scope, message, out)
        for enum in proto.enum_type:
            _enum(scope, enum, out)
        for service in proto.service:
            out["services"][f"{scope}.{service.name}"] = {
                method.name: {
                    "input": method.input_type,
                    "output": method.output_type,
                    "client_streaming": method.client_streaming,
                    "server_streaming": method.server_streaming,
                }
                for method in service.method
            }
    return out


def main(argv: list[str]) -> None:
    modules = [importlib.import_module(name) for name in argv]
    json.dump(dump_modules(modules), sys.stdout, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
