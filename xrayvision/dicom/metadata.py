"""What we keep of one received DICOM instance: patient, exam time, protocol, region, and whether it is a radiograph."""
from __future__ import annotations

import datetime as dt
import hashlib
import re

from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID, ExplicitVRLittleEndian

from .. import timeutil
from ..clinical.cnp import age_on, parse_cnp
from ..clinical.regions import RegionRules, projection
from ..store.instances import Instance, arrival_status, is_radiograph
from ..store.schema import CR_SOP_CLASS
from .incoming import IncomingError, PixelData, measure_decoded

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_AGE = re.compile(r"^(\d{3})([DWMY])$")
_VIEW_POSITIONS = {"AP": "frontal", "PA": "frontal", "LL": "lateral", "RL": "lateral", "LAT": "lateral",
                   "LLD": "lateral", "RLD": "lateral"}


_MEASURE = object()  # describe(): measure the pixel data from the dataset itself


class MetadataError(ValueError):
    """The dataset lacks something we need to keep it (its message names what)."""


def valid_uid(value: object) -> bool:
    text = str(value or "")
    # Checked before the UID ever names a file: digits and dots only, at most 64 characters.
    return 0 < len(text) <= 64 and bool(_UID.match(text))


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0] if len(value) else ""
    return " ".join(str(value).split())


def person_name(value: object) -> str:
    """DICOM 'Family^Given^Middle^Prefix^Suffix' as 'Family Given Middle'."""
    alphabetic = str(value or "").split("=")[0]
    parts = [p.strip() for p in alphabetic.split("^")[:3]]
    return " ".join(p for p in parts if p)


def _required_uid(ds: Dataset, keyword: str) -> str:
    value = str(ds.get(keyword) or "").strip().rstrip("\x00")
    if not value:
        raise MetadataError(f"missing {keyword}")
    if not valid_uid(value):
        raise MetadataError(f"invalid {keyword}")
    return value


def _exam_time(ds: Dataset, zone: dt.tzinfo | None, fallback: dt.datetime) -> dt.datetime:
    # Series time first (when the image was made), then acquisition, content and study times.
    for date_kw, time_kw in (("SeriesDate", "SeriesTime"), ("AcquisitionDate", "AcquisitionTime"),
                             ("ContentDate", "ContentTime"), ("StudyDate", "StudyTime")):
        day = timeutil.parse_da(ds.get(date_kw))
        if day is not None:
            return timeutil.local_to_utc(day, timeutil.parse_tm(ds.get(time_kw)), zone)
    return fallback


def _dicom_age(value: str) -> int | None:
    match = _AGE.match(value)
    if not match:
        return None
    number, unit = int(match.group(1)), match.group(2)
    return number if unit == "Y" else 0


def check_pixel_data(ds: Dataset, pixels: PixelData | None) -> None:
    """Refuse an image that cannot hold what it declares: cheap structure checks only, no decoding, so the
    answer to the modality is not delayed. A codestream that is well framed but undecodable is found later,
    when rendering, and marks the exam 'error'."""
    if pixels is None:
        return  # not every storage class carries pixels (reports, presentation states)
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as exc:
        raise MetadataError(f"image attributes missing or unreadable ({exc.__class__.__name__})") from None
    if rows <= 0 or columns <= 0 or bits not in (1, 8, 16, 32, 64):
        raise MetadataError(f"impossible image geometry {rows}x{columns}, {bits} bits allocated")
    if pixels.fragments is not None:
        if pixels.fragments < 1:
            raise MetadataError("encapsulated pixel data holds no fragment")
        return
    expected = get_expected_length(ds, unit="bytes")
    if (pixels.length or 0) < expected:
        raise MetadataError(f"pixel data holds {pixels.length} bytes, the image needs {expected}")


def _modality_from_sop_class(sop_class: str) -> str:
    if sop_class == CR_SOP_CLASS:
        return "CR"
    return "DX" if is_radiograph(sop_class) else ""


def describe(ds: Dataset, rules: RegionRules, zone: dt.tzinfo | None, now: dt.datetime | None = None,
             pixels: PixelData | None | object = _MEASURE) -> Instance:
    """Read what we keep from a dataset. Raises MetadataError when an identifying UID is missing or bad, or the
    pixel data cannot hold the image. `pixels` is what the receiver measured; by default it is measured here."""
    now = now or timeutil.utc_now()
    uid = _required_uid(ds, "SOPInstanceUID")
    sop_class = _required_uid(ds, "SOPClassUID")
    study = _required_uid(ds, "StudyInstanceUID")
    if pixels is _MEASURE:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) or ExplicitVRLittleEndian
        try:
            pixels = measure_decoded(ds, UID(syntax))
        except IncomingError as exc:
            raise MetadataError(str(exc)) from None
    check_pixel_data(ds, pixels)  # type: ignore[arg-type]
    series = str(ds.get("SeriesInstanceUID") or "").strip()
    if series and not valid_uid(series):
        series = ""
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    modality = _text(ds, "Modality").upper()

    created = _exam_time(ds, zone, now)
    local_day = timeutil.utc_to_local(created, zone).date()
    patient_id = _text(ds, "PatientID")
    cnp = parse_cnp(patient_id, today=max(local_day, now.date()))
    birthdate = cnp.birthdate if cnp else timeutil.parse_da(ds.get("PatientBirthDate"))
    sex = _text(ds, "PatientSex").upper()[:1]
    if cnp and cnp.sex != "O":
        sex = cnp.sex
    elif sex not in ("M", "F", "O"):
        sex = "O"
    if birthdate is not None and birthdate <= local_day:
        age: int | None = age_on(birthdate, local_day)
    else:
        age = _dicom_age(_text(ds, "PatientAge"))
    if cnp:
        key = cnp.value
    elif patient_id:
        key = patient_id
    else:
        # No identifier at all: keep the study apart rather than merging every anonymous patient into one.
        key = "noid-" + hashlib.sha1(study.encode()).hexdigest()[:16]

    texts = [_text(ds, k) for k in ("ProtocolName", "SeriesDescription", "StudyDescription", "BodyPartExamined")]
    protocol = next((t for t in texts if t), "")
    view = _VIEW_POSITIONS.get(_text(ds, "ViewPosition").upper(), "")
    region = rules.match(*texts) or ""

    class_name = UID(sop_class).name if UID(sop_class).is_valid else ""
    status, reason = arrival_status(sop_class, modality, region, rules, class_name=class_name)
    return Instance(
        uid=uid,
        sop_class=sop_class,
        transfer_syntax=transfer_syntax,
        modality=modality or _modality_from_sop_class(sop_class),
        study=study,
        series=series,
        accession=_text(ds, "AccessionNumber"),
        patient_key=key,
        patient_id=patient_id,
        name=person_name(ds.get("PatientName")),
        birthdate=birthdate,
        sex=sex,
        county=cnp.county if cnp else None,
        created=created,
        age=age,
        protocol=protocol,
        region=region,
        projection=projection(*texts) or view,
        status=status,
        reason=reason,
    )
