"""Background tasks end the same way everywhere: cancelled, then awaited, so nothing outlives its owner."""
from __future__ import annotations

import asyncio


async def cancel_and_wait(*tasks: asyncio.Task | None) -> None:
    live = [t for t in tasks if t is not None]
    for task in live:
        task.cancel()
    # return_exceptions: a task that failed earlier has been logged by its own edge; stopping goes on.
    await asyncio.gather(*live, return_exceptions=True)
