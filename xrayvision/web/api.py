"""JSON API views: each reads the store and answers in the contract's shapes."""
from __future__ import annotations

import math

from aiohttp import web

from ..keys import SETTINGS, STORE, USER
from ..store import exams
from .errors import BadRequest, NotFound
from .present import exam_object


def _page(request: web.Request) -> int:
    raw = request.query.get("page", "1")
    try:
        page = int(raw)
    except ValueError:
        raise BadRequest(f"page: {raw!r} is not a whole number") from None
    if not 1 <= page <= 1_000_000:
        raise BadRequest("page: must be between 1 and 1000000")
    return page


async def list_exams(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    page = _page(request)
    size = settings.processing.page_size
    rows, total = await exams.list_exams(request.app[STORE], page, size)
    user = request[USER]
    return web.json_response({
        "exams": [exam_object(row, settings, user) for row in rows],
        "total": total,
        "pages": max(1, math.ceil(total / size)),
        "filters": {"page": page},
    })


async def get_exam(request: web.Request) -> web.Response:
    row = await exams.get_exam(request.app[STORE], request.match_info["uid"])
    if row is None:
        raise NotFound("Exam not found")
    return web.json_response(exam_object(row, request.app[SETTINGS], request[USER]))


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/exams", list_exams, name="exams")
    app.router.add_get("/api/exams/{uid}", get_exam, name="exam")
