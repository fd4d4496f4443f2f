"""Cross-site request forgery guard for /api: state-changing requests must come from our own pages and carry JSON.

A browser sends cached Basic credentials with any request to us, including a form another site submits, so
authentication alone does not prove that a radiologist meant the request. Two checks stop that:
- a browser names the page's origin in `Origin` on every cross-origin POST/PUT/PATCH/DELETE; if present it must be
  ours (requests without it come from non-browser clients, which cannot be tricked into sending credentials);
- the body must be declared JSON: a form or a no-CORS fetch can only send text/plain, urlencoded or multipart
  bodies, and sending application/json cross-origin takes a CORS preflight, which this server never grants.
"""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from yarl import URL

from .clients import peer_is_trusted
from .errors import BadRequest, Forbidden, UnsupportedMediaType

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SCHEMES = ("http", "https")

Origin = tuple[str, str, int]  # scheme, host (lower case), port (the scheme's default when not given)


def is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def parse_origin(text: str) -> Origin | None:
    """`scheme://host[:port]` as a comparable triple; None for "null", paths, credentials or anything else."""
    try:
        url = URL(text.strip())
    except ValueError:
        return None
    if (url.scheme not in SCHEMES or not url.host or url.port is None or url.user is not None
            or url.password is not None or url.raw_path not in ("", "/") or url.raw_query_string
            or url.raw_fragment):
        return None
    return url.scheme, url.host.lower(), url.port


def _last(values: list[str]) -> str:
    """The right-most of comma-separated header values: the one set by the proxy directly in front of us."""
    parts = [part.strip() for value in values for part in value.split(",") if part.strip()]
    return parts[-1] if parts else ""


def request_origin(request: web.Request) -> Origin | None:
    """The origin the client addressed: our scheme and Host header, or X-Forwarded-Proto and X-Forwarded-Host when
    (and only when) the peer is a trusted proxy."""
    scheme, host = request.scheme, request.host
    if peer_is_trusted(request):
        proto = _last(request.headers.getall("X-Forwarded-Proto", [])).lower()
        if proto in SCHEMES:
            scheme = proto
        host = _last(request.headers.getall("X-Forwarded-Host", [])) or host
    if not host:
        return None
    return parse_origin(f"{scheme}://{host}")


def check_origin(request: web.Request) -> None:
    """403 when the request names an origin that is not ours (usable for a WebSocket handshake as well)."""
    origins = request.headers.getall("Origin", [])
    if not origins:
        return
    own = request_origin(request)
    if len(origins) != 1 or own is None or parse_origin(origins[0]) != own:
        raise Forbidden("cross-origin request refused")


def is_json(content_type: str) -> bool:
    """application/json, parameters (charset=...) allowed."""
    return content_type.partition(";")[0].strip().lower() == "application/json"


def check_json(request: web.Request) -> None:
    """415 unless the request declares a JSON body. A request with neither a body nor a Content-Type (a bare POST
    or DELETE) passes: it has no body to be anything else, and a browser cannot send one cross-site without the
    Origin that check_origin() refuses."""
    content_type = request.headers.get("Content-Type")
    if content_type is None and not request.body_exists:
        return
    if content_type is None or not is_json(content_type):
        raise UnsupportedMediaType("expected a JSON body (Content-Type: application/json)")


@web.middleware
async def origin_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    if request.method in STATE_CHANGING and is_api(request.path):
        check_origin(request)
        check_json(request)
    return await handler(request)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
          type(None): "null"}


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object: 415 unless declared JSON, 400 for an empty body, bad JSON or a non-object.
    aiohttp's client_max_size caps the size (413)."""
    if not is_json(request.headers.get("Content-Type", "")):
        raise UnsupportedMediaType("expected a JSON body (Content-Type: application/json)")
    raw = await request.read()
    if not raw.strip():
        raise BadRequest("invalid JSON: empty body")
    try:
        # bytes: json detects UTF-8/16/32 itself; NaN and Infinity are not JSON, deep nesting is not data.
        value = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadRequest(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"invalid JSON: expected an object, got {_KINDS.get(type(value), 'a value')}")
    return value


def setup_origin(app: web.Application) -> None:
    """The CSRF guard's middleware (it keeps no state). Call it after setup_ratelimit and before setup_auth."""
    app.middlewares.append(origin_middleware)
