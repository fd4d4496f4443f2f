"""JSON API reads: exams under filters, one exam, patients, regions, config. Each answers in the contract's shapes,
redacted for the caller's role."""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from ..clinical.cnp import age_on
from ..keys import SETTINGS, STORE, USER
from ..privacy import initials, loggable_url
from ..store import stats, worklist
from ..store.filters import SORTS, ExamFilter, parse_interval, parse_statuses, parse_yes_no
from .errors import BadRequest, Forbidden, NotFound
from .present import ADMIN, exam_object, patient_object, redact_patient

T = TypeVar("T")
MAX_TEXT = 200  # longest free-text filter accepted


def _page(request: web.Request) -> int:
    raw = request.query.get("page", "1")
    try:
        page = int(raw)
    except ValueError:
        raise BadRequest(f"page: {raw!r} is not a whole number") from None
    if not 1 <= page <= 1_000_000:
        raise BadRequest("page: must be between 1 and 1000000")
    return page


def _param(request: web.Request, name: str, parse: Callable[[str], T]) -> T | None:
    """A query parameter through its parser; a bad value is a 400 that names the parameter."""
    raw = request.query.get(name)
    if raw is None:
        return None
    if len(raw) > MAX_TEXT:
        raise BadRequest(f"{name}: longer than {MAX_TEXT} characters")
    try:
        return parse(raw)
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from None


def _text(raw: str) -> str | None:
    return raw.strip() or None


def _sort(raw: str) -> str:
    if raw not in SORTS:
        raise ValueError(f"{raw!r} is not one of {', '.join(SORTS)}")
    return raw


def exam_filter(request: web.Request) -> ExamFilter:
    admin = request[USER].role == ADMIN
    echo = {k: v for k, v in request.query.items() if k != "page"}
    return ExamFilter(
        reviewed=_param(request, "reviewed", parse_yes_no),
        positive=_param(request, "positive", parse_yes_no),
        correct=_param(request, "correct", parse_yes_no),
        region=_param(request, "region", _text),
        statuses=_param(request, "status", parse_statuses),
        search=_param(request, "search", _text),
        search_people=admin,
        diagnostic=_param(request, "diagnostic", _text),
        radiologist=_param(request, "radiologist", _text),
        severity=_param(request, "severity", lambda v: parse_interval(v, 0, 10)),  # the radiologist's
        ai_severity=_param(request, "ai_severity", lambda v: parse_interval(v, 0, 10)),
        confidence=_param(request, "confidence", lambda v: parse_interval(v, 0, 100)),
        sort=_param(request, "sort", _sort) or "newest",
        echo=echo,
    )


def _pages(total: int, size: int) -> int:
    return max(1, math.ceil(total / size))


async def list_exams(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    where = exam_filter(request)
    if where.radiologist and request[USER].role != ADMIN:
        # Users know radiologists by their initials only (/api/radiologists): those stand for every name they fit.
        wanted = where.radiologist.strip().upper()
        names = tuple(n for n in await worklist.radiologists(request.app[STORE]) if initials(n) == wanted)
        where = dataclasses.replace(where, radiologist=None, radiologists=names)
    page = _page(request)
    size = settings.processing.page_size
    threshold = settings.processing.severity_threshold
    rows, total = await worklist.list_exams(request.app[STORE], where, page, size, threshold)
    admin = request[USER].role == ADMIN
    return web.json_response({
        "exams": [exam_object(row, settings, admin=admin) for row in rows],
        "total": total,
        "pages": _pages(total, size),
        "filters": {**where.echo, "page": page},
    })


async def get_exam(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    row = await worklist.get_exam(request.app[STORE], request.match_info["uid"],
                                  settings.processing.severity_threshold)
    if row is None:
        raise NotFound("Exam not found")
    return web.json_response(exam_object(row, settings, admin=request[USER].role == ADMIN))


def _patient(row: Any, admin: bool) -> dict[str, Any]:
    today = dt.date.today()
    if row["birthdate"]:
        age = age_on(dt.date.fromisoformat(row["birthdate"]), today)
    else:
        age = -1 if row["last_age"] is None else int(row["last_age"])
    patient = patient_object(row, age=age)
    return patient if admin else redact_patient(patient)


async def list_patients(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    admin = request[USER].role == ADMIN
    search = _param(request, "search", _text)
    page = _page(request)
    size = settings.processing.page_size
    rows, total = await worklist.list_patients(request.app[STORE], search, admin, page, size)
    return web.json_response({
        "patients": [_patient(row, admin) for row in rows],
        "total": total,
        "pages": _pages(total, size),
        "filters": {"search": search or "", "page": page},
    })


async def get_patient(request: web.Request) -> web.Response:
    """A patient by personal number: for admins. A user gets the same 403 whether or not the person was examined
    (200 against 404 would tell who was here); they open a patient from an exam they see (exam_patient)."""
    if request[USER].role != ADMIN:
        raise Forbidden("looking a patient up by personal number is for admins; "
                        "open the patient of an exam with /api/exams/{uid}/patient")
    row, uids = await worklist.get_patient(request.app[STORE], request.match_info["cnp"])
    if row is None:
        raise NotFound("Patient not found")
    return web.json_response({**_patient(row, True), "exams": uids})


async def exam_patient(request: web.Request) -> web.Response:
    """The patient of an exam with all their exams (redacted for users): the way from an exam card to its patient's
    history, for every role. It tells nothing new: whoever sees the exam sees its patient."""
    admin = request[USER].role == ADMIN
    row, uids = await worklist.patient_of_exam(request.app[STORE], request.match_info["uid"])
    if row is None:
        raise NotFound("Exam not found")
    return web.json_response({**_patient(row, admin), "exams": uids})


async def regions(request: web.Request) -> web.Response:
    return web.json_response(await worklist.regions(request.app[STORE]))


async def radiologists(request: web.Request) -> web.Response:
    """The radiologists of the graded reports; users get each one's initials (once, however many share them)."""
    names = await worklist.radiologists(request.app[STORE])
    if request[USER].role != ADMIN:
        names = list(dict.fromkeys(initials(name) for name in names))
    return web.json_response(names)


async def statistics(request: web.Request) -> web.Response:
    """The AI against the radiologists, overall and per region, with trends in the site's time zone
    (docs/statistics.md defines every figure)."""
    settings = request.app[SETTINGS]
    return web.json_response(await stats.overall(request.app[STORE], settings.processing.severity_threshold,
                                                 settings.general.timezone))


def _shown_names(names: list[str]) -> dict[str, str]:
    """Each radiologist's name as users see it: initials, numbered when two people share them ('A.P. (2)')."""
    shown: dict[str, str] = {}
    taken: set[str] = set()
    for name in sorted(names, key=str.casefold):
        key, n = initials(name), 1
        while key in taken:
            n += 1
            key = f"{initials(name)} ({n})"
        shown[name] = key
        taken.add(key)
    return shown


async def radiologist_statistics(request: web.Request) -> web.Response:
    """Per radiologist; users get initials (two people with the same initials stay apart, numbered)."""
    groups = await stats.by_radiologist(request.app[STORE], request.app[SETTINGS].processing.severity_threshold)
    if request[USER].role != ADMIN:
        shown = _shown_names(list(groups))
        groups = {shown[name]: group for name, group in groups.items()}
    return web.json_response(groups)


async def radiologist_months(request: web.Request) -> web.Response:
    """{YYYY-MM: {radiologist: graded reports}} over the last 12 months of the site's time zone."""
    months = await stats.monthly(request.app[STORE], "radiologist", request.app[SETTINGS].general.timezone)
    if request[USER].role != ADMIN:
        shown = _shown_names(sorted({name for counts in months.values() for name in counts}))
        months = {month: {shown[name]: n for name, n in counts.items()} for month, counts in months.items()}
    return web.json_response(months)


async def insights(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    found = await stats.insights(request.app[STORE], settings.processing.severity_threshold,
                                 settings.general.timezone, settings.processing.age_groups)
    if request[USER].role != ADMIN:
        shown = _shown_names(list(found["radiologist_metrics"]))
        found["radiologist_metrics"] = {shown[name]: m for name, m in found["radiologist_metrics"].items()}
    return web.json_response(found)


async def diagnostic_months(request: web.Request) -> web.Response:
    """{YYYY-MM: {diagnosis: graded reports}} for the ten most frequent diagnoses over the last 12 months."""
    return web.json_response(await stats.monthly(request.app[STORE], "diagnostic",
                                                 request.app[SETTINGS].general.timezone, top=10))


async def diagnostic_statistics(request: web.Request) -> web.Response:
    return web.json_response(await stats.by_diagnostic(request.app[STORE],
                                                       request.app[SETTINGS].processing.severity_threshold))


async def diagnostics(request: web.Request) -> web.Response:
    return web.json_response(await worklist.diagnostics(request.app[STORE]))


async def severities(request: web.Request) -> web.Response:
    return web.json_response(await worklist.severities(request.app[STORE]))


async def config(request: web.Request) -> web.Response:
    """The reference's keys. Users see what the about page needs; the network's layout is for admins."""
    settings = request.app[SETTINGS]
    admin = request[USER].role == ADMIN
    # Admins see where the model and notifications go, never a password written into those URLs.
    endpoints = {e.name: loggable_url(f"{e.base_url}/chat/completions") for e in settings.openai.endpoints}
    shown: dict[str, Any] = {
        "AE_TITLE": settings.dicom.ae_title,
        "AE_PORT": settings.dicom.port,
        "MODEL_NAME": settings.openai.model_name,
        "DASHBOARD_PORT": settings.dashboard.port,
        "SEVERITY_THRESHOLD": settings.processing.severity_threshold,
        "PAGE_SIZE": settings.processing.page_size,
    }
    network = {
        "OPENAI_URL_PRIMARY": endpoints.get("pri", ""),
        "OPENAI_URL_SECONDARY": endpoints.get("sec", ""),
        "NTFY_URL": loggable_url(settings.notifications.ntfy_url),
        "REMOTE_AE_TITLE": settings.dicom.remote_ae_title,
        "REMOTE_AE_IP": settings.dicom.remote_ae_ip,
        "REMOTE_AE_PORT": settings.dicom.remote_ae_port,
    }
    return web.json_response({**shown, **(network if admin else dict.fromkeys(network))})


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/exams", list_exams, name="exams")
    app.router.add_get("/api/exams/{uid}", get_exam, name="exam")
    app.router.add_get("/api/exams/{uid}/patient", exam_patient, name="exam_patient")
    app.router.add_get("/api/patients", list_patients, name="patients")
    app.router.add_get("/api/patients/{cnp}", get_patient, name="patient")
    app.router.add_get("/api/regions", regions, name="regions")
    app.router.add_get("/api/stats", statistics, name="stats")
    app.router.add_get("/api/stats/radiologists", radiologist_statistics, name="stats_radiologists")
    app.router.add_get("/api/stats/diagnostics", diagnostic_statistics, name="stats_diagnostics")
    app.router.add_get("/api/stats/radiologists/monthly_trends", radiologist_months, name="stats_radiologist_months")
    app.router.add_get("/api/diagnostics/monthly_trends", diagnostic_months, name="diagnostic_months")
    app.router.add_get("/api/stats/insights", insights, name="insights")
    app.router.add_get("/api/radiologists", radiologists, name="radiologists")
    app.router.add_get("/api/diagnostics", diagnostics, name="diagnostics")
    app.router.add_get("/api/severity", severities, name="severity")
    app.router.add_get("/api/config", config, name="config")
