"""The report tools: grade (/api/check), critique (/api/analyse) or translate (/api/translate) a pasted report
through the model pool. A person is waiting: with no healthy endpoint they are told at once (503), never queued.
The heavy rate limit (ratelimit.HEAVY_PATHS) covers these three paths."""
from __future__ import annotations

import logging
import math
from typing import Any

from aiohttp import web

from ..analysis import textcalls
from ..keys import POOL, SETTINGS
from .errors import BadRequest, HTTPError, ServiceUnavailable
from .origin import json_body

logger = logging.getLogger(__name__)


class PayloadTooLarge(HTTPError):
    status = 413


class BadGateway(HTTPError):
    # The model was reached but gave nothing usable (invalid answers after every retry, or it refused the request):
    # 502, the upstream answered badly. When it could not be reached at all (timeouts, 5xx, no endpoint left after
    # failover) it is 503, like having no model: trying again later may help.
    status = 502


async def _report(request: web.Request) -> str:
    report = (await json_body(request)).get("report")
    if not isinstance(report, str) or not report.strip():
        raise BadRequest("report: a non-empty text is required")
    limit = request.app[SETTINGS].openai.report_max_chars
    if len(report) > limit:
        raise PayloadTooLarge(f"report: longer than {limit} characters")
    return report


def _retry_after(request: web.Request) -> dict[str, str]:
    # The pool probes endpoints every probe interval: sooner, nothing will have changed.
    return {"Retry-After": str(max(1, math.ceil(request.app[POOL].probe_interval)))}


async def _run(request: web.Request, kind: str) -> dict[str, Any]:
    report = await _report(request)
    pool, settings = request.app[POOL], request.app[SETTINGS]
    try:
        if kind == "check":
            graded = await textcalls.grade_report(pool, settings, report, wait=False)
            return graded.grade.model_dump()
        if kind == "analyse":
            return (await textcalls.critique(pool, settings, report, wait=False)).answer.model_dump()
        return (await textcalls.translate(pool, settings, report, wait=False)).answer.model_dump()
    except textcalls.NoModel as exc:
        raise ServiceUnavailable(f"no model available: {exc}", _retry_after(request)) from None
    except textcalls.TaskFailed as exc:
        logger.warning("Report tool %s failed: %s", kind, exc.reason)  # the reason carries no report text
        if exc.unreachable:
            raise ServiceUnavailable(f"no model available: {exc.reason}", _retry_after(request)) from None
        raise BadGateway(f"the model gave no usable answer: {exc.reason}") from None


async def check(request: web.Request) -> web.Response:
    """{report} -> {pathologic, severity, summary}."""
    return web.json_response(await _run(request, "check"))


async def analyse(request: web.Request) -> web.Response:
    """{report} -> the three-pass critique."""
    return web.json_response(await _run(request, "analyse"))


async def translate(request: web.Request) -> web.Response:
    """{report} -> {translation}."""
    return web.json_response(await _run(request, "translate"))


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/check", check, name="check_report")
    app.router.add_post("/api/analyse", analyse, name="analyse_report")
    app.router.add_post("/api/translate", translate, name="translate_report")
