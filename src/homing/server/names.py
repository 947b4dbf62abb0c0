"""Namespaces: how a client's (namespace, name) maps to the broker's one flat set of names.

Homing does what RocketMQ 5 does internally (``NamespaceUtil``): inside namespace ``ns`` the topic
or group ``orders`` is the broker's ``ns%orders``, and the dead-letter topic ``%DLQ%g`` is
``%DLQ%ns%g`` (the namespace goes after the system prefix, so that a namespaced group's
dead-letter topic is the namespaced dead-letter topic of that group). Without a namespace, names
are used as they are. Going out (routes, received messages), the namespace is taken off again, so
a client only ever sees the names it used.

Which namespace a request is in: the ``x-mq-namespace`` header when it is not empty (it is the
authoritative one: the Node client puts the namespace only there for most calls), else the
``resource_namespace`` of the resource. A namespace is 1-64 letters, digits, ``_`` or ``-``; it
cannot hold ``%``, so ``ns%name`` splits one way only.

Namespaces separate names, not tenants: a client without a namespace may still name
``ns%orders`` directly. Access control is the credentials' job (:mod:`homing.server.auth`).
"""

from __future__ import annotations

import re

from homing.broker.errors import BrokerError
from homing.broker.system_topics import DLQ_PREFIX

__all__ = ["MAX_NAMESPACE_LENGTH", "qualify", "unqualify", "validate_namespace"]

MAX_NAMESPACE_LENGTH = 64
_NAMESPACE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SEPARATOR = "%"


def validate_namespace(namespace: str) -> None:
    if namespace and not _NAMESPACE.match(namespace):
        raise BrokerError(
            "BAD_REQUEST",
            f"invalid namespace {namespace[:80]!r}: use 1-{MAX_NAMESPACE_LENGTH} letters, digits, '_' or '-'",
        )


def qualify(namespace: str, name: str) -> str:
    """The broker's name for ``name`` in ``namespace`` (``name`` itself without a namespace)."""
    if not namespace or not name:
        return name
    validate_namespace(namespace)
    if name.startswith(DLQ_PREFIX):
        return DLQ_PREFIX + namespace + _SEPARATOR + name[len(DLQ_PREFIX) :]
    return namespace + _SEPARATOR + name


def unqualify(namespace: str, name: str) -> str:
    """The name a client in ``namespace`` knows the broker's ``name`` by."""
    if not namespace:
        return name
    prefix = namespace + _SEPARATOR
    if name.startswith(DLQ_PREFIX + prefix):
        return DLQ_PREFIX + name[len(DLQ_PREFIX + prefix) :]
    if name.startswith(prefix):
        return name[len(prefix) :]
    return name
