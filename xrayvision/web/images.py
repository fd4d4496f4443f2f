"""`/images/{file}`: rendered PNGs (and kept .dcm files) behind auth, never outside the image folder."""
from __future__ import annotations

import asyncio
import re

from aiohttp import web

from ..files import file_inside
from ..keys import SETTINGS
from .errors import NotFound

_NAME = re.compile(r"^[0-9][0-9.]{0,63}\.(png|dcm)$")
_TYPES = {"png": "image/png", "dcm": "application/dicom"}


async def image(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    match = _NAME.match(name)
    if not match:
        raise NotFound("Image not found")
    path = await asyncio.to_thread(file_inside, request.app[SETTINGS].general.images_dir, name)
    if path is None:
        raise NotFound("Image not found")
    return web.FileResponse(path, headers={
        "Content-Type": _TYPES[match.group(1)],
        # Patient images: kept by no cache, the browser's included (a shared workstation's disk outlives the visit).
        "Cache-Control": "private, no-store",
        "X-Content-Type-Options": "nosniff",
    })


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/images/{name}", image, name="image")
