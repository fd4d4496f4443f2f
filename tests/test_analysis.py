"""The analysis queue against an OpenAI-compatible test server, through the real openai client: answers stored and
checked, failures retried or failed with a reason, endpoints failed over, priors and re-queues as specified."""
from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import add_exams, make_settings, synthetic_cr
from llm_server import LLMServer, Scenario, by_ratio, sequence

from xrayvision import events
from xrayvision.analysis.prompts import PROMPT_VERSION
from xrayvision.app import build_app
from xrayvision.clinical.regions import RegionRules
from xrayvision.dicom.metadata import describe
from xrayvision.keys import BUS, INGEST, POOL, SETTINGS, STORE, WORKER
from xrayvision.store import queue, reviews, worklist
from xrayvision.store.filters import ExamFilter

FAST = {  # small limits so that failures play out in seconds
    "timeout": "2", "probe_interval": "0.2", "backoff_base": "0.01", "backoff_max": "0.05",
    "max_attempts": "3", "answer_retries": "1",
}


def _settings(tmp_path: Path, *servers: LLMServer, openai: dict[str, str] | None = None,
              processing: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    endpoints = {"openai_url_primary": servers[0].base_url if servers else "",
                 "openai_url_secondary": servers[1].base_url if len(servers) > 1 else "",
                 "model_name": "medgemma-test", "openai_api_key": "test-key"}
    return make_settings(tmp_path, {
        "openai": {**FAST, **endpoints, **(openai or {})},
        "processing": {"retry_cooldown": "3600", **(processing or {})},
    })


async def _app(aiohttp_client, settings):  # type: ignore[no-untyped-def]
    client = await aiohttp_client(build_app(settings))
    return client.server.app


def _db(app) -> sqlite3.Connection:  # type: ignore[no-untyped-def]
    conn = sqlite3.connect(app[SETTINGS].general.db_path)
    conn.row_factory = sqlite3.Row
    return conn


def _statuses(app) -> dict[str, tuple[str, str]]:  # type: ignore[no-untyped-def]
    with _db(app) as conn:
        return {r["uid"]: (r["status"], r["reason"]) for r in conn.execute("SELECT uid, status, reason FROM exams")}


async def _settled(app, uids: list[str], timeout: float = 60) -> dict[str, tuple[str, str]]:  # type: ignore[no-untyped-def]
    """Wait until none of `uids` is queued or processing, and the worker is done with them: their rows are
    committed before their events are published, and the worker lets go of an exam only after both."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = _statuses(app)
        in_hand = app[WORKER].processing
        if all(statuses[u][0] not in ("queued", "requeue", "processing") and u not in in_hand for u in uids):
            return statuses
        assert time.monotonic() < deadline, f"not settled: {[s for s in statuses.values() if s[0] != 'done'][:5]}"
        await asyncio.sleep(0.05)


async def _until(condition, what: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    """Poll `condition()` until it holds; fail naming `what` after a generous deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _events(app) -> list[events.Event]:  # type: ignore[no-untyped-def]
    seen: list[events.Event] = []
    app[BUS].subscribe(seen.append)
    return seen


def _user_text(request: dict[str, Any]) -> str:
    user = [m for m in request["messages"] if m["role"] == "user"][0]
    return next(part["text"] for part in user["content"] if part["type"] == "text")


@pytest.fixture
async def llm():  # type: ignore[no-untyped-def]
    async with LLMServer() as server:
        yield server


async def test_a_valid_answer_is_stored_with_its_provenance(aiohttp_client, tmp_path: Path, llm: LLMServer) -> None:
    llm.answer = lambda body: {"short": "yes", "report": "Right lower lobe consolidation.", "confidence": 85,
                               "severity": 6, "summary": "pneumonia"}
    app = await _app(aiohttp_client, _settings(tmp_path, llm))
    seen = _events(app)
    (uid,) = await add_exams(app, tmp_path, 1)
    assert (await _settled(app, [uid]))[uid] == ("done", "")
    with _db(app) as conn:
        report = dict(conn.execute("SELECT * FROM ai_reports WHERE uid = ?", (uid,)).fetchone())
    assert report | {"seq": 0, "created": "", "updated": "", "latency": 0} == {
        "seq": 0, "uid": uid, "created": "", "updated": "", "text": "Right lower lobe consolidation.", "positive": 1,
        "confidence": 85, "severity": 6, "summary": "pneumonia", "model": "medgemma-test", "endpoint": "pri",
        "prompt_version": PROMPT_VERSION, "latency": 0, "tokens_in": 812, "tokens_out": 64}
    assert report["latency"] >= 0
    assert llm.problems == []
    assert llm.api_keys == ["test-key"]
    (request,) = llm.requests
    assert request["model"] == "medgemma-test" and request["response_format"]["type"] == "json_schema"
    text = _user_text(request)
    assert "consolidations" in text and "frontal chest radiograph of a 6-year-old girl" in text
    names = [e.name for e in seen]
    assert names.index(events.PROCESSING_START) < names.index(events.NEW_EXAM)
    start = next(e for e in seen if e.name == events.PROCESSING_START)
    assert start.payload == {"uid": uid, "patient": "I.M.", "region": "chest"}
    done = next(e for e in seen if e.name == events.NEW_EXAM)
    assert done.payload == {"uid": uid, "positive": True, "reviewed": False, "severity": 6}
    assert app[WORKER].timings()["max_latency"] >= 0 and app[WORKER].processing == {}


async def test_two_hundred_exams_through_failures_and_garbage(aiohttp_client, tmp_path: Path, llm: LLMServer) -> None:
    llm.scenarios = by_ratio(7, error_500=0.3, garbage=0.2, valid=0.5)
    app = await _app(aiohttp_client, _settings(tmp_path, llm, openai={"answer_retries": "2", "max_attempts": "4"}))
    uids = await add_exams(app, tmp_path, 200, step=__import__("datetime").timedelta(seconds=1))
    statuses = await _settled(app, uids, timeout=120)
    done = [u for u in uids if statuses[u][0] == "done"]
    failed = [u for u in uids if statuses[u][0] == "error"]
    assert len(done) + len(failed) == 200
    assert len(done) > 150
    assert all(statuses[u][1] for u in failed), "an error without its reason"
    with _db(app) as conn:
        reports = conn.execute("SELECT COUNT(*) FROM ai_reports").fetchone()[0]
        retry = conn.execute("SELECT COUNT(*) FROM exams WHERE status = 'error' AND retry_at IS NOT NULL").fetchone()[0]
    assert reports == len(done)
    assert retry == len(failed)  # passing failures come back by themselves after the cool-down
    assert llm.problems == []


@pytest.mark.parametrize(("scenarios", "status", "requests", "reason"), [
    ([Scenario.CODE_FENCE], "done", 1, ""),
    ([Scenario.OUT_OF_RANGE], "done", 2, ""),  # asked again once, then valid
    ([Scenario.OUT_OF_RANGE, Scenario.GARBAGE], "error", 2, "invalid answer from the model: no JSON object"),
    ([Scenario.BAD_REQUEST], "error", 1, "refused the request: HTTP 400"),
    ([Scenario.ERROR_500, Scenario.ERROR_500, Scenario.ERROR_500], "error", 3, "model unavailable after 3 tries"),
    ([Scenario.ERROR_500, Scenario.TIMEOUT], "done", 3, ""),
])
async def test_each_kind_of_answer(aiohttp_client, tmp_path: Path, llm: LLMServer, scenarios, status, requests,
                                   reason) -> None:  # type: ignore[no-untyped-def]
    llm.scenarios = sequence(*scenarios)
    llm.hang_seconds = 10
    app = await _app(aiohttp_client, _settings(tmp_path, llm, openai={"timeout": "0.5"}))
    (uid,) = await add_exams(app, tmp_path, 1)
    got_status, got_reason = (await _settled(app, [uid]))[uid]
    assert (got_status, llm.chat_count) == (status, requests)
    assert reason in got_reason if reason else got_reason == ""
    if len(llm.requests) > 1 and scenarios[0] == Scenario.OUT_OF_RANGE:
        # The second ask carries the first answer and what was wrong with it.
        followup = llm.requests[1]["messages"]
        assert followup[-2]["role"] == "assistant" and "severity 14 is outside 0-10" in followup[-1]["content"]
    with _db(app) as conn:
        retry_at = conn.execute("SELECT retry_at FROM exams WHERE uid = ?", (uid,)).fetchone()[0]
    # A 4xx will not change: no automatic retry. Anything passing gets one.
    assert (retry_at is None) == (status == "done" or scenarios[0] == Scenario.BAD_REQUEST)


async def test_endpoint_without_json_schema_gets_plain_instructions(aiohttp_client, tmp_path: Path,
                                                                    llm: LLMServer) -> None:
    llm.accept_response_format = False
    app = await _app(aiohttp_client, _settings(tmp_path, llm))
    uids = await add_exams(app, tmp_path, 3)
    statuses = await _settled(app, uids)
    assert all(statuses[u][0] == "done" for u in uids)
    with_schema = [r for r in llm.requests if "response_format" in r]
    # Refused once per request already in flight (at most the endpoint's concurrency), plain ever after.
    assert 1 <= len(with_schema) <= 2 and llm.chat_count - len(with_schema) == 3
    assert "response_format" not in llm.requests[-1]


async def test_unsupported_region_is_ignored_without_asking(aiohttp_client, tmp_path: Path, llm: LLMServer) -> None:
    app = await _app(aiohttp_client, _settings(tmp_path, llm))
    seen = _events(app)
    knee, nothing = (await add_exams(app, tmp_path, 1, ProtocolName="Genunchi drept"))[0], \
        (await add_exams(app, tmp_path, 1, ProtocolName="XYZ 42"))[0]
    statuses = _statuses(app)  # as stored: the worker has no part in it
    assert statuses[knee] == ("ignore", "region 'knee' is not analysed (not in [supported_regions])")
    assert statuses[nothing][0] == "ignore" and "no anatomic region" in statuses[nothing][1]
    assert llm.chat_count == 0 and not [e for e in seen if e.name == events.PROCESSING_START]
    # Shown at once all the same: the live feed announces them as stored.
    assert [e.payload["uid"] for e in seen if e.name == events.STORED] == [knee, nothing]


async def test_a_region_no_longer_supported_is_ignored_by_the_worker(aiohttp_client, tmp_path: Path,
                                                                     llm: LLMServer) -> None:
    """Stored and rendered while the configuration analysed knees; claimed after a restart that no longer does."""
    app = await _app(aiohttp_client, _settings(tmp_path, llm))
    seen = _events(app)
    settings = app[SETTINGS]
    earlier = RegionRules(settings.regions.rules, settings.supported_regions | {"knee"})
    path = synthetic_cr(tmp_path / "knee.dcm", 64, 64, ProtocolName="Genunchi drept")
    ds = pydicom.dcmread(path)
    (settings.general.images_dir / f"{ds.SOPInstanceUID}.dcm").write_bytes(path.read_bytes())
    instance = describe(ds, earlier, settings.general.timezone)
    assert instance.status == "queued"
    assert (await app[INGEST].add(instance, f"{instance.uid}.dcm")).new
    statuses = await _settled(app, [instance.uid])
    assert statuses[instance.uid] == ("ignore", "region 'knee' is not analysed (not in [supported_regions])")
    assert llm.chat_count == 0
    assert [e.payload for e in seen if e.name == events.IGNORE] == [{"uid": instance.uid,
                                                                     "reason": statuses[instance.uid][1]}]


async def test_work_moves_to_the_other_endpoint_and_back(aiohttp_client, tmp_path: Path) -> None:
    async with LLMServer(latency=0.05) as one, LLMServer(latency=0.05) as two:
        app = await _app(aiohttp_client, _settings(tmp_path, one, two))
        health = lambda: app[POOL].status()["health"]  # noqa: E731
        await _until(lambda: health() == {"pri": True, "sec": True}, "the first probes")
        first = await add_exams(app, tmp_path, 20)
        await _settled(app, first)
        assert one.chat_count > 0 and two.chat_count > 0

        await one.stop()
        second = await add_exams(app, tmp_path, 20)
        statuses = await _settled(app, second, timeout=30)
        assert all(statuses[u][0] == "done" for u in second)  # none failed: the work moved over
        assert health()["pri"] is False

        await one.restart()
        before = (one.chat_count, two.chat_count)
        await _until(lambda: health()["pri"], "the primary's probe after its restart")
        third = await add_exams(app, tmp_path, 20)
        statuses = await _settled(app, third)
        assert all(statuses[u][0] == "done" for u in third)
        assert one.chat_count > before[0] and two.chat_count > before[1], "both endpoints used again"


async def test_queued_work_waits_out_an_outage_then_resumes(aiohttp_client, tmp_path: Path) -> None:
    llm = LLMServer()
    await llm.start()
    port = llm.port
    await llm.stop()
    # While the model is down its port takes connections and closes them unanswered: each probe is counted.
    probes = 0

    def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal probes
        probes += 1
        writer.close()

    dead = await asyncio.start_server(hang_up, "127.0.0.1", port)
    try:
        app = await _app(aiohttp_client, _settings(tmp_path, llm))
        uids = await add_exams(app, tmp_path, 5)
        seen = probes
        await _until(lambda: probes >= seen + 3, "three probes of the dead endpoint after the exams arrived")
        assert {s for s, _ in _statuses(app).values()} == {"queued"}, "exams must wait, not fail, while no model is up"
        dead.close()
        await dead.wait_closed()
        await llm.start(port)
        statuses = await _settled(app, uids, timeout=30)  # resumed by itself, with no one asking
        assert all(statuses[u][0] == "done" for u in uids)
    finally:
        dead.close()
        await llm.stop()


async def test_failed_exams_come_back_after_the_cool_down(aiohttp_client, tmp_path: Path, llm: LLMServer) -> None:
    llm.scenarios = sequence(Scenario.ERROR_500, Scenario.ERROR_500, Scenario.ERROR_500)
    app = await _app(aiohttp_client, _settings(tmp_path, llm, processing={"retry_cooldown": "1"}))
    (uid,) = await add_exams(app, tmp_path, 1)
    deadline = time.monotonic() + 20
    seen = []
    while (status := _statuses(app)[uid][0]) != "done":
        if not seen or seen[-1] != status:
            seen.append(status)
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert "error" in seen and llm.chat_count == 4, seen


async def test_priors_exclude_the_exam_and_requeue_keeps_history(aiohttp_client, tmp_path: Path,
                                                                 llm: LLMServer) -> None:
    counter = iter(range(1, 100))
    llm.answer = lambda body: {"short": "yes", "report": f"Finding number {next(counter)}.", "confidence": 70,
                               "severity": 4, "summary": "opacity"}
    app = await _app(aiohttp_client, _settings(tmp_path, llm, openai={"concurrency": "1"},
                                               processing={"queue_order": "oldest"}))
    uids = await add_exams(app, tmp_path, 5, step=__import__("datetime").timedelta(days=10))
    await _settled(app, uids)
    last = llm.requests[-1]
    text = _user_text(last)
    # Exam 5 sees exams 4, 3 and 2 (at most 3, newest first), never itself.
    assert text.index("Finding number 4") < text.index("Finding number 3") < text.index("Finding number 2")
    assert "Finding number 1." not in text and "Finding number 5" not in text

    # Look again: a new answer is added, the earlier one stays, and the prompt offers it as an earlier reading.
    store = app[STORE]
    assert await queue.requeue(store, uids[-1]) is queue.RequeueOutcome.REQUEUED
    app[BUS].publish(events.REQUEUE, {"uid": uids[-1], "status": "requeue"})
    await _settled(app, [uids[-1]])
    with _db(app) as conn:
        history = [r[0] for r in conn.execute("SELECT text FROM ai_reports WHERE uid = ? ORDER BY seq", (uids[-1],))]
    assert history == ["Finding number 5.", "Finding number 6."]
    again = _user_text(llm.requests[-1])
    assert "earlier automated reading of this same image" in again and "Finding number 5." in again
    assert "afresh" in again and "judged that reading wrong" not in again
    assert again.count("Finding number 5.") == 1  # not repeated among the priors

    # Told it was wrong only when the radiologist's verdict disagrees: a graded report of severity 8 is abnormal,
    # where the reading (severity 4, below the threshold of 5) was normal.
    await store.execute("INSERT INTO rad_reports (uid, created, updated, severity) VALUES (?, '', '', 8)",
                        (uids[-1],))
    await _look_again(app, uids[-1])
    assert "judged that reading wrong: they found the image abnormal" in _user_text(llm.requests[-1])


async def _look_again(app, uid: str) -> None:  # type: ignore[no-untyped-def]
    assert await queue.requeue(app[STORE], uid) is queue.RequeueOutcome.REQUEUED
    app[BUS].publish(events.REQUEUE, {"uid": uid, "status": "requeue"})
    await _settled(app, [uid])


async def test_a_manual_review_outranks_the_report_in_the_prompt_and_events(aiohttp_client, tmp_path: Path,
                                                                             llm: LLMServer) -> None:
    llm.answer = lambda body: {"short": "yes", "report": "Opacity in the right lower zone.", "confidence": 80,
                               "severity": 7, "summary": "opacity"}
    app = await _app(aiohttp_client, _settings(tmp_path, llm))
    seen = _events(app)
    store = app[STORE]
    (uid,) = await add_exams(app, tmp_path, 1)
    await _settled(app, [uid])
    assert [e.payload["reviewed"] for e in seen if e.name == events.NEW_EXAM] == [False]

    # The graded report agrees with the AI (abnormal); the radiologist's own review says normal, and outranks it.
    await store.execute("INSERT INTO rad_reports (uid, created, updated, severity, positive) VALUES (?, '', '', 8, 1)",
                        (uid,))
    assert await reviews.add_review(store, uid, "Ana Pop", abnormal=False)
    await _look_again(app, uid)
    text = _user_text(llm.requests[-1])
    assert "judged that reading wrong: they found the image normal" in text
    assert [e.payload["reviewed"] for e in seen if e.name == events.NEW_EXAM] == [False, True]
    # The filters hold the same verdict: the AI was wrong.
    _, wrong = await worklist.list_exams(store, ExamFilter(correct=False), 1, 10, threshold=5)
    _, right = await worklist.list_exams(store, ExamFilter(correct=True), 1, 10, threshold=5)
    assert (wrong, right) == (1, 0)

    # A later review agreeing with the AI outranks a report that disagrees: nothing was judged wrong.
    await store.execute("UPDATE rad_reports SET severity = 0, positive = 0 WHERE uid = ?", (uid,))
    assert await reviews.add_review(store, uid, "Ana Pop", abnormal=True)
    await _look_again(app, uid)
    text = _user_text(llm.requests[-1])
    assert "judged that reading wrong" not in text and "afresh" in text


async def test_a_manual_review_alone_can_judge_a_reading_wrong(aiohttp_client, tmp_path: Path,
                                                               llm: LLMServer) -> None:
    app = await _app(aiohttp_client, _settings(tmp_path, llm))  # the default answer: severity 0, normal
    (uid,) = await add_exams(app, tmp_path, 1)
    await _settled(app, [uid])
    assert await reviews.add_review(app[STORE], uid, "Ana Pop", abnormal=True)  # no report at all
    await _look_again(app, uid)
    assert "judged that reading wrong: they found the image abnormal" in _user_text(llm.requests[-1])


async def test_an_exam_that_keeps_failing_stops_after_max_retry_rounds(aiohttp_client, tmp_path: Path,
                                                                        llm: LLMServer) -> None:
    llm.scenarios = sequence(*[Scenario.ERROR_500] * 50)
    app = await _app(aiohttp_client, _settings(tmp_path, llm, openai={"max_attempts": "1"},
                                               processing={"retry_cooldown": "0", "max_retry_rounds": "2"}))
    seen = _events(app)
    (uid,) = await add_exams(app, tmp_path, 1)

    def given_up() -> bool:
        with _db(app) as conn:
            row = conn.execute("SELECT status, retry_at FROM exams WHERE uid = ?", (uid,)).fetchone()
        return row["status"] == "error" and row["retry_at"] is None

    def errors() -> int:
        return len([e for e in seen if e.name == events.ERROR])

    # Committed first, published second: the last round's event may follow the row by a moment.
    await _until(lambda: given_up() and errors() == 3, "the exam to stay failed after its third error event")
    with _db(app) as conn:
        attempts = conn.execute("SELECT attempts FROM exams WHERE uid = ?", (uid,)).fetchone()[0]
    # The first round and MAX_RETRY_ROUNDS more; the last failure sets no retry time, so it never comes back.
    assert (attempts, llm.chat_count) == (3, 3)


async def test_a_prior_older_than_prior_days_is_not_in_the_prompt(aiohttp_client, tmp_path: Path,
                                                                   llm: LLMServer) -> None:
    counter = iter(range(1, 100))
    llm.answer = lambda body: {"short": "no", "report": f"Finding number {next(counter)}.", "confidence": 70,
                               "severity": 1, "summary": "none"}
    app = await _app(aiohttp_client, _settings(tmp_path, llm, openai={"concurrency": "1"},
                                               processing={"queue_order": "oldest", "prior_days": "15"}))
    # Day 0, day 10 and day 20, analysed in that order: the last one's window reaches back to day 5.
    uids = await add_exams(app, tmp_path, 3, step=dt.timedelta(days=10))
    await _settled(app, uids)
    assert llm.chat_count == 3
    text = _user_text(llm.requests[-1])
    assert "Finding number 2." in text  # 10 days before: inside the window
    assert "Finding number 1." not in text  # 20 days before: outside


async def test_dashboard_sees_who_is_processing(aiohttp_client, tmp_path: Path, llm: LLMServer) -> None:
    llm.latency = 0.5
    app = await _app(aiohttp_client, _settings(tmp_path, llm))
    (uid,) = await add_exams(app, tmp_path, 1)
    deadline = time.monotonic() + 10
    while not app[WORKER].processing:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert app[WORKER].processing == {uid: "I.M."}
    await _settled(app, [uid])
    assert app[WORKER].processing == {}
    timings = app[WORKER].timings()
    # The server took at least its latency; how much longer depends on the machine, so no upper bound.
    assert 0.5 <= timings["min_latency"] <= timings["avg_latency"] <= timings["max_latency"]


async def test_requeue_refuses_what_it_cannot_do(aiohttp_client, tmp_path: Path, llm: LLMServer) -> None:
    llm.latency = 1.0
    app = await _app(aiohttp_client, _settings(tmp_path, llm))
    store = app[STORE]
    assert await queue.requeue(store, "1.2.3.4") is queue.RequeueOutcome.NOT_FOUND
    (uid,) = await add_exams(app, tmp_path, 1)
    deadline = time.monotonic() + 10
    while _statuses(app)[uid][0] != "processing":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert await queue.requeue(store, uid) is queue.RequeueOutcome.BUSY
    await _settled(app, [uid])
    await store.execute("UPDATE exams SET image = NULL WHERE uid = ?", (uid,))
    assert await queue.requeue(store, uid) is queue.RequeueOutcome.NO_IMAGE
    assert _statuses(app)[uid][0] == "done"
