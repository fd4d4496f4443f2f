"""The standard (r4) searches for one exam's report: Patient, ServiceRequest, DiagnosticReport, Practitioner; and the
reading of a report that both flavours share. A search never guesses: several equally good matches are 'ambiguous'.
What a server answers is checked against what was asked (its patient, its request), entry by entry, and a candidate
clearly of another modality than the exam's is not one (kinds.py)."""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, TypeVar
from urllib.parse import quote

from xrayvision.config import FHIRSettings

from .client import PAGE_SIZE, FHIRClient
from .kinds import names_region, other_modality
from .parse import Malformed, concept_words, fold, human_name, moment, parse, ref_id
from .query import FoundReport, NotFound, ReportQuery
from .text import Undecodable, report_text

log = logging.getLogger(__name__)

FINAL = ("final", "amended", "corrected")
NOT_IMAGING = frozenset({"lab", "laboratory", "108252007", "15220000", "lp7839-6"})  # lab categories, folded
T = TypeVar("T")


class Miss(Exception):
    """No report for this exam this time; str() is the reason (no patient data)."""


@dataclass
class Trail:
    """What was resolved on the way, so that a miss still tells the caller the patient and the request."""
    patient_id: str = ""  # the Patient searched with
    request_id: str = ""
    trusted: bool = False  # patient_id came as query.his_id or by a valid CNP: the caller may remember it

    @property
    def known_patient(self) -> str:
        """The patient id to hand back: only a trusted one (a name and birth date match is good for this exam's
        search, not to be remembered for every later exam of the patient)."""
        return self.patient_id if self.trusted else ""

    def missed(self, reason: str) -> NotFound:
        return NotFound(reason, self.known_patient, self.request_id)

    @classmethod
    def of(cls, query: ReportQuery) -> Trail:
        return cls(patient_id=query.his_id, trusted=bool(query.his_id))


@dataclass(frozen=True)
class Bad:
    """A search's entry that the R4B model refused (already logged): read from its JSON only as far as deciding
    whether it could have been the one chosen. An unrelated one is skipped; one that could be the choice is a miss."""
    reason: str
    data: Any

    def get(self, path: str) -> Any:
        value = self.data
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def refs(self, path: str, kind: str, base: str) -> set[str]:
        value = self.get(path)
        items = value if isinstance(value, list) else [value]
        return {ref_id(SimpleNamespace(reference=r.get("reference")), kind, base)
                for r in items if isinstance(r, dict) and isinstance(r.get("reference"), str)} - {""}

    def when(self, *paths: str) -> dt.datetime | None:
        return next((w for p in paths if isinstance(v := self.get(p), str) and (w := moment(v)) is not None), None)

    def status_is(self, statuses: Sequence[str]) -> bool:
        """Its status is readable and one of `statuses`."""
        return isinstance(status := self.get("status"), str) and status in statuses

    def status_may_be(self, statuses: Sequence[str]) -> bool:
        """Its status is one of `statuses`, or unreadable."""
        return not isinstance(status := self.get("status"), str) or status in statuses


def parse_each(kind: str, raws: list[dict[str, Any]]) -> tuple[list[Any], list[Bad]]:
    """Each entry of a search parsed alone, so that one malformed entry does not sink the others."""
    good, bad = [], []
    for raw in raws:
        try:
            good.append(parse(kind, raw))
        except Malformed as exc:
            bad.append(Bad(str(exc), raw))
    return good, bad


def unless_malformed_nearer(chosen: Any, when: Callable[[Any], dt.datetime | None], bad: list[Bad],
                            bad_when: Callable[[Bad], dt.datetime | None], target: dt.datetime) -> None:
    """Miss with a malformed candidate's reason when it could be the choice: nothing good was chosen, or its time is
    as near the exam as the chosen one's. (A timeless malformed one loses to a chosen one, as a timeless good one
    would.)"""
    chosen_when = when(chosen) if chosen is not None else None
    best = abs((chosen_when - target).total_seconds()) if chosen_when is not None else None
    for candidate in bad:
        moment_ = bad_when(candidate)
        nearer = moment_ is not None and (best is None or abs((moment_ - target).total_seconds()) <= best)
        if chosen is None or nearer:
            raise Miss(candidate.reason)


def stamp(moment_: dt.datetime) -> str:
    return moment_.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def window(prefix: str, query: ReportQuery, settings: FHIRSettings) -> list[tuple[str, str]]:
    span = dt.timedelta(hours=settings.match_hours)
    return [(prefix, "ge" + stamp(query.created - span)), (prefix, "le" + stamp(query.created + span))]


def nearest(items: Sequence[T], when: Callable[[T], dt.datetime | None], target: dt.datetime, what: str,
            prefer: Callable[[T], bool] | None = None) -> T | None:
    """The item whose time is nearest to `target`; of several equally near, the only one that `prefer`s (the one
    naming the exam's region), else Miss (never a guess)."""
    timed = [(abs((w - target).total_seconds()), item) for item in items if (w := when(item)) is not None]
    if not timed:
        return None
    best = min(distance for distance, _ in timed)
    tied = [item for distance, item in timed if distance == best]
    if len(tied) > 1 and prefer is not None:
        tied = [item for item in tied if prefer(item)] or tied
    if len(tied) > 1:
        raise Miss(f"several {what} equally near the exam (ambiguous)")
    return tied[0]


def imaging(categories: list[Any] | None) -> bool:
    """False only for what is recognisably not imaging (a lab order or report); no category is imaging enough."""
    for concept in categories or []:
        words = [fold(concept.text)] + [fold(c.code) for c in concept.coding or []] + [
            fold(c.display) for c in concept.coding or []]
        if any(w in NOT_IMAGING for w in words if w):
            return False
    return True


def justification(request: Any) -> str:
    """The clinical information of a ServiceRequest: its reasonCode words and supportingInfo displays."""
    if request is None:
        return ""
    parts = [concept_words(c) for c in request.reasonCode or []]
    parts += [(ref.display or "").strip() for ref in request.supportingInfo or []]
    unique = list(dict.fromkeys(p for p in parts if p))
    return "; ".join(unique)


def effective(report: Any) -> dt.datetime | None:
    if report.effectiveDateTime is not None:
        return moment(report.effectiveDateTime)
    if report.effectivePeriod is not None and report.effectivePeriod.start is not None:
        return moment(report.effectivePeriod.start)
    return moment(report.issued)


async def radiologist(client: FHIRClient, report: Any) -> str:
    """resultsInterpreter[0]'s display, else the referenced Practitioner's name (read once, then cached)."""
    interpreters = report.resultsInterpreter or []
    if not interpreters:
        return ""
    first = interpreters[0]
    if first.display and first.display.strip():
        return first.display.strip()
    pid = ref_id(first, "Practitioner", client.resource_base)
    if not pid:
        return ""
    if pid in client.practitioners:
        client.practitioners.move_to_end(pid)
        return client.practitioners[pid]
    data = await client.get(f"{client.resource_base}/Practitioner/{quote(pid, safe='')}", missing_ok=True)
    if data is None:
        return ""
    try:
        name = human_name(parse("Practitioner", data).name)
    except Malformed:
        return ""  # the report is still good without its author's name
    if name:
        client.remember_practitioner(pid, name)
    return name


async def read_report(client: FHIRClient, report: Any, trail: Trail, request: Any, kind: str) -> FoundReport:
    """A final DiagnosticReport as FoundReport; Miss when it is not final yet or has no words."""
    if report.status not in FINAL:
        raise Miss("no final report yet")
    try:
        text = report_text(report.presentedForm or [], report.conclusion)
    except Undecodable as exc:
        reason = f"undecodable presentedForm: {exc}"
        log.warning("FHIR %s", reason)
        raise Miss(reason) from None
    if not text:
        raise Miss("the final report has no text")
    return FoundReport(patient_id=trail.known_patient, request_id=trail.request_id, report_id=report.id or "",
                       text=text, radiologist=await radiologist(client, report), justification=justification(request),
                       issued=moment(report.issued), type=kind, status=report.status)


def _given_names(patient: Any) -> set[str]:
    return {fold(word) for name in patient.name or [] for given in name.given or [] for word in given.split()}


def _carries(patient: Any, cnp: str, settings: FHIRSettings) -> bool:
    """Whether the Patient holds the CNP (in IDENTIFIER_SYSTEM when one is set): a lenient server may ignore the
    identifier parameter."""
    return any(i.value == cnp and (not settings.identifier_system or i.system == settings.identifier_system)
               for i in patient.identifier or [])


def _of(resource: Any, patient_id: str, client: FHIRClient) -> bool:
    """Whether a request or report is this patient's: a server that ignores `subject` must not hand us another's."""
    return ref_id(resource.subject, "Patient", client.resource_base) == patient_id


def _pn(name: str) -> list[str]:
    return [part.strip() for part in (name or "").split("^")]


async def find_patient(client: FHIRClient, query: ReportQuery, settings: FHIRSettings) -> tuple[str, bool]:
    """(the Patient's id, whether it is trusted): by the CNP identifier (trusted when the CNP is valid), else by
    family, given name and birth date (exact, accents and case ignored; never trusted). Miss when none or several
    match."""
    url = f"{client.resource_base}/Patient"
    if query.cnp:
        value = f"{settings.identifier_system}|{query.cnp}" if settings.identifier_system else query.cnp
        found, bad = parse_each("Patient", await client.search(url, [("identifier", value),
                                                                   ("_count", str(PAGE_SIZE))]))
        for patient in bad:  # one that holds this CNP is the one or a second one: either way not to be skipped
            if any(isinstance(i, dict) and i.get("value") == query.cnp for i in patient.get("identifier") or []):
                raise Miss(patient.reason)
        ids = list(dict.fromkeys(p.id for p in found if p.id and _carries(p, query.cnp, settings)))
        if len(ids) == 1:
            return ids[0], query.cnp_valid
        if len(ids) > 1:
            raise Miss("several Patients have this identifier (ambiguous)")
    parts = _pn(query.name) + ["", ""]
    family, given = parts[0], (parts[1].split() or [""])[0]
    if not (family and given and query.birthdate):
        raise Miss("no Patient matches")
    birth = query.birthdate.isoformat()
    found, bad = parse_each("Patient", await client.search(url, [
        ("family", family), ("given", given), ("birthdate", birth), ("_count", str(PAGE_SIZE))]))
    for patient in bad:  # of this birth date (or an unreadable one): it may be the one
        if patient.get("birthDate") in (birth, None) or not isinstance(patient.get("birthDate"), str):
            raise Miss(patient.reason)
    matches = []
    for patient in found:
        if not patient.id or moment(patient.birthDate) != moment(query.birthdate):
            continue
        if fold(family) not in {fold(n.family) for n in patient.name or []} or fold(given) not in _given_names(patient):
            continue
        if settings.identifier_system and query.cnp_valid and any(
                i.system == settings.identifier_system and i.value and i.value != query.cnp
                for i in patient.identifier or []):
            continue  # this one carries another CNP: another person
        matches.append(patient.id)
    matches = list(dict.fromkeys(matches))
    if len(matches) > 1:
        raise Miss("several Patients match the name and birth date (ambiguous)")
    if not matches:
        raise Miss("no Patient matches")
    return matches[0], False


async def find_request(client: FHIRClient, query: ReportQuery, settings: FHIRSettings, patient_id: str) -> Any:
    """The imaging ServiceRequest: the one found before, else the one authored nearest the exam within the window."""
    if query.request_id:
        data = await client.get(f"{client.resource_base}/ServiceRequest/{quote(query.request_id, safe='')}",
                                missing_ok=True)
        if data is not None and _of(known := parse("ServiceRequest", data), patient_id, client):
            return known
    params = [("subject", f"Patient/{patient_id}"), *window("authored", query, settings), ("_count", str(PAGE_SIZE))]
    found, bad = parse_each("ServiceRequest", await client.search(f"{client.resource_base}/ServiceRequest", params))
    candidates = [r for r in found if r.id and _of(r, patient_id, client) and imaging(r.category)
                  and r.status not in ("revoked", "entered-in-error")
                  and not other_modality(query.modality, [r.code, *(r.category or [])])]
    chosen = nearest(candidates, lambda r: moment(r.authoredOn), query.created, "ServiceRequests",
                     lambda r: names_region(query.region, [r.code, *(r.bodySite or [])]))
    bad = [b for b in bad if patient_id in b.refs("subject", "Patient", client.resource_base)
           and not b.status_is(("revoked", "entered-in-error"))]
    unless_malformed_nearer(chosen, lambda r: moment(r.authoredOn), bad, lambda b: b.when("authoredOn"),
                            query.created)
    return chosen


async def find_diagnostic_report(client: FHIRClient, query: ReportQuery, settings: FHIRSettings, trail: Trail,
                                 request: Any) -> tuple[Any, Any]:
    """(report, its request or None): by based-on the request, else by subject and date around the exam."""
    url = f"{client.resource_base}/DiagnosticReport"
    if request is not None:
        found, bad = parse_each("DiagnosticReport", await client.search(url, [
            ("based-on", f"ServiceRequest/{request.id}"), ("_count", str(PAGE_SIZE))]))
        bad = [b for b in bad if b.get("id") not in query.taken_reports and not b.status_is(("entered-in-error",))
               and trail.patient_id in b.refs("subject", "Patient", client.resource_base)
               and request.id in b.refs("basedOn", "ServiceRequest", client.resource_base)]
        found = [r for r in found if r.status != "entered-in-error" and r.id not in query.taken_reports
                 and not other_modality(query.modality, [r.code, *(r.category or [])])
                 and _of(r, trail.patient_id, client)
                 and request.id in {ref_id(b, "ServiceRequest", client.resource_base) for b in r.basedOn or []}]
        if found or bad:
            return _pick(found, bad, query), request
    params = [("subject", f"Patient/{trail.patient_id}"), *window("date", query, settings), ("_count", str(PAGE_SIZE))]
    found, bad = parse_each("DiagnosticReport", await client.search(url, params))
    bad = [b for b in bad if b.get("id") not in query.taken_reports and not b.status_is(("entered-in-error",))
           and trail.patient_id in b.refs("subject", "Patient", client.resource_base)
           and (request is None or not (asked := b.refs("basedOn", "ServiceRequest", client.resource_base))
                or request.id in asked)]
    own = []
    for report in found:
        if (report.status == "entered-in-error" or not imaging(report.category) or report.id in query.taken_reports
                or not _of(report, trail.patient_id, client)
                or other_modality(query.modality, [report.code, *(report.category or [])])):
            continue  # (a taken one is another study's report)
        based = {ref_id(b, "ServiceRequest", client.resource_base) for b in report.basedOn or []} - {""}
        if request is not None and based and request.id not in based:
            continue  # the report of another request
        own.append(report)
    if not own and not bad:
        raise Miss("no DiagnosticReport")
    report = _pick(own, bad, query)
    its = [ref_id(b, "ServiceRequest", client.resource_base) for b in report.basedOn or []]
    trail.request_id = next((i for i in its if i), "")
    return report, request if request is not None and trail.request_id == request.id else None


def _pick(reports: list[Any], bad: list[Bad], query: ReportQuery) -> Any:
    finals = [r for r in reports if r.status in FINAL]
    chosen = nearest(finals, effective, query.created, "final DiagnosticReports",
                     lambda r: names_region(query.region, [r.code]))
    unless_malformed_nearer(chosen, effective, [b for b in bad if b.status_may_be(FINAL)],
                            lambda b: b.when("effectiveDateTime", "effectivePeriod.start", "issued"), query.created)
    if not finals:
        raise Miss("no final report yet")
    if chosen is None:  # final, but without any time: only one may be taken
        if len(finals) > 1:
            raise Miss("several final DiagnosticReports without a time (ambiguous)")
        chosen = finals[0]
    return chosen


async def find_r4(client: FHIRClient, query: ReportQuery, settings: FHIRSettings) -> FoundReport | NotFound:
    trail = Trail.of(query)
    try:
        if not trail.patient_id:
            trail.patient_id, trail.trusted = await find_patient(client, query, settings)
        request = await find_request(client, query, settings, trail.patient_id)
        trail.request_id = request.id if request is not None else ""
        report, request = await find_diagnostic_report(client, query, settings, trail, request)
        return await read_report(client, report, trail, request, concept_words(report.code))
    except (Miss, Malformed) as exc:
        return trail.missed(str(exc))
