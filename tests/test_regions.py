"""Region and projection from protocol texts: the shipped [regions] rules find every region in Romanian, in English
and by DICOM's Body Part Examined alone; keywords match at word starts only."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from conftest import cr_dataset

from xrayvision.clinical.regions import RegionRules, normalise, projection
from xrayvision.config import load_settings
from xrayvision.dicom.metadata import describe

# Per region of defaults.cfg: a Romanian protocol, an English one, and Body Part Examined values. The body parts are
# PS3.16 Annex L defined terms; nasal bones and paranasal sinuses have none, so they get the squashed CID 4031
# meanings a modality would send instead.
EXAMPLES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "chest": ("Torace PA", "Chest PA erect", ("CHEST",)),
    "ribs": ("Grilaj costal stâng", "Left ribs oblique", ("RIB",)),
    "sternum": ("Stern profil", "Sternum lateral", ("STERNUM", "SCJOINT")),
    "abdomen": ("Abdomen simplu în picioare", "Abdominal X-ray supine", ("ABDOMEN", "ABDOMENPELVIS")),
    "skull": ("Craniu față", "Skull AP", ("SKULL", "SELLA", "MASTOID")),
    "mandible": ("Mandibulă oblic", "Mandible oblique", ("MANDIBLE", "JAW", "TMJ")),
    "nasal_bones": ("Piramidă nazală profil", "Nasal bones lateral", ("NASALBONE",)),
    "paranasal_sinuses": ("Sinusuri paranazale", "Paranasal sinuses OM", ("PARANASALSINUS",)),
    "spine": ("Coloană lombară față", "Lumbar spine AP", ("SPINE", "CSPINE", "CTSPINE", "TSPINE", "TLSPINE", "LSPINE",
                                                      "LSSPINE", "SSPINE", "COCCYX")),
    "pelvis": ("Bazin față", "Pelvis AP", ("PELVIS", "SIJOINT", "ILIUM")),
    "clavicle": ("Claviculă dreaptă", "Right clavicle", ("CLAVICLE",)),
    "upper_limb": ("Antebraț drept", "Right forearm", ("FOREARM", "HUMERUS", "UPPERARM", "ARM", "UPPERLIMB")),
    "hand": ("Mână stângă față", "Left hand PA", ("HAND", "FINGER", "THUMB", "WRIST")),
    "shoulder": ("Umăr drept", "Right shoulder AP", ("SHOULDER", "ACJOINT", "SCAPULA")),
    "elbow": ("Cot stâng profil", "Left elbow lateral", ("ELBOW",)),
    "hip": ("Șold drept", "Right hip AP", ("HIP",)),
    "lower_limb": ("Gambă stg. față+profil", "Left leg AP and lateral", ("LOWERLEG", "LEG", "FEMUR", "THIGH", "FIBULA",
                                                                       "LOWERLIMB")),
    "knee": ("Genunchi drept", "Right knee AP", ("KNEE", "PATELLA")),
    "ankle": ("Gleznă dreaptă", "Right ankle mortise", ("ANKLE",)),
    "foot": ("Picior drept față", "Right foot oblique", ("FOOT", "CALCANEUS", "TOE", "SESAMOID")),
}
# More English a site is likely to type, each with its region.
ENGLISH = [
    ("Cervical spine lateral", "spine"), ("Thoracic spine AP", "spine"), ("Sacrum", "spine"),
    ("Humerus AP", "upper_limb"), ("Upper arm", "upper_limb"), ("Wrist PA", "hand"), ("Thumb", "hand"),
    ("Scaphoid views", "hand"), ("Femur AP", "lower_limb"), ("Thigh", "lower_limb"), ("Tibia and fibula", "lower_limb"),
    ("Non-ossifying fibroma of distal tibia", "lower_limb"), ("Heel axial", "foot"), ("Calcaneus", "foot"),
    ("Toes", "foot"), ("Hips", "hip"), ("Patella skyline", "knee"), ("KUB", "abdomen"), ("Lungs", "chest"),
    ("Sacroiliac joints", "pelvis"), ("AC joint", "shoulder"), ("Scapula Y view", "shoulder"),
]
UTC = dt.UTC


@pytest.fixture(scope="module")
def rules() -> RegionRules:
    return load_settings(None, environ={}, base_dir=Path(__file__).parent).regions


def test_every_shipped_region_has_examples(rules: RegionRules) -> None:
    assert set(EXAMPLES) == set(rules.regions())


@pytest.mark.parametrize(("region", "text"), [(r, e[0]) for r, e in EXAMPLES.items()], ids=list(EXAMPLES))
def test_each_region_in_romanian(rules: RegionRules, region: str, text: str) -> None:
    assert rules.match(text) == region


@pytest.mark.parametrize(("region", "text"), [(r, e[1]) for r, e in EXAMPLES.items()], ids=list(EXAMPLES))
def test_each_region_in_english(rules: RegionRules, region: str, text: str) -> None:
    assert rules.match(text) == region


@pytest.mark.parametrize(("text", "region"), ENGLISH, ids=[t for t, _ in ENGLISH])
def test_more_english(rules: RegionRules, text: str, region: str | None) -> None:
    assert rules.match(text) == region


BODY_PARTS = [(region, part) for region, (_, _, parts) in EXAMPLES.items() for part in parts]


@pytest.mark.parametrize(("region", "body_part"), BODY_PARTS, ids=[p for _, p in BODY_PARTS])
def test_each_region_by_body_part_examined_alone(rules: RegionRules, region: str, body_part: str) -> None:
    ds = cr_dataset(4, 4, pixels=bytes(32), ProtocolName=None, BodyPartExamined=body_part)
    assert describe(ds, rules, UTC).region == region


@pytest.mark.parametrize("body_part", ["EXTREMITY", "WHOLEBODY", "HEAD", "NECK"])
def test_a_body_part_that_names_no_region(rules: RegionRules, body_part: str) -> None:
    ds = cr_dataset(4, 4, pixels=bytes(32), ProtocolName=None, BodyPartExamined=body_part)
    assert describe(ds, rules, UTC).region == ""


def test_rg3_tibia_is_lower_limb_from_its_study_description(rules: RegionRules) -> None:
    # pydicom-data's RG3: StudyDescription "Non-ossifying fibroma of distal tibia", BodyPartExamined EXTREMITY.
    ds = cr_dataset(4, 4, pixels=bytes(32), ProtocolName=None, StudyDescription="Non-ossifying fibroma of distal "
                    "tibia", BodyPartExamined="EXTREMITY")
    assert describe(ds, rules, UTC).region == "lower_limb"


@pytest.mark.parametrize(("text", "region"), [
    ("Scapula dreapta", "shoulder"), ("Cap AP", "skull"), ("capului", "skull"), ("Hipoplazie", None),
    ("hipertensiune arteriala", None), ("Hip", "hip"), ("Humerus", "upper_limb"), ("Toracic", None),
    ("Coloana toracica", "spine"), ("Paranasal", "paranasal_sinuses"), ("Costosternal", None),
])
def test_word_starts_and_whole_words(rules: RegionRules, text: str, region: str | None) -> None:
    # "$" keywords end a word too; the others only start one (so Romanian endings still match).
    assert rules.match(text) == region


def test_a_dollar_keyword_must_end_a_word() -> None:
    r = RegionRules.from_mapping({"hip": "hip$"})
    assert r.match("Hip drept") == "hip"
    assert r.match("hip.") == "hip"
    assert r.match("Hipoplazie") is None
    assert r.match("hips") is None


SHIPPED = {
    "chest": "torace, pulmon, thorax, chest",
    "ribs": "grilaj, coaste",
    "sternum": "stern",
    "abdomen": "abdomen",
    "skull": "cap, craniu, occiput, skull",
    "mandible": "mandibula",
    "nose": "nazal, piramida",
    "sinuses": "sinus",
    "spine": "col., spine, dens, sacrat",
    "pelvis": "bazin, pelvis",
    "clavicle": "clavicula",
    "upper_limb": "humerus, antebrat, forearm",
    "hand": "pumn, mana, deget, hand, finger, wrist",
    "shoulder": "umar",
    "elbow": "cot",
    "hip": "sold",
    "lower_limb": "femur, tibie, gamba",
    "knee": "genunchi, patella",
    "ankle": "glezna",
    "foot": "picior, calcai, calcaneu, foot",
}


@pytest.fixture
def small() -> RegionRules:
    """The reference's rules of a few releases ago, Romanian only: the mechanism, apart from what defaults.cfg says."""
    return RegionRules.from_mapping(SHIPPED)


def test_normalise():
    assert normalise("  Șold   DREPT\tŢesut ăâî ş ț ") == "sold drept tesut aai s t"
    assert normalise("Épaule") == "epaule"
    assert normalise(None) == ""
    assert normalise("") == ""


def test_from_mapping_keeps_order_and_cleans_keywords():
    r = RegionRules.from_mapping({"b": " Șold, ,X ", "a": ["Torace", ""]})
    assert r.rules == (("b", ("sold", "x")), ("a", ("torace",)))
    assert r.regions() == ("b", "a")


def test_regions_in_priority_order(small):
    assert small.regions() == tuple(SHIPPED)


def test_rules_are_hashable_and_compare_by_rules(small):
    assert hash(small) == hash(RegionRules.from_mapping(SHIPPED))
    assert small == RegionRules.from_mapping(SHIPPED)


@pytest.mark.parametrize(
    ("text", "region"),
    [
        ("Cap AP", "skull"),
        ("Craniu lat.", "skull"),
        ("Torace PA", "chest"),
        ("COL. LOMBARA", "spine"),
        ("Șold", "hip"),
        ("Şold drept", "hip"),  # cedilla variant
        ("Gambă stg", "lower_limb"),
        ("Gamba stg. fata+profil", "lower_limb"),
        ("Genunchi", "knee"),
        ("capului", "skull"),
        ("Sternul", "sternum"),
        ("Mână dreaptă", "hand"),
    ],
)
def test_match(small, text, region):
    assert small.match(text) == region


@pytest.mark.parametrize("text", ["Scapula", "costosternal", "Protocol 12", "", None])
def test_no_match_inside_words(small, text):
    assert small.match(text) is None


def test_priority_order_beats_text_position(small):
    assert small.match("Coaste si torace") == "chest"
    assert small.match("Torace si coaste") == "chest"


def test_multi_text_fallback(small):
    assert small.match(None, "Scapula", "Genunchi AP") == "knee"
    assert small.match("Torace", "Genunchi") == "chest"
    assert small.match() is None
    assert small.match(None, "Scapula") is None


def test_keywords_with_punctuation_are_literal():
    r = RegionRules.from_mapping({"spine": "col."})
    assert r.match("col. cervicala") == "spine"
    assert r.match("colx") is None
    assert r.match("coloana") is None


@pytest.mark.parametrize(
    ("text", "view"),
    [
        ("Torace AP", "frontal"),
        ("Torace P.A.", "frontal"),
        ("Picior D.P.", "frontal"),
        ("Genunchi fata", "frontal"),
        ("Craniu lat.", "lateral"),
        ("Torace LAT", "lateral"),
        ("Glezna profil", "lateral"),
        ("Mana oblic", "oblique"),
        ("Mana obl.", "oblique"),
        ("Patella", ""),
        ("Torace", ""),
        ("Latimea", ""),
        ("Capac", ""),
        ("fata+profil", "frontal"),
        ("AP si LAT", "frontal"),
        ("LAT si AP", "frontal"),
        (None, ""),
    ],
)
def test_projection(text, view):
    assert projection(text) == view


def test_projection_first_text_wins():
    assert projection(None, "Torace", "Craniu lat.", "Torace AP") == "lateral"
    assert projection() == ""
