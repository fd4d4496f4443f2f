"""Radiologists' reports end to end, through the whole app: fetched from a real FHIR server (sekmet-fhir) or the
fault-injecting one, graded and translated by the test model server, stored beside the AI's answer and shown in the
API and the live feed; missing reports back off and stop; a dead, hanging or garbled FHIR server slows nothing."""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ADMIN, READER, add_exams, basic, cnp_with_check, free_port, make_settings
from fhir_server import FaultServer
from llm_server import LLMServer, Scenario, task_of
from sekmet import USER, Sekmet, start_sekmet

from xrayvision import timeutil
from xrayvision.app import build_app
from xrayvision.keys import FETCHER, SETTINGS, STORE
from xrayvision.store import schema

SYSTEM = "urn:oid:2.16.642.99.7"
CNP = cnp_with_check("620010140123")  # the patient add_exams stores
TEXT_RO = "Opacitate în lobul superior drept, sugestivă pentru pneumonie. Sinusuri costo-diafragmatice libere."
TEXT_EN = "Opacity in the right upper lobe, suggestive of pneumonia. Clear costophrenic sinuses."
GRADES = {"pneumoni": {"pathologic": "yes", "severity": 7, "summary": "pneumonia"}}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _when(moment: dt.datetime, minutes: int) -> str:
    return (moment + dt.timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def resources(exam: dt.datetime, *, pid: str = "pat-1", with_report: bool = True, facade_day: str = "",
              **report: Any) -> list[dict[str, Any]]:
    """The HIS's records of one chest X-ray: the patient (the CNP in SYSTEM), the imaging request half an hour before
    the exam, and (unless told otherwise) the final report an hour after it, its text base64 per FHIR. `facade_day`:
    the local day the fault server's his facade matches the request on."""
    out: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": pid, "identifier": [{"system": SYSTEM, "value": CNP}],
         "name": [{"family": "Ionescu", "given": ["Maria"]}], "birthDate": "1962-01-01"},
        {"resourceType": "ServiceRequest", "id": f"{pid}-sr", "status": "completed", "intent": "order",
         "subject": {"reference": f"Patient/{pid}"}, "authoredOn": _when(exam, -30),
         "reasonCode": [{"text": "tuse febrilă"}]},
    ]
    if facade_day:
        out[1]["_facade"] = {"type": "radio", "region": "chest", "day": facade_day}
    if with_report:
        out.append({"resourceType": "DiagnosticReport", "id": f"{pid}-sr", "status": "final",
                    "code": {"text": "XR chest"}, "subject": {"reference": f"Patient/{pid}"},
                    "basedOn": [{"reference": f"ServiceRequest/{pid}-sr"}], "effectiveDateTime": _when(exam, 5),
                    "issued": _when(exam, 60), "resultsInterpreter": [{"display": "Dr. Livia Caramitru"}],
                    "presentedForm": [{"contentType": "text/plain; charset=utf-8", "data": _b64(TEXT_RO)}],
                    **report})
    return out


async def _until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def sekmet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sekmet]:
    server = start_sekmet(tmp_path_factory.mktemp("sekmet"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def fault() -> AsyncIterator[FaultServer]:
    server = await FaultServer().start()
    yield server
    await server.stop()


@pytest.fixture
async def llm() -> AsyncIterator[LLMServer]:
    async with LLMServer(grades=GRADES, translations={"pneumonie": TEXT_EN}) as server:
        yield server


async def _app(aiohttp_client, tmp_path: Path, llm: LLMServer | None, fhir: dict[str, str], **processing: str):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, {
        "openai": {"openai_url_primary": llm.base_url if llm else "", "probe_interval": "0.2"},
        "fhir": {"lookback_days": "3650", "timeout": "2", **fhir},
        "processing": {"enable_his": "false", **processing},
        "dashboard": {"rate_limit": "0"}})
    return await aiohttp_client(build_app(settings))


async def _done_exam(client) -> tuple[str, dt.datetime]:  # type: ignore[no-untyped-def]
    """One chest CR of the patient, analysed by the model (normal, severity 0) and so `done`."""
    app = client.server.app
    (uid,) = await add_exams(app, app[SETTINGS].general.images_dir.parent, 1)

    async def done() -> bool:
        return await app[STORE].fetch_value("SELECT status FROM exams WHERE uid = ?", (uid,)) == schema.DONE
    await _until(done, "the exam's analysis")
    created = await app[STORE].fetch_value("SELECT created FROM exams WHERE uid = ?", (uid,))
    return uid, timeutil.from_store(created)


async def _exam(client, uid: str, user: tuple[str, str] = ADMIN) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    resp = await client.get(f"/api/exams/{uid}", headers=basic(user))
    assert resp.status == 200
    return await resp.json()


async def _frames(ws, names: set[str], timeout: float = 30.0) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    """The first frame of each named event."""
    seen: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(timeout):
        while not names <= set(seen):
            frame = json.loads((await ws.receive()).data)
            name = (frame.get("event") or {}).get("name")
            if name in names and name not in seen:
                seen[name] = frame
    return seen


async def test_a_report_on_a_real_fhir_server_is_fetched_graded_translated_and_shown(
        aiohttp_client, tmp_path: Path, sekmet: Sekmet, llm: LLMServer,
        caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="xrayvision")
    client = await _app(aiohttp_client, tmp_path, llm, {
        "fhir_url": sekmet.base_url, "fhir_username": USER[0], "fhir_password": USER[1],
        "identifier_system": SYSTEM, "fetch_interval": "3600"}, enable_his="true")
    async with client.ws_connect("/ws", headers=basic(READER)) as user_ws, \
            client.ws_connect("/ws", headers=basic(ADMIN)) as admin_ws:
        uid, created = await _done_exam(client)
        sekmet.put(*resources(created, pid="pat-real"))
        client.server.app[FETCHER].wake()  # the next round, now that the radiologist has reported
        user_frames = await _frames(user_ws, {"radreport", "radcheck"})
        admin_frames = await _frames(admin_ws, {"radreport", "radcheck"})

    exam = await _exam(client, uid)
    rad, ai = exam["report"]["rad"], exam["report"]["ai"]
    assert (rad["state"], rad["text"], rad["text_en"]) == ("graded", TEXT_RO, TEXT_EN)
    assert (rad["severity"], rad["positive"], rad["summary"]) == (7, 1, "pneumonia")
    assert (rad["radiologist"], rad["justification"], rad["id"], rad["request"]) == (
        "Dr. Livia Caramitru", "tuse febrilă", "pat-real-sr", "pat-real-sr")
    assert rad["report_seconds"] == 3600 and rad["type"] == "XR chest" and rad["attempts"] == 1
    assert rad["model"] and rad["latency"] >= 0
    assert exam["exam"]["status"] == schema.DONE and exam["report"]["reviewed"] == 1
    assert exam["report"]["correct"] == 0  # the AI said normal; the radiologist did not
    assert (ai["severity"], ai["summary"]) == (0, "normal")  # grading never touches the AI's answer
    assert exam["patient"]["id"] == "pat-real"  # the HIS's id, kept on the patient

    # Users see the radiologist as initials, in the API and in the live feed; admins see the name.
    assert (await _exam(client, uid, READER))["report"]["rad"]["radiologist"] == "D.L.C."
    user_report = user_frames["radreport"]["event"]["payload"]
    assert user_report["uid"] == uid and user_report["rad_report"]["radiologist"] == "D.L.C."
    assert user_report["rad_report"]["text"] == TEXT_RO
    assert user_frames["radcheck"]["event"]["payload"] == {
        "uid": uid, "positive": 1, "severity": 7, "summary": "pneumonia", "confidence": -1, "radiologist": "D.L.C."}
    assert admin_frames["radcheck"]["event"]["payload"]["radiologist"] == "Dr. Livia Caramitru"
    assert "Caramitru" not in json.dumps(user_frames)
    fhir = admin_frames["radcheck"]["fhir"]
    assert fhir["configured"] and fhir["enabled"] and fhir["reachable"] is True and fhir["url"] == sekmet.base_url
    assert user_frames["radcheck"]["fhir"]["url"] == ""

    # Every model call about the report is kept: the translation, then the grade of the English text.
    with sqlite3.connect(client.server.app[SETTINGS].general.db_path) as db:
        calls = db.execute("SELECT kind, endpoint, prompt_version, latency, raw, error FROM report_calls "
                           "WHERE uid = ? ORDER BY seq", (uid,)).fetchall()
    assert [c[0] for c in calls] == ["translate", "grade"]
    assert all(c[1] == "pri" and c[2] and c[3] >= 0 and c[4] and c[5] is None for c in calls)
    assert '"pneumonia"' in calls[1][4]
    # The log tells what happened without patient data: no name, number, birth date or report words.
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"Report for {uid} found" in logged and f"Report of {uid} graded" in logged
    for secret in (CNP, "Ionescu", "Maria", "1962", "Caramitru", "Opacitate", "pneumonie", "tuse"):
        assert secret not in logged, secret


async def test_the_same_exam_through_the_his_facade_on_request(aiohttp_client, tmp_path: Path, fault: FaultServer,
                                                               llm: LLMServer) -> None:  # type: ignore[no-untyped-def]
    client = await _app(aiohttp_client, tmp_path, llm, {"fhir_url": fault.url, "fhir_flavour": "his"})
    uid, created = await _done_exam(client)
    zone = client.server.app[SETTINGS].general.timezone
    # The facade matches on the exam's local day ([general] TIMEZONE), as that HIS keeps it.
    fault.add(*resources(created, pid="his-1", facade_day=timeutil.utc_to_local(created, zone).strftime("%Y-%m-%d")))
    assert fault.requests == 0  # ENABLE_HIS is off: nothing is fetched by itself
    resp = await client.post("/api/getrad", json={"uid": uid}, headers=basic(READER))
    assert resp.status == 200 and (await resp.json())["status"] == "success"

    async def graded() -> dict[str, Any] | None:
        exam = await _exam(client, uid)
        return exam if exam["report"]["rad"]["state"] == "graded" else None
    exam = await _until(graded, "the report fetched through the facade and graded")
    assert (exam["report"]["rad"]["text"], exam["report"]["rad"]["type"]) == (TEXT_RO, "radio")
    assert exam["report"]["reviewed"] == 1
    assert [s.path for s in fault.seen] == ["/fhir/Patient", "/fhir/ServiceRequest", "/fhir/DiagnosticReport/his-1-sr"]
    assert fault.seen[1].query["dt"] == [timeutil.utc_to_local(created, zone).strftime("%Y-%m-%d %H:%M:%S")]


async def test_a_missing_report_backs_off_stops_at_max_attempts_and_getrad_starts_again(
        aiohttp_client, tmp_path: Path, fault: FaultServer, llm: LLMServer) -> None:  # type: ignore[no-untyped-def]
    client = await _app(aiohttp_client, tmp_path, llm, {"fhir_url": fault.base, "identifier_system": SYSTEM,
                                                        "max_attempts": "3", "fetch_interval": "60"})
    app = client.server.app
    fetcher, store = app[FETCHER], app[STORE]
    uid, created = await _done_exam(client)
    fault.add(*resources(created, with_report=False))  # the radiologist has not reported yet
    def searches() -> int:  # requests about the exam (an idle round asks only for /metadata, the health probe)
        return sum(1 for seen in fault.seen if not seen.path.endswith("/metadata"))
    per_try = []
    for attempt in range(1, 4):
        before = searches()
        result = await fetcher.round()
        assert (result.tried, result.found, result.stopped) == (1, 0, "")
        per_try.append(searches() - before)
        rad = (await _exam(client, uid))["report"]["rad"]
        assert rad["attempts"] == attempt and rad["reason"]
        if attempt < 3:
            assert rad["state"] == "seeking"
            wait = timeutil.from_store(rad["next_attempt"].replace("T", " ").removesuffix("Z")) - timeutil.utc_now()
            assert dt.timedelta(seconds=60 * 2 ** (attempt - 1) - 5) < wait <= dt.timedelta(seconds=60 * 2 ** attempt)
            assert (await fetcher.round()).tried == 0  # not due: the server is not asked
            await store.execute("UPDATE report_fetches SET next_at = '2000-01-01 00:00:00'")  # its wait is over
    assert rad["state"] == "missing" and rad["next_attempt"] is None
    asked = searches()
    assert asked == sum(per_try) and max(per_try) <= 4  # a bounded number of requests per try
    for _ in range(3):
        assert (await fetcher.round()).tried == 0
    assert searches() == asked  # given up: never asked again by itself
    assert (await _exam(client, uid))["exam"]["status"] == schema.DONE

    # A person asks again: at once, afresh; the report is there now.
    fault.add(*resources(created))
    resp = await client.post("/api/getrad", json={"uid": uid}, headers=basic(ADMIN))
    assert resp.status == 200

    async def graded() -> dict[str, Any] | None:
        exam = await _exam(client, uid)
        return exam if exam["report"]["rad"]["state"] == "graded" else None
    exam = await _until(graded, "the report asked for again")
    assert exam["report"]["rad"]["severity"] == 7 and searches() > asked
    assert (await client.post("/api/getrad", json={"uid": "1.2.3"}, headers=basic(ADMIN))).status == 404


async def test_getrad_without_a_fhir_server_says_so(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client = await _app(aiohttp_client, tmp_path, None, {})
    resp = await client.post("/api/getrad", json={"uid": "1.2.3"}, headers=basic(ADMIN))
    assert resp.status == 409 and "FHIR_URL" in (await resp.json())["error"]


@pytest.mark.parametrize("fault_kind", ["hang", "500", "garbage", "nobody"])
async def test_a_dead_hanging_or_garbled_fhir_server_slows_nothing_and_writes_nothing(
        aiohttp_client, tmp_path: Path, fault: FaultServer, llm: LLMServer, caplog: pytest.LogCaptureFixture,
        fault_kind: str) -> None:  # type: ignore[no-untyped-def]
    url = f"http://127.0.0.1:{free_port()}/fhir" if fault_kind == "nobody" else fault.base
    client = await _app(aiohttp_client, tmp_path, llm, {"fhir_url": url, "fetch_interval": "3600", "timeout": "2"},
                        enable_his="true")
    app = client.server.app
    fetcher = app[FETCHER]
    uid, created = await _done_exam(client)
    fault.add(*resources(created))
    fault.fault = None if fault_kind == "nobody" else fault_kind
    caplog.set_level(logging.INFO, logger="xrayvision")
    before = fetcher.last_round
    fetcher.wake()

    async def asked() -> bool:  # the round has the exam to ask about, and asks
        return any(seen.path == "/fhir/Patient" for seen in fault.seen) if fault_kind != "nobody" else True
    await _until(asked, "a round asking the server about the exam")
    # While the round waits on the server (or after it failed), the worklist answers as fast as ever.
    for _ in range(20):
        started = time.perf_counter()
        resp = await client.get("/api/exams", headers=basic(ADMIN))
        assert resp.status == 200
        assert time.perf_counter() - started < 0.1
        await asyncio.sleep(0.02)
    if fault_kind == "hang":
        assert fetcher.last_round is before  # all that while, the round was still waiting on the server

    async def stopped() -> dict[str, Any] | None:  # a round that had the exam to ask about, and could not
        ended = fetcher.last_round is not before and fetcher.last_round is not None and fetcher.last_round.stopped
        return fetcher.status() if ended and fetcher.status()["reachable"] is False else None
    status = await _until(stopped, "a round stopped by the FHIR server", timeout=15)
    assert status["last_error"]
    assert any("unreachable" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert any("stopped" in r.getMessage() for r in caplog.records)  # the round ended early, and says why
    exam = await _exam(client, uid)
    assert exam["report"]["rad"]["state"] == "none" and exam["report"]["rad"]["attempts"] == 0  # no try counted
    assert exam["exam"]["status"] == schema.DONE and exam["report"]["reviewed"] == 0
    with sqlite3.connect(app[SETTINGS].general.db_path) as db:
        assert db.execute("SELECT COUNT(*) FROM rad_reports").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM report_fetches").fetchone()[0] == 0


async def test_a_report_waits_in_check_until_a_model_can_grade_it(aiohttp_client, tmp_path: Path,
                                                                  fault: FaultServer, llm: LLMServer) -> None:  # type: ignore[no-untyped-def]
    client = await _app(aiohttp_client, tmp_path, llm, {"fhir_url": fault.base, "identifier_system": SYSTEM})
    uid, created = await _done_exam(client)
    fault.add(*resources(created))
    await llm.stop()  # the model server goes away before the report arrives
    pool = client.server.app[FETCHER]
    assert (await pool.round()).found == 1
    exam = await _exam(client, uid)
    assert exam["exam"]["status"] == schema.CHECK and exam["report"]["rad"]["state"] == "check"
    assert exam["report"]["reviewed"] == 0
    await llm.restart()

    async def graded() -> bool:
        return (await _exam(client, uid))["report"]["rad"]["state"] == "graded"
    await _until(graded, "the grade once the model is back")
    assert (await _exam(client, uid))["exam"]["status"] == schema.DONE


async def test_grading_that_gives_up_is_a_reason_not_a_grade(aiohttp_client, tmp_path: Path,
                                                             fault: FaultServer) -> None:  # type: ignore[no-untyped-def]
    def chooser(n: int, body: dict) -> Scenario:  # images are answered; every report task gets prose
        return Scenario.VALID if task_of(body) == "image" else Scenario.GARBAGE
    async with LLMServer(scenarios=chooser) as llm:
        client = await _app(aiohttp_client, tmp_path, llm, {"fhir_url": fault.base, "identifier_system": SYSTEM})
        uid, created = await _done_exam(client)
        fault.add(*resources(created, presentedForm=[{"contentType": "text/plain", "data": _b64("Normal chest.")}]))
        assert (await client.server.app[FETCHER].round()).found == 1

        async def failed() -> dict[str, Any] | None:
            exam = await _exam(client, uid)
            return exam if exam["report"]["rad"]["state"] == "failed" else None
        exam = await _until(failed, "grading to give up")
    rad = exam["report"]["rad"]
    assert "invalid" in rad["reason"] and rad["severity"] == -1 and exam["report"]["reviewed"] == 0
    assert exam["exam"]["status"] == schema.DONE
    with sqlite3.connect(client.server.app[SETTINGS].general.db_path) as db:
        errors = [row[0] for row in db.execute("SELECT error FROM report_calls WHERE uid = ?", (uid,))]
    assert len(errors) >= 2 and all(errors)  # every refused answer kept, with its reason


def test_the_real_command_links_to_the_fhir_server_and_keeps_its_password_out_of_the_log(
        tmp_path: Path, sekmet: Sekmet) -> None:
    from test_server import _start, _stop, _workdir  # the real `xrayvision` command, as the server tests run it

    extra = (f"\n[fhir]\nFHIR_URL = {sekmet.base_url}\nFHIR_USERNAME = {USER[0]}\nFHIR_PASSWORD = {USER[1]}\n"
             "FETCH_INTERVAL = 1\n[processing]\nENABLE_HIS = true\n")
    server = _start(_workdir(tmp_path / "cmd", extra))
    try:
        async def frame() -> dict[str, Any]:
            import aiohttp
            async with aiohttp.ClientSession() as session, \
                    session.ws_connect(f"http://127.0.0.1:{server.port}/ws", headers=basic(ADMIN)) as ws:
                while True:
                    data = json.loads((await ws.receive(timeout=30)).data)
                    if data["fhir"]["reachable"] is not None:
                        return data["fhir"]

        fhir = asyncio.run(asyncio.wait_for(frame(), timeout=60))
    finally:
        _stop(server)
    assert fhir["configured"] and fhir["enabled"] and fhir["reachable"] is True and fhir["last_success"]
    log = server.log.read_text(errors="replace")
    assert f"FHIR server {sekmet.base_url} (r4 flavour): reports fetched every 1 s" in log
    assert USER[1] not in log


async def test_two_quick_requests_for_one_report_make_one_try(aiohttp_client, tmp_path: Path, fault: FaultServer,
                                                              llm: LLMServer) -> None:  # type: ignore[no-untyped-def]
    client = await _app(aiohttp_client, tmp_path, llm, {"fhir_url": fault.base, "identifier_system": SYSTEM})
    uid, created = await _done_exam(client)
    fault.add(*resources(created))
    fault.fault = "hang"  # the first try waits on the server while the second request comes
    for _ in range(2):
        assert (await client.post("/api/getrad", json={"uid": uid}, headers=basic(ADMIN))).status == 200

    async def asked() -> bool:
        return any(seen.path == "/fhir/Patient" for seen in fault.seen)
    await _until(asked, "the first try")
    fault.fault = None
    fault.release.set()

    async def graded() -> bool:
        return (await _exam(client, uid))["report"]["rad"]["state"] == "graded"
    await _until(graded, "the report")
    assert sum(seen.path == "/fhir/Patient" for seen in fault.seen) == 1  # one try, not two
    assert (await _exam(client, uid))["report"]["rad"]["attempts"] == 1


async def test_a_later_study_never_takes_an_earlier_studys_report(aiohttp_client, tmp_path: Path,
                                                                  fault: FaultServer, llm: LLMServer) -> None:  # type: ignore[no-untyped-def]
    client = await _app(aiohttp_client, tmp_path, llm, {"fhir_url": fault.base, "identifier_system": SYSTEM})
    app = client.server.app
    first, second = await add_exams(app, tmp_path, 2, step=dt.timedelta(hours=20))  # two studies of one patient

    async def both_done() -> bool:
        return await app[STORE].fetch_value("SELECT COUNT(*) FROM exams WHERE status = 'done'") == 2
    await _until(both_done, "both analyses")
    created = timeutil.from_store(await app[STORE].fetch_value("SELECT created FROM exams WHERE uid = ?", (first,)))
    # Only the first study has been reported; the HIS links no request to it, so both exams look for it by date.
    patient, _request, report = resources(created, pid="p-two")
    del report["basedOn"]
    fault.add(patient, report)
    result = await app[FETCHER].round()
    assert (result.tried, result.found) == (2, 1)
    assert (await _exam(client, first))["report"]["rad"]["id"] == "p-two-sr"
    later = (await _exam(client, second))["report"]["rad"]
    assert later["state"] == "seeking" and later["text"] == "" and later["id"] == ""
