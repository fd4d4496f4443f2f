"""Typed HTTP errors and the one place that turns any failure into `{"error": "..."}`."""
from __future__ import annotations

import json
import logging

from aiohttp import web

logger = logging.getLogger(__name__)


class HTTPError(Exception):
    status = 500

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(HTTPError):
    status = 400


class Unauthorized(HTTPError):
    status = 401


class Forbidden(HTTPError):
    status = 403


class NotFound(HTTPError):
    status = 404


class Conflict(HTTPError):
    status = 409


class UnsupportedMediaType(HTTPError):
    status = 415


class TooManyRequests(HTTPError):
    status = 429


class NotImplementedYet(HTTPError):
    status = 501


class ServiceUnavailable(HTTPError):
    status = 503


def error_body(message: str) -> dict[str, str]:
    return {"error": message}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error_body(message), status=status, headers=headers, dumps=json.dumps)


@web.middleware
async def error_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    try:
        return await handler(request)
    except HTTPError as exc:
        return error_response(exc.status, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's own 404/405/413... in the same shape as ours.
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate", "retry-after")}
        return error_response(exc.status, exc.reason, headers)
    except Exception:
        logger.exception("Unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal server error")
