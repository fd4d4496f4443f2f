"""A radiologist's verdict by hand: kept as history, the latest one counts (it outranks a graded report)."""
from __future__ import annotations

from .. import timeutil
from . import exams
from .database import Store


async def add_review(store: Store, uid: str, reviewer: str, abnormal: bool) -> bool:
    """Record the verdict; False when there is no such exam. The exam's copy is set by a trigger."""
    now = timeutil.to_store(timeutil.utc_now())
    async with store.transaction() as conn:
        if not await exams.exists(conn, uid):
            return False
        await conn.execute(
            "INSERT INTO reviews (uid, reviewer, verdict, created) VALUES (?, ?, ?, ?)",
            (uid, reviewer, int(abnormal), now),
        )
        await conn.execute("UPDATE exams SET updated = ? WHERE uid = ?", (now, uid))
    return True
