"""Retry policies: how many attempts, and how long to wait between them.

The broker decides by default: its settings reply (over the Telemetry stream) carries a
``backoff_policy`` for producers (send retries) and consumers (how long a nacked message stays
invisible before it is delivered again). A :class:`RetryPolicy` given to a client overrides it.
Before the reply arrives the client uses what the Apache proxy would send (3 attempts, 10 ms
doubling to 1 s), so the first send behaves like the later ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from google.protobuf import duration_pb2

from homing.client._errors import InvalidArgumentError
from homing.protocol import definition_pb2

__all__ = ["DEFAULT_CONSUMER_RETRY", "DEFAULT_PRODUCER_RETRY", "RetryPolicy"]

MAX_ATTEMPTS_LIMIT: Final = 1000
MAX_BACKOFF_S: Final = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_attempts`` (first attempt included) and the wait after each failed attempt.

    The wait after attempt ``n`` is ``delays_s[n - 1]`` when ``delays_s`` is given (its last entry
    repeats), else ``initial_backoff_s * multiplier ** (n - 1)`` capped at ``max_backoff_s``.
    """

    max_attempts: int = 3
    initial_backoff_s: float = 0.01
    max_backoff_s: float = 1.0
    multiplier: float = 2.0
    delays_s: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise InvalidArgumentError(
                f"max_attempts must be 1-{MAX_ATTEMPTS_LIMIT}, not {self.max_attempts}"
            )
        for name in ("initial_backoff_s", "max_backoff_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= MAX_BACKOFF_S):
                raise InvalidArgumentError(f"{name} must be 0-{MAX_BACKOFF_S:g} s, not {value}")
        if not (math.isfinite(self.multiplier) and self.multiplier >= 1):
            raise InvalidArgumentError(f"multiplier must be at least 1, not {self.multiplier}")
        object.__setattr__(self, "delays_s", tuple(float(delay) for delay in self.delays_s))
        for delay in self.delays_s:
            if not (math.isfinite(delay) and 0 <= delay <= MAX_BACKOFF_S):
                raise InvalidArgumentError(f"every delay must be 0-{MAX_BACKOFF_S:g} s, not {delay}")

    def backoff_s(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based) before the next one."""
        assert attempt >= 1, attempt
        if self.delays_s:
            return self.delays_s[min(attempt, len(self.delays_s)) - 1]
        # Cap the exponent: the product overflows long before any sane attempt count.
        exponent = min(attempt - 1, 64)
        return min(self.initial_backoff_s * self.multiplier**exponent, self.max_backoff_s)

    @classmethod
    def from_proto(cls, policy: definition_pb2.RetryPolicy, fallback: RetryPolicy) -> RetryPolicy:
        """The broker's policy; fields it leaves unset (or out of range) keep ``fallback``'s values."""
        max_attempts = (
            policy.max_attempts if 1 <= policy.max_attempts <= MAX_ATTEMPTS_LIMIT else fallback.max_attempts
        )
        strategy = policy.WhichOneof("strategy")
        if strategy == "customized_backoff" and policy.customized_backoff.next:
            delays = tuple(
                min(max(_seconds(delay), 0.0), MAX_BACKOFF_S) for delay in policy.customized_backoff.next
            )
            return cls(max_attempts=max_attempts, delays_s=delays)
        if strategy == "exponential_backoff":
            backoff = policy.exponential_backoff
            initial = _seconds(backoff.initial) if backoff.HasField("initial") else fallback.initial_backoff_s
            maximum = _seconds(backoff.max) if backoff.HasField("max") else fallback.max_backoff_s
            multiplier = backoff.multiplier if backoff.multiplier >= 1 else fallback.multiplier
            initial = min(max(initial, 0.0), MAX_BACKOFF_S)
            maximum = min(max(maximum, initial), MAX_BACKOFF_S)
            return cls(max_attempts, initial, maximum, float(multiplier))
        return cls(
            max_attempts,
            fallback.initial_backoff_s,
            fallback.max_backoff_s,
            fallback.multiplier,
            fallback.delays_s,
        )

    def to_proto(self) -> definition_pb2.RetryPolicy:
        if self.delays_s:
            return definition_pb2.RetryPolicy(
                max_attempts=self.max_attempts,
                customized_backoff=definition_pb2.CustomizedBackoff(
                    next=[duration(d) for d in self.delays_s]
                ),
            )
        return definition_pb2.RetryPolicy(
            max_attempts=self.max_attempts,
            exponential_backoff=definition_pb2.ExponentialBackoff(
                initial=duration(self.initial_backoff_s),
                max=duration(self.max_backoff_s),
                multiplier=self.multiplier,
            ),
        )


def _seconds(value: duration_pb2.Duration) -> float:
    return value.seconds + value.nanos / 1e9


def duration(seconds: float) -> duration_pb2.Duration:
    seconds_part, nanos = divmod(round(seconds * 1_000_000_000), 1_000_000_000)
    return duration_pb2.Duration(seconds=seconds_part, nanos=nanos)


DEFAULT_PRODUCER_RETRY: Final = RetryPolicy(
    max_attempts=3, initial_backoff_s=0.01, max_backoff_s=1.0, multiplier=2.0
)
"""Until the broker's settings say otherwise: the Apache proxy's producer policy."""
DEFAULT_CONSUMER_RETRY: Final = RetryPolicy(
    max_attempts=17,
    delays_s=(10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600, 7200),
)
"""Until the broker's settings say otherwise: RocketMQ's redelivery levels (10 s, 30 s, 1 min ... 2 h)."""
