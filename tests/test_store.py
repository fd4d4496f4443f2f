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
from xrayvision.store import SchemaTooNewError, Store, StoreClosedError, schema
from xrayvision.store.exams import Ingest
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


async def test_ingest_updates_the_patient_but_keeps_the_his_id(store: Store, tmp_path: Path, rules) -> None:  # type: ignore[no-untyped-def]
    new_seen: list[str] = []
    ingest = Ingest(store, lambda inst: new_seen.append(inst.uid))
    ingest.start()
    try:
        first = _instance(tmp_path, rules, 1, PatientID="H0001", PatientName="Popescu^Ana", PatientSex="O",
                          PatientBirthDate="20190315")
        assert (await ingest.add(first, "a.dcm")).new
        await store.execute("UPDATE patients SET id = 'HIS123' WHERE cnp = 'H0001'")

        second = _instance(tmp_path, rules, 2, PatientID="H0001", PatientName="Popescu^Ana^Maria", PatientSex="F")
        assert (await ingest.add(second, "b.dcm")).new
        row = await store.fetch_one("SELECT * FROM patients WHERE cnp = 'H0001'")
        assert row["name"] == "Popescu Ana Maria"
        assert row["sex"] == "F"
        assert row["birthdate"] == "2019-03-15"  # the second image has none: kept
        assert row["id"] == "HIS123"

        # An image with no name and no sex changes neither, and still leaves the HIS id.
        third = _instance(tmp_path, rules, 3, PatientID="H0001", PatientName="", PatientSex="")
        assert (await ingest.add(third, "c.dcm")).new
        row = await store.fetch_one("SELECT * FROM patients WHERE cnp = 'H0001'")
        assert (row["name"], row["sex"], row["id"]) == ("Popescu Ana Maria", "F", "HIS123")

        # The same instance again: not new, no callback, nothing changed.
        assert not (await ingest.add(second, "b-again.dcm")).new
    finally:
        await ingest.stop()
    assert new_seen == [first.uid, second.uid, third.uid]
    assert await store.fetch_value("SELECT dicom FROM exams WHERE uid = ?", (second.uid,)) == "b.dcm"
    assert await store.fetch_value("SELECT COUNT(*) FROM exams WHERE cnp = 'H0001'") == 3


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
