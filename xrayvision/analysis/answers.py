"""The model's answer: found in whatever text came back, checked for type and range, or refused with a reason."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
MAX_SUMMARY_WORDS = 5


class InvalidAnswer(ValueError):
    """The model's text holds no usable answer; the message says what is wrong, for the log and the exam."""


@dataclass(frozen=True)
class Answer:
    short: str  # "yes" (something abnormal) or "no"
    report: str
    confidence: int  # 0-100
    severity: int  # 0-10
    summary: str  # 1-5 words

    @property
    def positive(self) -> int:
        return 1 if self.short == "yes" else 0


def extract_json(text: str) -> dict[str, Any]:
    """The first JSON object in `text`: inside a code fence first, else anywhere, trailing prose ignored."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        start = candidate.find("{")
        while start != -1:
            try:
                value, _ = decoder.raw_decode(candidate, start)
            except json.JSONDecodeError:
                start = candidate.find("{", start + 1)
                continue
            if isinstance(value, dict):
                return value
            start = candidate.find("{", start + 1)
    raise InvalidAnswer("no JSON object in the answer")


def _integer(data: dict[str, Any], key: str, low: int, high: int) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidAnswer(f"{key} is missing or not a number")
    try:
        number = float(value)
    except ValueError:
        raise InvalidAnswer(f"{key} {value!r} is not a number") from None
    if not number.is_integer():
        raise InvalidAnswer(f"{key} {value!r} is not a whole number")
    if not low <= number <= high:
        raise InvalidAnswer(f"{key} {int(number)} is outside {low}-{high}")
    return int(number)


def parse_answer(text: str | None) -> Answer:
    """The answer in `text`, or InvalidAnswer naming every problem (the model is told all of them at once)."""
    data = extract_json(text or "")
    problems: list[str] = []

    def check(make):  # type: ignore[no-untyped-def]
        try:
            return make()
        except InvalidAnswer as exc:
            problems.append(str(exc))
            return None

    short = data.get("short")
    if not isinstance(short, str) or short.strip().lower() not in ("yes", "no"):
        problems.append("short must be 'yes' or 'no'")
    report = data.get("report")
    if not isinstance(report, str) or not report.strip():
        problems.append("report is missing or empty")
    confidence = check(lambda: _integer(data, "confidence", 0, 100))
    severity = check(lambda: _integer(data, "severity", 0, 10))
    summary = data.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        problems.append("summary is missing or empty")
    elif len(summary.split()) > MAX_SUMMARY_WORDS:
        problems.append(f"summary has more than {MAX_SUMMARY_WORDS} words")
    if problems:
        raise InvalidAnswer("; ".join(problems))
    assert isinstance(short, str) and isinstance(report, str) and isinstance(summary, str)
    return Answer(short=short.strip().lower(), report=report.strip(), confidence=int(confidence),
                  severity=int(severity), summary=" ".join(summary.split()))
