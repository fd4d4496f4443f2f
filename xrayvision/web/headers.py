"""Cache-Control for the API: its answers carry names and personal numbers, so no cache (the browser's included)
keeps them. Pages and images set their own."""
from __future__ import annotations

from aiohttp import web

from .ratelimit import is_api


async def _no_store(request: web.Request, response: web.StreamResponse) -> None:
    if is_api(request.path):
        response.headers["Cache-Control"] = "no-store"


def setup_headers(app: web.Application) -> None:
    # A signal rather than a middleware, so that errors shaped by error_middleware and aiohttp's own get it too.
    app.on_response_prepare.append(_no_store)
