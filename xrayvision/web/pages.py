"""The people's pages. They sit behind auth like every route that shows patient data; the dashboard itself comes
in a later version, until then each page says so."""
from __future__ import annotations

from aiohttp import web

from .. import resources
from .errors import NotFound, NotImplementedYet

PAGES = ("/", "/stats", "/stats/radiologists", "/stats/diagnostics", "/stats/insights", "/about", "/check")


async def page(request: web.Request) -> web.Response:
    raise NotImplementedYet("the dashboard pages are not available in this version; the JSON API is (/api/spec)")


async def favicon(request: web.Request) -> web.StreamResponse:
    path = resources.folder("static") / "favicon.ico"
    if not path.is_file():
        raise NotFound("no favicon")
    return web.FileResponse(path)


def setup_routes(app: web.Application) -> None:
    for path in PAGES:
        app.router.add_get(path, page)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_static("/static/", resources.folder("static"), name="static")
