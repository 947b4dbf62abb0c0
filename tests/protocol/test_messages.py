"""Round trips and shape checks of Homing's generated protocol modules."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from homing.protocol import definition_pb2, service_pb2, service_pb2_grpc


def test_send_message_request_round_trip() -> None:
    request = service_pb2.SendMessageRequest(
        messages=[
            definition_pb2.Message(
                topic=definition_pb2.Resource(resource_namespace="tenant-a", name="orders"),
                user_properties={"region": "eu", "empty": ""},
                system_properties=definition_pb2.SystemProperties(
                    tag="created",
                    keys=["k1", "k2"],
                    message_id="0A0B0C",
                    body_encoding=definition_pb2.IDENTITY,
                    message_type=definition_pb2.DELAY,
                    born_timestamp=timestamp_pb2.Timestamp(seconds=1_700_000_000),
                    born_host="127.0.0.1",
                    delivery_timestamp=timestamp_pb2.Timestamp(seconds=1_700_000_060),
                    delivery_attempt=0,
                ),
                body=b"hello\x00world",
            ),
            definition_pb2.Message(
                topic=definition_pb2.Resource(name="orders"),
                system_properties=definition_pb2.SystemProperties(message_id="0A0B0D"),
            ),
        ]
    )
    wire = request.SerializeToString()
    decoded = service_pb2.SendMessageRequest.FromString(wire)

    assert decoded == request
    first, second = decoded.messages
    assert first.topic.resource_namespace == "tenant-a"
    assert dict(first.user_properties) == {"region": "eu", "empty": ""}
    assert first.body == b"hello\x00world"
    props = first.system_properties
    assert list(props.keys) == ["k1", "k2"]
    assert props.message_type == definition_pb2.DELAY
    assert props.delivery_timestamp.seconds == 1_700_000_060
    # proto3 `optional`: an explicit zero is still present; an unset field is not.
    assert props.HasField("delivery_attempt") and props.delivery_attempt == 0
    assert props.HasField("tag")
    assert not props.HasField("message_group")
    assert not second.system_properties.HasField("tag")
    assert second.body == b""


def test_oneofs_and_enum_numbers() -> None:
    command = service_pb2.TelemetryCommand(
        settings=definition_pb2.Settings(
            client_type=definition_pb2.PRODUCER,
            publishing=definition_pb2.Publishing(topics=[definition_pb2.Resource(name="t")]),
        )
    )
    decoded = service_pb2.TelemetryCommand.FromString(command.SerializeToString())
    assert decoded.WhichOneof("command") == "settings"
    assert decoded.settings.WhichOneof("pub_sub") == "publishing"
    assert not decoded.HasField("status")

    assert definition_pb2.OK == 20000
    assert definition_pb2.MESSAGE_NOT_FOUND == 40401
    assert definition_pb2.FAILED_TO_CONSUME_MESSAGE == 60000


def test_messaging_service_rpcs() -> None:
    service = service_pb2.DESCRIPTOR.services_by_name["MessagingService"]
    kinds = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    unary = (False, False)
    assert kinds == {
        "QueryRoute": unary,
        "Heartbeat": unary,
        "SendMessage": unary,
        "QueryAssignment": unary,
        "ReceiveMessage": (False, True),
        "AckMessage": unary,
        "ForwardMessageToDeadLetterQueue": unary,
        "PullMessage": (False, True),
        "UpdateOffset": unary,
        "GetOffset": unary,
        "QueryOffset": unary,
        "EndTransaction": unary,
        "Telemetry": (True, True),
        "NotifyClientTermination": unary,
        "ChangeInvisibleDuration": unary,
        "RecallMessage": unary,
        "SyncLiteSubscription": unary,
    }
    assert service.full_name == "apache.rocketmq.v2.MessagingService"
    assert hasattr(service_pb2_grpc, "MessagingServiceServicer")
    assert hasattr(service_pb2_grpc, "add_MessagingServiceServicer_to_server")
