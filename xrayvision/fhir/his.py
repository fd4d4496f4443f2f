"""The reference HIS's facade (the `his` flavour): its `q`, `dt`, `type` and `region` searches under {url}/fhir and the
report read by its request's id. Its contract is kept, not its habits: a Bundle of several patients is ambiguous (never
one picked), the text is base64 decoded per FHIR, the report must be final."""
from __future__ import annotations

import copy
import logging
from typing import Any
from urllib.parse import quote

from xrayvision.config import FHIRSettings
from xrayvision.timeutil import utc_to_local

from .client import FHIRClient
from .parse import Malformed, fold, moment, parse
from .query import FoundReport, NotFound, ReportQuery
from .search import Miss, Trail, read_report

log = logging.getLogger(__name__)

TYPES = {"CR": "radio", "DX": "radio", "CT": "ct", "MR": "irm", "US": "eco", "RF": "rads"}
FORM_KEYS = ("type", "region")  # the facade's own Attachment fields, which pick a form and are not R4


def facade_type(modality: str) -> str:
    return TYPES.get((modality or "").upper(), "radio")


async def _patients(client: FHIRClient, q: str) -> list[Any]:
    # The facade answers a patient it cannot give with an error OperationOutcome (the reference gives up on that
    # exam): this exam's problem, or one unknown patient would stop every fetching round.
    found = await client.search(f"{client.resource_base}/Patient", {"q": q}, outcome_down=False)
    return [parse("Patient", r) for r in found]


async def find_patient(client: FHIRClient, query: ReportQuery) -> tuple[str, bool]:
    """(id, trusted): by the CNP (trusted when it is valid), else by 'Last First Middle' (never trusted); exactly one
    Patient must answer (its birth date, when both sides know one, must agree)."""
    if query.cnp:
        ids = list(dict.fromkeys(p.id for p in await _patients(client, query.cnp) if p.id))
        if len(ids) == 1:
            return ids[0], query.cnp_valid
        if len(ids) > 1:
            raise Miss("several Patients have this CNP (ambiguous)")
    words = " ".join(part.strip() for part in (query.name or "").split("^") if part.strip())
    if not words:
        raise Miss("no Patient matches")
    found = [p for p in await _patients(client, words) if p.id]
    if query.birthdate is not None:
        found = [p for p in found if p.birthDate is None or moment(p.birthDate) == moment(query.birthdate)]
    if len(found) > 1:
        raise Miss("several Patients match the name (ambiguous)")
    if not found:
        raise Miss("no Patient matches")
    return found[0].id, False


async def find_request(client: FHIRClient, query: ReportQuery, patient_id: str) -> tuple[str, Any]:
    """(the request's id, its ServiceRequest or None when the id was known already)."""
    if query.request_id:
        return query.request_id, None
    exam_time = utc_to_local(query.created, query.zone).strftime("%Y-%m-%d %H:%M:%S")  # the facade's naive local time
    params = {"patient": patient_id, "dt": exam_time, "type": facade_type(query.modality), "region": query.region}
    raw = await client.search(f"{client.resource_base}/ServiceRequest", params)
    with_id = [r for r in raw if isinstance(r, dict) and r.get("id")]
    if len(with_id) > 1:
        raise Miss("several ServiceRequests answer (ambiguous)")
    if not with_id:
        raise Miss("no ServiceRequest")
    data = copy.deepcopy(with_id[0])
    extra = data.pop("reason", None)  # the facade's own list of {display}: kept as supportingInfo, which is R4
    if isinstance(extra, list):
        data.setdefault("supportingInfo", []).extend(
            {"display": r["display"]} for r in extra if isinstance(r, dict) and isinstance(r.get("display"), str))
    return data["id"], parse("ServiceRequest", data)


def _forms(data: dict[str, Any], query: ReportQuery, kind: str) -> dict[str, Any]:
    """The report with its presentedForm narrowed, when it has several, to the one whose facade `type` and `region`
    match the exam, and those non-R4 keys removed."""
    data = copy.deepcopy(data)
    forms = data.get("presentedForm")
    if isinstance(forms, list) and forms and all(isinstance(f, dict) for f in forms):
        if len(forms) > 1 and any(any(k in f for k in FORM_KEYS) for f in forms):
            forms = [f for f in forms if fold(str(f.get("type", kind))) == fold(kind)
                     and fold(str(f.get("region", query.region))) == fold(query.region)] or forms
        data["presentedForm"] = [{k: v for k, v in f.items() if k not in FORM_KEYS} for f in forms]
    return data


async def find_his(client: FHIRClient, query: ReportQuery, settings: FHIRSettings) -> FoundReport | NotFound:
    trail = Trail.of(query)
    kind = facade_type(query.modality)
    try:
        if not trail.patient_id:
            trail.patient_id, trail.trusted = await find_patient(client, query)
        trail.request_id, request = await find_request(client, query, trail.patient_id)
        data = await client.get(f"{client.resource_base}/DiagnosticReport/{quote(trail.request_id, safe='')}",
                                missing_ok=True)
        if data is None:
            raise Miss("no DiagnosticReport yet")
        report = parse("DiagnosticReport", _forms(data, query, kind) if isinstance(data, dict) else data)
        if (report.id or trail.request_id) in query.taken_reports:
            raise Miss("the DiagnosticReport is another study's")
        return await read_report(client, report, trail, request, kind)
    except (Miss, Malformed) as exc:
        return trail.missed(str(exc))
