"""tasks.py: background loops stop when cancelled, whatever else happens in the same instant."""
from __future__ import annotations

import asyncio

import pytest

from xrayvision.tasks import cancel_and_wait, wait_event


async def test_a_cancel_arriving_as_the_event_is_set_still_stops_the_waiter() -> None:
    # The race that hung a shutdown: the loop's event is set (a state change) in the very tick its task is
    # cancelled. asyncio.wait_for on Python 3.11 can return the event instead, and the loop runs on.
    for _ in range(50):
        event = asyncio.Event()
        rounds = 0

        async def loop(event: asyncio.Event) -> None:
            nonlocal rounds
            while True:
                await wait_event(event, 30)
                rounds += 1
                event.clear()

        task = asyncio.create_task(loop(event))
        await asyncio.sleep(0)  # the task is now waiting
        event.set()
        task.cancel()
        await asyncio.wait_for(cancel_and_wait(task), timeout=5)
        assert task.cancelled() and rounds == 0


async def test_wait_event_says_whether_the_event_came() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True


@pytest.mark.parametrize("failing", [True, False])
async def test_cancel_and_wait_ends_every_task(failing: bool) -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    async def broken() -> None:
        raise RuntimeError("logged by its own edge")

    tasks = [asyncio.create_task(forever()), asyncio.create_task(broken() if failing else forever())]
    await asyncio.sleep(0)
    await cancel_and_wait(*tasks, None)
    assert all(t.done() for t in tasks)
