"""Redaction of what identifies a person, for users who may not see it."""
from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit


def initials(name: str | None) -> str:
    """'Popescu Ion' -> 'P.I.'; empty -> ''."""
    parts = [p for p in re.split(r"[\s^\-]+", name or "") if p]
    return "".join(p[0].upper() + "." for p in parts)


def mask_id(value: str | None) -> str:
    """Keep the last four characters only: in a CNP those are county, serial and check digit, not birth date or sex."""
    value = value or ""
    return "*" * max(len(value) - 4, 0) + value[-4:] if len(value) > 4 else "*" * len(value)


def loggable_url(url: str) -> str:
    """The URL without a password in it (a URL may carry credentials; the log must not)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
