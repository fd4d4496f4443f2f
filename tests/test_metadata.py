"""describe(): what is kept of one DICOM dataset (patient, exam time, protocol, region, status), what is refused."""
from __future__ import annotations

import datetime as dt
import zoneinfo
from pathlib import Path

import pydicom
import pytest
from conftest import CR_STORAGE, DATA, DX_PRESENTATION, cnp_with_check, cr_dataset, synthetic_cr
from pydicom import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from xrayvision.clinical.regions import RegionRules
from xrayvision.config import load_settings
from xrayvision.dicom.metadata import MetadataError, describe, person_name, valid_uid
from xrayvision.store import schema

DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
UTC = dt.UTC
BUCHAREST = zoneinfo.ZoneInfo("Europe/Bucharest")
# Long after every exam below, so that "age at the exam" and "age today" differ.
LATER = dt.datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
CNP_GIRL_2019 = cnp_with_check("619031540123")  # F, born 2019-03-15, county 40
SMALL_RULES = RegionRules.from_mapping({"chest": "torace, chest", "skull": "cap, craniu, skull"})


@pytest.fixture(scope="module")
def rules() -> RegionRules:
    return load_settings(None, environ={}, base_dir=Path(__file__).parent).regions


def make_ds(rows: int = 4, columns: int = 4, **changes: object) -> Dataset:
    """A small 16-bit CR in memory; a change of None deletes the attribute."""
    return cr_dataset(rows, columns, pixels=b"\x00\x01" * (rows * columns), **changes)


# --- patient ------------------------------------------------------------------------------------------------------

def test_valid_cnp_wins_over_birth_date_and_sex_tags(rules: RegionRules) -> None:
    ds = make_ds(PatientID=CNP_GIRL_2019, PatientSex="M", PatientBirthDate="20000101", PatientName="Popescu^Ana")
    inst = describe(ds, rules, UTC, now=LATER)
    assert inst.patient_key == CNP_GIRL_2019
    assert inst.patient_id == CNP_GIRL_2019
    assert inst.birthdate == dt.date(2019, 3, 15)
    assert inst.sex == "F"
    assert inst.county == 40
    assert inst.name == "Popescu Ana"


def test_cnp_with_a_bad_check_digit_falls_back_to_the_tags(rules: RegionRules) -> None:
    bad = CNP_GIRL_2019[:12] + str((int(CNP_GIRL_2019[12]) + 1) % 10)
    ds = make_ds(PatientID=bad, PatientSex="M", PatientBirthDate="20000101")
    inst = describe(ds, rules, UTC, now=LATER)
    assert inst.patient_key == bad
    assert inst.birthdate == dt.date(2000, 1, 1)
    assert inst.sex == "M"
    assert inst.county is None


def test_odd_sex_becomes_o(rules: RegionRules) -> None:
    assert describe(make_ds(PatientSex="X"), rules, UTC, now=LATER).sex == "O"
    assert describe(make_ds(PatientSex=None), rules, UTC, now=LATER).sex == "O"
    assert describe(make_ds(PatientSex="f"), rules, UTC, now=LATER).sex == "F"


def test_no_patient_id_keeps_each_study_apart(rules: RegionRules) -> None:
    study_a, study_b = generate_uid(), generate_uid()
    first = describe(make_ds(PatientID="", StudyInstanceUID=study_a), rules, UTC, now=LATER)
    same_study = describe(make_ds(PatientID=None, StudyInstanceUID=study_a), rules, UTC, now=LATER)
    other = describe(make_ds(PatientID="", StudyInstanceUID=study_b), rules, UTC, now=LATER)
    assert first.patient_key.startswith("noid-")
    assert other.patient_key.startswith("noid-")
    assert first.patient_key != other.patient_key
    assert first.patient_key == same_study.patient_key
    assert first.patient_id == ""


# --- age ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("series_date", "age"), [("20260314", 6), ("20260315", 7), ("20190315", 0)])
def test_age_is_taken_on_the_exam_day_from_the_cnp(rules: RegionRules, series_date: str, age: int) -> None:
    ds = make_ds(PatientID=CNP_GIRL_2019, SeriesDate=series_date, SeriesTime="120000")
    assert describe(ds, rules, UTC, now=LATER).age == age


@pytest.mark.parametrize(("series_date", "age"), [("20260314", 6), ("20260315", 7)])
def test_age_is_taken_on_the_exam_day_from_the_birth_date(rules: RegionRules, series_date: str, age: int) -> None:
    ds = make_ds(PatientID="X1", PatientBirthDate="20190315", PatientAge="010Y", SeriesDate=series_date)
    assert describe(ds, rules, UTC, now=LATER).age == age


def test_age_uses_the_local_exam_day(rules: RegionRules) -> None:
    # 00:30 in Bucharest on the birthday is still the day before in UTC: the local day counts.
    ds = make_ds(PatientID=CNP_GIRL_2019, SeriesDate="20260315", SeriesTime="003000")
    inst = describe(ds, rules, BUCHAREST, now=LATER)
    assert inst.created == dt.datetime(2026, 3, 14, 22, 30, tzinfo=UTC)
    assert inst.age == 7


def test_patient_age_is_used_without_a_birth_date(rules: RegionRules) -> None:
    assert describe(make_ds(PatientAge="007Y"), rules, UTC, now=LATER).age == 7
    assert describe(make_ds(PatientAge="006M"), rules, UTC, now=LATER).age == 0
    assert describe(make_ds(PatientAge="7"), rules, UTC, now=LATER).age is None
    assert describe(make_ds(), rules, UTC, now=LATER).age is None


# --- exam time ----------------------------------------------------------------------------------------------------

def test_series_time_is_preferred_to_study_time(rules: RegionRules) -> None:
    ds = make_ds(StudyDate="20260119", StudyTime="080000", SeriesDate="20260120", SeriesTime="101500")
    assert describe(ds, rules, UTC, now=LATER).created == dt.datetime(2026, 1, 20, 10, 15, tzinfo=UTC)


def test_study_time_when_there_is_no_series_date(rules: RegionRules) -> None:
    ds = make_ds(StudyDate="20260119", StudyTime="080000", SeriesDate=None, SeriesTime=None)
    assert describe(ds, rules, UTC, now=LATER).created == dt.datetime(2026, 1, 19, 8, 0, tzinfo=UTC)


def test_no_date_at_all_falls_back_to_now(rules: RegionRules) -> None:
    ds = make_ds(StudyDate=None, StudyTime=None, SeriesDate=None, SeriesTime=None)
    assert describe(ds, rules, UTC, now=LATER).created == LATER


@pytest.mark.parametrize(
    ("day", "utc"),
    [("20260120", dt.datetime(2026, 1, 20, 8, 15, tzinfo=UTC)),  # EET, UTC+2
     ("20260720", dt.datetime(2026, 7, 20, 7, 15, tzinfo=UTC))],  # EEST, UTC+3
    ids=["winter", "summer"],
)
def test_exam_time_is_converted_to_utc_from_the_zone(rules: RegionRules, day: str, utc: dt.datetime) -> None:
    inst = describe(make_ds(SeriesDate=day, SeriesTime="101500"), rules, BUCHAREST, now=LATER)
    assert inst.created == utc
    assert inst.created.utcoffset() == dt.timedelta(0)


# --- protocol and region ------------------------------------------------------------------------------------------

PROTOCOL_TAGS = ("ProtocolName", "SeriesDescription", "StudyDescription", "BodyPartExamined")


@pytest.mark.parametrize("first", range(len(PROTOCOL_TAGS)))
def test_protocol_is_the_first_text_present(rules: RegionRules, first: int) -> None:
    changes: dict[str, object] = {tag: None for tag in PROTOCOL_TAGS[:first]}
    changes.update({tag: f"Text {tag}" for tag in PROTOCOL_TAGS[first:]})
    assert describe(make_ds(**changes), rules, UTC, now=LATER).protocol == f"Text {PROTOCOL_TAGS[first]}"


def test_no_protocol_text_at_all(rules: RegionRules) -> None:
    inst = describe(make_ds(ProtocolName=None), rules, UTC, now=LATER)
    assert inst.protocol == ""
    assert inst.region == ""


@pytest.mark.parametrize("use_defaults", [True, False], ids=["default-rules", "small-rules"])
def test_region_from_a_later_text_when_the_first_does_not_match(rules: RegionRules, use_defaults: bool) -> None:
    ds = make_ds(ProtocolName="XYZ 123", BodyPartExamined="CHEST")
    inst = describe(ds, rules if use_defaults else SMALL_RULES, UTC, now=LATER)
    assert inst.protocol == "XYZ 123"
    assert inst.region == "chest"


def test_region_and_projection_from_the_protocol(rules: RegionRules) -> None:
    inst = describe(make_ds(ProtocolName="Craniu fata+profil", BodyPartExamined="CHEST"), rules, UTC, now=LATER)
    assert inst.region == "skull"
    assert inst.projection == "frontal"
    lateral = describe(make_ds(ProtocolName="XYZ", ViewPosition="LL"), rules, UTC, now=LATER)
    assert lateral.projection == "lateral"


@pytest.mark.parametrize("use_defaults", [True, False], ids=["default-rules", "small-rules"])
def test_scapula_is_not_skull(rules: RegionRules, use_defaults: bool) -> None:
    inst = describe(make_ds(ProtocolName="Scapula dreapta"), rules if use_defaults else SMALL_RULES, UTC, now=LATER)
    assert inst.region == ("shoulder" if use_defaults else "")
    capped = describe(make_ds(ProtocolName="Cap AP"), rules if use_defaults else SMALL_RULES, UTC, now=LATER)
    assert capped.region == "skull"


# --- status -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("sop_class", "modality", "kept_modality"),
    [(CR_STORAGE, "CR", "CR"), (DX_PRESENTATION, "DX", "DX"), (DX_PROCESSING, "DX", "DX"),
     (DX_PROCESSING, None, "DX"), (CR_STORAGE, None, "CR")],
    ids=["cr", "dx-presentation", "dx-processing", "dx-processing-no-modality", "cr-no-modality"],
)
def test_radiographs_are_queued(rules: RegionRules, sop_class: str, modality: str | None, kept_modality: str) -> None:
    inst = describe(make_ds(SOPClassUID=sop_class, Modality=modality), rules, UTC, now=LATER)
    assert inst.status == schema.QUEUED
    assert inst.reason == ""
    assert inst.modality == kept_modality
    assert inst.sop_class == sop_class


def test_ct_is_ignored_with_a_reason_naming_the_modality(rules: RegionRules) -> None:
    inst = describe(make_ds(SOPClassUID=CT_STORAGE, Modality="CT"), rules, UTC, now=LATER)
    assert inst.status == schema.IGNORE
    assert inst.reason == "not a radiograph: modality CT (CT Image Storage)"
    assert inst.modality == "CT"


@pytest.mark.parametrize(("protocol", "reason"), [
    ("Genunchi drept", "region 'knee' is not analysed (not in [supported_regions])"),
    ("Right knee AP", "region 'knee' is not analysed (not in [supported_regions])"),
    ("XYZ 42", "no anatomic region could be recognised from the protocol"),
    (None, "no anatomic region could be recognised from the protocol"),
], ids=["unsupported-ro", "unsupported-en", "unknown", "no-text"])
def test_a_radiograph_that_will_never_be_analysed_is_ignored_at_once(rules: RegionRules, protocol: str | None,
                                                                      reason: str) -> None:
    inst = describe(make_ds(ProtocolName=protocol), rules, UTC, now=LATER)
    assert (inst.status, inst.reason) == (schema.IGNORE, reason)


def test_supported_regions_come_from_the_configuration(tmp_path: Path) -> None:
    knee = load_settings(None, environ={"XRAYVISION_SUPPORTED_REGIONS_KNEE": "true"}, base_dir=tmp_path).regions
    inst = describe(make_ds(ProtocolName="Genunchi drept"), knee, UTC, now=LATER)
    assert (inst.region, inst.status, inst.reason) == ("knee", schema.QUEUED, "")
    # Rules without a [supported_regions] list analyse any region they find, and still no unknown one.
    assert describe(make_ds(ProtocolName="Genunchi"), SMALL_RULES, UTC, now=LATER).status == schema.IGNORE
    assert describe(make_ds(ProtocolName="Cap AP"), SMALL_RULES, UTC, now=LATER).status == schema.QUEUED


def test_a_non_radiograph_says_so_whatever_its_region(rules: RegionRules) -> None:
    inst = describe(make_ds(SOPClassUID=CT_STORAGE, Modality="CT", ProtocolName="Torace"), rules, UTC, now=LATER)
    assert inst.status == schema.IGNORE and inst.reason.startswith("not a radiograph")


def test_rg3_is_a_lower_limb_radiograph_not_analysed_by_default(rules: RegionRules) -> None:
    ds = pydicom.dcmread(DATA / "RG3_UNCR.dcm")
    inst = describe(ds, rules, UTC, now=LATER)
    assert (inst.region, inst.projection, inst.modality) == ("lower_limb", "frontal", "CR")
    assert (inst.status, inst.reason) == (schema.IGNORE, "region 'lower_limb' is not analysed (not in "
                                                         "[supported_regions])")


def test_describe_reads_a_written_file(tmp_path: Path, rules: RegionRules) -> None:
    path = synthetic_cr(tmp_path / "cr.dcm", rows=32, columns=32, PatientID=CNP_GIRL_2019,
                        AccessionNumber="ACC42", ProtocolName="Clavicula dreapta")
    ds = pydicom.dcmread(path)
    inst = describe(ds, rules, UTC, now=LATER)
    assert inst.uid == ds.SOPInstanceUID
    assert inst.study == ds.StudyInstanceUID
    assert inst.series == ds.SeriesInstanceUID
    assert inst.transfer_syntax == ExplicitVRLittleEndian
    assert inst.accession == "ACC42"
    assert inst.region == "clavicle"
    assert inst.status == schema.QUEUED
    assert inst.age == 7  # exam 2026-11-20


def test_a_bad_series_uid_is_dropped_not_refused(rules: RegionRules) -> None:
    assert describe(make_ds(SeriesInstanceUID="1.2.x"), rules, UTC, now=LATER).series == ""


# --- refusals -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"SOPInstanceUID": None}, "SOPInstanceUID"),
        ({"SOPInstanceUID": ""}, "SOPInstanceUID"),
        ({"SOPInstanceUID": "1.2.abc"}, "SOPInstanceUID"),
        ({"SOPInstanceUID": "1.2.3/../../etc/passwd"}, "SOPInstanceUID"),
        ({"SOPInstanceUID": "1." + "2" * 63}, "SOPInstanceUID"),
        ({"SOPInstanceUID": "1.02.3"}, "SOPInstanceUID"),
        ({"SOPClassUID": None}, "SOPClassUID"),
        ({"StudyInstanceUID": None}, "StudyInstanceUID"),
        ({"StudyInstanceUID": "1.2..3"}, "StudyInstanceUID"),
        ({"PixelData": b"\x00" * (4 * 4 * 2 - 2)}, "pixel data"),
        ({"Rows": 0}, "geometry"),
        ({"Columns": 0}, "geometry"),
        ({"BitsAllocated": 12}, "geometry"),
        ({"Rows": None}, "image attributes"),
    ],
    ids=["no-sop-uid", "empty-sop-uid", "letters", "slash", "too-long", "leading-zero", "no-sop-class",
         "no-study", "bad-study", "short-pixels", "zero-rows", "zero-columns", "bits", "no-rows"],
)
def test_metadata_error(rules: RegionRules, changes: dict[str, object], words: str) -> None:
    with pytest.raises(MetadataError, match=words):
        describe(make_ds(**changes), rules, UTC, now=LATER)


def test_exact_pixel_length_and_no_pixels_are_accepted(rules: RegionRules) -> None:
    describe(make_ds(PixelData=b"\x00" * (4 * 4 * 2)), rules, UTC, now=LATER)
    describe(make_ds(PixelData=None), rules, UTC, now=LATER)  # e.g. a structured report


def _encapsulated(data: bytes) -> Dataset:
    ds = make_ds(rows=64, columns=64)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = data
    ds["PixelData"].VR = "OB"
    return ds


def test_encapsulated_pixel_data_must_be_item_framed(rules: RegionRules) -> None:
    with pytest.raises(MetadataError, match="malformed"):
        # A bare codestream, no item headers.
        describe(_encapsulated(b"\xffO\xffQ" + b"\x00" * 60), rules, UTC, now=LATER)
    with pytest.raises(MetadataError, match="no fragment"):
        describe(_encapsulated(b"\xfe\xff\x00\xe0\x00\x00\x00\x00"), rules, UTC, now=LATER)  # an offset table only
    # Framed: accepted without decoding, however short the fragment.
    describe(_encapsulated(encapsulate([b"\xffO\xffQ\x00\x00"])), rules, UTC, now=LATER)


def test_encapsulated_error_reaches_describe(rules: RegionRules) -> None:
    with pytest.raises(MetadataError):
        describe(_encapsulated(b"\x00" * 64), rules, UTC, now=LATER)


# --- helpers ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "ok"),
    [("1.2.840.10008.5.1.4.1.1.1", True), ("0", True), ("1.0.3", True), ("1." + "2" * 62, True),
     ("1." + "2" * 63, False), ("", False), (None, False), ("1.2.abc", False), ("1.2/3", False), ("1..2", False),
     (".1.2", False), ("1.2.", False), ("1.02", False), ("1.2 ", False)],
)
def test_valid_uid(value: object, ok: bool) -> None:
    assert valid_uid(value) is ok


@pytest.mark.parametrize(
    ("value", "text"),
    [("Family^Given^Middle", "Family Given Middle"), ("", ""), (None, ""), ("Popescu^Ana", "Popescu Ana"),
     ("Popescu^Ana^^Dr^Jr", "Popescu Ana"), ("Yamada^Tarou=山田^太郎", "Yamada Tarou"), ("^Ana", "Ana"),
     (" Popescu ^ Ana ", "Popescu Ana")],
)
def test_person_name(value: object, text: str) -> None:
    assert person_name(value) == text


def test_person_name_of_a_dataset_value() -> None:
    ds = make_ds(PatientName="Family^Given^Middle")
    assert person_name(ds.PatientName) == "Family Given Middle"
