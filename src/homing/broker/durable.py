"""Append to the store from an event loop and wait, without blocking the loop, until it is durable.

The store releases durability waiters from its flusher thread; this bridges that to an asyncio
future. A flush that takes longer than the store's flush timeout is reported as the protocol's
``MASTER_PERSISTENCE_TIMEOUT`` and never as success; a fenced store or a full disk map to their
own statuses. Every durable write of the broker (sends, acks, timer and transaction events) goes
through :func:`append_durably`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from homing.broker.errors import BrokerError
from homing.store import (
    AppendResult,
    DiskFullError,
    InvalidRecordError,
    MessageStore,
    NewRecord,
    StoreClosedError,
    StoreFencedError,
)

__all__ = ["append_durably", "wait_durable"]


async def wait_durable(store: MessageStore, end_offset: int) -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        def resolve() -> None:
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        loop.call_soon_threadsafe(resolve)

    store.add_durability_callback(end_offset, settle)
    try:
        await asyncio.wait_for(asyncio.shield(future), store.config.flush_timeout_s)
    except TimeoutError as error:
        raise BrokerError(
            "MASTER_PERSISTENCE_TIMEOUT",
            f"not durable within the flush timeout of {store.config.flush_timeout_s:g} s; not acknowledged",
        ) from error
    except StoreFencedError as error:
        message = f"storage failure, write not acknowledged: {error}"
        raise BrokerError("INTERNAL_SERVER_ERROR", message) from error


async def append_durably(store: MessageStore, records: Sequence[NewRecord]) -> AppendResult:
    """Append ``records`` (all or nothing) and return once they are durable."""
    try:
        result = store.append(records)
    except DiskFullError as error:
        raise BrokerError("TOO_MANY_REQUESTS", f"disk full, write refused: {error}") from error
    except InvalidRecordError as error:
        raise BrokerError("BAD_REQUEST", str(error)) from error
    except StoreFencedError as error:
        raise BrokerError("INTERNAL_SERVER_ERROR", f"storage failure, write refused: {error}") from error
    except StoreClosedError as error:
        raise BrokerError("INTERNAL_SERVER_ERROR", "the broker is shutting down") from error
    await wait_durable(store, result.end_offset)
    return result
