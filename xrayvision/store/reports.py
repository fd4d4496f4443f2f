"""Radiologists' reports: the search for each done exam's report on the FHIR server (tries, backoff, giving up), the
fetched report, and its grading by a model. One exam has at most one report; a manual review still outranks it
(verdict.py)."""
from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

import aiosqlite

from .. import timeutil
from . import exams, schema
from .database import Store

MAX_WAIT = dt.timedelta(days=1)  # the longest wait between two tries of one exam's report

# What a FHIR search needs to know about an exam: the patient as this exam arrived (else as first known), the HIS
# id once known, and the imaging request found in an earlier try.
_QUERY = """
SELECT e.uid, e.cnp, e.created, e.type AS modality, e.region,
       p.id AS his_id,
       CASE WHEN e.patient_name != '' THEN e.patient_name ELSE p.name END AS name,
       COALESCE(e.patient_birthdate, p.birthdate) AS birthdate,
       CASE WHEN e.patient_sex != 'O' THEN e.patient_sex ELSE p.sex END AS sex,
       COALESCE(f.request, '') AS request, COALESCE(f.attempts, 0) AS attempts
FROM exams e JOIN patients p ON p.cnp = e.cnp
LEFT JOIN report_fetches f ON f.uid = e.uid
"""


@dataclass(frozen=True)
class Report:
    """A final report as fetched (fhir.FoundReport's fields the store keeps)."""

    report_id: str
    request_id: str
    patient_id: str
    text: str
    radiologist: str
    justification: str
    issued: dt.datetime | None
    type: str
    status: str


@dataclass(frozen=True)
class GradeRecord:
    positive: int  # 1 pathologic, 0 not
    severity: int  # 0-10
    summary: str
    text_en: str | None
    model: str
    endpoint: str
    prompt_version: str
    latency_ms: int  # the grading call's


@dataclass(frozen=True)
class CallRecord:
    """One model call about a report (analysis.textcalls.Call's fields)."""

    kind: str
    model: str
    endpoint: str
    prompt_version: str
    latency_ms: int
    raw: str | None
    tokens_in: int | None
    tokens_out: int | None
    error: str | None


def backoff(attempts: int, interval: float) -> dt.timedelta:
    """The wait after the `attempts`-th try: the fetch interval, doubled at each try, at most a day."""
    seconds = interval * 2 ** max(0, attempts - 1)
    return min(MAX_WAIT, dt.timedelta(seconds=seconds))


async def due(store: Store, *, lookback_days: int, limit: int) -> list[sqlite3.Row]:
    """Done exams within the look-back without a report whose next try is due (never tried, or its wait is over),
    oldest first."""
    now = timeutil.utc_now()
    since = timeutil.to_store(now - dt.timedelta(days=lookback_days))
    return await store.fetch_all(
        _QUERY + """
        WHERE e.status = ? AND e.created >= ?
          AND NOT EXISTS (SELECT 1 FROM rad_reports r WHERE r.uid = e.uid)
          AND (f.uid IS NULL OR (f.state = 'seeking' AND f.next_at <= ?))
        ORDER BY e.created, e.uid LIMIT ?""",
        (schema.DONE, since, timeutil.to_store(now), limit))


async def taken_elsewhere(store: Store, uid: str) -> frozenset[str]:
    """DiagnosticReport ids already kept for the patient's exams of other studies: never this exam's report (the
    images of one study, PA and lateral, rightly share theirs)."""
    rows = await store.fetch_all(
        """SELECT r.id FROM exams e JOIN exams o ON o.cnp = e.cnp AND o.uid != e.uid AND o.study != e.study
           JOIN rad_reports r ON r.uid = o.uid WHERE e.uid = ? AND r.id != ''""", (uid,))
    return frozenset(row[0] for row in rows)


async def query(store: Store, uid: str) -> sqlite3.Row | None:
    """One exam's search data (for a try asked for by a person)."""
    return await store.fetch_one(_QUERY + " WHERE e.uid = ?", (uid,))


async def _remember_patient(conn: aiosqlite.Connection, uid: str, patient_id: str) -> None:
    """The HIS's id for the exam's patient, kept once known (a later search starts from it)."""
    if patient_id:
        await conn.execute(
            "UPDATE patients SET id = ? WHERE id = '' AND cnp = (SELECT cnp FROM exams WHERE uid = ?)",
            (patient_id, uid))


async def record_miss(store: Store, uid: str, reason: str, *, request_id: str, patient_id: str,
                      max_attempts: int, interval: float) -> tuple[int, str]:
    """One more try found no report: back off, or give up after `max_attempts` (state 'missing').
    Returns (tries so far, state)."""
    now = timeutil.utc_now()
    async with store.transaction() as conn:
        async with conn.execute("SELECT attempts FROM report_fetches WHERE uid = ?", (uid,)) as cur:
            row = await cur.fetchone()
        attempts = (row["attempts"] if row else 0) + 1
        state = "missing" if attempts >= max_attempts else "seeking"
        next_at = None if state == "missing" else timeutil.to_store(now + backoff(attempts, interval))
        await conn.execute(
            """INSERT INTO report_fetches (uid, attempts, next_at, state, reason, request, updated)
               VALUES (?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (uid) DO UPDATE SET attempts = excluded.attempts, next_at = excluded.next_at,
                   state = excluded.state, reason = excluded.reason,
                   request = CASE WHEN excluded.request != '' THEN excluded.request ELSE request END,
                   updated = excluded.updated""",
            (uid, attempts, next_at, state, reason[:500], request_id, timeutil.to_store(now)))
        await _remember_patient(conn, uid, patient_id)
    return attempts, state


async def save_found(store: Store, uid: str, report: Report) -> bool:
    """Keep a fetched report; a done exam becomes 'check' until the report is graded. A report whose text is what
    we have already keeps its grade. False if the exam is gone."""
    now = timeutil.to_store(timeutil.utc_now())
    issued = timeutil.to_store(report.issued) if report.issued else None
    async with store.transaction() as conn:
        async with conn.execute("SELECT status FROM exams WHERE uid = ?", (uid,)) as cur:
            exam = await cur.fetchone()
        if exam is None:
            return False
        async with conn.execute("SELECT text FROM rad_reports WHERE uid = ?", (uid,)) as cur:
            known = await cur.fetchone()
        same_text = known is not None and known["text"] == report.text
        await conn.execute(
            """INSERT INTO rad_reports (uid, id, created, updated, text, type, radiologist, justification, request,
                                        issued, report_status)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (uid) DO UPDATE SET id = excluded.id, updated = excluded.updated, type = excluded.type,
                   radiologist = excluded.radiologist,
                   justification = CASE WHEN excluded.justification != '' THEN excluded.justification
                                        ELSE justification END,
                   request = excluded.request, issued = excluded.issued, report_status = excluded.report_status""",
            (uid, report.report_id, now, now, report.text, report.type, report.radiologist, report.justification,
             report.request_id, issued, report.status))
        if not same_text:  # new words: graded afresh (a translation of the old words no longer holds)
            await conn.execute(
                """UPDATE rad_reports SET text = ?, text_en = NULL, positive = -1, severity = -1, summary = '',
                       model = '', endpoint = '', prompt_version = '', latency = -1, graded = NULL, grade_error = ''
                   WHERE uid = ?""", (report.text, uid))
        await conn.execute(
            """INSERT INTO report_fetches (uid, attempts, next_at, state, reason, request, updated)
               VALUES (?, 1, NULL, 'found', '', ?, ?)
               ON CONFLICT (uid) DO UPDATE SET attempts = attempts + 1, next_at = NULL, state = 'found',
                   reason = '', request = excluded.request, updated = excluded.updated""",
            (uid, report.request_id, now))
        await _remember_patient(conn, uid, report.patient_id)
        await _await_grading(conn, uid, now)
    return True


async def _await_grading(conn: aiosqlite.Connection, uid: str, now: str) -> None:
    """A done exam whose report waits for its grade shows 'check' (an exam in analysis keeps its status)."""
    await conn.execute(
        f"""UPDATE exams SET status = ?, updated = ? WHERE uid = ? AND status = ?
             AND EXISTS (SELECT 1 FROM rad_reports WHERE uid = ? AND {schema.AWAITING_GRADE})""",
        (schema.CHECK, now, uid, schema.DONE, uid))


async def restart(store: Store, uid: str) -> bool:
    """A person asks again: the search starts afresh (its tries forgotten), and a report whose grading gave up is
    graded again. False if there is no such exam."""
    now = timeutil.to_store(timeutil.utc_now())
    async with store.transaction() as conn:
        if not await exams.exists(conn, uid):
            return False
        await conn.execute(
            """INSERT INTO report_fetches (uid, attempts, next_at, state, reason, request, updated)
               VALUES (?, 0, ?, 'seeking', '', '', ?)
               ON CONFLICT (uid) DO UPDATE SET attempts = 0, next_at = excluded.next_at, state = 'seeking',
                   reason = '', updated = excluded.updated""", (uid, now, now))
        await conn.execute("UPDATE rad_reports SET grade_error = '' WHERE uid = ? AND severity < 0", (uid,))
        await _await_grading(conn, uid, now)
    return True


async def ungraded(store: Store, limit: int, exclude: Sequence[str] = ()) -> list[sqlite3.Row]:
    """Reports waiting for their grade, oldest first (the partial index holds just these)."""
    marks = ", ".join("?" for _ in exclude)
    extra = f" AND uid NOT IN ({marks})" if exclude else ""
    return await store.fetch_all(
        "SELECT uid, text FROM rad_reports INDEXED BY idx_rad_reports_ungraded "
        f"WHERE {schema.AWAITING_GRADE}{extra} ORDER BY created LIMIT ?", (*exclude, limit))
    # (V7 marks reports without words as failed, and a fetched report always has words: none is graded blind.)


async def _add_calls(conn: aiosqlite.Connection, uid: str, now: str, calls: Sequence[CallRecord]) -> None:
    await conn.executemany(
        """INSERT INTO report_calls (uid, created, kind, model, endpoint, prompt_version, latency, raw, tokens_in,
                                     tokens_out, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [(uid, now, c.kind, c.model, c.endpoint, c.prompt_version, c.latency_ms, c.raw, c.tokens_in, c.tokens_out,
          c.error) for c in calls])


async def add_calls(store: Store, uid: str, calls: Sequence[CallRecord]) -> None:
    """Calls that ended neither in a grade nor in giving up (no model could be reached), kept all the same."""
    if calls:
        async with store.transaction() as conn:
            await _add_calls(conn, uid, timeutil.to_store(timeutil.utc_now()), calls)


async def save_grade(store: Store, uid: str, text: str, grade: GradeRecord, calls: Sequence[CallRecord]) -> bool:
    """Store the grade of the report whose words were `text` (if they changed meanwhile, only the calls are kept),
    and the exam waiting on it is done again. False if nothing was graded."""
    now = timeutil.to_store(timeutil.utc_now())
    async with store.transaction() as conn:
        await _add_calls(conn, uid, now, calls)
        cur = await conn.execute(
            """UPDATE rad_reports SET positive = ?, severity = ?, summary = ?, text_en = ?, model = ?, endpoint = ?,
                   prompt_version = ?, latency = ?, graded = ?, grade_error = '', updated = ?
               WHERE uid = ? AND text = ? AND severity < 0""",
            (grade.positive, grade.severity, grade.summary, grade.text_en, grade.model, grade.endpoint,
             grade.prompt_version, grade.latency_ms, now, now, uid, text))
        if cur.rowcount != 1:
            return False
        await conn.execute("UPDATE exams SET status = ?, updated = ? WHERE uid = ? AND status = ?",
                           (schema.DONE, now, uid, schema.CHECK))
    return True


async def save_grade_failure(store: Store, uid: str, text: str, reason: str, calls: Sequence[CallRecord]) -> None:
    """Grading of the words `text` gave up: the calls and the reason are kept, the exam is done again (ungraded, so
    not reviewed) and POST /api/getrad grades it again. Words that changed meanwhile are graded afresh instead."""
    now = timeutil.to_store(timeutil.utc_now())
    async with store.transaction() as conn:
        await _add_calls(conn, uid, now, calls)
        cur = await conn.execute(
            "UPDATE rad_reports SET grade_error = ?, updated = ? WHERE uid = ? AND text = ? AND severity < 0",
            (reason[:500] or "grading failed", now, uid, text))
        if cur.rowcount == 1:
            await conn.execute("UPDATE exams SET status = ?, updated = ? WHERE uid = ? AND status = ?",
                               (schema.DONE, now, uid, schema.CHECK))


async def calls(store: Store, uid: str) -> list[sqlite3.Row]:
    return await store.fetch_all("SELECT * FROM report_calls WHERE uid = ? ORDER BY seq", (uid,))
