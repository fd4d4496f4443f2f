"""JSON API actions: a radiologist's review, another look, a report asked for again, and query/retrieve (still to
come: it answers a clear 501 instead of failing)."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import events
from ..keys import BUS, FETCHER, SETTINGS, STORE, USER
from ..store import queue, reviews, worklist
from .errors import BadRequest, Conflict, Forbidden, NotFound, NotImplementedYet
from .origin import json_body
from .present import ADMIN, exam_object


def _uid(body: dict[str, Any]) -> str:
    uid = body.get("uid")
    if not isinstance(uid, str) or not uid.strip():
        raise BadRequest("uid: a non-empty string is required")
    return uid.strip()


def _require_admin(request: web.Request) -> None:
    if request[USER].role != ADMIN:
        raise Forbidden("this action needs the admin role")


async def radreview(request: web.Request) -> web.Response:
    """{uid, normal}: the caller's verdict on an exam; it becomes reviewed and `correct` is measured against it."""
    body = await json_body(request)
    uid = _uid(body)
    normal = body.get("normal")
    if not isinstance(normal, bool):
        raise BadRequest("normal: true or false is required")
    user = request[USER]
    store = request.app[STORE]
    if not await reviews.add_review(store, uid, user.name, abnormal=not normal):
        raise NotFound("Exam not found")
    settings = request.app[SETTINGS]
    row = await worklist.get_exam(store, uid, settings.processing.severity_threshold)
    if row is not None:
        # The event holds the whole exam; whoever passes it on redacts it for its audience.
        request.app[BUS].publish(events.RADREVIEW, exam_object(row, settings, admin=True))
    return web.json_response({"status": "success", "message": f"exam marked {'normal' if normal else 'abnormal'}"})


async def requeue(request: web.Request) -> web.Response:
    """{uid}: analyse the exam again; its earlier answers stay as history."""
    uid = _uid(await json_body(request))
    outcome = await queue.requeue(request.app[STORE], uid)
    if outcome is queue.RequeueOutcome.NOT_FOUND:
        raise NotFound("Exam not found")
    if outcome is not queue.RequeueOutcome.REQUEUED:
        raise Conflict(f"cannot re-queue: the exam {outcome.value}")
    request.app[BUS].publish(events.REQUEUE, {"uid": uid, "status": "requeue"})
    return web.json_response({"status": "success", "message": "exam queued for another look"})


async def dicomquery(request: web.Request) -> web.Response:
    _require_admin(request)
    body = await json_body(request)
    hours = body.get("hours", 3)
    if isinstance(hours, bool) or not isinstance(hours, int) or not 1 <= hours <= 24 * 31:
        raise BadRequest("hours: a whole number from 1 to 744 is required")
    raise NotImplementedYet("query/retrieve from the PACS is not available in this version")


async def getrad(request: web.Request) -> web.Response:
    """{uid}: look for the exam's report on the FHIR server again, at once and afresh (its earlier tries
    forgotten; a report whose grading gave up is graded again). Answers at once; the result arrives as the
    radreport and radcheck events."""
    uid = _uid(await json_body(request))
    fetcher = request.app.get(FETCHER)
    if fetcher is None:
        raise Conflict("no FHIR server is configured ([fhir] FHIR_URL)")
    if not await fetcher.fetch_now(uid):
        raise NotFound("Exam not found")
    return web.json_response({"status": "success", "message": "report requested from the FHIR server"})


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/radreview", radreview, name="radreview")
    app.router.add_post("/api/requeue", requeue, name="requeue")
    app.router.add_post("/api/dicomquery", dicomquery, name="dicomquery")
    app.router.add_post("/api/getrad", getrad, name="getrad")
