"""A radiologist's verdict by hand: kept as history, the latest one counts (it outranks a graded report)."""
from __future__ import annotations

from .. import timeutil
from .database import Store


async def add_review(store: Store, uid: str, reviewer: str, abnormal: bool) -> bool:
    """Record the verdict; False when there is no such exam. The exam's copy is set by a trigger."""
    now = timeutil.to_store(timeutil.utc_now())
    async with store.transaction() as conn:
        async with conn.execute("SELECT 1 FROM exams WHERE uid = ?", (uid,)) as cur:
            if await cur.fetchone() is None:
                return False
        await conn.execute(
            "INSERT INTO reviews (uid, reviewer, verdict, created) VALUES (?, ?, ?, ?)",
            (uid, reviewer, int(abnormal), now),
        )
        await conn.execute("UPDATE exams SET updated = ? WHERE uid = ?", (now, uid))
    return True
