"""Homing's protocol extensions, used when the broker serves them and skipped when it does not.

Theory of operation. A Homing broker serves ``homing.v1.Extensions`` beside the RocketMQ
``MessagingService`` (see ``src/homing/protocol/proto/homing/v1/extensions.proto``):

- ``ReceiveBatch``: ReceiveMessage's answer in one response instead of a frame per message;
- ``SendStream``: SendMessage calls carried over one long-lived stream per broker endpoint instead
  of a call each (about half the gRPC work per message, on both sides).

An Apache RocketMQ broker or proxy answers ``UNIMPLEMENTED``. That answer can only mean "not
served": nothing was received or stored, so the client makes the standard call instead, at once,
and remembers per endpoint (:class:`ExtensionSupport`) not to try again. Semantics are the
standard RPCs' in every case: the requests and answers are the same messages.

:class:`SendStream` keeps one stream to one endpoint, opened on first use with the client's
headers (checked by the broker once, at the opening). Opening waits for the broker's response
headers (a Homing broker sends them at once) before anything is written: a stream the broker
refuses (not served, or the headers refused) has then carried nothing, and the send is made as a
SendMessage call instead, which also reports a refusal exactly as the standard call does. (Writing
first would not do: gRPC reports a write racing the refusal as an INTERNAL error, outcome unknown.)
Each send writes one request with an id of its own and waits for the answer with that id, however
many other sends are in flight on the stream. When the stream fails, every send waiting on it
fails with the stream's error (retriable like the same failure of a SendMessage call: the outcome
is unknown, and a retry keeps the message id), and the next send opens a new stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Final

import grpc
import grpc.aio

from homing.client._errors import ClientStateError, transport_error
from homing.protocol import extensions_pb2, service_pb2

__all__ = ["ExtensionSupport", "SendStream", "StreamUnsupportedError"]

log = logging.getLogger("homing.client")

STREAM_CLOSE_TIMEOUT_S: Final = 2.0

_SendStreamCall = grpc.aio.StreamStreamCall[
    extensions_pb2.StreamedSendRequest, extensions_pb2.StreamedSendResponse
]


class ExtensionSupport:
    """Per broker endpoint: whether it serves Homing's extensions (unknown until it answers)."""

    def __init__(self) -> None:
        self._unsupported: set[str] = set()

    def usable(self, endpoint: str) -> bool:
        return endpoint not in self._unsupported

    def refused(self, endpoint: str) -> None:
        if endpoint not in self._unsupported:
            log.info("%s does not serve Homing's protocol extensions: using the standard RPCs", endpoint)
            self._unsupported.add(endpoint)


class StreamUnsupportedError(Exception):
    """The broker refused the stream: nothing was sent; make a SendMessage call instead.

    ``permanent``: the broker does not serve it at all (UNIMPLEMENTED), so never try it again there.
    """

    def __init__(self, permanent: bool) -> None:
        super().__init__("the broker does not serve SendStream" if permanent else "SendStream refused")
        self.permanent = permanent


def is_unimplemented(error: grpc.aio.AioRpcError) -> bool:
    return error.code() == grpc.StatusCode.UNIMPLEMENTED


class SendStream:
    """SendMessage calls over one ``homing.v1.Extensions/SendStream`` to one broker endpoint."""

    def __init__(self, open_stream: Callable[[], _SendStreamCall], endpoint: str) -> None:
        self._open_stream = open_stream
        self._endpoint = endpoint
        self._call: _SendStreamCall | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[service_pb2.SendMessageResponse]] = {}
        self._ids = itertools.count(1)
        self._write_lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()
        self._closed = False

    async def send(
        self, request: service_pb2.SendMessageRequest, *, timeout_s: float, what: str
    ) -> service_pb2.SendMessageResponse:
        """SendMessage's answer to ``request``; raises :class:`ClientError` as the call would, or
        :class:`StreamUnsupportedError` when the broker does not serve the stream (nothing sent)."""
        call = self._call if self._call is not None else await self._open()
        request_id = next(self._ids)
        future: asyncio.Future[service_pb2.SendMessageResponse] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            async with asyncio.timeout(timeout_s):
                async with self._write_lock:
                    if not future.done():  # the stream may have failed while this send queued
                        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                            # A failed write means a failed stream: its reader fails the future.
                            await call.write(
                                extensions_pb2.StreamedSendRequest(request_id=request_id, request=request)
                            )
                return await future
        except TimeoutError:
            raise transport_error(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer in time", what) from None
        except _StreamBroken as error:
            raise transport_error(error.code, error.details, what) from None
        finally:
            self._pending.pop(request_id, None)

    async def _open(self) -> _SendStreamCall:
        """The stream, opened if needed; raises :class:`StreamUnsupportedError` if refused."""
        async with self._open_lock:
            if self._closed:
                raise ClientStateError("the client is closed")
            if self._call is not None:
                return self._call
            call = self._open_stream()
            try:
                await call.initial_metadata()  # a Homing broker sends its headers at once
                refused = call.done()
            except grpc.aio.AioRpcError:
                refused = True
            if refused:
                code = await call.code()
                call.cancel()
                raise StreamUnsupportedError(permanent=code == grpc.StatusCode.UNIMPLEMENTED)
            self._call = call
            self._reader = asyncio.get_running_loop().create_task(
                self._read(call), name=f"homing send stream {self._endpoint}"
            )
            return call

    async def _read(self, call: _SendStreamCall) -> None:
        failure: BaseException = _StreamBroken(grpc.StatusCode.UNKNOWN, "the stream failed")
        try:
            async for answer in call:
                future = self._pending.pop(answer.request_id, None)
                if future is not None and not future.done():
                    future.set_result(answer.response)
            failure = _StreamBroken(grpc.StatusCode.UNAVAILABLE, "the stream ended before the answer")
        except grpc.aio.AioRpcError as error:
            failure = _StreamBroken(error.code(), error.details())
        except asyncio.CancelledError:
            failure = _StreamBroken(grpc.StatusCode.CANCELLED, "the client closed the stream")
            raise
        except Exception as error:  # an answer that does not parse: the stream is unusable
            failure = _StreamBroken(grpc.StatusCode.UNKNOWN, f"the stream failed: {error!r}")
        finally:
            if self._call is call:
                self._call = None
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(failure)
            self._pending.clear()

    async def close(self) -> None:
        """End the stream: the broker answers what it read, then ends it too."""
        self._closed = True
        call, reader = self._call, self._reader
        if call is None or reader is None:
            return
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError):
            async with asyncio.timeout(STREAM_CLOSE_TIMEOUT_S):
                async with self._write_lock:
                    await call.done_writing()
                await asyncio.shield(reader)
        call.cancel()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


class _StreamBroken(Exception):
    """The stream ended with this send unanswered: its outcome is unknown, as after a broken call."""

    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        super().__init__(f"{code.name}: {details or ''}")
        self.code = code
        self.details = details
