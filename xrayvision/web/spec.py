"""`/api/spec`: the OpenAPI description of every route, with its server URL set to where it was asked from."""
from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from .. import resources

SPEC = web.AppKey("spec", dict)  # {"document": the parsed file}, filled on first use


def _load() -> dict[str, Any]:
    return json.loads((resources.folder("static") / "spec.json").read_text(encoding="utf-8"))


async def spec(request: web.Request) -> web.Response:
    # The cache is a dict made at setup: a started app's own state must not change (aiohttp warns, and the
    # test suite turns warnings into errors).
    cache = request.app[SPEC]
    if "document" not in cache:
        cache["document"] = await asyncio.to_thread(_load)
    # Only `servers` differs per request, so a shallow copy leaves the cached document untouched.
    return web.json_response({**cache["document"], "servers": [{"url": f"{request.scheme}://{request.host}"}]})


def setup_routes(app: web.Application) -> None:
    app[SPEC] = {}
    app.router.add_get("/api/spec", spec, name="spec")
