"""`/ws`: the live feed. Every event of the bus, and a heartbeat, goes to each browser as one JSON frame (the
contract's `dashboard`, `openai`, `timings`, `next_query` and, for a named event, `event`). A frame is encoded once
per audience, never once per client; each client has a bounded queue and its own writer, so a slow or stalled
browser is dropped and never slows the others. Events carry increasing ids: a client that reconnects with the last
id it saw gets what it missed."""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from aiohttp import WSMsgType, web

from .. import events, timeutil
from ..keys import BUS, FETCHER, POOL, SETTINGS, STORE, USER, WORKER
from ..privacy import initials
from ..store import schema
from ..tasks import cancel_and_wait
from .errors import BadRequest
from .origin import check_origin
from .present import ADMIN, redact_exam, redact_grade_event, redact_report_event

logger = logging.getLogger(__name__)

MAX_PENDING: Final = 64  # frames waiting for one client; past that the client is too slow and is dropped
HEARTBEAT: Final = 10.0  # seconds between state frames when nothing happens
COUNTS_REFRESH: Final = 0.2  # the header's counts are read again at most this often
PING: Final = 30.0  # WebSocket ping, so dead connections are noticed
CLOSE_TIMEOUT: Final = 2.0  # seconds a dropped client gets to take its close frame
RECENT_DAYS: Final = 7  # "processed" counts exams whose analysis finished in the last week
CONNECTED: Final = "connected"
RESYNC: Final = "resync"  # the client missed more than we keep: it should reload its state


@dataclass(eq=False)
class _Client:
    ws: web.WebSocketResponse
    admin: bool
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(MAX_PENDING))
    dropped: bool = False
    transport: asyncio.BaseTransport | None = None


class Hub:
    def __init__(self, app: web.Application, *, heartbeat: float | None = None) -> None:
        self.app = app
        self.heartbeat = HEARTBEAT if heartbeat is None else heartbeat  # seconds; shorter in tests
        self.clients: set[_Client] = set()
        self.counts: dict[str, int] = {}
        self.recent_done = 0
        self._refresh = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Task[None]] = set()  # closes of dropped clients, kept until done
        self._unsubscribe = lambda: None

    async def start(self) -> None:
        await self._read_counts()
        self._unsubscribe = self.app[BUS].subscribe(self._on_event)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeat(), name="ws-heartbeat"),
                       loop.create_task(self._counts_loop(), name="ws-counts")]

    async def stop(self) -> None:
        self._unsubscribe()
        await cancel_and_wait(*self._tasks)
        for client in list(self.clients):
            await client.ws.close(code=1001, message=b"server stopping")

    # --- state --------------------------------------------------------------------------------------------------
    async def _read_counts(self) -> None:
        store = self.app[STORE]
        rows = await store.fetch_all("SELECT status, COUNT(*) FROM exams GROUP BY status")
        self.counts = {status: n for status, n in rows}
        since = timeutil.to_store(timeutil.utc_now() - dt.timedelta(days=RECENT_DAYS))
        # By when the analysis finished (its answer's time), not when the exam was made: an old study analysed
        # today counts today.
        self.recent_done = int(await store.fetch_value(
            "SELECT COUNT(DISTINCT uid) FROM ai_reports WHERE created >= ?", (since,)) or 0)

    async def _counts_loop(self) -> None:
        """Counts follow events, but at most every COUNTS_REFRESH: a burst of events costs one query."""
        while True:
            await self._refresh.wait()
            self._refresh.clear()
            before = (dict(self.counts), self.recent_done)
            try:
                await self._read_counts()
            except Exception:
                logger.exception("Could not read the dashboard counts")
            if (self.counts, self.recent_done) != before:
                self.broadcast(None)
            await asyncio.sleep(COUNTS_REFRESH)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            self._refresh.set()
            self.broadcast(None)

    def state(self) -> dict[str, Any]:
        """The contract's frame without its event, as admins see it (_frames redacts it for users)."""
        worker = self.app[WORKER]
        settings = self.app[SETTINGS]
        counts = self.counts
        return {
            "id": self.app[BUS].last_id,
            "dashboard": {
                "queue_size": counts.get(schema.QUEUED, 0) + counts.get(schema.REQUEUE, 0),
                "check_queue_size": counts.get(schema.CHECK, 0),
                "processing": ", ".join(sorted(set(worker.processing.values()))) or None,
                "error_count": counts.get(schema.ERROR, 0),
                "ignore_count": counts.get(schema.IGNORE, 0),
                "success_count": self.recent_done,
            },
            "openai": self.app[POOL].status(),
            "timings": worker.timings(),
            "next_query": "Disabled" if settings.processing.no_query else None,
            "fhir": fhir_status(self.app),
        }

    # --- fan-out ------------------------------------------------------------------------------------------------
    def _on_event(self, event: events.Event) -> None:
        self._refresh.set()
        self.broadcast(None if event.name == events.STATE else event)

    def _frames(self, event: events.Event | None) -> tuple[str, str]:
        """The frame for admins and the one for users, each encoded once."""
        admin = self.state()
        user = {**admin, "openai": redact_endpoints(admin["openai"]), "fhir": {**admin["fhir"], "url": ""}}
        if event is not None:
            admin["id"] = user["id"] = event.id
            admin["event"] = _event_json(event)
            user["event"] = {**_event_json(event), "payload": redact_payload(event)}
        return json.dumps(admin), json.dumps(user)

    def broadcast(self, event: events.Event | None) -> None:
        """Never waits: each client's frame is queued; a client whose queue is full is dropped."""
        if not self.clients:
            return
        for_admin, for_user = self._frames(event)
        for client in list(self.clients):
            self._offer(client, for_admin if client.admin else for_user)

    def _offer(self, client: _Client, frame: str) -> None:
        if client.dropped:
            return
        try:
            client.queue.put_nowait(frame)
        except asyncio.QueueFull:
            logger.info("Dropping a WebSocket client that stopped reading (%d frames waiting)", MAX_PENDING)
            client.dropped = True
            self.clients.discard(client)
            closing = asyncio.get_running_loop().create_task(_close_slow(client))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    # --- one connection -----------------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        check_origin(request)  # browsers send saved credentials on a cross-site WebSocket too
        last_id = _last_id(request)
        ws = web.WebSocketResponse(heartbeat=PING, max_msg_size=64 * 1024)
        await ws.prepare(request)
        client = _Client(ws, admin=request[USER].role == ADMIN, transport=request.transport)
        bus = self.app[BUS]
        hello = events.Event(bus.last_id, CONNECTED, {"address": request.remote or ""})
        self._send_own(client, hello)
        if last_id is not None:
            self._replay(client, last_id)
        self.clients.add(client)
        writer = asyncio.get_running_loop().create_task(self._write(client))
        try:
            async for message in ws:  # nothing is expected from browsers; reading keeps pings and closes flowing
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            self.clients.discard(client)
            await cancel_and_wait(writer)
            with contextlib.suppress(Exception):
                await ws.close()
        return ws

    def _replay(self, client: _Client, last_id: int) -> None:
        missed = self.app[BUS].since(last_id)
        if (missed and missed[0].id > last_id + 1) or (not missed and self.app[BUS].last_id > last_id):
            # More was missed than we keep: tell the page to fetch its state again.
            self._send_own(client, events.Event(self.app[BUS].last_id, RESYNC, {}))
            return
        for event in missed[-MAX_PENDING // 2:]:
            self._send_own(client, event)

    def _send_own(self, client: _Client, event: events.Event) -> None:
        """A frame for this client alone (its greeting, its replay), redacted like any other."""
        for_admin, for_user = self._frames(event)
        self._offer(client, for_admin if client.admin else for_user)

    async def _write(self, client: _Client) -> None:
        while True:
            frame = await client.queue.get()
            try:
                await client.ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                self.clients.discard(client)
                return


async def _close_slow(client: _Client) -> None:
    """Say goodbye; a client that reads nothing will not read the close frame either, so then cut the line."""
    try:
        await asyncio.wait_for(client.ws.close(code=1008, message=b"too slow"), timeout=CLOSE_TIMEOUT)
    except (TimeoutError, ConnectionError, RuntimeError):
        if client.transport is not None:
            client.transport.abort()


def _event_json(event: events.Event) -> dict[str, Any]:
    return {"id": event.id, "name": event.name, "payload": event.payload}


# --- what users see ------------------------------------------------------------------------------------------------

def _keep(*keys: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A redaction that passes the named fields on (none of which may name a person) and drops any other, so a
    field added to an event later reaches users only once it is listed here."""
    def redact(payload: dict[str, Any]) -> dict[str, Any]:
        return {k: payload[k] for k in keys if k in payload}
    return redact


_INITIALS = re.compile(r"^(?:[^\W\d_]\.)*$")


def _patient_initials(payload: dict[str, Any]) -> dict[str, Any]:
    """{uid, patient, region} where `patient` is published as initials already; anything else is made initials."""
    kept = _keep("uid", "region")(payload)
    if "patient" in payload:
        patient = str(payload["patient"] or "")
        kept["patient"] = patient if _INITIALS.match(patient) else initials(patient)
    return kept


# How each event reaches the `user` role, by its name (admins get every payload as published). Every event the bus
# or the hub can carry is listed; an unlisted one reaches users with an empty payload, never as it is.
REDACTIONS: Final[Mapping[str, Callable[[dict[str, Any]], dict[str, Any]]]] = MappingProxyType({
    CONNECTED: _keep("address"),  # the client's own address
    RESYNC: _keep(),
    events.STATE: _keep(),
    events.STORED: _keep("uid"),
    events.PROCESSING_START: _patient_initials,  # {uid, patient (initials), region}
    events.NEW_EXAM: _keep("uid", "positive", "reviewed", "severity"),
    events.ERROR: _keep("uid", "reason"),  # reasons are our own sentences, never patient data
    events.IGNORE: _keep("uid", "reason"),
    events.REQUEUE: _keep("uid", "status"),
    events.RADREVIEW: redact_exam,  # a whole exam object
    events.RADREPORT: redact_report_event,  # {uid, rad_report}
    events.RADCHECK: redact_grade_event,  # {uid, positive, severity, summary, confidence, radiologist}
})


def redact_payload(event: events.Event) -> dict[str, Any]:
    """An event's payload as a user may see it."""
    redaction = REDACTIONS.get(event.name)
    if redaction is None:
        logger.warning("Event %s has no redaction for users; they get it without its payload", event.name)
        return {}
    try:
        return redaction(event.payload)
    except (KeyError, TypeError, AttributeError):  # not the shape its redaction expects: send nothing of it
        logger.exception("Could not redact event %s for users; they get it without its payload", event.name)
        return {}


def redact_endpoints(status: dict[str, Any]) -> dict[str, Any]:
    """The model endpoints' status for users: names and health only, no URL (a URL may carry credentials)."""
    redacted: dict[str, Any] = {**status, "url": ""}
    if "endpoints" in status:
        redacted["endpoints"] = [{k: e[k] for k in ("name", "label", "healthy") if k in e} for e in status["endpoints"]]
    return {k: v for k, v in redacted.items() if k in ("url", "health", "endpoints")}


def fhir_status(app: web.Application) -> dict[str, Any]:
    """The FHIR link as the frames show it: the server's health (reachable, last success, last error) and whether
    reports are fetched by themselves; `configured` false when [fhir] FHIR_URL is empty."""
    fetcher = app.get(FETCHER)
    if fetcher is None:
        return {"configured": False, "enabled": False, "url": "", "flavour": app[SETTINGS].fhir.flavour,
                "reachable": None, "last_success": None, "last_error": None, "since": None, "next_fetch": None}
    return {"configured": True, **fetcher.status()}


def _last_id(request: web.Request) -> int | None:
    raw = request.query.get("last_id")
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest("last_id: a whole number is required") from None
    return max(value, 0)


HUB = web.AppKey("hub", Hub)


async def _hub_ctx(app: web.Application) -> AsyncIterator[None]:
    hub = Hub(app)
    app[HUB] = hub
    await hub.start()
    yield
    await hub.stop()


async def websocket(request: web.Request) -> web.WebSocketResponse:
    return await request.app[HUB].handle(request)


def setup_live(app: web.Application) -> None:
    """Routes and lifetime of the hub; its cleanup context must come after the store, pool and worker."""
    app.cleanup_ctx.append(_hub_ctx)
    app.router.add_get("/ws", websocket, name="ws")
