"""What each exam filter means, in one place: the parsed filter, and the SQL it becomes (parameters only).

Definitions (T is [processing] SEVERITY_THRESHOLD; reviewed, the verdict and positivity are verdict.py's):
- reviewed: a radiologist's verdict exists, by hand (a review) or from a graded final report;
- the truth of a reviewed exam: the latest manual verdict when there is one (it outranks the report), else the
  graded report's severity >= T;
- positive: the latest AI answer has severity >= T ("no": it has an answer with severity < T);
- correct: reviewed, answered by the AI, and the AI's positive equals the truth ("no": it differs);
- severity: the radiologist's, i.e. the graded report's severity (as the reference's backend and the contract's
  "reviewed = severity > -1" read it); ai_severity and confidence: the latest AI answer's; all as intervals
  ("3-6", "-8", "2-", "5");
- search: part of a patient's name (theirs, or the one an exam arrived with), CNP, patient or HIS id, UID or
  accession number; a whole number of 13 or more digits (a CNP) or a UID is matched exactly. Users who may not see
  people match UIDs and accession numbers only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from . import schema
from .verdict import AI_POSITIVE_SQL, CORRECT_SQL, NOT_REVIEWED_SQL, REVIEWED_SQL

# Triage: unreviewed AI positives first, the most severe first; then everything else; newest first within each.
TRIAGE_FIRST_SQL = f"({NOT_REVIEWED_SQL} AND e.ai_severity >= :t)"
_SORTS = {
    "newest": "e.created DESC, e.uid DESC",
    "triage": (f"(CASE WHEN {TRIAGE_FIRST_SQL} THEN e.ai_severity ELSE -1 END) DESC, e.created DESC, e.uid DESC"),
}
SORTS = tuple(_SORTS)
_IDENTIFIER = re.compile(r"^\s*[0-9][0-9.]{12,63}\s*$")  # 13 digits (a CNP) or more, or a UID
_INTERVAL = re.compile(r"^\s*([0-9]{1,3})?\s*(-)?\s*([0-9]{1,3})?\s*$")


@dataclass(frozen=True)
class Interval:
    low: int
    high: int


def parse_interval(text: str, low: int, high: int) -> Interval:
    """'3-6' -> 3..6, '-8' -> low..8, '2-' -> 2..high, '5' -> 5..5; ValueError for anything else."""
    match = _INTERVAL.match(text)
    if not match or not (match.group(1) or match.group(3)):
        raise ValueError(f"{text!r} is not an interval like 3-6, -8, 2- or 5")
    first, dash, second = match.groups()
    if not dash:
        if second is not None:  # "5 6"
            raise ValueError(f"{text!r} is not an interval like 3-6, -8, 2- or 5")
        start = end = int(first)
    else:
        start = int(first) if first is not None else low
        end = int(second) if second is not None else high
    if not (low <= start <= high and low <= end <= high):
        raise ValueError(f"{text!r} is outside {low}-{high}")
    if start > end:
        raise ValueError(f"{text!r} is empty: {start} is above {end}")
    return Interval(start, end)


def parse_yes_no(text: str) -> bool | None:
    """'any' or '' -> None (no filter), 'yes' -> True, 'no' -> False; ValueError for anything else."""
    value = text.strip().lower()
    if value in ("", "any", "all"):
        return None
    if value in ("yes", "no"):
        return value == "yes"
    raise ValueError(f"{text!r} is not one of any, yes, no")


def parse_statuses(text: str) -> tuple[str, ...] | None:
    values = tuple(dict.fromkeys(v.strip().lower() for v in text.split(",") if v.strip()))
    if not values or values == ("any",):
        return None
    unknown = [v for v in values if v not in schema.STATUSES]
    if unknown:
        raise ValueError(f"unknown status {', '.join(unknown)} (known: {', '.join(schema.STATUSES)})")
    return values


def like(text: str) -> str:
    """A LIKE pattern that matches `text` anywhere, its own % and _ taken literally (ESCAPE '\\')."""
    return "%" + re.sub(r"([\\%_])", r"\\\1", text) + "%"


@dataclass(frozen=True)
class ExamFilter:
    reviewed: bool | None = None
    positive: bool | None = None
    correct: bool | None = None
    region: str | None = None
    statuses: tuple[str, ...] | None = None
    search: str | None = None
    search_people: bool = True  # False: search only matches UIDs and accession numbers (no identity oracle)
    diagnostic: str | None = None
    radiologist: str | None = None
    radiologists: tuple[str, ...] | None = None  # any of these names (a user's initials, resolved)
    severity: Interval | None = None  # the graded report's
    ai_severity: Interval | None = None
    confidence: Interval | None = None
    sort: str = "newest"
    echo: dict[str, Any] = field(default_factory=dict, compare=False)  # the filters as given, for the answer

    def where(self, threshold: int) -> tuple[str, dict[str, Any]]:
        """The WHERE clause (over `exams e`) and its parameters."""
        parts: list[str] = []
        params: dict[str, Any] = {"t": threshold}
        if self.reviewed is not None:
            parts.append(REVIEWED_SQL if self.reviewed else NOT_REVIEWED_SQL)
        if self.positive is not None:
            parts.append(AI_POSITIVE_SQL if self.positive else "(e.ai_severity >= 0 AND e.ai_severity < :t)")
        if self.correct is not None:
            parts.append(f"{CORRECT_SQL} = :correct")
            params["correct"] = int(self.correct)
        if self.region:
            parts.append("e.region LIKE :region ESCAPE '\\'")
            params["region"] = like(self.region)
        if self.statuses:
            names = [f"status{i}" for i in range(len(self.statuses))]
            parts.append(f"e.status IN ({', '.join(':' + n for n in names)})")
            params.update(zip(names, self.statuses))
        if self.search and _IDENTIFIER.match(self.search):
            # A whole UID, CNP or other number: found exactly, through indexes (a part of one would mean a scan).
            params["exact"] = self.search.strip()
            people = (" OR e.cnp IN (SELECT cnp FROM patients WHERE cnp = :exact OR patient_id = :exact "
                      "OR id = :exact)") if self.search_people else ""
            parts.append(f"(e.uid = :exact OR e.id = :exact{people})")
        elif self.search:
            params["q"] = like(self.search)
            exam_match = "e.uid LIKE :q ESCAPE '\\' OR e.id LIKE :q ESCAPE '\\'"
            if self.search_people:
                # The name the exam arrived with too: a patient known under another name is found by either.
                parts.append(f"({exam_match} OR e.patient_name LIKE :q ESCAPE '\\' "
                             "OR e.cnp IN (SELECT cnp FROM patients WHERE name LIKE :q ESCAPE '\\' "
                             "OR cnp LIKE :q ESCAPE '\\' OR patient_id LIKE :q ESCAPE '\\' OR id LIKE :q ESCAPE '\\'))")
            else:
                parts.append(f"({exam_match})")
        if self.diagnostic:
            parts.append("e.diagnostic = LOWER(:diagnostic)")
            params["diagnostic"] = self.diagnostic.strip()
        if self.radiologist:
            parts.append("e.radiologist = :radiologist COLLATE NOCASE")
            params["radiologist"] = self.radiologist.strip()
        if self.radiologists is not None:
            names = [f"rad{i}" for i in range(len(self.radiologists))]
            parts.append(f"e.radiologist COLLATE NOCASE IN ({', '.join(':' + n for n in names)})" if names else "0")
            params.update(zip(names, self.radiologists))
        for name, interval, column in (("severity", self.severity, "rad_severity"),
                                       ("ai_severity", self.ai_severity, "ai_severity"),
                                       ("confidence", self.confidence, "ai_confidence")):
            if interval is not None:
                parts.append(f"e.{column} BETWEEN :{name}_low AND :{name}_high")
                params[f"{name}_low"], params[f"{name}_high"] = interval.low, interval.high
        return (" AND ".join(parts) or "1"), params

    def order(self) -> str:
        return _SORTS[self.sort]

    @property
    def follows_dates(self) -> bool:
        """True when the worklist index alone answers the filter in date order (nothing needs the patients table or
        the report copies' own indexes)."""
        return not (self.search or self.diagnostic or self.radiologist or self.radiologists is not None)
