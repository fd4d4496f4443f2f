"""The standard (r4) searches against a real FHIR R4 server, sekmet-fhir: the Patient by identifier (with and without
a system) and by name and birth date, the report by based-on and by date, its text decoded (base64 plain UTF-8 and
HTML), the radiologist from display and from a referenced Practitioner, a preliminary report not taken, and both
kinds of auth that sekmet can require."""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import cnp_with_check, make_settings
from sekmet import TOKEN, USER, Sekmet, start_sekmet

from xrayvision.config import FHIRSettings
from xrayvision.fhir import FHIRClient, FHIRError, FoundReport, NotFound, ReportQuery, find_report

SYSTEM = "urn:oid:2.16.642.99.1"
EXAM = dt.datetime(2026, 11, 20, 8, 0, tzinfo=dt.UTC)
CNP_A = cnp_with_check("180010112345")
CNP_B = cnp_with_check("279020223456")
CNP_D = cnp_with_check("190030334567")
TEXT_A = "Fără modificări pleuro-pulmonare evidente.\nSinusurile costo-diafragmatice libere, cord în limite normale."
HTML_B = ("<html><head><style>p {color: red}</style></head><body><p>Opacitate &icirc;n lobul superior drept.</p>"
          "<p>Concluzie: pneumonie.<br>Control la două săptămâni.</p></body></html>")


def at(minutes: int) -> str:
    return (EXAM + dt.timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def b64(text: str, encoding: str = "utf-8") -> str:
    return base64.b64encode(text.encode(encoding)).decode()


def patient(pid: str, family: str, given: str, birth: str, *identifiers: tuple[str, str]) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": [given]}], "birthDate": birth,
            "identifier": [{"system": s, "value": v} for s, v in identifiers]}


def request(rid: str, pid: str, minutes: int, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "ServiceRequest", "id": rid, "status": "completed", "intent": "order",
            "subject": {"reference": f"Patient/{pid}"}, "authoredOn": at(minutes),
            "code": {"text": "XR chest"}, **extra}


def report(rid: str, pid: str, minutes: int, status: str = "final", based_on: str = "", **extra: Any) -> dict[str, Any]:
    body = {"resourceType": "DiagnosticReport", "id": rid, "status": status, "code": {"text": "XR chest"},
            "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": at(minutes), "issued": at(minutes + 90),
            **extra}
    if based_on:
        body["basedOn"] = [{"reference": f"ServiceRequest/{based_on}"}]
    return body


@pytest.fixture(scope="module")
def sekmet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sekmet]:
    server = start_sekmet(tmp_path_factory.mktemp("sekmet"))
    try:
        server.put(
            {"resourceType": "Practitioner", "id": "pr-ana", "name": [{"family": "Ionescu", "given": ["Ana"]}]},
            # A: by identifier in the hospital's system; plain UTF-8 text; radiologist by display; clinical details
            patient("p-a", "Popescu", "Ion", "1980-01-01", (SYSTEM, CNP_A)),
            request("sr-a", "p-a", -60, reasonCode=[{"text": "tuse persistentă"}],
                    supportingInfo=[{"display": "febră de 3 zile"}], category=[{"coding": [
                        {"system": "http://snomed.info/sct", "code": "363679005", "display": "Imaging"}]}]),
            request("sr-a-lab", "p-a", -30, category=[{"coding": [
                {"system": "http://snomed.info/sct", "code": "108252007", "display": "Laboratory procedure"}]}]),
            # an older study of A's, outside the window: only a read of its known request id finds it
            request("sr-a-old", "p-a", -60 * 24 * 5),
            report("dr-a-old", "p-a", -60 * 24 * 5 + 10, based_on="sr-a-old", conclusion="Older report."),
            report("dr-a", "p-a", 10, based_on="sr-a", resultsInterpreter=[{"display": "Dr. Maria Vasilescu"}],
                   presentedForm=[{"contentType": "text/plain; charset=utf-8", "data": b64(TEXT_A)}]),
            # B: an identifier in another system; HTML; radiologist by reference
            patient("p-b", "Georgescu", "Elena", "1979-02-02", ("urn:oid:1.2.3.4.5.1", CNP_B)),
            request("sr-b", "p-b", -15),
            report("dr-b", "p-b", 20, based_on="sr-b", resultsInterpreter=[{"reference": "Practitioner/pr-ana"}],
                   presentedForm=[{"contentType": "text/html; charset=utf-8", "data": b64(HTML_B)}]),
            # C: no identifier, no request; a report by date (and one outside the window); conclusion only
            patient("p-c", "Ştefănescu", "Mihai", "1975-05-05"),
            report("dr-c", "p-c", 45, conclusion="Fractură de radius distal."),
            report("dr-c-old", "p-c", -60 * 24 * 10, conclusion="Old report."),
            # D: only a preliminary report
            patient("p-d", "Dumitru", "Radu", "1990-03-03", (SYSTEM, CNP_D)),
            request("sr-d", "p-d", -20),
            report("dr-d", "p-d", 5, status="preliminary", based_on="sr-d", conclusion="Draft."),
            # E: two people of one name and birth date
            patient("p-e1", "Marin", "Ioana", "1985-06-06"),
            patient("p-e2", "Marin", "Ioana", "1985-06-06"),
        )
        yield server
    finally:
        server.stop()


def fhir_settings(tmp_path: Path, sekmet: Sekmet, **fhir: str) -> FHIRSettings:
    values = {"fhir_url": sekmet.base_url, "fhir_username": USER[0], "fhir_password": USER[1],
              "identifier_system": SYSTEM, "timeout": "10", **fhir}
    return make_settings(tmp_path, {"fhir": values}).fhir


@pytest.fixture
async def fhir(tmp_path: Path, sekmet: Sekmet) -> AsyncIterator[tuple[FHIRClient, FHIRSettings]]:
    settings = fhir_settings(tmp_path, sekmet)
    client = FHIRClient(settings)
    await client.start()
    yield client, settings
    await client.stop()


def query(cnp: str = "", name: str = "", birth: dt.date | None = None, **changes: Any) -> ReportQuery:
    base = ReportQuery(uid="1.2.3.4", cnp=cnp, cnp_valid=bool(cnp), his_id="", name=name, birthdate=birth, sex="M",
                       created=EXAM, modality="CR", region="chest", request_id="")
    return dataclasses.replace(base, **changes)


async def test_by_identifier_in_the_system_with_plain_utf8_text_and_radiologist_display(fhir) -> None:  # type: ignore[no-untyped-def]
    client, settings = fhir
    found = await find_report(client, query(CNP_A, "POPESCU^ION", dt.date(1980, 1, 1)), settings)
    assert found == FoundReport(
        patient_id="p-a", request_id="sr-a", report_id="dr-a", text=TEXT_A, radiologist="Dr. Maria Vasilescu",
        justification="tuse persistentă; febră de 3 zile", issued=EXAM + dt.timedelta(minutes=100),
        type="XR chest", status="final")
    assert client.status()["reachable"] is True


async def test_an_identifier_of_another_system_is_not_the_cnp(fhir) -> None:  # type: ignore[no-untyped-def]
    client, settings = fhir
    # B's number is in another system, and this name is nobody's: no Patient
    found = await find_report(client, query(CNP_B, "NOBODY^AT ALL", dt.date(1979, 2, 2)), settings)
    assert found == NotFound("no Patient matches")


async def test_by_identifier_in_any_system_with_html_and_a_referenced_practitioner(fhir, tmp_path, sekmet) -> None:  # type: ignore[no-untyped-def]
    client, _ = fhir
    settings = fhir_settings(tmp_path, sekmet, identifier_system="")
    found = await find_report(client, query(CNP_B), settings)
    assert isinstance(found, FoundReport), found
    assert (found.patient_id, found.request_id, found.report_id) == ("p-b", "sr-b", "dr-b")
    assert found.text == "Opacitate în lobul superior drept.\n\nConcluzie: pneumonie.\nControl la două săptămâni."
    assert found.radiologist == "Ana Ionescu"
    assert client.practitioners == {"pr-ana": "Ana Ionescu"}  # cached: the next report by her costs no read


@pytest.mark.parametrize("name", ["ŞTEFĂNESCU^MIHAI", "STEFANESCU^MIHAI"])  # a modality may drop diacritics
async def test_by_name_and_birth_date_then_the_report_by_date(fhir, name) -> None:  # type: ignore[no-untyped-def]
    client, settings = fhir
    found = await find_report(client, query("", name, dt.date(1975, 5, 5)), settings)
    assert isinstance(found, FoundReport), found
    # p-c was found by name and birth date: good for this exam, not handed back to be remembered for later ones
    assert (found.patient_id, found.request_id, found.report_id) == ("", "", "dr-c")
    assert found.text == "Fractură de radius distal."
    assert found.radiologist == found.justification == ""


async def test_the_wrong_birth_date_or_two_people_of_one_name_match_nobody(fhir) -> None:  # type: ignore[no-untyped-def]
    client, settings = fhir
    assert await find_report(client, query("", "STEFANESCU^MIHAI", dt.date(1975, 5, 6)), settings) == NotFound(
        "no Patient matches")
    found = await find_report(client, query("", "MARIN^IOANA", dt.date(1985, 6, 6)), settings)
    assert isinstance(found, NotFound) and "ambiguous" in found.reason


async def test_a_patient_found_by_an_invalid_cnp_is_not_handed_back(fhir) -> None:  # type: ignore[no-untyped-def]
    client, settings = fhir
    found = await find_report(client, query(CNP_A, cnp_valid=False), settings)
    assert isinstance(found, FoundReport) and (found.patient_id, found.report_id) == ("", "dr-a")
    missed = await find_report(client, query(CNP_D, cnp_valid=False), settings)
    assert missed == NotFound("no final report yet", patient_id="", request_id="sr-d")


async def test_a_known_patient_id_skips_the_patient_search(fhir) -> None:  # type: ignore[no-untyped-def]
    client, settings = fhir
    found = await find_report(client, query("no-such-cnp", his_id="p-a"), settings)
    assert isinstance(found, FoundReport) and (found.patient_id, found.report_id) == ("p-a", "dr-a")


async def test_a_known_request_id_is_read_not_searched(fhir) -> None:  # type: ignore[no-untyped-def]
    client, settings = fhir
    # a search around the exam would pick sr-a (and dr-a): sr-a-old is out of its window
    found = await find_report(client, query(his_id="p-a", request_id="sr-a-old"), settings)
    assert isinstance(found, FoundReport) and (found.request_id, found.report_id) == ("sr-a-old", "dr-a-old")


async def test_a_preliminary_report_is_not_taken(fhir) -> None:  # type: ignore[no-untyped-def]
    client, settings = fhir
    found = await find_report(client, query(CNP_D), settings)
    assert found == NotFound("no final report yet", patient_id="p-d", request_id="sr-d")


async def test_an_exam_outside_the_window_finds_no_report(fhir) -> None:  # type: ignore[no-untyped-def]
    client, settings = fhir
    found = await find_report(client, query(his_id="p-c", created=EXAM + dt.timedelta(days=5)), settings)
    assert found == NotFound("no DiagnosticReport", patient_id="p-c")


async def test_bearer_token_auth(tmp_path, sekmet) -> None:  # type: ignore[no-untyped-def]
    settings = fhir_settings(tmp_path, sekmet, fhir_username="", fhir_password="", fhir_token=TOKEN)
    client = FHIRClient(settings)
    await client.start()
    try:
        found = await find_report(client, query(CNP_A), settings)
    finally:
        await client.stop()
    assert isinstance(found, FoundReport) and found.report_id == "dr-a"


@pytest.mark.parametrize("auth", [{"fhir_password": "wrong"}, {"fhir_username": "", "fhir_password": ""},
                                  {"fhir_token": "not-the-token"}])
async def test_refused_credentials_are_the_server_being_down(tmp_path, sekmet, auth) -> None:  # type: ignore[no-untyped-def]
    settings = fhir_settings(tmp_path, sekmet, **auth)
    client = FHIRClient(settings)
    await client.start()
    try:
        assert await client.probe() is True  # sekmet's metadata is open to all
        with pytest.raises(FHIRError) as caught:
            await find_report(client, query(CNP_A), settings)
    finally:
        await client.stop()
    assert caught.value.server_down is True
    assert str(caught.value) == "Patient: HTTP 401 (error login)"
    assert client.status()["reachable"] is False and client.status()["last_error"] == str(caught.value)
