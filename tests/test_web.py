"""The minimal web face: Basic auth, the exam list and exam object, and images behind auth."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ADMIN, READER, add_exams, basic, cnp_with_check

from xrayvision.keys import SETTINGS

CONTRACT_KEYS = {
    "patient": {"name", "cnp", "cnp_valid", "id", "age", "birthdate", "sex", "county"},
    "exam": {"created", "date", "time", "protocol", "region", "status", "type", "study", "series", "id"},
    "ai": {"text", "summary", "created", "updated", "positive", "severity", "confidence", "model", "latency"},
    "rad": {"text", "text_en", "positive", "severity", "summary", "created", "updated", "id", "type", "radiologist",
            "justification", "model", "latency"},
}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic !!!"}, basic((ADMIN[0], "wrong")),
                                     basic(("nobody", ADMIN[1])), {"Authorization": "Bearer x"}])
async def test_api_needs_valid_basic_credentials(client, headers) -> None:  # type: ignore[no-untyped-def]
    resp = await client.get("/api/exams", headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="XRayVision"'
    assert set(await resp.json()) == {"error"}


async def test_user_names_are_case_insensitive(client) -> None:  # type: ignore[no-untyped-def]
    resp = await client.get("/api/exams", headers=basic((ADMIN[0].upper(), ADMIN[1])))
    assert resp.status == 200


async def test_exam_list_pages_newest_first(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = client.server.app
    uids = await add_exams(app, tmp_path, 23)
    assert app[SETTINGS].processing.page_size == 10
    seen = []
    for page in (1, 2, 3):
        body = await (await client.get(f"/api/exams?page={page}", headers=basic(ADMIN))).json()
        assert (body["total"], body["pages"]) == (23, 3)
        seen += [e["uid"] for e in body["exams"]]
    assert seen == list(reversed(uids))
    empty = await (await client.get("/api/exams?page=4", headers=basic(ADMIN))).json()
    assert empty["exams"] == [] and empty["pages"] == 3


async def test_pages_is_at_least_one_when_empty(client) -> None:  # type: ignore[no-untyped-def]
    body = await (await client.get("/api/exams", headers=basic(ADMIN))).json()
    assert (body["total"], body["pages"], body["exams"]) == (0, 1, [])


@pytest.mark.parametrize("page", ["abc", "0", "-1", "1.5", ""])
async def test_bad_page_is_a_400_naming_the_parameter(client, page: str) -> None:  # type: ignore[no-untyped-def]
    resp = await client.get(f"/api/exams?page={page}", headers=basic(ADMIN))
    assert resp.status == 400
    assert "page" in (await resp.json())["error"]


async def test_exam_object_has_the_contract_shape(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = client.server.app
    (uid,) = await add_exams(app, tmp_path, 1)
    exam = await (await client.get(f"/api/exams/{uid}", headers=basic(ADMIN))).json()
    assert exam["uid"] == uid
    assert CONTRACT_KEYS["patient"] <= exam["patient"].keys()
    assert CONTRACT_KEYS["exam"] <= exam["exam"].keys()
    assert CONTRACT_KEYS["ai"] <= exam["report"]["ai"].keys()
    assert CONTRACT_KEYS["rad"] <= exam["report"]["rad"].keys()
    assert exam["patient"] == {
        "name": "Ionescu Maria0", "cnp": cnp_with_check("620010140123"), "cnp_valid": True, "id": "", "age": 6,
        "birthdate": "2020-01-01", "sex": "F", "county": 40, "identity_conflict": False}
    assert (exam["exam"]["status"], exam["exam"]["region"], exam["exam"]["type"]) == ("queued", "chest", "CR")
    assert (exam["report"]["reviewed"], exam["report"]["correct"], exam["report"]["ai"]["positive"]) == (0, -1, -1)
    png = await client.get(exam["exam"]["image"], headers=basic(ADMIN))
    assert png.status == 200 and png.headers["Content-Type"] == "image/png"
    assert (await png.read())[:8] == b"\x89PNG\r\n\x1a\n"


async def test_user_role_sees_no_name_or_personal_number(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = client.server.app
    (uid,) = await add_exams(app, tmp_path, 1)
    cnp = cnp_with_check("620010140123")
    for path in ("/api/exams", f"/api/exams/{uid}"):
        text = await (await client.get(path, headers=basic(READER))).text()
        assert "Ionescu" not in text and "Maria" not in text and cnp not in text and cnp[:7] not in text
        assert "2020-01-01" not in text
    exam = await (await client.get(f"/api/exams/{uid}", headers=basic(READER))).json()
    assert exam["patient"]["name"] == "I.M."
    assert exam["patient"]["cnp"].endswith(cnp[-4:]) and set(exam["patient"]["cnp"][:-4]) == {"*"}


async def test_unknown_exam_is_a_json_404(client) -> None:  # type: ignore[no-untyped-def]
    resp = await client.get("/api/exams/1.2.3.4", headers=basic(ADMIN))
    assert resp.status == 404
    assert await resp.json() == {"error": "Exam not found"}


async def test_images_need_auth_and_stay_in_their_folder(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = client.server.app
    (uid,) = await add_exams(app, tmp_path, 1)
    assert (await client.get(f"/images/{uid}.png")).status == 401
    assert (await client.get(f"/images/{uid}.png", headers=basic(READER))).status == 200
    secret = app[SETTINGS].general.db_path
    for path in ("/images/..%2Fxrayvision.db", "/images/..%2F..%2Fetc%2Fpasswd", f"/images/{secret.name}",
                 "/images/1.2.3.png", "/images/%2e%2e/xrayvision.db", f"/images/{uid}.png.tmp"):
        resp = await client.get(path, headers=basic(ADMIN))
        assert resp.status == 404, path
        assert "error" in await resp.json()


async def test_api_answers_and_images_are_not_stored_by_caches(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Names and CNPs must not stay on a shared workstation's disk: every /api answer (errors too) is no-store,
    images private, no-store."""
    app = client.server.app
    (uid,) = await add_exams(app, tmp_path, 1)
    for path in ("/api/exams", f"/api/exams/{uid}", "/api/patients", "/api/exams/1.2.3", "/api/nothing-here"):
        resp = await client.get(path, headers=basic(ADMIN))
        assert resp.headers["Cache-Control"] == "no-store", path
    assert (await client.get("/api/exams")).headers["Cache-Control"] == "no-store"  # the 401 as well
    png = await client.get(f"/images/{uid}.png", headers=basic(ADMIN))
    assert png.status == 200 and png.headers["Cache-Control"] == "private, no-store"
