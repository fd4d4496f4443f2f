import pytest

from xrayvision.clinical.regions import RegionRules, normalise, projection

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
    "foot": "picior, calcai, calcaneu, leg, foot",
}


@pytest.fixture
def rules() -> RegionRules:
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


def test_regions_in_priority_order(rules):
    assert rules.regions() == tuple(SHIPPED)


def test_rules_are_hashable_and_compare_by_rules(rules):
    assert hash(rules) == hash(RegionRules.from_mapping(SHIPPED))
    assert rules == RegionRules.from_mapping(SHIPPED)


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
def test_match(rules, text, region):
    assert rules.match(text) == region


@pytest.mark.parametrize("text", ["Scapula", "costosternal", "Protocol 12", "", None])
def test_no_match_inside_words(rules, text):
    assert rules.match(text) is None


def test_priority_order_beats_text_position(rules):
    assert rules.match("Coaste si torace") == "chest"
    assert rules.match("Torace si coaste") == "chest"


def test_multi_text_fallback(rules):
    assert rules.match(None, "Scapula", "Genunchi AP") == "knee"
    assert rules.match("Torace", "Genunchi") == "chest"
    assert rules.match() is None
    assert rules.match(None, "Scapula") is None


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
