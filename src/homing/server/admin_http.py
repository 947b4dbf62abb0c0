"""The admin API over HTTP: small, JSON, on its own port (127.0.0.1:8082 by default).

A deliberately tiny HTTP/1.1 server on asyncio streams (one request per connection, explicit
limits on every size and time), so the broker needs no web framework. Routes map one to one onto
:class:`homing.broker.admin.Admin`; errors are JSON ``{"error": {"code", "message"}}`` with the
HTTP status that fits the broker status.

With credentials configured, every request must carry HTTP Basic auth with an access key and its
secret from the same credentials file the gRPC port uses.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from homing.broker.admin import Admin
from homing.broker.errors import BrokerError

__all__ = ["AdminHttpServer"]

log = logging.getLogger("homing.admin")

MAX_REQUEST_LINE_BYTES = 8 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 1024 * 1024
REQUEST_TIMEOUT_S = 30.0

_HTTP_STATUS = {
    "OK": 200,
    "BAD_REQUEST": 400,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "PAYLOAD_TOO_LARGE": 413,
    "TOO_MANY_REQUESTS": 429,
    "NOT_IMPLEMENTED": 501,
}
_REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 413: "Payload Too Large", 429: "Too Many Requests",
    500: "Internal Server Error", 501: "Not Implemented",
}  # fmt: skip

Handler = Callable[[Mapping[str, str], Mapping[str, list[str]], Any], Awaitable[Any]]


def http_status_for(code: str) -> int:
    if code in _HTTP_STATUS:
        return _HTTP_STATUS[code]
    if code.endswith("NOT_FOUND"):
        return 404
    if code.startswith(("ILLEGAL_", "INVALID_")) or code in ("MESSAGE_BODY_EMPTY",):
        return 400
    return 500


class _HttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _first(query: Mapping[str, list[str]], name: str, default: str | None = None) -> str:
    values = query.get(name)
    if not values:
        if default is None:
            raise _HttpError(400, "BAD_REQUEST", f"missing query parameter {name!r}")
        return default
    return values[0]


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError as error:
        raise _HttpError(400, "BAD_REQUEST", f"{name} must be an integer, got {text!r}") from error


class AdminHttpServer:
    def __init__(
        self, admin: Admin, host: str, port: int, credentials: Mapping[str, str] | None = None
    ) -> None:
        self.admin = admin
        self.host = host
        self.port = port
        self._credentials = dict(credentials) if credentials else None
        self._server: asyncio.base_events.Server | None = None
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._add_routes()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEADER_BYTES)
        sockets = self._server.sockets
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # ------------------------------------------------------------------ routes

    def _route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self._routes.append((method, re.compile("^" + pattern + "$"), handler))
            return handler

        return register

    def _add_routes(self) -> None:
        admin = self.admin
        route = self._route

        @route("GET", r"/v1/health")
        async def health(params: Mapping[str, str], query: Mapping[str, list[str]], body: Any) -> Any:
            store = admin.broker.store
            return {"status": "ok" if not store.fenced else "fenced", "write_offset": store.write_offset,
                    "flushed_offset": store.flushed_offset}  # fmt: skip

        @route("GET", r"/v1/topics")
        async def topics(params: Mapping[str, str], query: Mapping[str, list[str]], body: Any) -> Any:
            return admin.topics()

        @route("GET", r"/v1/topics/(?P<name>[^/]+)")
        async def topic(params: Mapping[str, str], query: Mapping[str, list[str]], body: Any) -> Any:
            return admin.topic(params["name"])

        @route("POST", r"/v1/topics")
        async def create_topic(params: Mapping[str, str], query: Mapping[str, list[str]], body: Any) -> Any:
            request = _object(body)
            return admin.create_topic(
                str(request.get("name", "")),
                queue_count=int(request.get("queue_count", 8)),
                message_types=request.get("message_types"),
            )

        @route("GET", r"/v1/groups")
        async def groups(params: Mapping[str, str], query: Mapping[str, list[str]], body: Any) -> Any:
            return admin.groups()

        @route("GET", r"/v1/groups/(?P<name>[^/]+)")
        async def group(params: Mapping[str, str], query: Mapping[str, list[str]], body: Any) -> Any:
            return admin.group(params["name"])

        @route("POST", r"/v1/groups")
        async def create_group(params: Mapping[str, str], query: Mapping[str, list[str]], body: Any) -> Any:
            request = _object(body)
            return admin.create_group(
                str(request.get("name", "")),
                fifo=request.get("fifo"),
                max_delivery_attempts=request.get("max_delivery_attempts"),
                backoff_s=request.get("backoff_s"),
                consume_from=request.get("consume_from"),
                consume_from_ms=request.get("consume_from_ms"),
            )

        @route("GET", r"/v1/messages/(?P<message_id>[^/]+)")
        async def message(params: Mapping[str, str], query: Mapping[str, list[str]], body: Any) -> Any:
            found = admin.message(params["message_id"])
            if not found:
                raise BrokerError("MESSAGE_NOT_FOUND", f"no message with id {params['message_id']!r}")
            return found

        @route("GET", r"/v1/messages")
        async def find(params: Mapping[str, str], query: Mapping[str, list[str]], body: Any) -> Any:
            return admin.find_by_key(
                _first(query, "key"),
                _int(_first(query, "begin_ms", "0"), "begin_ms"),
                _int(_first(query, "end_ms", str(2**62)), "end_ms"),
                _int(_first(query, "limit", "64"), "limit"),
            )

        @route("GET", r"/v1/dlq/(?P<group>[^/]+)")
        async def dead_letters(params: Mapping[str, str], query: Mapping[str, list[str]], body: Any) -> Any:
            return admin.dead_letters(params["group"], _int(_first(query, "limit", "100"), "limit"))

        @route("POST", r"/v1/dlq/(?P<group>[^/]+)/resend")
        async def resend(params: Mapping[str, str], query: Mapping[str, list[str]], body: Any) -> Any:
            return await admin.resend_dead_letter(params["group"], str(_object(body).get("message_id", "")))

        transactions = getattr(admin, "transactions", None)
        if transactions is not None:

            @route("GET", r"/v1/transactions")
            async def list_transactions(
                params: Mapping[str, str], query: Mapping[str, list[str]], body: Any
            ) -> Any:
                return admin.transactions()

            @route("POST", r"/v1/transactions/(?P<transaction_id>[^/]+)/(?P<decision>commit|rollback)")
            async def resolve(params: Mapping[str, str], query: Mapping[str, list[str]], body: Any) -> Any:
                return await admin.resolve_transaction(
                    params["transaction_id"], params["decision"] == "commit"
                )

    # ------------------------------------------------------------------ HTTP

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, payload = await asyncio.wait_for(self._handle(reader), REQUEST_TIMEOUT_S)
        except TimeoutError:
            status, payload = 408, {"error": {"code": "REQUEST_TIMEOUT", "message": "request took too long"}}
        except _HttpError as error:
            status, payload = error.status, {"error": {"code": error.code, "message": error.message}}
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()
            return
        data = json.dumps(payload, indent=None, default=str).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        )
        try:
            writer.write(head.encode() + data)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader) -> tuple[int, Any]:
        try:
            request_line = await reader.readuntil(b"\r\n")
        except (asyncio.LimitOverrunError, ValueError) as error:
            raise _HttpError(400, "BAD_REQUEST", "request line too long") from error
        if len(request_line) > MAX_REQUEST_LINE_BYTES:
            raise _HttpError(400, "BAD_REQUEST", "request line too long")
        parts = request_line.decode("latin-1").strip().split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _HttpError(400, "BAD_REQUEST", "malformed request line")
        method, target, _ = parts
        headers: dict[str, str] = {}
        total = 0
        while True:
            try:
                line = await reader.readuntil(b"\r\n")
            except (asyncio.LimitOverrunError, ValueError) as error:
                raise _HttpError(400, "BAD_REQUEST", "header line too long") from error
            total += len(line)
            if total > MAX_HEADER_BYTES:
                raise _HttpError(400, "BAD_REQUEST", "headers too large")
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        self._authorize(headers)
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise _HttpError(400, "BAD_REQUEST", "bad Content-Length")
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            raise _HttpError(413, "PAYLOAD_TOO_LARGE", f"body over {MAX_BODY_BYTES} bytes")
        raw = await reader.readexactly(length) if length else b""
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as error:
                raise _HttpError(400, "BAD_REQUEST", f"body is not JSON: {error}") from error
        url = urlsplit(target)
        query = parse_qs(url.query)
        path_matched = False
        for route_method, pattern, handler in self._routes:
            match = pattern.match(url.path)
            if match is None:
                continue
            path_matched = True
            if route_method != method:
                continue
            params = {key: unquote(value) for key, value in match.groupdict().items()}
            try:
                return 200, await handler(params, query, body)
            except _HttpError:
                raise
            except BrokerError as error:
                return http_status_for(error.code), {"error": {"code": error.code, "message": error.message}}
            except (KeyError, ValueError, TypeError) as error:
                return 400, {"error": {"code": "BAD_REQUEST", "message": f"bad request: {error}"}}
            except Exception:
                log.exception("admin request %s %s failed", method, url.path)
                return 500, {"error": {"code": "INTERNAL_SERVER_ERROR", "message": "internal error (logged)"}}
        if path_matched:
            raise _HttpError(405, "METHOD_NOT_ALLOWED", f"{method} is not allowed on {url.path}")
        raise _HttpError(404, "NOT_FOUND", f"no admin route {url.path}")

    def _authorize(self, headers: Mapping[str, str]) -> None:
        if self._credentials is None:
            return
        value = headers.get("authorization", "")
        if not value.lower().startswith("basic "):
            raise _HttpError(
                401, "UNAUTHORIZED", "admin API requires Basic auth with an access key and secret"
            )
        try:
            decoded = base64.b64decode(value[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as error:
            raise _HttpError(401, "UNAUTHORIZED", "malformed Basic auth") from error
        access_key, _, secret = decoded.partition(":")
        expected = self._credentials.get(access_key)
        if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
            raise _HttpError(401, "UNAUTHORIZED", "unknown access key or wrong secret")


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _HttpError(400, "BAD_REQUEST", "body must be a JSON object")
    return body
