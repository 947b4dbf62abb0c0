"""Which clients are alive: push deliveries are renewed only for them.

A client is alive while it heartbeats (the official clients send one every 10 s) and has not said
goodbye (NotifyClientTermination) or lost its telemetry stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ClientRegistry", "ClientSession"]

DEFAULT_LIVENESS_S = 45.0
MAX_CLIENTS = 100_000


@dataclass(slots=True)
class ClientSession:
    client_id: str
    last_seen_s: float
    kind: str = ""  # "producer", "push_consumer", "simple_consumer" (from its settings)
    group: str = ""
    topics: tuple[str, ...] = ()
    terminated: bool = False


class ClientRegistry:
    def __init__(self, monotonic_s: Callable[[], float], liveness_s: float = DEFAULT_LIVENESS_S) -> None:
        self._monotonic_s = monotonic_s
        self.liveness_s = liveness_s
        self._sessions: dict[str, ClientSession] = {}

    def seen(self, client_id: str) -> ClientSession:
        now = self._monotonic_s()
        session = self._sessions.get(client_id)
        if session is None:
            if len(self._sessions) >= MAX_CLIENTS:
                self.forget_dead()
            session = self._sessions[client_id] = ClientSession(client_id, now)
        session.last_seen_s = now
        session.terminated = False
        return session

    def find(self, client_id: str) -> ClientSession | None:
        return self._sessions.get(client_id)

    def terminated(self, client_id: str) -> None:
        session = self._sessions.get(client_id)
        if session is not None:
            session.terminated = True

    def alive(self, client_id: str) -> bool:
        session = self._sessions.get(client_id)
        return (
            session is not None
            and not session.terminated
            and self._monotonic_s() - session.last_seen_s <= self.liveness_s
        )

    def sessions(self) -> list[ClientSession]:
        return list(self._sessions.values())

    def forget_dead(self) -> None:
        for client_id in [
            item.client_id for item in self._sessions.values() if not self.alive(item.client_id)
        ]:
            del self._sessions[client_id]
