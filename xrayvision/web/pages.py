"""The people's pages: Jinja2 templates (autoescaped) around one layout, behind auth like every route that shows
patient data. The pages carry no data of their own: their scripts (files under /static, never inline) read the JSON
API and the /ws feed and build the DOM from text, so a Content-Security-Policy of our own origin holds."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import aiohttp_jinja2
import jinja2
from aiohttp import web

from .. import __version__, resources
from ..files import file_inside
from ..keys import SETTINGS, USER
from .errors import NotFound
from .present import ADMIN

# Pico draws its checkboxes and select arrows as data: SVGs, hence img-src data:; everything else is our own origin.
CSP: Final = ("default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
              "frame-ancestors 'none'")
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",  # a page names its user; the data comes through the API anyway
}


@dataclass(frozen=True)
class Page:
    path: str
    template: str
    title: str
    nav: str  # which navigation entry is current
    route: str  # the route's name


PAGES: Final = (
    Page("/", "dashboard.html", "Worklist", "dashboard", "dashboard"),
    Page("/check", "check.html", "Report check", "check", "check"),
    Page("/about", "about.html", "About", "about", "about"),
    Page("/stats", "stats.html", "Statistics", "stats", "stats"),
    Page("/stats/radiologists", "stats.html", "Radiologists", "stats", "stats_radiologists"),
    Page("/stats/diagnostics", "stats.html", "Diagnostics", "stats", "stats_diagnostics"),
    Page("/stats/insights", "stats.html", "Insights", "stats", "stats_insights"),
)
STATS_LINKS: Final = tuple((p.path, p.title) for p in PAGES if p.nav == "stats")


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _handler(page: Page) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        settings = request.app[SETTINGS]
        user = request[USER]
        context = {
            "page": page,
            "user": {"name": user.name, "role": user.role, "admin": user.role == ADMIN},
            "stats_links": STATS_LINKS,
            "version": __version__,
            "fhir_configured": bool(settings.fhir.url),
            "severity_threshold": settings.processing.severity_threshold,
        }
        response = aiohttp_jinja2.render_template(page.template, request, context)
        response.headers.update(SECURITY_HEADERS)
        return response

    handler.__name__ = f"page_{page.route}"
    return handler


async def favicon(request: web.Request) -> web.StreamResponse:
    path = await asyncio.to_thread(file_inside, resources.folder("static"), "favicon.ico")
    if path is None:
        raise NotFound("no favicon")
    return web.FileResponse(path, headers={"Content-Type": "image/x-icon", "Cache-Control": "public, max-age=86400"})


async def static_file(request: web.Request) -> web.StreamResponse:
    """/static/{filename}. Not aiohttp's add_static, which answers a missing file with an empty 404 and a name too
    long for the file system with a 500: here every refusal is our JSON 404."""
    path = await asyncio.to_thread(file_inside, resources.folder("static"), request.match_info["filename"])
    if path is None:
        raise NotFound("Not Found")
    return web.FileResponse(path)


def setup_pages(app: web.Application) -> None:
    """Templates, page routes, the favicon and /static/."""
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(resources.folder("templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name fails loudly instead of rendering as nothing
        trim_blocks=True,
        lstrip_blocks=True,
        default_helpers=False,
    )
    for page in PAGES:
        app.router.add_get(page.path, _handler(page), name=f"page_{page.route}")
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/static/{filename:.+}", static_file, name="static")


# build_app calls setup_routes on each web module; for this one that is the whole setup.
setup_routes = setup_pages
