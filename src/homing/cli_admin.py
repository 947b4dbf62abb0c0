"""``homing admin``: mqadmin-like verbs against a running broker's admin HTTP API.

Every verb prints a readable summary, or the API's JSON with ``--json`` (for scripts). The broker
is found at ``--server`` (default: ``http://`` + the ``admin_listen`` setting, so
``HOMING_ADMIN_LISTEN`` works here as it does for the broker). Exit codes: 0 success, 1 the broker
answered with an error (printed), 2 usage errors or an unreachable broker.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

import click

__all__ = ["admin"]

REQUEST_TIMEOUT_S = 30.0


class _Unreachable(click.ClickException):
    exit_code = 2


class _Client:
    def __init__(self, server: str, credentials: str | None, as_json: bool) -> None:
        self.server = server.rstrip("/")
        self.credentials = credentials
        self.as_json = as_json

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.server + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.credentials:
            token = base64.b64encode(self.credentials.encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            try:
                detail = json.loads(error.read())["error"]
                message = f"{detail['code']}: {detail['message']}"
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {error.code}"
            raise click.ClickException(message) from error
        except (urllib.error.URLError, OSError) as error:
            raise _Unreachable(f"cannot reach the broker admin API at {self.server}: {error}") from error

    def show(self, result: Any, lines: list[str] | None = None) -> None:
        if self.as_json or lines is None:
            click.echo(json.dumps(result, indent=2, sort_keys=True))
        else:
            for line in lines:
                click.echo(line)


def _default_server() -> str:
    listen = os.environ.get("HOMING_ADMIN_LISTEN", "127.0.0.1:8082")
    return listen if listen.startswith("http") else f"http://{listen}"


@click.group()
@click.option(
    "--server", default=_default_server, show_default="http://$HOMING_ADMIN_LISTEN or 127.0.0.1:8082"
)
@click.option(
    "--credentials", "credentials", default=None, metavar="AK:SK", help="Basic auth for the admin API."
)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@click.pass_context
def admin(context: click.Context, server: str, credentials: str | None, as_json: bool) -> None:
    """Inspect and manage a running broker."""
    context.obj = _Client(server, credentials, as_json)


# ----------------------------------------------------------------------------- topics


@admin.group()
def topic() -> None:
    """Topics: list, describe, create."""


@topic.command("list")
@click.pass_obj
def topic_list(client: _Client) -> None:
    result = client.call("GET", "/v1/topics")
    client.show(result, [f"{t['name']}\tqueues={t['queue_count']}\tmessages={t['messages']}" for t in result])


@topic.command("describe")
@click.argument("name")
@click.pass_obj
def topic_describe(client: _Client, name: str) -> None:
    result = client.call("GET", f"/v1/topics/{quote(name, safe='')}")
    lines = [
        f"topic {result['name']}: {result['queue_count']} queues, types {', '.join(result['message_types'])}"
    ]
    lines += [
        f"  queue {q['queue_id']}: offsets [{q['min_offset']}, {q['max_offset']})" for q in result["queues"]
    ]
    client.show(result, lines)


@topic.command("create")
@click.argument("name")
@click.option("--queues", "queue_count", type=click.IntRange(1, 1024), default=8, show_default=True)
@click.option("--types", default=None, help="Comma-separated: normal,fifo,delay,transaction (default all).")
@click.pass_obj
def topic_create(client: _Client, name: str, queue_count: int, types: str | None) -> None:
    body: dict[str, Any] = {"name": name, "queue_count": queue_count}
    if types:
        body["message_types"] = [item.strip() for item in types.split(",") if item.strip()]
    result = client.call("POST", "/v1/topics", body)
    client.show(result, [f"topic {result['name']} ready with {result['queue_count']} queues"])


# ----------------------------------------------------------------------------- groups


@admin.group()
def group() -> None:
    """Consumer groups: list, describe (progress, lag, in flight), create."""


@group.command("list")
@click.pass_obj
def group_list(client: _Client) -> None:
    result = client.call("GET", "/v1/groups")
    client.show(
        result,
        [f"{g['name']}\tfifo={g['fifo']}\tlag={g['lag']}\tin_flight={g['in_flight']}" for g in result],
    )


@group.command("describe")
@click.argument("name")
@click.pass_obj
def group_describe(client: _Client, name: str) -> None:
    result = client.call("GET", f"/v1/groups/{quote(name, safe='')}")
    lines = [
        f"group {result['name']}: fifo={result['fifo']} max_attempts={result['max_delivery_attempts']} "
        f"lag={result['lag']} in_flight={result['in_flight']}",
        f"  backoff (s): {' '.join(str(value) for value in result['backoff_s'])}",
    ]
    lines += [
        f"  {q['topic']}/{q['queue_id']}: committed {q['committed_offset']} of {q['max_offset']} "
        f"(lag {q['lag']}, in flight {q['in_flight']})"
        for q in result["queues"]
    ]
    client.show(result, lines)


@group.command("create")
@click.argument("name")
@click.option("--fifo/--no-fifo", default=None)
@click.option("--max-attempts", type=click.IntRange(1, 1000), default=None)
@click.option("--backoff", default=None, help="Seconds between attempts, e.g. '10 30 60'.")
@click.option("--consume-from", type=click.Choice(["earliest", "latest", "timestamp"]), default=None)
@click.option("--consume-from-ms", type=int, default=None)
@click.pass_obj
def group_create(
    client: _Client,
    name: str,
    fifo: bool | None,
    max_attempts: int | None,
    backoff: str | None,
    consume_from: str | None,
    consume_from_ms: int | None,
) -> None:
    body: dict[str, Any] = {"name": name, "fifo": fifo, "max_delivery_attempts": max_attempts,
                            "consume_from": consume_from, "consume_from_ms": consume_from_ms}  # fmt: skip
    if backoff:
        try:
            body["backoff_s"] = [float(item) for item in backoff.replace(",", " ").split()]
        except ValueError as error:
            raise click.BadParameter(f"--backoff takes seconds, got {backoff!r}") from error
    result = client.call(
        "POST", "/v1/groups", {key: value for key, value in body.items() if value is not None}
    )
    client.show(result, [f"group {result['name']} ready (fifo={result['fifo']})"])


# ----------------------------------------------------------------------------- messages


@admin.group()
def message() -> None:
    """Messages: get by id, find by key."""


def _message_line(item: dict[str, Any]) -> str:
    return (
        f"{item['message_id']}\t{item['topic']}/{item['queue_id']}@{item['queue_offset']}\t"
        f"tag={item['tag']}\tkeys={','.join(item['keys'])}\tbytes={item['body_size']}"
    )


@message.command("get")
@click.argument("message_id")
@click.pass_obj
def message_get(client: _Client, message_id: str) -> None:
    result = client.call("GET", f"/v1/messages/{quote(message_id, safe='')}")
    client.show(result, [_message_line(item) for item in result])


@message.command("find")
@click.argument("key")
@click.option("--begin-ms", type=int, default=0)
@click.option("--end-ms", type=int, default=2**62)
@click.option("--limit", type=click.IntRange(1, 1000), default=64)
@click.pass_obj
def message_find(client: _Client, key: str, begin_ms: int, end_ms: int, limit: int) -> None:
    query = urlencode({"key": key, "begin_ms": begin_ms, "end_ms": end_ms, "limit": limit})
    result = client.call("GET", f"/v1/messages?{query}")
    client.show(result, [_message_line(item) for item in result] or ["no messages"])


# ----------------------------------------------------------------------------- dead letters


@admin.group()
def dlq() -> None:
    """Dead-letter queues: list, resend."""


@dlq.command("list")
@click.argument("group_name")
@click.option("--limit", type=click.IntRange(1, 1000), default=100)
@click.pass_obj
def dlq_list(client: _Client, group_name: str, limit: int) -> None:
    result = client.call("GET", f"/v1/dlq/{quote(group_name, safe='')}?limit={limit}")
    client.show(
        result,
        [f"{_message_line(item)}\tfrom={item['origin_topic']}\tattempts={item['attempts']}\t{item['reason']}"
         for item in result] or ["dead-letter queue is empty"],
    )  # fmt: skip


@dlq.command("resend")
@click.argument("group_name")
@click.argument("message_id")
@click.pass_obj
def dlq_resend(client: _Client, group_name: str, message_id: str) -> None:
    result = client.call("POST", f"/v1/dlq/{quote(group_name, safe='')}/resend", {"message_id": message_id})
    client.show(result, [f"resent {result['message_id']} to {result['topic']}"])


# ----------------------------------------------------------------------------- transactions


@admin.group()
def transaction() -> None:
    """Unresolved transactions (checks exhausted are parked, never dropped): list, commit, rollback."""


@transaction.command("list")
@click.pass_obj
def transaction_list(client: _Client) -> None:
    result = client.call("GET", "/v1/transactions")
    rows = result.get("transactions", result) if isinstance(result, dict) else result
    client.show(
        result,
        [f"{t['transaction_id']}\t{t['topic']}\t{t['message_id']}\tchecks={t['checks']}\tparked={t['parked']}"
         for t in rows] or ["no unresolved transactions"],
    )  # fmt: skip


@transaction.command("commit")
@click.argument("transaction_id")
@click.pass_obj
def transaction_commit(client: _Client, transaction_id: str) -> None:
    result = client.call("POST", f"/v1/transactions/{quote(transaction_id, safe='')}/commit", {})
    client.show(result, [f"committed {transaction_id}"])


@transaction.command("rollback")
@click.argument("transaction_id")
@click.pass_obj
def transaction_rollback(client: _Client, transaction_id: str) -> None:
    result = client.call("POST", f"/v1/transactions/{quote(transaction_id, safe='')}/rollback", {})
    client.show(result, [f"rolled back {transaction_id}"])
