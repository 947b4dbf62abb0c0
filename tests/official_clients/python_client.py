"""Drives the official Apache RocketMQ 5 Python client (PyPI ``rocketmq-python-client``) for tests.

Run it with the official client's own interpreter, never Homing's (the two register the same protobuf
names)::

    .venv-rocketmq/bin/python -I tests/official_clients/python_client.py ACTION 'JSON-ARGUMENTS'

JSON-ARGUMENTS is a JSON object, ``-`` to read it from standard input, or ``@path`` to read it from a
file. Standard output carries only events, one JSON object per line; everything else (the client's
own log lines go to ``$HOME/logs/rocketmq_python/``) goes to standard error or to files. Exit status:
0 the action completed, 1 it failed (the last line is an ``error`` event), 2 bad arguments, 3 the
watchdog (``timeout_s``) fired. tests/official_clients/README.md documents the actions and events;
tests/official_clients/node/client.js implements the same interface with the official Node client.

This file must never import ``homing``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn, TextIO

# Events own the real standard output; anything else that prints lands on standard error.
_EVENTS: TextIO = sys.stdout
sys.stdout = sys.stderr
_EMIT_LOCK = threading.Lock()

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_WATCHDOG = 3

COMMON_KEYS = frozenset(
    {"endpoint", "namespace", "access_key", "secret_key", "request_timeout_s", "tls", "timeout_s"}
)
ACTION_KEYS: dict[str, frozenset[str]] = {
    "produce": frozenset({"topic", "messages", "allow_failures", "graceful_shutdown"}),
    "produce-transaction": frozenset(
        {"topic", "messages", "decision", "check_answer", "duration_s", "allow_failures", "graceful_shutdown"}
    ),
    "recall": frozenset({"topic", "recall_handle"}),
    "simple-consume": frozenset(
        {
            "group",
            "topic",
            "filter",
            "invisible_duration_s",
            "await_duration_s",
            "max_messages",
            "duration_s",
            "action",
            "ack_from_attempt",
            "change_invisible_s",
            "stop_after_received",
            "stop_after_acks",
            "max_consecutive_errors",
            "emit_body",
            "graceful_shutdown",
        }
    ),
    "push-consume": frozenset(
        {
            "group",
            "topic",
            "filter",
            "behaviour",
            "fail_first_n",
            "fail_with",
            "consume_delay_ms",
            "duration_s",
            "stop_after_successes",
            "linger_s",
            "threads",
            "emit_body",
            "graceful_shutdown",
        }
    ),
}
MESSAGE_KEYS = frozenset(
    {
        "body",
        "body_base64",
        "body_size",
        "tag",
        "keys",
        "properties",
        "message_group",
        "delivery_timestamp_ms",
        "decision",
    }
)
SIMPLE_ACTIONS = {"ack": 1, "none": None, "ack-on-retry": 2, "change-invisible": 2}


class UsageError(Exception):
    """The command line or the JSON arguments are wrong."""


class ActionFailed(Exception):
    """The action ran but did not achieve what it was asked to."""


def emit(event: str, **fields: Any) -> None:
    line = json.dumps({"event": event, **fields}, default=str)
    with _EMIT_LOCK:
        _EVENTS.write(line + "\n")
        _EVENTS.flush()


def finish(code: int) -> NoReturn:
    with _EMIT_LOCK:
        _EVENTS.flush()
        sys.stderr.flush()
        # The client leaves non-daemon threads and channels behind: leave without waiting for them.
        os._exit(code)


def one_line(text: str) -> str:
    return " ".join(text.split())


def error_fields(exc: BaseException) -> dict[str, Any]:
    fields: dict[str, Any] = {"error": one_line(str(exc)) or repr(exc), "error_type": type(exc).__name__}
    code = getattr(exc, "code", None)
    if callable(code):  # grpc errors: code() is a grpc.StatusCode
        try:
            status = code()
            fields["code"] = getattr(status, "name", str(status))
        except Exception:
            pass
    elif isinstance(code, int | str):
        fields["code"] = code
    # The client sometimes masks an error with another one raised while cleaning up (a PushConsumer
    # that got no settings fails with an AttributeError): keep the original.
    cause = exc.__cause__ or exc.__context__
    if cause is not None and not isinstance(exc, ActionFailed):
        fields["cause"] = f"{type(cause).__name__}: {one_line(str(cause))}"
    return fields


class Args:
    """Typed access to the JSON arguments of one action."""

    def __init__(self, values: dict[str, Any], where: str = "arguments") -> None:
        self.values = values
        self.where = where

    def _get(self, key: str, kinds: tuple[type, ...], default: Any) -> Any:
        value = self.values.get(key, default)
        if value is None:
            return default
        if isinstance(value, bool) and bool not in kinds:
            raise UsageError(f"{self.where}: {key} must be {'/'.join(k.__name__ for k in kinds)}")
        if not isinstance(value, kinds):
            raise UsageError(f"{self.where}: {key} must be {'/'.join(k.__name__ for k in kinds)}")
        return value

    def required_str(self, key: str) -> str:
        value = self._get(key, (str,), None)
        if not value:
            raise UsageError(f"{self.where}: {key} is required")
        return str(value)

    def opt_str(self, key: str, default: str | None = None) -> str | None:
        value = self._get(key, (str,), default)
        return None if value is None else str(value)

    def num(self, key: str, default: float) -> float:
        return float(self._get(key, (int, float), default))

    def optional_num(self, key: str) -> float | None:
        value = self._get(key, (int, float), None)
        return None if value is None else float(value)

    def integer(self, key: str, default: int) -> int:
        return int(self._get(key, (int,), default))

    def optional_int(self, key: str) -> int | None:
        value = self._get(key, (int,), None)
        return None if value is None else int(value)

    def flag(self, key: str, default: bool) -> bool:
        return bool(self._get(key, (bool,), default))

    def obj(self, key: str) -> dict[str, Any]:
        return dict(self._get(key, (dict,), {}))

    def items(self, key: str) -> list[Any]:
        return list(self._get(key, (list,), []))


def parse_command_line(argv: list[str]) -> tuple[str, Args]:
    if len(argv) not in (2, 3) or argv[1] in ("-h", "--help"):
        raise UsageError(f"usage: python_client.py {{{'|'.join(ACTION_KEYS)}}} JSON|-|@FILE")
    action = argv[1]
    if action not in ACTION_KEYS:
        raise UsageError(f"unknown action {action!r}; known: {', '.join(ACTION_KEYS)}")
    text = argv[2] if len(argv) == 3 else "{}"
    try:
        if text == "-":
            text = sys.stdin.read()
        elif text.startswith("@"):
            with open(text[1:], encoding="utf-8") as handle:
                text = handle.read()
        values = json.loads(text)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the JSON arguments: {exc}") from exc
    if not isinstance(values, dict):
        raise UsageError("the JSON arguments must be an object")
    unknown = sorted(set(values) - COMMON_KEYS - ACTION_KEYS[action])
    if unknown:
        raise UsageError(f"unknown argument(s) for {action}: {', '.join(unknown)}")
    args = Args(values)
    args.required_str("endpoint")
    for index, spec in enumerate(args.items("messages")):
        if not isinstance(spec, dict):
            raise UsageError(f"messages[{index}] must be an object")
        extra = sorted(set(spec) - MESSAGE_KEYS)
        if extra:
            raise UsageError(f"messages[{index}]: unknown key(s) {', '.join(extra)}")
    return action, args


def default_timeout(action: str, args: Args) -> float:
    if action in ("produce", "recall"):
        return 60.0
    if action == "produce-transaction":
        return args.num("duration_s", 0) + 60.0
    if action == "simple-consume":
        return args.num("duration_s", 10) + args.num("await_duration_s", 5) + 60.0
    return args.num("duration_s", 10) + 60.0


def start_watchdog(seconds: float) -> None:
    def fire() -> None:
        emit("error", error=f"watchdog: the action did not finish within {seconds:g} s", error_type="Timeout")
        finish(EXIT_WATCHDOG)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


# --- the client -------------------------------------------------------------------------------


def configuration(rmq: Any, args: Args) -> Any:
    credentials = rmq.Credentials(args.opt_str("access_key", "") or "", args.opt_str("secret_key", "") or "")
    # The client puts request_timeout into a protobuf Duration's whole seconds.
    timeout = max(1, math.ceil(args.num("request_timeout_s", 3)))
    return rmq.ClientConfiguration(
        args.required_str("endpoint"),
        credentials,
        args.opt_str("namespace", "") or "",
        request_timeout=timeout,
    )


def filter_expression(rmq: Any, args: Args) -> Any:
    from rocketmq.grpc_protocol import FilterType

    spec = Args(args.obj("filter"), "filter")
    kind = (spec.opt_str("type", "tag") or "tag").lower()
    if kind not in ("tag", "sql"):
        raise UsageError("filter: type must be tag or sql")
    expression = spec.opt_str("expression", "*") or "*"
    return rmq.FilterExpression(expression, FilterType.TAG if kind == "tag" else FilterType.SQL)


def message_body(spec: Args) -> bytes:
    if "body_base64" in spec.values:
        return base64.b64decode(spec.required_str("body_base64"))
    if "body" in spec.values:
        return (spec.opt_str("body", "") or "").encode("utf-8")
    size = spec.integer("body_size", 0)
    if size > 0:
        return b"x" * size
    raise UsageError(f"{spec.where}: one of body, body_base64, body_size is required")


def build_message(rmq: Any, topic: str, spec: Args) -> Any:
    message = rmq.Message()
    message.topic = topic
    message.body = message_body(spec)
    tag = spec.opt_str("tag")
    if tag is not None:
        message.tag = tag
    keys = spec.values.get("keys")
    for key in [keys] if isinstance(keys, str) else spec.items("keys"):
        message.keys = key  # the client's setter adds one key per assignment
    for name, value in spec.obj("properties").items():
        message.add_property(name, str(value))
    group = spec.opt_str("message_group")
    if group is not None:
        message.message_group = group
    delivery_ms = spec.optional_num("delivery_timestamp_ms")
    if delivery_ms is not None:
        # This client sends delivery_timestamp as whole seconds (it copies the value into
        # Timestamp.seconds): round up so that the message is never due before it was asked to be.
        message.delivery_timestamp = math.ceil(delivery_ms / 1000)
    return message


def body_fields(body: bytes | None, emit_body: bool) -> dict[str, Any]:
    data = body or b""
    fields: dict[str, Any] = {"body_size": len(data), "body_sha256": hashlib.sha256(data).hexdigest()}
    if emit_body:
        try:
            fields["body"] = data.decode("utf-8")
        except UnicodeDecodeError:
            fields["body"] = None
            fields["body_base64"] = base64.b64encode(data).decode("ascii")
    return fields


def message_fields(message: Any, emit_body: bool = True) -> dict[str, Any]:
    return {
        "message_id": message.message_id,
        "topic": message.topic,
        "tag": message.tag or None,
        "keys": sorted(message.keys or ()),
        "properties": dict(message.properties or {}),
        "message_group": message.message_group or None,
        "delivery_attempt": message.delivery_attempt,
        # The client reports an unset timestamp as 0.
        "delivery_timestamp_ms": message.delivery_timestamp or None,
        "born_timestamp_ms": message.born_timestamp or None,
        "corrupted": bool(message.corrupted),
        **body_fields(message.body, emit_body),
    }


def receipt_fields(receipt: Any) -> dict[str, Any]:
    return {
        "message_id": receipt.message_id,
        "transaction_id": receipt.transaction_id or None,
        "offset": receipt.offset,
        "recall_handle": receipt.recall_handle or None,
    }


def start(client: Any, kind: str) -> None:
    client.startup()
    emit("started", client=kind, client_id=client.client_id)


def stop(client: Any, args: Args) -> None:
    if not args.flag("graceful_shutdown", True):
        emit("stopped", graceful=False)
        return
    try:
        client.shutdown()
        emit("stopped", graceful=True)
    except Exception as exc:
        emit("shutdown_error", **error_fields(exc))


def sleep_until(deadline: float, done: threading.Event | None = None) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return
    if done is None:
        time.sleep(remaining)
    else:
        done.wait(remaining)


# --- actions ----------------------------------------------------------------------------------


def produce(rmq: Any, args: Args) -> None:
    topic = args.required_str("topic")
    specs = [Args(spec, f"messages[{i}]") for i, spec in enumerate(args.items("messages"))]
    producer = rmq.Producer(configuration(rmq, args), (topic,), tls_enable=args.flag("tls", False))
    start(producer, "producer")
    failed = 0
    try:
        for index, spec in enumerate(specs):
            try:
                receipt = producer.send(build_message(rmq, topic, spec))
                emit("sent", index=index, ok=True, **receipt_fields(receipt))
            except UsageError:
                raise
            except Exception as exc:
                failed += 1
                emit("sent", index=index, ok=False, **error_fields(exc))
    finally:
        stop(producer, args)
    if failed and not args.flag("allow_failures", False):
        raise ActionFailed(f"{failed} of {len(specs)} message(s) were not sent")
    emit("done", sent=len(specs) - failed, failed=failed)


def produce_transaction(rmq: Any, args: Args) -> None:
    from rocketmq import TransactionResolution

    topic = args.required_str("topic")
    specs = [Args(spec, f"messages[{i}]") for i, spec in enumerate(args.items("messages"))]
    default_decision = args.opt_str("decision", "commit")
    for spec in specs:
        if spec.opt_str("decision", default_decision) not in ("commit", "rollback", "none"):
            raise UsageError(f"{spec.where}: decision must be commit, rollback or none")
    answer = args.opt_str("check_answer", "commit")
    if answer not in ("commit", "rollback", "unknown"):
        raise UsageError("check_answer must be commit, rollback or unknown")

    class Checker(rmq.TransactionChecker):  # type: ignore[misc]
        def check(self, message: Any) -> Any:
            emit("checked", answer=answer, **message_fields(message))
            if answer == "commit":
                return TransactionResolution.COMMIT
            if answer == "rollback":
                return TransactionResolution.ROLLBACK
            # Raising is this client's only way not to answer: a returned UNSPECIFIED would still be
            # sent to the broker in an EndTransaction request.
            raise RuntimeError("the checker answers unknown")

    producer = rmq.Producer(
        configuration(rmq, args), (topic,), checker=Checker(), tls_enable=args.flag("tls", False)
    )
    start(producer, "transaction-producer")
    failed = 0
    try:
        for index, spec in enumerate(specs):
            try:
                transaction = producer.begin_transaction()
                receipt = producer.send(build_message(rmq, topic, spec), transaction)
                emit("sent", index=index, ok=True, **receipt_fields(receipt))
            except UsageError:
                raise
            except Exception as exc:
                failed += 1
                emit("sent", index=index, ok=False, **error_fields(exc))
                continue
            decision = spec.opt_str("decision", default_decision)
            if decision == "none":
                continue
            try:
                if decision == "commit":
                    transaction.commit()
                else:
                    transaction.rollback()
                emit(
                    "end_transaction",
                    index=index,
                    message_id=receipt.message_id,
                    resolution=decision,
                    ok=True,
                )
            except Exception as exc:
                failed += 1
                emit(
                    "end_transaction",
                    index=index,
                    message_id=receipt.message_id,
                    resolution=decision,
                    ok=False,
                    **error_fields(exc),
                )
        sleep_until(time.monotonic() + args.num("duration_s", 0))
    finally:
        stop(producer, args)
    if failed and not args.flag("allow_failures", False):
        raise ActionFailed(f"{failed} send or end-transaction call(s) failed")
    emit("done", messages=len(specs), failed=failed)


def recall(rmq: Any, args: Args) -> None:
    topic = args.required_str("topic")
    handle = args.required_str("recall_handle")
    producer = rmq.Producer(configuration(rmq, args), (topic,), tls_enable=args.flag("tls", False))
    start(producer, "producer")
    try:
        try:
            message_id = producer.recall_message(topic, handle)
        except Exception as exc:
            emit("recalled", ok=False, **error_fields(exc))
            raise ActionFailed(f"recall failed: {one_line(str(exc))}") from exc
        emit("recalled", ok=True, message_id=message_id)
    finally:
        stop(producer, args)
    emit("done")


def simple_consume(rmq: Any, args: Args) -> None:
    group = args.required_str("group")
    topic = args.required_str("topic")
    mode = args.opt_str("action", "ack") or "ack"
    if mode not in SIMPLE_ACTIONS:
        raise UsageError(f"action must be one of {', '.join(SIMPLE_ACTIONS)}")
    ack_from = args.optional_int("ack_from_attempt")
    if ack_from is None:
        ack_from = SIMPLE_ACTIONS[mode]
    change_invisible = args.optional_num("change_invisible_s")
    if change_invisible is None and mode == "change-invisible":
        change_invisible = 1.0
    # Whole seconds only: the client writes them into Duration.seconds.
    invisible_s = max(1, math.ceil(args.num("invisible_duration_s", 15)))
    await_s = max(1, math.ceil(args.num("await_duration_s", 5)))
    max_messages = args.integer("max_messages", 16)
    stop_after_received = args.optional_int("stop_after_received")
    stop_after_acks = args.optional_int("stop_after_acks")
    max_errors = args.integer("max_consecutive_errors", 5)
    emit_body = args.flag("emit_body", True)

    consumer = rmq.SimpleConsumer(
        configuration(rmq, args),
        group,
        {topic: filter_expression(rmq, args)},
        await_duration=await_s,
        tls_enable=args.flag("tls", False),
    )
    start(consumer, "simple-consumer")
    deadline = time.monotonic() + args.num("duration_s", 10)
    received = acked = errors = receive_calls = 0
    last_error = ""
    try:
        while time.monotonic() < deadline:
            if stop_after_received is not None and received >= stop_after_received:
                break
            if stop_after_acks is not None and acked >= stop_after_acks:
                break
            try:
                messages = consumer.receive(max_messages, invisible_s)
            except Exception as exc:
                errors += 1
                last_error = one_line(str(exc))
                emit("receive_error", consecutive=errors, **error_fields(exc))
                if errors >= max_errors:
                    raise ActionFailed(f"{errors} consecutive receive calls failed: {last_error}") from exc
                sleep_until(min(deadline, time.monotonic() + 0.5))
                continue
            errors = 0
            receive_calls += 1
            if not messages:
                sleep_until(min(deadline, time.monotonic() + 0.1))
            for message in messages:
                received += 1
                emit("received", **message_fields(message, emit_body))
                attempt = message.delivery_attempt or 0
                if ack_from is not None and attempt >= ack_from:
                    try:
                        consumer.ack(message)
                        acked += 1
                        emit("acked", message_id=message.message_id, delivery_attempt=attempt, ok=True)
                    except Exception as exc:
                        emit(
                            "acked",
                            message_id=message.message_id,
                            delivery_attempt=attempt,
                            ok=False,
                            **error_fields(exc),
                        )
                elif change_invisible is not None:
                    seconds = max(1, math.ceil(change_invisible))
                    try:
                        consumer.change_invisible_duration(message, seconds)
                        emit(
                            "invisible_changed",
                            message_id=message.message_id,
                            invisible_duration_s=seconds,
                            ok=True,
                        )
                    except Exception as exc:
                        emit(
                            "invisible_changed",
                            message_id=message.message_id,
                            invisible_duration_s=seconds,
                            ok=False,
                            **error_fields(exc),
                        )
    finally:
        stop(consumer, args)
    emit("done", received=received, acked=acked, receive_calls=receive_calls)


def push_consume(rmq: Any, args: Args) -> None:
    group = args.required_str("group")
    topic = args.required_str("topic")
    behaviour = args.opt_str("behaviour", "success")
    if behaviour not in ("success", "fail-always", "fail-first-n"):
        raise UsageError("behaviour must be success, fail-always or fail-first-n")
    fail_first_n = args.integer("fail_first_n", 1)
    fail_with = args.opt_str("fail_with", "result")
    if fail_with not in ("result", "exception"):
        raise UsageError("fail_with must be result or exception")
    delay_s = args.num("consume_delay_ms", 0) / 1000
    stop_after = args.optional_int("stop_after_successes")
    emit_body = args.flag("emit_body", True)

    lock = threading.Lock()
    invocations: dict[str, int] = {}
    succeeded: set[str] = set()
    enough = threading.Event()

    class Listener(rmq.MessageListener):  # type: ignore[misc]
        def consume(self, message: Any) -> Any:
            with lock:
                count = invocations[message.message_id] = invocations.get(message.message_id, 0) + 1
            emit("received", invocation=count, **message_fields(message, emit_body))
            if delay_s > 0:
                time.sleep(delay_s)
            fail = behaviour == "fail-always" or (behaviour == "fail-first-n" and count <= fail_first_n)
            emit(
                "consumed",
                message_id=message.message_id,
                invocation=count,
                delivery_attempt=message.delivery_attempt,
                result="FAILURE" if fail else "SUCCESS",
            )
            if fail:
                if fail_with == "exception":
                    raise RuntimeError("the handler fails on purpose")
                return rmq.ConsumeResult.FAILURE
            with lock:
                succeeded.add(message.message_id)
                if stop_after is not None and len(succeeded) >= stop_after:
                    enough.set()
            return rmq.ConsumeResult.SUCCESS

    consumer = rmq.PushConsumer(
        configuration(rmq, args),
        group,
        Listener(),
        {topic: filter_expression(rmq, args)},
        consumption_thread_count=args.integer("threads", 20),
        tls_enable=args.flag("tls", False),
    )
    start(consumer, "push-consumer")
    try:
        sleep_until(time.monotonic() + args.num("duration_s", 10), enough)
        if enough.is_set():
            # Give the client time to send the acks of the last successes.
            time.sleep(args.num("linger_s", 1))
    finally:
        stop(consumer, args)
    with lock:
        emit(
            "done", messages=len(invocations), succeeded=len(succeeded), invocations=sum(invocations.values())
        )


ACTIONS: dict[str, Callable[[Any, Args], None]] = {
    "produce": produce,
    "produce-transaction": produce_transaction,
    "recall": recall,
    "simple-consume": simple_consume,
    "push-consume": push_consume,
}


def main(argv: list[str]) -> NoReturn:
    try:
        action, args = parse_command_line(argv)
        start_watchdog(args.optional_num("timeout_s") or default_timeout(action, args))
    except UsageError as exc:
        emit("error", error=str(exc), error_type="UsageError")
        finish(EXIT_USAGE)
    try:
        import rocketmq

        ACTIONS[action](rocketmq, args)
    except UsageError as exc:
        emit("error", error=str(exc), error_type="UsageError")
        finish(EXIT_USAGE)
    except ActionFailed as exc:
        emit("error", error=str(exc), error_type="ActionFailed")
        finish(EXIT_FAILED)
    except Exception as exc:
        emit("error", **error_fields(exc))
        finish(EXIT_FAILED)
    finish(EXIT_OK)


if __name__ == "__main__":
    main(sys.argv)
