"""Protocol statuses: the broker's status names turned into the wire's numeric ``Code``.

The broker names a status by its ``Code`` enum name (``"INVALID_RECEIPT_HANDLE"``) and never
imports the protocol; this is the one place that turns such a name into its number. A name the
enum does not know (a typo, or a status newer than our protocol copy) is reported as
``INTERNAL_SERVER_ERROR`` with the original name kept in the message, so a client always gets
a code it understands. Messages are ours (one line, bounded); tracebacks never reach a client.
"""

from __future__ import annotations

from homing.broker.errors import BrokerError
from homing.protocol import definition_pb2

__all__ = [
    "MAX_STATUS_MESSAGE_CHARS",
    "code_number",
    "combined_status",
    "error_status",
    "ok_status",
    "status",
]

MAX_STATUS_MESSAGE_CHARS = 1024

_CODES: dict[str, definition_pb2.Code.ValueType] = {
    name: number for name, number in definition_pb2.Code.items() if name != "CODE_UNSPECIFIED"
}
_INTERNAL = _CODES["INTERNAL_SERVER_ERROR"]


def code_number(name: str) -> definition_pb2.Code.ValueType | None:
    """The wire number of the status ``name``, or None if the protocol has no such status."""
    return _CODES.get(name)


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    if len(line) > MAX_STATUS_MESSAGE_CHARS:
        line = line[: MAX_STATUS_MESSAGE_CHARS - 3] + "..."
    return line


def status(name: str, message: str) -> definition_pb2.Status:
    """``Status(code, message)``; an unknown ``name`` becomes ``INTERNAL_SERVER_ERROR``."""
    number = code_number(name)
    if number is None:
        return definition_pb2.Status(
            code=_INTERNAL, message=_one_line(f"{message} (unknown status {name!r})")
        )
    return definition_pb2.Status(code=number, message=_one_line(message))


def ok_status() -> definition_pb2.Status:
    return definition_pb2.Status(code=definition_pb2.OK, message="OK")


def error_status(error: BrokerError) -> definition_pb2.Status:
    return status(error.code, error.message)


def combined_status(entries: list[definition_pb2.Status]) -> definition_pb2.Status:
    """The overall status of a call with one status per entry (SendMessage, AckMessage).

    Every entry alike (all OK, or all the same error): that status, which is what a client that
    reads only the overall status (the Python producer) must see for its one message. Mixed:
    ``MULTIPLE_RESULTS``, and each entry says how it went.
    """
    if not entries:
        return ok_status()
    codes = {entry.code for entry in entries}
    if len(codes) == 1:
        return entries[0]
    failed = sum(1 for entry in entries if entry.code != definition_pb2.OK)
    return definition_pb2.Status(
        code=definition_pb2.MULTIPLE_RESULTS,
        message=f"{failed} of {len(entries)} entries failed: see each entry's status",
    )
