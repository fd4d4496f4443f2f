"""The Store on real SQLite files: schema and pragmas, migrations, transactions, concurrent use, and Ingest."""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pydicom
import pytest
from conftest import cnp_with_check, synthetic_cr

from xrayvision import timeutil
from xrayvision.config import load_settings
from xrayvision.dicom.metadata import describe
from xrayvision.store import SchemaTooNewError, Store, StoreClosedError, schema, verdict
from xrayvision.store.exams import Ingest, awaiting_render, mark_error, mark_rendered
from xrayvision.store.instances import Instance
from xrayvision.store.schema import SCHEMA_VERSION
from xrayvision.store.worklist import get_exam

UTC = dt.UTC
NOW = timeutil.to_store(dt.datetime(2026, 1, 1, tzinfo=UTC))
INSERT_PATIENT = "INSERT INTO patients (cnp, name, updated) VALUES (?, ?, ?)"


def _plain(path: Path) -> sqlite3.Connection:
    """A second, ordinary connection: sees only what the store committed."""
    return sqlite3.connect(path, timeout=10)


def _count(path: Path, table: str) -> int:
    conn = _plain(path)
    try:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "xrayvision.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    store = await Store(db_path).open()
    try:
        yield store
    finally:
        await store.close()


# --- schema -------------------------------------------------------------------------------------------------------

async def test_new_database_has_the_schema_and_pragmas(store: Store, db_path: Path) -> None:
    assert db_path.is_file()  # the parent folder was made
    conn = _plain(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()
    assert {"patients", "exams", "ai_reports", "rad_reports"} <= tables
    assert await store.fetch_value("PRAGMA user_version") == SCHEMA_VERSION
    assert await store.fetch_value("PRAGMA foreign_keys") == 1
    async with store.transaction() as writer:
        async with writer.execute("PRAGMA foreign_keys") as cur:
            assert (await cur.fetchone())[0] == 1
    # And they are enforced: an exam for a patient that does not exist is refused.
    with pytest.raises(sqlite3.IntegrityError):
        await store.execute(
            "INSERT INTO exams (uid, cnp, created, received, updated) VALUES ('1.2', 'nobody', ?, ?, ?)",
            (NOW, NOW, NOW),
        )


async def test_status_check_constraint(store: Store) -> None:
    await store.execute(INSERT_PATIENT, ("p1", "A", NOW))
    with pytest.raises(sqlite3.IntegrityError):
        await store.execute(
            "INSERT INTO exams (uid, cnp, created, received, updated, status) VALUES ('1.2', 'p1', ?, ?, ?, 'bogus')",
            (NOW, NOW, NOW),
        )


async def test_reopening_keeps_data_and_does_not_migrate_again(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="xrayvision.store.database")
    first = await Store(db_path).open()
    try:
        await first.execute(INSERT_PATIENT, ("p1", "Popescu Ana", NOW))
    finally:
        await first.close()
    assert any("Migrating" in r.getMessage() for r in caplog.records)
    caplog.clear()

    second = await Store(db_path).open()
    try:
        assert await second.fetch_value("SELECT name FROM patients WHERE cnp = 'p1'") == "Popescu Ana"
        assert await second.fetch_value("PRAGMA user_version") == SCHEMA_VERSION
    finally:
        await second.close()
    assert not any("Migrating" in r.getMessage() for r in caplog.records)


def _threads_settle(baseline: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.02)
    return threading.active_count()


async def test_newer_schema_is_refused_and_left_alone(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    conn = _plain(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    baseline = threading.active_count()

    store = Store(db_path)
    with pytest.raises(SchemaTooNewError, match=str(SCHEMA_VERSION + 1)):
        await store.open()

    # The refused open leaves no connection (and no connection thread) behind, even while the store is referenced
    # (as it is from the traceback that reports the refusal).
    assert _threads_settle(baseline) == baseline
    with pytest.raises(StoreClosedError):
        await store.fetch_all("SELECT 1")
    conn = _plain(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    finally:
        conn.close()


# --- transactions -------------------------------------------------------------------------------------------------

async def test_transaction_commits_when_the_block_ends(store: Store, db_path: Path) -> None:
    async with store.transaction() as conn:
        await conn.execute(INSERT_PATIENT, ("p1", "A", NOW))
        await conn.execute(INSERT_PATIENT, ("p2", "B", NOW))
        assert _count(db_path, "patients") == 0  # not yet visible to anyone else
    assert _count(db_path, "patients") == 2


async def test_transaction_rolls_back_everything_and_reraises(store: Store, db_path: Path) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with store.transaction() as conn:
            await conn.execute(INSERT_PATIENT, ("p1", "A", NOW))
            await conn.execute(INSERT_PATIENT, ("p2", "B", NOW))
            raise Boom
    assert _count(db_path, "patients") == 0
    assert await store.fetch_value("SELECT COUNT(*) FROM patients") == 0

    # A failing statement undoes the statements before it in the same transaction.
    with pytest.raises(sqlite3.IntegrityError):
        async with store.transaction() as conn:
            await conn.execute(INSERT_PATIENT, ("p3", "C", NOW))
            await conn.execute(INSERT_PATIENT, ("p3", "duplicate", NOW))
    assert _count(db_path, "patients") == 0

    # The store goes on working.
    assert await store.execute(INSERT_PATIENT, ("p4", "D", NOW)) == 1
    assert _count(db_path, "patients") == 1
    assert await store.fetch_value("SELECT name FROM patients WHERE cnp = 'p4'") == "D"


async def test_cancelled_transaction_rolls_back(store: Store, db_path: Path) -> None:
    inside = asyncio.Event()

    async def writer() -> None:
        async with store.transaction() as conn:
            await conn.execute(INSERT_PATIENT, ("p1", "A", NOW))
            inside.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(writer())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _count(db_path, "patients") == 0
    assert await store.execute(INSERT_PATIENT, ("p2", "B", NOW)) == 1


# --- concurrency --------------------------------------------------------------------------------------------------

async def test_concurrent_writers_and_readers(store: Store, db_path: Path) -> None:
    n = 200
    writes = [store.execute(INSERT_PATIENT, (f"p{i:03d}", f"Name {i}", NOW)) for i in range(n)]
    reads = [store.fetch_value("SELECT COUNT(*) FROM patients") for _ in range(n)]
    results = await asyncio.gather(*writes, *reads)  # any "database is locked" would raise here
    assert results[:n] == [1] * n
    assert all(0 <= count <= n for count in results[n:])
    assert await store.fetch_value("SELECT COUNT(*) FROM patients") == n
    assert _count(db_path, "patients") == n
    names = {r["cnp"]: r["name"] for r in await store.fetch_all("SELECT cnp, name FROM patients")}
    assert names == {f"p{i:03d}": f"Name {i}" for i in range(n)}


async def test_readers_are_read_only(store: Store) -> None:
    with pytest.raises(sqlite3.OperationalError):
        await store.fetch_all("INSERT INTO patients (cnp, updated) VALUES ('x', 'y')")


# --- ingest -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rules():  # type: ignore[no-untyped-def]
    return load_settings(None, environ={}, base_dir=Path(__file__).parent).regions


def _instance(tmp_path: Path, rules, index: int, **changes: object) -> Instance:  # type: ignore[no-untyped-def]
    path = synthetic_cr(tmp_path / f"i{index}.dcm", rows=8, columns=8, seed=index, **changes)
    return describe(pydicom.dcmread(path), rules, UTC)


async def test_ingest_commits_each_uid_once(store: Store, db_path: Path, tmp_path: Path, rules) -> None:  # type: ignore[no-untyped-def]
    patients = [cnp_with_check(f"5100101400{i:02d}") for i in range(10)]
    instances = [
        _instance(tmp_path, rules, i, PatientID=patients[i % 10], PatientName=f"Pacient^{i % 10}",
                  ProtocolName="Torace PA" if i % 2 else "Genunchi drept")
        for i in range(50)
    ]
    duplicates = instances[:20]
    new_seen: list[str] = []
    ingest = Ingest(store, lambda inst: new_seen.append(inst.uid))
    ingest.start()
    try:
        everything = [*instances, *duplicates]  # more than one batch of MAX_BATCH
        results = await asyncio.gather(*(ingest.add(inst, f"{inst.uid}.dcm") for inst in everything))
    finally:
        await ingest.stop()

    by_uid: dict[str, Counter[bool]] = {}
    for inst, result in zip(everything, results):
        by_uid.setdefault(inst.uid, Counter())[result.new] += 1
    assert len(by_uid) == 50
    dup_uids = {d.uid for d in duplicates}
    for uid, counts in by_uid.items():
        assert counts[True] == 1, uid
        assert counts[False] == (1 if uid in dup_uids else 0), uid
    assert sorted(new_seen) == sorted(by_uid)  # once per new UID

    assert _count(db_path, "exams") == 50
    assert _count(db_path, "patients") == 10
    for inst in instances:
        assert await _known(store, inst.uid)
    row = await get_exam(store, instances[1].uid, threshold=5)
    assert row is not None
    assert row["cnp"] == patients[1]
    assert row["name"] == "Pacient 1"
    assert row["sex"] == "M"
    assert row["birthdate"] == "2010-01-01"
    assert row["county"] == 40
    assert row["region"] == "chest"
    assert row["projection"] == "frontal"
    assert row["status"] == schema.QUEUED
    assert row["created"] == "2026-11-20 10:15:00"  # synthetic_cr's SeriesDate/Time, read as UTC
    assert await store.fetch_value("SELECT dicom FROM exams WHERE uid = ?", (instances[1].uid,)) == \
        f"{instances[1].uid}.dcm"
    assert await store.fetch_value("SELECT region FROM exams WHERE uid = ?", (instances[0].uid,)) == "knee"


async def test_every_radiograph_awaits_rendering_analysed_or_not(store: Store, tmp_path: Path, rules) -> None:  # type: ignore[no-untyped-def]
    """What a restart renders: a queued chest and a knee ignored for its region (the radiologist still sees it),
    never a secondary capture, nor an exam already rendered or in error."""
    chest = _instance(tmp_path, rules, 1, ProtocolName="Torace PA")
    knee = _instance(tmp_path, rules, 2, ProtocolName="Genunchi drept")
    capture = _instance(tmp_path, rules, 3, ProtocolName="Torace PA", SOPClassUID="1.2.840.10008.5.1.4.1.1.7")
    failed = _instance(tmp_path, rules, 4, ProtocolName="Torace PA")
    done = _instance(tmp_path, rules, 5, ProtocolName="Torace PA")
    assert (chest.status, knee.status, capture.status) == (schema.QUEUED, schema.IGNORE, schema.IGNORE)
    ingest = Ingest(store, lambda inst: None)
    ingest.start()
    try:
        for inst in (chest, knee, capture, failed, done):
            await ingest.add(inst, f"{inst.uid}.dcm")
    finally:
        await ingest.stop()
    await mark_error(store, failed.uid, "cannot render the image: broken")
    await mark_rendered(store, done.uid, f"{done.uid}.png", keep_dicom=False)
    assert await awaiting_render(store) == [(chest.uid, f"{chest.uid}.dcm"), (knee.uid, f"{knee.uid}.dcm")]


def test_the_unrendered_index_names_every_radiograph_class_and_status() -> None:
    """schema.UNRENDERED is written out (a migration never changes); it must still say what the code means."""
    classes = ", ".join(f"'{c}'" for c in schema.RADIOGRAPH_SOP_CLASSES)
    assert f"sop_class IN ({classes})" in schema.UNRENDERED
    assert f"status IN ('{schema.QUEUED}', '{schema.IGNORE}')" in schema.UNRENDERED


async def test_ingest_fills_the_patient_but_never_renames_it(store: Store, tmp_path: Path, rules,
                                                              caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="xrayvision.store.exams")
    new_seen: list[str] = []
    ingest = Ingest(store, lambda inst: new_seen.append(inst.uid))
    ingest.start()
    try:
        first = _instance(tmp_path, rules, 1, PatientID="H0001", PatientName="Popescu^Ana", PatientSex="O",
                          PatientBirthDate="20190315")
        assert (await ingest.add(first, "a.dcm")).new
        await store.execute("UPDATE patients SET id = 'HIS123' WHERE cnp = 'H0001'")
        # The same name in other letters is the same name: no conflict.
        same = _instance(tmp_path, rules, 4, PatientID="H0001", PatientName="POPESCU^ANA ", PatientSex="")
        assert (await ingest.add(same, "s.dcm")).new
        assert await store.fetch_value("SELECT identity_conflict FROM patients WHERE cnp = 'H0001'") == 0
        assert not caplog.records

        second = _instance(tmp_path, rules, 2, PatientID="H0001", PatientName="Popescu^Ana^Maria", PatientSex="F")
        assert (await ingest.add(second, "b.dcm")).new
        row = await store.fetch_one("SELECT * FROM patients WHERE cnp = 'H0001'")
        assert row["name"] == "Popescu Ana"  # not renamed by a later sender
        assert row["sex"] == "F"  # unknown until now: filled
        assert row["birthdate"] == "2019-03-15"  # the second image has none: kept
        assert row["id"] == "HIS123"
        assert row["identity_conflict"] == 1

        # An image with no name and no sex changes neither, and still leaves the HIS id.
        third = _instance(tmp_path, rules, 3, PatientID="H0001", PatientName="", PatientSex="")
        assert (await ingest.add(third, "c.dcm")).new
        row = await store.fetch_one("SELECT * FROM patients WHERE cnp = 'H0001'")
        assert (row["name"], row["sex"], row["id"]) == ("Popescu Ana", "F", "HIS123")

        # The same instance again: not new, no callback, nothing changed.
        assert not (await ingest.add(second, "b-again.dcm")).new
    finally:
        await ingest.stop()
    assert new_seen == [first.uid, same.uid, second.uid, third.uid]
    assert await store.fetch_value("SELECT dicom FROM exams WHERE uid = ?", (second.uid,)) == "b.dcm"
    assert await store.fetch_value("SELECT COUNT(*) FROM exams WHERE cnp = 'H0001'") == 4
    # Each exam shows what it arrived with; one that arrived without a name shows the patient's.
    names = {uid: (await get_exam(store, uid, threshold=5))["name"] for uid in new_seen}
    assert names == {first.uid: "Popescu Ana", same.uid: "POPESCU ANA", second.uid: "Popescu Ana Maria",
                     third.uid: "Popescu Ana"}
    # One warning, for the instance that disagreed, naming the field and not the person.
    (warning,) = [r.getMessage() for r in caplog.records]
    assert second.uid in warning and "name" in warning
    assert "Popescu" not in warning and "H0001" not in warning and "Maria" not in warning


async def test_instances_that_disagree_on_birth_date_and_sex_flag_the_patient(store: Store, tmp_path: Path, rules,
                                                                              caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="xrayvision.store.exams")
    first = _instance(tmp_path, rules, 1, PatientID="X7", PatientName="Ene^Ion", PatientSex="M",
                      PatientBirthDate="19800101")
    second = _instance(tmp_path, rules, 2, PatientID="X7", PatientName="Ene^Ion", PatientSex="F",
                       PatientBirthDate="19810202")
    ingest = Ingest(store, lambda inst: None)
    ingest.start()
    try:
        await asyncio.gather(ingest.add(first, "1.dcm"), ingest.add(second, "2.dcm"))  # one transaction
    finally:
        await ingest.stop()
    rows = {r["uid"]: (r["patient_birthdate"], r["patient_sex"]) for r in await store.fetch_all(
        "SELECT uid, patient_birthdate, patient_sex FROM exams")}
    assert rows == {first.uid: ("1980-01-01", "M"), second.uid: ("1981-02-02", "F")}
    patient = await store.fetch_one("SELECT birthdate, sex, identity_conflict FROM patients WHERE cnp = 'X7'")
    assert tuple(patient) == ("1980-01-01", "M", 1)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "birth date, sex" in warning and "1981" not in warning and "Ene" not in warning


async def test_ingest_reports_a_failed_commit_and_keeps_running(store: Store, tmp_path: Path, rules) -> None:  # type: ignore[no-untyped-def]
    good = _instance(tmp_path, rules, 1)
    bad = Instance(**{**good.__dict__, "uid": "1.2.3.4", "status": "not-a-status"})  # breaks the CHECK constraint
    ingest = Ingest(store, lambda inst: None)
    ingest.start()
    try:
        with pytest.raises(sqlite3.IntegrityError):
            await ingest.add(bad, "bad.dcm")
        assert (await ingest.add(good, "good.dcm")).new
    finally:
        await ingest.stop()
    assert not await _known(store, bad.uid)
    assert await _known(store, good.uid)


# --- migrations -----------------------------------------------------------------------------------------------------

async def test_a_schema_1_database_with_rows_is_migrated_keeping_them(db_path: Path) -> None:
    """Schema 1 built from its own migration, filled as that release wrote it, then opened by today's Store."""
    db_path.parent.mkdir(parents=True)
    conn = _plain(db_path)
    try:
        conn.executescript(f"BEGIN;\n{schema.MIGRATIONS[0]}\nPRAGMA user_version = 1;\nCOMMIT;")
        conn.execute("INSERT INTO patients (cnp, id, patient_id, name, birthdate, sex, county, updated) VALUES "
                     "('2900101400017', 'HIS9', '2900101400017', 'Pop Ana', '1990-01-01', 'F', 40, ?)", (NOW,))
        for n, status in enumerate(("done", "queued", "error")):
            conn.execute("INSERT INTO exams (uid, cnp, created, received, updated, region, status, image) "
                         "VALUES (?, '2900101400017', ?, ?, ?, 'chest', ?, ?)",
                         (f"1.2.{n}", NOW, NOW, NOW, status, f"1.2.{n}.png"))
        conn.execute("INSERT INTO ai_reports (uid, created, updated, severity, confidence, positive) "
                     "VALUES ('1.2.0', ?, ?, 7, 80, 1)", (NOW, NOW))
        conn.execute("INSERT INTO rad_reports (uid, created, updated, severity, radiologist, summary) "
                     "VALUES ('1.2.0', ?, ?, 2, 'Dr Ion Pop', 'Normal')", (NOW, NOW))
        conn.commit()
    finally:
        conn.close()

    store = await Store(db_path).open()
    try:
        assert await store.fetch_value("PRAGMA user_version") == SCHEMA_VERSION
        rows = {r["uid"]: dict(r) for r in await store.fetch_all("SELECT * FROM exams ORDER BY uid")}
        assert set(rows) == {"1.2.0", "1.2.1", "1.2.2"}
        done = rows["1.2.0"]
        assert (done["status"], done["image"], done["retry_at"]) == ("done", "1.2.0.png", None)
        # Schema 3's copies were filled from the rows that existed.
        assert (done["ai_severity"], done["ai_confidence"], done["rad_severity"], done["verdict"]) == (7, 80, 2, -1)
        assert (done["radiologist"], done["diagnostic"]) == ("Dr Ion Pop", "normal")
        # Schema 5: each exam takes its patient's demographics; nobody is flagged.
        assert {(r["patient_name"], r["patient_birthdate"], r["patient_sex"]) for r in rows.values()} == {
            ("Pop Ana", "1990-01-01", "F")}
        patient = await store.fetch_one("SELECT id, name, identity_conflict FROM patients")
        assert tuple(patient) == ("HIS9", "Pop Ana", 0)
        exam = await get_exam(store, "1.2.0", threshold=5)
        assert (exam["name"], exam["reviewed"], exam["correct"], exam["identity_conflict"]) == ("Pop Ana", 1, 0, 0)
        # The new indexes and triggers work on the migrated rows.
        await store.execute("INSERT INTO reviews (uid, reviewer, verdict, created) VALUES ('1.2.0', 'a', 1, ?)",
                            (NOW,))
        assert await store.fetch_value("SELECT verdict FROM exams WHERE uid = '1.2.0'") == 1
    finally:
        await store.close()


async def test_the_verdict_in_sql_and_in_python_agree(store: Store) -> None:
    """verdict.py's two forms of one definition, over every combination."""
    await store.execute(INSERT_PATIENT, ("p1", "A", NOW))
    cases = [(manual, rad, ai) for manual in (-1, 0, 1) for rad in (-1, 0, 4, 5, 9) for ai in (-1, 0, 5, 9)]
    for n, (manual, rad, ai) in enumerate(cases):
        await store.execute("INSERT INTO exams (uid, cnp, created, received, updated, verdict, rad_severity, "
                            "ai_severity) VALUES (?, 'p1', ?, ?, ?, ?, ?, ?)",
                            (f"9.{n}", NOW, NOW, NOW, manual, rad, ai))
    rows = await store.fetch_all(
        f"SELECT e.uid, {verdict.REVIEWED_SQL} AS reviewed, {verdict.TRUTH_SQL} AS truth, "
        f"{verdict.AI_POSITIVE_SQL} AS ai, {verdict.CORRECT_SQL} AS correct FROM exams e ORDER BY e.rowid",
        {"t": 5})
    for (manual, rad, ai), row in zip(cases, rows, strict=True):
        truth = verdict.radiologist_verdict(manual, rad, 5)
        said = verdict.ai_positive(ai, 5)
        assert bool(row["reviewed"]) == (truth is not None)
        assert (None if row["truth"] is None else bool(row["truth"])) == truth
        assert row["correct"] == (-1 if truth is None or said is None else int(truth == said)), (manual, rad, ai)
        if said is not None:
            assert bool(row["ai"]) == said
    # The manual review outranks the graded report, either way.
    assert verdict.radiologist_verdict(0, 9, 5) is False and verdict.radiologist_verdict(1, 0, 5) is True


# --- closing ------------------------------------------------------------------------------------------------------

async def test_closed_store_refuses_use_and_closes_twice(db_path: Path) -> None:
    store = await Store(db_path).open()
    await store.execute(INSERT_PATIENT, ("p1", "A", NOW))
    await store.close()
    await store.close()  # fine
    with pytest.raises(StoreClosedError):
        await store.execute(INSERT_PATIENT, ("p2", "B", NOW))
    with pytest.raises(StoreClosedError):
        await store.fetch_all("SELECT * FROM patients")
    with pytest.raises(StoreClosedError):
        await store.fetch_value("SELECT COUNT(*) FROM patients")
    with pytest.raises(StoreClosedError):
        async with store.transaction():
            pass
    assert _count(db_path, "patients") == 1


async def test_unopened_store_refuses_use(db_path: Path) -> None:
    store = Store(db_path)
    with pytest.raises(StoreClosedError):
        await store.execute(INSERT_PATIENT, ("p1", "A", NOW))
    await store.close()


async def _known(store: Store, uid: str) -> bool:
    return await store.fetch_value("SELECT 1 FROM exams WHERE uid = ?", (uid,)) is not None
