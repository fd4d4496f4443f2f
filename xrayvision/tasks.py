"""Background tasks end the same way everywhere: cancelled, then awaited, so nothing outlives its owner."""
from __future__ import annotations

import asyncio


async def cancel_and_wait(*tasks: asyncio.Task | None) -> None:
    live = [t for t in tasks if t is not None]
    for task in live:
        task.cancel()
    # return_exceptions: a task that failed earlier has been logged by its own edge; stopping goes on.
    await asyncio.gather(*live, return_exceptions=True)


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until `event` is set or `timeout` seconds pass; True if it was set. asyncio.timeout, not wait_for: on
    Python 3.11 wait_for can swallow a cancellation that arrives just as the event is set, and a loop cancelled at
    that moment would outlive its stop (a shutdown then hangs)."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
