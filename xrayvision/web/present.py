"""Rows as the API contract's JSON objects, redacted for the caller's role."""
from __future__ import annotations

import sqlite3
from typing import Any

from .. import timeutil
from ..clinical.cnp import parse_cnp
from ..config import Settings
from ..privacy import initials, mask_id
from ..store import verdict

ADMIN = "admin"


def _int(value: Any, default: int = -1) -> int:
    return default if value is None else int(value)


def exam_object(row: sqlite3.Row, settings: Settings, *, admin: bool) -> dict[str, Any]:
    """The contract's exam object; `admin` False redacts it (redact_exam)."""
    whole = _exam(row, settings)
    return whole if admin else redact_exam(whole)


def report_event(row: sqlite3.Row, settings: Settings) -> dict[str, Any]:
    """The radreport event's payload (the seed's {uid, rad_report}): the exam's report.rad object, unredacted."""
    return {"uid": row["uid"], "rad_report": _exam(row, settings)["report"]["rad"]}


def grade_event(row: sqlite3.Row, settings: Settings) -> dict[str, Any]:
    """The radcheck event's payload (the seed's {uid, positive, severity, summary, confidence}, and the
    radiologist): the graded report's verdict as store.verdict defines it. Grading states no confidence: -1."""
    rad = _exam(row, settings)["report"]["rad"]
    return {"uid": row["uid"], "positive": rad["positive"], "severity": rad["severity"], "summary": rad["summary"],
            "confidence": -1, "radiologist": rad["radiologist"]}


def redact_report_event(payload: dict[str, Any]) -> dict[str, Any]:
    rad = payload["rad_report"]
    return {"uid": payload["uid"], "rad_report": {**rad, "radiologist": initials(rad["radiologist"])}}


def redact_grade_event(payload: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {k: payload[k] for k in ("uid", "positive", "severity", "summary", "confidence")
                            if k in payload}
    return {**kept, "radiologist": initials(payload.get("radiologist") or "")}


def redact_patient(patient: dict[str, Any]) -> dict[str, Any]:
    """What a user may see of a patient: initials, a number masked to its last digits, no birth date or county."""
    return {**patient, "name": initials(patient["name"]), "cnp": mask_id(patient["cnp"]), "id": mask_id(patient["id"]),
            "birthdate": None, "county": None}


def redact_exam(exam: dict[str, Any]) -> dict[str, Any]:
    """An exam object as a user may see it: the patient redacted, every person's name as initials."""
    report = exam["report"]
    rad = {**report["rad"], "radiologist": initials(report["rad"]["radiologist"])}
    review = report["review"] and {**report["review"], "reviewer": initials(report["review"]["reviewer"])}
    return {**exam, "patient": redact_patient(exam["patient"]), "report": {**report, "rad": rad, "review": review}}


def _exam(row: sqlite3.Row, settings: Settings) -> dict[str, Any]:
    threshold = settings.processing.severity_threshold
    local = timeutil.utc_to_local(timeutil.from_store(row["created"]), settings.general.timezone)
    ai_severity = _int(row["ai_severity"])
    rad_present = row["rad_created"] is not None
    review = None
    if row["review_created"] is not None:
        review = {
            "reviewer": row["review_reviewer"],
            "normal": not row["review_verdict"],
            "created": timeutil.iso_utc(row["review_created"]),
        }
    return {
        "uid": row["uid"],
        "patient": patient_object(row, age=_int(row["age"])),
        "exam": {
            "created": timeutil.iso_utc(row["created"]),
            "date": local.strftime("%Y%m%d"),
            "time": local.strftime("%H%M%S"),
            "protocol": row["protocol"],
            "region": row["region"],
            "projection": row["projection"],
            "status": row["status"],
            "reason": row["reason"],
            "type": row["type"],
            "study": row["study"],
            "series": row["series"],
            "id": row["exam_id"],
            "image": f"/images/{row['image']}" if row["image"] else None,
        },
        "report": {
            "ai": {
                "text": row["ai_text"] or "",
                "summary": row["ai_summary"] or "",
                "created": timeutil.iso_utc(row["ai_created"]),
                "updated": timeutil.iso_utc(row["ai_updated"]),
                "positive": _tristate(verdict.ai_positive(ai_severity, threshold)),
                "severity": ai_severity,
                "confidence": _int(row["ai_confidence"]),
                "model": row["ai_model"] or "",
                "latency": _int(row["ai_latency"]),
            },
            "rad": {
                "text": row["rad_text"] or "",
                "text_en": row["rad_text_en"],
                "positive": _tristate(verdict.radiologist_verdict(None, _int(row["rad_severity"]), threshold)),
                "severity": _int(row["rad_severity"]),
                "summary": row["rad_summary"] or "",
                "created": timeutil.iso_utc(row["rad_created"]),
                "updated": timeutil.iso_utc(row["rad_updated"]),
                "id": row["rad_id"] or "",
                "type": row["rad_type"] or "",
                "radiologist": row["rad_radiologist"] or "",
                "justification": row["rad_justification"] or "",
                "model": row["rad_model"] or "",
                "latency": _int(row["rad_latency"]),
                **_fetching(row),
                "request": row["rad_request"] or "",
                "issued": timeutil.iso_utc(row["rad_issued"]),
                "report_seconds": _report_seconds(row["created"], row["rad_issued"]),
            } if rad_present else {**_empty_rad(), **_fetching(row)},
            "review": review,
            "correct": int(row["correct"]),
            "reviewed": int(row["reviewed"]),
        },
    }


def _tristate(value: bool | None) -> int:
    """The contract's 1 / 0 / -1 (unknown) for a verdict of store.verdict."""
    return -1 if value is None else int(value)


def patient_object(row: sqlite3.Row, *, age: int) -> dict[str, Any]:
    """A patient as the contract shows one (redact_patient makes the user's view). In an exam the demographics are
    the ones that exam arrived with; `identity_conflict` says the patient's instances disagree on them."""
    return {
        "name": row["name"],
        "cnp": row["cnp"],
        "cnp_valid": parse_cnp(row["cnp"]) is not None,  # else `cnp` is the modality's PatientID or our own key
        "id": row["patient_his_id"],
        "age": age,
        "birthdate": row["birthdate"],
        "sex": row["sex"],
        "county": row["county"],
        "identity_conflict": bool(row["identity_conflict"]),
    }


def _empty_rad() -> dict[str, Any]:
    return {"text": "", "text_en": None, "positive": -1, "severity": -1, "summary": "", "created": None,
            "updated": None, "id": "", "type": "", "radiologist": "", "justification": "", "model": "", "latency": -1,
            "request": "", "issued": None, "report_seconds": None}


def rad_state(row: sqlite3.Row) -> str:
    """Where the radiologist's report stands: none (not looked for yet), seeking (looked for, not found yet),
    missing (given up after [fhir] MAX_ATTEMPTS), check (fetched, waiting for its grade), graded, failed (grading
    gave up)."""
    if row["rad_created"] is not None:
        if row["rad_severity"] is not None and row["rad_severity"] >= 0:
            return "graded"
        return "failed" if row["rad_grade_error"] else "check"
    return row["fetch_state"] if row["fetch_state"] in ("seeking", "missing") else "none"


def _fetching(row: sqlite3.Row) -> dict[str, Any]:
    state = rad_state(row)
    reason = row["rad_grade_error"] if state == "failed" else (row["fetch_reason"] or "")
    return {"state": state, "attempts": _int(row["fetch_attempts"], 0),
            "next_attempt": timeutil.iso_utc(row["fetch_next_at"]) if state == "seeking" else None,
            "reason": reason if state in ("seeking", "missing", "failed") else ""}


def _report_seconds(created: str, issued: str | None) -> int | None:
    """Seconds from the exam to its report's issue; None when not known (or issued before the exam: bad data)."""
    if not issued:
        return None
    seconds = int((timeutil.from_store(issued) - timeutil.from_store(created)).total_seconds())
    return seconds if seconds >= 0 else None

