"""What the vision model is told: a versioned system prompt, the per-exam question, and the answer's JSON schema.
Change any text here and PROMPT_VERSION changes with it, so every stored answer says which words produced it."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from .answers import Answer, answer_schema

PROMPT_VERSION = "xv-2026.12-1"  # .12: the schema sent carries the keys' descriptions and minLength
GENERAL_QUESTION = "Is there anything abnormal"

# The keys and their meanings are Answer's field descriptions: the words the schema and the check are made from.
_ANSWER_KEYS = ";\n".join(f'- "{name}": {field.description}' for name, field in Answer.model_fields.items()) + "."
EXAMPLE_ANSWER = ('{"short": "yes", "report": "Patchy opacity in the right lower zone, in keeping with pneumonia. '
                  'No effusion.", "confidence": 80, "severity": 5, "summary": "right lower pneumonia"}')
SYSTEM_PROMPT = f"""\
You are a radiologist on call, triaging plain radiographs (X-rays) so that urgent ones are read first.
Look at the image you are given and answer the question about it.

Answer with one JSON object and nothing else, with exactly these keys:
{_ANSWER_KEYS}

Example: {EXAMPLE_ANSWER}"""

ANSWER_SCHEMA: dict[str, Any] = answer_schema()
RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "radiograph_finding", "schema": ANSWER_SCHEMA, "strict": True},
}
RETRY_PROMPT = "That answer could not be used: {reason}. Answer again with only the JSON object described."


@dataclass(frozen=True)
class Prior:
    created: str  # store time (UTC)
    summary: str
    report: str
    severity: int


@dataclass(frozen=True)
class EarlierReading:
    """A previous answer for this same image, offered when the exam is looked at again."""

    report: str
    summary: str
    severity: int
    judged_wrong_as: str | None  # "normal" or "abnormal" when a radiologist found the reading wrong, else None


def patient_words(age: int | None, sex: str | None) -> str:
    """'a 7-year-old girl', 'a newborn boy', 'a 54-year-old woman', 'a patient'."""
    child = age is not None and age < 18
    noun = {"M": "boy" if child else "man", "F": "girl" if child else "woman"}.get(sex or "", "child" if child else "")
    if age is None:
        return f"a {noun}" if noun else "a patient"
    if age == 0:
        return f"a newborn {noun or 'baby'}"
    return f"a {age}-year-old {noun or 'patient'}"


def _date(store_time: str) -> str:
    return dt.datetime.strptime(store_time[:10], "%Y-%m-%d").strftime("%d %b %Y")


def user_prompt(
    *,
    question: str | None,
    region: str,
    projection: str,
    age: int | None,
    sex: str | None,
    clinical: str | None,
    priors: list[Prior],
    earlier: EarlierReading | None,
) -> str:
    view = " ".join(part for part in (projection, region.replace("_", " ")) if part)
    parts = [f"{(question or GENERAL_QUESTION).rstrip('?')} in this {view or 'plain'} radiograph of "
             f"{patient_words(age, sex)}?"]
    if clinical:
        parts.append(f"Clinical information from the request: {clinical.strip()}")
    if priors:
        lines = [f"- {_date(p.created)}: {p.summary or 'no summary'} (severity {p.severity}). {p.report}".strip()
                 for p in priors]
        parts.append("Earlier AI findings for this patient and region, newest first (not this image):\n"
                     + "\n".join(lines)
                     + "\nSay whether today's image shows something new, stable, better or worse, with dates.")
    if earlier is not None:
        text = (f"An earlier automated reading of this same image said: \"{earlier.summary}\" (severity "
                f"{earlier.severity}). {earlier.report}")
        if earlier.judged_wrong_as:
            text += f"\nA radiologist judged that reading wrong: they found the image {earlier.judged_wrong_as}."
        else:
            text += "\nRead the image afresh: agree with that reading only where the image supports it."
        parts.append(text)
    parts.append("Mention incidental findings too. Answer with the JSON object only.")
    return "\n\n".join(parts)


def messages(user_text: str, png_base64: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [
            {"type": "text", "text": user_text},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png_base64}"}},
        ]},
    ]
