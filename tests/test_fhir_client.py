"""The FHIR client against our fault-injecting server (tests/fhir_server.py): paging (and a next link to another
server not followed), hang, 500, garbage, OperationOutcomes, malformed resources and bad base64 as reasons, the his
flavour, health, and the auth headers sent."""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import cnp_with_check, free_port, make_settings
from fhir_server import FaultServer

from xrayvision.config import FHIRSettings
from xrayvision.fhir import FHIRClient, FHIRError, FoundReport, NotFound, ReportQuery, find_report
from xrayvision.fhir.text import html_to_text
from xrayvision.timeutil import utc_to_local

EXAM = dt.datetime(2026, 11, 20, 8, 0, tzinfo=dt.UTC)
CNP = cnp_with_check("180010112345")
NAME = "POPESCU^ION^VASILE"
TEXT = "Fără modificări pleuro-pulmonare. Sinusuri costo-diafragmatice libere."
SECRETS = (CNP, "Popescu", "POPESCU", "1980-01-01", "Fără", "pleuro")  # what no log line may carry


def at(minutes: int) -> str:
    return (EXAM + dt.timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def b64(data: str | bytes, encoding: str = "utf-8") -> str:
    return base64.b64encode(data.encode(encoding) if isinstance(data, str) else data).decode()


PATIENT = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:cnp", "value": CNP}],
           "name": [{"family": "Popescu", "given": ["Ion", "Vasile"]}], "birthDate": "1980-01-01"}
REQUEST = {"resourceType": "ServiceRequest", "id": "sr1", "status": "completed", "intent": "order",
           "subject": {"reference": "Patient/p1"}, "authoredOn": at(-30),
           "_facade": {"type": "radio", "region": "chest", "day": utc_to_local(EXAM, None).strftime("%Y-%m-%d")}}


def report(**changes: Any) -> dict[str, Any]:
    body = {"resourceType": "DiagnosticReport", "id": "sr1", "status": "final", "code": {"text": "XR chest"},
            "subject": {"reference": "Patient/p1"}, "basedOn": [{"reference": "ServiceRequest/sr1"}],
            "effectiveDateTime": at(5), "issued": at(60), "resultsInterpreter": [{"display": "Dr. Ana Ionescu"}],
            "presentedForm": [{"contentType": "text/plain; charset=utf-8", "data": b64(TEXT)}]}
    body.update(changes)
    return body


def query(**changes: Any) -> ReportQuery:
    base = ReportQuery(uid="1.2.3", cnp=CNP, cnp_valid=True, his_id="", name=NAME, birthdate=dt.date(1980, 1, 1),
                       sex="M", created=EXAM, modality="CR", region="chest", request_id="")
    return dataclasses.replace(base, **changes)


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    fault = await FaultServer().start()
    fault.add(PATIENT, REQUEST, report())
    yield fault
    await fault.stop()


def fhir_settings(tmp_path: Path, server: FaultServer, **fhir: Any) -> FHIRSettings:
    flavour = fhir.get("fhir_flavour", "r4")
    values = {"fhir_url": server.url if flavour == "his" else server.base, "timeout": "5", **fhir}
    timeout = values.pop("timeout_s", None)
    settings = make_settings(tmp_path, {"fhir": {k: str(v) for k, v in values.items()}}).fhir
    return dataclasses.replace(settings, timeout=timeout) if timeout else settings


class Running:
    def __init__(self, settings: FHIRSettings) -> None:
        self.settings = settings
        self.client = FHIRClient(settings)

    async def __aenter__(self) -> FHIRClient:
        await self.client.start()
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.stop()


async def find(tmp_path: Path, server: FaultServer, q: ReportQuery | None = None, **fhir: Any) -> Any:
    settings = fhir_settings(tmp_path, server, **fhir)
    async with Running(settings) as client:
        return await find_report(client, q or query(), settings)


def assert_no_patient_data(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        if not record.name.startswith("xrayvision"):
            continue  # the test server's own access log
        message = record.getMessage()
        assert not any(secret in message for secret in SECRETS), message


async def test_the_report_found_through_the_standard_searches(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    found = await find(tmp_path, server)
    assert found == FoundReport(patient_id="p1", request_id="sr1", report_id="sr1", text=TEXT,
                                radiologist="Dr. Ana Ionescu", justification="", issued=EXAM + dt.timedelta(hours=1),
                                type="XR chest", status="final")
    assert [s.path for s in server.seen] == ["/fhir/Patient", "/fhir/ServiceRequest", "/fhir/DiagnosticReport"]
    assert server.seen[0].query["identifier"] == [CNP]
    assert server.seen[1].query["authored"] == ["ge2026-11-18T08:00:00Z", "le2026-11-22T08:00:00Z"]


async def test_the_same_exam_through_the_his_facade(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    found = await find(tmp_path, server, fhir_flavour="his")
    assert found == FoundReport(patient_id="p1", request_id="sr1", report_id="sr1", text=TEXT,
                                radiologist="Dr. Ana Ionescu", justification="", issued=EXAM + dt.timedelta(hours=1),
                                type="radio", status="final")
    assert [(s.path, s.query) for s in server.seen] == [
        ("/fhir/Patient", {"q": [CNP]}),
        ("/fhir/ServiceRequest", {"patient": ["p1"], "dt": [utc_to_local(EXAM, None).strftime("%Y-%m-%d %H:%M:%S")],
                                  "type": ["radio"], "region": ["chest"]}),
        ("/fhir/DiagnosticReport/sr1", {})]


async def test_the_his_facade_by_name_with_its_reason_and_its_forms_per_type_and_region(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    server.add({**REQUEST, "reason": [{"display": "traumatism"}]}, report(presentedForm=[
        {"contentType": "text/plain", "data": b64("the CT"), "type": "ct", "region": "chest"},
        {"contentType": "text/plain", "data": b64("the chest X-ray"), "type": "radio", "region": "chest"}]))
    found = await find(tmp_path, server, query(cnp="", cnp_valid=False), fhir_flavour="his")
    assert isinstance(found, FoundReport), found
    assert (found.text, found.justification) == ("the chest X-ray", "traumatism")
    assert server.seen[0].query == {"q": ["POPESCU ION VASILE"]}
    assert found.patient_id == ""  # found by name: not to be remembered for the patient's later exams


async def test_the_his_facade_never_picks_one_of_several_patients(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    server.add({**PATIENT, "id": "p2"})
    found = await find(tmp_path, server, fhir_flavour="his")
    assert found == NotFound("several Patients have this CNP (ambiguous)")
    assert server.requests == 1


async def test_the_his_facade_report_not_there_yet(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    server.resources["DiagnosticReport"].clear()
    found = await find(tmp_path, server, query(his_id="p1", request_id="sr1"), fhir_flavour="his")
    assert found == NotFound("no DiagnosticReport yet", patient_id="p1", request_id="sr1")
    assert [s.path for s in server.seen] == ["/fhir/DiagnosticReport/sr1"]  # both ids known: one request


async def test_paging_follows_the_next_link(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    # five requests, two per page; the nearest to the exam is on the last page
    server.resources["ServiceRequest"].clear()
    server.add(*[{**REQUEST, "id": f"sr{i}", "authoredOn": at(-600 + 100 * i)} for i in range(5)])
    server.add(report(id="dr4", basedOn=[{"reference": "ServiceRequest/sr4"}]))
    server.page_size = 2
    found = await find(tmp_path, server, query(his_id="p1"))
    assert isinstance(found, FoundReport) and found.request_id == "sr4", found
    assert [s.query.get("_offset") for s in server.seen if s.path == "/fhir/ServiceRequest"] == [None, ["2"], ["4"]]


@pytest.mark.parametrize("elsewhere", [
    lambda own, other: other,  # another port
    lambda own, other: other.replace("127.0.0.1", "localhost"),  # another host name
    lambda own, other: own.replace("http:", "https:"),  # another scheme
])
async def test_a_next_link_to_another_server_is_not_followed(tmp_path, server, caplog, elsewhere) -> None:  # type: ignore[no-untyped-def]
    other = await FaultServer().start()
    try:
        server.resources["ServiceRequest"].clear()
        server.add(*[{**REQUEST, "id": f"sr{i}", "authoredOn": at(-600 + 100 * i)} for i in range(5)])
        server.page_size, server.next_base = 2, elsewhere(server.url, other.url)
        settings = fhir_settings(tmp_path, server, fhir_username="u", fhir_password="secret-pw")
        async with Running(settings) as client:
            with caplog.at_level(logging.WARNING, logger="xrayvision.fhir"):
                first = await client.search(server.base + "/ServiceRequest", {"subject": "Patient/p1"})
                again = await client.search(server.base + "/ServiceRequest", {"subject": "Patient/p1"})
    finally:
        await other.stop()
    assert [r["id"] for r in first] == [r["id"] for r in again] == ["sr0", "sr1"]
    assert other.requests == 0 and server.requests == 2  # so our credentials went nowhere else
    scheme, host_port = server.next_base.split("://")
    host, port = host_port.split(":")
    assert [r.getMessage() for r in caplog.records] == [  # once, however often it happens
        f"FHIR server's next page is on another server ({scheme}://{host}:{port}); not followed"]


async def test_a_hanging_server_is_an_error_within_the_timeout(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    server.fault = "hang"
    settings = fhir_settings(tmp_path, server, timeout_s=0.2)
    async with Running(settings) as client:
        with pytest.raises(FHIRError) as caught:
            await asyncio.wait_for(find_report(client, query(), settings), 30)
        assert caught.value.server_down is True
        assert str(caught.value) == "Patient: no answer within 0.2 s"
        assert client.status()["reachable"] is False


@pytest.mark.parametrize(("fault", "reason", "down"), [
    ("500", "Patient: HTTP 500 (fatal exception)", True),
    ("garbage", "Patient: the answer is not a JSON object", True),
    ("outcome-error", "search answered an OperationOutcome (error processing)", True),
    ("400", "Patient: HTTP 400 (error invalid)", False),
])
async def test_server_failures_are_errors(tmp_path, server, fault, reason, down) -> None:  # type: ignore[no-untyped-def]
    server.fault = fault
    with pytest.raises(FHIRError) as caught:
        await find(tmp_path, server)
    assert (str(caught.value), caught.value.server_down) == (reason, down)
    assert server.requests == 1


async def test_an_information_outcome_is_no_match(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    server.fault = "outcome-info"
    assert await find(tmp_path, server) == NotFound("no Patient matches")
    assert [s.path for s in server.seen] == ["/fhir/Patient", "/fhir/Patient"]  # by identifier, then by name


@pytest.mark.parametrize(("kind", "change", "reason"), [
    ("Patient", {"birthDate": "1980-13-45", "name": [{"family": ["Popescu"]}]},
     "malformed Patient: birthDate, name.0.family"),
    ("ServiceRequest", {"status": 5, "authoredOn": "yesterday"}, "malformed ServiceRequest: authoredOn, status"),
    ("DiagnosticReport", {"code": "XR chest", "conclusion": {"text": "Fără"}},
     "malformed DiagnosticReport: code, conclusion"),
    ("DiagnosticReport", {"presentedForm": [{"contentType": "text/plain", "data": "Fără!!"}]},
     "malformed DiagnosticReport: presentedForm.0.data (bad base64)"),
    ("DiagnosticReport", {"presentedForm": [{"contentType": "text/plain; charset=utf-8", "data": b64(b"F\xe3r\xe3")}]},
     "undecodable presentedForm: data is not valid utf-8"),
    ("DiagnosticReport", {"presentedForm": [{"contentType": "text/plain; charset=klingon", "data": b64("x")}]},
     "undecodable presentedForm: unknown charset klingon"),
])
async def test_malformed_resources_are_logged_reasons(tmp_path, server, caplog, kind, change, reason) -> None:  # type: ignore[no-untyped-def]
    original: Any = {"Patient": PATIENT, "ServiceRequest": REQUEST, "DiagnosticReport": report()}[kind]
    server.add({**original, **change})
    with caplog.at_level(logging.INFO):
        found = await find(tmp_path, server)
    assert isinstance(found, NotFound) and found.reason == reason
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and reason in warnings[0].getMessage()
    assert_no_patient_data(caplog)


async def test_a_charset_is_honoured_and_html_keeps_its_breaks(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    html = "<div>Cord în limite normale.</div><ul><li>SCD libere</li><li>fără lichid</li></ul><script>x()</script>"
    latin2 = {"contentType": "text/html; charset=iso-8859-2", "data": b64(html, "iso-8859-2")}
    server.add(report(presentedForm=[{"contentType": "application/pdf", "data": b64("%PDF")}, latin2]))
    found = await find(tmp_path, server)
    assert isinstance(found, FoundReport) and found.text == "Cord în limite normale.\n\nSCD libere\n\nfără lichid"


def test_html_to_text_keeps_paragraphs_and_lines() -> None:
    assert html_to_text("<p>One &amp;  two</p><p>Three<br/>four</p>\n<table><tr><td>a</td><td>b</td></tr></table>") \
        == "One & two\n\nThree\nfour\n\na b"


async def test_the_conclusion_when_there_is_no_form(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    server.add(report(presentedForm=None, conclusion="Normal."))
    found = await find(tmp_path, server)
    assert isinstance(found, FoundReport) and found.text == "Normal."


async def test_two_requests_equally_near_are_ambiguous(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    server.add({**REQUEST, "id": "sr2", "authoredOn": at(30)})
    found = await find(tmp_path, server, query(his_id="p1"))
    assert found == NotFound("several ServiceRequests equally near the exam (ambiguous)", patient_id="p1")


async def test_a_referenced_practitioner_is_read_once(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    server.add(report(resultsInterpreter=[{"reference": "Practitioner/pr1"}]),
               {"resourceType": "Practitioner", "id": "pr1", "name": [{"text": "Dr. Radu Marin"}]})
    settings = fhir_settings(tmp_path, server)
    async with Running(settings) as client:
        for _ in range(2):
            found = await find_report(client, query(his_id="p1", request_id="sr1"), settings)
            assert isinstance(found, FoundReport) and found.radiologist == "Dr. Radu Marin"
    assert [s.path for s in server.seen].count("/fhir/Practitioner/pr1") == 1


async def test_health_after_success_and_after_failure(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    for flavour, path in (("r4", "/fhir/metadata"), ("his", "/fhir/Metadata")):
        server.fault = None
        server.seen.clear()
        settings = fhir_settings(tmp_path, server, fhir_flavour=flavour, fhir_username="u", fhir_password="pw")
        async with Running(settings) as client:
            first = client.status()
            assert first == {"url": settings.url, "flavour": flavour, "reachable": None, "last_success": None,
                             "last_error": None, "since": None}
            assert await client.probe() is True
            good = client.status()
            assert good["reachable"] is True and good["last_success"] and good["since"] and good["last_error"] is None
            server.fault = "500"
            assert await client.probe() is False
            bad = client.status()
            assert bad["reachable"] is False
            assert bad["last_error"] == f"{path.rsplit('/', 1)[1]}: HTTP 500 (fatal exception)"
            assert bad["last_success"] == good["last_success"] and bad["since"] is not None
        assert [s.path for s in server.seen] == [path, path]


async def test_the_url_shown_has_no_password(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    settings = dataclasses.replace(fhir_settings(tmp_path, server), url="http://u:pw@127.0.0.1:1/fhir")
    assert FHIRClient(settings).status()["url"] == "http://u:***@127.0.0.1:1/fhir"


@pytest.mark.parametrize(("auth", "header"), [
    ({"fhir_username": "radiology", "fhir_password": "pă55:word"}, "Basic " + b64("radiology:pă55:word")),
    ({"fhir_token": "tok-123"}, "Bearer tok-123"),
    ({"fhir_username": "radiology", "fhir_password": "pw", "fhir_token": "tok-123"}, "Bearer tok-123"),
    ({}, ""),
])
async def test_auth_headers_are_sent(tmp_path, server, auth, header) -> None:  # type: ignore[no-untyped-def]
    found = await find(tmp_path, server, **auth)
    assert isinstance(found, FoundReport)
    assert {s.authorization for s in server.seen} == {header}


async def test_an_oversized_answer_is_this_exams_problem(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    big = b64(b"x" * (5 * 1024 * 1024))
    server.add(report(presentedForm=[{"contentType": "application/pdf", "data": big}]))
    with pytest.raises(FHIRError) as caught:
        await find(tmp_path, server)
    assert str(caught.value) == "DiagnosticReport: answer larger than 4194304 bytes"
    assert caught.value.server_down is False


async def test_a_server_that_is_not_there(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    settings = dataclasses.replace(fhir_settings(tmp_path, server), url=f"http://127.0.0.1:{free_port()}/fhir")
    async with Running(settings) as client:
        assert await client.probe() is False
        with pytest.raises(FHIRError) as caught:
            await find_report(client, query(), settings)
        assert client.status()["last_error"] == str(caught.value)
    assert (str(caught.value), caught.value.server_down) == ("Patient: cannot connect: Connection refused", True)


@pytest.mark.parametrize(("flavour", "fault", "metadata", "healthy", "error"), [
    ("his", None, "<html>OK</html>", True, None),  # the facade's health check: a 200 is enough
    ("r4", None, "<html>OK</html>", False, "metadata: the answer is not a JSON object"),
    ("r4", "400", None, False, "metadata: HTTP 400 (error invalid)"),  # a 4xx on the probe is the server's
    ("r4", None, '{"resourceType": "Bundle"}', False, "metadata: not a CapabilityStatement"),
])
async def test_what_the_probe_takes_for_healthy(tmp_path, server, flavour, fault, metadata, healthy, error) -> None:  # type: ignore[no-untyped-def]
    server.fault, server.metadata = fault, metadata
    async with Running(fhir_settings(tmp_path, server, fhir_flavour=flavour)) as client:
        assert await client.probe() is healthy
        assert (client.status()["reachable"], client.status()["last_error"]) == (healthy, error)


async def test_the_his_facade_refusing_a_patient_is_this_exams_problem(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    server.fault = "outcome-error"
    with pytest.raises(FHIRError) as caught:
        await find(tmp_path, server, fhir_flavour="his")
    assert (str(caught.value), caught.value.server_down) == (
        "search answered an OperationOutcome (error processing)", False)
    server.fault, server.seen[:] = "outcome-info", []
    assert await find(tmp_path, server, fhir_flavour="his") == NotFound("no Patient matches")
    assert [s.query for s in server.seen] == [{"q": [CNP]}, {"q": ["POPESCU ION VASILE"]}]  # the CNP, then the name


async def test_a_missing_search_endpoint_is_the_server_being_down(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FHIRError) as caught:  # FHIR_URL without its /fhir: every search is a 404
        await find(tmp_path, server, fhir_url=server.url)
    assert (str(caught.value), caught.value.server_down) == ("Patient: HTTP 404", True)


def _next_to(url: str) -> Any:
    def mangle(bundle: dict[str, Any]) -> None:
        bundle["link"].append({"relation": "next", "url": url})
    return mangle


@pytest.mark.parametrize(("mangle", "reason"), [
    (lambda b: b.update(entry={"resource": {}}), "entry is not a list"),
    (lambda b: b.update(entry=[5]), "entry that is not an object"),
    (lambda b: b["entry"][0].update(resource="Patient/p1"), "resource is not an object"),
    (lambda b: b["entry"][0].update(search="match"), "search is malformed"),
    (lambda b: b["entry"][0].update(search={"mode": 5}), "search is malformed"),
    (lambda b: b.update(link=5), "link is malformed"),
    (lambda b: b.update(link=["self"]), "link is malformed"),
    (_next_to(5), "next link has no URL"),  # type: ignore[arg-type]
    (_next_to("http://127.0.0.1:notaport/fhir/Patient"), "next link is not a valid URL"),
    ("credentials", "next link carries credentials"),
])
async def test_a_garbled_bundle_is_this_exams_error(tmp_path, server, mangle, reason) -> None:  # type: ignore[no-untyped-def]
    if mangle == "credentials":  # on our own host and port, so only the user:pass@ is wrong
        mangle = _next_to(server.url.replace("http://", "http://u:pw@") + "/fhir/Patient?_offset=1")
    server.mangle = mangle
    with pytest.raises(FHIRError) as caught:
        await find(tmp_path, server, fhir_username="u", fhir_password="secret-pw")
    assert str(caught.value).startswith("search answered a Bundle ") and str(caught.value).endswith(reason)
    assert caught.value.server_down is False
    assert server.requests == 1


@pytest.mark.parametrize(("reference", "read"), [
    ("Practitioner/pr1", True),
    ("{base}/Practitioner/pr1", True),  # absolute on FHIR_URL's own base
    ("http://other.example/fhir/Practitioner/pr1", False),  # another server's pr1 is not ours
    ("{other}/fhir/Practitioner/pr1", False),  # our host, another port
    ("{url}/elsewhere/Practitioner/pr1", False),  # our server, but not under FHIR_URL
    ("Organization/x/Practitioner/pr1", False),
])
async def test_only_a_practitioner_on_our_server_is_read(tmp_path, server, reference, read) -> None:  # type: ignore[no-untyped-def]
    other = f"http://127.0.0.1:{free_port()}"
    server.add(report(resultsInterpreter=[{"reference": reference.format(base=server.base, url=server.url,
                                                                          other=other)}]),
               {"resourceType": "Practitioner", "id": "pr1", "name": [{"text": "Dr. Radu Marin"}]})
    found = await find(tmp_path, server, query(his_id="p1", request_id="sr1"))
    assert isinstance(found, FoundReport) and found.radiologist == ("Dr. Radu Marin" if read else "")
    assert ("/fhir/Practitioner/pr1" in [s.path for s in server.seen]) is read


async def test_another_studys_report_is_not_taken_by_based_on(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    server.add(report(id="dr2", effectiveDateTime=at(30)))  # also based on sr1, but farther from the exam than sr1
    found = await find(tmp_path, server, query(his_id="p1", taken_reports=frozenset({"sr1"})))
    assert isinstance(found, FoundReport) and (found.request_id, found.report_id) == ("sr1", "dr2")


async def test_another_studys_report_is_not_taken_by_date(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    server.resources["ServiceRequest"].clear()
    server.resources["DiagnosticReport"].clear()
    server.add(report(id="dr-other", basedOn=None), report(id="dr-own", basedOn=None, effectiveDateTime=at(40)))
    found = await find(tmp_path, server, query(his_id="p1", taken_reports=frozenset({"dr-other"})))
    assert isinstance(found, FoundReport) and found.report_id == "dr-own"
    found = await find(tmp_path, server, query(his_id="p1", taken_reports=frozenset({"dr-other", "dr-own"})))
    assert found == NotFound("no DiagnosticReport", patient_id="p1")


async def test_another_studys_report_is_not_taken_by_the_his_facade(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    found = await find(tmp_path, server, query(taken_reports=frozenset({"sr1"})), fhir_flavour="his")
    assert found == NotFound("the DiagnosticReport is another study's", patient_id="p1", request_id="sr1")


@pytest.mark.parametrize(("lenient", "no_requests"), [
    ({"identifier"}, False),  # every Patient answers the CNP search
    ({"subject"}, False),  # another patient's request, nearer the exam
    ({"based-on"}, False),  # another request's (and patient's) report, nearer the exam
    ({"subject"}, True),  # the date search: another patient's report, nearer the exam
])
async def test_a_lenient_server_cannot_hand_us_another_patients_report(tmp_path, server, lenient, no_requests) -> None:  # type: ignore[no-untyped-def]
    server.add({**PATIENT, "id": "p2", "identifier": [{"system": "urn:cnp", "value": cnp_with_check("279020223456")}]},
               {**REQUEST, "id": "sr-x", "subject": {"reference": "Patient/p2"}, "authoredOn": at(-5)},
               report(id="dr-x", subject={"reference": "Patient/p2"}, basedOn=[{"reference": "ServiceRequest/sr-x"}],
                      effectiveDateTime=at(1)))
    if no_requests:
        server.resources["ServiceRequest"].clear()
    server.lenient = lenient
    found = await find(tmp_path, server)
    assert isinstance(found, FoundReport), found
    assert (found.patient_id, found.request_id, found.report_id) == ("p1", "sr1", "sr1")


OTHER_CNP = cnp_with_check("279020223456")


@pytest.mark.parametrize(("malformed", "lenient", "reason"), [
    # unrelated, skipped: another patient's (a lenient server's), or farther from the exam than the good one
    ({**PATIENT, "id": "p2", "birthDate": "1980-13-45", "identifier": [{"value": OTHER_CNP}]}, {"identifier"}, ""),
    ({**REQUEST, "id": "sr-bad", "status": 5, "authoredOn": at(-600)}, set(), ""),
    ({**REQUEST, "id": "sr-bad", "status": 5, "authoredOn": "yesterday"}, set(), ""),  # no time: it cannot be nearer
    (report(id="dr-bad", code="XR chest", effectiveDateTime=at(-600)), set(), ""),
    (report(id="dr-bad", code="XR chest", subject={"reference": "Patient/p2"}, effectiveDateTime=at(1)),
     {"based-on"}, ""),
    # could be the one chosen: nearer the exam than the good one, so this exam has no report this time
    ({**REQUEST, "id": "sr-bad", "status": 5, "authoredOn": at(-10)}, set(), "malformed ServiceRequest: status"),
    (report(id="dr-bad", code="XR chest", effectiveDateTime=at(1)), set(), "malformed DiagnosticReport: code"),
])
async def test_one_malformed_entry_does_not_sink_the_search(tmp_path, server, caplog, malformed, lenient,
                                                            reason) -> None:  # type: ignore[no-untyped-def]
    server.add(malformed)
    server.lenient = lenient
    with caplog.at_level(logging.WARNING, logger="xrayvision.fhir"):
        found = await find(tmp_path, server)
    if reason:
        assert found == NotFound(reason, patient_id="p1", request_id="sr1" if "Diagnostic" in reason else "")
    else:
        assert isinstance(found, FoundReport) and (found.request_id, found.report_id) == ("sr1", "sr1"), found
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"FHIR malformed {malformed['resourceType']}: "), warnings
    assert_no_patient_data(caplog)


DCM = "http://dicom.nema.org/resources/ontology/DCM"


@pytest.mark.parametrize("code", [
    {"coding": [{"system": DCM, "code": "CT"}]},  # a DICOM modality code
    {"coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}]},
    {"coding": [{"system": "http://snomed.info/sct", "code": "16310003", "display": "Ultrasonography"}]},
    {"coding": [{"system": "http://www.radlex.org", "code": "RID10312", "display": "MRI"}]},
    {"text": "Ecografie toracică"}, {"text": "PET/CT"}, {"text": "Scintigrafie pulmonară"}, {"text": "MAMOGRAFIE"},
])
@pytest.mark.parametrize("no_requests", [False, True])
async def test_another_modalitys_request_or_report_is_not_the_exams(tmp_path, server, code, no_requests) -> None:  # type: ignore[no-untyped-def]
    # the same patient's CT (or ultrasound...) that day, nearer the exam than its chest radiograph
    server.add({**REQUEST, "id": "sr-ct", "authoredOn": at(-5), "code": code},
               report(id="dr-ct", code=code, basedOn=[{"reference": "ServiceRequest/sr-ct"}], effectiveDateTime=at(1)))
    if no_requests:  # the date search alone
        server.resources["ServiceRequest"].clear()
    found = await find(tmp_path, server, query(his_id="p1"))
    assert isinstance(found, FoundReport) and (found.request_id, found.report_id) == ("sr1", "sr1"), found


async def test_a_candidate_naming_no_modality_or_the_exams_stays(tmp_path, server) -> None:  # type: ignore[no-untyped-def]
    server.add({**REQUEST, "code": {"coding": [{"system": DCM, "code": "DX"}], "text": "Radiografie torace"}},
               report(code={"coding": [{"system": "http://loinc.org", "display": "XR Chest 2 Views"}]}))
    found = await find(tmp_path, server, query(his_id="p1"))
    assert isinstance(found, FoundReport) and (found.request_id, found.type) == ("sr1", "XR Chest 2 Views")
    found = await find(tmp_path, server, query(his_id="p1", modality="CT"))  # a CT exam does not take them
    assert found == NotFound("no DiagnosticReport", patient_id="p1")


@pytest.mark.parametrize("region", ["chest", "abdomen"])
@pytest.mark.parametrize("no_requests", [False, True])
async def test_the_exams_region_breaks_a_tie(tmp_path, server, region, no_requests) -> None:  # type: ignore[no-untyped-def]
    # a chest and an abdomen radiograph equally near the exam: requests 30 min either side, reports 5 min either side
    server.resources["DiagnosticReport"].clear()
    server.add({**REQUEST, "code": {"text": "Rx torace PA"}},
               {**REQUEST, "id": "sr2", "authoredOn": at(30), "code": {"text": "Rx abdomen"}},
               report(id="dr1", code={"text": "Radiografie torace"}),
               report(id="dr2", code={"text": "Rx abdomen simplă"}, basedOn=[{"reference": "ServiceRequest/sr2"}],
                      effectiveDateTime=at(-5)))
    if no_requests:  # the date search alone
        server.resources["ServiceRequest"].clear()
    found = await find(tmp_path, server, query(his_id="p1", region=region))
    assert isinstance(found, FoundReport), found
    assert (found.request_id, found.report_id) == (("sr1", "dr1") if region == "chest" else ("sr2", "dr2"))
