"""Resources checked against the R4B models of fhir.resources, and the small readings taken from them."""
from __future__ import annotations

import datetime as dt
import logging
import unicodedata
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

log = logging.getLogger(__name__)

MODULES = {"Patient": "patient", "ServiceRequest": "servicerequest", "DiagnosticReport": "diagnosticreport",
           "Practitioner": "practitioner"}


class Malformed(Exception):
    """A resource the R4B model refuses. str(): its type and the offending fields' names, never their values."""


@cache
def _model(kind: str) -> Any:
    module = __import__(f"fhir.resources.R4B.{MODULES[kind]}", fromlist=[kind])
    return getattr(module, kind)


def parse(kind: str, data: Any) -> Any:
    """The R4B model of `data`, which must be a `kind`; Malformed (logged at WARNING) otherwise."""
    if not isinstance(data, dict) or data.get("resourceType") != kind:
        got = data.get("resourceType") if isinstance(data, dict) else type(data).__name__
        reason = f"malformed {kind}: got {str(got)[:40]!r}"
    else:
        try:
            return _model(kind).model_validate(data)
        except ValidationError as exc:
            reason = f"malformed {kind}: {_fields(exc)}"
        except (ValueError, TypeError) as exc:  # a model's own validators may raise these
            reason = f"malformed {kind}: {type(exc).__name__}"
    log.warning("FHIR %s", reason)
    raise Malformed(reason)


def _fields(exc: ValidationError) -> str:
    names: list[str] = []
    for error in exc.errors(include_input=False, include_url=False):
        name = ".".join(str(part) for part in error.get("loc", ()) if part != "__root__") or "resource"
        if error.get("type") == "base64_decode":
            name += " (bad base64)"
        if name not in names:
            names.append(name)
    return ", ".join(names[:8])


def ref_id(reference: Any, kind: str, base: str) -> str:
    """'abc' from a Reference to 'Practitioner/abc': relative, or absolute on `base` (FHIR_URL's own resources).
    '' for another type, or for a reference to another server: its ids name nothing on ours."""
    text = (getattr(reference, "reference", None) or "").split("/_history/")[0].rstrip("/")
    if "://" in text:
        try:
            ours, theirs = urlsplit(base.rstrip("/") + "/"), urlsplit(text)
            same = (theirs.scheme.lower(), theirs.hostname, theirs.port) == (ours.scheme.lower(), ours.hostname,
                                                                             ours.port)
        except ValueError:
            return ""
        if not same or theirs.username or not theirs.path.startswith(ours.path) or theirs.query:
            return ""
        text = theirs.path[len(ours.path):]
    parts = text.split("/")
    return parts[1] if len(parts) == 2 and parts[0] == kind and parts[1] else ""


def moment(value: Any) -> dt.datetime | None:
    """An R4B date/dateTime/instant as an aware UTC datetime (a date is its midnight UTC; no zone means UTC)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time(), dt.UTC)
    text = str(value)
    try:
        if len(text) == 4:
            return dt.datetime(int(text), 1, 1, tzinfo=dt.UTC)
        if len(text) == 7:
            return dt.datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=dt.UTC)
        return moment(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        return None


def fold(text: str | None) -> str:
    """For comparing names: case, accents and spacing ignored ('ŞTEFAN' equals 'Stefan', 'ștefan')."""
    decomposed = unicodedata.normalize("NFKD", text or "")
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).casefold().split())


def human_name(names: list[Any] | None) -> str:
    """A Practitioner's name: the first name's text, else its given names and family."""
    for name in names or []:
        if name.text:
            return name.text.strip()
        words = [*(name.given or []), name.family or ""]
        joined = " ".join(w.strip() for w in words if w and w.strip())
        if joined:
            return joined
    return ""


def concept_words(concept: Any) -> str:
    """A CodeableConcept as words: its text, else its codings' displays."""
    if concept is None:
        return ""
    if concept.text:
        return concept.text.strip()
    return ", ".join(c.display.strip() for c in concept.coding or [] if c.display and c.display.strip())
