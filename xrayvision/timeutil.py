"""UTC time as the store keeps it, and DICOM's local dates and times turned into it."""
from __future__ import annotations

import datetime as dt
import re

STORE_FORMAT = "%Y-%m-%d %H:%M:%S"
_TIME = re.compile(r"^(\d{2})(?::?(\d{2}))?(?::?(\d{2}))?")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def to_store(moment: dt.datetime) -> str:
    """An aware datetime as the store's UTC text."""
    return moment.astimezone(dt.UTC).strftime(STORE_FORMAT)


def from_store(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, STORE_FORMAT).replace(tzinfo=dt.UTC)


def iso_utc(text: str | None) -> str | None:
    """Store text as ISO 8601 with a Z, the API's form."""
    return None if not text else text.replace(" ", "T") + "Z"


def parse_da(value: object) -> dt.date | None:
    """A DICOM DA (YYYYMMDD, or the old YYYY.MM.DD) as a date, or None when absent or impossible."""
    digits = re.sub(r"[^0-9]", "", str(value or ""))
    if len(digits) != 8:
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


def parse_tm(value: object) -> dt.time | None:
    """A DICOM TM (HH, HHMM, HHMMSS[.frac], or the old HH:MM:SS) as a time, or None."""
    match = _TIME.match(str(value or "").strip())
    if not match:
        return None
    hour, minute, second = (int(g) if g else 0 for g in match.groups())
    if hour > 23 or minute > 59 or second > 60:
        return None
    return dt.time(hour, minute, min(second, 59))


def local_to_utc(day: dt.date, time: dt.time | None, zone: dt.tzinfo | None) -> dt.datetime:
    """A modality's local date and time in UTC; zone None means this machine's zone."""
    naive = dt.datetime.combine(day, time or dt.time())
    local = naive.replace(tzinfo=zone) if zone is not None else naive.astimezone()
    return local.astimezone(dt.UTC)


def utc_to_local(moment: dt.datetime, zone: dt.tzinfo | None) -> dt.datetime:
    return moment.astimezone(zone) if zone is not None else moment.astimezone()
