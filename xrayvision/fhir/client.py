"""One aiohttp session to the hospital's FHIR server: auth, timeouts, JSON, Bundle paging and the server's health."""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import os
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from xrayvision.config import FHIRSettings
from xrayvision.privacy import loggable_url

log = logging.getLogger(__name__)

MAX_PAGES = 10  # pages of one search followed by their `next` link; a search of ours matches a handful
PAGE_SIZE = 50
MAX_BODY = 4 * 1024 * 1024  # bytes of one answer: a report with an embedded PDF fits; parsing it costs the loop ~0.1 s
JSON_IN_THREAD = 256 * 1024  # larger answers are parsed off the event loop
PRACTITIONER_CACHE = 512
DOWN_STATUSES = frozenset({401, 403, 407, 429})  # the server (or our credentials) is the problem, not the exam


class FHIRError(Exception):
    """The server could not answer. str(): an operator-readable reason without patient data."""

    def __init__(self, reason: str, *, server_down: bool = True) -> None:
        super().__init__(reason)
        self.server_down = server_down


def _iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def outcome_issues(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(severity, code) of each issue of an OperationOutcome; its diagnostics may quote patient data, so not kept."""
    issues = body.get("issue")
    if not isinstance(issues, list):
        return [("error", "invalid")]
    return [(str(i.get("severity", "error")), str(i.get("code", ""))) for i in issues if isinstance(i, dict)]


def outcome_is_error(body: dict[str, Any]) -> bool:
    return any(severity in ("error", "fatal") for severity, _ in outcome_issues(body))


async def _read_bounded(resp: aiohttp.ClientResponse) -> bytes | None:
    """The body, or None past MAX_BODY (read no further: a peer does not choose our memory use)."""
    if (resp.content_length or 0) > MAX_BODY:
        return None
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class FHIRClient:
    """The session is made in start() and closed in stop(); every request updates the health that status() shows."""

    def __init__(self, settings: FHIRSettings) -> None:
        self.settings = settings
        self.base = settings.url.rstrip("/")
        # the his flavour's resources live under {url}/fhir; the r4 flavour's URL is the FHIR base itself
        self.resource_base = self.base + "/fhir" if settings.flavour == "his" else self.base
        self._session: aiohttp.ClientSession | None = None
        self.reachable: bool | None = None
        self.last_success: dt.datetime | None = None
        self.last_error: str | None = None
        self.since: dt.datetime | None = None
        self.requests = 0
        self.practitioners: OrderedDict[str, str] = OrderedDict()  # Practitioner id -> name, least recent first
        self._foreign_logged: set[tuple[str, str, int | None]] = set()

    async def start(self) -> None:
        if self._session is not None:
            return
        headers = {"Accept": "application/fhir+json, application/json"}
        if self.settings.token:
            headers["Authorization"] = f"Bearer {self.settings.token}"
        elif self.settings.username:
            pair = f"{self.settings.username}:{self.settings.password}".encode()  # UTF-8, as RFC 7617 allows
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        # redirects are not followed (see _get), so these headers go to FHIR_URL's server and its own next pages only
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
                                              headers=headers)

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # health

    def _mark(self, ok: bool, error: str = "") -> None:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        if ok:
            self.last_success = now
        else:
            self.last_error = error
        if self.reachable is not ok:
            self.since = now
            if self.reachable is not None or not ok:
                level = logging.INFO if ok else logging.WARNING
                log.log(level, "FHIR server %s is %s", loggable_url(self.base),
                        "reachable again" if ok else f"unreachable: {error}")
        self.reachable = ok

    def status(self) -> dict[str, Any]:
        return {"url": loggable_url(self.settings.url), "flavour": self.settings.flavour, "reachable": self.reachable,
                "last_success": _iso(self.last_success), "last_error": self.last_error, "since": _iso(self.since)}

    async def probe(self) -> bool:
        """r4: {url}/metadata must be a CapabilityStatement; his: {url}/fhir/Metadata must answer 200 (the facade's
        own health check). Any 4xx is the server being unusable here."""
        his = self.settings.flavour == "his"
        url = self.base + ("/fhir/Metadata" if his else "/metadata")
        try:
            body = await self._get(url, None, own=False, missing_ok=False, json_body=not his)
            if not his and (body or {}).get("resourceType") != "CapabilityStatement":
                raise FHIRError("metadata: not a CapabilityStatement")
        except FHIRError as exc:
            self._mark(False, str(exc))
            return False
        self._mark(True)
        return True

    # requests

    async def get(self, url: str, params: dict[str, Any] | list[tuple[str, str]] | None = None, *,
                  own: bool = True, missing_ok: bool = False, searching: bool = False) -> dict[str, Any] | None:
        """The JSON object at `url`. `own`: a search about one exam, so a 4xx is that exam's problem (server_down
        False), not the server's. `missing_ok`: 404/410 answer None (a read of something that is not there).
        `searching`: a 404 or 405 means there is no such search here (a wrong FHIR_URL), which is the server's."""
        try:
            body = await self._get(url, params, own=own, missing_ok=missing_ok, searching=searching)
        except FHIRError as exc:
            self._mark(not exc.server_down, str(exc))  # a 4xx about one exam is an answer: the server is up
            raise
        self._mark(True)
        return body

    async def _get(self, url: str, params: Any, *, own: bool, missing_ok: bool, searching: bool = False,
                   json_body: bool = True) -> dict[str, Any] | None:
        if self._session is None:
            raise FHIRError("FHIR client not started")
        self.requests += 1
        kind = self._kind(url)
        try:
            async with self._session.get(url, params=params, allow_redirects=False) as resp:
                status = resp.status
                body = await _read_bounded(resp)
        except TimeoutError:
            raise FHIRError(f"{kind}: no answer within {self.settings.timeout:g} s") from None
        except aiohttp.ClientConnectorError as exc:  # its text names the host only, never the query
            error = exc.os_error
            why = os.strerror(error.errno) if error.errno else (error.strerror or type(error).__name__)
            raise FHIRError(f"{kind}: cannot connect: {why}") from None
        except aiohttp.ClientError as exc:  # others may quote the URL, whose query holds a patient's number
            raise FHIRError(f"{kind}: connection failed: {type(exc).__name__}") from None
        if body is None:  # this answer's data, not the server, is the problem
            raise FHIRError(f"{kind}: answer larger than {MAX_BODY} bytes", server_down=False)
        if status in (404, 410) and missing_ok:
            return None
        if 300 <= status < 400:
            raise FHIRError(f"{kind}: HTTP {status} redirect (set FHIR_URL to the final address)")
        if not json_body and status < 400:
            return {}
        try:
            if len(body) > JSON_IN_THREAD:
                parsed = await asyncio.to_thread(json.loads, body)
            else:
                parsed = json.loads(body) if body.strip() else None
        except (ValueError, UnicodeDecodeError):
            parsed = False
        if status >= 400:
            down = status >= 500 or status in DOWN_STATUSES or not own or (searching and status in (404, 405))
            detail = ""
            if isinstance(parsed, dict) and parsed.get("resourceType") == "OperationOutcome":
                detail = " (" + ", ".join(f"{s} {c}".strip() for s, c in outcome_issues(parsed)) + ")"
            raise FHIRError(f"{kind}: HTTP {status}{detail}", server_down=down)
        if parsed is False or (parsed is not None and not isinstance(parsed, dict)):
            raise FHIRError(f"{kind}: the answer is not a JSON object")
        return parsed

    def _kind(self, url: str) -> str:
        """The resource type (or 'metadata') a URL asks for: messages name it, never an id or a search value."""
        rest = urlsplit(url).path[len(urlsplit(self.resource_base).path):].strip("/")
        return rest.split("/")[0] or "request"

    async def search(self, url: str, params: dict[str, Any] | list[tuple[str, str]], *,
                     own: bool = True, outcome_down: bool = True) -> list[dict[str, Any]]:
        """The matching resources of a search, following the Bundle's `next` link (only to FHIR_URL's own scheme,
        host and port: credentials go nowhere else) for at most MAX_PAGES pages. An answer that is one resource
        (some facades do that) is a list of one; an information-only OperationOutcome is no match, an error one a
        FHIRError whose server_down is `outcome_down`."""
        found: list[dict[str, Any]] = []
        body = await self.get(url, params, own=own, searching=True)
        for _page in range(MAX_PAGES):
            if body is None:
                return found
            kind = body.get("resourceType")
            if kind == "OperationOutcome":
                if outcome_is_error(body):
                    codes = ", ".join(f"{s} {c}".strip() for s, c in outcome_issues(body))
                    raise FHIRError(f"search answered an OperationOutcome ({codes})", server_down=outcome_down)
                return found
            if kind != "Bundle":
                if isinstance(kind, str):
                    found.append(body)
                return found
            found.extend(self._matches(body))
            next_url = self._next(body)
            if next_url is None:
                return found
            body = await self.get(next_url, own=own, searching=True)
        log.warning("FHIR search stopped after %d pages", MAX_PAGES)
        return found

    @staticmethod
    def _matches(bundle: dict[str, Any]) -> list[dict[str, Any]]:
        """The `match` resources of one Bundle page; a garbled shape is this exam's answer being unusable (a
        FHIRError with server_down False), never another exception."""
        entries = bundle.get("entry")
        if entries is None:
            return []
        if not isinstance(entries, list):
            raise FHIRError("search answered a Bundle whose entry is not a list", server_down=False)
        found = []
        for entry in entries:
            if not isinstance(entry, dict):
                raise FHIRError("search answered a Bundle entry that is not an object", server_down=False)
            resource, search = entry.get("resource"), entry.get("search")
            if resource is not None and not isinstance(resource, dict):
                raise FHIRError("search answered a Bundle entry whose resource is not an object", server_down=False)
            if search is not None and not (isinstance(search, dict) and isinstance(search.get("mode", ""), str)):
                raise FHIRError("search answered a Bundle entry whose search is malformed", server_down=False)
            if resource is not None and (search or {}).get("mode", "match") == "match":
                found.append(resource)
        return found

    def _next(self, bundle: dict[str, Any]) -> str | None:
        """The Bundle's `next` URL when it is one to follow: None without one, or (logged once per server) when it
        points at another server; FHIRError (server_down False) when the links are garbled."""
        links = bundle.get("link")
        if links is None:
            return None
        if not isinstance(links, list) or not all(isinstance(link, dict) for link in links):
            raise FHIRError("search answered a Bundle whose link is malformed", server_down=False)
        next_url = next((link.get("url") for link in links if link.get("relation") == "next"), None)
        if next_url is None:
            return None
        if not isinstance(next_url, str) or not next_url:
            raise FHIRError("search answered a Bundle whose next link has no URL", server_down=False)
        try:
            parts = urlsplit(next_url)
            origin = _origin(next_url)
        except ValueError:
            raise FHIRError("search answered a Bundle whose next link is not a valid URL", server_down=False) from None
        if parts.username is not None or parts.password is not None:
            raise FHIRError("search answered a Bundle whose next link carries credentials", server_down=False)
        if origin != _origin(self.base):
            if origin not in self._foreign_logged:
                self._foreign_logged.add(origin)
                log.warning("FHIR server's next page is on another server (%s://%s:%s); not followed", *origin)
            return None
        return next_url

    def remember_practitioner(self, pid: str, name: str) -> None:
        self.practitioners[pid] = name
        self.practitioners.move_to_end(pid)
        while len(self.practitioners) > PRACTITIONER_CACHE:
            self.practitioners.popitem(last=False)
