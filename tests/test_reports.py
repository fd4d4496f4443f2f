"""Radiologists' reports in the store (store/reports.py) on a real SQLite file: the search's tries and backoff, the
fetched report, its grade and what the exam shows of them."""
from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import make_settings

from xrayvision import timeutil
from xrayvision.store import Store, queue, reports, reviews, schema
from xrayvision.store.worklist import get_exam
from xrayvision.web.present import exam_object

THRESHOLD = 5


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store(tmp_path / "x.db").open()
    yield store
    await store.close()


async def _exam(store: Store, uid: str, *, days_ago: float = 1, status: str = schema.DONE, cnp: str = "P1") -> None:
    now = timeutil.utc_now()
    created = timeutil.to_store(now - dt.timedelta(days=days_ago))
    await store.execute("INSERT OR IGNORE INTO patients (cnp, name, updated) VALUES (?, 'Pop^Ana', ?)",
                        (cnp, created))
    await store.execute("INSERT INTO exams (uid, cnp, created, received, updated, status, region, type) "
                        "VALUES (?, ?, ?, ?, ?, ?, 'chest', 'CR')", (uid, cnp, created, created, created, status))


def _report(text: str = "Opacitate bazală dreaptă.", **changes: object) -> reports.Report:
    fields: dict[str, object] = dict(
        report_id="dr1", request_id="sr1", patient_id="pat-9", text=text, radiologist="Dr Ana Ionescu",
        justification="tuse", issued=timeutil.utc_now(), type="XR chest", status="final")
    fields.update(changes)
    return reports.Report(**fields)  # type: ignore[arg-type]


def _grade(severity: int = 7) -> reports.GradeRecord:
    return reports.GradeRecord(positive=1, severity=severity, summary="pneumonia", text_en="Right basal opacity.",
                               model="m", endpoint="primary", prompt_version="v", latency_ms=12)


CALL = reports.CallRecord(kind="grade", model="m", endpoint="primary", prompt_version="v", latency_ms=12,
                          raw='{"pathologic": "yes"}', tokens_in=10, tokens_out=5, error=None)


async def _rad(store: Store, tmp_path: Path, uid: str) -> dict:
    row = await get_exam(store, uid, THRESHOLD)
    assert row is not None
    return exam_object(row, make_settings(tmp_path), admin=True)


def test_backoff_doubles_from_the_interval_up_to_a_day() -> None:
    waits = [reports.backoff(n, 300).total_seconds() for n in range(1, 12)]
    assert waits[:4] == [300, 600, 1200, 2400]
    assert max(waits) == 86400 and waits[-1] == 86400


async def test_due_exams_are_done_ones_within_the_look_back_without_a_report_oldest_first(store: Store) -> None:
    await _exam(store, "new", days_ago=1)
    await _exam(store, "old", days_ago=5)
    await _exam(store, "too-old", days_ago=40)
    await _exam(store, "queued", status=schema.QUEUED)
    await _exam(store, "reported", days_ago=2)
    await reports.save_found(store, "reported", _report())
    rows = await reports.due(store, lookback_days=30, limit=10)
    assert [r["uid"] for r in rows] == ["old", "new"]
    assert [r["uid"] for r in await reports.due(store, lookback_days=30, limit=1)] == ["old"]


async def test_a_miss_backs_off_and_the_last_try_marks_the_exam_missing(store: Store, tmp_path: Path) -> None:
    await _exam(store, "e1")
    for n in range(1, 3):
        attempts, state = await reports.record_miss(store, "e1", "no final report yet", request_id="sr1",
                                                    patient_id="pat-9", max_attempts=3, interval=60)
        assert (attempts, state) == (n, "seeking")
        assert await reports.due(store, lookback_days=30, limit=10) == []  # waiting out its backoff
        rad = (await _rad(store, tmp_path, "e1"))["report"]["rad"]
        assert rad["state"] == "seeking" and rad["attempts"] == n and rad["reason"] == "no final report yet"
        assert rad["next_attempt"] is not None
        await store.execute("UPDATE report_fetches SET next_at = '2000-01-01 00:00:00'")
        assert [r["uid"] for r in await reports.due(store, lookback_days=30, limit=10)] == ["e1"]
    assert await reports.record_miss(store, "e1", "no final report yet", request_id="", patient_id="",
                                     max_attempts=3, interval=60) == (3, "missing")
    assert await reports.due(store, lookback_days=30, limit=10) == []
    exam = await _rad(store, tmp_path, "e1")
    assert exam["report"]["rad"]["state"] == "missing" and exam["report"]["rad"]["next_attempt"] is None
    assert exam["patient"]["id"] == "pat-9"  # the HIS id found on the way is kept
    row = await reports.query(store, "e1")
    assert row is not None and row["request"] == "sr1" and row["his_id"] == "pat-9"
    # A person asks again: the tries start afresh and it is due at once.
    assert await reports.restart(store, "e1")
    assert [r["uid"] for r in await reports.due(store, lookback_days=30, limit=10)] == ["e1"]
    assert (await _rad(store, tmp_path, "e1"))["report"]["rad"]["attempts"] == 0
    assert not await reports.restart(store, "nope")


async def test_a_found_report_waits_in_check_then_its_grade_makes_the_exam_reviewed(store: Store,
                                                                                     tmp_path: Path) -> None:
    await _exam(store, "e1")
    await store.execute("INSERT INTO ai_reports (uid, created, updated, severity, summary, text) "
                        "VALUES ('e1', '2026-01-01 00:00:00', '2026-01-01 00:00:00', 2, 'normal', 'AI words')")
    assert await reports.save_found(store, "e1", _report())
    exam = await _rad(store, tmp_path, "e1")
    rad = exam["report"]["rad"]
    assert exam["exam"]["status"] == schema.CHECK and rad["state"] == "check"
    assert rad["text"] == "Opacitate bazală dreaptă." and rad["radiologist"] == "Dr Ana Ionescu"
    assert rad["severity"] == -1 and exam["report"]["reviewed"] == 0
    assert rad["id"] == "dr1" and rad["request"] == "sr1" and rad["justification"] == "tuse"
    assert rad["report_seconds"] is not None and 86000 < rad["report_seconds"] < 86800
    assert [r["uid"] for r in await reports.ungraded(store, 5)] == ["e1"]

    assert await reports.save_grade(store, "e1", "Opacitate bazală dreaptă.", _grade(7), [CALL])
    exam = await _rad(store, tmp_path, "e1")
    rad = exam["report"]["rad"]
    assert exam["exam"]["status"] == schema.DONE and rad["state"] == "graded"
    assert (rad["severity"], rad["positive"], rad["summary"], rad["text_en"]) == (7, 1, "pneumonia",
                                                                                   "Right basal opacity.")
    assert exam["report"]["reviewed"] == 1 and exam["report"]["correct"] == 0  # AI said 2: normal
    assert exam["report"]["ai"]["severity"] == 2 and exam["report"]["ai"]["text"] == "AI words"  # untouched
    assert await reports.ungraded(store, 5) == []
    (call,) = await reports.calls(store, "e1")
    assert (call["kind"], call["endpoint"], call["raw"], call["error"]) == ("grade", "primary",
                                                                            '{"pathologic": "yes"}', None)
    # A manual review outranks the graded report.
    await reviews.add_review(store, "e1", "admin", abnormal=False)
    exam = await _rad(store, tmp_path, "e1")
    assert exam["report"]["correct"] == 1 and exam["report"]["rad"]["severity"] == 7


async def test_the_same_words_fetched_again_keep_their_grade_new_words_are_graded_afresh(store: Store,
                                                                                          tmp_path: Path) -> None:
    await _exam(store, "e1")
    await reports.save_found(store, "e1", _report("First words."))
    await reports.save_grade(store, "e1", "First words.", _grade(7), [])
    await reports.save_found(store, "e1", _report("First words."))
    exam = await _rad(store, tmp_path, "e1")
    assert exam["exam"]["status"] == schema.DONE and exam["report"]["rad"]["severity"] == 7
    await reports.save_found(store, "e1", _report("Amended words.", status="amended"))
    exam = await _rad(store, tmp_path, "e1")
    assert exam["exam"]["status"] == schema.CHECK and exam["report"]["rad"]["severity"] == -1
    assert exam["report"]["rad"]["text_en"] is None and exam["report"]["reviewed"] == 0
    # A grade of the old words does not land on the new ones.
    assert not await reports.save_grade(store, "e1", "First words.", _grade(3), [CALL])
    assert (await _rad(store, tmp_path, "e1"))["report"]["rad"]["severity"] == -1
    assert len(await reports.calls(store, "e1")) == 1


async def test_grading_that_gives_up_leaves_the_report_unreviewed_until_asked_again(store: Store,
                                                                                     tmp_path: Path) -> None:
    await _exam(store, "e1")
    await reports.save_found(store, "e1", _report())
    failed = reports.CallRecord(kind="grade", model="m", endpoint="primary", prompt_version="v", latency_ms=5,
                                raw="prose", tokens_in=None, tokens_out=None, error="no JSON object in the answer")
    await reports.save_grade_failure(store, "e1", _report().text, "invalid answer from the model", [failed, failed])
    exam = await _rad(store, tmp_path, "e1")
    assert exam["exam"]["status"] == schema.DONE and exam["report"]["rad"]["state"] == "failed"
    assert exam["report"]["rad"]["reason"] == "invalid answer from the model" and exam["report"]["reviewed"] == 0
    assert await reports.ungraded(store, 5) == []
    assert [c["error"] for c in await reports.calls(store, "e1")] == ["no JSON object in the answer"] * 2
    await reports.restart(store, "e1")
    assert [r["uid"] for r in await reports.ungraded(store, 5)] == ["e1"]
    assert (await _rad(store, tmp_path, "e1"))["exam"]["status"] == schema.CHECK


async def test_an_exam_in_analysis_keeps_its_status_while_its_report_waits(store: Store, tmp_path: Path) -> None:
    await _exam(store, "e1", status=schema.REQUEUE)
    await reports.save_found(store, "e1", _report())
    assert (await _rad(store, tmp_path, "e1"))["exam"]["status"] == schema.REQUEUE
    assert [r["uid"] for r in await reports.ungraded(store, 5)] == ["e1"]  # graded all the same
    assert await reports.save_grade(store, "e1", _report().text, _grade(), [])
    assert (await _rad(store, tmp_path, "e1"))["exam"]["status"] == schema.REQUEUE


async def test_a_grading_failure_of_old_words_does_not_land_on_amended_ones(store: Store, tmp_path: Path) -> None:
    await _exam(store, "e1")
    await reports.save_found(store, "e1", _report("First words."))
    await reports.save_found(store, "e1", _report("Amended words.", status="amended"))  # while the first is graded
    await reports.save_grade_failure(store, "e1", "First words.", "invalid answer from the model", [CALL])
    exam = await _rad(store, tmp_path, "e1")
    assert exam["report"]["rad"]["state"] == "check" and exam["exam"]["status"] == schema.CHECK
    assert [r["uid"] for r in await reports.ungraded(store, 5)] == ["e1"]  # the new words wait for their grade
    assert len(await reports.calls(store, "e1")) == 1  # the failed call is kept all the same


async def test_an_exam_analysed_while_its_report_waits_ends_in_check_not_done(store: Store, tmp_path: Path) -> None:
    await _exam(store, "e1", status=schema.PROCESSING)
    await reports.save_found(store, "e1", _report())  # arrives during the analysis: the status is the worker's
    assert (await _rad(store, tmp_path, "e1"))["exam"]["status"] == schema.PROCESSING
    answer = queue.AIReport(text="t", positive=0, confidence=90, severity=1, summary="normal", model="m",
                            endpoint="pri", prompt_version="v", latency_ms=1, tokens_in=None, tokens_out=None)
    assert await queue.finish(store, "e1", answer)
    assert (await _rad(store, tmp_path, "e1"))["exam"]["status"] == schema.CHECK
    assert await reports.save_grade(store, "e1", _report().text, _grade(), [])
    assert (await _rad(store, tmp_path, "e1"))["exam"]["status"] == schema.DONE
    # Without a report waiting, the analysis ends in done as before.
    await _exam(store, "e2", status=schema.PROCESSING)
    assert await queue.finish(store, "e2", answer)
    assert (await _rad(store, tmp_path, "e2"))["exam"]["status"] == schema.DONE


async def test_v7_on_a_v6_database_keeps_graded_reports_and_grades_none_blind(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for version, migration in enumerate(schema.MIGRATIONS[:6], start=1):
        conn.executescript(f"BEGIN;\n{migration}\nPRAGMA user_version = {version};\nCOMMIT;")
    conn.execute("INSERT INTO patients (cnp, name, updated) VALUES ('P1', 'Pop^Ana', '2026-01-01 00:00:00')")
    for uid in ("graded", "empty", "ungraded"):
        conn.execute("INSERT INTO exams (uid, cnp, created, received, updated, status) VALUES "
                     "(?, 'P1', '2026-01-01 00:00:00', '2026-01-01 00:00:00', '2026-01-01 00:00:00', 'done')", (uid,))
    conn.executemany("INSERT INTO rad_reports (uid, created, updated, text, severity, summary) "
                     "VALUES (?, '2026-01-02 00:00:00', '2026-01-02 00:00:00', ?, ?, ?)",
                     [("graded", "Pneumonie.", 7, "pneumonia"), ("empty", "", -1, ""), ("ungraded", "Normal.", -1, "")])
    conn.commit()
    conn.close()
    store = await Store(path).open()
    try:
        assert await store.fetch_value("PRAGMA user_version") == schema.SCHEMA_VERSION
        assert [r["uid"] for r in await reports.ungraded(store, 10)] == ["ungraded"]  # words, no grade: graded now
        graded = await store.fetch_one("SELECT graded, grade_error FROM rad_reports WHERE uid = 'graded'")
        assert graded["graded"] == "2026-01-02 00:00:00" and graded["grade_error"] == ""
        assert await store.fetch_value("SELECT grade_error FROM rad_reports WHERE uid = 'empty'") != ""
        assert await store.fetch_value("SELECT COUNT(*) FROM report_fetches") == 0
        assert await reports.due(store, lookback_days=36500, limit=10) == []  # each has a report row already
    finally:
        await store.close()
