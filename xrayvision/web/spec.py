"""`/api/spec`: the OpenAPI description of every route, with its server URL set to where it was asked from."""
from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from aiohttp import web

from .. import resources

SPEC = web.AppKey("spec", dict)


def _load() -> dict[str, Any]:
    return json.loads((resources.folder("static") / "spec.json").read_text(encoding="utf-8"))


async def spec(request: web.Request) -> web.Response:
    if SPEC not in request.app:
        request.app[SPEC] = await asyncio.to_thread(_load)
    document = copy.deepcopy(request.app[SPEC])
    document["servers"] = [{"url": f"{request.scheme}://{request.host}"}]
    return web.json_response(document)


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/spec", spec, name="spec")
