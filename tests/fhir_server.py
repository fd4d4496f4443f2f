"""A fault-injecting FHIR server for the tests (aiohttp on loopback, real HTTP and FHIR JSON): what a real server
will not do on demand. It serves a small store of resources both as standard R4 searches (under /fhir) and as the
reference HIS's facade (q, dt, type, region, the report read by its request's id), pages its Bundles, and fails
as told: hang, 500, not JSON, an OperationOutcome. It counts and keeps every request.

Resources are stored as given, unchecked (so malformed ones can be served). A resource's `_facade` key, never
served, holds what the facade's searches match on: {"type": "radio", "region": "chest", "day": "YYYY-MM-DD"}.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from yarl import URL

FHIR_JSON = "application/fhir+json"


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text or "")
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _time(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _ref_id(reference: Any) -> str:
    return str((reference or {}).get("reference", "")).rsplit("/", 1)[-1]


def _in_window(value: str | None, bounds: list[str]) -> bool:
    if not value:
        return False
    try:
        moment = _time(value)
    except ValueError:
        return True  # served anyway: what the client makes of a malformed resource is what is tested
    for bound in bounds:
        prefix, when = bound[:2], _time(bound[2:])
        if (prefix == "ge" and moment < when) or (prefix == "le" and moment > when):
            return False
    return True


def outcome(severity: str, code: str, text: str = "") -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": code, "diagnostics": text}]}


@dataclass
class Seen:
    path: str
    query: dict[str, list[str]]
    authorization: str


@dataclass
class FaultServer:
    """fault: None (answer), 'hang', '500', '400', 'garbage' (not JSON), 'outcome-error' and 'outcome-info' (these
    two on searches only).
    page_size: entries per Bundle page; next_base: the root (scheme://host:port) the `next` link points at
    (default: this server); mangle: called on each search Bundle before it is served (to garble its shape)."""
    fault: str | None = None
    metadata: str | None = None  # the metadata route's body as text (e.g. a facade's HTML) instead of JSON
    page_size: int = 50
    next_base: str | None = None
    mangle: Callable[[dict[str, Any]], None] | None = None
    lenient: set[str] = field(default_factory=set)  # search parameters ignored (as a lenient server may)
    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""  # http://127.0.0.1:N (the his flavour's FHIR_URL); the r4 base is url + '/fhir'
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    @property
    def requests(self) -> int:
        return len(self.seen)

    @property
    def base(self) -> str:
        return self.url + "/fhir"

    def add(self, *resources: dict[str, Any]) -> None:
        for resource in resources:
            self.resources.setdefault(resource["resourceType"], {})[resource["id"]] = resource

    async def start(self) -> FaultServer:
        app = web.Application()
        app.router.add_get("/fhir/{kind}", self._search)
        app.router.add_get("/fhir/{kind}/{id}", self._read)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        self.release.set()  # let hanging handlers go
        if self._runner is not None:
            await self._runner.cleanup()

    # handlers

    async def _fault(self, request: web.Request) -> web.Response | None:
        self.seen.append(Seen(request.path, {k: request.query.getall(k) for k in request.query},
                              request.headers.get("Authorization", "")))
        if self.fault == "hang":
            await self.release.wait()
        if self.fault == "500":
            return web.json_response(outcome("fatal", "exception", "boom"), status=500, content_type=FHIR_JSON)
        if self.fault == "400":
            return web.json_response(outcome("error", "invalid", "bad search"), status=400, content_type=FHIR_JSON)
        if self.fault == "garbage":
            return web.Response(text="<html>proxy error</html>", content_type="text/html")
        return None

    @staticmethod
    def _json(body: dict[str, Any], status: int = 200) -> web.Response:
        return web.Response(text=json.dumps(body), status=status, content_type=FHIR_JSON)

    @staticmethod
    def _served(resource: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in resource.items() if k != "_facade"}

    async def _read(self, request: web.Request) -> web.Response:
        if (failed := await self._fault(request)) is not None:
            return failed
        resource = self.resources.get(request.match_info["kind"], {}).get(request.match_info["id"])
        if resource is None:
            return self._json(outcome("error", "not-found"), status=404)
        return self._json(self._served(resource))

    async def _search(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        if (failed := await self._fault(request)) is not None:
            return failed
        if kind.lower() == "metadata":
            if self.metadata is not None:
                return web.Response(text=self.metadata, content_type="text/html")
            return self._json({"resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
                               "fhirVersion": "4.0.1", "format": ["json"]})
        if self.fault == "outcome-error":
            return self._json(outcome("error", "processing", "search failed"))
        if self.fault == "outcome-info":
            return self._json(outcome("information", "informational", "nothing found"))
        query = request.query
        matches = [r for r in self.resources.get(kind, {}).values() if self._matches(kind, r, query)]
        offset = int(query.get("_offset", "0"))
        page = matches[offset:offset + self.page_size]
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(matches),
                                  "entry": [{"resource": self._served(r), "search": {"mode": "match"}} for r in page],
                                  "link": [{"relation": "self", "url": str(request.url)}]}
        if offset + self.page_size < len(matches):
            params = [(k, v) for k in query for v in query.getall(k) if k != "_offset"]
            params.append(("_offset", str(offset + self.page_size)))
            next_url = URL(self.next_base or self.url).with_path(request.path).with_query(params)
            bundle["link"].append({"relation": "next", "url": str(next_url)})
        if self.mangle is not None:
            self.mangle(bundle)
        return self._json(bundle)

    def _matches(self, kind: str, r: dict[str, Any], query: Any) -> bool:
        facade = r.get("_facade", {})
        for key in set(query) - {"_count", "_offset"} - self.lenient:
            values = query.getall(key)
            value = values[0]
            if key == "q":  # the facade: a CNP, or 'Last First Middle'
                ids = [i.get("value") for i in r.get("identifier", [])]
                names = [" ".join([n.get("family", ""), *n.get("given", [])]) for n in r.get("name", [])]
                if value not in ids and _fold(value) not in {_fold(n) for n in names}:
                    return False
            elif key == "identifier":
                system, _, val = value.rpartition("|") if "|" in value else (None, "", value)
                if not any(i.get("value") == val and (system is None or i.get("system") == system)
                           for i in r.get("identifier", [])):
                    return False
            elif key == "family":
                if not any(_fold(n.get("family", "")).startswith(_fold(value)) for n in r.get("name", [])):
                    return False
            elif key == "given":
                if not any(_fold(g).startswith(_fold(value)) for n in r.get("name", []) for g in n.get("given", [])):
                    return False
            elif key == "birthdate":
                if r.get("birthDate") != value:
                    return False
            elif key in ("subject", "patient"):
                if _ref_id(r.get("subject")) != value.rsplit("/", 1)[-1]:
                    return False
            elif key == "based-on":
                if value.rsplit("/", 1)[-1] not in {_ref_id(b) for b in r.get("basedOn", [])}:
                    return False
            elif key == "authored":
                if not _in_window(r.get("authoredOn"), values):
                    return False
            elif key == "date":
                if not _in_window(r.get("effectiveDateTime"), values):
                    return False
            elif key == "dt":  # the facade: the exam's naive local time; its day must be the request's
                if facade.get("day") != value[:10]:
                    return False
            elif key in ("type", "region"):
                if facade.get(key) != value:
                    return False
            else:
                return False  # a parameter this server does not know matches nothing, visibly
        return True
