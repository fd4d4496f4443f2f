"""What a ServiceRequest's or DiagnosticReport's codes say about the exam they are for: the imaging modality they name
and whether they name the exam's region. Conservative on purpose: a candidate that names no modality is kept, and a
region only breaks a tie between candidates that are otherwise equally near the exam."""
from __future__ import annotations

import configparser
from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import Any

from xrayvision.clinical.regions import RegionRules

DICOM = "dicom.nema.org"  # the DICOM modality codes' system, http://dicom.nema.org/resources/ontology/DCM
# DICOM modality code -> the family we compare (CR and DX are both plain radiography)
CODES = {"CR": "XR", "DX": "XR", "RG": "XR", "CT": "CT", "MR": "MR", "US": "US", "NM": "NM", "PT": "PET", "MG": "MG"}
# Words in a coding's display (LOINC, SNOMED CT, RadLex) or a concept's text that name a family, in the keyword syntax
# of [regions] (matched at a word start, case and accents ignored; a trailing '$' must end the word). Short codes that
# are also common words (PT, MG for milligrams, DX for diagnosis) are only recognised as DICOM codes.
WORDS = {
    "XR": ("x-ray", "x ray", "xray", "xr$", "rx$", "radiograph", "radiografi", "radiografic", "roentgen", "rontgen",
           "plain film"),
    "CT": ("ct$", "cta$", "tc$", "computed tomograph", "computerized tomograph", "computerised tomograph",
           "computer tomograph", "tomografie computerizata", "tomodensitometr", "cat scan"),
    "MR": ("mr$", "mri$", "mra$", "rmn$", "irm$", "magnetic resonance", "rezonanta magnetica"),
    "US": ("us$", "usg$", "ultrasound", "ultrason", "sonograph", "echograph", "echocardiogra", "ecograf", "eco$",
           "doppler"),
    "NM": ("nm$", "nuclear medicine", "medicina nucleara", "scintigra", "scintiscan", "spect$", "bone scan"),
    "PET": ("pet$", "positron"),
    "MG": ("mammo", "mamograf", "mamografi"),
}
_FAMILIES = {family: RegionRules.from_mapping({family: words}) for family, words in WORDS.items()}


def family(modality: str) -> str:
    """The exam's family ('XR' for CR and DX), '' for a modality we do not compare (then nothing is dropped)."""
    return CODES.get((modality or "").strip().upper(), "")


def _texts(concepts: Iterable[Any]) -> list[str]:
    texts = []
    for concept in concepts:
        if concept is None:
            continue
        texts.append(concept.text or "")
        texts += [coding.display or "" for coding in concept.coding or []]
    return [t for t in texts if t]


def named(concepts: Iterable[Any]) -> set[str]:
    """The families that these CodeableConcepts name, by DICOM modality codes, displays or text."""
    concepts = [c for c in concepts if c is not None]
    found = {CODES[c.code.upper()] for concept in concepts for c in concept.coding or []
             if c.code and c.code.upper() in CODES and DICOM in (c.system or "")}
    for text in _texts(concepts):
        found |= {name for name, rules in _FAMILIES.items() if rules.match(text)}
    return found


def other_modality(modality: str, concepts: Iterable[Any]) -> bool:
    """True when the concepts clearly name modalities and none is the exam's (a chest CR's candidate coded CT)."""
    exam = family(modality)
    names = named(concepts) if exam else set()
    return bool(names) and exam not in names


@cache
def _region_words() -> dict[str, tuple[str, ...]]:
    """The built-in [regions] keywords (Romanian, English, DICOM body parts), e.g. chest: torace, thorax, chest..."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read_string(resources.files("xrayvision").joinpath("defaults.cfg").read_text(encoding="utf-8"))
    return {region: tuple(k.strip() for k in words.split(",") if k.strip())
            for region, words in parser["regions"].items()}


@cache
def _region_rules(region: str) -> RegionRules:
    return RegionRules.from_mapping({region: (region.replace("_", " "), *_region_words().get(region, ()))})


def names_region(region: str, concepts: Iterable[Any]) -> bool:
    """Whether the concepts' text or displays name the exam's region ('chest': 'Rx torace PA', 'CT Chest')."""
    if not region:
        return False
    rules = _region_rules(region)
    return any(rules.match(text) for text in _texts(concepts))
