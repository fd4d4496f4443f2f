"""The JSON API over a fixture of known exams: every filter and combination returns exactly the expected exams,
roles see what they may, reviews and re-queues round-trip, and hostile input is refused without a 5xx."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import ADMIN, READER, add_exams, basic, cnp_with_check, make_settings, seed_fixture

from xrayvision import events
from xrayvision.app import build_app
from xrayvision.keys import BUS, STORE

# name: (protocol, patient name, CNP body, status, ai (severity, confidence) | None, rad (severity, radiologist,
#        diagnostic) | None, manual verdict: 1 abnormal, 0 normal, None)
FIXTURE = {
    "E1": ("Torace AP", "Popescu^Ana", "619031540011", "done", (7, 90), (8, "Ana Pop", "Pneumonia"), None),
    "E2": ("Torace PA", "Popescu^Ana", "619031540011", "done", (2, 60), (6, "Ana Pop", "effusion"), None),
    "E3": ("Clavicula stg", "Ionescu^Maria", "620010140022", "done", (8, 95), None, 0),
    "E4": ("Clavicula dr", "Ionescu^Maria", "620010140022", "done", (0, 99), None, None),
    "E5": ("Abdomen simplu", "Georgescu^Dan", "518050140033", "error", None, None, None),
    "E6": ("Torace AP", "Georgescu^Dan", "518050140033", "queued", None, None, None),
    "E7": ("Genunchi", "Vasile^Ion_x", "517070140044", "ignore", None, None, None),
    "E8": ("Torace AP", "Vasile^Ion_x", "517070140044", "done", (9, 80), (2, "Ion Ionescu", "normal"), 1),
}
T = 5


@pytest.fixture
async def api(aiohttp_client, tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, {"openai": {"openai_url_primary": ""},  # no model: nothing moves by itself
                                        "dashboard": {"rate_limit": "0", "rate_limit_heavy": "0"}})
    client = await aiohttp_client(build_app(settings))
    app = client.server.app
    uids = await seed_fixture(app, tmp_path, FIXTURE, T)
    client.uids = uids  # type: ignore[attr-defined]
    return client


async def _names(client, query: str, user=ADMIN) -> list[str]:  # type: ignore[no-untyped-def]
    resp = await client.get(f"/api/exams?{query}", headers=basic(user))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    by_uid = {uid: name for name, uid in client.uids.items()}
    names = [by_uid[e["uid"]] for e in body["exams"]]
    assert body["total"] == len(names)  # the fixture fits one page for every filter below
    return names


@pytest.mark.parametrize(("query", "expected"), [
    ("", ["E8", "E7", "E6", "E5", "E4", "E3", "E2", "E1"]),
    ("reviewed=yes", ["E8", "E3", "E2", "E1"]),
    ("reviewed=no", ["E7", "E6", "E5", "E4"]),
    ("reviewed=any", ["E8", "E7", "E6", "E5", "E4", "E3", "E2", "E1"]),
    ("positive=yes", ["E8", "E3", "E1"]),
    ("positive=no", ["E4", "E2"]),  # assessed and negative, not everything assessed
    ("correct=yes", ["E8", "E1"]),  # E8: the manual verdict outranks the normal report
    ("correct=no", ["E3", "E2"]),
    ("region=chest", ["E8", "E6", "E2", "E1"]),
    ("region=CLAV", ["E4", "E3"]),
    ("status=done", ["E8", "E4", "E3", "E2", "E1"]),
    ("status=error,ignore", ["E7", "E5"]),
    ("status=queued, requeue", ["E6"]),
    ("search=popescu", ["E2", "E1"]),
    ("search=Ion_x", ["E8", "E7"]),  # the underscore is literal, not a wildcard
    ("search=ion%", []),
    (f"search={cnp_with_check('620010140022')}", ["E4", "E3"]),
    ("diagnostic=pneumonia", ["E1"]),
    ("diagnostic=NORMAL", ["E8"]),
    ("radiologist=ana pop", ["E2", "E1"]),
    ("ai_severity=7-", ["E8", "E3", "E1"]),  # the AI's latest answer
    ("ai_severity=-2", ["E4", "E2"]),
    ("ai_severity=2-7", ["E2", "E1"]),
    ("ai_severity=8", ["E3"]),
    ("severity=7-", ["E1"]),  # the radiologist's graded report: E3's AI says 8, its radiologist has no report
    ("severity=-6", ["E8", "E2"]),
    ("severity=2", ["E8"]),
    ("severity=0-10", ["E8", "E2", "E1"]),  # every graded report, as reviewed=yes once meant
    ("confidence=90-", ["E4", "E3", "E1"]),
    ("confidence=-79", ["E2"]),
    ("confidence=60-80", ["E8", "E2"]),
    ("positive=yes&reviewed=yes&correct=no", ["E3"]),
    ("region=chest&status=done&ai_severity=5-", ["E8", "E1"]),
    ("region=chest&ai_severity=5-&severity=-4", ["E8"]),  # the AI says serious, the report says minor
    ("search=popescu&positive=no", ["E2"]),
    ("sort=triage", ["E8", "E7", "E6", "E5", "E4", "E3", "E2", "E1"]),  # every positive is reviewed: newest
    ("sort=triage&reviewed=no", ["E7", "E6", "E5", "E4"]),
])
async def test_filters_return_exactly_the_expected_exams(api, query: str, expected: list[str]) -> None:
    assert await _names(api, query) == expected


async def test_triage_puts_unreviewed_positives_first_by_severity(api) -> None:  # type: ignore[no-untyped-def]
    # Make E1 (severity 7) and E8 (9) unreviewed positives: E8 first, then E1, then the rest newest first.
    store = api.server.app[STORE]
    await store.execute("DELETE FROM rad_reports")
    await store.execute("DELETE FROM reviews")
    await store.execute("UPDATE exams SET rad_severity = -1, verdict = -1")
    assert await _names(api, "sort=triage") == ["E8", "E3", "E1", "E7", "E6", "E5", "E4", "E2"]


@pytest.mark.parametrize(("query", "parameter"), [
    ("reviewed=maybe", "reviewed"), ("positive=1", "positive"), ("correct=y", "correct"),
    ("status=done,finished", "status"), ("severity=11", "severity"), ("severity=6-3", "severity"),
    ("severity=abc", "severity"), ("confidence=101-", "confidence"), ("confidence=--", "confidence"),
    ("ai_severity=11", "ai_severity"), ("ai_severity=x-", "ai_severity"),
    ("sort=oldest", "sort"), ("page=0", "page"), ("search=" + "x" * 300, "search"),
])
async def test_invalid_filter_is_a_400_naming_the_parameter(api, query: str, parameter: str) -> None:
    resp = await api.get(f"/api/exams?{query}", headers=basic(ADMIN))
    assert resp.status == 400
    assert (await resp.json())["error"].startswith(f"{parameter}:")


async def test_pages_are_ceil_of_total_over_page_size(api) -> None:  # type: ignore[no-untyped-def]
    body = await (await api.get("/api/exams?page=1", headers=basic(ADMIN))).json()
    assert (body["total"], body["pages"], len(body["exams"])) == (8, 1, 8)
    body = await (await api.get("/api/exams?status=check", headers=basic(ADMIN))).json()
    assert (body["total"], body["pages"], body["exams"]) == (0, 1, [])


INJECTIONS = ["' OR 1=1 --", "\" OR \"\"=\"", "1; DROP TABLE exams", "%' UNION SELECT uid FROM exams --",
              "chest' --", "*/ OR /*", "\\"]  # a literal % or _ is tested above


@pytest.mark.parametrize("parameter", ["region", "search", "diagnostic", "radiologist", "status", "severity",
                                       "confidence", "reviewed", "positive", "correct", "sort", "page"])
async def test_sql_injection_in_every_filter(api, parameter: str) -> None:  # type: ignore[no-untyped-def]
    for text in INJECTIONS:
        resp = await api.get("/api/exams", params={parameter: text}, headers=basic(ADMIN))
        assert resp.status in (200, 400), (parameter, text, resp.status)
        body = await resp.json()
        if resp.status == 200:  # taken literally: matches nothing, and certainly not every row
            assert body["exams"] == [], (parameter, text, body["total"])
    count = await api.server.app[STORE].fetch_value("SELECT COUNT(*) FROM exams")
    assert count == len(FIXTURE)


# --- roles ------------------------------------------------------------------------------------------------------

PEOPLE = ["Popescu", "Ionescu Maria", "Georgescu", "Vasile", "Ana Pop", "Ion Ionescu"]


@pytest.mark.parametrize("path", ["/api/exams", "/api/exams?sort=triage", "/api/patients", "exam", "patient",
                                  "exam_patient"])
async def test_users_see_no_names_and_no_personal_numbers(api, path: str) -> None:  # type: ignore[no-untyped-def]
    cnp = cnp_with_check("619031540011")
    path = {"exam": f"/api/exams/{api.uids['E1']}", "patient": f"/api/patients/{cnp}",
            "exam_patient": f"/api/exams/{api.uids['E1']}/patient"}.get(path, path)
    user_text = await (await api.get(path, headers=basic(READER))).text()
    for secret in [*PEOPLE, cnp, cnp[:7], "2019-03-15"]:
        assert secret not in user_text, (path, secret)
    admin_text = await (await api.get(path, headers=basic(ADMIN))).text()
    assert "Popescu" in admin_text or "Ionescu" in admin_text


async def test_user_redaction_shapes(api) -> None:  # type: ignore[no-untyped-def]
    exam = await (await api.get(f"/api/exams/{api.uids['E1']}", headers=basic(READER))).json()
    assert exam["patient"]["name"] == "P.A."
    assert exam["report"]["rad"]["radiologist"] == "A.P."
    assert exam["patient"]["cnp"] == "*********" + cnp_with_check("619031540011")[-4:]
    admin = await (await api.get(f"/api/exams/{api.uids['E1']}", headers=basic(ADMIN))).json()
    assert admin["patient"]["name"] == "Popescu Ana" and admin["report"]["rad"]["radiologist"] == "Ana Pop"


async def test_users_cannot_search_people_by_name(api) -> None:  # type: ignore[no-untyped-def]
    assert await _names(api, "search=popescu", user=READER) == []
    resp = await api.get("/api/patients?search=Pope", headers=basic(READER))
    assert (await resp.json())["total"] == 0
    # Nor by a personal number: known or not, the answer is the same.
    for cnp in (cnp_with_check("619031540011"), cnp_with_check("199010140009")):
        resp = await api.get(f"/api/patients?search={cnp}", headers=basic(READER))
        assert (await resp.json())["total"] == 0
    # The UID or accession number of an exam they can see finds its patient.
    resp = await api.get(f"/api/patients?search={api.uids['E1']}", headers=basic(READER))
    assert [p["name"] for p in (await resp.json())["patients"]] == ["P.A."]
    admin = await api.get(f"/api/patients?search={cnp_with_check('619031540011')}", headers=basic(ADMIN))
    assert (await admin.json())["total"] == 1


async def test_users_cannot_tell_who_was_here_from_a_patient_lookup(api) -> None:  # type: ignore[no-untyped-def]
    known, unknown = cnp_with_check("619031540011"), cnp_with_check("199010140009")
    answers = []
    for cnp in (known, unknown):
        resp = await api.get(f"/api/patients/{cnp}", headers=basic(READER))
        answers.append((resp.status, await resp.json()))
    assert answers[0] == answers[1] and answers[0][0] == 403 and "admins" in answers[0][1]["error"]
    assert (await api.get(f"/api/patients/{known}", headers=basic(ADMIN))).status == 200
    assert (await api.get(f"/api/patients/{unknown}", headers=basic(ADMIN))).status == 404

    # From an exam they see, a user opens its patient's history, redacted; so does an admin, in full.
    resp = await api.get(f"/api/exams/{api.uids['E1']}/patient", headers=basic(READER))
    assert resp.status == 200
    patient = await resp.json()
    assert patient["exams"] == [api.uids["E2"], api.uids["E1"]]
    assert (patient["name"], patient["birthdate"], patient["cnp"]) == ("P.A.", None, "*********" + known[-4:])
    full = await (await api.get(f"/api/exams/{api.uids['E1']}/patient", headers=basic(ADMIN))).json()
    assert (full["name"], full["cnp"], full["birthdate"]) == ("Popescu Ana", known, "2019-03-15")
    missing = await api.get("/api/exams/1.2.3.4/patient", headers=basic(READER))
    assert missing.status == 404 and await missing.json() == {"error": "Exam not found"}


async def test_network_layout_is_for_admins(api) -> None:  # type: ignore[no-untyped-def]
    user = await (await api.get("/api/config", headers=basic(READER))).json()
    admin = await (await api.get("/api/config", headers=basic(ADMIN))).json()
    assert user["REMOTE_AE_IP"] is None and admin["REMOTE_AE_IP"] == "127.0.0.1"
    assert user["AE_TITLE"] == admin["AE_TITLE"] == "XRAYVISION"


async def test_admins_see_service_urls_without_their_passwords(aiohttp_client, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, {"openai": {"openai_url_primary": "http://ops:s3cret@127.0.0.1:9/v1"},
                                        "notifications": {"ntfy_url": "https://bot:hunter2@ntfy.example/xray"}})
    client = await aiohttp_client(build_app(settings))
    resp = await client.get("/api/config", headers=basic(ADMIN))
    body = await resp.text()
    assert resp.status == 200 and "s3cret" not in body and "hunter2" not in body
    shown = await resp.json()
    assert shown["OPENAI_URL_PRIMARY"] == "http://ops:***@127.0.0.1:9/v1/chat/completions"
    assert shown["NTFY_URL"] == "https://bot:***@ntfy.example/xray"


async def test_query_retrieve_needs_admin(api) -> None:  # type: ignore[no-untyped-def]
    resp = await api.post("/api/dicomquery", json={"hours": 3}, headers=basic(READER))
    assert resp.status == 403
    resp = await api.post("/api/dicomquery", json={"hours": 3}, headers=basic(ADMIN))
    assert resp.status == 501 and "error" in await resp.json()


# --- actions ----------------------------------------------------------------------------------------------------

async def test_review_round_trip_through_api_and_event_bus(api) -> None:  # type: ignore[no-untyped-def]
    seen: list[events.Event] = []
    api.server.app[BUS].subscribe(seen.append)
    uid = api.uids["E4"]  # unreviewed, AI negative (severity 0)
    resp = await api.post("/api/radreview", json={"uid": uid, "normal": False}, headers=basic(READER))
    assert resp.status == 200 and (await resp.json())["status"] == "success"
    exam = await (await api.get(f"/api/exams/{uid}", headers=basic(ADMIN))).json()
    assert (exam["report"]["reviewed"], exam["report"]["correct"]) == (1, 0)
    assert exam["report"]["review"]["reviewer"] == "reader" and exam["report"]["review"]["normal"] is False
    (event,) = [e for e in seen if e.name == events.RADREVIEW]
    assert event.payload["uid"] == uid and event.payload["report"]["reviewed"] == 1
    assert event.payload["patient"]["name"] == "Ionescu Maria"  # full: subscribers redact for their audience
    # The verdict changes the filters at once, and a later verdict replaces it.
    assert "E4" in await _names(api, "correct=no")
    await api.post("/api/radreview", json={"uid": uid, "normal": True}, headers=basic(ADMIN))
    assert "E4" in await _names(api, "correct=yes")


@pytest.mark.parametrize(("body", "status"), [
    ({"uid": "1.2.3.4", "normal": True}, 404), ({"normal": True}, 400), ({"uid": "", "normal": True}, 400),
    ({"uid": "1.2.3", "normal": "yes"}, 400), ({"uid": 5, "normal": True}, 400), ([1, 2], 400),
])
async def test_review_refuses_bad_input(api, body, status: int) -> None:  # type: ignore[no-untyped-def]
    resp = await api.post("/api/radreview", json=body, headers=basic(ADMIN))
    assert resp.status == status
    assert set(await resp.json()) == {"error"}


async def test_requeue_outcomes(api) -> None:  # type: ignore[no-untyped-def]
    seen: list[events.Event] = []
    api.server.app[BUS].subscribe(seen.append)
    resp = await api.post("/api/requeue", json={"uid": "1.2.3.4"}, headers=basic(ADMIN))
    assert resp.status == 404
    store = api.server.app[STORE]
    await store.execute("UPDATE exams SET status = 'processing' WHERE uid = ?", (api.uids["E6"],))
    assert (await api.post("/api/requeue", json={"uid": api.uids["E6"]}, headers=basic(ADMIN))).status == 409
    resp = await api.post("/api/requeue", json={"uid": api.uids["E1"]}, headers=basic(READER))
    assert resp.status == 200
    exam = await (await api.get(f"/api/exams/{api.uids['E1']}", headers=basic(ADMIN))).json()
    assert exam["exam"]["status"] == "requeue" and exam["report"]["ai"]["text"] == "AI report of E1"
    assert [e.payload for e in seen if e.name == events.REQUEUE] == [{"uid": api.uids["E1"], "status": "requeue"}]


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/api/dicomquery", 501),
])
async def test_features_still_to_come_answer_a_clear_json_error(api, method, path, status) -> None:  # type: ignore
    body = {"uid": api.uids["E1"], "report": "Normal chest."}
    resp = await api.request(method, path, json=body if method == "POST" else None, headers=basic(ADMIN))
    assert resp.status == status
    assert "not available" in (await resp.json())["error"]


async def test_patients_and_regions(api) -> None:  # type: ignore[no-untyped-def]
    body = await (await api.get("/api/patients", headers=basic(ADMIN))).json()
    assert [p["name"] for p in body["patients"]] == ["Georgescu Dan", "Ionescu Maria", "Popescu Ana", "Vasile Ion_x"]
    assert (body["total"], body["pages"]) == (4, 1)
    cnp = cnp_with_check("619031540011")
    patient = await (await api.get(f"/api/patients/{cnp}", headers=basic(ADMIN))).json()
    assert patient["exams"] == [api.uids["E2"], api.uids["E1"]] and patient["birthdate"] == "2019-03-15"
    missing = await api.get("/api/patients/0000000000000", headers=basic(ADMIN))
    assert missing.status == 404 and await missing.json() == {"error": "Patient not found"}
    assert await (await api.get("/api/regions", headers=basic(ADMIN))).json() == ["chest", "clavicle"]


async def test_cnp_valid_tells_a_cnp_from_another_patient_number(api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (other,) = await add_exams(api.server.app, tmp_path, 1, PatientID="HOSP-0042", PatientName="Doe^John")
    (anonymous,) = await add_exams(api.server.app, tmp_path, 1, PatientID=None, PatientName="Doe^Jane")
    for user in (ADMIN, READER):  # a user sees the number masked, and still whether it is a CNP
        body = await (await api.get("/api/exams", headers=basic(user))).json()
        patients = {e["uid"]: e["patient"] for e in body["exams"]}
        assert patients[api.uids["E1"]]["cnp_valid"] is True
        assert patients[other]["cnp_valid"] is False and patients[anonymous]["cnp_valid"] is False
    listed = (await (await api.get("/api/patients", headers=basic(ADMIN))).json())["patients"]
    assert {p["name"]: p["cnp_valid"] for p in listed if p["name"] in ("Doe John", "Popescu Ana")} == \
        {"Doe John": False, "Popescu Ana": True}
    for cnp, valid in ((cnp_with_check("619031540011"), True), ("HOSP-0042", False)):
        assert (await (await api.get(f"/api/patients/{cnp}", headers=basic(ADMIN))).json())["cnp_valid"] is valid


# --- limits and browser safety, on the real app --------------------------------------------------------------------

async def test_the_61st_request_in_a_minute_is_refused(aiohttp_client, tmp_path: Path) -> None:
    client = await aiohttp_client(build_app(make_settings(tmp_path)))  # the default limits: 60 and 10
    for n in range(60):
        assert (await client.get("/api/regions", headers=basic(ADMIN))).status == 200, n
    refused = await client.get("/api/regions", headers=basic(ADMIN))
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "too many requests" in (await refused.json())["error"]
    assert (await client.get("/images/1.2.3.png", headers=basic(ADMIN))).status == 404  # not /api: not limited


async def test_the_heavy_endpoints_refuse_the_11th(aiohttp_client, tmp_path: Path) -> None:
    client = await aiohttp_client(build_app(make_settings(tmp_path)))
    for _ in range(10):
        resp = await client.post("/api/check", json={"report": "Normal chest."}, headers=basic(ADMIN))
        assert resp.status == 503  # no model here; still counted
    assert (await client.post("/api/check", json={"report": "x"}, headers=basic(ADMIN))).status == 429
    assert (await client.get("/api/regions", headers=basic(ADMIN))).status == 200  # the other limit is apart


async def test_cross_site_writes_are_refused(api) -> None:  # type: ignore[no-untyped-def]
    uid = api.uids["E4"]
    foreign = await api.post("/api/radreview", json={"uid": uid, "normal": True},
                             headers={**basic(ADMIN), "Origin": "https://evil.example"})
    assert foreign.status == 403 and "error" in await foreign.json()
    form = await api.post("/api/radreview", data=f'{{"uid": "{uid}", "normal": true}}',
                          headers={**basic(ADMIN), "Content-Type": "text/plain"})
    assert form.status == 415
    exam = await (await api.get(f"/api/exams/{uid}", headers=basic(ADMIN))).json()
    assert exam["report"]["reviewed"] == 0  # neither got through
    same = await api.post("/api/radreview", json={"uid": uid, "normal": True},
                          headers={**basic(ADMIN), "Origin": f"http://{api.host}:{api.port}"})
    assert same.status == 200


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("GET", "/api/nothing-here", None, 404), ("DELETE", "/api/exams", None, 405),
    ("POST", "/api/requeue", b"{not json", 400), ("POST", "/api/requeue", b"[]", 400),
    ("GET", "/api/exams?page=x", None, 400), ("POST", "/api/dicomquery", b'{"hours": 3}', 501),
])
async def test_every_error_has_one_shape(api, method, path, body, status) -> None:  # type: ignore[no-untyped-def]
    headers = {**basic(ADMIN), "Content-Type": "application/json"}
    resp = await api.request(method, path, data=body, headers=headers)
    assert resp.status == status
    assert list(await resp.json()) == ["error"]


async def test_the_radiologists_diagnoses_and_severities_of_the_graded_reports(api) -> None:  # type: ignore[no-untyped-def]
    async def get(path: str, user: tuple[str, str] = ADMIN) -> Any:
        resp = await api.get(path, headers=basic(user))
        assert resp.status == 200, await resp.text()
        return await resp.json()

    assert await get("/api/radiologists") == ["Ana Pop", "Ion Ionescu"]
    assert await get("/api/radiologists", READER) == ["A.P.", "I.I."]  # users know them by their initials
    assert await get("/api/diagnostics") == {"effusion": 1, "normal": 1, "pneumonia": 1}
    assert await get("/api/severity") == {**{str(n): 0 for n in range(11)}, "2": 1, "6": 1, "8": 1}
    # A user's radiologist filter takes the initials they are shown, and never a name they are not.
    assert await _names(api, "radiologist=A.P.", READER) == ["E2", "E1"]
    assert await _names(api, "radiologist=a.p.", READER) == ["E2", "E1"]
    assert await _names(api, "radiologist=ana pop", READER) == []
    assert await _names(api, "radiologist=A.P.") == []  # admins filter by the name itself


async def test_stats_over_the_fixture(api) -> None:  # type: ignore[no-untyped-def]
    """The whole route over the API fixture (store/stats.py's own tests hold the exact figures): E1 TP, E2 FN (the
    report says 6), E3 FP (the review says normal), E8 TP (the review outranks its normal report); E4 has no verdict."""
    body = await (await api.get("/api/stats", headers=basic(READER))).json()
    confusion = body["confusion"]
    assert (confusion["tp"], confusion["tn"], confusion["fp"], confusion["fn"]) == (2, 0, 1, 1)
    assert body["correct"] == 2 and body["wrong"] == 2 and body["reviewed"] == 4 and body["total"] == 5
    assert confusion["sensitivity"]["value"] == round(2 / 3, 4) and confusion["specificity"]["value"] == 0.0
    assert confusion["npv"]["value"] == 0.0 and confusion["npv"]["high"] > 0  # 0 of 1, with its interval
    assert set(body["region"]) == {"chest", "clavicle"} and body["error_stats"] == {"unknown": 1, "ignore": 1}


async def test_stats_per_radiologist_and_per_diagnosis(api) -> None:  # type: ignore[no-untyped-def]
    """Ana Pop graded E1 (8, AI 7: TP) and E2 (6, AI 2: FN); Ion Ionescu graded E8 normal (2), but its manual review
    says abnormal and outranks the report, so with the AI's 9 it is a TP."""
    admin = await (await api.get("/api/stats/radiologists", headers=basic(ADMIN))).json()
    assert list(admin) == ["Ana Pop", "Ion Ionescu"]
    ana, ion = admin["Ana Pop"], admin["Ion Ionescu"]
    assert (ana["report_count"], ana["positives"], ana["ai_compared"]) == (2, 2, 2)
    assert (ana["agreement"]["tp"], ana["agreement"]["fn"], ana["agreement"]["sensitivity"]["value"]) == (1, 1, 0.5)
    assert ana["agreement"]["specificity"] is None  # no negative verdict among hers: undefined
    assert ana["severity_distribution"] == {**{str(n): 0 for n in range(11)}, "6": 1, "8": 1}
    # His report said normal, the manual review abnormal: the review outranks it in every figure.
    assert (ion["report_count"], ion["positives"], ion["agreement"]["tp"]) == (1, 1, 1)
    assert ana["median_report_seconds"] is None  # the fixture's reports say nothing of when they were issued
    response = await api.get("/api/stats/radiologists", headers=basic(READER))
    user = await response.json()
    assert user == {"A.P.": ana, "I.I.": ion}
    listed = await (await api.get("/api/radiologists", headers=basic(READER))).text()
    for name in ("Ana", "Pop", "Ion", "Ionescu"):  # initials only, anywhere in what users get
        assert name not in await response.text() and name not in listed
    diagnoses = await (await api.get("/api/stats/diagnostics", headers=basic(READER))).json()
    assert set(diagnoses) == {"pneumonia", "effusion", "normal"}
    assert diagnoses["pneumonia"]["top_regions"] == {"chest": 1} and diagnoses["pneumonia"]["agreement"]["tp"] == 1


async def test_monthly_trends_per_radiologist_and_diagnosis(api) -> None:  # type: ignore[no-untyped-def]
    admin = await (await api.get("/api/stats/radiologists/monthly_trends", headers=basic(ADMIN))).json()
    user_response = await api.get("/api/stats/radiologists/monthly_trends", headers=basic(READER))
    user = await user_response.json()
    assert len(admin) == 12 and list(admin) == list(user)  # the same months, oldest first
    assert [{"Ana Pop": "A.P.", "Ion Ionescu": "I.I."}.get(k, k) for m in admin.values() for k in m] == \
        [k for m in user.values() for k in m]
    assert "Pop" not in await user_response.text()
    diagnoses = await (await api.get("/api/diagnostics/monthly_trends", headers=basic(READER))).json()
    assert len(diagnoses) == 12 and set().union(*diagnoses.values()) <= {"pneumonia", "effusion", "normal"}


async def test_insights_over_the_fixture(api) -> None:  # type: ignore[no-untyped-def]
    admin = await (await api.get("/api/stats/insights", headers=basic(ADMIN))).json()
    # Ages at the exam (2026-11): Popescu Ana 7, Ionescu Maria 6, Vasile Ion 9 (CNPs of 2019, 2020 and 2017);
    # with a verdict: E1, E2 (7), E3 (6, normal by review), E8 (9, abnormal by review): all in the 6-11 group.
    assert admin["age_distribution"]["6-11"]["total_exams"] == 4
    assert admin["age_distribution"]["6-11"]["positive_findings"] == 3  # E1 8, E2 6; E8 by its review
    assert admin["age_distribution"]["0-1"] == {"total_exams": 0, "positive_findings": 0, "positive_rate": None}
    assert admin["ai_severity_distribution"]["7"] == 1 and sum(admin["ai_severity_distribution"].values()) == 5
    assert admin["rad_severity_distribution"] == {**{str(n): 0 for n in range(11)}, "2": 1, "6": 1, "8": 1}
    assert admin["severity_differences"] == {"-4": 1, "-1": 1, "7": 1}  # E2 2-6, E1 7-8, E8 9-2
    assert sum(admin["hourly_patterns"].values()) == 5
    assert admin["processing_times"]["chest"]["count"] == 3 and admin["processing_times"]["chest"]["median"] == 5.0
    assert admin["requeue_analysis"]["total_requeued"] == 0
    assert set(admin["radiologist_metrics"]) == {"Ana Pop", "Ion Ionescu"}
    user = await (await api.get("/api/stats/insights", headers=basic(READER))).json()
    assert set(user["radiologist_metrics"]) == {"A.P.", "I.I."}
