"""What we know of one exam when asking for its report, and the two possible answers."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class ReportQuery:
    uid: str
    cnp: str
    cnp_valid: bool
    his_id: str  # the patient's id on the FHIR server, '' when not known yet
    name: str  # DICOM PN 'Family^Given^Middle'
    birthdate: dt.date | None
    sex: str  # 'M' | 'F' | 'O'
    created: dt.datetime  # the exam's time, aware UTC
    modality: str  # 'CR'
    region: str  # 'chest'
    request_id: str  # a ServiceRequest id found in an earlier round, or ''
    zone: dt.tzinfo | None = None  # [general] TIMEZONE, for the his facade's local times; None: this machine's
    # DiagnosticReport ids already stored for this patient's exams of other studies: never this exam's report (the
    # date search could otherwise hand an earlier study's report to a later one). Two images of one study share one.
    taken_reports: frozenset[str] = frozenset()


# patient_id (in both answers): the FHIR Patient's id, for the caller to remember for the patient's later exams; ''
# unless it is trustworthy, i.e. it came in as query.his_id or the Patient was found by the CNP identifier with a
# valid CNP (query.cnp_valid). A match by name and birth date is used for this exam's search only, never handed back.
@dataclass(frozen=True)
class FoundReport:
    patient_id: str  # '' unless trustworthy (see above)
    request_id: str  # '' when the report was found by date without a request
    report_id: str
    text: str
    radiologist: str
    justification: str
    issued: dt.datetime | None
    type: str
    status: str  # 'final' | 'amended' | 'corrected'


@dataclass(frozen=True)
class NotFound:
    reason: str  # no patient data in it
    patient_id: str = ""  # '' unless trustworthy (see above FoundReport)
    request_id: str = ""
