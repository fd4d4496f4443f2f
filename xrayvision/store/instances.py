"""A received DICOM instance as the store keeps it, the status it is stored with, and what committing it did.

Both the receiver (dicom/) and the ingest (store/exams.py) use these, so they live here, below dicom/."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ..clinical.regions import RegionRules
from . import schema
from .schema import RADIOGRAPH_SOP_CLASSES


@dataclass(frozen=True)
class Instance:
    uid: str
    sop_class: str
    transfer_syntax: str
    modality: str
    study: str
    series: str
    accession: str
    patient_key: str
    patient_id: str
    name: str
    birthdate: dt.date | None
    sex: str
    county: int | None
    created: dt.datetime  # UTC
    age: int | None
    protocol: str
    region: str
    projection: str
    status: str
    reason: str


@dataclass(frozen=True)
class Committed:
    new: bool  # False: the UID was already stored, and nothing changed
    keep_file: bool  # False: the file just written is not wanted (a re-send of an exam whose .dcm was removed)


def arrival_status(sop_class: str, modality: str, region: str, rules: RegionRules, *, class_name: str = ""
                   ) -> tuple[str, str]:
    """(status, reason) an instance is stored with. Only a projection radiograph of a region that is analysed waits
    in the queue; anything else says at once, in a sentence, why it never will be. The SOP class decides what is a
    radiograph: a secondary capture labelled DX is a picture of one. `class_name` names the SOP class in that
    sentence (its UID when empty)."""
    if not is_radiograph(sop_class):
        return schema.IGNORE, f"not a radiograph: modality {modality or 'unknown'} ({class_name or sop_class})"
    reason = rules.not_analysed(region)
    return (schema.IGNORE, reason) if reason else (schema.QUEUED, "")


def is_radiograph(sop_class: str) -> bool:
    """A projection radiograph is rendered whether or not it is analysed: a radiologist still looks at a knee that
    the model is not asked about. Other objects (CT, secondary captures) are kept as they came."""
    return sop_class in RADIOGRAPH_SOP_CLASSES
