"""What the model is told and must answer for the report tasks: grading a radiologist's report, translating it to
English, and a three-pass critique. As for radiographs (answers.py), one pydantic model per task states the keys, types
and ranges once: the JSON schema sent as response_format, the key list in the system prompt and the check of the answer
are all made from it. Change any text here and GRADING_PROMPT_VERSION changes with it."""
from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from .answers import Text, Whole, YesNo, parse_as

GRADING_PROMPT_VERSION = "xv-report-2026.12-1"
MAX_GRADE_WORDS = 3

# Strict structured output wants every object closed; extra keys are still ignored when reading.
_CLOSED = ConfigDict(frozen=True, extra="ignore", json_schema_extra={"additionalProperties": False})


def _short_summary(value: str) -> str:
    words = value.lower().split()
    if len(words) > MAX_GRADE_WORDS:
        raise ValueError(f"has more than {MAX_GRADE_WORDS} words")
    return " ".join(words)


class Grade(BaseModel):
    """The grading of one radiology report."""

    model_config = _CLOSED

    pathologic: YesNo = Field(description='"yes" if any sentence of the report describes an abnormal finding, '
                                          '"no" if the report is entirely normal')
    severity: Whole = Field(ge=0, le=10, description="a whole number 0-10: 0 when the report is normal, else 1-3 "
                                                     "minor, 4-6 moderate, 7-8 serious, 9-10 critical and urgent")
    summary: Annotated[Text, AfterValidator(_short_summary)] = Field(
        description='the main finding in one to three lower-case English words, such as "normal", "pneumonia", '
                    '"rib fracture"')

    @model_validator(mode="after")
    def _consistent(self) -> Grade:
        # Both numbers feed the statistics: a "no" with severity 4 would count as normal by one and abnormal by the
        # other, so the model is asked again instead.
        if (self.pathologic == "yes") != (self.severity > 0):
            raise ValueError('must have severity 0 when "pathologic" is "no", and 1-10 when it is "yes"')
        return self

    @property
    def positive(self) -> int:
        return 1 if self.pathologic == "yes" else 0


class Translation(BaseModel):
    """A radiology report in English."""

    model_config = _CLOSED

    translation: Text = Field(description="the whole report in English, with its structure and terminology kept")


class FirstPass(BaseModel):
    model_config = _CLOSED

    topic: Text = Field(description="what was examined, in a few words")
    purpose: Text = Field(description="why, as far as the report tells")
    primary_findings: Text = Field(description="the main findings in one or two sentences")


class SecondPass(BaseModel):
    model_config = _CLOSED

    main_points: list[Text] = Field(description="each point the report makes")
    supporting_evidence: list[Text] = Field(description="what in the report backs its conclusions")
    conclusions_valid: bool = Field(description="true if the conclusions follow from the findings described")


class ThirdPass(BaseModel):
    model_config = _CLOSED

    assumptions: list[Text] = Field(description="what the report takes for granted without saying so")
    missing_info: list[Text] = Field(description="what a reader would need and the report does not give")
    critique: Text = Field(description="the report's weaknesses and strengths in a few sentences")


class Critique(BaseModel):
    """A three-pass reading of one radiology report."""

    model_config = _CLOSED

    first_pass: FirstPass = Field(description="overview: topic, purpose and primary findings")
    second_pass: SecondPass = Field(description="content: main points, supporting evidence, whether the "
                                                "conclusions hold")
    third_pass: ThirdPass = Field(description="critical evaluation: assumptions, missing information, critique")
    overall_assessment: Text = Field(description="the report's quality and usefulness in one or two sentences")


def _keys(model: type[BaseModel]) -> str:
    return ";\n".join(f'- "{name}": {field.description}' for name, field in model.model_fields.items()) + "."


def _format(name: str, model: type[BaseModel]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": model.model_json_schema(), "strict": True}}


# The json_schema names say which task a request is (the test model server reads them too).
GRADE_FORMAT = _format("report_grade", Grade)
TRANSLATION_FORMAT = _format("report_translation", Translation)
CRITIQUE_FORMAT = _format("report_critique", Critique)

GRADE_PROMPT = f"""\
You check radiology reports written by radiologists and say whether each describes anything abnormal.

Read the report one sentence at a time. One sentence that describes an abnormal finding (an opacity, a fracture, an
effusion, an enlarged heart, a mass, a device out of place, and so on) makes the whole report pathologic, however normal
the other sentences are. Sentences that only give the technique, the clinical question or normal structures do not.
Spelling mistakes, missing diacritics, abbreviations and missing spaces after a full stop change nothing.

Many reports are in Romanian. Words to know: "fără" or "fara" means without ("fără leziuni" is normal), "SCD" are the
costo-diaphragmatic sinuses, "liber" or "libere" means clear, "cord" is the heart, "opacitate" an opacity, "desen
pulmonar accentuat" increased lung markings.

Answer with one JSON object and nothing else, with exactly these keys:
{_keys(Grade)}

Examples:
"Heart size normal. Lungs clear. No effusion." gives {{"pathologic": "no", "severity": 0, "summary": "normal"}}
"Fara leziuni pleuro-pulmonare active. SCD libere. Cord in limite normale." gives {{"pathologic": "no", "severity": 0, \
"summary": "normal"}}
"Opacitate alveolara bazal drept. SCD drept liber." gives {{"pathologic": "yes", "severity": 5, "summary": \
"right basal pneumonia"}}
"Fractura cu deplasare a radiusului distal." gives {{"pathologic": "yes", "severity": 5, "summary": "radius fracture"}}
"Large right pneumothorax with mediastinal shift." gives {{"pathologic": "yes", "severity": 9, "summary": \
"tension pneumothorax"}}"""

TRANSLATION_PROMPT = f"""\
You translate radiology reports into English for radiologists.

Keep the report's structure as it is: its lines, headings, lists and order. Use the usual English radiological terms,
keep every measurement, number, side and abbreviation's meaning exactly (for example "SCD" becomes "costophrenic
angles"), and add, drop or interpret nothing. A part already in English stays as it is.

Answer with one JSON object and nothing else, with exactly these keys:
{_keys(Translation)}

Example: "Cord cu diametre normale. SCD libere bilateral." gives {{"translation": "Heart of normal size. Both \
costophrenic angles clear."}}"""

CRITIQUE_PROMPT = f"""\
You review radiology reports the way a senior radiologist reads a colleague's work, in three passes.

First pass: what was examined and why, and the primary findings. Second pass: every point the report makes, what in it
supports the conclusions, and whether the conclusions follow from the findings. Third pass: the assumptions it makes
without saying so, the information a reader would miss, and a short critique. Then an overall assessment.
Judge only what the report says; write in English whatever the report's language.

Answer with one JSON object and nothing else, with exactly these keys:
{_keys(Critique)}
with "first_pass" holding {_keys(FirstPass)}
"second_pass" holding {_keys(SecondPass)}
"third_pass" holding {_keys(ThirdPass)}"""

_NO_SPACE = re.compile(r"([.!?;])(?=[^\W\d_])")  # "normal.SCD libere": a sentence end with no space after it


def report_message(text: str) -> str:
    """The user message for any report task: the text, a space put after sentence ends that lack one (so that the
    model sees sentences), between quote marks that set it apart from any instruction."""
    spaced = _NO_SPACE.sub(r"\1 ", text.strip())
    return f'The report:\n"""\n{spaced}\n"""'


def messages(system: str, text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": report_message(text)}]


def parse_grade(text: str | None) -> Grade:
    return parse_as(Grade, text)


def parse_translation(text: str | None) -> Translation:
    return parse_as(Translation, text)


def parse_critique(text: str | None) -> Critique:
    return parse_as(Critique, text)


# Whether a report needs translating is decided here, without asking the model: English reports (the common case
# outside Romania) cost no call. A report is taken as English unless Romanian shows: a word with a Romanian letter
# (ă â î ș ş ț ţ) or a common Romanian word, and English words are fewer than twice as many. A text with
# neither ("Normal.") is left as it is.
_ROMANIAN_LETTERS = set("ăâîșşțţ")
_ROMANIAN_WORDS = frozenset(
    "si fara cu de din pe la nu este sunt se al ale ai pentru sau dar prin catre dreapta drept stanga stang pulmonar "
    "pulmonare pleural pleurale libere liber scd cord opacitate opacitati hil hili aspect modificari vizibile vizibil "
    "normale desen accentuat torace toracic radiografie diametre leziuni fractura zona lob lobul bazal limite".split())
_ENGLISH_WORDS = frozenset(
    "the of and is are with without no not there seen in on at to both right left lung lungs heart chest findings "
    "evidence size clear within limits normal appears noted which this that an acute or for be has was".split())
_WORD = re.compile(r"[^\W\d_]+")


def is_english(text: str) -> bool:
    words = [w.lower() for w in _WORD.findall(text)]
    romanian = sum(1 for w in words if w in _ROMANIAN_WORDS or not _ROMANIAN_LETTERS.isdisjoint(w))
    english = sum(1 for w in words if w in _ENGLISH_WORDS)
    return romanian == 0 or english >= 2 * romanian
