"""Decode the Romanian personal numeric code (CNP).

The CNP encodes birth date and sex, so it is a fallback when the DICOM
PatientBirthDate / PatientSex tags are missing or wrong.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

_WEIGHTS = "279146358279"

# First digit -> (century base, sex); None base = century not encoded.
_SEX_DIGIT: dict[str, tuple[int | None, str]] = {
    "1": (1900, "M"),
    "2": (1900, "F"),
    "3": (1800, "M"),
    "4": (1800, "F"),
    "5": (2000, "M"),
    "6": (2000, "F"),
    "7": (None, "M"),
    "8": (None, "F"),
    "9": (None, "O"),
}

_COUNTIES = frozenset([*range(1, 49), 51, 52, *range(70, 80), *range(90, 100)])


@dataclass(frozen=True)
class CNP:
    """A validated CNP and the fields decoded from it."""

    value: str
    birthdate: datetime.date
    sex: str
    county: int


def _control_digit(first12: str) -> int:
    rest = sum(int(d) * int(w) for d, w in zip(first12, _WEIGHTS)) % 11
    return 1 if rest == 10 else rest


def _make_date(year: int, month: int, day: int) -> datetime.date | None:
    try:
        return datetime.date(year, month, day)
    except ValueError:
        return None


def parse_cnp(value: str | None, today: datetime.date | None = None) -> CNP | None:
    """Return the decoded CNP, or None if ``value`` is not a valid CNP."""
    if not isinstance(value, str):
        return None
    digits = value.strip()
    # isdigit() alone accepts non-ASCII digits (e.g. full-width), hence isascii().
    if len(digits) != 13 or not (digits.isascii() and digits.isdigit()):
        return None
    if _control_digit(digits[:12]) != int(digits[12]):
        return None
    decoded = _SEX_DIGIT.get(digits[0])
    if decoded is None:
        return None
    base, sex = decoded
    if today is None:
        today = datetime.date.today()

    yy, month, day = int(digits[1:3]), int(digits[3:5]), int(digits[5:7])
    if base is not None:
        birthdate = _make_date(base + yy, month, day)
    else:
        # Foreigners' codes carry no century: prefer the most recent one
        # that is not in the future.
        birthdate = _make_date(2000 + yy, month, day)
        if birthdate is None or birthdate > today:
            birthdate = _make_date(1900 + yy, month, day)
    if birthdate is None or birthdate > today:
        return None

    county = int(digits[7:9])
    if county not in _COUNTIES:
        return None
    return CNP(value=digits, birthdate=birthdate, sex=sex, county=county)


def age_on(birthdate: datetime.date, when: datetime.date) -> int:
    """Completed years of age on ``when`` (0 if ``when`` precedes birth).

    A 29 February birthday counts as reached on 1 March in common years.
    """
    years = when.year - birthdate.year
    if (when.month, when.day) < (birthdate.month, birthdate.day):
        years -= 1
    return max(years, 0)
