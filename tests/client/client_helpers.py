"""Shared by the client tests: run a scenario on a fresh event loop, fast chore timings, bounded waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from homing.client import Timings

T = TypeVar("T")

FAST = Timings(heartbeat_interval_s=0.2, route_refresh_interval_s=0.3, settings_timeout_s=2.0)
"""Chores every few tenths of a second, so a test sees heartbeats and refreshes without waiting long."""


def run(coroutine: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
    """Run ``coroutine`` on a new event loop; a hang fails the test instead of blocking the suite."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout_s):
            return await coroutine

    return asyncio.run(bounded())


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` (it watches real IO) until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


def wait_until_sync(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


async def gather_all(*awaitables: Awaitable[T]) -> list[T]:
    return list(await asyncio.gather(*awaitables))
