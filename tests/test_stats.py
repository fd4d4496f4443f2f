"""The overall statistics (store/stats.py) on a real SQLite file: a hand-computed confusion matrix per region, the
manual review outranking the graded report, exams without both verdicts in no rate, local days and months across
DST changes, throughput, model time and errors."""
from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from xrayvision.clinical.statistics import wilson
from xrayvision.store import Store, schema, stats

THRESHOLD = 5
BUCHAREST = ZoneInfo("Europe/Bucharest")
NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store(tmp_path / "x.db").open()
    await store.execute("INSERT INTO patients (cnp, name, updated) VALUES ('P1', 'Pop^Ana', '2026-01-01 00:00:00')")
    yield store
    await store.close()


async def _exam(store: Store, uid: str, region: str = "chest", *, created: str = "2026-10-30 10:00:00",
                ai: tuple[int, ...] = (), rad: int | None = None, reviews: tuple[int, ...] = (),
                status: str = schema.DONE, reason: str = "") -> None:
    """An exam with its AI answers (severities, oldest first), graded report severity and manual reviews (oldest
    first), written with SQL as the app's own writers would leave them (the schema's triggers keep the copies)."""
    await store.execute(
        "INSERT INTO exams (uid, cnp, created, received, updated, status, reason, region, type) "
        "VALUES (?, 'P1', ?, ?, ?, ?, ?, ?, 'CR')", (uid, created, created, created, status, reason, region))
    for severity in ai:
        await store.execute("INSERT INTO ai_reports (uid, created, updated, severity, latency) VALUES (?, ?, ?, ?, 1)",
                            (uid, created, created, severity))
    if rad is not None:
        await store.execute("INSERT INTO rad_reports (uid, created, updated, severity, text, graded) "
                            "VALUES (?, ?, ?, ?, 'report', ?)", (uid, created, created, rad, created))
    for verdict in reviews:
        await store.execute("INSERT INTO reviews (uid, reviewer, verdict, created) VALUES (?, 'admin', ?, ?)",
                            (uid, verdict, created))


def _rate(successes: int, n: int, value: float) -> dict[str, float]:
    """The expected rate: `value` written out by hand, its bounds from wilson()."""
    low, high = wilson(successes, n)  # type: ignore[misc]
    return {"value": value, "low": round(low, 4), "high": round(high, 4)}


async def _fixture(store: Store) -> None:
    """chest: TP 3, TN 2, FP 1, FN 1; clavicle: TP 1, FP 2; no region: TN 1. Threshold 5: severity 5 is positive."""
    # chest TP: report and AI positive; a manual abnormal without a report; a manual abnormal outranking a
    # normal report.
    await _exam(store, "c-tp1", ai=(8,), rad=8)
    await _exam(store, "c-tp2", ai=(9,), reviews=(1,))
    await _exam(store, "c-tp3", ai=(8,), rad=2, reviews=(1,))
    # chest TN: the AI's latest answer counts (8 first, then 1); a manual normal outranking a positive report, the
    # latest review counting (abnormal first, then normal).
    await _exam(store, "c-tn1", ai=(8, 1), rad=2)
    await _exam(store, "c-tn2", ai=(2,), rad=8, reviews=(1, 0))
    await _exam(store, "c-fp1", ai=(5,), rad=3)  # the AI at the threshold is positive
    await _exam(store, "c-fn1", ai=(4,), rad=5)  # the report at the threshold is positive
    # In no rate: answered but no verdict (in total and positive); a verdict but no answer (in reviewed); a report
    # still waiting for its grade (severity -1: no verdict); an answer of the AI that did not parse (severity -1).
    await _exam(store, "c-unreviewed", ai=(9,))
    await _exam(store, "c-unanswered", rad=9, status=schema.ERROR, reason="timeout")
    await _exam(store, "c-ungraded", ai=(7,), rad=-1, status=schema.CHECK)
    await _exam(store, "c-noanswer", ai=(-1,), rad=9, reviews=(1,))
    # clavicle: TP 1, FP 2 (one by a manual normal), no radiologist-positive negative and no AI negative.
    await _exam(store, "k-tp1", "clavicle", ai=(9,), rad=9)
    await _exam(store, "k-fp1", "clavicle", ai=(6,), rad=0)
    await _exam(store, "k-fp2", "clavicle", ai=(10,), reviews=(0,))
    await _exam(store, "u-tn1", "", ai=(0,), rad=1)
    # Neither answered nor reviewed: a region that appears nowhere; errors and ignored exams.
    await _exam(store, "n-ignored", "knee", status=schema.IGNORE, reason="region not analysed")
    await _exam(store, "e-timeout", status=schema.ERROR, reason="timeout")
    await _exam(store, "e-bad", status=schema.ERROR, reason="invalid answer")
    await _exam(store, "e-none", status=schema.ERROR)


COUNTS = ("total", "reviewed", "positive", "correct", "wrong")


async def test_counts_rates_and_wilson_intervals_per_region_and_overall(store: Store) -> None:
    await _fixture(store)
    result = await stats.overall(store, THRESHOLD, BUCHAREST, NOW)
    assert list(result["region"]) == ["chest", "clavicle", "unknown"]  # knee: neither answered nor reviewed

    # chest total: the 7 in the table + c-unreviewed + c-ungraded; reviewed: 7 + c-unanswered + c-noanswer;
    # positive: TP 3 + FP 1 + c-unreviewed + c-ungraded.
    assert result["region"]["chest"] == {
        "total": 9, "reviewed": 9, "positive": 6, "correct": 5, "wrong": 2,
        "tp": 3, "tn": 2, "fp": 1, "fn": 1,
        "sensitivity": _rate(3, 4, 0.75), "specificity": _rate(2, 3, 0.6667), "ppv": _rate(3, 4, 0.75),
        "npv": _rate(2, 3, 0.6667), "accuracy": _rate(5, 7, 0.7143),
        "f1": 0.75,  # 6 / (6 + 1 + 1)
        "mcc": 0.4167,  # (3·2 − 1·1) / √(4·4·3·3) = 5 / 12
    }
    assert result["region"]["clavicle"] == {
        "total": 3, "reviewed": 3, "positive": 3, "correct": 1, "wrong": 2,
        "tp": 1, "tn": 0, "fp": 2, "fn": 0,
        "sensitivity": _rate(1, 1, 1.0), "specificity": _rate(0, 2, 0.0), "ppv": _rate(1, 3, 0.3333),
        "npv": None,  # the AI called nothing negative
        "accuracy": _rate(1, 3, 0.3333),
        "f1": 0.5,  # 2 / (2 + 2)
        "mcc": None,  # TN + FN = 0
    }
    assert result["region"]["unknown"] == {
        "total": 1, "reviewed": 1, "positive": 0, "correct": 1, "wrong": 0,
        "tp": 0, "tn": 1, "fp": 0, "fn": 0,
        "sensitivity": None, "specificity": _rate(1, 1, 1.0), "ppv": None, "npv": _rate(1, 1, 1.0),
        "accuracy": _rate(1, 1, 1.0), "f1": None, "mcc": None,  # F1: 2·TP + FP + FN = 0
    }
    # Overall: the regions' tables summed, TP 4, TN 3, FP 3, FN 1.
    assert {key: result[key] for key in COUNTS} == {
        "total": 13, "reviewed": 13, "positive": 9, "correct": 7, "wrong": 4}
    assert result["confusion"] == {
        "tp": 4, "tn": 3, "fp": 3, "fn": 1, "total": 11,
        "sensitivity": _rate(4, 5, 0.8), "specificity": _rate(3, 6, 0.5), "ppv": _rate(4, 7, 0.5714),
        "npv": _rate(3, 4, 0.75), "accuracy": _rate(7, 11, 0.6364),
        "f1": 0.6667,  # 8 / 12
        "mcc": 0.3105,  # (4·3 − 3·1) / √(7·5·6·4) = 9 / √840
    }
    assert result["error_stats"] == {"timeout": 2, "invalid answer": 1, "unknown": 1, "ignore": 1}


async def test_a_manual_review_outranks_the_report_and_a_verdict_alone_is_in_no_rate(store: Store) -> None:
    await _exam(store, "a", ai=(2,), rad=8)
    before = await stats.overall(store, THRESHOLD, BUCHAREST, NOW)
    assert (before["confusion"]["fn"], before["confusion"]["tn"]) == (1, 0)  # the report: positive, the AI missed it
    await store.execute("INSERT INTO reviews (uid, reviewer, verdict, created) VALUES ('a', 'admin', 0, ?)",
                        ("2026-10-30 11:00:00",))
    after = await stats.overall(store, THRESHOLD, BUCHAREST, NOW)
    assert (after["confusion"]["fn"], after["confusion"]["tn"]) == (0, 1)  # the radiologist said normal: AI right
    assert (after["correct"], after["wrong"]) == (1, 0)

    # Without an AI answer, or without a verdict, an exam adds to no cell and no rate.
    await _exam(store, "no-ai", rad=8)
    await _exam(store, "no-ai-parsed", ai=(-1,), reviews=(1,))
    await _exam(store, "no-verdict", ai=(9,))
    await _exam(store, "ungraded", ai=(9,), rad=-1)
    more = await stats.overall(store, THRESHOLD, BUCHAREST, NOW)
    assert more["confusion"] == after["confusion"]
    assert (more["correct"], more["wrong"]) == (1, 0)
    assert (more["total"], more["reviewed"], more["positive"]) == (3, 3, 2)


async def test_an_empty_store_has_every_figure_undefined(store: Store) -> None:
    result = await stats.overall(store, THRESHOLD, BUCHAREST, NOW)
    assert {key: result[key] for key in COUNTS} == dict.fromkeys(COUNTS, 0)
    assert result["confusion"]["total"] == 0 and result["confusion"]["sensitivity"] is None
    assert result["region"] == {} and result["trends"] == {} and result["monthly_trends"] == {}
    assert result["throughput"] == 0 and result["avg_processing_time"] is None
    assert result["processing_time"] == {"count": 0, "median": None, "p90": None}
    assert result["error_stats"] == {"ignore": 0}


def _series(result: dict, kind: str, region: str = "chest") -> dict[str, tuple[int, int]]:
    key = "date" if kind == "trends" else "month"
    return {point[key]: (point["total"], point["positive"]) for point in result[kind][region]}


async def test_daily_trends_group_by_the_local_day_across_the_autumn_dst_change(store: Store) -> None:
    # Bucharest leaves summer time on 25 Oct 2026 at 04:00 (UTC+3 -> UTC+2): 25 Oct starts at 24 Oct 21:00 UTC,
    # 26 Oct at 25 Oct 22:00 UTC. One offset for the whole window would misplace two of these.
    await _exam(store, "a", created="2026-10-24 20:59:59", ai=(8,))  # 24 Oct 23:59:59 +3
    await _exam(store, "b", created="2026-10-24 21:00:00", ai=(2,))  # 25 Oct 00:00:00 +3
    await _exam(store, "c", created="2026-10-25 21:59:59", ai=(9,))  # 25 Oct 23:59:59 +2
    await _exam(store, "d", created="2026-10-25 22:00:00", ai=(1,))  # 26 Oct 00:00:00 +2
    await _exam(store, "e", created="2026-10-31 21:59:59", ai=(6,))  # 31 Oct 23:59:59 +2
    await _exam(store, "f", created="2026-10-31 22:00:00", ai=(3,))  # 1 Nov 00:00:00 +2
    await _exam(store, "old", created="2026-10-02 20:59:59", ai=(3,))  # 2 Oct 23:59:59 +3: before the 30 days
    await _exam(store, "first", created="2026-10-02 21:00:00", ai=(3,))  # 3 Oct 00:00:00 +3: the first day
    await _exam(store, "unanswered", created="2026-10-25 10:00:00")  # not in the trends: the AI has not answered
    await _exam(store, "k", "clavicle", created="2026-10-25 10:00:00", ai=(7,))
    result = await stats.overall(store, THRESHOLD, BUCHAREST, NOW)  # NOW: 1 Nov 14:00 local

    days = [point["date"] for point in result["trends"]["chest"]]
    assert len(days) == 30 and days[0] == "2026-10-03" and days[-1] == "2026-11-01"
    chest = _series(result, "trends")
    assert chest["2026-10-24"] == (1, 1) and chest["2026-10-25"] == (2, 1) and chest["2026-10-26"] == (1, 0)
    assert chest["2026-10-31"] == (1, 1) and chest["2026-11-01"] == (1, 0)
    assert chest["2026-10-03"] == (1, 0)
    assert sum(total for total, _ in chest.values()) == 7  # 'old' and 'unanswered' in no day
    assert chest["2026-10-10"] == (0, 0)  # days without exams are there, at zero
    assert _series(result, "trends", "clavicle")["2026-10-25"] == (1, 1)

    months = _series(result, "monthly_trends")
    assert list(months) == [f"{year}-{month:02d}" for year, month in
                            [(2025, 12)] + [(2026, m) for m in range(1, 12)]]
    assert months["2026-10"] == (7, 3) and months["2026-11"] == (1, 0)  # 'f' is November, local


async def test_daily_and_monthly_trends_across_the_spring_dst_change(store: Store) -> None:
    # Summer time starts on 29 Mar 2026 at 03:00 (UTC+2 -> UTC+3): 29 Mar starts at 28 Mar 22:00 UTC, 30 Mar at
    # 29 Mar 21:00 UTC, and 1 Apr at 31 Mar 21:00 UTC.
    await _exam(store, "a", created="2026-03-28 21:59:59", ai=(8,))  # 28 Mar 23:59:59 +2
    await _exam(store, "b", created="2026-03-28 22:00:00", ai=(8,))  # 29 Mar 00:00:00 +2
    await _exam(store, "c", created="2026-03-29 20:59:59", ai=(2,))  # 29 Mar 23:59:59 +3
    await _exam(store, "d", created="2026-03-29 21:00:00", ai=(2,))  # 30 Mar 00:00:00 +3
    await _exam(store, "e", created="2026-03-31 20:59:59", ai=(9,))  # 31 Mar 23:59:59 +3
    await _exam(store, "f", created="2026-03-31 21:00:00", ai=(1,))  # 1 Apr 00:00:00 +3
    result = await stats.overall(store, THRESHOLD, BUCHAREST, dt.datetime(2026, 4, 5, 12, 0, tzinfo=dt.UTC))
    chest = _series(result, "trends")
    assert (chest["2026-03-28"], chest["2026-03-29"], chest["2026-03-30"]) == ((1, 1), (2, 1), (1, 0))
    assert (chest["2026-03-31"], chest["2026-04-01"]) == ((1, 1), (1, 0))
    months = _series(result, "monthly_trends")
    assert list(months)[0] == "2025-05" and list(months)[-1] == "2026-04"
    assert (months["2026-03"], months["2026-04"]) == ((5, 3), (1, 0))


async def test_without_a_zone_the_machines_zone_is_used(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Bucharest")
    time.tzset()
    try:
        await _exam(store, "b", created="2026-10-24 21:00:00", ai=(2,))  # 25 Oct 00:00 local
        await _exam(store, "d", created="2026-10-25 22:00:00", ai=(1,))  # 26 Oct 00:00 local
        chest = _series(await stats.overall(store, THRESHOLD, None, NOW), "trends")
    finally:
        monkeypatch.undo()
        time.tzset()
    assert (chest["2026-10-24"], chest["2026-10-25"], chest["2026-10-26"]) == ((0, 0), (1, 0), (1, 0))


async def _answer(store: Store, uid: str, created: str, latency_ms: int) -> None:
    await store.execute("INSERT INTO ai_reports (uid, created, updated, severity, latency) VALUES (?, ?, ?, 3, ?)",
                        (uid, created, created, latency_ms))


async def test_throughput_and_model_time_count_the_exams_finished_in_the_last_24_hours(store: Store) -> None:
    for uid, created, latency in [("a", "2026-10-31 12:00:00", 1000),  # exactly 24 h before NOW: in
                                  ("b", "2026-11-01 03:00:00", 2000), ("c", "2026-11-01 11:59:59", 3000),
                                  ("d", "2026-11-01 12:00:00", 10000),  # at NOW: in
                                  ("old", "2026-10-31 11:59:59", 500),  # 24 h and a second ago: out
                                  ("later", "2026-11-01 12:00:01", 500),  # after NOW: out
                                  ("unknown", "2026-11-01 06:00:00", -1)]:  # in, but its time is not known
        await _exam(store, uid, created="2026-10-30 10:00:00")
        await _answer(store, uid, created, latency)
    # Re-analysed in the window: one exam finished, its latest answer's time counts.
    await _exam(store, "again", created="2026-10-30 10:00:00")
    await _answer(store, "again", "2026-11-01 01:00:00", 50000)
    await _answer(store, "again", "2026-11-01 02:00:00", 4000)
    result = await stats.overall(store, THRESHOLD, BUCHAREST, NOW)
    assert result["throughput"] == 0.25  # 6 exams (a, b, c, d, unknown, again) / 24 h
    assert result["avg_processing_time"] == 4.0  # (1 + 2 + 3 + 10 + 4) / 5 s
    # median of 1, 2, 3, 4, 10; p90 by nearest rank: the ceil(0.9·5) = 5th value
    assert result["processing_time"] == {"count": 5, "median": 3.0, "p90": 10.0}


async def test_errors_are_counted_by_the_kind_of_reason_not_its_details(store: Store) -> None:
    await _exam(store, "e1", status=schema.ERROR, reason="model unavailable after 4 tries: cannot connect")
    await _exam(store, "e2", status=schema.ERROR, reason="model unavailable after 4 tries: HTTP 503: overloaded")
    await _exam(store, "e3", status=schema.ERROR, reason="invalid answer from the model: no JSON object")
    result = await stats.overall(store, 5, None)
    assert result["error_stats"] == {"model unavailable after 4 tries": 2, "invalid answer from the model": 1,
                                     "ignore": 0}


async def test_graded_reports_per_local_month_by_radiologist_and_the_top_diagnoses(store: Store) -> None:
    zone = ZoneInfo("Europe/Bucharest")
    now = dt.datetime(2026, 11, 15, 12, 0, tzinfo=dt.UTC)
    # 31 Oct 22:30 UTC is already 1 Nov in Bucharest (UTC+2 after the DST change).
    for uid, created, radiologist, diagnostic in (("a", "2026-10-31 22:30:00", "Ana Pop", "pneumonia"),
                                                  ("b", "2026-10-31 21:30:00", "ana pop", "pneumonia"),
                                                  ("c", "2026-11-10 08:00:00", "Ion Ionescu", "fracture"),
                                                  ("d", "2025-10-01 08:00:00", "Ion Ionescu", "old")):
        await _exam(store, uid, created=created, rad=6)
        await store.execute("UPDATE exams SET radiologist = ?, diagnostic = ? WHERE uid = ?",
                            (radiologist, diagnostic, uid))
    await _exam(store, "ungraded", created="2026-11-11 08:00:00")  # no graded report: in no month
    months = await stats.monthly(store, "radiologist", zone, now)
    assert list(months)[0] == "2025-12" and list(months)[-1] == "2026-11" and len(months) == 12
    assert months["2026-11"] == {"Ana Pop": 1, "Ion Ionescu": 1} and months["2026-10"] == {"ana pop": 1}
    top = await stats.monthly(store, "diagnostic", zone, now, top=1)
    assert top["2026-11"] == {"pneumonia": 1} and top["2026-10"] == {"pneumonia": 1}  # the most frequent only
    assert sum(len(counts) for counts in top.values()) == 2


async def test_second_looks_say_whether_the_answer_changed_and_was_then_right(store: Store) -> None:
    await _exam(store, "fixed", ai=(2, 7), rad=8)  # negative, then positive; the radiologist: positive
    await _exam(store, "spoilt", ai=(7, 2), rad=8)  # positive, then negative: wrong after
    await _exam(store, "same", ai=(6, 9), rad=8)  # positive twice: no change
    await _exam(store, "unjudged", ai=(1, 8))  # changed, no verdict yet
    await _exam(store, "once", ai=(3,), rad=1)
    found = (await stats.insights(store, 5, None, (0, 18)))["requeue_analysis"]
    assert found == {"total_requeued": 4, "changed": 3, "judged": 2, "right_before": 1, "right_after": 1}
    assert stats.age_labels((0, 2, 6, 12, 18, 65)) == ["0-1", "2-5", "6-11", "12-17", "18-64", "65+"]
    assert stats.age_labels((0, 1, 18)) == ["0", "1-17", "18+"]


@pytest.mark.parametrize(("zone", "times", "hours"), [
    # Bucharest: 00:30 and 01:30 UTC on 25 Oct are both 03:30 local (EEST, then EET after 04:00 EEST).
    ("Europe/Bucharest", ("2026-10-24 23:45:00", "2026-10-25 00:30:00", "2026-10-25 01:30:00"), {"2": 1, "3": 2}),
    # Kolkata is UTC+5:30: 10:20 UTC is 15:50, 10:40 UTC is 16:10.
    ("Asia/Kolkata", ("2026-10-01 10:20:00", "2026-10-01 10:40:00"), {"15": 1, "16": 1}),
])
async def test_the_hourly_pattern_is_in_local_hours_across_dst_and_half_hour_zones(
        store: Store, zone: str, times: tuple[str, ...], hours: dict[str, int]) -> None:
    for n, created in enumerate(times):
        await _exam(store, f"h{n}", created=created, ai=(3,))
    found = (await stats.insights(store, 5, ZoneInfo(zone), (0, 18)))["hourly_patterns"]
    assert {hour: count for hour, count in found.items() if count} == hours
