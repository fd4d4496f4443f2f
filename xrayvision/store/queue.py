"""The analysis queue in the exams table: guarded status moves, so no exam is taken twice and a restart resumes
from the rows alone."""
from __future__ import annotations

import datetime as dt
import enum
import sqlite3
from dataclasses import dataclass
from typing import Any

from .. import timeutil
from . import schema
from .database import Store

_ORDER = {"newest": "created DESC", "oldest": "created ASC"}  # fixed allow-list: the only SQL text we splice

_CLAIM = """
UPDATE exams SET status = '{processing}', attempts = attempts + 1, updated = ?
WHERE uid = (SELECT uid FROM exams WHERE status IN ('{queued}', '{requeue}') AND image IS NOT NULL
             ORDER BY {order}, uid LIMIT 1)
  AND status IN ('{queued}', '{requeue}')
RETURNING uid, status, attempts
"""


@dataclass(frozen=True)
class Claimed:
    uid: str
    requeued: bool  # a person asked for another look
    attempts: int  # analysis rounds started, this one included


@dataclass(frozen=True)
class AIReport:
    text: str
    positive: int
    confidence: int
    severity: int
    summary: str
    model: str
    endpoint: str
    prompt_version: str
    latency_ms: int
    tokens_in: int | None
    tokens_out: int | None


class RequeueOutcome(enum.Enum):
    REQUEUED = "requeued"
    NOT_FOUND = "not found"
    BUSY = "being analysed"
    NO_IMAGE = "has no image to analyse"


async def requeue(store: Store, uid: str) -> RequeueOutcome:
    """Ask for another look: the exam goes back to the queue as 'requeue', its earlier answers kept."""
    now = timeutil.to_store(timeutil.utc_now())
    async with store.transaction() as conn:
        async with conn.execute("SELECT status, image FROM exams WHERE uid = ?", (uid,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return RequeueOutcome.NOT_FOUND
        if row["status"] == schema.PROCESSING:
            return RequeueOutcome.BUSY
        if row["image"] is None:
            return RequeueOutcome.NO_IMAGE
        # A person asked: the automatic-retry budget starts again.
        await conn.execute(
            "UPDATE exams SET status = ?, reason = '', retry_at = NULL, attempts = 0, updated = ? WHERE uid = ?",
            (schema.REQUEUE, now, uid),
        )
    return RequeueOutcome.REQUEUED


async def reset_interrupted(store: Store) -> int:
    """Exams left 'processing' by a stop or a crash go back to the queue."""
    return await store.execute(
        "UPDATE exams SET status = ?, updated = ? WHERE status = ?",
        (schema.QUEUED, timeutil.to_store(timeutil.utc_now()), schema.PROCESSING),
    )


async def claim(store: Store, order: str) -> Claimed | None:
    sql = _CLAIM.format(processing=schema.PROCESSING, queued=schema.QUEUED, requeue=schema.REQUEUE,
                        order=_ORDER[order])
    rows = await store.write_returning(sql, (timeutil.to_store(timeutil.utc_now()),))
    if not rows:
        return None
    row = rows[0]
    return Claimed(row["uid"], row["status"] == schema.REQUEUE, row["attempts"])


async def context(store: Store, uid: str) -> sqlite3.Row | None:
    """What the prompt needs about an exam: the patient as this exam arrived, region, its image, the clinical
    question, and what the radiologist's verdict is made of (`verdict`, the latest manual review, and
    `rad_severity`, the graded report's; verdict.radiologist_verdict reads them)."""
    return await store.fetch_one(
        """SELECT e.uid, e.cnp, e.created, e.region, e.projection, e.protocol, e.age, e.image, e.verdict,
                  e.rad_severity,
                  CASE WHEN e.patient_name != '' THEN e.patient_name ELSE p.name END AS name,
                  CASE WHEN e.patient_sex != 'O' THEN e.patient_sex ELSE p.sex END AS sex,
                  rad.justification
           FROM exams e JOIN patients p ON p.cnp = e.cnp
           LEFT JOIN rad_reports rad ON rad.uid = e.uid
           WHERE e.uid = ?""",
        (uid,),
    )


async def latest_answer(store: Store, uid: str) -> sqlite3.Row | None:
    return await store.fetch_one(
        "SELECT created, text, positive, severity, summary FROM ai_reports WHERE uid = ? ORDER BY seq DESC LIMIT 1",
        (uid,),
    )


async def priors(store: Store, cnp: str, region: str, before: str, exclude_uid: str, days: int,
                 limit: int) -> list[sqlite3.Row]:
    """Earlier AI findings for the same patient and region: the latest answer of each other exam within `days`
    before this one, newest first. The exam itself is never among them."""
    if limit <= 0:
        return []
    since = timeutil.to_store(timeutil.from_store(before) - dt.timedelta(days=days))
    return await store.fetch_all(
        """SELECT e.uid, e.created, ai.text, ai.summary, ai.severity
           FROM exams e
           JOIN ai_reports ai ON ai.seq = (SELECT MAX(seq) FROM ai_reports WHERE uid = e.uid)
           WHERE e.cnp = ? AND e.region = ? AND e.uid != ? AND e.created >= ? AND e.created <= ?
             AND ai.severity >= 0
           ORDER BY e.created DESC LIMIT ?""",
        (cnp, region, exclude_uid, since, before, limit),
    )


async def finish(store: Store, uid: str, answer: AIReport) -> bool:
    """Store the answer (a new row: earlier answers stay) and mark the exam done, in one transaction."""
    now = timeutil.to_store(timeutil.utc_now())
    async with store.transaction() as conn:
        # Done, or 'check' while a radiologist's report waits for its grade (it may have come during the analysis).
        cur = await conn.execute(
            f"""UPDATE exams SET status = CASE WHEN EXISTS (SELECT 1 FROM rad_reports WHERE uid = exams.uid
                                                         AND {schema.AWAITING_GRADE}) THEN ? ELSE ? END,
                   reason = '', retry_at = NULL, updated = ? WHERE uid = ? AND status = ?""",
            (schema.CHECK, schema.DONE, now, uid, schema.PROCESSING),
        )
        if cur.rowcount != 1:
            return False  # no longer ours (deleted, or taken back): keep nothing half-done
        await conn.execute(
            """INSERT INTO ai_reports (uid, created, updated, text, positive, confidence, severity, summary, model,
                                       endpoint, prompt_version, latency, tokens_in, tokens_out)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (uid, now, now, answer.text, answer.positive, answer.confidence, answer.severity, answer.summary,
             answer.model, answer.endpoint, answer.prompt_version, answer.latency_ms, answer.tokens_in,
             answer.tokens_out),
        )
    return True


async def fail(store: Store, uid: str, reason: str, retry_at: dt.datetime | None) -> bool:
    now = timeutil.to_store(timeutil.utc_now())
    return await store.execute(
        "UPDATE exams SET status = ?, reason = ?, retry_at = ?, updated = ? WHERE uid = ? AND status = ?",
        (schema.ERROR, reason, timeutil.to_store(retry_at) if retry_at else None, now, uid, schema.PROCESSING),
    ) == 1


async def ignore(store: Store, uid: str, reason: str) -> bool:
    now = timeutil.to_store(timeutil.utc_now())
    return await store.execute(
        "UPDATE exams SET status = ?, reason = ?, updated = ? WHERE uid = ? AND status = ?",
        (schema.IGNORE, reason, now, uid, schema.PROCESSING),
    ) == 1


async def release(store: Store, uid: str, requeued: bool) -> bool:
    """Give an exam back to the queue untouched (the server is stopping, or no model could take it)."""
    now = timeutil.to_store(timeutil.utc_now())
    status = schema.REQUEUE if requeued else schema.QUEUED
    return await store.execute(
        "UPDATE exams SET status = ?, attempts = MAX(attempts - 1, 0), updated = ? WHERE uid = ? AND status = ?",
        (status, now, uid, schema.PROCESSING),
    ) == 1


async def revive_due(store: Store) -> list[str]:
    """'error' exams whose retry time has come go back to the queue."""
    now = timeutil.to_store(timeutil.utc_now())
    rows = await store.write_returning(
        """UPDATE exams SET status = ?, retry_at = NULL, updated = ?
           WHERE status = ? AND retry_at IS NOT NULL AND retry_at <= ? RETURNING uid""",
        (schema.QUEUED, now, schema.ERROR, now),
    )
    return [row["uid"] for row in rows]


async def next_retry(store: Store) -> str | None:
    return await store.fetch_value(
        "SELECT MIN(retry_at) FROM exams WHERE status = ? AND retry_at IS NOT NULL", (schema.ERROR,)
    )


async def counts(store: Store) -> dict[str, Any]:
    """Exams per status, for the dashboard's header."""
    rows = await store.fetch_all("SELECT status, COUNT(*) AS n FROM exams GROUP BY status")
    return {row["status"]: row["n"] for row in rows}
