"""Exam rows: ingest in batches, rendering bookkeeping, and the reads the API needs."""
from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

import aiosqlite

from .. import timeutil
from ..clinical.regions import normalise
from ..tasks import cancel_and_wait
from . import schema
from .database import Store
from .instances import Committed, Instance

logger = logging.getLogger(__name__)

MAX_BATCH = 64  # instances committed in one transaction when several associations store at once

# A patient's row keeps the first value known for each field; a later instance only fills what is missing, so no
# sender can rename a patient on earlier exams. Each exam keeps what it arrived with (exams.patient_*).
_INSERT_PATIENT = """
INSERT INTO patients (cnp, patient_id, name, birthdate, sex, county, updated) VALUES (?, ?, ?, ?, ?, ?, ?)
"""
_FILL_PATIENT = """
UPDATE patients SET
    patient_id = CASE WHEN patient_id = '' THEN ? ELSE patient_id END,
    name = CASE WHEN name = '' THEN ? ELSE name END,
    birthdate = COALESCE(birthdate, ?),
    sex = CASE WHEN sex = 'O' THEN ? ELSE sex END,
    county = COALESCE(county, ?),
    identity_conflict = MAX(identity_conflict, ?),
    updated = ?
WHERE cnp = ?
"""
# The HIS id (patients.id) is never touched here: it comes from FHIR and must survive new images.

_INSERT_EXAM = """
INSERT INTO exams (uid, cnp, id, created, received, updated, protocol, region, projection, type, sop_class,
                   transfer_syntax, age, status, reason, study, series, dicom, patient_name, patient_birthdate,
                   patient_sex)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


def _disagreements(known: sqlite3.Row, name: str, birthdate: str | None, sex: str) -> list[str]:
    """The demographics in which an instance contradicts what its patient's earlier instances said (a value
    missing on either side is no contradiction; names are compared without case, diacritics or spacing)."""
    fields = []
    if name and known["name"] and normalise(name) != normalise(known["name"]):
        fields.append("name")
    if birthdate and known["birthdate"] and birthdate != known["birthdate"]:
        fields.append("birth date")
    if sex != "O" and known["sex"] != "O" and sex != known["sex"]:
        fields.append("sex")
    return fields


@dataclass
class _Pending:
    instance: Instance
    dicom_name: str
    future: asyncio.Future[Committed]


class Ingest:
    """Commits received instances. Callers await their own row; rows that arrive together share a transaction,
    so parallel associations pay for one fsync, not one each."""

    def __init__(self, store: Store, on_new: Callable[[Instance], None]) -> None:
        self.store = store
        self.on_new = on_new
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ingest")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        for item in self._pending:
            item.future.cancel()  # the receiver stopped first, so nobody is waiting for these any more

    async def add(self, instance: Instance, dicom_name: str) -> Committed:
        """Commit one instance whose file is already written; a known UID changes nothing."""
        future: asyncio.Future[Committed] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(instance, dicom_name, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    results = await self._commit(batch)
                except Exception as exc:  # the outer edge of this task: report to every waiter, keep running
                    logger.exception("Could not commit %d received instance(s)", len(batch))
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    continue
                for item, result in zip(batch, results):
                    if not item.future.done():
                        item.future.set_result(result)
                    if result.new:
                        try:
                            self.on_new(item.instance)
                        except Exception:  # the row is committed; a failing listener must not stop ingest
                            logger.exception("Listener failed for %s", item.instance.uid)

    async def _commit(self, batch: list[_Pending]) -> list[Committed]:
        now = timeutil.to_store(timeutil.utc_now())
        results: list[Committed] = []
        conflicts: list[tuple[str, list[str]]] = []
        async with self.store.transaction() as conn:
            for item in batch:
                results.append(await self._commit_one(conn, item, now, conflicts))
        for uid, differs in conflicts:  # once committed; field names only, patient data stays out of the log
            logger.warning("Instance %s disagrees with its patient's earlier instances on %s; kept as it came with "
                           "this exam, and the patient is flagged", uid, ", ".join(differs))
        return results

    async def _commit_one(self, conn: aiosqlite.Connection, item: _Pending, now: str,
                          conflicts: list[tuple[str, list[str]]]) -> Committed:
        i = item.instance
        async with conn.execute("SELECT dicom FROM exams WHERE uid = ?", (i.uid,)) as cur:
            existing = await cur.fetchone()
        if existing is not None:  # a re-sent instance changes nothing, its patient included
            return Committed(new=False, keep_file=existing["dicom"] == item.dicom_name)
        birthdate = i.birthdate.isoformat() if i.birthdate else None
        async with conn.execute("SELECT name, birthdate, sex FROM patients WHERE cnp = ?", (i.patient_key,)) as cur:
            known = await cur.fetchone()
        if known is None:
            await conn.execute(_INSERT_PATIENT, (i.patient_key, i.patient_id, i.name, birthdate, i.sex, i.county, now))
        else:
            differs = _disagreements(known, i.name, birthdate, i.sex)
            if differs:
                conflicts.append((i.uid, differs))
            await conn.execute(_FILL_PATIENT, (i.patient_id, i.name, birthdate, i.sex, i.county, int(bool(differs)),
                                               now, i.patient_key))
        await conn.execute(
            _INSERT_EXAM,
            (i.uid, i.patient_key, i.accession, timeutil.to_store(i.created), now, now, i.protocol, i.region,
             i.projection, i.modality, i.sop_class, i.transfer_syntax, i.age, i.status, i.reason, i.study,
             i.series, item.dicom_name, i.name, birthdate, i.sex),
        )
        return Committed(new=True, keep_file=True)


async def exists(conn: aiosqlite.Connection, uid: str) -> bool:
    """Whether the exam is there, read inside a write transaction (so nothing deletes it before the commit)."""
    async with conn.execute("SELECT 1 FROM exams WHERE uid = ?", (uid,)) as cur:
        return await cur.fetchone() is not None


async def awaiting_render(store: Store) -> list[tuple[str, str]]:
    """(uid, dicom file name) of radiographs still without a PNG (queued, or ignored for their region), oldest first.
    The partial index holds just those rows (schema.UNRENDERED), so the start-up query never walks the table."""
    rows = await store.fetch_all(
        f"SELECT uid, dicom FROM exams INDEXED BY idx_exams_unrendered WHERE {schema.UNRENDERED} ORDER BY received")
    return [(r["uid"], r["dicom"]) for r in rows]


async def mark_rendered(store: Store, uid: str, image: str, keep_dicom: bool) -> None:
    now = timeutil.to_store(timeutil.utc_now())
    if keep_dicom:
        await store.execute("UPDATE exams SET image = ?, updated = ? WHERE uid = ?", (image, now, uid))
    else:
        # The row stops pointing at the .dcm in the same commit that records the PNG; the file goes after.
        await store.execute("UPDATE exams SET image = ?, dicom = NULL, updated = ? WHERE uid = ?", (image, now, uid))


async def mark_error(store: Store, uid: str, reason: str) -> None:
    now = timeutil.to_store(timeutil.utc_now())
    await store.execute(
        "UPDATE exams SET status = ?, reason = ?, updated = ? WHERE uid = ?", (schema.ERROR, reason, now, uid)
    )
