"""Reads for people and scripts: exam pages under a filter, one exam, patients, regions."""
from __future__ import annotations

import sqlite3
from typing import Any

from . import schema
from .database import Store
from .filters import TRIAGE_FIRST_SQL, ExamFilter, like
from .verdict import CORRECT_SQL, REVIEWED_SQL

# An exam with its patient, latest AI answer, radiologist's report and latest manual review, and the derived
# reviewed/correct (filters.py defines them; :t is the severity threshold).
EXAM_SELECT = f"""
SELECT e.uid, e.cnp, e.id AS exam_id, e.created, e.received, e.updated, e.protocol, e.region, e.projection,
       e.type, e.status, e.reason, e.study, e.series, e.age, e.image,
       {REVIEWED_SQL} AS reviewed, {CORRECT_SQL} AS correct,
       p.id AS patient_his_id, p.patient_id, p.county, p.identity_conflict,
       -- the demographics this exam arrived with; the patient's known ones where the instance had none
       CASE WHEN e.patient_name != '' THEN e.patient_name ELSE p.name END AS name,
       COALESCE(e.patient_birthdate, p.birthdate) AS birthdate,
       CASE WHEN e.patient_sex != 'O' THEN e.patient_sex ELSE p.sex END AS sex,
       ai.text AS ai_text, ai.created AS ai_created, ai.updated AS ai_updated, ai.positive AS ai_positive,
       ai.confidence AS ai_confidence, ai.severity AS ai_severity, ai.summary AS ai_summary, ai.model AS ai_model,
       ai.latency AS ai_latency,
       rad.text AS rad_text, rad.text_en AS rad_text_en, rad.positive AS rad_positive, rad.severity AS rad_severity,
       rad.summary AS rad_summary, rad.created AS rad_created, rad.updated AS rad_updated, rad.id AS rad_id,
       rad.type AS rad_type, rad.radiologist AS rad_radiologist, rad.justification AS rad_justification,
       rad.model AS rad_model, rad.latency AS rad_latency, rad.request AS rad_request, rad.issued AS rad_issued,
       rad.grade_error AS rad_grade_error,
       fetch.state AS fetch_state, fetch.attempts AS fetch_attempts, fetch.next_at AS fetch_next_at,
       fetch.reason AS fetch_reason,
       rv.reviewer AS review_reviewer, rv.verdict AS review_verdict, rv.created AS review_created
FROM exams e
JOIN patients p ON p.cnp = e.cnp
LEFT JOIN ai_reports ai ON ai.seq = (SELECT MAX(seq) FROM ai_reports WHERE uid = e.uid)
LEFT JOIN rad_reports rad ON rad.uid = e.uid
LEFT JOIN report_fetches fetch ON fetch.uid = e.uid
LEFT JOIN reviews rv ON rv.seq = (SELECT MAX(seq) FROM reviews WHERE uid = e.uid)
"""


async def get_exam(store: Store, uid: str, threshold: int) -> sqlite3.Row | None:
    return await store.fetch_one(EXAM_SELECT + " WHERE e.uid = :uid", {"uid": uid, "t": threshold})


async def list_exams(store: Store, where: ExamFilter, page: int, page_size: int,
                     threshold: int) -> tuple[list[sqlite3.Row], int]:
    """One page of exams under the filter, in its order, and how many match in all."""
    clause, params = where.where(threshold)
    total = await store.fetch_value_memo(f"SELECT COUNT(*) FROM exams e WHERE {clause}", params)
    offset = (page - 1) * page_size
    if where.sort == "triage":
        uids = await _triage_page(store, where, clause, params, offset, page_size)
    else:
        uids = await _page(store, where, clause, params, offset, page_size)
    if not uids:
        return [], int(total or 0)
    names = {f"u{i}": uid for i, uid in enumerate(uids)}
    rows = await store.fetch_all(
        EXAM_SELECT + f" WHERE e.uid IN ({', '.join(':' + n for n in names)})", {**names, "t": threshold})
    by_uid = {row["uid"]: row for row in rows}
    return [by_uid[uid] for uid in uids if uid in by_uid], int(total or 0)


async def _page(store: Store, where: ExamFilter, clause: str, params: dict[str, Any], offset: int,
                limit: int, extra: str = "1") -> list[str]:
    """Newest first. Walking the worklist index in date order finds a page without sorting the matches; SQLite
    would otherwise pick a filter's own index and sort tens of thousands of rows to return ten."""
    hint = "INDEXED BY idx_exams_worklist" if where.follows_dates else ""
    rows = await store.fetch_all(
        f"SELECT e.uid FROM exams e {hint} WHERE ({clause}) AND {extra} ORDER BY e.created DESC, e.uid DESC "
        "LIMIT :limit OFFSET :offset", {**params, "limit": limit, "offset": offset})
    return [row[0] for row in rows]


async def _triage_page(store: Store, where: ExamFilter, clause: str, params: dict[str, Any], offset: int,
                       limit: int) -> list[str]:
    """Triage as two ordered walks: the unreviewed AI positives by severity (a partial index holds just them),
    then the rest newest first; the same order as filters' triage ORDER BY, without sorting the whole table."""
    first = [row[0] for row in await store.fetch_all(
        f"SELECT e.uid FROM exams e WHERE ({clause}) AND {TRIAGE_FIRST_SQL} "
        "ORDER BY e.ai_severity DESC, e.created DESC, e.uid DESC LIMIT :limit OFFSET :offset",
        {**params, "limit": limit, "offset": offset})]
    if len(first) == limit:
        return first
    in_first = await store.fetch_value_memo(
        f"SELECT COUNT(*) FROM exams e WHERE ({clause}) AND {TRIAGE_FIRST_SQL}", params)
    rest = await _page(store, where, clause, params, max(0, offset - int(in_first or 0)), limit - len(first),
                       extra=f"NOT {TRIAGE_FIRST_SQL}")
    return first + rest


_PATIENT_SELECT = """
SELECT p.cnp, p.id AS patient_his_id, p.patient_id, p.name, p.birthdate, p.sex, p.county, p.identity_conflict,
       (SELECT age FROM exams WHERE cnp = p.cnp ORDER BY created DESC LIMIT 1) AS last_age,
       (SELECT created FROM exams WHERE cnp = p.cnp ORDER BY created DESC LIMIT 1) AS last_exam
FROM patients p
"""


async def list_patients(store: Store, search: str | None, search_people: bool, page: int,
                        page_size: int) -> tuple[list[sqlite3.Row], int]:
    """Patients by name. `search` matches part of a name, CNP, DICOM or HIS id; for those who may not see people,
    it matches a whole exam UID or accession number only (the patient of an exam they can see), so that the search
    is no oracle for who was here."""
    params: dict[str, Any] = {}
    clause = "1"
    if search and search_people:
        params["q"] = like(search)
        clause = ("(p.name LIKE :q ESCAPE '\\' OR p.cnp LIKE :q ESCAPE '\\' OR p.patient_id LIKE :q ESCAPE '\\' "
                  "OR p.id LIKE :q ESCAPE '\\')")
    elif search:
        params["exact"] = search.strip()
        clause = "p.cnp IN (SELECT cnp FROM exams WHERE uid = :exact OR id = :exact)"
    total = await store.fetch_value_memo(f"SELECT COUNT(*) FROM patients p WHERE {clause}", params)
    # The page's keys first: the per-patient subqueries then run for ten rows, not for every row skipped.
    rows = await store.fetch_all(
        f"""WITH page AS (SELECT p.cnp FROM patients p WHERE {clause} ORDER BY p.name, p.cnp
                          LIMIT :limit OFFSET :offset)
            {_PATIENT_SELECT} JOIN page ON page.cnp = p.cnp ORDER BY p.name, p.cnp""",
        {**params, "limit": page_size, "offset": (page - 1) * page_size},
    )
    return rows, int(total or 0)


async def patient_of_exam(store: Store, uid: str) -> tuple[sqlite3.Row | None, list[str]]:
    """The patient of an exam, with the UIDs of their exams (newest first); (None, []) for an unknown exam."""
    cnp = await store.fetch_value("SELECT cnp FROM exams WHERE uid = ?", (uid,))
    return (None, []) if cnp is None else await get_patient(store, cnp)


async def get_patient(store: Store, cnp: str) -> tuple[sqlite3.Row | None, list[str]]:
    row = await store.fetch_one(f"{_PATIENT_SELECT} WHERE p.cnp = :cnp", {"cnp": cnp})
    if row is None:
        return None, []
    uids = [r[0] for r in await store.fetch_all(
        "SELECT uid FROM exams WHERE cnp = ? ORDER BY created DESC", (cnp,))]
    return row, uids


async def regions(store: Store) -> list[str]:
    """Regions that have analysed exams, sorted."""
    rows = await store.fetch_all(
        "SELECT DISTINCT region FROM exams WHERE status = ? AND region != '' ORDER BY region", (schema.DONE,))
    return [row[0] for row in rows]


async def radiologists(store: Store) -> list[str]:
    """Every radiologist with a graded report, as the `radiologist` filter matches them (idx_exams_radiologist)."""
    rows = await store.fetch_all(
        "SELECT DISTINCT radiologist COLLATE NOCASE FROM exams WHERE radiologist != '' AND rad_severity >= 0 "
        "ORDER BY 1")
    return [row[0] for row in rows]


async def diagnostics(store: Store) -> dict[str, int]:
    """Each graded report's diagnosis (the `diagnostic` filter's words) with its count, the most frequent first."""
    rows = await store.fetch_all(
        "SELECT diagnostic, COUNT(*) AS n FROM exams WHERE diagnostic != '' GROUP BY diagnostic "
        "ORDER BY n DESC, diagnostic")
    return {row[0]: row[1] for row in rows}


async def severities(store: Store) -> dict[str, int]:
    """Graded reports per severity, "0" to "10", each level present."""
    rows = await store.fetch_all(
        "SELECT rad_severity, COUNT(*) FROM exams WHERE rad_severity >= 0 GROUP BY rad_severity")
    counts = {str(level): 0 for level in range(11)}
    counts.update({str(row[0]): row[1] for row in rows})
    return counts
